"""What counts as a compile gate or a flash gate (porter/transforms/_gates.py).

Widening a gate's device test would switch compile/CUDA graphs or flash-attention kernels on for
npu, so widen-device-check skips them; these cases pin the definition both sides rely on."""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, ParentNodeProvider, QualifiedNameProvider, QualifiedNameSource

from porter.transforms import _gates


def branches(text: str, with_names: bool = True):
    """The first if/while/conditional expression in `text`, its following statements and resolvers."""
    wrapper = MetadataWrapper(cst.parse_module(text))
    qualified = wrapper.resolve(QualifiedNameProvider)
    parents = wrapper.resolve(ParentNodeProvider)

    def names(node):
        value = qualified.get(node)
        value = value() if callable(value) else (value or ())  # libcst resolves qualified names lazily
        return {q.name for q in value if q.source is QualifiedNameSource.IMPORT}

    found = []

    class Find(cst.CSTVisitor):
        def on_visit(self, node):
            if isinstance(node, (cst.If, cst.IfExp, cst.While)) and not found:
                found.append(node)
            return True

    wrapper.module.visit(Find())
    node = found[0]
    following = _gates.following_statements(node, lambda n: parents.get(n))
    return node, following, (names if with_names else None), (lambda n: parents.get(n))


COMPILE_GATES = {
    "body-compiles": "import torch\nif device == 'cuda':\n    model = torch.compile(model)\n",
    "aliased": "import torch as t\nif device.type == 'cuda':\n    model = t.compile(model, mode='reduce-overhead')\n",
    "from-import-alias": "from torch import compile as c\nif dev == 'cuda':\n    m = c(m)\n",
    "else-branch": "import torch\nif dev != 'cuda':\n    pass\nelse:\n    m = torch.compile(m)\n",
    "elif-branch": "import torch\nif dev != 'cuda':\n    pass\nelif fast:\n    m = torch.compile(m)\n",
    "conditional-expression": "import torch\nm = torch.compile(m) if dev == 'cuda' else m\n",
    "guard-clause-voxcpm": (
        "import torch\ntry:\n    if self.device != 'cuda':\n        raise ValueError('only on CUDA')\n"
        "    self.f = torch.compile(self.f)\nexcept Exception:\n    pass\n"
    ),
    "guard-clause-message": "if dev != 'cuda':\n    raise RuntimeError('torch.compile needs CUDA')\n",
    "capture-method-higgs": "if device == 'cuda':\n    self.model.capture_model(self.kv_caches.values())\n",
    "cuda-graph-object": "import torch\nif dev == 'cuda':\n    g = torch.cuda.CUDAGraph()\n",
    "graphed-callables": "import torch\nif dev == 'cuda':\n    f = torch.cuda.make_graphed_callables(f, (x,))\n",
    "setup-cuda-graphs": "if dev == 'cuda':\n    self._setup_cuda_graphs()\n",
    "module-compile": "if dev == 'cuda':\n    model.compile()\n",
    "while": "import torch\nwhile dev == 'cuda':\n    m = torch.compile(m)\n",
}

NOT_COMPILE_GATES = {
    "device-move": "if dev == 'cuda':\n    x = x.cuda()\n",
    "re-compile": "import re\nif dev == 'cuda':\n    p = re.compile('x')\n",
    "builtin-compile": "if dev == 'cuda':\n    code = compile(src, 'f', 'exec')\n",
    "compile-in-test-only": "import torch\nif hasattr(torch, 'compile') and dev == 'cuda':\n    pass\n",
    "docstring-mention": "if dev == 'cuda':\n    '''torch.compile(m) would be faster'''\n    y = f(x)\n",
    "guard-clause-other": "import torch\nif dev != 'cuda':\n    raise ValueError('needs CUDA memory stats')\nfree = torch.cuda.mem_get_info()\n",
    "compile-before-the-guard": (
        "import torch\nm = torch.compile(m)\nif dev != 'cuda':\n    raise ValueError('x')\n"
    ),
}


def _aliased(text: str) -> bool:
    return "import torch as t" in text or "compile as c" in text


# Aliases are recognised by meaning only, so the by-spelling cases leave them out.
@pytest.mark.parametrize("text,with_names", [
    pytest.param(text, with_names, id=f"{key}-{'by-meaning' if with_names else 'by-spelling'}")
    for key, text in COMPILE_GATES.items() for with_names in (True, False) if with_names or not _aliased(text)
])
def test_compile_gates(text, with_names):
    node, following, names, _ = branches(text, with_names)
    assert _gates.is_compile_gate(node, names=names, following=following)
    assert _gates.gate_kind(node, names=names, following=following) == "compile"


@pytest.mark.parametrize("text", NOT_COMPILE_GATES.values(), ids=NOT_COMPILE_GATES.keys())
def test_not_compile_gates(text):
    node, following, names, _ = branches(text)
    assert not _gates.is_compile_gate(node, names=names, following=following)


