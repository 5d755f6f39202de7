"""cuda-api: `torch.cuda.X(...)` calls with an npu counterpart follow the device in use."""

from __future__ import annotations

import re

import libcst as cst
from libcst.metadata import PositionProvider
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.analysis import (  # one set of rules: the analysis classifies guards by them, this applies them
    _BUILTINS, _DEVICE_WORDS, _FALLBACK_DEVICES, _LOGGERS, _LOGGING, _SAFE_METHODS, _SAFE_TORCH, has_sites, site_at,
)
from porter.transforms._base import Example, PythonTransform, Rewriter, Safety, walk
from porter.transforms._npu_runtime import (
    CUDA_OR_NPU,
    CUDA_OR_NPU_SOURCE,
    NPU_AVAILABLE,
    NPU_AVAILABLE_SOURCE,
    cuda_or_npu_call,
    is_cuda_literal,
    is_cuda_or_npu_call,
    is_ported_choice,
    need_cuda_or_npu,
    ported,
)
from porter.transforms._torch_npu_data import TorchNpuData, check_version, load

# torch.cuda names other transforms own: no change and no finding here.
OWNED_ELSEWHERE = {
    "mem_get_info": "mem-get-info",
    "amp": "autocast-device",
    "graph": "compile-bypass",
    "graphs": "compile-bypass",
    "CUDAGraph": "compile-bypass",
    "make_graphed_callables": "compile-bypass",
    "graph_pool_handle": "compile-bypass",
    "is_current_stream_capturing": "compile-bypass",
}
# torch.cuda submodules whose functions are re-exported as torch.cuda.X (same objects).
_SUBMODULES = ("memory", "random", "streams")
# Analysis categories whose kept (or paired, decided) sites cuda-api leaves alone.
_KEPT_CATEGORIES = ("cuda_api", "compile_gate", "kernel_gate")
# Answers "is there an accelerator?"; code then often picks "cuda": rewritten only in safe guards.
PREDICATES = ("is_available", "device_count")


