"""After the steps: find every CUDA-specific construct still in the patched tree, and say why.

The scanner knows the constructs the transforms handle (device comparisons with "cuda",
torch.cuda calls, flash-attention, compile and CUDA graphs, autocast, hard-coded devices) and
CUDA-only imports (flash_attn, triton, apex, xformers, deepspeed, grouped_gemm, nccl). Each one
still present becomes a finding with the file, the line, a category and why it was left:
outside the recipe's files, no step handles that category, a transform left it for a decision,
or it is harmless where it is (guarding compile, inside a helper porter wrote). It reads with
`ast`, which is fast enough for whole trees such as transformers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from porter.transforms import Finding
from porter.transforms.attention_fallback import RETURNS_IMPLEMENTATION

PREFILTER = re.compile(
    r"cuda|flash_attn|flash_attention|compile|CUDAGraph|triton|apex|xformers|deepspeed|grouped_gemm|nccl|autocast"
)
CUDA_ONLY_MODULES = ("flash_attn", "triton", "apex", "xformers", "deepspeed", "grouped_gemm", "nccl", "cupy",
                     "pynvml", "bitsandbytes", "vllm", "mamba_ssm", "causal_conv1d")
_CUDA = re.compile(r"^cuda(:\d+)?$")
_COMPILE = re.compile(r"torch\.compile|CUDAGraph|cuda\.graph|capture_model|make_graphed_callables|reduce-overhead")
_DEVICE_KWARGS = {"device", "map_location", "device_map", "device_type", "default_device"}
# Where an attention implementation is chosen (attention-fallback's default keys, matched by suffix).
_ATTN_KEY = re.compile(r"(?:^|_)attn_implementation$")

# Which transforms handle which category (a category no step of the recipe uses is "unhandled").
HANDLED_BY = {
    "device-comparison": ("widen-device-check",),
    "cuda-api": ("cuda-api",),
    "flash-attention": ("attention-fallback", "config-edit"),
    "compile": ("compile-bypass",),
    "autocast": ("autocast-device",),
    "hardcoded-device": ("hardcoded-device",),
    "cuda-only-import": ("attention-fallback", "guard-import", "lazy-import"),
}


@dataclass(frozen=True)
class Site:
    line: int
    category: str
    what: str
    in_helper: bool = False
    compile_gate: bool = False
    compile_path: bool = False  # behind a compile gate: only runs where the gate lets CUDA through
    optional_import: bool = False  # inside try/except ImportError


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.sites: list[Site] = []
        self.aliases: dict[str, str] = {}  # local name -> qualified name (from imports)
        self.helper_depth = 0
        self.gate_lines: set[int] = set()
        self.path_lines: set[int] = set()
        self.optional_depth = 0

    def qualify(self, node: ast.AST) -> str | None:
        name = _dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        base = self.aliases.get(head)
        return (base + ("." + rest if rest else "")) if base else None

    def add(self, node: ast.AST, category: str, what: str) -> None:
        line = getattr(node, "lineno", 0)
        self.sites.append(Site(line, category, what, self.helper_depth > 0, line in self.gate_lines,
                               line in self.path_lines,
                               optional_import=self.optional_depth > 0 and what.startswith(("import", "from"))))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            if a.name.split(".")[0] in CUDA_ONLY_MODULES:
                self.add(node, "cuda-only-import" if not a.name.startswith("flash_attn") else "flash-attention",
                         f"import {a.name}")

    def visit_Try(self, node: ast.Try) -> None:
        # `try: import flash_attn / except ImportError: ...` is an optional import: harmless.
        handles = any(
            h.type is None or "ImportError" in ast.unparse(h.type) or "Exception" in ast.unparse(h.type)
            for h in node.handlers
        )
        if handles:
            self.optional_depth += 1
            for stmt in node.body:
                self.visit(stmt)
            self.optional_depth -= 1
            for part in (node.handlers, node.orelse, node.finalbody):
                for stmt in part:
                    self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"
        if mod.split(".")[0] in CUDA_ONLY_MODULES:
            self.add(node, "flash-attention" if mod.startswith("flash_attn") else "cuda-only-import",
                     f"from {mod} import ...")

    # scopes
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        helper = node.name.startswith("_porter_")
        self.helper_depth += helper
        for d in node.args.defaults + node.args.kw_defaults:
            if isinstance(d, ast.Constant) and isinstance(d.value, str) and _CUDA.match(d.value):
                self.add(d, "hardcoded-device", f'default "{d.value}"')
        positional = node.args.posonlyargs + node.args.args
        defaults = list(zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults))
        for arg, default in defaults + list(zip(node.args.kwonlyargs, node.args.kw_defaults)):
            if default is not None and _ATTN_KEY.search(arg.arg):
                self._flash_request(default, arg.arg)
        if RETURNS_IMPLEMENTATION.search(node.name):
            for n in ast.walk(node):
                if isinstance(n, ast.Return) and n.value is not None:
                    self._flash_request(n.value, f"{node.name}()")
        self.generic_visit(node)
        self.helper_depth -= helper

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_IfExp(self, node: ast.IfExp) -> None:
        if _porter_test(node.test):
            # `"npu" if _porter_npu_available() else <upstream, verbatim>`: the else runs off npu.
            self.visit(node.test)
            self.visit(node.body)
            self.helper_depth += 1
            self.visit(node.orelse)
            self.helper_depth -= 1
            return
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _porter_test(node.test):
            self.visit(node.test)
            for stmt in node.body:
                self.visit(stmt)
            self.helper_depth += 1
            for stmt in node.orelse:
                self.visit(stmt)
            self.helper_depth -= 1
            return
        if _COMPILE.search(ast.unparse(node)):
            self._gate(node)
            for stmt in node.body + node.orelse:
                self.path_lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        # The early-exit gate: `if dev != "cuda": raise ...` followed by compile in the same block.
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.If) and stmt.body and isinstance(
                        stmt.body[-1], (ast.Raise, ast.Return, ast.Continue, ast.Break)):
                    if any(_COMPILE.search(ast.unparse(later)) for later in body[i + 1:]):
                        self._gate(stmt)
                        for later in body[i + 1:]:
                            self.path_lines.update(range(later.lineno, (later.end_lineno or later.lineno) + 1))
        super().generic_visit(node)

    def _gate(self, node: ast.If) -> None:
        self.gate_lines.update(range(node.lineno, (node.test.end_lineno or node.lineno) + 1))

    # expressions
    def visit_Compare(self, node: ast.Compare) -> None:
        parts = [node.left, *node.comparators]
        for op, right in zip(node.ops, node.comparators):
            left = parts[parts.index(right) - 1]
            for a, b in ((left, right), (right, left)):
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and _CUDA.match(a.value):
                    if isinstance(op, (ast.Eq, ast.NotEq)) and not isinstance(b, ast.Constant):
                        self.add(node, "device-comparison", ast.unparse(node)[:120])
                    elif isinstance(op, (ast.In, ast.NotIn)) and a is left:
                        if not _mentions_npu(right):
                            self.add(node, "device-comparison", ast.unparse(node)[:120])
            if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                values = [e.value for e in right.elts if isinstance(e, ast.Constant)]
                if any(isinstance(v, str) and _CUDA.match(v) for v in values) and "npu" not in values:
                    self.add(node, "device-comparison", ast.unparse(node)[:120])
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        # device = get_accelerator() or "cuda" / self.device = "cuda:0"
        names = [ast.unparse(t) for t in node.targets]
        if (any("device" in n.lower() for n in names) and not _porter_test(node.value)
                and any(_is_cuda_literal(n) for n in ast.walk(node.value))):
            self.add(node, "hardcoded-device", ast.unparse(node)[:120])
        if any(_ATTN_KEY.search(_key_name(t)) for t in node.targets):
            self._flash_request(node.value, ast.unparse(node.targets[0]))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None and _ATTN_KEY.search(_key_name(node.target)):
            self._flash_request(node.value, ast.unparse(node.target))
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and _ATTN_KEY.search(key.value):
                self._flash_request(value, repr(key.value))
        self.generic_visit(node)

    def _flash_request(self, value: ast.AST, key: str) -> None:
        """A "flash_attention_2" literal the value can evaluate to (through conditional and boolean
        expressions, as attention-fallback follows it): a flash-attention request."""
        if isinstance(value, ast.Constant) and value.value == "flash_attention_2":
            self.add(value, "flash-attention", f'{key} -> "flash_attention_2"')
        elif isinstance(value, ast.IfExp) and not _porter_test(value.test):
            self._flash_request(value.body, key)
            self._flash_request(value.orelse, key)
        elif isinstance(value, ast.BoolOp):
            for v in value.values:
                self._flash_request(v, key)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "is_cuda":
            self.add(node, "device-comparison", ast.unparse(node)[:120])
        elif node.attr == "compile" and self.qualify(node) == "torch.compile":
            self.add(node, "compile", "torch.compile")  # decorators and references, not only calls
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        inner = node.func.func if isinstance(node.func, ast.Call) else node.func
        if isinstance(inner, ast.Name) and inner.id.startswith("_porter_"):
            # A call porter routed through one of its helpers (e.g. compile bypassed on npu).
            self.helper_depth += 1
            self.generic_visit(node)
            self.helper_depth -= 1
            return
        q = self.qualify(node.func) or ""
        text = _dotted(node.func) or ""
        if q.startswith("torch.cuda.") or q.startswith("torch.backends.cuda."):
            name = q.split(".")[-1]
            if name in ("graph", "CUDAGraph", "make_graphed_callables", "graphs"):
                self.add(node, "compile", f"{q}(...)")
            elif name in ("sdp_kernel", "sdpa_kernel", "enable_flash_sdp"):
                self.add(node, "flash-attention", f"{q}(...)")
            elif name in ("autocast",):
                self.add(node, "autocast", f"{q}(...)")
            elif name == "is_available":
                self.add(node, "cuda-api", f"{q}()")
            else:
                self.add(node, "cuda-api", f"{q}(...)")
        elif q == "torch.compile" or text.endswith(".compile") and q.startswith("torch"):
            self.add(node, "compile", "torch.compile(...)")
        elif q in ("torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast"):
            if any(_is_cuda_literal(a) for a in node.args[:1]) or any(
                    k.arg == "device_type" and _is_cuda_literal(k.value) for k in node.keywords):
                self.add(node, "autocast", ast.unparse(node)[:120])
        elif q in ("torch.is_autocast_enabled", "torch.get_autocast_gpu_dtype") and not node.args \
                and not node.keywords:
            self.add(node, "autocast", f"{q}() reads CUDA's autocast state")
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "cuda" and not node.args:
            self.add(node, "hardcoded-device", ast.unparse(node)[:120])
        for k in node.keywords:
            if k.arg in _DEVICE_KWARGS and _is_cuda_literal(k.value) and q not in (
                    "torch.autocast", "torch.amp.autocast"):
                self.add(k.value, "hardcoded-device", f'{k.arg}="{k.value.value}"')  # type: ignore[attr-defined]
            if k.arg == "mode" and isinstance(k.value, ast.Constant) and k.value.value in (
                    "reduce-overhead", "max-autotune"):
                self.add(node, "compile", f'mode="{k.value.value}"')
            if isinstance(k.value, ast.Constant) and k.value.value == "nccl":
                self.add(node, "cuda-only-import", 'backend="nccl"')
            if k.arg and _ATTN_KEY.search(k.arg):
                self._flash_request(k.value, k.arg)
        if q in ("torch.device",) and node.args and _is_cuda_literal(node.args[0]):
            self.add(node, "hardcoded-device", ast.unparse(node)[:120])
        self.generic_visit(node)


def _key_name(target: ast.AST) -> str:
    """`x` / `self.x` / `d["x"]` -> "x"."""
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
        return str(target.slice.value)
    return ""


def _porter_test(test: ast.AST) -> bool:
    """A branch test porter wrote: it calls one of its `_porter_*` helpers."""
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id.startswith("_porter_")
        for n in ast.walk(test)
    )


def _is_cuda_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(_CUDA.match(node.value))


def _mentions_npu(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "npu" for n in ast.walk(node))


def scan_source(text: str) -> list[Site]:
    if not PREFILTER.search(text):
        return []
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    v = _Visitor()
    v.visit(tree)
    seen, out = set(), []
    for s in sorted(v.sites, key=lambda s: (s.line, s.category)):
        if (s.line, s.category) not in seen:
            seen.add((s.line, s.category))
            out.append(s)
    return out


def classify(path: str, site: Site, covered: bool, steps_used: set[str]) -> str | None:
    """Why a site was left; None when it is porter's own code and not worth a line."""
    if site.in_helper:
        return None
    if not covered:
        return "outside the recipe's files"
    if site.optional_import:
        return "harmless: an optional import inside try/except, the module imports without it"
    if site.category == "device-comparison" and site.compile_gate:
        return "harmless: guards torch.compile or CUDA graphs, which stay off on npu"
    if site.compile_path and site.category in ("compile", "cuda-only-import", "cuda-api", "device-comparison"):
        return "harmless: on the compile/CUDA-graph path behind a gate that keeps npu out"
    if site.category == "cuda-api" and site.what.endswith("is_available()"):
        return "harmless: False on npu, so CUDA-only work is skipped there (check the else branch runs on npu)"
    handlers = HANDLED_BY.get(site.category, ())
    if site.category == "cuda-api":
        handlers = ("mem-get-info",) if "mem_get_info" in site.what else ("cuda-api",)
    if not any(h in steps_used for h in handlers):
        return f"needs a decision: no step for this file handles {site.category}" + (
            f" (see {', '.join(handlers)})" if handlers else "")
    return f"needs a decision: {'/'.join(h for h in handlers if h in steps_used)} left it unchanged"


def scan_tree(
    texts: Iterable[tuple[str, str]],
    transforms_for: Callable[[str], set[str]],
    already: set[tuple[str, int]],
) -> list[Finding]:
    """Findings for every CUDA-specific site left in (path, text) pairs of the patched tree.

    `transforms_for(path)` names the transforms of the steps whose files: include `path`.
    """
    out: list[Finding] = []
    for path, text in texts:
        lines = text.splitlines()
        for site in scan_source(text):
            if (path, site.line) in already:
                continue  # a transform already reported this site with its own reason
            used = transforms_for(path)
            reason = classify(path, site, bool(used), used)
            if reason is None:
                continue
            code = lines[site.line - 1].strip()[:160] if 0 < site.line <= len(lines) else site.what
            out.append(Finding(file=path, line=site.line, category=site.category, reason=reason,
                               code=code, transform="scan"))
    return out
