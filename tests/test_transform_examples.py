"""One test walks every registered transform's examples (STYLE.md section 1).

For each example: the expected output; a left-alone case stays byte-identical with no change
recorded; every changed line is covered by a recorded change and every recorded change sits
where the text changed; a second run changes nothing; Python output compiles.
"""

from __future__ import annotations

import difflib

import pytest

from porter.transforms import Context, all_transforms

CASES = [
    pytest.param(cls, ex, id=f"{name}:{ex.id}")
    for name, cls in all_transforms().items()
    for ex in cls.examples
]


def changed_regions(before: str, after: str) -> list[tuple[int, int]]:
    """1-based inclusive line ranges of `before` that differ; insertions give (n, n-1)."""
    a, b = before.splitlines(), after.splitlines()
    out = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.append((i1 + 1, i2))
    return out


def covered(region: tuple[int, int], changes) -> bool:
    lo, hi = region
    if hi < lo:  # pure insertion between line hi and lo: a change must touch a neighbour
        return any(c.line - 1 <= lo <= c.end_line + 1 for c in changes)
    return all(any(c.line <= n <= c.end_line for c in changes) for n in range(lo, hi + 1))


def test_every_transform_has_examples_of_both_kinds():
    for name, cls in all_transforms().items():
        kinds = {ex.after is None for ex in cls.examples}
        assert kinds == {True, False}, f"{name} needs rewrite examples and left-alone examples"
        ids = [ex.id for ex in cls.examples]
        assert len(ids) == len(set(ids)), f"{name} has duplicate example ids"


@pytest.mark.parametrize("cls,ex", CASES)
def test_example(cls, ex):
    transform = cls(ex.params)
    out = transform.apply(ex.before, Context(path=ex.path))
    if ex.after is None:
        assert out.text == ex.before, "a left-alone example was rewritten"
        assert not out.changes
        return
    assert out.text == ex.after
    assert out.changes, "the text changed but no change was recorded"
    for region in changed_regions(ex.before, out.text):
        assert covered(region, out.changes), f"lines {region} changed with no change recorded there"
    regions = changed_regions(ex.before, out.text)
    for change in out.changes:
        assert change.transform == cls.name
        assert change.reason, "every change says why"
        assert any(
            change.line - 1 <= hi and lo <= change.end_line + 1 for lo, hi in regions
        ), f"change recorded at {change.line} where nothing changed"
    again = transform.apply(out.text, Context(path=ex.path))
    assert again.text == out.text and not again.changes, "second run changed the output"
    if ex.path.endswith(".py"):
        compile(out.text, ex.path, "exec")
