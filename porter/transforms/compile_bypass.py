"""compile-bypass: torch.compile and CUDA graphs are kept off on npu; CUDA compiles as before."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field

from libcst.metadata import PositionProvider

from porter.analysis import has_sites, site_at
from porter.transforms import _gates, _runtime
from porter.transforms._npu_runtime import string_value as _string
from porter.transforms._base import Example, PythonTransform, Rewriter, Safety, walk

GRAPH_CAPTURE = frozenset(
    {"torch.cuda.graph", "torch.cuda.CUDAGraph", "torch.cuda.graphs.graph", "torch.cuda.graphs.CUDAGraph"}
)
_CUDA_GRAPH_MODES = {"reduce-overhead", "max-autotune"}
_CUDA = re.compile(r"^cuda(:\d+)?$")

R_WRAP = "{api} kept off on {on}: there {what} eagerly{why}; CUDA and CPU {verb} as before"
R_GATE = (
    "compile gate kept CUDA-only: widening this device test would switch torch.compile/CUDA graphs on "
    "for npu; widen-device-check leaves it alone (see porter/transforms/_gates.py)"
)
R_CAPTURE_GATED = "CUDA-graph capture behind the compile gate at line {line}: kept off on npu by that gate"
R_DOMINATED = "harmless: only reachable on CUDA, behind the gate at line {line} that stays CUDA-only; left alone"
R_METHOD = (
    "nn.Module.compile() compiles in place on every device; compile-bypass cannot route a method call: "
    "gate it on CUDA or decide"
)
R_CAPTURE = (
    "CUDA-graph capture not rewritten: capture/replay cannot be bypassed locally. It stays off on npu "
    "only if its callers are behind a device gate (compile gates are never widened); check them"
)


_FIELD_ORDER: dict[type, tuple[str, ...]] = {}


class _Fields(cst.CSTVisitor):
    """Records the order in which libcst visits one node's fields (its children's order)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        return False

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        self.names.append(attribute)


def _fields_in_order(node: cst.CSTNode) -> tuple[str, ...]:
    kind = type(node)
    names = _FIELD_ORDER.get(kind)
    if names is None:
        rec = _Fields()
        node._visit_and_replace_children(rec)  # one shallow visit per node type
        names = tuple(dict.fromkeys(rec.names))
        if any(f.name not in names and getattr(node, f.name) is None for f in dataclasses.fields(kind)):
            return names  # a field visited only when set (a format spec): learn it per node
        _FIELD_ORDER[kind] = names
    return names


def index(module: cst.Module) -> _gates.Index:
    """`_gates.index` (nodes in source order, parents; porter's `_porter_*` helpers left out)
    without a libcst visit, which rebuilds every node: the fields are read in the order libcst
    visits them, learned once per node type. tests/test_transform_compile_bypass.py checks it
    against `_gates.index`."""
    out = _gates.Index()
    nodes, parents = out.nodes, out.parents
    CSTNode = cst.CSTNode
    stack: list[tuple[cst.CSTNode, cst.CSTNode | None]] = [(module, None)]
    while stack:
        node, parent = stack.pop()
        if type(node) is cst.FunctionDef and node.name.value.startswith("_porter_"):  # type: ignore[attr-defined]
            continue
        if parent is not None:
            parents[node] = parent
        nodes.append(node)
        kids: list[cst.CSTNode] = []
        for f in _fields_in_order(node):
            v = getattr(node, f)
            if isinstance(v, CSTNode):
                kids.append(v)
            elif type(v) in (tuple, list):
                kids.extend(c for c in v if isinstance(c, CSTNode))
        stack.extend((k, node) for k in reversed(kids))
    return out


