"""The run-time device choice shared by cuda-api, autocast-device, hardcoded-device and import-order.

Patched code never imports porter, so the choice lives in two small helpers written into each
module that needs them (`Rewriter.need_helper`):

* `_porter_npu_available()` is True on an Ascend npu host: torch_npu makes `torch.npu` usable and
  there is no CUDA. On a CUDA host, or a CPU host without torch_npu, it is False, so every
  rewritten expression evaluates exactly what the upstream code evaluated. This is the same test
  as the lead's `_porter_mem_get_info` helper, so all of porter's rewrites agree on the device.
* `_porter_cuda_or_npu()` is `torch.npu` on such a host, else `torch.cuda`; `torch.cuda.X(...)`
  becomes `_porter_cuda_or_npu().X(...)`.
* `_porter_cuda(obj, ...)` is `obj.npu(...)` on such a host, else `obj.cuda(...)`: `x.cuda()`
  becomes `_porter_cuda(x)`, so CUDA and CPU hosts make exactly the upstream call (the same
  result, the same error). transfer_to_npu makes the same move (Tensor/Module.cuda -> .npu).

A hard-coded CUDA value becomes `"npu" if _porter_npu_available() else "cuda"`: the upstream
expression is kept verbatim in the `else` branch, which is also how the transforms recognise code
they already rewrote (idempotence) and never touch it again.
"""

from __future__ import annotations

import ast
import re

import libcst as cst

NPU_AVAILABLE = "_porter_npu_available"
NPU_AVAILABLE_SOURCE = f'''
def {NPU_AVAILABLE}():
    """True on an Ascend npu host (torch_npu loaded, no CUDA): porter's rewrites then pick npu."""
    import torch

    return not torch.cuda.is_available() and hasattr(torch, "npu") and torch.npu.is_available()
'''

CUDA_OR_NPU = "_porter_cuda_or_npu"
CUDA_OR_NPU_SOURCE = f'''
def {CUDA_OR_NPU}():
    """torch.npu on an Ascend npu host, else torch.cuda (written by porter for torch.cuda.X calls)."""
    import torch

    return torch.npu if {NPU_AVAILABLE}() else torch.cuda
'''

MOVE = "_porter_cuda"
MOVE_SOURCE = f'''
def {MOVE}(obj, *args, **kwargs):
    """`obj.cuda(*args, **kwargs)`, or `obj.npu(...)` on an Ascend npu host (written by porter)."""
    if {NPU_AVAILABLE}():
        return obj.npu(*args, **kwargs)
    return obj.cuda(*args, **kwargs)
'''

CUDA_DEVICE = re.compile(r"^cuda(:\d+)?$")


def need_npu_available(rewriter) -> str:
    return rewriter.need_helper(NPU_AVAILABLE, NPU_AVAILABLE_SOURCE)


def need_move(rewriter) -> str:
    need_npu_available(rewriter)
    return rewriter.need_helper(MOVE, MOVE_SOURCE)


def need_cuda_or_npu(rewriter) -> str:
    need_npu_available(rewriter)
    return rewriter.need_helper(CUDA_OR_NPU, CUDA_OR_NPU_SOURCE)


# -- literals ---------------------------------------------------------------------------------------
def string_value(node: cst.CSTNode) -> str | None:
    """The value of a plain (non-f, non-bytes) string literal, else None."""
    if isinstance(node, cst.SimpleString):
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, str) else None
    return None


def target_name(target: cst.CSTNode) -> str | None:
    """The name an assignment target stores under: x, obj.x, d["x"]."""
    if isinstance(target, cst.Name):
        return target.value
    if isinstance(target, cst.Attribute):
        return target.attr.value
    if isinstance(target, cst.Subscript) and len(target.slice) == 1:
        index = target.slice[0].slice
        if isinstance(index, cst.Index):
            return string_value(index.value)
    return None


def is_cuda_literal(node: cst.CSTNode) -> bool:
    """`"cuda"`, `'cuda:1'`, or an f-string naming a CUDA device such as `f"cuda:{rank}"`."""
    value = string_value(node)
    if value is not None:
        return bool(CUDA_DEVICE.match(value))
    if isinstance(node, cst.FormattedString) and node.parts:
        first = node.parts[0]
        rest_are_fields = all(isinstance(p, cst.FormattedStringExpression) for p in node.parts[1:])
        return (
            isinstance(first, cst.FormattedStringText)
            and first.value == "cuda:"
            and len(node.parts) > 1
            and rest_are_fields
        )
    return False


