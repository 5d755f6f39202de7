"""porter.resolve gives libcst's QualifiedNameProvider answers without libcst's scope analysis.

Two kinds of proof. Hand-written traps with the answers written out (aliases, `from` imports,
relative imports, every way a local name can shadow an import, the places Python evaluates in
the enclosing scope), so dropping any one rule fails a named case. And, node by node, the same
answers as libcst on every name, attribute, call, subscript and decorator of porter's fixtures and
of real torch and transformers modules (installed in the test environment: real code porter never
saw), with the one deliberate difference pinned by its own test.
"""

from __future__ import annotations

import time
from pathlib import Path

import libcst as cst
import pytest
import torch
import transformers
from libcst.metadata import MetadataWrapper, QualifiedNameProvider, QualifiedNameSource

from porter.resolve import Resolver, iter_named

ROOT = Path(__file__).resolve().parent
TORCH = Path(torch.__file__).parent
TRANSFORMERS = Path(transformers.__file__).parent


def answers(code: str) -> dict[str, set[str]]:
    """Imported names per node text (the last node with a text wins; traps keep texts unique)."""
    module = cst.parse_module(code)
    r = Resolver(module)
    return {module.code_for_node(n): r.imported_names(n) for n in iter_named(module)}


def test_aliases_and_from_imports_resolve_to_what_they_import():
    got = answers(
        "import torch as t\n"
        "import torch.cuda as tc\n"
        "import torch.nn.functional\n"
        "from torch.cuda import mem_get_info as m\n"
        "from torch import cuda as c, compile\n"
        "t.cuda.mem_get_info()\n"
        "tc.synchronize()\n"
        "m(0)\n"
        "c.is_available()\n"
        "compile(f)\n"
        "torch.nn.functional.scaled_dot_product_attention\n"
        "t.ones[0]\n"
        "@t.compile\ndef g(): pass\n"
    )
    assert got["t.cuda.mem_get_info()"] == {"torch.cuda.mem_get_info"}
    assert got["tc.synchronize()"] == {"torch.cuda.synchronize"}
    assert got["m(0)"] == got["m"] == {"torch.cuda.mem_get_info"}
    assert got["c.is_available()"] == {"torch.cuda.is_available"}
    assert got["compile(f)"] == {"torch.compile"}
    assert got["torch.nn.functional.scaled_dot_product_attention"] == {
        "torch.nn.functional.scaled_dot_product_attention"}
    assert got["t.ones[0]"] == {"torch.ones"}
    assert got["@t.compile\n"] == {"torch.compile"}
    assert got["f"] == set()  # never imported


def test_relative_imports_keep_their_dots():
    got = answers(
        "from . import sibling\n"
        "from .pkg import thing as other\n"
        "from ..up import far\n"
        "sibling.x\nother.y\nfar.z\n"
    )
    assert got["sibling.x"] == {".sibling.x"}
    assert got["other.y"] == {".pkg.thing.y"}
    assert got["far.z"] == {"..up.far.z"}


SHADOWS = '''
import torch
from torch.cuda import synchronize as sync


def param(torch):
    torch.cuda.mem_get_info()


def local():
    torch = None
    torch.cuda.is_available()


def loop(xs):
    for torch in xs:
        torch.cuda.current_device()


def handler():
    try:
        pass
    except Exception as torch:
        torch.cuda.device_count()


def managed():
    with open("f") as torch:
        torch.cuda.get_device_name()


def imported_again():
    import numpy as torch
    torch.cuda.empty_cache()


def outer():
    torch = 1

    def inner():
        torch.cuda.memory_allocated()
    return inner


def declared_global():
    global torch
    torch.cuda.max_memory_allocated()


lam = lambda torch: torch.cuda.get_device_properties(0)
comp = [torch.cuda.get_device_capability(torch) for torch in range(2)]
first_iter = [d for d in torch.cuda.device_of(x)]


def default(d=torch.cuda.default_stream):
    pass


class K:
    torch = None
    torch.cuda.stream()

    def method(self):
        torch.cuda.set_device(0)


def walrus():
    (sync := None)
    sync()
'''


