"""compile-bypass beyond its examples: the report it produces, params, what the patched code does on
a CUDA-less CPU host (device: cpu) and on an npu host (torch given a stand-in `torch.npu`), and that
widen-device-check leaves compile gates alone."""

from __future__ import annotations

import types

import pydantic
import pytest
import torch

from porter.transforms import Context, all_transforms

CB = all_transforms()["compile-bypass"]


def run(text: str, **params):
    return CB(params).apply(text, Context(path="m.py"))


def example(id_: str):
    return next(ex for ex in CB.examples if ex.id == id_)


def test_calls_behind_a_cuda_only_gate_are_left_alone_with_the_gate_line():
    # issue 10: `if self.device != "cuda": raise` dominates both calls; npu never reaches them
    out = run(example("voxcpm-optimize-calls-behind-the-gate-left-alone").before)
    assert not out.changes
    assert [(f.line, f.category) for f in out.findings] == [(9, "compile_gate"), (11, "compile_gate"),
                                                            (12, "compile_gate")]
    assert all("behind the gate at line 9" in f.reason for f in out.findings[1:])


def test_every_bypassed_site_is_a_change_with_its_mode():
    text = example("voxcpm-optimize-calls-behind-the-gate-left-alone").before.replace(
        '            if self.device != "cuda":\n                raise ValueError("VoxCPMModel can only be optimized on CUDA device")\n', "")
    out = run(text)
    sites = [c for c in out.changes if c.before]
    assert [(c.line, c.before) for c in sites] == [(9, "torch.compile"), (10, "torch.compile")]
    assert all('mode="reduce-overhead" captures CUDA graphs' in c.reason for c in sites)
    assert all(c.safety.value == "npu-only" for c in out.changes)
    assert not out.findings


def test_gates_and_captures_are_reported():
    out = run(example("higgs-capture-gate-left-alone").before)
    assert [(f.line, f.category) for f in out.findings] == [(4, "compile_gate")]
    out = run(example("cuda-graph-capture-reported").before)
    assert [(f.line, f.category) for f in out.findings] == [(4, "needs_decision"), (5, "needs_decision")]
    gated = "import torch\n\nif device == 'cuda':\n    g = torch.cuda.CUDAGraph()\n"
    out = run(gated)
    assert [(f.line, f.category) for f in out.findings] == [(3, "compile_gate"), (4, "compile_gate")]
    assert "line 3" in out.findings[1].reason


def test_compile_mode_set_outside_a_call_is_listed():
    text = 'import torch\n\nCOMPILE_MODE = "reduce-overhead"\nm = torch.compile(m, mode=COMPILE_MODE)\n'
    out = run(text)
    assert [(f.line, f.category) for f in out.findings] == [(3, "compile")]


def test_params_validate_and_change_the_devices():
    for bad in ({"on": ["cuda"]}, {"on": []}, {"apis": []}, {"mode": "x"}):
        with pytest.raises(pydantic.ValidationError):
            CB(bad)
    out = run("import torch\nm = torch.compile(m)\n", on=["npu", "cpu"])
    assert 'if not _porter_runs_on(("npu", "cpu")):' in out.text
    out = run("import torch\nm = torch.jit.script(m)\n", apis=["torch.jit.script"])
    assert "_porter_compile_where_supported(torch.jit.script)(m)" in out.text


MODULE = '''
import torch


@torch.compile
def double(x):
    return x * 2


@torch.compile(mode="max-autotune", fullgraph=True)
def triple(x):
    return x * 3


class Net(torch.nn.Module):
    def forward(self, x):
        return x + 1


net = Net()
compiled = torch.compile(net, mode="reduce-overhead")
graphed = torch.cuda.make_graphed_callables(net, (torch.zeros(2),))
'''


def patched_module(**params) -> dict:
    text = CB(params).apply(MODULE, Context(path="m.py")).text
    ns: dict = {"__name__": "patched"}
    exec(compile(text, "m.py", "exec"), ns)
    return ns