def npu_twin(node: cst.BaseExpression) -> cst.BaseExpression:
    """The same literal naming the npu device: same quotes, prefix and index; no parentheses."""
    if isinstance(node, cst.SimpleString):
        value = string_value(node)
        assert value is not None
        return cst.SimpleString(f"{node.prefix}{node.quote}npu{value[len('cuda'):]}{node.quote}")
    assert isinstance(node, cst.FormattedString)
    first = node.parts[0]
    assert isinstance(first, cst.FormattedStringText)
    return node.with_changes(
        parts=[first.with_changes(value="npu" + first.value[len("cuda"):]), *node.parts[1:]],
        lpar=[],
        rpar=[],
    )


def npu_available_call() -> cst.Call:
    return cst.Call(func=cst.Name(NPU_AVAILABLE))


def cuda_or_npu_call() -> cst.Call:
    return cst.Call(func=cst.Name(CUDA_OR_NPU))


def is_npu_available_call(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Call) and not node.args and m_name(node.func, NPU_AVAILABLE)


def is_cuda_or_npu_call(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Call) and not node.args and m_name(node.func, CUDA_OR_NPU)


def m_name(node: cst.CSTNode, value: str) -> bool:
    return isinstance(node, cst.Name) and node.value == value


def is_ported_choice(node: cst.CSTNode) -> bool:
    """`A if _porter_npu_available() else B`, or autocast's `"npu" if T.type == "npu" else B`."""
    if not isinstance(node, cst.IfExp):
        return False
    if is_npu_available_call(node.test):
        return True
    test = node.test
    return (
        string_value(node.body) == "npu"
        and isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.Equal)
        and string_value(test.comparisons[0].comparator) == "npu"
    )


# -- building the choice ----------------------------------------------------------------------------
# Parents in which `a if b else c` needs no parentheses of its own.
_NO_PARENS = (
    cst.Arg,
    cst.Param,
    cst.Assign,
    cst.AnnAssign,
    cst.AugAssign,
    cst.Return,
    cst.Element,
    cst.DictElement,
    cst.Expr,
    cst.FormattedStringExpression,
    cst.Index,
    cst.WithItem,
    cst.Lambda,
)


def needs_parens(parent: cst.CSTNode | None, child: cst.CSTNode) -> bool:
    if isinstance(parent, cst.IfExp):
        return parent.orelse is not child
    return not isinstance(parent, _NO_PARENS)


def prefer_npu(
    original: cst.BaseExpression,
    updated: cst.BaseExpression,
    npu: cst.BaseExpression,
    parent: cst.CSTNode | None,
    test: cst.BaseExpression | None = None,
) -> cst.IfExp:
    """`<npu> if _porter_npu_available() else <updated>`, parenthesised only where needed.

    Parentheses around the original expression move outwards, so a multi-line expression keeps
    its layout (and its comments) inside them.
    """
    lpar, rpar = list(updated.lpar), list(updated.rpar)
    choice = cst.IfExp(
        test=test if test is not None else npu_available_call(),
        body=npu,
        orelse=updated.with_changes(lpar=[], rpar=[]),
    )
    if lpar:
        return choice.with_changes(lpar=lpar, rpar=rpar)
    if needs_parens(parent, original):
        return choice.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return choice


def runtime_device(original: cst.BaseExpression, updated: cst.BaseExpression, parent) -> cst.IfExp:
    """A CUDA device literal -> `"npu..." if _porter_npu_available() else "cuda..."`."""
    return prefer_npu(original, updated, npu_twin(updated), parent)


# -- examples -----------------------------------------------------------------------------------------
def ported(head: str, tail: str, *helpers: str) -> str:
    """An example's expected text: `helpers` written between the imports (`head`) and the rest.

    This is where `Rewriter.need_helper` puts them: after the leading imports, two blank lines
    before and at least two after.
    """
    blank = len(tail) - len(tail.lstrip("\n"))
    text = "\n\n".join(h.strip() + "\n" for h in helpers)
    return head + "\n\n" + text + "\n" * max(2, blank) + tail.lstrip("\n")