def test_a_local_name_that_shadows_an_import_resolves_to_nothing():
    got = answers(SHADOWS)
    shadowed = ["torch.cuda.mem_get_info()", "torch.cuda.is_available()", "torch.cuda.current_device()",
                "torch.cuda.device_count()", "torch.cuda.get_device_name()", "torch.cuda.memory_allocated()",
                "torch.cuda.get_device_properties(0)", "torch.cuda.get_device_capability(torch)",
                "torch.cuda.stream()", "sync()"]
    for text in shadowed:
        assert got[text] == set(), f"{text} is a local name, not torch: resolved to {got[text]}"
    assert got["torch.cuda.empty_cache()"] == {"numpy.cuda.empty_cache"}  # the nearest import wins
    # Evaluated where Python evaluates them: the module scope, where torch is the import.
    assert got["torch.cuda.max_memory_allocated()"] == {"torch.cuda.max_memory_allocated"}  # global
    assert got["torch.cuda.device_of(x)"] == {"torch.cuda.device_of"}  # a comprehension's first iterable
    assert got["torch.cuda.default_stream"] == {"torch.cuda.default_stream"}  # a parameter default
    assert got["torch.cuda.set_device(0)"] == {"torch.cuda.set_device"}  # a class body is not a scope for methods


def test_the_deliberate_difference_from_libcst_a_shadowed_dotted_import():
    """libcst looks `a.b` up before the scope chain, so a local `torch` does not hide `import
    torch.cuda` from it; in Python, and in porter, the local wins."""
    code = "import torch.cuda\n\ndef f(torch):\n    torch.cuda.synchronize()\n"
    module = cst.parse_module(code)
    call = module.body[1].body.body[0].body[0].value
    assert {q.name for q in _libcst(module)[call]} == {"torch.cuda.synchronize"}
    assert Resolver(module).imported_names(call) == set()


def test_the_deliberate_difference_from_libcst_a_read_before_the_local_assignment():
    """libcst resolves a bare name read before the function assigns it (an UnboundLocalError in
    Python) through the enclosing scope, though not the attribute around it; porter says local."""
    code = "import torch\n\ndef f():\n    torch.cuda.synchronize()\n    torch = None\n"
    module = cst.parse_module(code)
    call = module.body[1].body.body[0].body[0].value
    name = call.func.value.value
    table = _libcst(module)
    assert {q.name for q in table[name]} == {"torch"} and not table[call]
    assert Resolver(module).imported_names(name) == Resolver(module).imported_names(call) == set()


def _libcst(module: cst.Module) -> dict[cst.CSTNode, set]:
    table = MetadataWrapper(module, unsafe_skip_copy=True).resolve(QualifiedNameProvider)
    return {k: {q for q in (v() if callable(v) else v) if q.source is QualifiedNameSource.IMPORT}
            for k, v in table.items()}


# -- the same answers as libcst, node by node, on real code --------------------------------------
def _same_as_libcst(code: str) -> tuple[int, int]:
    """Compare every node; returns (nodes, nodes naming an import). Fails with the first mismatches."""
    module = cst.parse_module(code)
    table = MetadataWrapper(module, unsafe_skip_copy=True).resolve(QualifiedNameProvider)
    resolver = Resolver(module)
    wrong, nodes, imported = [], 0, 0
    for node in iter_named(module):
        nodes += 1
        want = table.get(node, set())
        want = want() if callable(want) else want
        # libcst names constants (None/True/False, and "None.join" for `"".join`) as builtins.
        want = {(q.name, q.source) for q in want if q.name not in ("builtins.None", "builtins.True", "builtins.False")}
        got = {(q.name, q.source) for q in resolver.qualified_names(node)}
        imported += any(s is QualifiedNameSource.IMPORT for _, s in got)
        want_imports = {n for n, s in want if s is QualifiedNameSource.IMPORT}
        got_imports = {n for n, s in got if s is QualifiedNameSource.IMPORT}
        # Every import answer exactly; local and builtin ones too, except where libcst has none
        # (it skips some reads in annotations and walrus targets).
        if want_imports != got_imports or (want and want != got):
            wrong.append(f"{module.code_for_node(node)[:80]!r}: libcst {sorted(want)}, resolver {sorted(got)}")
    assert not wrong, f"{len(wrong)} of {nodes} nodes differ:\n" + "\n".join(wrong[:10])
    return nodes, imported


