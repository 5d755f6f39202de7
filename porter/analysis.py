"""One analysis of the CUDA-specific sites in a Python file, read by the transforms and the scan.

A single `ast` pass per file (Python's own parser: ~10x faster than libcst, ~100x faster than its
qualified-name analysis) finds every CUDA-specific site with its context and classifies it once:

* `rewrite`  -- a transform (`Site.transform`) rewrites it and can show CUDA/CPU behaviour unchanged;
* `keep`     -- it must stay CUDA-only (a gate for compilation, CUDA graphs, custom kernels or
                flash-attention; a CUDA-only property), or it is harmless where it is (only
                reachable behind such a gate, an optional import);
* `decision` -- porter cannot show that rewriting is safe: a human decides, the report says why.

The context a device comparison is judged by:

* the boolean expression it sits in: an `and`/`or` operand that reads a CUDA-only property
  (`torch.cuda.get_device_properties(d).major`, capability) keeps the comparison CUDA-only;
* the call it is an argument of and the keyword (`prepare(compile=... "cuda" in str(device))`);
* the name it is assigned to (`use_cuda_kernel = ...`) and where that name flows in its function
  (an `if` it guards, a keyword it is passed as);
* the branch it guards, read on the CUDA side: compiles or captures CUDA graphs (compile gate),
  builds or runs custom kernels / flash-attention (kernel gate), asserts or raises on CUDA's
  absence, or reads state that is only built when `torch.cuda.is_available()` (decisions).

Sites that only CUDA can reach (inside the CUDA side of a gate that stays CUDA-only, or after an
early `if device != "cuda": raise`) are `keep`, harmless, with the gate's line as context.

Public contract (porter scan / init, the corpus audits): `Site`, `analyse_source`, `analyse_tree`.
Categories are AUDIT.md's.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

CATEGORIES = (
    "device_check", "compile_gate", "kernel_gate", "hardcoded_device", "cuda_api", "autocast", "compile",
    "attention_backend", "cuda_only_import", "custom_kernel", "dtype", "other",
)
ACTIONS = ("rewrite", "keep", "decision")

PREFILTER = re.compile(
    r"cuda|flash_attn|flash_attention|compile|CUDAGraph|triton|apex|xformers|deepspeed|grouped_gemm|nccl|autocast"
    r"|cpp_extension|transformer_engine|vllm"
    r"|stft|fft|view_as_complex|polar|torch\.complex|\d[jJ]\b|CUDAExecutionProvider|TensorrtExecutionProvider"
)
CUDA_ONLY_MODULES = ("flash_attn", "triton", "apex", "xformers", "deepspeed", "grouped_gemm", "nccl", "cupy",
                     "pynvml", "bitsandbytes", "vllm", "mamba_ssm", "causal_conv1d", "transformer_engine")
_KERNEL_MODULES = ("triton", "apex", "xformers", "vllm", "mamba_ssm", "causal_conv1d", "transformer_engine",
                   "flash_attn", "grouped_gemm", "torch.utils.cpp_extension", "cupy")
_CUDA_CPU_ONLY_LIBS = ("faster_whisper", "ctranslate2")  # take device="cuda"/"cpu" strings, no npu
_NO_NPU_BUILD = ("flash_attn", "xformers", "exllamav2")  # CUDA kernels only: never import on an npu host
_FLASH_MODULES = ("flash_attn", "xformers", "transformer_engine", "vllm")
_CUDA = re.compile(r"^cuda(:\d+)?$")
_ATTN_KEY = re.compile(r"(?:^|_)attn_implementation$")
# attention implementations (transformers' attn_implementation values; attention-fallback's)
_IMPLEMENTATIONS = frozenset({"eager", "sdpa", "flex_attention", "paged_attention", "flash_attention_2",
                              "flash_attention_3"})
_RETURNS_IMPLEMENTATION = re.compile(r"attn_implementation|attention_implementation")
COMPILE_APIS = frozenset({
    "torch.compile", "torch._dynamo.optimize", "torch.cuda.graph", "torch.cuda.CUDAGraph",
    "torch.cuda.make_graphed_callables", "torch.cuda.graphs.graph", "torch.cuda.graphs.CUDAGraph",
    "torch.cuda.graphs.make_graphed_callables",
})
_GRAPH_CAPTURE = frozenset({"torch.cuda.graph", "torch.cuda.CUDAGraph", "torch.cuda.graphs.graph",
                            "torch.cuda.graphs.CUDAGraph"})
_NOT_COMPILE_RECEIVERS = {"re", "regex"}
_COMPILE_TOKENS = {"compile", "compiled", "capture", "cudagraph", "cudagraphs", "graphed", "dynamo", "inductor"}
_KERNEL_TOKENS = {"kernel", "kernels", "ext", "extension", "extensions", "cpp", "nvcc", "triton", "cutlass",
                  "cublas", "cudnn", "apex", "jit"}
_FLASH_TOKENS = {"flash", "xformers", "fa2", "fa3", "te", "vllm"}
_CUDA_ONLY_ATTRS = {"major", "minor"}
_CUDA_ONLY_CALLS = {"torch.cuda.get_device_capability", "torch.cuda.get_device_properties"}
# Complex-valued tensors (dtype decisions on npu): calls that return or take one.
_COMPLEX_CALLS = {"torch.istft", "torch.view_as_complex", "torch.polar", "torch.complex"}
_FFT_COMPLEX = {"fft", "ifft", "rfft", "irfft", "fft2", "ifft2", "rfft2", "irfft2", "fftn", "ifftn", "rfftn",
                "irfftn", "hfft", "ihfft"}
_CUDA_BUILD_ATTRS = {"torch.version.cuda", "torch.version.hip"}  # None on an npu build of torch
_MESSAGE_COMPILE = re.compile(r"compil|cuda ?graph|cudagraph|graph capture", re.I)
_MESSAGE_FLASH = re.compile(r"flash", re.I)
_MESSAGE_CUDA = re.compile(r"\bcuda\b|\bgpu\b|nvidia", re.I)


# cuda-api's rules for widening a torch.cuda.is_available()/device_count() guard (it imports them).
# hardcoded-device's device names and command-line option calls (it imports them)
DEVICE_NAMES = r"(?i)^_*([a-z0-9]+_)*devices?(_map|_id|_ids)?$|^map_location$"
_DEVICE_NAME = re.compile(DEVICE_NAMES)
CLI_OPTION = {"add_argument", "option", "Option"}
_POSITIONAL_DEVICE = {"torch.Generator": 0, "torch.set_default_device": 0, "torch.load": 1}  # torch.device: below
_SDP_KERNEL_PARAMS = ("enable_flash", "enable_math", "enable_mem_efficient", "enable_cudnn")
_IMPORT_CATCHERS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_AMP_TRAINING = {"GradScaler", "custom_fwd", "custom_bwd"}  # autocast-device leaves these (training)
_CUDA_OWNED_ELSEWHERE = {"mem_get_info", "amp", "graph", "graphs", "CUDAGraph", "make_graphed_callables",
                         "graph_pool_handle", "is_current_stream_capturing"}
_BUILTINS = {"print", "len", "str", "int", "float", "bool", "round", "min", "max", "format", "isinstance",
             "hasattr", "getattr", "range", "list", "dict", "tuple", "repr", "sum", "abs"}
_SAFE_METHODS = {"to", "half", "float", "bfloat16", "eval", "cpu", "item", "format", "join", "debug", "info",
                 "warning", "warn", "error", "exception", "critical", "log", "warning_once", "info_once"}
_LOGGING = _SAFE_METHODS & {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_SAFE_TORCH = {"torch.manual_seed", "torch.device", "torch.autocast", "torch.amp.autocast",
               "torch.set_float32_matmul_precision", "torch.no_grad", "torch.inference_mode", "torch.is_tensor",
               "torch.get_default_dtype", "torch.set_default_dtype", "warnings.warn", "gc.collect"}
_FALLBACK_DEVICES = {"cpu", "mps", "xpu", "meta"}  # where `if not torch.cuda.is_available():` may fall back
_LOGGERS = {"logging", "loguru"}
_DEVICE_WORDS = {"cuda", "gpu", "gpus", "ngpu", "device", "devices", "accelerator", "rank", "world", "nccl"}


@dataclass(frozen=True)
class Site:
    """One CUDA-specific site and what a correct dual-backend port does with it."""

    file: str  # posix path relative to the tree root
    line: int
    end_line: int
    category: str  # one of CATEGORIES (AUDIT.md)
    action: str  # "rewrite" | "keep" | "decision"
    transform: str  # the transform that owns the site ("" when no transform handles it)
    code: str  # the stripped source line
    reason: str  # one sentence
    context: str = ""  # the gate / expression / keyword the classification rests on
    col: int = 0  # 0-based character column of the site's anchor (the "cuda" literal, `is_cuda`, the call)
    anchor_line: int = 0  # line of the anchor (transforms look sites up by (anchor_line, col))
    kind: str = ""  # finer shape: "compare", "startswith", "is_cuda", "call", "import", "default", ...
    ported: bool = False  # inside code porter wrote (a `_porter_*` helper or the branch it kept)


# -- names ---------------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _tokens(name: str) -> set[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return {t for t in re.split(r"[_.\W]+", name.lower()) if t}


def compile_hint(name: str) -> bool:
    tokens = _tokens(name)
    return bool(tokens & _COMPILE_TOKENS or ("cuda" in tokens and tokens & {"graph", "graphs"}))


def kernel_hint(name: str) -> bool:
    return bool(_tokens(name) & _KERNEL_TOKENS)


def flash_hint(name: str) -> bool:
    return bool(_tokens(name) & _FLASH_TOKENS) or "flash" in name.lower()


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_cuda_literal(node: ast.AST) -> bool:
    value = _str(node)
    if value is not None:
        return bool(_CUDA.match(value))
    return _cuda_fstring(node)


def _cuda_fstring(node: ast.AST) -> bool:
    """f"cuda:{rank}" / f"cuda" (a JoinedStr naming a CUDA device)."""
    if not isinstance(node, ast.JoinedStr) or not node.values:
        return False
    first = node.values[0]
    text = _str(first)
    if text is None:
        return False
    rest = node.values[1:]
    return (text == "cuda:" and len(rest) == 1 and isinstance(rest[0], ast.FormattedValue)) or (
        bool(_CUDA.match(text)) and not rest)


class _Names:
    """A light resolver of import aliases: local name -> qualified name (module-wide, like pyupgrade)."""

    def __init__(self, nodes: Iterable[ast.AST]) -> None:
        self.aliases: dict[str, str] = {}
        for n in nodes:
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        root = a.name.split(".")[0]
                        self.aliases.setdefault(root, root)
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                for a in n.names:
                    if a.name != "*":
                        self.aliases[a.asname or a.name] = f"{n.module}.{a.name}"

    def qualify(self, node: ast.AST) -> str | None:
        name = _dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        base = self.aliases.get(head)
        return (base + ("." + rest if rest else "")) if base else None


# -- the analysis ---------------------------------------------------------------------------------------
class _Analysis:
    def __init__(self, path: str, text: str, tree: ast.Module) -> None:
        self.path = path
        self.text = text
        self.lines = text.splitlines()
        self.tree = tree
        # one walk: every node in breadth-first order, and each node's parent
        self.parent: dict[ast.AST, ast.AST] = {}
        self.nodes: list[ast.AST] = [tree]
        for node in self.nodes:  # grows while it is read
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
                self.nodes.append(child)
        self.names = _Names(self.nodes)
        self.sites: list[Site] = []
        self._seen: set[tuple[int, int, str]] = set()
        self.ported_nodes = self._ported()
        self.cuda_state = self._cuda_state()
        self.props_names = self._props_names()
        self.kept_paths: list[tuple[int, int, int]] = []  # (first, last, gate line) only CUDA reaches
        self.optional = self._optional_imports()
        self._defs: dict[str, list[str] | None] | None = None
        self.predicates: list[tuple[ast.Call, str]] = []  # is_available()/device_count() judged after the walk

    # -- helpers ------------------------------------------------------------------------------------
    def col(self, node: ast.AST) -> int:
        line = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else ""
        return len(line.encode("utf-8")[: node.col_offset].decode("utf-8", "replace"))

    def code(self, line: int) -> str:
        return self.lines[line - 1].strip()[:160] if 0 < line <= len(self.lines) else ""

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        p = self.parent.get(node)
        while p is not None:
            yield p
            p = self.parent.get(p)

    def _ported(self) -> set[ast.AST]:
        """Nodes inside code porter wrote: `_porter_*` functions, calls routed through them, and the
        branch a porter test keeps for upstream (`"npu" if _porter_npu_available() else <upstream>`)."""
        out: set[ast.AST] = set()

        def mark(n: ast.AST) -> None:
            out.update(ast.walk(n))

        for n in self.nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("_porter_"):
                mark(n)
            elif isinstance(n, ast.Call):
                if isinstance(n.func, ast.Call) and isinstance(n.func.func, ast.Name) \
                        and n.func.func.id.startswith("_porter_"):
                    mark(n.func)  # `_porter_compile_where_supported(torch.compile)(model, backend=...)`:
                    #               the arguments are upstream's and are analysed as such
                elif isinstance(n.func, ast.Name) and n.func.id.startswith("_porter_"):
                    mark(n)
            elif isinstance(n, (ast.If, ast.IfExp)) and _porter_test(n.test):
                for part in (n.orelse if isinstance(n.orelse, list) else [n.orelse]):
                    mark(part)
        return out

    def _cuda_state(self) -> set[str]:
        """Names (`x`, `self.x`) bound only when torch.cuda.is_available() holds."""
        out: set[str] = set()
        for n in self.nodes:
            built: list[ast.AST] = []
            if not isinstance(n, ast.If) or not self._tests_cuda_available(n.test):
                continue
            negated = any(_negated(x) and self._tests_cuda_available(x) for x in ast.walk(n.test))
            if not negated:
                built = list(n.body)
            elif n.body and isinstance(n.body[-1], (ast.Return, ast.Raise)):
                built = self._following(n)  # `if not torch.cuda.is_available(): return` then the CUDA state
            if built:
                for s in built:
                    for t in ast.walk(s):
                        if isinstance(t, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                            for tgt in (t.targets if isinstance(t, ast.Assign) else [t.target]):
                                name = _dotted(tgt)
                                if name:
                                    out.add(name)
        return out

    def _tests_cuda_available(self, test: ast.AST) -> bool:
        return any(isinstance(c, ast.Call) and self.names.qualify(c.func) == "torch.cuda.is_available"
                   for c in ast.walk(test))

    def _optional_imports(self) -> set[ast.AST]:
        out: set[ast.AST] = set()
        for n in self.nodes:
            if isinstance(n, ast.Try) and any(
                h.type is None or re.search(r"ImportError|Exception|ModuleNotFoundError", ast.unparse(h.type))
                for h in n.handlers
            ):
                for s in n.body:
                    out.update(x for x in ast.walk(s) if isinstance(x, (ast.Import, ast.ImportFrom)))
        return out

    def add(self, node: ast.AST, category: str, action: str, transform: str, reason: str,
            context: str = "", kind: str = "", anchor: ast.AST | None = None) -> None:
        anchor = anchor or node
        line = node.lineno
        key = (anchor.lineno, self.col(anchor), category)
        if key in self._seen:
            return
        self._seen.add(key)
        self.sites.append(Site(
            file=self.path, line=line, end_line=getattr(node, "end_lineno", None) or line, category=category,
            action=action, transform=transform, code=self.code(line), reason=reason, context=context,
            col=self.col(anchor), anchor_line=anchor.lineno, kind=kind, ported=anchor in self.ported_nodes,
        ))

    # -- effects of a block -------------------------------------------------------------------------
    def effects(self, nodes: Iterable[ast.AST]) -> dict[str, str]:
        """What code does, by kind -> an example line: compile, kernel, flash, assert_cuda,
        cuda_only (CUDA-only properties), cuda_state (state built only when CUDA is available)."""
        out: dict[str, str] = {}
        for root in nodes:
            for n in ast.walk(root):
                kind = self._effect(n)
                if kind and kind not in out:
                    out[kind] = f"line {getattr(n, 'lineno', 0)}: {self.code(getattr(n, 'lineno', 0))}"
        return out

    def _effect(self, n: ast.AST) -> str | None:
        if isinstance(n, ast.Call):
            q = self.names.qualify(n.func) or ""
            if q in COMPILE_APIS or self._is_method_compile(n):
                return "compile"
            last = (_dotted(n.func) or "").rsplit(".", 1)[-1]
            if q.startswith("torch.utils.cpp_extension") or any(q == m or q.startswith(m + ".") for m in _KERNEL_MODULES if m not in _FLASH_MODULES):
                return "kernel"
            if any(q == m or q.startswith(m + ".") for m in _FLASH_MODULES):
                return "flash"
            if last and last not in ("compile",) and compile_hint(last) and q not in ("re.compile",):
                return "compile"
            if last and flash_hint(last):
                return "flash"
            if last and re.search(r"kernel|load_inline|cpp_extension|build_ext", last, re.I) and not (
                    q.startswith("torch.") and not q.startswith("torch.utils.cpp_extension")):
                return "kernel"  # torch's own kernel selection (sdp_kernel) is not a custom kernel
            if q in _CUDA_ONLY_CALLS and q.endswith("capability"):
                return "cuda_only"
        elif isinstance(n, ast.Attribute):
            if n.attr in _CUDA_ONLY_ATTRS and self._device_properties(n.value):
                return "cuda_only"
            name = _dotted(n)
            if name and name in self.cuda_state and isinstance(n.ctx, ast.Load):
                return "cuda_state"
            q = self.names.qualify(n) or ""
            if q in COMPILE_APIS:
                return "compile"
            if q in _CUDA_BUILD_ATTRS:
                return "cuda_build"
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            if n.id in self.cuda_state:
                return "cuda_state"
            q = self.names.qualify(n) or ""
            if q in COMPILE_APIS:
                return "compile"
        elif isinstance(n, ast.Raise) and n.exc is not None:
            words = " ".join(_str(c) or "" for c in ast.walk(n.exc))
            if re.search(r"\bcuda\b", words, re.I) and re.search(r"avail|requir|not|only|need", words, re.I):
                return "assert_cuda"  # raises on CUDA's absence
        elif isinstance(n, ast.Assert):
            if self._tests_cuda_available(n.test) or _MESSAGE_CUDA.search(ast.unparse(n.msg) if n.msg else ""):
                return "assert_cuda"
        elif isinstance(n, ast.Constant) and n.value in ("flash_attention_2", "flash_attention_3"):
            if not isinstance(self.parent.get(n), ast.Compare):
                return "flash"
        return None

    def _is_method_compile(self, call: ast.Call) -> bool:
        """`model.compile(...)` / `self.compile(...)` (nn.Module.compile), never re.compile / builtin."""
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == "compile"):
            return False
        receiver = _dotted(func.value)
        if receiver is not None and (receiver in _NOT_COMPILE_RECEIVERS or self.names.qualify(func.value) in (
                "re", "regex")):
            return False
        if isinstance(func.value, ast.Call):  # re.compile-like factories rarely chain; str(x).compile no
            return True
        return self.names.qualify(func) not in ("re.compile", "regex.compile")

    def _device_properties(self, node: ast.AST) -> bool:
        """torch.cuda.get_device_properties(...) / a name bound to it / get_device_capability(...)."""
        if isinstance(node, ast.Call):
            return (self.names.qualify(node.func) or "") in _CUDA_ONLY_CALLS
        return _dotted(node) in self.props_names

    def _bound_and_read_for_capability(self, call: ast.Call) -> bool:
        """`props = torch.cuda.get_device_properties(d)` and `props.major` read somewhere in the file."""
        p = self.parent.get(call)
        if not isinstance(p, ast.Assign) or p.value is not call:
            return False
        bound = {x for t in p.targets if (x := _dotted(t))}
        return any(isinstance(n, ast.Attribute) and n.attr in _CUDA_ONLY_ATTRS and _dotted(n.value) in bound
                   for n in self.nodes)

    def _props_names(self) -> set[str]:
        out = set()
        for n in self.nodes:
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and (
                    self.names.qualify(n.value.func) or "") in _CUDA_ONLY_CALLS:
                out.update(x for t in n.targets if (x := _dotted(t)))
        return out

    # -- device comparisons ---------------------------------------------------------------------------
    def device_check(self, node: ast.AST, anchor: ast.AST, kind: str, positive: bool) -> None:
        """Classify one device comparison (`node` is the whole comparison/call/attribute)."""
        if node in self.ported_nodes or anchor in self.ported_nodes:
            return
        verdict = self._judge(node, positive)
        category, action, transform, reason, context = verdict
        if category == "attention_backend" and "falls back to sdpa" in reason:
            kind = "flash-selector"  # only attention-fallback may widen it: it also sends the value to sdpa
        self.add(node, category, action, transform, reason, context, kind, anchor)

    def _judge(self, node: ast.AST, positive: bool) -> tuple[str, str, str, str, str]:
        # climb to the whole expression: through bool ops, `not`, and wrappers such as bool()/str()
        expr, siblings = node, []
        while True:
            p = self.parent.get(expr)
            if isinstance(p, ast.BoolOp):
                siblings.extend(v for v in p.values if v is not expr)
                expr = p
            elif isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.Not):
                positive = not positive
                expr = p
            elif isinstance(p, ast.Call) and isinstance(p.func, ast.Name) and p.func.id == "bool":
                expr = p
            else:
                break
        holder = self.parent.get(expr)
        # 0. an attention selector: attention-fallback widens it (and wraps a flash value)
        selector = self._attention_selector(node, holder) if expr is node else None
        if selector is not None:
            return selector
        # 1. paired with a CUDA-only property in the same boolean expression
        for s in siblings:
            eff = self.effects([s])
            if "cuda_only" in eff:
                return ("device_check", "keep", "widen-device-check",
                        "paired with a CUDA-only property (major/minor/capability): torch_npu has no usable value, "
                        "so npu keeps the non-CUDA branch", f"{ast.unparse(expr)[:120]}")
            if "compile" in eff:
                return ("compile_gate", "keep", "compile-bypass",
                        "decides whether compilation runs (with the other operand): widening would switch it on "
                        "for npu", ast.unparse(expr)[:120])
        # 2. an argument of a call: the keyword (or the callee) says compile / kernel
        if isinstance(holder, ast.keyword) or isinstance(holder, ast.Call) and expr in holder.args:
            call = self.parent.get(holder) if isinstance(holder, ast.keyword) else holder
            key = holder.arg or "" if isinstance(holder, ast.keyword) else ""
            callee = (_dotted(call.func) or "").rsplit(".", 1)[-1] if isinstance(call, ast.Call) else ""
            gate = self._name_gate(key) or (self._name_gate(callee) if callee not in ("str", "bool", "print") else None)
            if gate:
                where = f"{key}=" if key else f"{callee}(...)"
                return (*gate[:3], f"switches on {gate[3]} through {where}: widening would do so on npu",
                        ast.unparse(call)[:120] if isinstance(call, ast.AST) else "")
        # 3. assigned to a name: the name, then where it flows
        targets = []
        if isinstance(holder, (ast.Assign, ast.AnnAssign)) and holder.value is expr:
            targets = holder.targets if isinstance(holder, ast.Assign) else [holder.target]
        elif isinstance(holder, ast.Tuple) and isinstance(self.parent.get(holder), ast.Assign):
            # `_, heads, is_cuda = *q.shape, q.is_cuda`: the target in the same place from the end
            assign = self.parent[holder]
            target = assign.targets[0]  # type: ignore[attr-defined]
            i = holder.elts.index(expr)
            if isinstance(target, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in target.elts) \
                    and not any(isinstance(e, ast.Starred) for e in holder.elts[i:]) \
                    and len(holder.elts) - i <= len(target.elts):
                targets = [target.elts[len(target.elts) - (len(holder.elts) - i)]]
                holder = assign
        if targets:
            for t in targets:
                name = _dotted(t) or ""
                gate = self._name_gate(name.rsplit(".", 1)[-1])
                if gate:
                    return (*gate[:3], f"`{name}` enables {gate[3]}: it stays CUDA-only", ast.unparse(holder)[:120])
                flow = self._flow(name, holder)
                if flow is not None:
                    return flow
        # 4. the test of a branch: what the CUDA side does
        branch = self._branch_of(expr)
        if branch is not None:
            verdict = self._guarded(branch, expr, positive)
            if verdict is not None:
                return verdict
        # 5. inside a function whose name says it decides about compilation
        for a in self.ancestors(node):
            if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if compile_hint(a.name):
                    return ("compile_gate", "keep", "compile-bypass",
                            f"inside {a.name}(), which decides about compilation: stays CUDA-only",
                            f"line {a.lineno}: def {a.name}")
                break
        return ("device_check", "rewrite", "widen-device-check",
                "npu takes the CUDA branch; the branch does no CUDA-only work", "")

    def _attention_selector(self, node: ast.AST, holder: ast.AST | None) -> tuple[str, str, str, str, str] | None:
        """`"sdpa" if d.type == "cuda" else "eager"`: attention-fallback widens the test when the CUDA
        branch is an implementation other than eager and the other branch neither the same nor sdpa (its
        fallback); a flash value npu then reaches falls back to sdpa there. The same rules as its own."""
        if not (isinstance(holder, ast.IfExp) and holder.test is node and isinstance(node, ast.Compare)
                and len(node.ops) == 1):
            return None
        op = node.ops[0]
        if isinstance(op, (ast.Eq, ast.NotEq)):
            cuda_is_true = isinstance(op, ast.Eq)
        elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(node.comparators[0], (ast.Tuple, ast.List, ast.Set)):
            cuda_is_true = isinstance(op, ast.In)
        else:
            return None
        cuda, other = (holder.body, holder.orelse) if cuda_is_true else (holder.orelse, holder.body)
        cuda_value, other_value = _str(cuda), _str(other)
        if cuda_value not in _IMPLEMENTATIONS - {"eager"} or other_value in (cuda_value, "sdpa"):
            return None
        return ("attention_backend", "rewrite", "attention-fallback",
                f"attention selector: npu takes the CUDA branch ({cuda_value!r}"
                + (", which falls back to sdpa there" if "flash" in cuda_value else "") + f") instead of {other_value!r}",
                ast.unparse(holder)[:120])

    def _name_gate(self, name: str) -> tuple[str, str, str, str] | None:
        if not name:
            return None
        if compile_hint(name) or _tokens(name) & {"graph", "graphs"} and "cuda" in _tokens(name):
            return ("compile_gate", "keep", "compile-bypass", "compilation/CUDA graphs")
        if flash_hint(name):
            return ("kernel_gate", "keep", "attention-fallback", "a flash-attention path")
        if kernel_hint(name):
            return ("kernel_gate", "keep", "widen-device-check", "a custom CUDA kernel")
        return None

    def _flow(self, name: str, assign: ast.AST) -> tuple[str, str, str, str, str] | None:
        """Where `name` flows in its function (or class, for self.x): a gate there makes it one."""
        if not name:
            return None
        scope = next((a for a in self.ancestors(assign) if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                              ast.Module))), self.tree)
        if name.startswith("self."):
            scope = next((a for a in self.ancestors(assign) if isinstance(a, ast.ClassDef)), scope)
        for n in ast.walk(scope):
            if n is assign or _dotted(n) != name or not isinstance(getattr(n, "ctx", None), ast.Load):
                continue
            use = n
            p = self.parent.get(use)
            while isinstance(p, (ast.BoolOp, ast.UnaryOp)):
                use, p = p, self.parent.get(p)
            if isinstance(p, ast.keyword):
                gate = self._name_gate(p.arg or "")
                if gate:
                    return (*gate[:3], f"`{name}` is passed as {p.arg}= (line {n.lineno}): it switches on {gate[3]}",
                            f"line {n.lineno}: {self.code(n.lineno)}")
            if isinstance(p, (ast.If, ast.IfExp, ast.While)) and p.test is use:
                verdict = self._guarded(p, use, True)
                if verdict is not None and verdict[1] != "rewrite":
                    return (verdict[0], verdict[1], verdict[2], f"`{name}` flows into the test at line {n.lineno}: "
                            + verdict[3], f"line {n.lineno}: {self.code(n.lineno)}")
        return None

    def _branch_of(self, expr: ast.AST) -> ast.AST | None:
        p = self.parent.get(expr)
        if isinstance(p, (ast.If, ast.IfExp, ast.While)) and p.test is expr:
            return p
        return None

    def _cuda_side(self, branch: ast.AST, positive: bool) -> list[ast.AST]:
        """The code that runs when the device is CUDA (what npu would newly run if widened)."""
        if isinstance(branch, ast.IfExp):
            return [branch.body] if positive else [branch.orelse]
        body, orelse = list(branch.body), list(branch.orelse)  # type: ignore[attr-defined]
        if positive:
            return body
        side = orelse
        if body and isinstance(body[-1], (ast.Raise, ast.Return, ast.Continue, ast.Break)):
            side = side + self._following(branch)
        return side

    def _following(self, stmt: ast.AST) -> list[ast.AST]:
        p = self.parent.get(stmt)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(p, field, None)
            if isinstance(block, list) and stmt in block:
                return block[block.index(stmt) + 1:]
        return []

    def _guarded(self, branch: ast.AST, expr: ast.AST, positive: bool) -> tuple[str, str, str, str, str] | None:
        line = f"line {branch.lineno}: {self.code(branch.lineno)}"
        cuda_side = self._cuda_side(branch, positive)
        other = ([branch.orelse] if positive else [branch.body]) if isinstance(branch, ast.IfExp) else (
            list(branch.orelse) if positive else list(branch.body))  # type: ignore[attr-defined]
        eff_cuda, eff_any = self.effects(cuda_side), self.effects(cuda_side + other)
        message = " ".join(_str(n) or "" for s in other + cuda_side for n in ast.walk(s)
                           if isinstance(n, (ast.Constant,)) and isinstance(self.parent.get(n), (ast.Call, ast.JoinedStr)))
        exits = isinstance(branch, ast.If) and branch.body and isinstance(branch.body[-1], (ast.Raise, ast.Return))
        if "compile" in eff_any or exits and _MESSAGE_COMPILE.search(message):
            self._keep_path(cuda_side, branch.lineno)
            return ("compile_gate", "keep", "compile-bypass",
                    "decides whether torch.compile/CUDA graphs run: widening would switch them on for npu", line)
        if "flash" in eff_any or exits and _MESSAGE_FLASH.search(message):
            self._keep_path(cuda_side, branch.lineno)
            return ("kernel_gate", "keep", "attention-fallback",
                    "decides whether a flash-attention kernel (no npu build) runs; attention-fallback decides "
                    "what npu does", line)
        if "kernel" in eff_any:
            self._keep_path(cuda_side, branch.lineno)
            return ("kernel_gate", "keep", "widen-device-check",
                    "decides whether a custom CUDA kernel is built or run: it stays CUDA-only", line)
        if "cuda_only" in eff_cuda:
            self._keep_path(cuda_side, branch.lineno)
            return ("device_check", "keep", "widen-device-check",
                    "the CUDA branch reads a CUDA-only property (major/minor/capability): npu keeps the other branch",
                    line)
        if "assert_cuda" in eff_cuda:
            return ("device_check", "decision", "widen-device-check",
                    "the CUDA branch asserts CUDA is available (or raises without it): widened, it would fail on "
                    "npu; a human decides "
                    f"({eff_cuda['assert_cuda']})", line)
        if "cuda_state" in eff_cuda:
            return ("device_check", "decision", "widen-device-check",
                    "the CUDA branch uses state built only when torch.cuda.is_available() "
                    f"({eff_cuda['cuda_state']}): widened, npu would reach it without that state", line)
        return None

    def _keep_path(self, stmts: list[ast.AST], gate_line: int) -> None:
        for s in stmts:
            self.kept_paths.append((s.lineno, getattr(s, "end_lineno", None) or s.lineno, gate_line))

    def behind_gate(self, node: ast.AST) -> int | None:
        line = node.lineno
        for first, last, gate in self.kept_paths:
            if first <= line <= last:
                return gate
        return None

    # -- the walk -----------------------------------------------------------------------------------
    def _cuda_only_regions(self) -> None:
        """Code only a CUDA host runs, whatever the device checks say:

        * after `import flash_attn` (xformers, exllamav2: no npu build) in a `try` body: the rest of
          that body runs only where the import succeeded; names it sets to True there are flags;
        * a class whose `__init__` raises when such a flag is false (`if not _EXL2_AVAILABLE: raise`);
        * a class named for flash attention that calls flash attention (`...FlashAttention2`): used
          only with attn_implementation="flash_attention_2", which attention-fallback keeps off npu.
        """
        flags: dict[str, int] = {}
        for n in self.nodes:
            if not isinstance(n, ast.Try):
                continue
            for i, stmt in enumerate(n.body):
                mods = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else (
                    [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 else [])
                if any(m.split(".")[0] in _NO_NPU_BUILD for m in mods):
                    rest = n.body[i + 1:]
                    self._keep_path(rest, stmt.lineno)
                    for r in rest:
                        if isinstance(r, ast.Assign) and isinstance(r.value, ast.Constant) and r.value.value is True:
                            flags.update({t.id: stmt.lineno for t in r.targets if isinstance(t, ast.Name)})
                    break
        for n in self.nodes:
            if not isinstance(n, ast.ClassDef):
                continue
            init = next((b for b in n.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
            for b in (init.body if init else []):
                if isinstance(b, ast.If) and _negated(b.test) and isinstance(b.test.operand, ast.Name) \
                        and b.test.operand.id in flags and b.body and isinstance(b.body[-1], ast.Raise):
                    self._keep_path([n], flags[b.test.operand.id])
                    break
            else:
                if flash_hint(n.name) and "flash" in self.effects(n.body):
                    self._keep_path([n], n.lineno)

    def run(self) -> list[Site]:
        self._cuda_only_regions()
        # Device checks first: their classification decides which paths only CUDA reaches.
        for n in self.nodes:
            if isinstance(n, ast.Compare):
                self._compare(n)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "startswith" \
                    and len(n.args) == 1 and not n.keywords and _str(n.args[0]) is not None \
                    and _CUDA.match(_str(n.args[0]) or ""):
                self.device_check(n, n.args[0], "startswith", True)
            elif isinstance(n, ast.Attribute) and n.attr == "is_cuda" and isinstance(n.ctx, ast.Load):
                self.device_check(n, n, "is_cuda", True)
        for n in self.nodes:
            self._other(n)
        for call, name in self.predicates:
            verdict = self._guard_verdict(call, name)
            if verdict is None:
                self.add(call, "cuda_api", "rewrite", "cuda-api",
                         f"torch.cuda.{name}() guards code that follows the device: cuda-api widens the guard "
                         "(torch.npu's answer on an npu host)", kind="predicate")
            else:
                self.add(call, "cuda_api", "decision", "cuda-api",
                         f"False/0 on npu: {verdict}; cuda-api leaves it", kind="predicate")
        others = []
        for s in self.sites:
            gate = None
            if s.action != "keep" and (s.category != "device_check" or s.action == "rewrite"):
                gate = self._gate_line(s.line)
            if gate is not None:
                s = Site(**{**s.__dict__, "action": "keep",
                            "reason": f"harmless: only reachable on CUDA, behind the gate at line {gate}, "
                                      "which stays CUDA-only",
                            "context": f"line {gate}: {self.code(gate)}"})
            others.append(s)
        return sorted(others, key=lambda s: (s.line, s.col, s.category))

    def _gate_line(self, line: int) -> int | None:
        for first, last, gate in self.kept_paths:
            if first <= line <= last:
                return gate
        return None

    def _compare(self, node: ast.Compare) -> None:
        parts = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            left, right = parts[i], parts[i + 1]
            if isinstance(op, (ast.Eq, ast.NotEq)):
                for a, b in ((right, left), (left, right)):
                    if _str(a) is not None and _CUDA.match(_str(a) or "") and _str(b) is None \
                            and not isinstance(b, ast.JoinedStr):
                        self.device_check(node, a, "compare", isinstance(op, ast.Eq))
                        break
            elif isinstance(op, (ast.In, ast.NotIn)):
                if _str(left) is not None and _CUDA.match(_str(left) or "") and not _mentions_npu(right) \
                        and not isinstance(right, (ast.Tuple, ast.List, ast.Set, ast.Constant)):
                    self.device_check(node, left, "substring", isinstance(op, ast.In))
                elif isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                    values = [_str(e) for e in right.elts]
                    cuda = next((e for e in right.elts if _CUDA.match(_str(e) or "")), None)
                    if cuda is not None and "npu" not in values and _str(left) is None:
                        self.device_check(node, cuda, "collection", isinstance(op, ast.In))

    def _other(self, n: ast.AST) -> None:
        if n in self.ported_nodes:
            return
        if isinstance(n, ast.Import):
            for a in n.names:
                self._import(n, a.name)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            self._import(n, n.module)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in n.args.defaults + [d for d in n.args.kw_defaults if d is not None]:
                if _is_cuda_literal(d):
                    self.add(d, "hardcoded_device", "rewrite", "hardcoded-device",
                             "a CUDA default device: becomes a run-time choice, npu first where available",
                             kind="default")
            positional = n.args.posonlyargs + n.args.args
            pairs = list(zip(positional[len(positional) - len(n.args.defaults):], n.args.defaults))
            for arg, default in pairs + list(zip(n.args.kwonlyargs, n.args.kw_defaults)):
                if default is not None and _ATTN_KEY.search(arg.arg):
                    self._flash_request(default, arg.arg)
            if _RETURNS_IMPLEMENTATION.search(n.name):
                for r in ast.walk(n):
                    if isinstance(r, ast.Return) and r.value is not None:
                        self._flash_request(r.value, f"{n.name}()")
            for d in n.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                q = self.names.qualify(target) or ""
                if q.startswith("triton."):
                    self.add(d, "custom_kernel", "decision", "",
                             "a Triton kernel: no npu backend here; the code calling it needs an npu path",
                             kind="decorator")
        elif isinstance(n, ast.Assign):
            names = [ast.unparse(t) for t in n.targets]
            choices = [x.body for x in ast.walk(n.value) if self._device_choice(x)]  # sites of their own
            if any("device" in x.lower() for x in names) and not _porter_test(n.value) and any(
                    _is_cuda_literal(x) for x in ast.walk(n.value)):
                consumer = self._foreign_consumer(n)
                if not consumer and not any(_is_cuda_literal(x) and x not in choices for x in ast.walk(n.value)):
                    pass  # only device choices: each is a site of its own (the is_available() call)
                elif consumer:
                    self.add(n, "hardcoded_device", "keep", "hardcoded-device",
                             f"the device goes to {consumer}, which knows only cuda/cpu devices (no npu): "
                             "leave it; on npu that library keeps running on cpu", kind="foreign")
                else:
                    self.add(n, "hardcoded_device", "rewrite", "hardcoded-device",
                             "a CUDA device stored in a device name: becomes a run-time choice", kind="assign")
            if any(_ATTN_KEY.search(_key_name(t)) for t in n.targets):
                self._flash_request(n.value, names[0])
        elif isinstance(n, ast.AnnAssign):
            if n.value is not None and _ATTN_KEY.search(_key_name(n.target)):
                self._flash_request(n.value, ast.unparse(n.target))
        elif isinstance(n, ast.Dict):
            for key, value in zip(n.keys, n.values):
                if _str(key) is not None and _ATTN_KEY.search(_str(key) or ""):
                    self._flash_request(value, repr(_str(key)))
        elif isinstance(n, (ast.Attribute, ast.Name)) and self._amp_reference(n):
            self.add(n, "autocast", "rewrite", "autocast-device",
                     "torch.cuda.amp.autocast referenced (passed or stored): follows the device", kind="reference")
        elif isinstance(n, ast.Attribute):
            p = self.parent.get(n)
            if n.attr == "compile" and not (isinstance(p, ast.Call) and p.func is n) \
                    and self.names.qualify(n) == "torch.compile":
                self.add(n, "compile", "rewrite", "compile-bypass",
                         "torch.compile referenced: kept off on npu by compile-bypass", kind="reference")
            elif n.attr in _CUDA_ONLY_ATTRS and self._device_properties(n.value):
                self.add(n, "cuda_api", "keep", "cuda-api",
                         f"`.{n.attr}` of CUDA device properties: torch_npu has no usable value; never sent to torch.npu",
                         kind="property", anchor=n.value)
        elif isinstance(n, ast.Constant) and n.value in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            self.add(n, "other", "decision", "",
                     f"ONNX Runtime's {n.value}: an npu host needs CANNExecutionProvider (onnxruntime-cann); "
                     "no transform handles it", kind="onnx-provider")
        elif isinstance(n, ast.Constant) and isinstance(n.value, complex) and isinstance(
                self.parent.get(n), ast.BinOp) and "torch" in self.names.aliases.values():
            self._complex(n, f"the complex literal {n.value!r}")
        elif isinstance(n, ast.JoinedStr) and _cuda_fstring(n):
            p = self.parent.get(n)
            if not isinstance(p, (ast.Compare, ast.Expr)) and not isinstance(self.parent.get(p), ast.Compare):
                self.add(n, "hardcoded_device", "rewrite", "hardcoded-device",
                         "a CUDA device built from a rank/index: the device type becomes a run-time choice",
                         kind="fstring")
        elif isinstance(n, ast.Call):
            self._call(n)

    def _local_params(self, func: ast.AST) -> list[str]:
        """Positional parameters of the one function of that name this module defines (hardcoded-device's
        rule: `Tokenizer.load_from_checkpoint(path, "cuda")`), without self/cls for a method call."""
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if self._defs is None:
            self._defs = {}
            for f in self.nodes:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = [a.arg for a in f.args.posonlyargs + f.args.args]
                    self._defs[f.name] = None if f.name in self._defs else args
        params = self._defs.get(name or "") or []
        if isinstance(func, ast.Attribute) and params[:1] in (["self"], ["cls"]):
            params = params[1:]
        return params

    def _sdpa_context(self, node: ast.Call, legacy: bool) -> None:
        """An SDPA kernel context, as attention-fallback reads it: rewritten where it turns the math kernel
        off (only CUDA's fused kernels left), harmless where math stays on, a decision where unreadable."""
        p = self.parent.get(node)
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node in p.decorator_list:
            restricts: bool | None = None
        elif any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            restricts = None
        elif legacy:
            values = {k.arg: k.value for k in node.keywords}
            values.update({_SDP_KERNEL_PARAMS[i]: a for i, a in enumerate(node.args[:4])})
            if "enable_math" not in values:
                restricts = False
            else:
                try:
                    restricts = not ast.literal_eval(values["enable_math"])
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    restricts = None
        else:
            backends = next((a for a in node.args[:1]), None) or next(
                (k.value for k in node.keywords if k.arg == "backends"), None)
            items = backends.elts if isinstance(backends, (ast.List, ast.Tuple)) else [backends]
            names = [(self.names.qualify(i) or _dotted(i) or "") if i is not None else "" for i in items]
            members = [n.rsplit(".", 1)[-1] for n in names if "SDPBackend." in n]
            restricts = None if backends is None or len(members) != len(items) else "MATH" not in members
        if restricts is None:
            self.add(node, "attention_backend", "decision", "attention-fallback",
                     "SDPA kernel context porter cannot read (or a decorator): if it turns the math kernel off it "
                     "may fail on npu", kind="sdpa-context")
        elif restricts:
            self.add(node, "attention_backend", "rewrite", "attention-fallback",
                     "SDPA kernel selection with the math kernel off: npu gets the math/SDPA path", kind="call")
        else:
            self.add(node, "attention_backend", "keep", "attention-fallback",
                     "harmless: the SDPA kernel context keeps the math kernel, so it works on any device",
                     kind="sdpa-context")

    def _flash_import_guard(self, node: ast.AST) -> str:
        """Where a flash_attn import sits, as attention-fallback reads it: "function", "guarded" (an `if`
        or a try catching ImportError), "reraises", or "unguarded"."""
        child = node
        for a in self.ancestors(node):
            if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return "function"
            if isinstance(a, ast.If):
                return "guarded"
            if isinstance(a, ast.Try) and child in a.body:
                for h in a.handlers:
                    types = [] if h.type is None else (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])
                    if h.type is None or any((_dotted(t) or "").rsplit(".", 1)[-1] in _IMPORT_CATCHERS for t in types):
                        return "reraises" if h.body and isinstance(h.body[-1], ast.Raise) else "guarded"
            child = a
        return "unguarded"

    def _shares_line(self, node: ast.AST) -> bool:
        p = self.parent.get(node)
        block = next((getattr(p, f) for f in ("body", "orelse", "finalbody")
                      if isinstance(getattr(p, f, None), list) and node in getattr(p, f)), [])
        return any(s is not node and s.lineno <= node.lineno <= (s.end_lineno or s.lineno)
                   or s is not node and node.lineno <= s.lineno <= (node.end_lineno or node.lineno) for s in block)

    def _amp_reference(self, n: ast.AST) -> bool:
        """torch.cuda.amp.autocast named without a call (`partial(torch.cuda.amp.autocast, ...)`)."""
        p = self.parent.get(n)
        if isinstance(p, ast.Call) and p.func is n or isinstance(p, ast.Attribute) and p.value is n:
            return False
        return self.names.qualify(n) in ("torch.cuda.amp.autocast", "torch.cuda.amp.autocast_mode.autocast")

    def _import(self, node: ast.AST, module: str) -> None:
        root = module.split(".")[0]
        if module.startswith("torch.utils.cpp_extension"):
            self.add(node, "custom_kernel", "keep" if node in self.optional else "decision", "",
                     "torch.utils.cpp_extension builds CUDA/C++ extensions: no npu build; the kernels stay CUDA-only",
                     kind="import")
            return
        if root not in CUDA_ONLY_MODULES:
            return
        category = "attention_backend" if root in ("flash_attn",) else (
            "custom_kernel" if root in ("triton",) else "cuda_only_import")
        guard = self._flash_import_guard(node) if root == "flash_attn" else ""
        if node in self.optional and guard != "reraises":
            self.add(node, category, "keep", "guard-import",
                     "harmless: an optional import inside try/except, the module imports without it", kind="import")
        elif guard == "reraises":
            self.add(node, category, "decision", "attention-fallback",
                     "flash_attn import whose except clause re-raises: the module cannot import on npu; guarding it "
                     "would move the failure on CUDA hosts from import time to call time", kind="import")
        elif guard in ("function", "guarded"):
            self.add(node, category, "keep", "attention-fallback",
                     "harmless: " + ("a lazy import, run only on the flash-attention path" if guard == "function"
                                     else "imported only where an `if` says flash-attention is available"),
                     kind="import")
        elif root == "flash_attn" and (isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
                                       or self._shares_line(node)):
            self.add(node, category, "decision", "attention-fallback",
                     "flash_attn import attention-fallback cannot guard name by name (`import *`, or a line shared "
                     "with other statements)", kind="import")
        elif root == "flash_attn":
            self.add(node, category, "rewrite", "attention-fallback",
                     "flash_attn has no npu build: attention-fallback makes the import optional on npu", kind="import")
        else:
            self.add(node, category, "decision", "guard-import",
                     f"{root} is CUDA-only: guard-import or lazy-import make the import optional where a recipe "
                     "says so; the code that uses it needs an npu path", kind="import")

    def _flash_request(self, value: ast.AST, key: str) -> None:
        if _str(value) == "flash_attention_2":
            self.add(value, "attention_backend", "rewrite", "attention-fallback",
                     f'{key} -> "flash_attention_2": falls back to SDPA on npu', kind="request")
        elif isinstance(value, ast.IfExp) and not _porter_test(value.test):
            self._flash_request(value.body, key)
            self._flash_request(value.orelse, key)
        elif isinstance(value, ast.BoolOp):
            for v in value.values:
                self._flash_request(v, key)

    def _call(self, node: ast.Call) -> None:
        q = self.names.qualify(node.func) or ""
        text = _dotted(node.func) or ""
        if q in _COMPLEX_CALLS or q.startswith("torch.fft.") and q.rsplit(".", 1)[-1] in _FFT_COMPLEX or (
                q == "torch.stft" and any(k.arg == "return_complex" and not (
                    isinstance(k.value, ast.Constant) and k.value.value is False) for k in node.keywords)):
            self._complex(node, f"{q}()")
        if q.startswith("torch.cuda.") or q.startswith("torch.backends.cuda."):
            self._cuda_call(node, q)
        elif q in ("torch.compile", "torch._dynamo.optimize"):
            self.add(node, "compile", "rewrite", "compile-bypass",
                     "torch.compile: kept off on npu (the call is routed through a helper); CUDA compiles as before",
                     kind="call")
        elif self._is_method_compile(node) and q != "torch.compile":
            self.add(node, "compile", "decision", "compile-bypass",
                     "nn.Module.compile() compiles in place on every device: gate it on CUDA (compile-bypass cannot "
                     "route a method call)", kind="method")
        elif q in ("torch.autocast", "torch.amp.autocast"):
            if any(_is_cuda_literal(a) for a in node.args[:1]) or any(
                    k.arg == "device_type" and _is_cuda_literal(k.value) for k in node.keywords):
                self.add(node, "autocast", "rewrite", "autocast-device",
                         "autocast on CUDA only: follows the device so npu keeps mixed precision", kind="call")
        elif q in ("torch.is_autocast_enabled", "torch.get_autocast_gpu_dtype") and not node.args \
                and not node.keywords:
            self.add(node, "autocast", "rewrite", "autocast-device", f"{q}() reads CUDA's autocast state",
                     kind="call")
        elif q in ("torch.nn.attention.sdpa_kernel",):
            self._sdpa_context(node, legacy=False)
        elif q.startswith("torch.utils.cpp_extension.") or q.startswith("triton."):
            self.add(node, "custom_kernel", "decision", "",
                     "builds or runs a custom CUDA kernel: no npu build; the caller needs an npu path", kind="call")
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "cuda" and not text.startswith("torch."):
            self.add(node, "hardcoded_device", "rewrite", "hardcoded-device",
                     ".cuda(): moves to the accelerator in use (npu where available)", kind="method")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "to" and node.args and _str(
                node.args[0]) is not None and _CUDA.match(_str(node.args[0]) or ""):
            self.add(node.args[0], "hardcoded_device", "rewrite", "hardcoded-device",
                     '.to("cuda"): moves to the accelerator in use (npu where available)', kind="to")
        positional = [a for a in node.args if not isinstance(a, ast.Starred)]
        params = self._local_params(node.func)
        for i, a in enumerate(positional):
            if (i < len(params) and _DEVICE_NAME.match(params[i]) or _POSITIONAL_DEVICE.get(q) == i) \
                    and _is_cuda_literal(a):
                self.add(a, "hardcoded_device", "rewrite", "hardcoded-device",
                         f"a CUDA device passed as {params[i] if i < len(params) else 'the device'} of {q or text}(): "
                         "becomes a run-time choice", kind="argument")
        last = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if last in CLI_OPTION and any((_str(a) or "").startswith("-") and _DEVICE_NAME.match(
                (_str(a) or "").lstrip("-").replace("-", "_")) for a in node.args):
            for k in node.keywords:
                if k.arg == "default" and _is_cuda_literal(k.value):
                    self.add(k.value, "hardcoded_device", "rewrite", "hardcoded-device",
                             "the default of a --device command-line option: becomes a run-time choice", kind="cli")
        if q == "torch.device" and node.args and _is_cuda_literal(node.args[0]):
            self.add(node, "hardcoded_device", "rewrite", "hardcoded-device",
                     "torch.device(\"cuda\"): becomes a run-time choice", kind="call")
        for k in node.keywords:
            if k.arg == "device_type" and _is_cuda_literal(k.value) and q not in ("torch.autocast",
                                                                                 "torch.amp.autocast"):
                self.add(k.value, "autocast", "decision", "autocast-device",
                         "device_type= a CUDA device outside a torch.autocast call (a partial, a wrapper): "
                         "autocast-device does not follow it, so on npu that region runs without autocast",
                         kind="keyword")
            elif k.arg and _DEVICE_NAME.match(k.arg) and _is_cuda_literal(k.value):
                self.add(k.value, "hardcoded_device", "rewrite", "hardcoded-device",
                         f"{k.arg}= a CUDA device: becomes a run-time choice", kind="keyword")
            if _str(k.value) == "nccl":
                self.add(node, "other", "decision", "",
                         'backend="nccl" is CUDA\'s collective backend (npu uses "hccl"); no transform handles it',
                         kind="keyword")
            if k.arg and _ATTN_KEY.search(k.arg):
                self._flash_request(k.value, k.arg)
        if node.args and _str(node.args[0]) == "nccl" and text.endswith("init_process_group"):
            self.add(node, "other", "decision", "",
                     'backend "nccl" is CUDA\'s collective backend (npu uses "hccl"); no transform handles it',
                     kind="call")

    def _predicate(self, node: ast.Call) -> bool:
        """`torch.cuda.is_available()` / `device_count()` whose context keeps it CUDA-only; adds the site.

        * an argument of a compilation (`torch.compile(backend="inductor" if is_available() else ...)`,
          `prepare(compile=is_available())`): widening would choose CUDA's compile settings on npu;
        * paired in an `and`/`or` with a CUDA-only property (`torch.version.cuda`, `.major`, capability):
          the condition stays false on npu, so widening alone writes an npu branch npu never takes.
        """
        expr, siblings = node, []
        while True:
            p = self.parent.get(expr)
            if isinstance(p, ast.BoolOp):
                siblings.extend(v for v in p.values if v is not expr)
            elif not (isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.Not)
                      or isinstance(p, ast.Compare) and p.left is expr):
                break
            expr = p
        for s in siblings:
            eff = self.effects([s])
            prop = eff.get("cuda_build") or eff.get("cuda_only")
            if prop:
                self.add(node, "cuda_api", "decision", "cuda-api",
                         "paired with a CUDA-only property (torch.version.cuda/hip, major/minor/capability: "
                         "no usable value on npu), so the condition stays CUDA-only; widening the check alone "
                         "would write an npu branch npu never takes: the npu path belongs next to it, a human "
                         "decides", ast.unparse(expr)[:120], kind="paired")
                branch = self._branch_of(expr)
                if branch is not None:
                    self._keep_path(self._cuda_side(branch, not _negated(expr)), branch.lineno)
                return True
            if "compile" in eff:
                self.add(node, "compile_gate", "keep", "cuda-api",
                         "decides with the other operand whether compilation runs: stays CUDA-only",
                         ast.unparse(expr)[:120], kind="gate")
                return True
        child = expr
        for a in self.ancestors(expr):
            if isinstance(a, ast.stmt):
                break
            if isinstance(a, ast.keyword):
                gate = self._name_gate(a.arg or "")
                if gate:
                    self.add(node, gate[0], "keep", "cuda-api",
                             f"chooses {gate[3]} through {a.arg}=: stays CUDA-only", ast.unparse(a)[:120],
                             kind="gate")
                    return True
            if isinstance(a, ast.Call) and child is not a.func and self._compiles(a):
                self.add(node, "compile_gate", "keep", "cuda-api",
                         "chooses a setting of a compilation (backend/mode: inductor, CUDA graphs) that only CUDA "
                         "runs (compile-bypass keeps it off on npu): stays CUDA-only", ast.unparse(a.func)[:120],
                         kind="gate")
                return True
            child = a
        return False

    # -- is_available() / device_count() as cuda-api widens them --------------------------------------
    def _guard_verdict(self, call: ast.Call, name: str) -> str | None:
        """None where cuda-api widens this predicate (an if-test whose guarded code follows the device, a
        negated test that only falls back to cpu, a count only printed), else why it is a decision.
        cuda-api's own rules (porter/transforms/cuda_api.py), read on the upstream code with
        hardcoded-device's rewrites done (the generic steps run it first)."""
        child: ast.AST = call
        negated = False
        while True:
            p = self.parent.get(child)
            if isinstance(p, ast.BoolOp):
                child = p
            elif isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.Not):
                negated, child = not negated, p
            elif name == "device_count" and isinstance(p, ast.Compare) and p.left is child and len(p.ops) == 1 \
                    and isinstance(p.ops[0], (ast.Gt, ast.GtE)):
                child = p
            else:
                break
        if name == "device_count" and child is call and self._informational(call):
            return None
        if not (isinstance(p, (ast.If, ast.IfExp)) and p.test is child):
            return f"torch.cuda.{name}() outside an if-test: code often turns the answer into a CUDA device or flag"
        if negated:
            return None if self._falls_back(p, child, call) else (
                f"`not torch.cuda.{name}()` gates the code after it (a CUDA-required check?)")
        if isinstance(p, ast.IfExp) and _is_cuda_literal(p.body):
            return "a device choice on it: hardcoded-device's"
        blocker = self._blocker([p.body] if isinstance(p, ast.IfExp) else list(p.body))
        return None if blocker is None else f"the guarded code {blocker}"

    def _informational(self, node: ast.AST) -> bool:
        child = node
        while True:
            p = self.parent.get(child)
            if isinstance(p, (ast.FormattedValue, ast.JoinedStr)):
                return True
            if isinstance(p, (ast.keyword, ast.BinOp)):
                child = p
                continue
            if isinstance(p, ast.Call) and child is not p.func:
                return self._informational_call(p)
            return False

    @staticmethod
    def _informational_call(call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Name):
            return func.id == "print"
        return isinstance(func, ast.Attribute) and func.attr in _LOGGING

    def _falls_back(self, branch: ast.AST, test: ast.AST, call: ast.Call) -> bool:
        """`if not torch.cuda.is_available(): device = "cpu"` (and a log line): only falls back."""
        if not (isinstance(branch, ast.If) and isinstance(test, ast.UnaryOp) and test.operand is call):
            return False
        assigned = False
        for stmt in branch.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, (str, bytes)):
                value = stmt.value.value
                if not isinstance(value, str) or value.split(":")[0] not in _FALLBACK_DEVICES:
                    return False
                assigned = True
            elif not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                      and self._informational_call(stmt.value)):
                return False
        return assigned and (not branch.orelse or self._blocker(list(branch.orelse)) is None)

    def _cuda_name(self, node: ast.AST) -> str | None:
        q = self.names.qualify(node) or ""
        if not q.startswith("torch.cuda."):
            return None
        rest = q[len("torch.cuda."):].split(".")
        if len(rest) == 2 and rest[0] in ("memory", "random", "streams"):
            rest = rest[1:]
        return ".".join(rest)

    @staticmethod
    def _cuda_why_not(name: str) -> bool:
        """torch.cuda.<name> is one cuda-api leaves (no npu counterpart, left by default, legacy type)."""
        return "." in name or name == "get_device_capability" or name.endswith(("Tensor", "Storage")) \
            or not _has_npu_counterpart(name)

    def _hardcoded_rewrite_at(self, line: int) -> bool:
        return any(s.category == "hardcoded_device" and s.action == "rewrite" and s.line <= line <= s.end_line
                   for s in self.sites)

    def _blocker(self, region: list[ast.AST]) -> str | None:
        """Why code guarded by is_available() might not work on npu, or None when it follows the device."""
        stack = list(reversed(region))
        while stack:
            node = stack.pop()
            if isinstance(node, ast.IfExp) and _porter_test(node.test):
                continue  # porter's own choice
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
            line = getattr(node, "lineno", 0)
            if _is_cuda_literal(node) and not self._hardcoded_rewrite_at(line):
                return f"hard-codes a CUDA device (line {line})"
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                return f"imports or defines something (line {line})"
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and _flag(node):
                return f"sets a flag that later code may read as 'CUDA is present' (line {line})"
            if isinstance(node, (ast.Attribute, ast.Name)):
                name = self._cuda_name(node)
                p = self.parent.get(node)
                outermost = not (isinstance(p, ast.Attribute) and p.value is node)
                if name and outermost and name.split(".")[0] not in _CUDA_OWNED_ELSEWHERE and self._cuda_why_not(name):
                    return f"uses torch.cuda.{name} (line {line})"
            if isinstance(node, ast.Call) and not self._safe_call(node):
                return f"calls {ast.unparse(node.func)}() (line {line}), which porter cannot vouch for on npu"
        return None

    def _safe_call(self, call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) \
                and isinstance(func.value.func, ast.Name) and func.value.func.id.startswith("_porter_"):
            return True
        if isinstance(func, ast.Name) and func.id.startswith("_porter_"):
            return True
        if any(s.category == "hardcoded_device" and s.action == "rewrite" and s.kind == "method"
               and s.anchor_line == call.lineno and s.col == self.col(call) for s in self.sites):
            return True  # `.cuda()`: hardcoded-device (run first) routes it through porter's helper
        name = self._cuda_name(func)
        if name is not None:
            return name.split(".")[0] in _CUDA_OWNED_ELSEWHERE or not self._cuda_why_not(name)
        q = self.names.qualify(func)
        if q:
            return q in _SAFE_TORCH or (q.startswith("torch.") and q[len("torch."):] in _torch_factories()) or (
                q.rsplit(".", 1)[-1] in _LOGGING and q.split(".")[0] in _LOGGERS)
        if isinstance(func, ast.Name):
            return func.id in _BUILTINS
        if isinstance(func, ast.Attribute):
            return func.attr in _SAFE_METHODS
        return False

    def _early_exit(self, node: ast.Call) -> None:
        """`if not torch.cuda.is_available() [or ...]: return`: cuda-api leaves a negated guard for a
        decision, so the code after it is only reachable on CUDA."""
        p = self.parent.get(node)
        if not (isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.Not)):
            return
        expr = p
        while isinstance(self.parent.get(expr), ast.BoolOp) and isinstance(self.parent[expr].op, ast.Or):
            expr = self.parent[expr]
        branch = self.parent.get(expr)
        if isinstance(branch, ast.If) and branch.test is expr and branch.body \
                and isinstance(branch.body[-1], (ast.Return, ast.Raise)):
            self._keep_path(self._following(branch), branch.lineno)

    def _compiles(self, call: ast.Call) -> bool:
        """torch.compile(...) and the like, `model.compile(...)`, or a call compile-bypass routed."""
        func = call.func
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) \
                and func.func.id.startswith("_porter_compile"):
            return True
        return (self.names.qualify(func) or "") in COMPILE_APIS or self._is_method_compile(call)

    def _complex(self, node: ast.AST, what: str) -> None:
        """A complex-valued tensor (FFT/STFT, `1j`): a dtype question on npu, reported on its line."""
        self.add(node, "dtype", "decision", "",
                 f"{what} makes or reads a complex tensor: check that npu supports complex64 for it, or run it "
                 "on CPU (no transform decides this)", kind="complex")

    def _foreign_consumer(self, assign: ast.Assign) -> str | None:
        """The call outside torch that receives the assigned device in the same function, when it comes
        from a library that knows no npu device (faster-whisper / CTranslate2), else None."""
        names = {x for t in assign.targets if (x := _dotted(t))}
        scope = next((a for a in self.ancestors(assign) if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef))),
                     self.tree)
        for n in ast.walk(scope):
            if not (isinstance(n, ast.Call) and any(_dotted(a) in names for a in
                                                     [*n.args, *(k.value for k in n.keywords)])):
                continue
            q = self.names.qualify(n.func) or ""
            if q.split(".")[0] in _CUDA_CPU_ONLY_LIBS:
                return q
        return None

    def _describes_cuda_build(self, node: ast.AST) -> bool:
        """The statement holding `node` also reads torch.version.cuda: it reports on CUDA itself."""
        stmt = next((a for a in self.ancestors(node) if isinstance(a, ast.stmt)), None)
        return stmt is not None and any(isinstance(n, ast.Attribute) and self.names.qualify(n) == "torch.version.cuda"
                                        for n in ast.walk(stmt))

    def _device_choice(self, node: ast.AST) -> bool:
        """`"cuda" if torch.cuda.is_available() else <x>`: a device chosen as a whole, which
        hardcoded-device rewrites (npu first where available); the test is exactly that call."""
        return (isinstance(node, ast.IfExp) and _is_cuda_literal(node.body) and isinstance(node.test, ast.Call)
                and not node.test.args and not node.test.keywords
                and self.names.qualify(node.test.func) == "torch.cuda.is_available")

    def _cuda_call(self, node: ast.Call, q: str) -> None:
        name = q.split(".")[-1]
        rest = q[len("torch.cuda."):] if q.startswith("torch.cuda.") else q
        choice = self.parent.get(node)
        stmt = next((a for a in self.ancestors(node) if isinstance(a, ast.stmt)), None)
        if name == "is_available" and self._device_choice(choice) and choice.test is node:  # type: ignore[union-attr]
            if isinstance(stmt, ast.Assign) and self._foreign_consumer(stmt):
                return  # the device goes to a library that knows no npu: the assignment's kept site says so
            self.add(choice, "hardcoded_device", "rewrite", "hardcoded-device",
                     "a device chosen by torch.cuda.is_available(): becomes npu first where available, the "
                     "upstream choice otherwise", kind="choice")
        elif name in ("graph", "CUDAGraph", "make_graphed_callables", "graphs"):
            action = "rewrite" if name == "make_graphed_callables" else "decision"
            self.add(node, "compile", action, "compile-bypass",
                     "CUDA-graph capture: stays off on npu only behind a device gate; check its callers"
                     if action == "decision" else "make_graphed_callables: kept off on npu", kind="call")
        elif name in ("sdp_kernel", "sdpa_kernel"):
            self._sdpa_context(node, legacy=name == "sdp_kernel")
        elif name == "enable_flash_sdp":
            self.add(node, "attention_backend", "keep", "attention-fallback",
                     "harmless: a switch of CUDA's SDPA kernels, which npu does not read", kind="call")
        elif "amp" in rest.split(".") and name in _AMP_TRAINING:
            self.add(node, "autocast", "decision", "autocast-device",
                     f"torch.cuda.amp.{name} is for training: porter ports inference and leaves it", kind="training")
        elif "amp" in rest.split(".") and name == "autocast":
            self.add(node, "autocast", "rewrite", "autocast-device", "torch.cuda.amp: follows the device",
                     kind="call")
        elif "amp" in rest.split("."):
            self.add(node, "autocast", "decision", "autocast-device",
                     f"{q}: autocast-device rewrites only torch.cuda.amp.autocast", kind="call")
        elif name == "mem_get_info":
            self.add(node, "cuda_api", "rewrite", "mem-get-info", "free/total memory answered on npu", kind="call")
        elif name in ("is_available", "device_count") and self._predicate(node):
            pass
        elif name in ("is_available", "device_count"):
            self._early_exit(node)
            self.predicates.append((node, name))  # judged once the walk has found hardcoded-device's sites
        elif name in ("get_device_capability",) or name == "get_device_properties" and (
                isinstance(self.parent.get(node), ast.Attribute)
                and self.parent[node].attr in _CUDA_ONLY_ATTRS  # type: ignore[attr-defined]
                or self._bound_and_read_for_capability(node)):
            self.add(node, "cuda_api", "keep", "cuda-api",
                     "CUDA compute capability: torch_npu has no usable value; never sent to torch.npu", kind="call")
        elif _has_npu_counterpart(rest) and self._describes_cuda_build(node):
            self.add(node, "cuda_api", "keep", "cuda-api",
                     f"torch.cuda.{rest} describes the CUDA build next to torch.version.cuda (an environment "
                     "report's CUDA section): it must name CUDA's devices; npu's belong in a section of their own",
                     kind="report")
        elif _has_npu_counterpart(rest):
            self.add(node, "cuda_api", "rewrite", "cuda-api",
                     f"torch.cuda.{rest}: torch.npu.{rest} on an npu host", kind="call")
        else:
            self.add(node, "cuda_api", "decision", "cuda-api",
                     f"{q} has no npu counterpart in torch_npu's transfer_to_npu", kind="call")


