"""npu-sim overhead against plain CPU on the same tiny transformers Qwen2 model (goal: <= 3x).

Runs two worker processes per model size: `cpu` (plain torch, no simulator anywhere) and `npu-sim`
(started with porter.npu.sim.sim_env(), so `import torch_npu` installs the simulator). Each worker
builds the same seeded tiny Qwen2ForCausalLM and times a teacher-forced forward pass and a greedy
`generate`; the simulator worker also times the CPU model in its own process. Prints, per call,
the CPU time of the measuring process (time.process_time; one torch thread, so this is the work
done, and other load on a shared host barely moves it) and the wall time, best and median of the
rounds, and the ratio npu-sim / cpu of the best CPU times. Every figure names its device.

    python bench/bench_npu_sim.py [--rounds 7] [--threads 1] [--sizes tiny,small]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIZES = {
    # the size porter's smoke tests use: a real config shrunk to a few thousand parameters
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, seq=16, new_tokens=16),
    "small": dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, seq=64, new_tokens=16),
}


def worker(device: str, size: str, rounds: int, threads: int) -> dict:
    import torch

    if device == "npu-sim":
        import torch_npu

        assert torch_npu.__porter_simulated__, "the npu-sim worker must run under sim_env()"
    torch.set_num_threads(threads)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = dict(SIZES[size])
    seq, new_tokens = spec.pop("seq"), spec.pop("new_tokens")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=512, **spec)).eval()
    ids = torch.randint(0, spec["vocab_size"], (1, seq))
    targets = {"cpu": (model, ids)}
    if device == "npu-sim":
        sim_model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=512, **spec)).eval()
        sim_model.load_state_dict(model.state_dict())
        targets = {"cpu-in-sim-process": (model, ids), "npu-sim": (sim_model.to("npu"), ids.to("npu"))}

    def fwd(m, x):
        return m(x).logits

    def gen(m, x):
        return m.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    times: dict[str, dict[str, list[list[float]]]] = {k: {"forward": [], "generate": []} for k in targets}
    with torch.no_grad():
        for m, x in targets.values():  # warm up
            fwd(m, x)
            gen(m, x)
        for _ in range(rounds):  # interleave devices so background load hits both alike
            for name, (m, x) in targets.items():
                for what, fn, reps in (("forward", fwd, 10), ("generate", gen, 1)):
                    c0, w0 = time.process_time(), time.perf_counter()
                    for _ in range(reps):
                        out = fn(m, x)
                    out.cpu()
                    cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
                    times[name][what].append([cpu_s / reps, wall_s / reps])
    params = sum(p.numel() for p in model.parameters())
    return {"times": times, "params": params, "seq": seq, "new_tokens": new_tokens}


def run_worker(device: str, size: str, rounds: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from porter.npu.sim import sim_env

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if device == "npu-sim":
        env = sim_env(env)
    cmd = [sys.executable, __file__, "--worker", device, "--sizes", size,
           "--rounds", str(rounds), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{device} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["cpu", "npu-sim"])
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes, args.rounds, args.threads)))
        return

    import torch

    print(f"npu-sim overhead benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{args.threads} torch thread(s), {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print("devices: cpu = plain torch on the host CPU; npu-sim = CPU-backed simulation of the npu "
          "device (not Ascend); cpu-in-sim-process = the CPU model inside the simulator's process")
    for size in args.sizes.split(","):
        cpu = run_worker("cpu", size, args.rounds, args.threads)
        sim = run_worker("npu-sim", size, args.rounds, args.threads)
        print(f"\nQwen2ForCausalLM '{size}' ({cpu['params']:,} parameters, {cpu['seq']} tokens in, "
              f"{cpu['new_tokens']} generated greedily)")
        rows = [("cpu", cpu["times"]["cpu"])] + list(sim["times"].items())
        ratios = {}
        for what in ("forward", "generate"):
            base = min(t[0] for t in cpu["times"]["cpu"][what])
            for device, t in rows:
                proc = [x[0] for x in t[what]]
                wall = [x[1] for x in t[what]]
                ratio = min(proc) / base
                if device == "npu-sim":
                    ratios[what] = ratio
                print(f"  {what:8s} {device:19s} cpu-time best {min(proc) * 1e3:8.2f} ms  median "
                      f"{statistics.median(proc) * 1e3:8.2f} ms | wall best {min(wall) * 1e3:8.2f} ms  "
                      f"median {statistics.median(wall) * 1e3:8.2f} ms | {ratio:5.2f}x cpu")
        worst = max(ratios.values())
        verdict = "meets" if worst <= 3.0 else "misses"
        print(f"  npu-sim overhead: forward {ratios['forward']:.2f}x, generate {ratios['generate']:.2f}x "
              f"plain cpu -> {verdict} the 3x goal")

if __name__ == "__main__":
    main()
