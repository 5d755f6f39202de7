"""Benchmark smoke inference: how long a smoke run and a whole `porter apply` with smoke take.

    python bench/bench_smoke.py                          # cpu and npu-sim, 3 rounds each
    python bench/bench_smoke.py --device npu-sim --rounds 5
    python bench/bench_smoke.py --no-apply --no-venv

Goal (issue 4): a whole `porter apply` with smoke on a tiny model under 60 s with a warm
environment cache. What is measured, per device (each figure is printed with its device):

  smoke/host    run_smoke on the tiny Qwen2 + fake vocoder fixture, host interpreter (no requires)
  smoke/venv    the same with `requires: [six]`, a per-recipe venv: first call builds it (cold),
                later calls reuse it (warm). `six` is already on the host, so pip downloads nothing.
  apply         `porter apply` in a fresh process on a tiny recipe (tests/fixtures/tinytts, rewritten
                by the recipe's steps) whose smoke section builds a tiny Qwen2, runs the patched
                `voice_clone_batch_size` on the target device and generates audio (warm env cache)
  baseline      `python -c "import torch, transformers"`: the floor every smoke subprocess pays

npu-sim figures come from porter's CPU-backed simulation of the npu device, not from Ascend.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from porter.smoke import SmokeSpec, run_smoke  # noqa: E402
from porter.smoke.result import device_label  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "smoke"

APPLY_SMOKE_SCRIPT = '''
"""Bench smoke script for the tinytts fixture: tiny Qwen2 tokens -> sine vocoder, plus the
patched tinytts code on the target device."""
import math
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from tinytts import TinyModel, voice_clone_batch_size


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128))
        self.post = TinyModel(dim=32)
        self.pitch = torch.nn.Embedding(96, 1)


def build(ctx):
    return Tiny()


def forward(model, ctx):
    ids = ctx.randint(0, 96, (1, 8))
    h = model.lm.model(input_ids=ids).last_hidden_state
    return {"logits": model.lm.lm_head(h), "post": model.post(h)}


def generate(model, ctx):
    batch = voice_clone_batch_size(4, 0.001, torch.device(ctx.device))  # patched: asks the npu
    ids = ctx.randint(0, 96, (1, 8))
    seq = model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                            min_new_tokens=32, do_sample=False, pad_token_id=0)
    tok = seq[0, 8:]
    f = 110.0 + 770.0 * torch.sigmoid(model.pitch(tok)).squeeze(-1)
    t = torch.arange(256, device=tok.device, dtype=torch.float32) / 16000
    wav = 0.5 * torch.sin(2 * math.pi * f[:, None] * t[None, :]).reshape(-1)
    assert batch >= 1
    return ctx.Audio(wav, 16000, n_tokens=int(tok.numel()))
'''


def smoke_once(device: str, out: Path, **fields) -> tuple[float, object]:
    spec = SmokeSpec(script="tiny_qwen2.py", inputs={"prompt_len": 8, "max_new_tokens": 32}, **fields)
    t0 = time.perf_counter()
    result = run_smoke(spec, recipe_dir=FIXTURES, package_root=FIXTURES / "pkg", device=device, out_dir=out)
    return time.perf_counter() - t0, result


def show_result(tag: str, device: str, wall: float, result) -> None:
    p = result.perf
    parts = [f"{tag:<12} device={device:<8} wall={wall:6.2f}s passed={result.passed}"]
    for name in ("env_s", "build_s", "place_s", "forward_reference_s", "forward_s", "generate_s"):
        v = getattr(p, name, None)
        if v is not None:
            parts.append(f"{name}={v:.3f}")
    if p.rtf is not None:
        parts.append(f"rtf={p.rtf:.3f}")
    if p.tokens_per_s is not None:
        parts.append(f"tok/s={p.tokens_per_s:.1f}")
    if p.peak_memory_bytes is not None:
        parts.append(f"peak={p.peak_memory_bytes / 2**20:.1f}MiB[{p.peak_memory_source.split(' ')[0]}]")
    print(" ".join(parts))
    if not result.passed:
        print("   ", result.summary())


def bench_smoke(device: str, rounds: int, work: Path, venv: bool) -> dict:
    walls = []
    for i in range(rounds):
        wall, result = smoke_once(device, work / f"{device}-host-{i}")
        walls.append(wall)
        show_result("smoke/host", device, wall, result)
    out = {"host_median_s": statistics.median(walls), "host_min_s": min(walls)}
    if venv:
        os.environ["PORTER_CACHE"] = str(work / f"cache-{device}")  # cold means cold for each device
        cold, result = smoke_once(device, work / f"{device}-venv-cold", requires=["six"])
        show_result("smoke/venv", device, cold, result)
        print(f"{'':12} venv cold (created={result.env.get('created')}): env {result.perf.env_s:.2f}s")
        warm = []
        for i in range(rounds):
            wall, result = smoke_once(device, work / f"{device}-venv-{i}", requires=["six"])
            warm.append(wall)
            show_result("smoke/venv", device, wall, result)
        out.update(venv_cold_s=cold, venv_warm_median_s=statistics.median(warm))
    return out


def bench_apply(device: str, rounds: int, work: Path) -> dict:
    d = work / f"apply-{device}"
    shutil.copytree(ROOT / "tests" / "fixtures" / "tinytts", d / "tinytts")
    recipe = (ROOT / "tests" / "fixtures" / "tinytts.yaml").read_text()
    recipe += "smoke:\n  script: smoke_tinytts.py\n  inputs: {}\n"
    (d / "tinytts.yaml").write_text(recipe)
    (d / "smoke_tinytts.py").write_text(APPLY_SMOKE_SCRIPT)
    walls = []
    for i in range(rounds):
        out = d / f"out{i}"
        cmd = [sys.executable, "-c", "import sys; from porter.cli import main; sys.exit(main(sys.argv[1:]))",
               "apply", str(d / "tinytts.yaml"), "--out", str(out), "--device", device]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        walls.append(wall)
        report = out / "tinytts" / "report.json"
        smoke = json.loads(report.read_text()).get("smoke") if report.is_file() else None
        passed = smoke.get("passed") if smoke else None
        print(f"{'apply':<12} device={device:<8} wall={wall:6.2f}s exit={proc.returncode} smoke.passed={passed}")
        if proc.returncode != 0:
            print("   ", proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else "")
    return {"apply_median_s": statistics.median(walls), "apply_max_s": max(walls)}


def baseline() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers; transformers.Qwen2ForCausalLM"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", nargs="+", default=["cpu", "npu-sim"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-apply", action="store_true")
    ap.add_argument("--no-venv", action="store_true")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    base = baseline()
    print(f"{'baseline':<12} device=cpu      wall={base:6.2f}s (python -c 'import torch, transformers')")
    summary = {}
    with tempfile.TemporaryDirectory(prefix="porter-bench-smoke-") as tmp:
        work = Path(tmp)
        for device in args.device:
            s = bench_smoke(device, args.rounds, work, venv=not args.no_venv)
            if not args.no_apply:
                s.update(bench_apply(device, args.rounds, work))
            summary[device] = s
    print("\nsummary (seconds; goal: a whole porter apply with smoke < 60 s, warm env cache)")
    for device, s in summary.items():
        figures = " ".join(f"{k}={v:.2f}" for k, v in s.items())
        verdict = ""
        if "apply_max_s" in s:
            verdict = " -> apply goal met" if s["apply_max_s"] < 60 else " -> apply goal MISSED"
        print(f"  {device_label(device)}: {figures}{verdict}")
    print(f"load average now {os.getloadavg()[0]:.2f} (other work on the machine inflates wall times)")


if __name__ == "__main__":
    main()
