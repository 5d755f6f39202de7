"""Capture what porter produces, to prove a speed change is byte-identical (issue 12).

    python bench/identity.py recipe recipes/voxcpm2.yaml OUT.json     # port.diff + report.json of build_port
    python bench/identity.py tree pypi:coqui-tts==0.28.0 OUT.json      # rewrite_tree of the generic steps
    python bench/identity.py compare A.json B.json                    # exit 1 on any difference

`recipe` records the diff and report.json (the report's steps, changes and findings included);
`tree` records every file's status, reason, changes, findings and new text (sha256). Timing fields
(none in these outputs today) would be dropped here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "value") and not isinstance(x, (str, int)):
        return x.value
    return x


def recipe(path: str) -> dict:
    from porter.port import build_port, reports
    from porter.recipe import load_recipe

    build = build_port(load_recipe(path), {})
    return {"port.diff": build.emitted.diff, "report.json": json.loads(reports(build)["report.json"])}


def tree(spec: str, globs: tuple[str, ...]) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_generic import generic_steps
    from porter.rewrite import rewrite_tree
    from porter.source import fetch_tree, parse_spec

    t = fetch_tree((parse_spec(spec),), ROOT, {})
    result = rewrite_tree(t.files, generic_steps(globs))
    out = {}
    for f in result.files:
        d = _plain(dataclasses.replace(f, text=None))
        d["text_sha256"] = None if f.text is None else hashlib.sha256(f.text.encode()).hexdigest()
        out[f.path] = d
    return {"files": out, "extra_changes": _plain(result.extra_changes)}


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "compare":
        a, b = (json.loads(Path(p).read_text()) for p in argv[1:3])
        if a == b:
            print("identical")
            return 0
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                sa, sb = a.get(key), b.get(key)
                if isinstance(sa, dict) and isinstance(sb, dict):
                    for k in sorted(set(sa) | set(sb)):
                        if sa.get(k) != sb.get(k):
                            print(f"DIFF {key}/{k}:\n  {json.dumps(sa.get(k))[:600]}\n  {json.dumps(sb.get(k))[:600]}")
                else:
                    print(f"DIFF {key}: {str(sa)[:300]} | {str(sb)[:300]}")
        return 1
    t = time.perf_counter()
    data = recipe(argv[1]) if kind == "recipe" else tree(argv[1], tuple(argv[3:]) or ("**/*.py",))
    Path(argv[2]).write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"{kind} {argv[1]}: {time.perf_counter() - t:.1f} s -> {argv[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