def test_off_npu_the_api_is_the_original(monkeypatch):
    """On this CPU host `_porter_compile_where_supported(api)` is `api`: calls are unchanged."""
    calls = []

    def spy(*args, **kwargs):  # records the call; no real compilation, to keep the test fast
        calls.append((args, kwargs))
        return args[0] if args else (lambda fn: fn)

    monkeypatch.setattr(torch, "compile", spy)
    with pytest.raises(Exception):
        patched_module()  # make_graphed_callables needs CUDA here, exactly as upstream would
    assert [kw for _, kw in calls] == [{}, {"mode": "max-autotune", "fullgraph": True}, {"mode": "reduce-overhead"}]


def test_on_an_npu_host_everything_runs_eagerly(monkeypatch):
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called on npu"))
    ns = patched_module()
    assert ns["double"](torch.ones(1)).item() == 2 and ns["double"].__name__ == "double"
    assert ns["triple"].__code__ is not None and ns["triple"](torch.ones(1)).item() == 3
    assert ns["compiled"] is ns["net"] and ns["graphed"] is ns["net"]


def test_on_cpu_keeps_compile_off_without_cuda():
    ns = patched_module(on=["npu", "cpu"])
    assert ns["compiled"] is ns["net"] and ns["double"](torch.ones(1)).item() == 2


# -- widen-device-check leaves compile gates alone ------------------------------------------------
WIDEN = all_transforms().get("widen-device-check")


@pytest.mark.skipif(WIDEN is None, reason="widen-device-check not registered")
@pytest.mark.parametrize(
    "text",
    [
        example("voxcpm-optimize-calls-behind-the-gate-left-alone").before,
        example("higgs-capture-gate-left-alone").before,
        "import torch\nm = torch.compile(m) if device.type == 'cuda' else m\n",
        "def setup(self):\n    if self.device.type == 'cuda':\n        self.setup_cuda_graphs()\n",
    ],
    ids=["voxcpm-guard-clause", "higgs-capture", "conditional-expression", "graph-setup-method"],
)
def test_widen_device_check_skips_compile_gates(text):
    ctx = Context(path="m.py")
    assert WIDEN().apply(text, ctx).text == text
    bypassed = CB().apply(text, ctx).text
    assert WIDEN().apply(bypassed, ctx).text == bypassed, "still a gate once the compile call is bypassed"


def test_fast_index_matches_libcst_visit_order():
    """compile_bypass.index reads fields in libcst's visit order instead of visiting: the same
    nodes, in the same order, with the same parents as _gates.index (a visitor), on code with
    the node types whose visited fields vary (f-string format specs), decorators, lambdas,
    comprehensions and porter's own helpers (left out by both)."""
    import libcst as cst

    from porter.transforms import _gates
    from porter.transforms.compile_bypass import index

    code = (
        "import torch\n"
        "@torch.compile(mode='max-autotune')\n"
        "def f(x, *a, k=lambda y: y + 1, **kw) -> int:\n"
        "    s = f'{x} {x!r:>{k}} {x=}'\n"
        "    return {i: [j for j in range(i) if j] for i in x}[0] if x else (yield from a)\n"
        "def _porter_helper():\n"
        "    return torch.compile\n"
        "class C(torch.nn.Module, metaclass=type):\n"
        "    async def g(self):\n"
        "        async with self as m, open('p') as q:\n"
        "            try:\n"
        "                del m[1:2, ...]\n"
        "            except (ValueError, TypeError) as e:\n"
        "                raise RuntimeError(f'{e:{x}}') from e\n"
        "            finally:\n"
        "                global z\n"
    )
    module = cst.parse_module(code)
    fast, slow = index(module), _gates.index(module)
    assert len(fast.nodes) == len(slow.nodes) > 100
    assert all(a is b for a, b in zip(fast.nodes, slow.nodes))
    assert fast.parents == slow.parents
    assert not any(isinstance(n, cst.FunctionDef) and n.name.value == "_porter_helper" for n in fast.nodes)
