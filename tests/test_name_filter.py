"""The spelling filter in front of name resolution (Rewriter.may_import).

Transforms resolve names (porter.resolve, through `meta(QualifiedNameProvider, ...)`) only for
nodes the filter lets through, and a module is walked only once one gets through, so a wrong "no"
would silently miss a CUDA site. These tests hold it to that: on hand-written traps and on every
name in real code, whatever the resolver resolves through an import, the filter lets through.
(tests/test_resolver.py holds the resolver to libcst's own answers.)
"""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest
import torch
from libcst.metadata import MetadataWrapper, QualifiedNameProvider, QualifiedNameSource

from porter.transforms import Context
from porter.transforms._base import PythonTransform, Rewriter

ROOT = Path(__file__).resolve().parent


class _Probe(Rewriter):
    """For every name, attribute, call, subscript and decorator: what the analysis says, and the filter."""

    def __init__(self, transform, ctx) -> None:
        super().__init__(transform, ctx)
        self.seen: list[tuple[str, set[str], bool, dict[str, bool]]] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Decorator)):
            names = {q.name for q in self.meta_names(node)}
            self.seen.append((self.code(node), names, self.may_import(node),
                              {q: self.may_import(node, q) for q in names}))
        return super().on_visit(node)

    def meta_names(self, node):
        return [q for q in self.meta(QualifiedNameProvider, node, ()) if q.source is QualifiedNameSource.IMPORT]


class _ProbeTransform(PythonTransform, abstract=True):
    name = "probe"
    rewriter = _Probe


def rewriter(code: str) -> tuple[_Probe, cst.Module]:
    """A probe set up as PythonTransform.apply_module sets up a rewriter."""
    r = _Probe(_ProbeTransform(), Context(path="x.py", step=1))
    r.wrapper = MetadataWrapper(cst.parse_module(code), unsafe_skip_copy=True)
    r.source = code
    return r, r.wrapper.module


def probe(code: str) -> list[tuple[str, set[str], bool, dict[str, bool]]]:
    r, _ = rewriter(code)
    r.wrapper.visit(r)
    return r.seen


def assert_never_wrongly_no(code: str) -> int:
    resolved = 0
    for text, names, any_import, by_name in probe(code):
        if names:
            resolved += 1
            assert any_import, f"{text!r} resolves to {names} but the filter said no"
            assert all(by_name.values()), f"{text!r} resolves to {names} but the filter said {by_name}"
    return resolved


TRAPS = '''
import torch
import torch.cuda as tc
import torch.nn.functional
from torch import cuda as c, compile
from torch.cuda import synchronize as sync
from . import sibling
from .pkg import thing as other
from ..up import far


def f():
    import flash_attn.flash_attn_interface as fai
    from torch.backends.cuda import sdp_kernel
    with sdp_kernel(enable_math=True):
        fai.flash_attn_func(1, 2, 3)
    torch = None  # a local shadow: the analysis says "not an import", the filter may say yes
    return torch


class K:
    from torch.amp import autocast as ac
    x = ac


tc.synchronize()
c.mem_get_info()
sync()
compile(f)
torch.nn.functional.scaled_dot_product_attention
torch.cuda.memory.mem_get_info()
sibling.x, other.y, far.z
'''


def test_traps_resolve_only_where_the_filter_lets_them_through():
    assert assert_never_wrongly_no(TRAPS) >= 12


def test_the_filter_says_no_where_nothing_is_imported_or_spelled_otherwise():
    seen = {text: (any_import, names) for text, names, any_import, _ in probe(
        "import torch\nself.x.cuda()\nmodel.cuda()\nlocal = 1\nlocal\nsuper().f()\ntorch.ones(1)\n")}
    assert seen["self.x.cuda"][0] is False and seen["model.cuda"][0] is False and seen["local"][0] is False
    assert seen["super().f"][0] is False  # spelled super.f, like libcst does
    assert seen["torch.ones"] == (True, {"torch.ones"})


def test_prefixes_follow_the_import_spelling():
    code = "import torch.cuda as tc\nfrom torch import nn\ntc.synchronize()\nnn.Linear\n"
    r, module = rewriter(code)
    sync = module.body[2].body[0].value.func
    linear = module.body[3].body[0].value
    assert r.may_import(sync, "torch.cuda.") and not r.may_import(sync, "torch.compile")
    assert r.may_import(linear, "torch.nn.") and not r.may_import(linear, "torch.cuda.")


def test_code_ast_cannot_read_turns_the_filter_off_not_to_no():
    r, _ = rewriter("x = 1\n")
    r.source = "print 'python 2'\n"  # code ast cannot read: the filter must not guess
    assert r.may_import(cst.parse_expression("torch.cuda.synchronize"), "torch.cuda.")


@pytest.mark.parametrize("path", sorted(
    [p.relative_to(ROOT) for p in (ROOT / "fixtures").rglob("*.py")]
    + [Path(torch.__file__).parent / rel for rel in (
        "cuda/__init__.py", "cuda/memory.py", "amp/autocast_mode.py", "nn/modules/module.py",
        "utils/data/dataloader.py", "_dynamo/eval_frame.py", "nn/attention/__init__.py")],
    key=str), ids=str)
def test_real_code_every_resolved_name_passes_the_filter(path):
    file = path if path.is_absolute() else ROOT / path
    code = file.read_text(encoding="utf-8")
    assert_never_wrongly_no(code)