class _Rewrite(Rewriter):

    def __init__(self, transform, ctx) -> None:
        super().__init__(transform, ctx)
        self.data: TorchNpuData = load(self.params.torch_npu)
        self.leave = set(self.params.leave)

    # -- names --------------------------------------------------------------------------------------
    def cuda_name(self, node: cst.CSTNode) -> str | None:
        """"synchronize" for torch.cuda.synchronize (also torch.cuda.memory.X, aliases, from-imports)."""
        if not _dotted(node):
            return None  # `torch.cuda.f(0).total_memory` is an attribute of a result, not a torch.cuda name
        for name in self.imported_names(node, within="torch.cuda."):
            rest = name[len("torch.cuda."):].split(".")
            if len(rest) == 2 and rest[0] in _SUBMODULES:
                rest = rest[1:]
            return ".".join(rest)
        return None

    def why_not(self, name: str) -> str | None:
        """None when torch.cuda.<name> is rewritten, else why it is left."""
        if "." in name:
            return f"torch.cuda.{name} has no npu counterpart in torch_npu {self.data.version}'s transfer_to_npu"
        if name in self.leave:
            return f"torch.cuda.{name} is left by the `leave` parameter" + (
                " (torch_npu returns None unless TORCH_NPU_DEVICE_CAPABILITY is set; the caller decides"
                " what an npu can do)" if name == "get_device_capability" else "")
        if name.endswith(("Tensor", "Storage")):
            return f"legacy constructor torch.cuda.{name}: transfer_to_npu maps some of these to other dtypes"
        if not self.data.has_npu_counterpart(name):
            return f"torch.cuda.{name} has no npu counterpart in torch_npu {self.data.version}'s transfer_to_npu"
        return None

    def kept_by_analysis(self, node: cst.Call) -> str | None:
        """Why the analysis keeps this call CUDA-only (a CUDA-only property read from its result,
        such as `get_device_properties(d).major`; a predicate that chooses compile settings or is
        paired with `torch.version.cuda`), else None."""
        if self.source is None or not has_sites(self.ctx.path, self.source, _KEPT_CATEGORIES):
            return None
        start = self.meta(PositionProvider, node).start
        site = site_at(self.ctx.path, self.source, start.line, start.column, _KEPT_CATEGORIES)
        if site is None or not (site.action == "keep" or site.kind == "paired"):
            return None
        if site.action == "decision":
            return f"needs a decision: {site.reason}"
        if site.reason.startswith("harmless: only reachable on CUDA"):
            return site.reason + "; left alone"
        if site.reason.startswith("harmless"):
            return None
        return f"kept CUDA-only: {site.reason}"

    def owned_elsewhere(self, name: str) -> bool:
        return name.split(".")[0] in OWNED_ELSEWHERE

    # -- skipping -----------------------------------------------------------------------------------
    def visit_IfExp(self, node: cst.IfExp) -> bool:
        return not is_ported_choice(node)

    def visit_Annotation(self, node) -> bool:
        return False

    def visit_Import(self, node) -> bool:
        return False

    def visit_ImportFrom(self, node) -> bool:
        return False

    # -- calls ----------------------------------------------------------------------------------------
    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        name = self.cuda_name(original_node.func)
        if name is None or self.owned_elsewhere(name):
            return updated_node
        reason = self.why_not(name) or self.kept_by_analysis(original_node)
        if reason is not None:
            self.find(original_node, "cuda_api", reason)
            return updated_node
        if name in PREDICATES:
            verdict = self.predicate(original_node, name)
            if verdict is not None:
                self.find(original_node, "cuda_api", verdict)
                return updated_node
        need_cuda_or_npu(self)
        result = updated_node.with_changes(func=cst.Attribute(value=cuda_or_npu_call(), attr=cst.Name(name)))
        why = (
            f"torch.cuda.{name}: torch.npu.{name} on an npu host (torch_npu's transfer_to_npu counterpart), "
            "torch.cuda otherwise"
        )
        if name in PREDICATES:
            why = f"guard {why}; the guarded code follows the device too"
        return self.record(original_node, result, why)

    def _reference(self, original: cst.CSTNode) -> None:
        parent = self.parent(original)
        if isinstance(parent, cst.Attribute) and parent.value is original:
            return  # part of a longer name; the outermost node decides
        if isinstance(parent, cst.Call) and parent.func is original:
            return  # leave_Call
        name = self.cuda_name(original)
        if name is None or self.owned_elsewhere(name):
            return
        reason = self.why_not(name) or "referenced without a call (stored, passed or caught); left as is"
        self.find(original, "cuda_api", reason)

    def leave_Attribute(self, original_node, updated_node):
        self._reference(original_node)
        return updated_node

    def leave_Name(self, original_node, updated_node):
        self._reference(original_node)
        return updated_node

    # -- is_available() / device_count() ---------------------------------------------------------------
    def predicate(self, call: cst.Call, name: str) -> str | None:
        """None if this use of the predicate may follow npu, else why it is left for a decision."""
        if not self.params.widen_guards:
            return f"torch.cuda.{name}() left (widen_guards is off)"
        child: cst.CSTNode = call
        negated = False
        while True:
            parent = self.parent(child)
            if isinstance(parent, cst.BooleanOperation):
                child = parent
            elif isinstance(parent, cst.UnaryOperation) and isinstance(parent.operator, cst.Not):
                negated = not negated
                child = parent
            elif name == "device_count" and isinstance(parent, cst.Comparison) and parent.left is child and \
                    len(parent.comparisons) == 1 and \
                    isinstance(parent.comparisons[0].operator, (cst.GreaterThan, cst.GreaterThanEqual)):
                child = parent
            else:
                break
        if name == "device_count" and child is call and self.informational(call):
            return None
        if not (isinstance(parent, (cst.If, cst.IfExp)) and parent.test is child):
            return (f"torch.cuda.{name}() outside an if-test: code often turns the answer into a CUDA device "
                    "or flag later; needs a decision")
        if negated and not self.falls_back(parent, child, call):
            return (f"`not torch.cuda.{name}()` gates the code after it (a CUDA-required check?); "
                    "needs a decision")
        if negated:
            return None
        if isinstance(parent, cst.IfExp) and is_cuda_literal(parent.body):
            return "device choice on torch.cuda.is_available(): hardcoded-device rewrites it"
        blocker = self.blocker(parent.body)
        if blocker is not None:
            return f"guarded code {blocker}; widening the guard to npu could break it"
        return None

    def falls_back(self, branch: cst.CSTNode, test: cst.CSTNode, call: cst.Call) -> bool:
        """`if not torch.cuda.is_available(): device = "cpu"` (and a log line): the branch only falls back
        to a non-CUDA device. Widened, an npu host keeps the device it asked for instead of cpu."""
        if not (isinstance(branch, cst.If) and isinstance(test, cst.UnaryOperation) and test.expression is call):
            return False
        stmts = [s for line in branch.body.body for s in getattr(line, "body", [line])]
        assigned = False
        for stmt in stmts:
            if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.SimpleString):
                value = stmt.value.evaluated_value
                if not isinstance(value, str) or value.split(":")[0] not in _FALLBACK_DEVICES:
                    return False
                assigned = True
            elif not (isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call)
                      and self.informational_call(stmt.value)):
                return False
        orelse = branch.orelse
        return assigned and (orelse is None or self.blocker(orelse) is None)

    def informational_call(self, call: cst.Call) -> bool:
        """print(...) / a logger's info/warning/...: only writes a message."""
        func = call.func
        if isinstance(func, cst.Name):
            return func.value == "print"
        return isinstance(func, cst.Attribute) and func.attr.value in _LOGGING

    def informational(self, node: cst.CSTNode) -> bool:
        """Whether `node` only ends up in a message: print(...), logger.info(...), an f-string."""
        child = node
        while True:
            parent = self.parent(child)
            if isinstance(parent, (cst.FormattedStringExpression, cst.FormattedString)):
                return True
            if isinstance(parent, (cst.Arg, cst.BinaryOperation)):
                child = parent
                continue
            if isinstance(parent, cst.Call) and child is not parent.func:
                func = parent.func
                if isinstance(func, cst.Name):
                    return func.value == "print"
                return isinstance(func, cst.Attribute) and func.attr.value in _LOGGING
            return False

    def blocker(self, region: cst.CSTNode) -> str | None:
        """Why code guarded by is_available() might not work on npu, or None when it follows the device."""
        for node in walk(region, prune=is_ported_choice):
            line = self.line_of(node)[0]
            if is_cuda_literal(node):
                return f"hard-codes a CUDA device (line {line}; run hardcoded-device first)"
            if isinstance(node, (cst.Import, cst.ImportFrom, cst.FunctionDef, cst.ClassDef)):
                return f"imports or defines something (line {line})"
            if isinstance(node, (cst.Assign, cst.AugAssign, cst.AnnAssign)) and _flag(node):
                return f"sets a flag that later code may read as 'CUDA is present' (line {line})"
            if isinstance(node, (cst.Attribute, cst.Name)):
                name = self.cuda_name(node)
                parent = self.parent(node)
                outermost = not (isinstance(parent, cst.Attribute) and parent.value is node)
                if name and outermost and not self.owned_elsewhere(name) and self.why_not(name):
                    return f"uses torch.cuda.{name} (line {line})"
            if isinstance(node, cst.Call) and not self.safe_call(node):
                return f"calls {self.code(node.func).strip()}() (line {line}), which porter cannot vouch for on npu"
        return None

    def safe_call(self, call: cst.Call) -> bool:
        func = call.func
        if isinstance(func, cst.Attribute) and is_cuda_or_npu_call(func.value):
            return True
        if isinstance(func, cst.Name) and func.value.startswith("_porter_"):
            return True
        name = self.cuda_name(func)
        if name is not None:
            return self.owned_elsewhere(name) or self.why_not(name) is None
        names = self.imported_names(func)
        if names:
            factories = set(self.data.device_argument_functions.get("torch", ()))
            return any(n in _SAFE_TORCH or (n.startswith("torch.") and n[len("torch."):] in factories)
                       or n.rsplit(".", 1)[-1] in _LOGGING and n.split(".")[0] in _LOGGERS
                       for n in names)
        if isinstance(func, cst.Name):
            return func.value in _BUILTINS
        if isinstance(func, cst.Attribute):
            return func.attr.value in _SAFE_METHODS
        return False


