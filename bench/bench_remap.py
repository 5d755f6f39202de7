"""Benchmark `porter remap` against `cp` on a generated checkpoint (default 2 GB).

    python bench/bench_remap.py                    # 2 GB single file, 3 rounds
    python bench/bench_remap.py --size-gb 4 --shards 4 --dir /data/tmp

Goals (issue 6): remap throughput >= 0.8x `cp` of the same file; remap peak memory < 200 MB.
Each remap runs in a fresh subprocess that reports its own peak RSS (VmHWM from /proc: the high-water
mark of that process's memory; ru_maxrss is printed too, but Linux carries it across exec from the
parent, so the checkpoint is generated in another subprocess to keep the parent small) and the RSS
it had after imports, before the remap. `cp` and remap alternate, each after
`sync`, both reading a source that is in the page cache (the machine has the RAM for it), so the
comparison is of the copy path, not of the disk. The figures name the machine: this is a CPU-only
measurement (device: cpu); no accelerator is involved in a remap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULES = r"""
- rename: {from: '^model\.layers\.(\d+)\.mlp\.', to: 'model.blocks.\1.ffn.'}
  required: true
- rename: {from: '^model\.layers\.(\d+)\.self_attn\.', to: 'model.blocks.\1.attn.'}
  required: true
- drop: 'rotary_emb\.inv_freq$'
  required: true
