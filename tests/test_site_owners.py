"""The engine parses with libcst only the files where a transform can act (issue 12, speed).

A transform in SITE_OWNERS runs only where porter.analysis (an `ast` pass) reports a site it owns;
that must never lose a change or a finding. Every example of those transforms that changes or
reports something holds a site of its own, and the engine's result with the gate equals the
transform run without it. The text pre-filters are searched faster than `re.search` and must
answer the same.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from porter.analysis import site_owners
from porter.rewrite import StepPlan, rewrite_file
from porter.transforms import Context, PythonTransform, all_transforms
from porter.transforms._base import SITE_OWNERS, _literal_starts, prefilter_search

CASES = [
    pytest.param(cls, ex, id=f"{name}:{ex.id}")
    for name, cls in all_transforms().items() if name in SITE_OWNERS
    for ex in cls.examples
]


def test_site_owners_are_registered_python_transforms():
    registry = all_transforms()
    for name in SITE_OWNERS:
        assert name in registry and issubclass(registry[name], PythonTransform), name


@pytest.mark.parametrize("cls,ex", CASES)
def test_a_transform_acts_only_where_the_analysis_finds_its_sites(cls, ex):
    transform = cls(ex.params)
    out = transform.apply(ex.before, Context(path=ex.path))
    if transform.params == cls.Params() and (out.changes or out.findings):
        owners = site_owners(ex.path, ex.before)
        assert owners is None or cls.name in owners, (
            f"{cls.name} changed or reported {ex.id!r} where the analysis finds no site of its own:"
            " porter would skip this file (add the site to porter.analysis, or take the transform out of"
            " SITE_OWNERS)")
    # the engine (which applies the gate) gives what the transform gives alone
    step = StepPlan(index=1, transform=transform, files=("**",))
    res = rewrite_file(ex.path, ex.before.encode(), (step,))
    assert [c.before for c in res.changes] == [c.before for c in out.changes]
    assert [(f.line, f.category, f.reason) for f in res.findings] == [(f.line, f.category, f.reason)
                                                                       for f in out.findings]
    assert (res.text if res.status == "changed" else ex.before) == out.text


def test_the_gate_skips_libcst_for_a_file_without_sites(monkeypatch):
    import libcst

    calls = []
    real = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", lambda *a, **k: calls.append(1) or real(*a, **k))
    steps = tuple(StepPlan(index=i, transform=all_transforms()[n](), files=("**/*.py",))
                  for i, n in enumerate(("cuda-api", "mem-get-info", "widen-device-check"), 1))
    # "cuda" passes the text pre-filters, but nothing here is a CUDA site
    quiet = 'NAME = "cuda"  # mem_get_info docs\n# cuda is mentioned in a comment\n'
    assert rewrite_file("m.py", quiet.encode(), steps).status == "unchanged"
    assert calls == []
    busy = 'import torch\nif x.device.type == "cuda":\n    pass\n'
    assert rewrite_file("m.py", busy.encode(), steps).status == "changed"
    assert calls, "a file with a site is parsed and rewritten"


def test_a_file_beyond_the_nesting_limit_is_still_skipped_with_the_reason():
    steps = (StepPlan(index=1, transform=all_transforms()["cuda-api"](), files=("**/*.py",)),)
    text = "# cuda\nx = " + "(" * 250 + "1" + ")" * 250 + "\n"
    res = rewrite_file("m.py", text.encode(), steps)
    assert res.status == "skipped" and "brackets nested deeper" in res.reason


TRICKY = [
    "", "cuda", "xcuda", "cudax", "a cuda b", "use_cuda_graph", "is_cuda", "'cuda'", '"cuda:0"', "cuda\ncuda_",
    "torch.compile(m)", "recompile", "compiled", "_compile_x", "CUDAGraph", "x_capture", "capture_y",
    "'sdpa'", "\"eager'", "attn_implementation", "flash_attn", "import torch_npu", "input", "npu", "mem_get_info",
    "torch.cuda.graph", "torch.cuda_graph", "GradScaler", "custom_fwd", "autocast",
]
PATTERNS = [c.prefilter for c in all_transforms().values() if c.prefilter is not None] + [
    re.compile(r"\bcuda\b"), re.compile(r"x|\bcu(da|db)?\b|[ab]c"), re.compile(r"a+b"), re.compile(r"(?i)cuda"),
    re.compile(r"^cuda", re.M), re.compile(r"[^x]uda"),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.pattern[:30])
def test_prefilter_search_answers_as_re_search(pattern):
    texts = TRICKY + [a + " " + b for a in TRICKY for b in TRICKY[:8]]
    texts += [p.read_text(encoding="utf-8") for p in sorted((Path(__file__).parents[1] / "porter").rglob("*.py"))]
    for text in texts:
        assert prefilter_search(pattern, text) == bool(pattern.search(text)), (pattern.pattern, text[:80])


def test_literal_starts():
    assert _literal_starts(re.compile(r"\bcuda\b")) == ("cuda",)
    assert _literal_starts(re.compile(r"""["']cuda(:\d+)?["']|is_cuda""")) == ('"cuda', "'cuda", "is_cuda")
    assert _literal_starts(re.compile(r"a+b")) is None  # no literal every match starts with
    assert _literal_starts(re.compile(r"(?i)cuda")) is None


@pytest.mark.parametrize("path", [Path(__file__).parent / "fixtures/ming_omni_tts/upstream/modeling_bailing_moe.py",
                                  Path(__file__).parents[1] / "porter/transforms/_base.py"], ids=lambda p: p.name)
def test_expression_positions_read_off_the_text_are_libcst_positions(path):
    """Rewriter.meta(PositionProvider, expression) answers from the text where certain."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider

    from porter.transforms._base import _range_in_text

    source = path.read_text(encoding="utf-8")
    module = cst.parse_module(source)
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    parents: dict = {}
    stack = [module]
    while stack:
        node = stack.pop()
        for child in node.children:
            parents[child] = node
            stack.append(child)
    asked = answered = 0
    for node, pos in positions.items():
        if isinstance(node, cst.BaseExpression):
            asked += 1
            found = _range_in_text(source, module, node, parents, {})
            if found is not None:
                answered += 1
                assert found == pos, module.code_for_node(node)[:80]
    assert answered > asked / 2, f"only {answered} of {asked} expressions found in the text"
    # characters libcst drops or reads as line ends: never answered from the text
    odd = "x = 1\r" + source
    assert all(_range_in_text(odd, cst.parse_module(odd), n, {}, {}) is None
               for n in (cst.parse_module(odd).body[0].body[0].value,))
