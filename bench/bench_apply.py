"""Time `porter apply recipes/voxcpm2.yaml --no-smoke` with the source archive already cached.

Issue 12's goal: under 2 s on a 2-core machine (issue 2's was 5 s; Ascend's GPU2Ascend takes
about 126 s on the same 7.2k-line package). Prints wall and CPU time of whole-command runs (a
fresh interpreter each time, imports included), the time of the rewrite alone, and both as a
ratio to a bare `ast.parse` of the same Python files measured in the same run.

    python bench/bench_apply.py [--runs 5] [--recipe recipes/voxcpm2.yaml]
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--recipe", default=str(ROOT / "recipes/voxcpm2.yaml"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "porter.cli", "apply", args.recipe, "--no-smoke", "--out", out]
        subprocess.run(cmd, check=True, capture_output=True)  # warm the source cache
        walls, cpus = [], []
        for _ in range(args.runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

        from porter.port import plan
        from porter.recipe import load_recipe
        from porter.rewrite import rewrite_tree
        from porter.source import fetch_tree

        loaded = load_recipe(args.recipe)
        tree = fetch_tree(loaded.recipe.sources, loaded.path.parent, {})
        py = [p for p in tree.files.values() if p.suffix == ".py"]
        texts = [p.read_bytes() for p in py]
        lines = sum(len(t.decode("utf-8").splitlines()) for t in texts)
        t = time.perf_counter()
        for text in texts:
            ast.parse(text)
        bare = time.perf_counter() - t
        t = time.perf_counter()
        result = rewrite_tree(tree.files, plan(loaded))
        rewrite = time.perf_counter() - t

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no accelerator (cpu)")
    print(f"recipe: {Path(args.recipe).name}: {len(loaded.recipe.steps)} steps, {len(py)} Python files, {lines} lines")
    print(f"porter apply --no-smoke (cached source), {args.runs} runs:"
          f" wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}),"
          f" cpu median {statistics.median(cpus):.2f} s")
    print(f"rewrite alone: {rewrite:.2f} s ({lines / rewrite:,.0f} lines/s), {len(result.changes)} changes")
    print(f"bare ast.parse of the same files: {bare:.3f} s; ratio: rewrite {rewrite / bare:.1f}x,"
          f" whole command {statistics.median(walls) / bare:.1f}x")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} (the machine is shared: compare cpu with wall)")
    print("goal: under 2 s wall" + (" -- met" if statistics.median(walls) < 2 else " -- NOT met"))


if __name__ == "__main__":
    main()