def _flag(node: cst.Assign | cst.AugAssign | cst.AnnAssign) -> bool:
    """`use_gpu = True`, `n_gpu = 1`: a bool, or a number stored under a device-like name (a batch
    size picked from free memory is not a flag)."""
    value = node.value
    if isinstance(value, cst.Name):
        return value.value in ("True", "False")
    if not isinstance(value, cst.Integer):
        return False
    targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
    words = set()
    for t in targets:
        for n in walk(t):
            if isinstance(n, cst.Name):
                words.update(w for w in re.split(r"[_\W]+", n.value.lower()) if w)
    return bool(words & _DEVICE_WORDS)




def _dotted(node: cst.CSTNode) -> bool:
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


C = f"{CUDA_OR_NPU}()"


def _ported(head: str, tail: str) -> str:
    return ported(head, tail, NPU_AVAILABLE_SOURCE, CUDA_OR_NPU_SOURCE)


class CudaApi(PythonTransform):
    """`torch.cuda.X(...)` calls that torch_npu answers for follow the device in use.

    `torch.cuda.synchronize()` becomes `_porter_cuda_or_npu().synchronize()`: the helper written
    into the module is `torch.npu` on an Ascend npu host (torch_npu present, no CUDA) and
    `torch.cuda` everywhere else, so CUDA and CPU hosts call exactly what they called before.
    "Device in use" is porter's process-wide choice (the one hardcoded-device and mem-get-info
    make too): a call site has no tensor to ask, and an npu host runs the model on npu.

    Which X have a counterpart is not guessed: it is torch_npu's own `transfer_to_npu` table
    (names X for which torch.cuda.X becomes torch.npu.X), read from the torch_npu wheel into
    porter/data. Aliases and from-imports are found (`import torch as t`,
    `from torch.cuda import synchronize as sync`), as are torch.cuda.memory/random/streams.X.

    `torch.cuda.is_available()` and `device_count()` answer "is there an accelerator", and code
    often answers that with "cuda" a few lines later. They are rewritten only as the test of an
    `if` or conditional expression whose guarded code then follows the device: it calls only
    rewritten torch.cuda APIs, torch's tensor factories, `.to()/.half()/.eval()`, logging and
    builtins, and hard-codes no CUDA device (run hardcoded-device first) and sets no bare flag.
    Anything else (`use_cuda = torch.cuda.is_available()`, `if not ...: raise`, guards around
    `.cuda()`, compile or unknown calls) is a finding that says why.

    Left as findings: torch.cuda names without a counterpart (nvtx, get_arch_list, ...), the
    `leave` list (default: get_device_capability, which torch_npu answers with None), legacy
    tensor types and references that are not calls. mem_get_info (mem-get-info), torch.cuda.amp
    (autocast-device) and CUDA graphs (compile-bypass) belong to other transforms.
    """

    name = "cuda-api"
    safety = Safety.SAFE  # torch.cuda on CUDA/CPU hosts, exactly as before; npu takes the CUDA path
    prefilter = re.compile(r"\bcuda\b")  # torch.cuda, "cuda:0", .cuda(); not use_cuda_graph
    rewriter = _Rewrite

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        torch_npu: str = Field("2.14.0", description="torch_npu release whose transfer_to_npu table lists the counterparts")
        leave: tuple[str, ...] = Field(
            ("get_device_capability",), description="torch.cuda names left as findings although torch_npu has them")
        widen_guards: bool = Field(
            True, description="rewrite is_available()/device_count() in if-tests whose guarded code follows the device")

        @field_validator("torch_npu")
        @classmethod
        def _has_data(cls, version: str) -> str:
            return check_version(version)

    examples = [
        Example(
            id="seed-and-synchronize-in-a-guard",
            before=(
                "import torch\n\n\ndef set_seed(seed):\n    torch.manual_seed(seed)\n"
                "    if torch.cuda.is_available():\n        torch.cuda.manual_seed_all(seed)\n"
            ),
            after=_ported(
                "import torch\n",
                f"def set_seed(seed):\n    torch.manual_seed(seed)\n"
                f"    if {C}.is_available():\n        {C}.manual_seed_all(seed)\n",
            ),
        ),
        Example(
            id="aliased-module-and-from-import-alias",
            before=(
                "import torch as t\nfrom torch.cuda import synchronize as sync\n\n\n"
                "def timed(fn):\n    sync()\n    out = fn()\n    t.cuda.synchronize()\n"
                "    return out, t.cuda.max_memory_allocated() / 2**30\n"
            ),
            after=_ported(
                "import torch as t\nfrom torch.cuda import synchronize as sync\n",
                f"def timed(fn):\n    {C}.synchronize()\n    out = fn()\n    {C}.synchronize()\n"
                f"    return out, {C}.max_memory_allocated() / 2**30\n",
            ),
        ),
        Example(
            id="device-type-guard-memory-and-streams",
            before=(
                "import torch\n\n\nclass Runtime:\n    def release(self):\n        if self.device.type == \"cuda\":\n"
                "            torch.cuda.empty_cache()\n\n    def stats(self):\n"
                "        torch.cuda.reset_peak_memory_stats()\n        stream = torch.cuda.Stream(device=self.device)\n"
                "        with torch.cuda.stream(stream):\n            start = torch.cuda.Event(enable_timing=True)\n"
                "        return torch.cuda.memory_stats(), torch.cuda.memory_reserved(0), start\n"
            ),
            after=_ported(
                "import torch\n",
                "class Runtime:\n    def release(self):\n        if self.device.type == \"cuda\":\n"
                f"            {C}.empty_cache()\n\n    def stats(self):\n"
                f"        {C}.reset_peak_memory_stats()\n        stream = {C}.Stream(device=self.device)\n"
                f"        with {C}.stream(stream):\n            start = {C}.Event(enable_timing=True)\n"
                f"        return {C}.memory_stats(), {C}.memory_reserved(0), start\n",
            ),
            note="the device-type comparison is widen-device-check's",
        ),
        Example(
            id="device-queries-multiline-with-comment",
            before=(
                "import torch\n\nif torch.cuda.is_available():\n    print(\n        torch.cuda.get_device_name(  # which GPU\n"
                "            torch.cuda.current_device()\n        ),\n        torch.cuda.device_count(),\n"
                "        torch.cuda.get_device_properties(0).total_memory,\n    )\n"
            ),
            after=_ported(
                "import torch\n",
                f"if {C}.is_available():\n    print(\n        {C}.get_device_name(  # which GPU\n"
                f"            {C}.current_device()\n        ),\n        {C}.device_count(),\n"
                f"        {C}.get_device_properties(0).total_memory,\n    )\n",
            ),
        ),
        Example(
            id="bf16-check-and-set-device",
            before=(
                "import torch\n\n\ndef pick_dtype(local_rank):\n    torch.cuda.set_device(local_rank)\n"
                "    if hasattr(torch.cuda, \"is_bf16_supported\") and torch.cuda.is_bf16_supported():\n"
                "        return torch.bfloat16\n    return torch.float16\n"
            ),
            after=_ported(
                "import torch\n",
                f"def pick_dtype(local_rank):\n    {C}.set_device(local_rank)\n"
                f"    if hasattr(torch.cuda, \"is_bf16_supported\") and {C}.is_bf16_supported():\n"
                "        return torch.bfloat16\n    return torch.float16\n",
            ),
        ),
        Example(
            id="guard-around-ported-device-and-autocast",
            before=(
                "import contextlib\n\nimport torch\n\n\ndef ctx(amp):\n"
                f"    return torch.autocast(\"npu\" if {NPU_AVAILABLE}() else \"cuda\") if amp and torch.cuda.is_available() "
                "else contextlib.nullcontext()\n\n\n"
                "def place(model):\n    if torch.cuda.is_available():\n"
                f"        model = model.to(\"npu\" if {NPU_AVAILABLE}() else \"cuda\").half()\n    return model\n"
            ),
            after=ported(
                "import contextlib\n\nimport torch\n",
                f"def ctx(amp):\n    return torch.autocast(\"npu\" if {NPU_AVAILABLE}() else \"cuda\") if amp and {C}.is_available() "
                "else contextlib.nullcontext()\n\n\n"
                f"def place(model):\n    if {C}.is_available():\n"
                f"        model = model.to(\"npu\" if {NPU_AVAILABLE}() else \"cuda\").half()\n    return model\n",
                NPU_AVAILABLE_SOURCE,
                CUDA_OR_NPU_SOURCE,
            ),
            note="code already ported by hardcoded-device/autocast-device: the guards can now admit npu",
        ),
        Example(
            id="guards-that-need-a-decision-left-alone",
            before=(
                "import torch\n\nuse_cuda = torch.cuda.is_available()\n"
                "if not torch.cuda.is_available():\n    raise RuntimeError(\"CUDA is required\")\n"
                "if torch.cuda.is_available():\n    model = model.cuda()\n"
                "if torch.cuda.is_available():\n    model = torch.compile(model)\n"
                "if torch.cuda.is_available():\n    use_gpu = True\n"
                "device = \"cuda\" if torch.cuda.is_available() else \"cpu\"\n"
                "n = torch.cuda.device_count()\n"
            ),
            note="each site is a finding with its reason",
        ),
        Example(
            id="no-counterpart-and-others-left-alone",
            before=(
                "import torch\n\n\ndef f(x):\n    torch.cuda.nvtx.range_push(\"step\")\n"
                "    major, _ = torch.cuda.get_device_capability()\n    free, total = torch.cuda.mem_get_info()\n"
                "    with torch.cuda.amp.autocast():\n        g = torch.cuda.CUDAGraph()\n"
                "    try:\n        return x.sum()\n    except torch.cuda.OutOfMemoryError:\n        return None\n"
            ),
        ),
        Example(
            id="shadowed-strings-comments-left-alone",
            before=(
                "def f(torch):\n    \"\"\"Call torch.cuda.synchronize() before timing.\"\"\"\n    torch.cuda.synchronize()\n\n\n"
                "# torch.cuda.synchronize()\nmsg = \"torch.cuda.synchronize()\"\nlog = f\"{msg} torch.cuda.empty_cache\"\n"
            ),
        ),
        Example(
            id="npu-calls-and-ported-code-left-alone",
            before=_ported(
                "import torch\n",
                f"torch.npu.synchronize()\nif {C}.is_available():\n    {C}.empty_cache()\n",
            ),
        ),
    ]
