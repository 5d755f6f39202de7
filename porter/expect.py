"""`porter expect RECIPE` / `porter apply --update-expect`: take a recipe's `expect:` counts from
what its steps match on its source now, and write them into the recipe in place.

Only the numbers change: ruamel.yaml's round-trip loader gives the position of every `expect:`
value, the digits there are replaced and nothing else in the file moves (comments, quoting, folded
text and line endings stay byte-identical). A step without `expect:` gets one, on its own line
before its `reason:` (or after its `use:`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from porter.errors import UsageError


@dataclass
class ExpectUpdate:
    recipe: Path
    changes: list[tuple[int, str, int | None, int]] = field(default_factory=list)  # (step, use, old, new)
    written: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        out = [f"warning: {w}" for w in self.warnings]
        if not self.changes:
            return out + [f"{self.recipe}: every expect: count matches this source"]
        verb = "updated" if self.written else "would update"
        out.append(f"{self.recipe}: {verb} {len(self.changes)} expect: count(s)")
        for step, use, old, new in self.changes:
            out.append(f"  step {step} ({use}): expect {'(none)' if old is None else old} -> {new}")
        return out


def update_expect(recipe: str | Path, overrides: dict | None = None, write: bool = True) -> ExpectUpdate:
    """Measure each step on the recipe's source and rewrite the counts that differ."""
    from porter.port import build_port
    from porter.recipe import load_recipe

    recipe = Path(recipe)
    loaded = load_recipe(recipe)
    build = build_port(loaded, overrides or {})
    res = ExpectUpdate(recipe)
    res.warnings = [f"{f.path}: {f.reason}" for f in build.result.by_status("failed")]
    counts: dict[int, int] = {}
    for s in build.report["steps"]:
        if s["expect"] is None or s["drift"]:  # the report's own test of a count (one place decides)
            res.changes.append((s["index"], s["use"], s["expect"], s["matched"]))
            counts[s["index"] - 1] = s["matched"]
    if counts and write:
        raw = recipe.read_bytes().decode("utf-8")
        recipe.write_bytes(rewrite_counts(raw, counts, str(recipe)).encode("utf-8"))
        res.written = True
    return res


def rewrite_counts(text: str, counts: dict[int, int], shown: str = "recipe") -> str:
    """`text` with steps[i].expect set to counts[i] (0-based step index), nothing else changed."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    data = yaml.load(text)
    steps = data.get("steps") if hasattr(data, "get") else None
    if steps is None:
        raise UsageError(f"{shown}: no steps: list to update")
    lines = text.splitlines(keepends=True)
    inserts: list[tuple[int, str]] = []  # (line index, new line)
    flow = False
    for i, new in sorted(counts.items()):
        step = steps[i]
        if step.fa.flow_style():
            flow = True
            break
        if "expect" in step:
            line, col = step.lc.value("expect")
            m = re.compile(r"-?\d+|null|~|\"[^\"]*\"|'[^']*'").match(lines[line], col)
            if m is None:
                raise UsageError(f"{shown}:{line + 1}: steps[{i}].expect: cannot read the value to replace it")
            lines[line] = lines[line][: m.start()] + str(new) + lines[line][m.end():]
        else:
            key = "reason" if "reason" in step else "use"
            line, col = step.lc.key(key)
            newline = "\r\n" if lines[line].endswith("\r\n") else "\n"
            at = line if key == "reason" else line + 1
            inserts.append((at, f"{' ' * col}expect: {new}{newline}"))
    if flow:  # a step written as {use: ..., expect: ...}: let ruamel write the file
        for i, new in counts.items():
            steps[i]["expect"] = new
        buf = io.StringIO()
        yaml.dump(data, buf)
        out = buf.getvalue()
    else:
        for at, line in sorted(inserts, reverse=True):
            lines.insert(at, line)
        out = "".join(lines)
    check = YAML(typ="safe").load(out)
    for i, new in counts.items():
        assert check["steps"][i].get("expect") == new, f"expect rewrite of step {i + 1} did not take"
    return out