def _flag(node: ast.Assign | ast.AugAssign | ast.AnnAssign) -> bool:
    """`use_gpu = True`, `n_gpu = 1`: a bool, or a number stored under a device-like name."""
    value = node.value
    if isinstance(value, ast.Constant) and isinstance(value.value, bool):
        return True
    if not (isinstance(value, ast.Constant) and isinstance(value.value, int) and not isinstance(value.value, bool)):
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    words: set[str] = set()
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                words.update(w for w in re.split(r"[_\W]+", n.id.lower()) if w)
    return bool(words & _DEVICE_WORDS)


@functools.lru_cache(maxsize=1)
def _torch_factories() -> frozenset[str]:
    """torch functions that take a device argument (transfer_to_npu's table): safe under a guard."""
    import json

    raw = json.loads((Path(__file__).resolve().parent / "data" / "torch_npu_transfer-2.14.0.json").read_text())
    return frozenset(raw.get("device_argument_functions", {}).get("torch", ()))


@functools.lru_cache(maxsize=1)
def _npu_counterparts() -> frozenset[str]:
    """torch.cuda names torch_npu's transfer_to_npu maps to torch.npu (porter/data, read without importing
    the transforms: the analysis stays an `ast`-only module that `porter scan` loads fast)."""
    import json

    raw = json.loads((Path(__file__).resolve().parent / "data" / "torch_npu_transfer-2.14.0.json").read_text())
    return frozenset(raw.get("cuda_to_npu", ()))