def test_lead_call_shape_without_following():
    """widen-device-check calls `is_compile_gate(branch)`; a guard clause then needs its message."""
    node, _, _, _ = branches(COMPILE_GATES["guard-clause-message"])
    assert _gates.is_compile_gate(node)
    node, _, _, _ = branches(COMPILE_GATES["guard-clause-voxcpm"])
    assert not _gates.is_compile_gate(node), "without the following statements a plain guard is not known"


FLASH_GATES = {
    "seed001-change-c": "if query.device.type != 'cuda':\n    raise ValueError('flash_attention_2 requires CUDA tensors.')\n",
    "guard-then-call": (
        "from flash_attn import flash_attn_func\nif q.device.type != 'cuda':\n    raise ValueError('needs CUDA')\n"
        "out = flash_attn_func(q, k, v)\n"
    ),
    "selector": "impl = 'flash_attention_2' if device.type == 'cuda' else 'eager'\n",
    "returns-flash": "if device.type == 'cuda' and has_flash:\n    return 'flash_attention_2'\n",
    "calls-flash-method": "if x.is_cuda:\n    out = self._flash_attention(q, k, v)\n",
}

NOT_FLASH_GATES = {
    "sdpa-selector-seed001-change-b": "impl = 'sdpa' if device.type == 'cuda' else 'eager'\n",
    "compares-implementation": "if device.type == 'cuda':\n    ok = impl == 'flash_attention_2'\n",
    "other-guard": "if q.device.type != 'cuda':\n    raise ValueError('needs CUDA')\nout = q + 1\n",
}


@pytest.mark.parametrize("text", FLASH_GATES.values(), ids=FLASH_GATES.keys())
def test_flash_gates(text):
    node, following, names, _ = branches(text)
    assert _gates.is_flash_gate(node, names=names, following=following)
    assert _gates.is_gate(node, names=names, following=following)


@pytest.mark.parametrize("text", NOT_FLASH_GATES.values(), ids=NOT_FLASH_GATES.keys())
def test_not_flash_gates(text):
    node, following, names, _ = branches(text)
    assert not _gates.is_flash_gate(node, names=names, following=following)
    assert not _gates.is_gate(node, names=names, following=following)


def test_enclosing_gate_from_a_comparison():
    text = (
        "import torch\n"
        "def optimize(self):\n"
        "    if self.device != 'cuda':\n"
        "        raise ValueError('x')\n"
        "    self.f = torch.compile(self.f)\n"
        "def _valid_auto_compile_criteria(self):\n"
        "    valid_hardware = self.device.type in ['cuda', 'xpu']\n"
        "    return valid_hardware\n"
        "def move(self, x):\n"
        "    return x.cuda() if self.device.type == 'cuda' else x\n"
    )
    wrapper = MetadataWrapper(cst.parse_module(text))
    parents = wrapper.resolve(ParentNodeProvider)
    comparisons = []

    class Find(cst.CSTVisitor):
        def visit_Comparison(self, node):
            comparisons.append(node)

    wrapper.module.visit(Find())
    kinds = [(_gates.enclosing_gate(c, lambda n: parents.get(n)) or (None,))[0] for c in comparisons]
    assert kinds == ["compile", "compile", None]


# -- the one site analysis (porter/analysis.py) gives the same answers ------------------------------
def _device_sites(text: str):
    from porter.analysis import analyse_source

    return [s for s in analyse_source("m.py", text)
            if s.category in ("device_check", "compile_gate", "kernel_gate")
            or s.category == "attention_backend" and s.kind != "import"]  # a selector, not flash_attn's import


def _left_by_widen(site) -> bool:
    """A site widen-device-check leaves alone: a kept compile/kernel gate, or a flash selector, which
    is attention-fallback's alone (widened by itself it would send npu to flash_attention_2)."""
    if site.category == "attention_backend":
        return site.transform == "attention-fallback" and site.kind == "flash-selector"
    return site.action == "keep" and site.category in ("compile_gate", "kernel_gate")


@pytest.mark.parametrize("text", [*COMPILE_GATES.values(), *FLASH_GATES.values()],
                         ids=[*COMPILE_GATES.keys(), *FLASH_GATES.keys()])
def test_the_analysis_keeps_every_gate(text):
    sites = _device_sites(text)
    assert sites and all(_left_by_widen(s) for s in sites), sites


@pytest.mark.parametrize("text", [*NOT_COMPILE_GATES.values(), *NOT_FLASH_GATES.values()],
                         ids=[*NOT_COMPILE_GATES.keys(), *NOT_FLASH_GATES.keys()])
def test_the_analysis_rewrites_what_is_no_gate(text):
    sites = _device_sites(text)
    # a device check, or a plain attention selector (attention-fallback's site, widened alike by both)
    assert sites and all(s.action == "rewrite" and not _left_by_widen(s) for s in sites), sites
    assert all(s.category == "device_check" or s.kind != "flash-selector" for s in sites), sites
