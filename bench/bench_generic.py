"""Time the generic steps (the README's order of the library's transforms) over a whole package.

The issue-12 goals, on a 2-core machine with the source cache warm: coqui-tts 0.28.0 (61k lines)
under 10 s; the whole transformers tree under 60 s. Prints files, lines, seconds, lines per second
and the ratio to a bare `ast.parse` of the same Python files, measured in the same run (the
fastest a whole-tree pass over Python source can be here).

    python bench/bench_generic.py                          # coqui-tts==0.28.0 from PyPI (cached)
    python bench/bench_generic.py --pypi transformers==5.23.0 --files 'transformers/models/l*/**'
    python bench/bench_generic.py --tree DIR [--jobs 1]

The wheel is fetched by porter's own `pypi:` source (pip download of the wheel; an sdist is never
built) into porter's cache.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The README's order (tests/test_transformers_tree.py holds the library to it).
ORDER = ("attention-fallback", "compile-bypass", "autocast-device", "hardcoded-device", "mem-get-info",
         "cuda-api", "widen-device-check", "import-order")


def generic_steps(files: tuple[str, ...]):
    from porter.rewrite import StepPlan
    from porter.transforms import all_transforms

    registry = all_transforms()
    return tuple(StepPlan(index=i, transform=registry[name](), files=files)
                 for i, name in enumerate(ORDER, 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pypi", default="coqui-tts==0.28.0", help="a pinned requirement (default coqui-tts==0.28.0)")
    src.add_argument("--tree", type=Path, help="a local source tree instead")
    ap.add_argument("--files", action="append", help="globs of the files to run over (default **/*.py)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: porter's choice)")
    ap.add_argument("--goal", type=float, default=None, help="seconds; print whether it is met")
    args = ap.parse_args(argv)

    from porter.progress import FileProgress
    from porter.recipe import Source
    from porter.rewrite import StepPlan, rewrite_tree
    from porter.source import fetch_tree

    source = Source(path=str(args.tree.resolve())) if args.tree else Source(pypi=args.pypi)
    tree = fetch_tree((source,), ROOT, {})
    globs = tuple(args.files or ("**/*.py",))
    steps = generic_steps(globs)
    selector = StepPlan(index=0, transform=steps[0].transform, files=globs)
    files = {p: f for p, f in tree.files.items() if p.endswith(".py") and selector.wants(p)}
    texts = {p: f.read_bytes() for p, f in files.items()}  # read once: both timings below start warm
    lines = sum(t.count(b"\n") for t in texts.values())

    t = time.perf_counter()
    for p, data in texts.items():
        try:
            ast.parse(data, p)
        except (SyntaxError, ValueError):
            pass
    bare = time.perf_counter() - t

    cpu = time.process_time()
    t = time.perf_counter()
    with FileProgress("generic steps") as bar:
        # (porter before issue 12 had no progress callback: the bench also measures the "before")
        hook = {"progress": bar} if "progress" in inspect.signature(rewrite_tree).parameters else {}
        result = rewrite_tree(files, steps, jobs=args.jobs, **hook)
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu  # this process only (workers' time shows in wall)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    label = args.tree or args.pypi
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no accelerator (cpu); load average {load:.1f}")
    print(f"source: {label}: {len(files)} Python files, {lines} lines; {len(steps)} generic steps")
    print(f"generic steps: {seconds:.2f} s wall ({lines / seconds:,.0f} lines/s),"
          f" {len(result.by_status('changed'))} files changed, {len(result.changes)} changes,"
          f" {len(result.findings)} findings, {len(result.by_status('failed'))} failed")
    print(f"bare ast.parse of the same files: {bare:.2f} s ({lines / bare:,.0f} lines/s);"
          f" ratio {seconds / bare:.1f}x")
    if args.goal is not None:
        print(f"goal: under {args.goal:g} s -- " + ("met" if seconds < args.goal else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