def _has_npu_counterpart(name: str) -> bool:
    if "." in name:
        head, _, tail = name.partition(".")
        if head in ("memory", "random", "streams"):
            name = tail
        else:
            return False
    try:
        return name in _npu_counterparts()
    except (OSError, ValueError):
        return False


def _negated(test: ast.AST) -> bool:
    return isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)


def _key_name(target: ast.AST) -> str:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
        return str(target.slice.value)
    return ""


def _porter_test(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id.startswith("_porter_")
               for n in ast.walk(test))


def _mentions_npu(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "npu" for n in ast.walk(node))


# -- the public functions -------------------------------------------------------------------------------
def analyse_source(path: str, text: str) -> list[Site]:
    """Every CUDA-specific site in one file's text, classified; [] for text `ast` cannot read."""
    return list(_analyse(path, text))


def _analyse(path: str, text: str) -> tuple[Site, ...]:
    return _result(path, text)[0]


@functools.lru_cache(maxsize=16)  # the steps over one file (and the scan) share it
def _result(path: str, text: str) -> tuple[tuple[Site, ...], tuple[tuple[int, int, int], ...], bool]:
    """(sites, CUDA-only paths as (first line, last line, gate line), whether `ast` read the text)."""
    if not PREFILTER.search(text):
        return (), (), True
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return (), (), False
    analysis = _Analysis(path, text, tree)
    sites = tuple(analysis.run())
    return sites, tuple(analysis.kept_paths), True


