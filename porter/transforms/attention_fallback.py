"""attention-fallback: on npu, flash-attention requests fall back to SDPA; CUDA keeps flash-attention."""

from __future__ import annotations

import ast
import re
from typing import Any, Literal

import libcst as cst
from libcst.helpers import get_full_name_for_node
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.analysis import has_cuda_only_paths, no_npu_build_gate
from porter.transforms import _gates, _runtime
from porter.transforms._npu_runtime import string_value as _string
from porter.transforms._npu_runtime import target_name as _key_name
from porter.transforms._base import (
    Context, Example, Finding, Outcome, PythonTransform, Rewriter, Safety, walk,
)

KNOWN_IMPLEMENTATIONS = frozenset(
    {"eager", "sdpa", "flex_attention", "paged_attention", "flash_attention_2", "flash_attention_3"}
)
FUNC_PARAMS = (
    "q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
    "deterministic", "return_attn_probs",
)
VARLEN_PARAMS = (
    "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
    "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
    "return_attn_probs", "block_table",
)
# Arguments SDPA reproduces only at these literal values (flash-attn's defaults).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "dropout_p": (0, 0.0),
    "window_size": ((-1, -1), [-1, -1]),
    "softcap": (0, 0.0),
    "alibi_slopes": (None,),
    "return_attn_probs": (False,),
    "block_table": (None,),
}
SDP_KERNEL = "torch.backends.cuda.sdp_kernel"
SDPA_KERNEL = "torch.nn.attention.sdpa_kernel"
SDP_KERNEL_PARAMS = ("enable_flash", "enable_math", "enable_mem_efficient", "enable_cudnn")
_IMPORT_CATCHERS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_CUDA = re.compile(r"^cuda(:\d+)?$")
# Functions whose return value is an attention implementation (the residual scan looks there too).
RETURNS_IMPLEMENTATION = re.compile(r"attn_?impl|attention_?impl", re.I)
_JSON_FLASH = re.compile(r'"(\w*(?:attn|attention)_implementation)"\s*:\s*"(flash_attention_\d)"')

R_VALUE = (
    'flash-attention has no kernels on {on}: there this request becomes "{fb}" (attention numerics '
    "differ within floating-point tolerance); CUDA and CPU keep the request"
)
R_CONFIG = (
    "{cls} receives the attention implementation here (from a shipped config.json or the caller): a "
    'flash-attention request becomes "{fb}" on {on}; CUDA and CPU keep the value'
)
R_SELECTOR = 'attention selector: {kinds} takes the CUDA branch ({impl!r}) instead of {other!r}'
R_CALL = (
    "{api} on {on} tensors is computed with SDPA, the same function (bottom-right causal mask for "
    "seqlen_q != seqlen_k, per-sequence for varlen, GQA, softmax_scale; proven in "
    "tests/test_attention_equivalence.py); CUDA calls flash_attn unchanged"
)
R_IMPORT = "flash_attn is CUDA-only: the module now imports where it is absent (npu), the names are None there"
R_CONTEXT = (
    "this SDPA context allows only CUDA kernels (math off); on {on} it becomes a nullcontext so the "
    "device picks its own kernel; CUDA keeps the restriction"
)
R_GATE = (
    "every flash-attention call this check protects now runs SDPA on {on} (same function), so {on} "
    "tensors may pass; CUDA still gets flash_attn"
)