REAL = sorted(
    [p.relative_to(ROOT) for p in (ROOT / "fixtures").rglob("*.py")]
    + [TORCH / rel for rel in ("cuda/__init__.py", "cuda/memory.py", "amp/autocast_mode.py",
                               "utils/data/dataloader.py", "nn/attention/__init__.py")]
    + [TRANSFORMERS / rel for rel in ("models/llama/modeling_llama.py", "integrations/sdpa_attention.py",
                                      "integrations/flash_attention.py", "modeling_flash_attention_utils.py",
                                      "pytorch_utils.py", "models/whisper/modeling_whisper.py")],
    key=str)


@pytest.mark.parametrize("path", REAL, ids=str)
def test_same_answers_as_libcst_on_real_code(path):
    file = path if path.is_absolute() else ROOT / path
    _same_as_libcst(file.read_text(encoding="utf-8"))


def test_same_answers_as_libcst_on_the_traps():
    nodes, imported = _same_as_libcst(SHADOWS + "\nfrom . import sibling\nfrom .pkg import thing as o\n"
                                      "import torch as t\nsibling.x, o.y, t.cuda.mem_get_info()\n")
    assert imported >= 10, "the traps must exercise imports for the comparison to mean anything"


def test_real_code_exercises_aliases_and_imports():
    """The comparison above is only worth something if real code names imports through aliases."""
    code = (TRANSFORMERS / "models/llama/modeling_llama.py").read_text(encoding="utf-8")
    _, imported = _same_as_libcst(code)
    assert imported > 100
    got = answers(code)
    assert got["nn.Module"] == {"torch.nn.Module"}  # `from torch import nn`
    assert any(n.startswith("...") for names in got.values() for n in names)  # `from ...utils import`


def test_resolver_is_far_cheaper_than_libcst_scope_analysis():
    code = (TRANSFORMERS / "models/whisper/modeling_whisper.py").read_text(encoding="utf-8")
    module = cst.parse_module(code)
    t = time.perf_counter()
    MetadataWrapper(module, unsafe_skip_copy=True).resolve(QualifiedNameProvider)
    libcst = time.perf_counter() - t
    t = time.perf_counter()
    Resolver(module)
    ours = time.perf_counter() - t
    assert ours * 10 < libcst, f"resolver {ours:.3f} s, libcst {libcst:.3f} s"


# -- lines of a node, read off the text (Rewriter.line_of) ---------------------------------------
@pytest.mark.parametrize("path", [TRANSFORMERS / "integrations/sdpa_attention.py",
                                  ROOT / "fixtures/ming_omni_tts/upstream/modeling_bailing_moe.py"], ids=str)
def test_lines_read_off_the_text_are_libcst_positions(path):
    from libcst.metadata import PositionProvider

    from porter.transforms._base import _lines_in_text

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
    kinds = (cst.Call, cst.Comparison, cst.SimpleString, cst.Attribute, cst.SimpleStatementLine, cst.Arg,
             cst.Decorator, cst.If, cst.While, cst.For, cst.FunctionDef, cst.ClassDef, cst.Assign, cst.Import,
             cst.ImportFrom, cst.BooleanOperation, cst.Name)
    answered = asked = 0
    for node, pos in positions.items():
        if not isinstance(node, kinds):
            continue
        asked += 1
        found = _lines_in_text(source, module, node, parents)
        if found is not None:
            answered += 1
            assert found == (pos.start.line, pos.end.line), module.code_for_node(node)[:80]
    assert answered > asked / 2, f"only {answered} of {asked} nodes found in the text"


def test_lines_read_off_the_text_leave_parentheses_out_like_libcst():
    from libcst.metadata import PositionProvider

    from porter.transforms._base import _lines_in_text

    source = ("import x\n\n# c\n@dec\n\n@dec2(\n  1)\ndef f(a):\n    if (\n       a == 'cuda'):\n"
              "        pass\n    elif b:\n        pass\n    for i in y:\n        z = (\n            1)\n")
    module = cst.parse_module(source)
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    f = module.body[1]
    if_, for_ = f.body.body
    assign = for_.body.body[0].body[0]
    for node in (f, if_, if_.test, if_.orelse, for_, assign, assign.value):
        pos = positions[node]
        assert _lines_in_text(source, module, node, {}) in (None, (pos.start.line, pos.end.line))
    assert _lines_in_text(source, module, if_.test, {}) == (10, 10)  # not the "(" line
    assert _lines_in_text(source, module, f, {}) == (8, 16)
    assert _lines_in_text(source, module, if_, {}) == (9, 13)