- strip_prefix: "model."
"""

HIDDEN, FFN = 2048, 5632  # a 0.5B-class decoder layer in bf16: ~101 MB


def layer(i: int) -> dict[str, tuple[tuple[int, ...], str]]:
    p = f"model.layers.{i}."
    shapes = {
        p + "self_attn.q_proj.weight": ((HIDDEN, HIDDEN), "bf16"),
        p + "self_attn.k_proj.weight": ((HIDDEN, HIDDEN), "bf16"),
        p + "self_attn.v_proj.weight": ((HIDDEN, HIDDEN), "bf16"),
        p + "self_attn.o_proj.weight": ((HIDDEN, HIDDEN), "bf16"),
        p + "mlp.gate_proj.weight": ((FFN, HIDDEN), "bf16"),
        p + "mlp.up_proj.weight": ((FFN, HIDDEN), "bf16"),
        p + "mlp.down_proj.weight": ((HIDDEN, FFN), "bf16"),
        p + "input_layernorm.weight": ((HIDDEN,), "bf16"),
        p + "post_attention_layernorm.weight": ((HIDDEN,), "bf16"),
        p + "self_attn.rotary_emb.inv_freq": ((64,), "f32"),
    }
    return shapes


def generate(root: Path, size_bytes: int, shards: int) -> tuple[Path, int]:
    """Write a real safetensors checkpoint (safetensors.torch.save_file) of about `size_bytes`."""
    import torch
    from safetensors.torch import save_file

    dtypes = {"bf16": torch.bfloat16, "f32": torch.float32}
    per_layer = sum(
        torch.Size(s).numel() * (2 if d == "bf16" else 4) for s, d in layer(0).values()
    )
    n_layers = max(shards, round(size_bytes / per_layer))
    # Random bytes from a 64 MB pool, read at shifting offsets (generating every byte is slow).
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(-(2**15), 2**15, (32 << 20,), dtype=torch.int16, generator=gen)
    cursor = 0
    groups = [list(range(n_layers))[k::shards] for k in range(shards)]
    groups = [sorted(g) for g in groups]
    src = root / ("model.safetensors" if shards == 1 else "src")
    if shards > 1:
        src.mkdir()
    weight_map, total = {}, 0
    for k, layers in enumerate(groups, 1):
        tensors = {}
        for i in layers:
            for name, (shape, d) in layer(i).items():
                t = torch.empty(shape, dtype=dtypes[d])
                flat = t.view(-1).view(torch.int16)
                cursor = (cursor + 12_345) % (pool.numel() - flat.numel())
                flat.copy_(pool[cursor : cursor + flat.numel()])
                tensors[name] = t
        name = "model.safetensors" if shards == 1 else f"model-{k:05d}-of-{shards:05d}.safetensors"
        path = src if shards == 1 else src / name
        save_file(tensors, path, metadata={"format": "pt", "bench": "porter"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
        del tensors
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return src, total


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (
        f"device: cpu (no accelerator) - {cpu}, {os.cpu_count()} logical CPUs{mem}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def filesystem(path: Path) -> str:
    best, fs = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind = line.split()[:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, f"{kind} on {dev}"
    except OSError:
        pass
    return fs


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(src: str, dst: str, rules: str, verify: bool) -> None:
    """Run one remap in this fresh process and print timings and memory as JSON."""
    t0 = time.perf_counter()
    from porter.weights import load_rules, remap_checkpoint

    imported = time.perf_counter()
    base_rss = rss_kb("VmRSS")
    result = remap_checkpoint(src, dst, load_rules(rules), verify=verify)
    done = time.perf_counter()
    print(json.dumps({
        "import_s": imported - t0,
        "remap_s": done - imported,
        "base_rss_mb": base_rss / 1024,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mb": rss_kb("VmHWM") / 1024,
        "copy_method": result.copy_method,
        "tensors_out": result.counts()["tensors_out"],
        "verified": result.verified,
    }))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    os.sync()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, out.stdout


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GB (1e9 bytes)")
    ap.add_argument("--shards", type=int, default=1, help="1: a single file; N: a sharded directory")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--child", nargs=3, metavar=("SRC", "DST", "RULES"), help=argparse.SUPPRESS)
    ap.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--generate", nargs=3, metavar=("ROOT", "BYTES", "SHARDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, verify=args.verify)
        return 0
    if args.generate:
        src, total = generate(Path(args.generate[0]), int(args.generate[1]), int(args.generate[2]))
        print(json.dumps({"src": str(src), "total": total}))
        return 0

    size = int(args.size_gb * 1e9)
    parent = args.dir or Path(tempfile.gettempdir())
    need = 3 * size + (512 << 20)  # source, cp copy, remap output, margin
    free = shutil.disk_usage(parent).free
    if free < need:
        print(f"not enough disk at {parent}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="porter-bench-remap-", dir=parent))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        print(machine())
        print(f"filesystem: {filesystem(root)} ({root}); {free / 1e9:.0f} GB free before the run")
        t0 = time.perf_counter()
        gen = subprocess.run(
            [sys.executable, __file__, "--generate", str(root), str(size), str(args.shards)],
            check=True, capture_output=True, text=True,
        )
        made = json.loads(gen.stdout)
        src, total = Path(made["src"]), made["total"]
        kind = "1 file" if args.shards == 1 else f"{args.shards} shards + index"
        print(f"checkpoint: {total / 1e9:.2f} GB of tensor data, {kind}, generated in {time.perf_counter() - t0:.1f} s")
        rules = root / "rules.yaml"
        rules.write_text(RULES)
        cp_dst, out = root / "cp-copy", root / "remapped"
        if args.shards == 1:
            out = out.with_suffix(".safetensors")
        cp_cmd = ["cp", "-r", str(src), str(cp_dst)] if args.shards > 1 else ["cp", str(src), str(cp_dst)]
        remap_cmd = [sys.executable, __file__, "--child", str(src), str(out), str(rules)]

        cp_times, wall_times, runs = [], [], []
        for round_ in range(args.repeat):
            # Alternate which goes first, so neither always follows the other's writeback.
            for which in (("cp", "remap") if round_ % 2 == 0 else ("remap", "cp")):
                if which == "cp":
                    t, _ = timed(cp_cmd)
                    cp_times.append(t)
                    remove(cp_dst)
                else:
                    t, stdout = timed(remap_cmd, env)
                    wall_times.append(t)
                    runs.append(json.loads(stdout))
                    remove(out)
        t, stdout = timed(remap_cmd + ["--verify"], env)
        verified = json.loads(stdout)
        remove(out)

        gb = total / 1e9
        cp_s = statistics.median(cp_times)
        remap_s = statistics.median(r["remap_s"] for r in runs)
        wall_s = statistics.median(wall_times)
        peak = max(r["vmhwm_mb"] for r in runs)
        maxrss = max(r["maxrss_mb"] for r in runs)
        base = statistics.median(r["base_rss_mb"] for r in runs)
        print(f"cp:            {cp_s:6.2f} s  {gb / cp_s:5.2f} GB/s   (median of {args.repeat}: "
              + ", ".join(f"{x:.2f}" for x in cp_times) + ")")
        print(f"porter remap:  {remap_s:6.2f} s  {gb / remap_s:5.2f} GB/s   in the library call (median; "
              + ", ".join(f"{r['remap_s']:.2f}" for r in runs) + f"; {runs[0]['copy_method']})")
        print(f"               {wall_s:6.2f} s  {gb / wall_s:5.2f} GB/s   whole process incl. Python start-up and imports ("
              + ", ".join(f"{x:.2f}" for x in wall_times) + ")")
        ratio, ratio_wall = cp_s / remap_s, cp_s / wall_s
        print(f"throughput vs cp: {ratio:.2f}x (library), {ratio_wall:.2f}x (whole process); goal >= 0.8x: "
              + ("met" if ratio_wall >= 0.8 else "NOT met"))
        print(f"peak memory of the remap process: {peak:.1f} MB VmHWM ({base:.1f} MB after imports, before the "
              f"remap; ru_maxrss {maxrss:.1f} MB); goal < 200 MB: " + ("met" if peak < 200 else "NOT met"))
        print(f"with --verify (sha256 of every tensor, source and output): {verified['remap_s']:.2f} s, "
              f"peak {verified['vmhwm_mb']:.1f} MB VmHWM, verified={verified['verified']}")
        print(f"tensors: {runs[0]['tensors_out']} written (inv_freq buffers dropped, names remapped)")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