def _literal(node: cst.CSTNode | None) -> tuple[bool, Any]:
    """(True, value) for a Python literal expression (numbers, strings, tuples, None...)."""
    if node is None:
        return False, None
    try:
        code = cst.Module(body=[]).code_for_node(node)
        return True, ast.literal_eval(code.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _string_like(template: cst.SimpleString, value: str) -> cst.SimpleString:
    return cst.SimpleString(f"{template.prefix}{template.quote}{value}{template.quote}")


def _space(text: str = " ") -> cst.SimpleWhitespace:
    return cst.SimpleWhitespace(text)


class _Fallback(Rewriter):
    def __init__(self, transform: "AttentionFallback", ctx: Context) -> None:
        super().__init__(transform, ctx)
        p = self.params
        self.on: tuple[str, ...] = tuple(p.on)
        self.on_text = "/".join(self.on)
        self.widen_kinds = [k for k in self.on if k != "cpu"]
        self.flash = set(p.flash)
        self.keys = {k.lstrip("_") for k in p.keys}
        self._wrap: dict[cst.SimpleString, str] = {}
        self._wrap_assign: dict[cst.CSTNode, str] = {}  # config entries: their whole values
        self._widen: dict[cst.Comparison, tuple[str, list[str]]] = {}
        self._calls: dict[cst.Call, str] = {}  # flash call -> "func" | "varlen"
        self._contexts: set[cst.Call] = set()
        self._imports: dict[cst.SimpleStatementLine, list[str]] = {}
        self._gate_candidates: list[cst.CSTNode] = []

    def is_key(self, name: str | None) -> bool:
        """`attn_implementation`, `_attn_implementation`, `local_transformer_attn_implementation`..."""
        if not name:
            return False
        bare = name.lstrip("_")
        return bare in self.keys or any(bare.endswith("_" + k) for k in self.keys)

    # -- metadata helpers ---------------------------------------------------------------------
    def _parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._index.parent(node)

    def ancestors(self, node: cst.CSTNode):
        return self._index.ancestors(node)

    def resolves(self, node: cst.CSTNode) -> set[str]:
        return self.imported_names(node)

    # -- planning (original tree) -------------------------------------------------------------
    def visit_Module(self, node: cst.Module) -> bool:
        super().visit_Module(node)
        self._index = _gates.index(node)  # porter's own `_porter_*` helpers are not indexed
        for n in self._index.nodes:
            self._plan(n)
        for gate in self._gate_candidates:
            self._plan_gate(gate)
        # every rewrite is planned above: with none, the traversal below would change nothing
        return any((self._wrap, self._wrap_assign, self._widen, self._calls, self._contexts, self._imports))

    def _plan(self, n: cst.CSTNode) -> None:
        if isinstance(n, cst.Arg) and n.keyword is not None and self.is_key(n.keyword.value):
            self._sink(n.value)
        elif isinstance(n, cst.Param) and n.default is not None and self.is_key(n.name.value):
            self._sink(n.default)
        elif isinstance(n, cst.Assign):
            if any(self.is_key(_key_name(t.target)) for t in n.targets):
                self._sink(n.value)
                self._plan_config_entry(n, n.value)
        elif isinstance(n, cst.AnnAssign) and n.value is not None:
            if self.is_key(_key_name(n.target)):
                self._sink(n.value)
                self._plan_config_entry(n, n.value)
        elif isinstance(n, cst.DictElement) and self.is_key(_string(n.key)):
            self._sink(n.value)
        elif isinstance(n, cst.Return) and n.value is not None:
            func = next((a for a in self.ancestors(n) if isinstance(a, cst.FunctionDef)), None)
            if func is not None and RETURNS_IMPLEMENTATION.search(func.name.value):
                self._sink(n.value)
        elif isinstance(n, cst.IfExp):
            if any(_string(b) in KNOWN_IMPLEMENTATIONS | self.flash for b in (n.body, n.orelse)):
                self._plan_selector(n)
                self._sink(n)
        elif isinstance(n, cst.Call):
            self._plan_call(n)
        elif isinstance(n, (cst.If, cst.While)) and self._mentions_cuda(n.test):
            self._gate_candidates.append(n)
        elif isinstance(n, cst.SimpleStatementLine):
            self._plan_import(n)

    # values ---------------------------------------------------------------------------------
    def _sink(self, expr: cst.CSTNode) -> None:
        """Mark the flash implementation names `expr` can evaluate to."""
        if isinstance(expr, cst.SimpleString):
            if _string(expr) in self.flash and not any(a in self._wrap_assign for a in self.ancestors(expr)):
                self._wrap[expr] = R_VALUE.format(on=self.on_text, fb=self.params.fallback)
        elif isinstance(expr, cst.IfExp):
            selector = self._selector(expr)
            for branch in (expr.body, expr.orelse):
                if selector is not None and branch is selector["cuda"] and not selector["npu_reaches"]:
                    continue  # npu never takes this branch: nothing to do
                self._sink(branch)
        elif isinstance(expr, cst.BooleanOperation):
            self._sink(expr.left)
            self._sink(expr.right)

    def _plan_config_entry(self, assign: cst.CSTNode, value: cst.BaseExpression) -> None:
        """`self.attn_implementation = attn_implementation` in a config class's `__init__`: where
        values from a shipped config.json (or the caller) enter the code."""
        if isinstance(value, cst.SimpleString) or _is_fallback_call(value):
            return  # a literal is handled as a value; a wrapped value is done
        targets = [t.target for t in assign.targets] if isinstance(assign, cst.Assign) else [assign.target]
        if not any(isinstance(t, cst.Attribute) and isinstance(t.value, cst.Name) and t.value.value == "self"
                   for t in targets):
            return
        chain = list(self.ancestors(assign))
        func = next((a for a in chain if isinstance(a, cst.FunctionDef)), None)
        cls = next((a for a in chain if isinstance(a, cst.ClassDef)), None)
        if func is None or cls is None or func.name.value != "__init__" or not _is_config_class(cls):
            return
        if next((a for a in chain if isinstance(a, (cst.FunctionDef, cst.ClassDef))), None) is not func:
            return
        for n in walk(value):  # the whole value is checked at run time; no inner wraps
            self._wrap.pop(n, None)
        self._wrap_assign[assign] = R_CONFIG.format(on=self.on_text, fb=self.params.fallback, cls=cls.name.value)

    def _cuda_test(self, test: cst.CSTNode) -> tuple[cst.Comparison, bool, bool] | None:
        """(comparison, true_means_cuda, already_admits_npu) for a simple device-type test."""
        if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
            return None
        target = test.comparisons[0]
        op, left, right = target.operator, test.left, target.comparator
        if isinstance(op, (cst.Equal, cst.NotEqual)):
            values = [_string(left), _string(right)]
            if sum(v is not None for v in values) != 1 or not any(v and _CUDA.match(v) for v in values):
                return None
            return test, isinstance(op, cst.Equal), False
        if isinstance(op, (cst.In, cst.NotIn)) and isinstance(right, (cst.Tuple, cst.List, cst.Set)):
            values = [_string(e.value) for e in right.elements]
            if not any(v and _CUDA.match(v) for v in values):
                return None
            admits = bool(self.widen_kinds) and all(k in values for k in self.widen_kinds)
            return test, isinstance(op, cst.In), admits
        return None

    def _selector(self, node: cst.IfExp) -> dict[str, Any] | None:
        found = self._cuda_test(node.test)
        if found is None:
            return None
        comparison, true_means_cuda, admits = found
        cuda, other = (node.body, node.orelse) if true_means_cuda else (node.orelse, node.body)
        cuda_value, other_value = _string(cuda), _string(other)
        widen = (
            not admits
            and bool(self.widen_kinds)
            and cuda_value in (KNOWN_IMPLEMENTATIONS | self.flash) - {"eager"}
            and other_value not in {cuda_value, self.params.fallback}
        )
        return {
            "comparison": comparison,
            "cuda": cuda,
            "widen": widen,
            "npu_reaches": admits or widen,
            "cuda_value": cuda_value,
            "other_value": other_value,
        }

    def _plan_selector(self, node: cst.IfExp) -> None:
        selector = self._selector(node)
        if selector is None or not selector["widen"]:
            return
        impl = selector["cuda_value"]
        if impl in self.flash:
            impl = f"{impl} -> {self.params.fallback} on {self.on_text}"
        reason = R_SELECTOR.format(kinds="/".join(self.widen_kinds), impl=impl, other=selector["other_value"])
        self._widen[selector["comparison"]] = (reason, self.widen_kinds)

    def _mentions_cuda(self, test: cst.CSTNode) -> bool:
        return any(
            (_string(n) is not None and _CUDA.match(_string(n) or "")) or (isinstance(n, cst.Name) and n.value == "is_cuda")
            for n in walk(test)
        )

    # calls ----------------------------------------------------------------------------------
    def _flash_kind(self, func: cst.CSTNode) -> str | None:
        if not self.may_import(func, "flash_attn"):
            return None  # spelling filter: only names spelled through a flash_attn import can be it
        for q in self.resolves(func):
            if q == "flash_attn" or q.startswith("flash_attn."):
                last = q.rsplit(".", 1)[-1]
                return {"flash_attn_func": "func", "flash_attn_varlen_func": "varlen"}.get(last, "other")
        return None

    def _plan_call(self, call: cst.Call) -> None:
        self._plan_lookup(call)
        kind = self._flash_kind(call.func)
        if kind in ("func", "varlen"):
            problem = self._unproven(call, VARLEN_PARAMS if kind == "varlen" else FUNC_PARAMS)
            if problem:
                self.find(call, "needs_decision", f"flash-attention call not rewritten: {problem}; "
                          "porter cannot prove an SDPA equivalent. Reached on npu only if flash-attention "
                          "is selected there; decide with a recipe step if it is.")
            else:
                self._calls[call] = kind
            return
        if kind == "other":
            name = get_full_name_for_node(call.func) or "flash_attn API"
            self.find(call, "attention_backend", f"{name}: a flash_attn API without an SDPA rewrite in porter; "
                      "reached on npu only if flash-attention is selected there")
            return
        if not self.may_import(call.func, SDP_KERNEL, SDPA_KERNEL):
            return
        names = self.resolves(call.func)
        if SDP_KERNEL in names or SDPA_KERNEL in names:
            self._plan_context(call, SDP_KERNEL in names)

    def _plan_lookup(self, call: cst.Call) -> None:
        """`d.get("attn_implementation", default)`, getattr/setattr, argparse `--attn-implementation`."""
        last = (get_full_name_for_node(call.func) or "").rsplit(".", 1)[-1]
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        if last in ("get", "setdefault", "pop") and len(positional) >= 2 and self.is_key(_string(positional[0])):
            self._sink(positional[1])
        elif last in ("getattr", "setattr") and len(positional) >= 3 and self.is_key(_string(positional[1])):
            self._sink(positional[2])
        elif last == "add_argument" and positional:
            flag = (_string(positional[0]) or "").lstrip("-").replace("-", "_")
            if self.is_key(flag):
                for arg in call.args:
                    if arg.keyword is not None and arg.keyword.value == "default":
                        self._sink(arg.value)

    def _unproven(self, call: cst.Call, params: tuple[str, ...]) -> str:
        bound: dict[str, cst.Arg] = {}
        for i, arg in enumerate(call.args):
            if arg.star:
                return f"`{arg.star}` arguments cannot be checked"
            if arg.keyword is None:
                if i >= len(params):
                    return "too many positional arguments"
                bound[params[i]] = arg
            else:
                bound[arg.keyword.value] = arg
        problems = []
        for name, arg in bound.items():
            if name not in params:
                problems.append(f"unknown argument {name}=")
            elif name in NEUTRAL:
                ok, value = _literal(arg.value)
                if ok and value in NEUTRAL[name]:
                    continue
                if name == "dropout_p" and self.params.dropout == "guard":
                    continue  # the SDPA path raises at run time if dropout is non-zero
                problems.append(f"{name}={self.code(arg.value).strip()}")
        return ", ".join(problems)

    def _plan_context(self, call: cst.Call, legacy: bool) -> None:
        parent = self._parent(call)
        if isinstance(parent, cst.Arg):
            holder = self._parent(parent)
            if isinstance(holder, cst.Call) and isinstance(holder.func, cst.Name) and holder.func.value == _runtime.SDP_CONTEXT:
                return  # already handled
        if isinstance(parent, cst.Decorator):
            self.find(call, "needs_decision", "SDPA kernel context used as a decorator; not rewritten")
            return
        restricts = self._restricts_to_fused(call, legacy)
        if restricts is None:
            self.find(call, "needs_decision", "SDPA kernel context with backends porter cannot read; "
                      "if it turns the math kernel off it may fail on npu")
        elif restricts:
            self._contexts.add(call)
        else:
            self.find(call, "harmless", "SDPA kernel context kept: it only turns fused kernels off and keeps "
                      "the math kernel, so it works on any device (CPU torch 2.13 needs it for forward-mode AD)")

    def _restricts_to_fused(self, call: cst.Call, legacy: bool) -> bool | None:
        """True if the context turns the math kernel off (CUDA-only kernels left), None if unknown."""
        if any(a.star for a in call.args):
            return None
        if legacy:
            values: dict[str, cst.CSTNode] = {}
            for i, arg in enumerate(call.args):
                name = arg.keyword.value if arg.keyword else (SDP_KERNEL_PARAMS[i] if i < 4 else "?")
                values[name] = arg.value
            if "enable_math" not in values:
                return False
            ok, math = _literal(values["enable_math"])
            return None if not ok else not math
        backends = next((a.value for a in call.args if a.keyword is None or a.keyword.value == "backends"), None)
        if backends is None:
            return None
        items = [e.value for e in backends.elements] if isinstance(backends, (cst.List, cst.Tuple)) else [backends]
        names = []
        for item in items:
            resolved = self.resolves(item) or {get_full_name_for_node(item) or ""}
            member = next((q.rsplit(".", 1)[-1] for q in resolved if "SDPBackend." in q), None)
            if member is None:
                return None
            names.append(member)
        return "MATH" not in names

    # imports --------------------------------------------------------------------------------
    def _plan_import(self, line: cst.SimpleStatementLine) -> None:
        imports = [s for s in line.body if isinstance(s, (cst.Import, cst.ImportFrom)) and self._is_flash_import(s)]
        if not imports:
            return
        guard = self._import_guard(line)
        if guard == "guarded":
            return
        if guard == "reraises":
            self.find(line, "needs_decision", "flash_attn import whose except clause re-raises: the module "
                      "cannot import on npu. Guarding it would move the failure on CUDA hosts without "
                      "flash_attn from import time to call time; decide with a recipe step")
            return
        if guard == "function":
            return  # a lazy import runs only on the flash-attention path
        names: list[str] = []
        for stmt in imports:
            bound = self._bound_names(stmt)
            if bound is None:
                self.find(line, "needs_decision", "`from flash_attn import *` cannot be guarded name by name")
                return
            names.extend(bound)
        if len(line.body) != len(imports):
            self.find(line, "needs_decision", "flash_attn import shares its line with other statements")
            return
        self._imports[line] = names

    @staticmethod
    def _is_flash_import(stmt: cst.Import | cst.ImportFrom) -> bool:
        if isinstance(stmt, cst.Import):
            return any((get_full_name_for_node(a.name) or "").split(".")[0] == "flash_attn" for a in stmt.names)
        if stmt.relative or stmt.module is None:
            return False
        return (get_full_name_for_node(stmt.module) or "").split(".")[0] == "flash_attn"

    @staticmethod
    def _bound_names(stmt: cst.Import | cst.ImportFrom) -> list[str] | None:
        if isinstance(stmt.names, cst.ImportStar):
            return None
        out = []
        for alias in stmt.names:
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                out.append(alias.asname.name.value)
            elif isinstance(stmt, cst.Import):
                out.append((get_full_name_for_node(alias.name) or "").split(".")[0])
            else:
                out.append(get_full_name_for_node(alias.name) or "")
        return out

    def _import_guard(self, line: cst.SimpleStatementLine) -> str:
        child: cst.CSTNode = line
        for anc in self.ancestors(line):
            if isinstance(anc, (cst.FunctionDef, cst.Lambda)):
                return "function"
            if isinstance(anc, cst.If):
                return "guarded"
            if isinstance(anc, cst.Try) and child is anc.body:
                for handler in anc.handlers:
                    if self._catches_import_error(handler):
                        last = handler.body.body[-1] if handler.body.body else None
                        reraises = isinstance(last, cst.SimpleStatementLine) and isinstance(last.body[-1], cst.Raise)
                        return "reraises" if reraises else "guarded"
            child = anc
        return "unguarded"

    @staticmethod
    def _catches_import_error(handler: cst.ExceptHandler) -> bool:
        if handler.type is None:
            return True
        types = [e.value for e in handler.type.elements] if isinstance(handler.type, cst.Tuple) else [handler.type]
        return any((get_full_name_for_node(t) or "").rsplit(".", 1)[-1] in _IMPORT_CATCHERS for t in types)

    # gates ----------------------------------------------------------------------------------
    def _plan_gate(self, node: cst.CSTNode) -> None:
        following = _gates.following_statements(node, self._parent)
        if _gates.is_compile_gate(node, names=self.resolves, following=following):
            return  # compile-bypass's business
        if not _gates.is_flash_gate(node, names=self.resolves, following=following):
            return
        found = self._cuda_test(node.test)
        widen = (
            found is not None
            and not found[1]  # a rejecting check: `if q.device.type != "cuda": raise ...`
            and not found[2]
            and _gates.exits(node)
            and self._protected_calls_rewritten(node, following)
        )
        if widen:
            assert found is not None
            self._widen[found[0]] = (R_GATE.format(on=self.on_text), list(self.on))
        elif found is None or not found[2]:
            self.find(node.test, "kernel_gate", "flash-attention device check kept CUDA-only: flash_attn kernels do "
                      "not exist on npu, so widening it (seed 001 change C) would hand npu tensors to CUDA "
                      "kernels. npu requests for flash_attention_2 become sdpa where the implementation is "
                      "chosen; widen-device-check leaves this check alone")

    def _protected_calls_rewritten(self, gate: cst.CSTNode, following: list[cst.CSTNode]) -> bool:
        """All flash_attn references after the check are calls porter rewrites, and there is one."""
        block = self._parent(gate)
        before = []
        for s in getattr(block, "body", ()):
            if s is gate:
                break
            before.append(s)
        for s in before:  # an earlier flash-only guard (e.g. `if not FLASH_AVAILABLE: raise`) blocks npu anyway
            if isinstance(s, cst.If) and _gates.exits(s) and _gates.is_flash_gate(s, names=self.resolves):
                return False
        rewritten = 0
        for stmt in following:
            for n in walk(stmt):
                if isinstance(n, cst.Call) and n in self._calls:
                    rewritten += 1
                elif isinstance(n, (cst.Name, cst.Attribute)) and self._flash_kind(n) is not None:
                    parent = self._parent(n)
                    if isinstance(parent, cst.Attribute) and parent.value is n:
                        continue  # `fa` in `fa.flash_attn_func`: judged as the whole name
                    if not (isinstance(parent, cst.Call) and parent.func is n and parent in self._calls):
                        return False
        return rewritten > 0

    # -- rewriting (updated tree) -------------------------------------------------------------
    def _fallback_call(self, updated: cst.BaseExpression, lend_parens: bool = False) -> cst.Call:
        _runtime.need_runs_on(self)
        name = self.need_helper(*_runtime.flash_or_fallback(self.on, self.params.fallback, self.params.flash))
        return _wrapped(name, updated, lend_parens)

    def _config_entry(self, original: cst.CSTNode, updated: cst.Assign | cst.AnnAssign) -> cst.CSTNode:
        reason = self._wrap_assign.get(original)
        if reason is None or updated.value is None:
            return updated
        result = updated.with_changes(value=self._fallback_call(updated.value, lend_parens=True))
        return self.record(original, result, reason)

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.CSTNode:
        return self._config_entry(original, updated)

    def leave_AnnAssign(self, original: cst.AnnAssign, updated: cst.AnnAssign) -> cst.CSTNode:
        return self._config_entry(original, updated)

    def leave_SimpleString(self, original: cst.SimpleString, updated: cst.SimpleString) -> cst.BaseExpression:
        reason = self._wrap.get(original)
        if reason is None:
            return updated
        gate = self._cuda_only_gate(original)
        if gate is not None:  # e.g. after `import flash_attn` in a try body: npu never gets there
            self.find(original, "harmless", f"flash_attention_2 requested only where the import at line {gate} "
                      "succeeds (flash_attn has no npu build): npu never reaches it; left alone")
            return updated
        return self.record(original, self._fallback_call(updated), reason)

    def _cuda_only_gate(self, node: cst.CSTNode) -> int | None:
        if self.source is None or not has_cuda_only_paths(self.ctx.path, self.source):
            return None
        return no_npu_build_gate(self.ctx.path, self.source, self.line_of(node)[0])

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression:
        plan = self._widen.get(original)
        if plan is None:
            return updated
        reason, kinds = plan
        result = _widened(updated, kinds)
        return updated if result is None else self.record(original, result, reason)

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        kind = self._calls.get(original)
        if kind is not None:
            helpers = _runtime.flash_dispatch(self.on, varlen=kind == "varlen")
            for name, src in helpers:
                self.need_helper(name, src)
            callee = _callee_value(updated.func)
            first = updated.args[0]
            ws = _bare(first.comma.whitespace_after) if isinstance(first.comma, cst.Comma) else _space()
            args = [cst.Arg(callee, comma=cst.Comma(whitespace_after=ws)), *updated.args]
            result = updated.with_changes(func=cst.Name(helpers[0][0]), args=args)
            api = "flash_attn_varlen_func" if kind == "varlen" else "flash_attn_func"
            return self.record(original, result, R_CALL.format(api=api, on=self.on_text))
        if original in self._contexts:
            _runtime.need_runs_on(self)
            name = self.need_helper(*_runtime.sdp_context(self.on))
            return self.record(original, _wrapped(name, updated), R_CONTEXT.format(on=self.on_text))
        return updated

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement:
        names = self._imports.get(original)
        if names is None:
            return updated
        handler_body = [cst.parse_statement(f"{n} = None") for n in dict.fromkeys(names)]
        result = cst.Try(
            body=cst.IndentedBlock(body=[updated.with_changes(leading_lines=[])]),
            handlers=[cst.ExceptHandler(body=cst.IndentedBlock(body=handler_body), type=cst.Name("ImportError"))],
            leading_lines=updated.leading_lines,
        )
        return self.record(original, result, R_IMPORT)


def _bare(ws: cst.BaseParenthesizableWhitespace) -> cst.BaseParenthesizableWhitespace:
    """The same line break and indent without a comment (the comment stays with its argument)."""
    if isinstance(ws, cst.ParenthesizedWhitespace):
        return ws.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=[])
    return ws