class _Bypass(Rewriter):
    def __init__(self, transform: "CompileBypass", ctx) -> None:
        super().__init__(transform, ctx)
        self.on = tuple(self.params.on)
        self.on_text = "/".join(self.on)
        self.apis = set(self.params.apis)
        self._wrap: dict[cst.CSTNode, str] = {}  # reference to a compile API -> reason
        self._gates: dict[cst.CSTNode, int] = {}  # compile gate -> line
        self._dominated: set[cst.CSTNode] = set()  # compile uses only CUDA reaches (left alone)

    def _parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._index.parent(node)

    def _ancestors(self, node: cst.CSTNode):
        return self._index.ancestors(node)

    # -- planning (original tree) -------------------------------------------------------------
    def visit_Module(self, node: cst.Module) -> bool:
        super().visit_Module(node)
        self._index = index(node)  # porter's own `_porter_*` helpers are not indexed
        # The planning below asks for places before the traversal has seen any node: with the
        # parents known, line_of/meta read them off the text instead of a whole-module position pass.
        self._parents.update(self._index.parents)
        nodes = self._index.nodes
        for n in nodes:
            if isinstance(n, (cst.If, cst.IfExp, cst.While)) and self._device_test(n.test):
                following = _gates.following_statements(n, self._parent)
                if _gates.is_compile_gate(n, names=self.imported_names, following=following):
                    self._gates[n] = self.line_of(n)[0]
                    self.find(n.test, "compile_gate", R_GATE)
        for n in nodes:
            if isinstance(n, (cst.Name, cst.Attribute)):
                self._plan_reference(n)
            elif isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.func.attr.value == "compile":
                self._plan_method(n)
            elif isinstance(n, cst.SimpleString) and _string(n) in _CUDA_GRAPH_MODES:
                self._plan_mode(n)
        return bool(self._wrap)  # every rewrite is planned above: with none, skip the traversal

    def _device_test(self, test: cst.CSTNode) -> bool:
        for n in walk(test):
            value = _string(n)
            if value is not None and _CUDA.match(value):
                return True
            if isinstance(n, cst.Name) and n.value == "is_cuda":
                return True
            if isinstance(n, cst.Attribute) and n.attr.value == "is_available" and (
                "torch.cuda.is_available" in self.imported_names(n)
            ):
                return True
        return False

    def _may_be_api(self, n: cst.Name | cst.Attribute) -> bool:
        """Spelling filter before asking for qualified names (which is the expensive part)."""
        return self.may_import(n, *self.apis, *GRAPH_CAPTURE)

    def _plan_reference(self, n: cst.Name | cst.Attribute) -> None:
        if not self._may_be_api(n):
            return
        parent = self._parent(n)
        if isinstance(parent, cst.Attribute) and parent.value is n:
            return  # part of a longer dotted name
        names = self.imported_names(n)
        if not names:
            return
        if any(isinstance(a, (cst.Import, cst.ImportFrom, cst.Annotation)) for a in self._ancestors(n)):
            return
        api = next((q for q in sorted(names) if q in self.apis), None)
        if api is not None:
            if isinstance(parent, (cst.AssignTarget, cst.AnnAssign, cst.AugAssign)) and getattr(parent, "target", None) is n:
                return  # `torch.compile = ...`: a monkeypatch, not a use
            if isinstance(parent, cst.Arg):
                holder = self._parent(parent)
                if isinstance(holder, cst.Call) and isinstance(holder.func, cst.Name) and (
                    holder.func.value == _runtime.COMPILE_WHERE_SUPPORTED
                ):
                    return  # already bypassed
            gate = self._dominating_gate(n)
            if gate is not None:
                self._dominated.add(n)
                self.find(n, "compile_gate", R_DOMINATED.format(line=gate))
                return
            self._wrap[n] = self._reason(n, api, parent)
            return
        if names & GRAPH_CAPTURE:
            gate = next((a for a in self._ancestors(n) if a in self._gates), None)
            if gate is not None:
                self.find(n, "compile_gate", R_CAPTURE_GATED.format(line=self._gates[gate]))
            else:
                self.find(n, "needs_decision", R_CAPTURE)

    def _analysed(self, n: cst.CSTNode):
        if self.source is None or not has_sites(self.ctx.path, self.source, ("compile",)):
            return None
        start = self.meta(PositionProvider, n).start
        return site_at(self.ctx.path, self.source, start.line, start.column, ("compile",))

    def _dominating_gate(self, n: cst.CSTNode) -> int | None:
        """The line of a CUDA-only gate that dominates this compile site (the analysis's verdict:
        an early `if device != "cuda": raise`, an `if` on the device), else None."""
        site = self._analysed(n)
        if site is None or site.action != "keep" or not site.context.startswith("line "):
            return None
        return int(site.context[5:].split(":", 1)[0])

    def _plan_method(self, call: cst.Call) -> None:
        """`model.compile(...)` / `self.compile(...)`: nn.Module.compile, in place; reported."""
        site = self._analysed(call)
        if site is None or site.kind != "method":
            return
        self._dominated.add(call.func)  # its mode= is not a setting left elsewhere
        if site.action == "keep" and site.context.startswith("line "):
            self.find(call, "compile_gate", R_DOMINATED.format(line=site.context[5:].split(":", 1)[0]))
        elif site.action == "decision":
            self.find(call, "needs_decision", R_METHOD)

    def _reason(self, n: cst.CSTNode, api: str, parent: cst.CSTNode | None) -> str:
        short = api.rsplit(".", 1)[-1]
        if short == "compile":
            mode = None
            if isinstance(parent, cst.Call) and parent.func is n:
                mode = next((_string(a.value) for a in parent.args if a.keyword and a.keyword.value == "mode"), None)
            why = (
                f' (mode="{mode}" captures CUDA graphs, which npu does not have)'
                if mode in _CUDA_GRAPH_MODES
                else " (inductor's Triton code generation is not validated on npu)"
            )
            return R_WRAP.format(api="torch.compile", on=self.on_text, what="the model runs", why=why, verb="compile")
        if short == "make_graphed_callables":
            return R_WRAP.format(api="torch.cuda.make_graphed_callables", on=self.on_text, what="the callables run",
                                 why=" (CUDA graphs do not exist on npu)", verb="capture graphs")
        return R_WRAP.format(api=api, on=self.on_text, what="the model runs", why="", verb="compile")

    def _plan_mode(self, n: cst.SimpleString) -> None:
        """A CUDA-graph compile mode outside a call porter bypasses: say where it is."""
        for a in self._ancestors(n):
            if isinstance(a, cst.Call) and any(self._bypasses(x) for x in (a.func, *(arg.value for arg in a.args))):
                return  # the mode goes to a call porter bypasses (directly or through functools.partial)
            if isinstance(a, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                break
        parent = self._parent(n)
        if isinstance(parent, (cst.Expr, cst.ComparisonTarget, cst.Comparison)):
            return  # a docstring or a test of the mode, not a setting
        self.find(n, "compile", f'compile mode "{_string(n)}" (CUDA graphs) set here; it takes effect through '
                  "a torch.compile call, which compile-bypass keeps off on npu where it sees it")

    def _bypasses(self, node: cst.CSTNode) -> bool:
        """`node` is a compile API porter wraps, or was wrapped by an earlier run."""
        if node in self._wrap or node in self._dominated:
            return True
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Name):
            return node.func.value == _runtime.COMPILE_WHERE_SUPPORTED
        return isinstance(node, cst.Call) and self._bypasses(node.func)

    # -- rewriting ----------------------------------------------------------------------------
    def _bypassed(self, original: cst.CSTNode, updated: cst.BaseExpression) -> cst.BaseExpression:
        reason = self._wrap.get(original)
        if reason is None:
            return updated
        _runtime.need_runs_on(self)
        name = self.need_helper(*_runtime.compile_where_supported(self.on))
        result = cst.Call(func=cst.Name(name), args=[cst.Arg(updated.with_changes(lpar=[], rpar=[]))],
                          lpar=updated.lpar, rpar=updated.rpar)
        return self.record(original, result, reason)

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        return self._bypassed(original, updated)

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        return self._bypassed(original, updated)


