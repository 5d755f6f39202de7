"""The whole transform library over the real transformers 5.23.0 tree (PyPI wheel, cached).

Asserts that every output file parses and compiles, that a second pass changes nothing, and that
no file changed unless it held a CUDA-specific construct the scan knows. The time it takes is
printed (run with -s to see it): about 7 minutes on a 2-core machine, so it runs in CI with
the rest. To leave it out of a local run: PORTER_SKIP_TRANSFORMERS_TREE=1.

    python -m pytest -s tests/test_transformers_tree.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from porter.recipe import Source
from porter.rewrite import StepPlan, rewrite_tree
from porter.scan import scan_source
from porter.source import fetch_tree
from porter.transforms import PythonTransform, all_transforms

pytestmark = [
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("PORTER_SKIP_TRANSFORMERS_TREE")),
        reason="PORTER_SKIP_TRANSFORMERS_TREE is set (the test takes ~7 min on 2 cores)",
    ),
]


# The order the recipes use. It matters: cuda-api widens an is_available() guard only once the
# code it guards follows the device, so hardcoded-device runs first (else a second pass would widen
# what the first left); import-order runs last, as it reacts to the torch.npu uses others add.
ORDER = ("attention-fallback", "compile-bypass", "autocast-device", "hardcoded-device", "mem-get-info",
         "cuda-api", "widen-device-check", "import-order")


def library_steps() -> tuple[StepPlan, ...]:
    """Every transform that runs with its default parameters (the escape hatches need a recipe)."""
    steps = []
    for name, cls in all_transforms().items():
        try:
            transform = cls()
        except Exception:  # required parameters: recipe-specific, nothing to run generically
            continue
        if not isinstance(transform, PythonTransform):
            continue
        steps.append(transform)
    assert sorted(t.name for t in steps) == sorted(ORDER), "a new transform: give it its place in ORDER"
    steps.sort(key=lambda t: ORDER.index(t.name))
    return tuple(StepPlan(index=i, transform=t, files=("transformers/**/*.py",)) for i, t in enumerate(steps, 1))


def test_transform_library_on_transformers_tree(tmp_path):
    tree = fetch_tree((Source(pypi="transformers==5.23.0"),), tmp_path, {})
    steps = library_steps()
    assert {s.transform.name for s in steps} >= {"widen-device-check", "mem-get-info"}
    t = time.perf_counter()
    first = rewrite_tree(tree.files, steps)
    elapsed = time.perf_counter() - t
    changed = first.by_status("changed")
    print(f"\ntransformers 5.23.0: {len(tree.files)} files, {len(steps)} transforms,"
          f" {len(changed)} files changed, {len(first.changes)} changes, {elapsed:.1f} s (cpu)")
    assert not first.by_status("failed"), first.by_status("failed")[:3]
    assert changed, "the library found nothing to port in transformers: the test cannot fail"

    second_input: dict[str, Path] = {}
    unexplained = []  # every problem at once: one run takes minutes
    for fr in changed:
        compile(fr.text, fr.path, "exec")  # parses and compiles
        original = tree.files[fr.path].read_bytes().decode("utf-8")
        if not scan_source(original):
            unexplained.append((fr.path, [(c.line, c.transform, c.before[:80]) for c in fr.changes[:3]]))
        out = tmp_path / "second" / fr.path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(fr.text, encoding="utf-8", newline="")
        second_input[fr.path] = out
    second = rewrite_tree(second_input, steps)
    again = [f.path for f in second.by_status("changed")]
    assert unexplained == [], f"changed but held no CUDA-specific construct the scan knows: {unexplained}"
    assert again == [], f"a second pass changed {again}"