def _wrapped(name: str, value: cst.BaseExpression, lend_parens: bool = False) -> cst.Call:
    """`name(value)`. With `lend_parens`, a parenthesised value lends its parentheses (with their
    line breaks and comments) to the call: `x = (\n    v  # why\n)` -> `x = name(\n    v  # why\n)`;
    otherwise they stay around the call, so only the line of `value` changes."""
    inner = value.with_changes(lpar=[], rpar=[])
    if lend_parens and len(value.lpar) == 1 and len(value.rpar) == 1:
        return cst.Call(
            func=cst.Name(name),
            args=[cst.Arg(inner, whitespace_after_arg=value.rpar[0].whitespace_before)],
            whitespace_before_args=value.lpar[0].whitespace_after,
        )
    return cst.Call(func=cst.Name(name), args=[cst.Arg(inner)], lpar=value.lpar, rpar=value.rpar)


def _is_config_class(cls: cst.ClassDef) -> bool:
    names = [cls.name.value] + [(get_full_name_for_node(b.value) or "").rsplit(".", 1)[-1] for b in cls.bases]
    return any(n.endswith("Config") for n in names)


def _is_fallback_call(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value == _runtime.FLASH_OR_FALLBACK


def _callee_value(func: cst.BaseExpression) -> cst.BaseExpression:
    """The flash-attention function as a value that is safe to evaluate where flash_attn is absent."""
    if isinstance(func, cst.Attribute):
        return cst.parse_expression(
            f'getattr({cst.Module(body=[]).code_for_node(func.value)}, "{func.attr.value}", None)'
        )
    return func


def _widened(cmp: cst.Comparison, kinds: list[str]) -> cst.Comparison | None:
    """`x == "cuda"` -> `x in ("cuda", "npu")`, `!=` -> `not in`, `in (...)` gains the kinds.

    The same spelling widen-device-check produces, so the two transforms agree in either order.
    """
    target = cmp.comparisons[0]
    op, left, right = target.operator, cmp.left, target.comparator
    if isinstance(op, (cst.Equal, cst.NotEqual)):
        if isinstance(right, cst.SimpleString) and _CUDA.match(_string(right) or ""):
            subject, literal = left, right
        elif isinstance(left, cst.SimpleString) and _CUDA.match(_string(left) or ""):
            subject, literal = right, left
        else:
            return None
        suffix = (_string(literal) or "cuda")[len("cuda"):]
        values = [literal] + [_string_like(literal, f"{k}{suffix}") for k in kinds]
        elements = [cst.Element(v, comma=cst.Comma(whitespace_after=_space())) for v in values[:-1]]
        elements.append(cst.Element(values[-1]))
        new_op: cst.BaseCompOp = (
            cst.In(whitespace_before=op.whitespace_before, whitespace_after=op.whitespace_after)
            if isinstance(op, cst.Equal)
            else cst.NotIn(whitespace_before=op.whitespace_before, whitespace_after=op.whitespace_after)
        )
        return cmp.with_changes(
            left=subject, comparisons=[target.with_changes(operator=new_op, comparator=cst.Tuple(elements=elements))]
        )
    if isinstance(op, (cst.In, cst.NotIn)) and isinstance(right, (cst.Tuple, cst.List, cst.Set)):
        values = [_string(e.value) for e in right.elements]
        template = next(e.value for e in right.elements if _CUDA.match(_string(e.value) or ""))
        assert isinstance(template, cst.SimpleString)
        missing = [k for k in kinds if k not in values]
        if not missing:
            return None
        elements = list(right.elements)
        trailing = elements[-1].comma
        elements[-1] = elements[-1].with_changes(comma=cst.Comma(whitespace_after=_space()))
        new = [cst.Element(_string_like(template, k), comma=cst.Comma(whitespace_after=_space())) for k in missing]
        new[-1] = new[-1].with_changes(comma=trailing)
        return cmp.with_changes(comparisons=[target.with_changes(comparator=right.with_changes(elements=elements + new))])
    return None


_VALUE_HELPERS = [*_runtime.runs_on(), _runtime.flash_or_fallback(("npu",), "sdpa", ("flash_attention_2",))]
_CONTEXT_HELPERS = [*_runtime.runs_on(), _runtime.sdp_context(("npu",))]
_FB = _runtime.FLASH_OR_FALLBACK


class AttentionFallback(PythonTransform):
    """On npu, flash-attention requests fall back to SDPA; CUDA keeps flash-attention.

    * `attn_implementation="flash_attention_2"` values (keyword arguments, parameter defaults,
      assignments, dict values, `.get(key, default)`, argparse defaults, the returns of functions
      named `*attn_implementation*`, either branch of a conditional) become
      `_porter_flash_attention_or_fallback("flash_attention_2")`: "sdpa" where the process computes
      on npu, the request unchanged on CUDA and CPU (a CPU-only host that asks for flash still
      fails as before: the choice is made by the presence of torch_npu, not the absence of CUDA).
      Names match by suffix (`local_transformer_attn_implementation`).
    * In a config class (`*Config`), `self.attn_implementation = <value>` in `__init__` is where a
      value from a shipped config.json (or the caller) enters the code; the whole value is passed
      through the same helper, which falls back only for flash-attention names. The JSON file itself
      is never edited (it cannot choose per device, and editing it would change CUDA); a
      flash-attention default in it is reported so the reviewer can check that a config class
      covers it.
    * Selectors `"sdpa" if device.type == "cuda" else "eager"` (seed 001 change B) admit npu to
      the CUDA branch, spelled as widen-device-check spells it.
    * `flash_attn_func` / `flash_attn_varlen_func` calls become
      `_flash_attn_func_or_sdpa(flash_attn_func, ...)`: on CUDA tensors the original call with the
      original arguments; on npu tensors the same function computed with SDPA, including the
      bottom-right-aligned causal mask flash-attn uses when seqlen_q != seqlen_k (a KV cache; SDPA's
      own is_causal is top-left), per-sequence masks for packed varlen batches (cu_seqlens), GQA and
      softmax_scale. Calls with arguments porter cannot prove equivalent (dropout other than 0,
      window_size, softcap, alibi_slopes, return_attn_probs, block_table, `*args`) are reported as
      needing a decision instead (`dropout: guard` rewrites non-literal dropout and raises at run
      time if it is non-zero on npu).
    * Device checks before flash-attention (`if q.device.type != "cuda": raise ...`, seed 001
      change C) stay CUDA-only: flash_attn kernels do not exist on npu, so the seed's widening only
      changed the error (or handed npu tensors to CUDA kernels). They are widened only when every
      flash-attention call after them was rewritten to the SDPA dispatch above, which makes the
      path after them correct on npu; otherwise they are reported as kept.
    * Unconditional `import flash_attn` / `from flash_attn... import ...` is wrapped in
      `try/except ImportError` setting the names to None, so the module imports where flash_attn is
      absent; guarded imports (try/except, `if`, inside a function) are left alone.
    * `torch.backends.cuda.sdp_kernel(...)` / `torch.nn.attention.sdpa_kernel(...)` contexts that
      turn the math kernel off (leaving CUDA-only kernels) become a nullcontext on npu. Contexts
      that only turn fused kernels off are kept everywhere: they are device-neutral flags, and
      voxcpm's `sdp_kernel(enable_flash=False, enable_mem_efficient=False)` around `jvp` is
      needed on CPU too (torch 2.13's fused CPU kernel has no forward-mode AD).
    """

    name = "attention-fallback"
    safety = Safety.NUMERICS
    prefilter = re.compile(r"flash|sdp_kernel|sdpa_kernel|attn_impl|attention_impl|[\"'](sdpa|eager)[\"']")
    default_files = ("**/*.py", "**/config.json")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        on: tuple[Literal["npu", "cpu"], ...] = Field(
            ("npu",), min_length=1,
            description='devices where flash-attention falls back ("cpu": a host with neither CUDA nor npu)',
        )
        fallback: Literal["sdpa", "eager"] = Field("sdpa", description="implementation used instead there")
        flash: tuple[str, ...] = Field(("flash_attention_2",), min_length=1,
                                       description="implementation names that request flash-attention")
        keys: tuple[str, ...] = Field(("attn_implementation", "_attn_implementation"), min_length=1,
                                      description="names that hold an attention implementation")
        dropout: Literal["find", "guard"] = Field(
            "find", description="flash calls with a non-literal dropout_p: report them, or rewrite them "
            "with a run-time error on npu if dropout is non-zero")

        @field_validator("flash")
        @classmethod
        def _flash_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            bad = [x for x in v if not x.startswith("flash")]
            if bad:
                raise ValueError(f"not flash-attention implementation names: {bad}")
            return v

    rewriter = _Fallback

    def apply(self, text: str, ctx: Context) -> Outcome:
        if ctx.path.endswith(".json"):
            return self._scan_json(text, ctx)
        return super().apply(text, ctx)

    def _scan_json(self, text: str, ctx: Context) -> Outcome:
        findings = []
        for m in _JSON_FLASH.finditer(text):
            if m.group(2) not in self.params.flash:
                continue
            findings.append(Finding(
                file=ctx.path, line=text.count("\n", 0, m.start()) + 1, category="needs_decision",
                reason="flash-attention default in a shipped config, kept: a config file cannot choose per "
                "device and editing it would change CUDA. On npu the code that reads it must choose sdpa: "
                "attention-fallback does so where a config class (`*Config.__init__`) stores it; a value "
                "read some other way needs a recipe step", code=m.group(0), transform=self.name, step=ctx.step))
        return Outcome(text=text, findings=tuple(findings))

    examples = [
        # -- implementation values ------------------------------------------------------------
        Example(
            id="from-pretrained-keyword",
            note="a CUDA or CPU host keeps flash_attention_2 (a CPU host fails as before); npu gets sdpa",
            before=(
                "from transformers import AutoModelForCausalLM\n"
                "\n"
                "model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=\"flash_attention_2\")\n"
            ),
            after=_runtime.with_helpers(
                "from transformers import AutoModelForCausalLM\n",
                _VALUE_HELPERS,
                f"model = AutoModelForCausalLM.from_pretrained(path, attn_implementation={_FB}(\"flash_attention_2\"))\n",
            ),
        ),
        Example(
            id="config-default-single-quotes",
            note="Ming-omni-tts configuration_bailing_moe.py: a parameter default, evaluated at import time",
            before=(
                "from transformers import PretrainedConfig\n"
                "\n"
                "class BailingConfig(PretrainedConfig):\n"
                "    def __init__(self, hidden_size=1024, _attn_implementation='flash_attention_2', **kwargs):\n"
                "        self._attn_implementation = _attn_implementation\n"
            ),
            after=_runtime.with_helpers(
                "from transformers import PretrainedConfig\n",
                _VALUE_HELPERS,
                "class BailingConfig(PretrainedConfig):\n"
                f"    def __init__(self, hidden_size=1024, _attn_implementation={_FB}('flash_attention_2'), **kwargs):\n"
                f"        self._attn_implementation = {_FB}(_attn_implementation)\n",
            ),
        ),
        Example(
            id="config-class-entry-from-config-json",
            note="MOSS-TTS-Nano configuration shape: config.json asks for flash_attention_2; the config class "
            "is where that value enters the code, so it is checked there (keys match by suffix)",
            before=(
                "from transformers import PretrainedConfig\n"
                "\n"
                "class TTSConfig(PretrainedConfig):\n"
                "    def __init__(self, attn_implementation=\"flash_attention_2\", local_attn_implementation=None, **kw):\n"
                "        super().__init__(**kw)\n"
                "        self.attn_implementation = attn_implementation\n"
                "        self.local_attn_implementation = (\n"
                "            attn_implementation if local_attn_implementation is None else local_attn_implementation\n"
                "        )\n"
            ),
            after=_runtime.with_helpers(
                "from transformers import PretrainedConfig\n",
                _VALUE_HELPERS,
                "class TTSConfig(PretrainedConfig):\n"
                f"    def __init__(self, attn_implementation={_FB}(\"flash_attention_2\"), local_attn_implementation=None, **kw):\n"
                "        super().__init__(**kw)\n"
                f"        self.attn_implementation = {_FB}(attn_implementation)\n"
                f"        self.local_attn_implementation = {_FB}(\n"
                "            attn_implementation if local_attn_implementation is None else local_attn_implementation\n"
                "        )\n",
            ),
        ),
        Example(
            id="dict-subscript-get-and-argparse",
            before=(
                "import argparse\n"
                "\n"
                "load_kwargs = {\"torch_dtype\": dtype, \"attn_implementation\": \"flash_attention_2\"}\n"
                "if use_flash:\n"
                "    load_kwargs[\"attn_implementation\"] = \"flash_attention_2\"\n"
                "impl = cfg.get(\"attn_implementation\", \"flash_attention_2\")\n"
                "parser = argparse.ArgumentParser()\n"
                "parser.add_argument(\n"
                "    \"--attn-implementation\",\n"
                "    default=\"flash_attention_2\",  # fastest on A100\n"
                "    choices=(\"sdpa\", \"flash_attention_2\", \"eager\"),\n"
                ")\n"
            ),
            after=_runtime.with_helpers(
                "import argparse\n",
                _VALUE_HELPERS,
                f"load_kwargs = {{\"torch_dtype\": dtype, \"attn_implementation\": {_FB}(\"flash_attention_2\")}}\n"
                "if use_flash:\n"
                f"    load_kwargs[\"attn_implementation\"] = {_FB}(\"flash_attention_2\")\n"
                f"impl = cfg.get(\"attn_implementation\", {_FB}(\"flash_attention_2\"))\n"
                "parser = argparse.ArgumentParser()\n"
                "parser.add_argument(\n"
                "    \"--attn-implementation\",\n"
                f"    default={_FB}(\"flash_attention_2\"),  # fastest on A100\n"
                "    choices=(\"sdpa\", \"flash_attention_2\", \"eager\"),\n"
                ")\n",
            ),
        ),
        Example(
            id="resolver-return-and-conditional",
            note="MOSS-TTS-Nano runtime shape: the flash branch of a resolver; the comparison is left alone",
            before=(
                "import importlib.util\n"
                "\n"
                "def _resolve_attn_implementation(requested):\n"
                "    if requested == \"flash_attention_2\":\n"
                "        return \"flash_attention_2\" if importlib.util.find_spec(\"flash_attn\") else \"sdpa\"\n"
                "    return requested\n"
            ),
            after=_runtime.with_helpers(
                "import importlib.util\n",
                _VALUE_HELPERS,
                "def _resolve_attn_implementation(requested):\n"
                "    if requested == \"flash_attention_2\":\n"
                f"        return {_FB}(\"flash_attention_2\") if importlib.util.find_spec(\"flash_attn\") else \"sdpa\"\n"
                "    return requested\n",
            ),
        ),
        Example(
            id="multi-line-keyword-with-comment",
            before=(
                "import transformers\n"
                "\n"
                "model = transformers.AutoModel.from_pretrained(\n"
                "    path,\n"
                "    attn_implementation=(\n"
                "        \"flash_attention_2\"  # needs flash-attn>=2.5\n"
                "    ),\n"
                ")\n"
            ),
            after=_runtime.with_helpers(
                "import transformers\n",
                _VALUE_HELPERS,
                "model = transformers.AutoModel.from_pretrained(\n"
                "    path,\n"
                "    attn_implementation=(\n"
                f"        {_FB}(\"flash_attention_2\")  # needs flash-attn>=2.5\n"
                "    ),\n"
                ")\n",
            ),
        ),
        Example(
            id="implementation-tests-keys-and-text-left-alone",
            note="comparisons, dict keys, choices, docstrings, comments and f-strings are not values",
            before=(
                "def forward(self, q):\n"
                "    \"\"\"Uses attn_implementation=\"flash_attention_2\" on CUDA.\"\"\"\n"
                "    # attn_implementation=\"flash_attention_2\"\n"
                "    if self.config._attn_implementation == \"flash_attention_2\":\n"
                "        return ATTENTION_CLASSES[\"flash_attention_2\"](q)\n"
                "    log(f\"attn_implementation={'flash_attention_2'}\")\n"
                "    return CHOICES.index(\"flash_attention_2\")\n"
            ),
        ),
        Example(id="other-implementations-left-alone",
                before="model = load(path, attn_implementation=\"sdpa\")\nself._attn_implementation = \"eager\"\n"),
        Example(
            id="pass-through-outside-config-left-alone",
            note="only the config class is an entry point; values passed along elsewhere are not wrapped again",
            before=(
                "class Block(nn.Module):\n"
                "    def __init__(self, config, attn_implementation):\n"
                "        self.attn_implementation = attn_implementation\n"
                "        self.attn = Attention(config, attn_implementation=attn_implementation)\n"
            ),
        ),
        # -- selectors ------------------------------------------------------------------------
        Example(
            id="seed001-change-b-selector",
            note="seed 001 change B: npu takes the CUDA branch; spelled as widen-device-check spells it",
            before="def default_attn(device):\n    return \"sdpa\" if device.type == \"cuda\" else \"eager\"\n",
            after="def default_attn(device):\n    return \"sdpa\" if device.type in (\"cuda\", \"npu\") else \"eager\"\n",
        ),
        Example(
            id="selector-ne-single-quotes",
            before="attn = 'eager' if device.type != 'cuda' else 'sdpa'\n",
            after="attn = 'eager' if device.type not in ('cuda', 'npu') else 'sdpa'\n",
        ),
        Example(
            id="flash-selector-widened-and-wrapped",
            note="a flash selector is a flash gate: widen-device-check skips it; npu gets sdpa, not flash",
            before=(
                "import torch\n"
                "\n"
                "kwargs = dict(attn_implementation=\"flash_attention_2\" if device.type == \"cuda\" else \"eager\")\n"
            ),
            after=_runtime.with_helpers(
                "import torch\n",
                _VALUE_HELPERS,
                f"kwargs = dict(attn_implementation={_FB}(\"flash_attention_2\") if device.type in (\"cuda\", \"npu\") "
                "else \"eager\")\n",
            ),
        ),
        Example(id="selector-npu-already-gets-sdpa-left-alone",
                before="attn = \"flash_attention_2\" if device.type == \"cuda\" else \"sdpa\"\n"),
        Example(id="selector-already-widened-left-alone",
                before="attn = \"sdpa\" if device.type in (\"cuda\", \"npu\") else \"eager\"\n"),
        # -- flash-attention calls ------------------------------------------------------------
        Example(
            id="flash-attn-func-unconditional",
            note="Ming-omni-tts audio encoder shape: flash_attn_func with a causal KV cache",
            before=(
                "import torch\n"
                "from flash_attn import flash_attn_func\n"
                "\n"
                "def attend(q, k, v):\n"
                "    a = flash_attn_func(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), causal=True)\n"
                "    return a.flatten(start_dim=2)\n"
            ),
            after=_runtime.with_helpers(
                "import torch\n"
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "except ImportError:\n"
                "    flash_attn_func = None\n",
                _runtime.flash_dispatch(("npu",), varlen=False),
                "def attend(q, k, v):\n"
                f"    a = {_runtime.FLASH_FUNC_OR_SDPA}(flash_attn_func, q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), "
                "v.permute(0, 2, 1, 3), causal=True)\n"
                "    return a.flatten(start_dim=2)\n",
            ),
        ),
        Example(
            id="varlen-aliased-multi-line-with-comments",
            before=(
                "try:\n"
                "    from flash_attn import flash_attn_varlen_func as varlen_attn\n"
                "except ImportError:\n"
                "    varlen_attn = None\n"
                "\n"
                "def packed(q, k, v, cu_seqlens, max_seqlen, scale):\n"
                "    return varlen_attn(\n"
                "        q,  # (total, heads, dim)\n"
                "        k,\n"
                "        v,\n"
                "        cu_seqlens,\n"
                "        cu_seqlens,\n"
                "        max_seqlen,\n"
                "        max_seqlen,\n"
                "        dropout_p=0.0,\n"
                "        softmax_scale=scale,\n"
                "        causal=True,\n"
                "    )\n"
            ),
            after=_runtime.with_helpers(
                "try:\n"
                "    from flash_attn import flash_attn_varlen_func as varlen_attn\n"
                "except ImportError:\n"
                "    varlen_attn = None\n",
                _runtime.flash_dispatch(("npu",), varlen=True),
                "def packed(q, k, v, cu_seqlens, max_seqlen, scale):\n"
                f"    return {_runtime.FLASH_VARLEN_OR_SDPA}(\n"
                "        varlen_attn,\n"
                "        q,  # (total, heads, dim)\n"
                "        k,\n"
                "        v,\n"
                "        cu_seqlens,\n"
                "        cu_seqlens,\n"
                "        max_seqlen,\n"
                "        max_seqlen,\n"
                "        dropout_p=0.0,\n"
                "        softmax_scale=scale,\n"
                "        causal=True,\n"
                "    )\n",
            ),
        ),
        Example(
            id="module-attribute-call-and-device-check",
            note="the device check is widened only because the call after it now runs SDPA on npu",
            before=(
                "import flash_attn as fa\n"
                "\n"
                "def flash_forward(q, k, v, scale):\n"
                "    if q.device.type != \"cuda\":\n"
                "        raise RuntimeError(\"flash_attention_2 requires CUDA tensors\")\n"
                "    return fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)\n"
            ),
            after=_runtime.with_helpers(
                "try:\n"
                "    import flash_attn as fa\n"
                "except ImportError:\n"
                "    fa = None\n",
                _runtime.flash_dispatch(("npu",), varlen=False),
                "def flash_forward(q, k, v, scale):\n"
                "    if q.device.type not in (\"cuda\", \"npu\"):\n"
                "        raise RuntimeError(\"flash_attention_2 requires CUDA tensors\")\n"
                f"    return {_runtime.FLASH_FUNC_OR_SDPA}(getattr(fa, \"flash_attn_func\", None), q, k, v, "
                "softmax_scale=scale, causal=True)\n",
            ),
        ),
        Example(
            id="seed001-change-c-left-alone",
            note="MOSS-TTS-Nano gpt2_decoder.py shape: flash_attn is optional, dropout is an expression and "
            "bert_padding helpers follow, so the CUDA-only check stays (reported as a flash gate); npu never "
            "gets here because flash_attention_2 requests fall back to sdpa",
            before=(
                "import torch\n"
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "    from flash_attn.bert_padding import pad_input\n"
                "    FLASH_OK = True\n"
                "except Exception:\n"
                "    flash_attn_func = pad_input = None\n"
                "    FLASH_OK = False\n"
                "\n"
                "def _flash_attention(self, query, key, value):\n"
                "    if not FLASH_OK:\n"
                "        raise ImportError(\"flash_attn is not installed, but flash_attention_2 was requested.\")\n"
                "    if query.device.type != \"cuda\":\n"
                "        raise ValueError(\"flash_attention_2 requires CUDA tensors.\")\n"
                "    dropout_p = self.attn_dropout if self.training else 0.0\n"
                "    out = flash_attn_func(query, key, value, dropout_p=dropout_p, causal=True)\n"
                "    return pad_input(out)\n"
            ),
        ),
        Example(
            id="unproven-arguments-call-left-alone",
            note="the import is guarded; the call with window_size (also softcap, alibi_slopes, return_attn_probs, "
            "dropout other than 0) is reported as needing a decision, not rewritten",
            before=(
                "from flash_attn import flash_attn_func\n"
                "\n"
                "def local(q, k, v):\n"
                "    return flash_attn_func(q, k, v, causal=True, window_size=(256, 0))\n"
            ),
            after=(
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "except ImportError:\n"
                "    flash_attn_func = None\n"
                "\n"
                "def local(q, k, v):\n"
                "    return flash_attn_func(q, k, v, causal=True, window_size=(256, 0))\n"
            ),
        ),
        Example(
            id="shadowed-and-guarded-left-alone",
            before=(
                "from transformers.utils import is_flash_attn_2_available\n"
                "\n"
                "if is_flash_attn_2_available():\n"
                "    from flash_attn import flash_attn_func\n"
                "\n"
                "def run(flash_attn_func, torch, q, k, v):\n"
                "    with torch.backends.cuda.sdp_kernel(enable_math=False):\n"
                "        return flash_attn_func(q, k, v)\n"
            ),
        ),
        Example(
            id="reraising-import-left-alone",
            note="the module refuses to import without flash_attn; reported as needing a decision",
            before=(
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "except (ImportError, RuntimeError, OSError):\n"
                "    raise ImportError(\"Flash Attention is a required dependency\")\n"
            ),
        ),
        # -- SDPA kernel contexts -------------------------------------------------------------
        Example(
            id="sdpa-kernel-cuda-only-backends-aliased",
            before=(
                "from torch.nn.attention import SDPBackend, sdpa_kernel as sk\n"
                "\n"
                "def fast(q, k, v):\n"
                "    with sk([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):\n"
                "        return sdpa(q, k, v)\n"
            ),
            after=_runtime.with_helpers(
                "from torch.nn.attention import SDPBackend, sdpa_kernel as sk\n",
                _CONTEXT_HELPERS,
                "def fast(q, k, v):\n"
                f"    with {_runtime.SDP_CONTEXT}(sk([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION])):\n"
                "        return sdpa(q, k, v)\n",
            ),
        ),
        Example(
            id="legacy-sdp-kernel-math-off-torch-alias",
            before=(
                "import torch as t\n"
                "\n"
                "with t.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False):\n"
                "    y = block(x)\n"
            ),
            after=_runtime.with_helpers(
                "import torch as t\n",
                _CONTEXT_HELPERS,
                f"with {_runtime.SDP_CONTEXT}(t.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, "
                "enable_mem_efficient=False)):\n"
                "    y = block(x)\n",
            ),
        ),
        Example(
            id="legacy-sdp-kernel-from-import-alias-multi-line",
            before=(
                "from torch.backends.cuda import sdp_kernel as k\n"
                "\n"
                "def fused_only(q, kv):\n"
                "    with k(\n"
                "        enable_flash=True,\n"
                "        enable_math=False,  # fused kernels only\n"
                "    ):\n"
                "        return attend(q, kv)\n"
            ),
            after=_runtime.with_helpers(
                "from torch.backends.cuda import sdp_kernel as k\n",
                _CONTEXT_HELPERS,
                "def fused_only(q, kv):\n"
                f"    with {_runtime.SDP_CONTEXT}(k(\n"
                "        enable_flash=True,\n"
                "        enable_math=False,  # fused kernels only\n"
                "    )):\n"
                "        return attend(q, kv)\n",
            ),
        ),
        Example(
            id="voxcpm-sdp-kernel-math-on-left-alone",
            note="voxcpm unified_cfm.py: only fused kernels off, for jvp; needed on CPU torch 2.13 too",
            before=(
                "def loss(self, y, r, t, v, v_r, v_t, model_fn):\n"
                "    from torch.backends.cuda import sdp_kernel\n"
                "\n"
                "    with sdp_kernel(enable_flash=False, enable_mem_efficient=False):\n"
                "        u_pred, dudt = jvp(model_fn, (y, r, t), (v, v_r, v_t))\n"
                "    return u_pred, dudt\n"
            ),
        ),
        Example(
            id="shipped-config-reported-not-edited",
            path="config.json",
            before="{\n  \"model_type\": \"bailing_moe\",\n  \"_attn_implementation\": \"flash_attention_2\"\n}\n",
        ),
    ]