_HELPERS = [*_runtime.runs_on(), _runtime.compile_where_supported(("npu",))]
_CWS = _runtime.COMPILE_WHERE_SUPPORTED


class CompileBypass(PythonTransform):
    """Keep torch.compile and CUDA graphs off on npu (configurable with `on`); CUDA compiles as before.

    * Every use of `torch.compile` (calls, `@torch.compile` and `@torch.compile(...)` decorators,
      `functools.partial(torch.compile, ...)`, aliases) and of
      `torch.cuda.make_graphed_callables` becomes `_porter_compile_where_supported(torch.compile)`:
      the API itself on CUDA and CPU, so those calls are unchanged; on npu a stand-in that returns
      the model (or callables) unchanged, so the code runs eagerly there. `mode="reduce-overhead"`
      and `"max-autotune"` (CUDA graphs) go with the call. Each bypassed site is a change in the
      report, with its mode.
    * Compile gates (see `porter/transforms/_gates.py`): a device test that decides whether
      compile or CUDA graphs run, such as voxcpm's `if self.device != "cuda": raise ...` before
      its torch.compile calls or higgs-audio's `if device == "cuda": self.model.capture_model(...)`,
      is never widened: widening it would switch compile/graph capture on for npu. This transform
      leaves it byte-identical and lists it as a finding; widen-device-check skips it by the same
      definition (`is_compile_gate`).
    * `torch.cuda.graph(...)` / `torch.cuda.CUDAGraph()` capture cannot be bypassed locally (the
      replay needs the capture); each use is listed, as kept off by a gate when it sits inside
      one, otherwise as needing a decision (its callers must be gated).
    * A CUDA-graph compile mode set outside a bypassed call (a config default) is listed too.

    On a host where the npu is the accelerator, "npu" in `on` holds; the check happens when the
    API is looked up (for decorators: at import time; torch_npu installed counts even before it is
    imported). `on: [npu, cpu]` also keeps compile off on hosts without CUDA.
    """

    name = "compile-bypass"
    safety = Safety.NPU_ONLY
    # `compile` as a word (torch.compile, aliases, partial(torch.compile)), CUDA-graph APIs, and the
    # names _gates.compile_hint treats as compile/capture functions (their gates are reported);
    # not is_compiling/compiler.
    prefilter = re.compile(
        r"\bcompile[d]?\b|_compile\b|\bcompile_|CUDAGraph|cuda\.graph|cuda_?graph|graphed|_dynamo\.optimize"
        r"|\bcapture_|_capture\b"
    )

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        on: tuple[Literal["npu", "cpu"], ...] = Field(
            ("npu",), min_length=1,
            description='devices where compile and CUDA graphs are kept off ("cpu": no CUDA, no npu)',
        )
        apis: tuple[str, ...] = Field(
            ("torch.compile", "torch.cuda.make_graphed_callables", "torch.cuda.graphs.make_graphed_callables"),
            min_length=1,
            description="qualified names of functions that return a compiled/graphed version of their "
            "first argument (or `model=`/`callables=`); each use is bypassed on `on`",
        )

    rewriter = _Bypass
    examples = [
        Example(
            id="voxcpm-optimize-calls-behind-the-gate-left-alone",
            note="voxcpm optimize(): the gate `if self.device != 'cuda': raise` stays CUDA-only (a compile gate) and "
            "dominates every compile call after it, so npu never reaches them: nothing is rewritten, the gate and "
            "each call are reported as harmless with the gate's line",
            before=(
                "import sys\n"
                "import torch\n"
                "\n"
                "class Model:\n"
                "    def optimize(self, disable: bool = False):\n"
                "        if disable:\n"
                "            return self\n"
                "        try:\n"
                "            if self.device != \"cuda\":\n"
                "                raise ValueError(\"VoxCPMModel can only be optimized on CUDA device\")\n"
                "            self.step = torch.compile(self.step, mode=\"reduce-overhead\", fullgraph=True)\n"
                "            self.decoder = torch.compile(\n"
                "                self.decoder,  # the LocDiT estimator\n"
                "                mode=\"reduce-overhead\",\n"
                "                fullgraph=True,\n"
                "            )\n"
                "        except Exception as e:\n"
                "            print(f\"Warning: torch.compile disabled - {e}\", file=sys.stderr)\n"
                "        return self\n"
            ),
        ),
        Example(
            id="decorators",
            before=(
                "import torch\n"
                "\n"
                "@torch.compile\n"
                "def f(x):\n"
                "    return x + 1\n"
                "\n"
                "@torch.compile(mode='max-autotune', fullgraph=True)\n"
                "def g(x):\n"
                "    return x * 2\n"
            ),
            after=_runtime.with_helpers(
                "import torch\n",
                _HELPERS,
                f"@{_CWS}(torch.compile)\n"
                "def f(x):\n"
                "    return x + 1\n"
                "\n"
                f"@{_CWS}(torch.compile)(mode='max-autotune', fullgraph=True)\n"
                "def g(x):\n"
                "    return x * 2\n",
            ),
        ),
        Example(
            id="aliases-and-partial",
            before=(
                "import functools\n"
                "import torch as t\n"
                "from torch import compile as tc\n"
                "\n"
                "model = t.compile(model)\n"
                "head = tc(head, dynamic=False)\n"
                "compile_fn = functools.partial(t.compile, mode=\"reduce-overhead\")\n"
            ),
            after=_runtime.with_helpers(
                "import functools\nimport torch as t\nfrom torch import compile as tc\n",
                _HELPERS,
                f"model = {_CWS}(t.compile)(model)\n"
                f"head = {_CWS}(tc)(head, dynamic=False)\n"
                f"compile_fn = functools.partial({_CWS}(t.compile), mode=\"reduce-overhead\")\n",
            ),
        ),
        Example(
            id="make-graphed-callables",
            before=(
                "import torch\n"
                "\n"
                "step = torch.cuda.make_graphed_callables(step, (sample,))\n"
            ),
            after=_runtime.with_helpers(
                "import torch\n",
                _HELPERS,
                f"step = {_CWS}(torch.cuda.make_graphed_callables)(step, (sample,))\n",
            ),
        ),
        Example(
            id="higgs-capture-gate-left-alone",
            note="higgs-audio serve_engine.py: `device == 'cuda'` guards CUDA-graph capture; widening it would "
            "capture graphs on npu. Reported as a compile gate; widen-device-check skips it",
            before=(
                "import torch\n"
                "\n"
                "def setup(self, device):\n"
                "    if device == \"cuda\":\n"
                "        logger.info(\"Capturing CUDA graphs for each KV cache length\")\n"
                "        self.model.capture_model(self.kv_caches.values())\n"
            ),
        ),
        Example(
            id="cuda-graph-capture-reported",
            note="capture/replay cannot be bypassed locally: reported (needs its callers gated)",
            before=(
                "import torch\n"
                "\n"
                "def capture(self, x):\n"
                "    self._graph = torch.cuda.CUDAGraph()\n"
                "    with torch.cuda.graph(self._graph, stream=self.stream):\n"
                "        self.out = self.model(x)\n"
            ),
        ),
        Example(
            id="shadowed-and-look-alikes-left-alone",
            note="a parameter named torch, re.compile, the builtin compile, torch.compiler.disable, strings",
            before=(
                "import re\n"
                "import torch\n"
                "\n"
                "PATTERN = re.compile(r\"\\d+\")\n"
                "code = compile(source, \"<string>\", \"exec\")\n"
                "\n"
                "def f(m, torch):\n"
                "    return torch.compile(m)\n"
                "\n"
                "@torch.compiler.disable\n"
                "def g(x):\n"
                "    \"\"\"Never torch.compile(x) this.\"\"\"\n"
                "    # torch.compile(x, mode=\"reduce-overhead\")\n"
                "    return f\"torch.compile({x})\" if hasattr(torch, \"compile\") else x\n"
            ),
        ),
        Example(
            id="already-bypassed-left-alone",
            before=_runtime.with_helpers(
                "import torch\n",
                _HELPERS,
                f"model = {_CWS}(torch.compile)(model, mode=\"reduce-overhead\")\n",
            ),
        ),
    ]