def cuda_only_gate(path: str, text: str, line: int) -> int | None:
    """The line of a gate that stays CUDA-only and dominates `line` (only CUDA reaches it), or None."""
    for first, last, gate in _result(path, text)[1]:
        if first <= line <= last:
            return gate
    return None


def no_npu_build_gate(path: str, text: str, line: int) -> int | None:
    """Like `cuda_only_gate`, for gates that are an import of a module with no npu build (`import
    flash_attn` in a try body): code behind them never runs on npu, whatever porter rewrites."""
    gate = cuda_only_gate(path, text, line)
    if gate is None:
        return None
    lines = text.splitlines()
    code = lines[gate - 1] if 0 < gate <= len(lines) else ""
    return gate if re.match(r"\s*(from|import)\s+(%s)\b" % "|".join(_NO_NPU_BUILD), code) else None


def foreign_device(path: str, text: str, line: int) -> Site | None:
    """The kept site of a device assignment on `line` whose device goes to a library that knows no npu."""
    sites, _, _ = _result(path, text)
    return next((s for s in sites if s.kind == "foreign" and s.line <= line <= s.end_line), None)


def has_cuda_only_paths(path: str, text: str) -> bool:
    return bool(_result(path, text)[1])


def has_sites(path: str, text: str, categories: tuple[str, ...], actions: tuple[str, ...] = ("keep", "decision"),
              ) -> bool | None:
    """Whether `text` holds a site of these categories and actions; None when `ast` cannot read it.
    The transforms ask this before looking a site up by position (a libcst position pass is costly)."""
    sites, _, ok = _result(path, text)
    if not ok:
        return None
    return any(s.category in categories and s.action in actions for s in sites)


def analyse_tree(root: Path, files: Iterable[str] | None = None) -> list[Site]:
    """Sites in every `*.py` file under `root` (or the given posix paths relative to it), in path order.
    Files that are not UTF-8 or do not parse are skipped (the scan/report say so where it matters)."""
    root = Path(root)
    paths = sorted(files) if files is not None else sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file() and not p.is_symlink())
    out: list[Site] = []
    for rel in paths:
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out.extend(_analyse(rel, text))
    return out


def site_at(path: str, text: str, line: int, col: int, categories: tuple[str, ...] = ()) -> Site | None:
    """The site anchored at (line, col) in `text` (the transforms' lookup), or None."""
    for s in _analyse(path, text):
        if s.anchor_line == line and s.col == col and (not categories or s.category in categories):
            return s
    return None


def site_owners(path: str, text: str) -> frozenset[str] | None:
    """The transforms that own a site in `text` (`Site.transform`, "" left out); None when `ast`
    cannot read it. The engine runs a transform that acts only at its own sites (porter.transforms,
    SITE_OWNERS) only where this names it: an `ast` pass decides which files libcst parses."""
    sites, _, ok = _result(path, text)
    if not ok:
        return None
    owners = {s.transform for s in sites if s.transform}
    if any(s.category == "attention_backend" and s.action == "rewrite" and s.kind in _DEVICE_CHECK_KINDS
           for s in sites):
        # a plain attention selector (`"sdpa" if d.type == "cuda" else "eager"`) is attention-fallback's
        # site, and widen-device-check widens it the same way wherever it runs (a recipe without
        # attention-fallback): it runs in every file holding one, not only where it has a site of its own
        owners.add("widen-device-check")
    return frozenset(owners)


_DEVICE_CHECK_KINDS = frozenset({"startswith", "is_cuda", "compare", "substring", "collection"})
