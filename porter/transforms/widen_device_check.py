"""widen-device-check: device-type comparisons against "cuda" also admit "npu"."""

from __future__ import annotations

import re

import libcst as cst
from libcst.metadata import PositionProvider
from pydantic import BaseModel, ConfigDict, Field

from porter.analysis import Site, has_sites, site_at
from porter.transforms._base import Example, PythonTransform, Rewriter, Safety
from porter.transforms._gates import enclosing_gate
from porter.transforms._npu_runtime import string_value as _value

_CUDA = re.compile(r"^cuda(:\d+)?$")
_DEVICE_CATEGORIES = ("device_check", "compile_gate", "kernel_gate", "attention_backend")


def _string_like(template: cst.SimpleString, value: str) -> cst.SimpleString:
    """A string literal with `template`'s prefix and quote style."""
    quote = template.quote
    return cst.SimpleString(f"{template.prefix}{quote}{value}{quote}")


class _Widen(Rewriter):
    # Names are not resolved here (a device is any expression), so skip the costly scope analysis.

    def _devices_for(self, cuda_value: str) -> list[str]:
        suffix = cuda_value[len("cuda"):]  # "" or ":N"
        return [f"{d}{suffix}" for d in self.params.devices]

    def _tuple_of(self, literal: cst.SimpleString, values: list[str]) -> cst.Tuple:
        items = [literal] + [_string_like(literal, v) for v in values]
        return cst.Tuple(
            elements=[cst.Element(v, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
                      for v in items[:-1]] + [cst.Element(items[-1])],
        )

    def _gated(self, node: cst.CSTNode, anchor: cst.CSTNode | None = None) -> bool:
        """True when the analysis (porter/analysis.py) does not classify the comparison as a rewrite:
        a compile or kernel gate, a comparison paired with a CUDA-only property, a branch that asserts
        CUDA or needs CUDA-only state. Kept sites this transform owns become findings."""
        assert self.source is not None
        kept = has_sites(self.ctx.path, self.source, _DEVICE_CATEGORIES) or has_sites(
            self.ctx.path, self.source, ("attention_backend",), ("rewrite",))  # a flash selector, maybe
        if kept is False:
            return False  # every device check in this file is a rewrite: no position lookup needed
        site = None if kept is None else self._site(anchor if anchor is not None else node)
        if site is None:  # ast could not read the file (newer syntax): the libcst gate definitions
            return self.params.skip_compile_gates and enclosing_gate(node, self.parent) is not None
        if site.action == "rewrite":
            # a flash selector widened alone would send npu to flash_attention_2: attention-fallback's
            return site.kind == "flash-selector"
        if site.category in ("compile_gate", "kernel_gate") and not self.params.skip_compile_gates:
            return False
        if site.transform == self.transform.name:
            verdict = "needs a decision" if site.action == "decision" else "kept CUDA-only"
            self.find(node, "device_check" if site.action == "keep" else "needs_decision",
                      f"{verdict}: {site.reason}" + (f" ({site.context})" if site.context.startswith("line") else ""))
        return True

    def _site(self, anchor: cst.CSTNode) -> Site | None:
        if self.source is None:
            return None
        start = self.meta(PositionProvider, anchor).start
        return site_at(self.ctx.path, self.source, start.line, start.column, _DEVICE_CATEGORIES)

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression:
        if len(updated.comparisons) != 1:
            return updated
        target = updated.comparisons[0]
        op, left, right = target.operator, updated.left, target.comparator
        lit_right, lit_left = _value(right), _value(left)

        # x == "cuda" / "cuda" == x / x != "cuda"
        if isinstance(op, (cst.Equal, cst.NotEqual)):
            if lit_right is not None and lit_left is not None:
                return updated  # two literals: not a device check
            if lit_right is not None and _CUDA.match(lit_right):
                subject, literal, value = left, right, lit_right
            elif lit_left is not None and _CUDA.match(lit_left) and _value(right) is None:
                subject, literal, value = right, left, lit_left
            else:
                return updated
            anchor = original.comparisons[0].comparator if literal is right else original.left
            if self._gated(original, anchor):
                return updated
            assert isinstance(literal, cst.SimpleString)
            new_op: cst.BaseCompOp = (
                cst.In(whitespace_before=op.whitespace_before, whitespace_after=op.whitespace_after)
                if isinstance(op, cst.Equal)
                else cst.NotIn(whitespace_before=op.whitespace_before, whitespace_after=op.whitespace_after)
            )
            result = updated.with_changes(
                left=subject,
                comparisons=[target.with_changes(operator=new_op,
                                                 comparator=self._tuple_of(literal, self._devices_for(value)))],
            )
            return self.record(original, result, "device check: npu takes the CUDA branch")

        # x in ("cuda", ...) / x not in [...]: add the npu spelling to the collection
        if isinstance(op, (cst.In, cst.NotIn)) and isinstance(right, (cst.Tuple, cst.List, cst.Set)):
            values = [_value(e.value) for e in right.elements]
            cudas = [v for v in values if v is not None and _CUDA.match(v)]
            missing = [d for v in cudas for d in self._devices_for(v) if d not in values]
            if not cudas or not missing:
                return updated
            first = next(e.value for e in original.comparisons[0].comparator.elements  # type: ignore[attr-defined]
                         if _value(e.value) in cudas)
            if self._gated(original, first):
                return updated
            literal = next(e.value for e in right.elements if _value(e.value) in cudas)
            assert isinstance(literal, cst.SimpleString)
            elements = list(right.elements)
            last = elements[-1]
            trailing = last.comma
            elements[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            new = [cst.Element(_string_like(literal, d), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
                   for d in missing]
            new[-1] = new[-1].with_changes(comma=trailing)
            result = updated.with_changes(
                comparisons=[target.with_changes(comparator=right.with_changes(elements=elements + new))]
            )
            return self.record(original, result, "device check: npu is in the set of CUDA-like devices")

        # "cuda" in str(d): substring test on a device string
        if isinstance(op, cst.In) and lit_left is not None and _CUDA.match(lit_left):
            if self._already_or(original) or self._gated(original, original.left):
                return updated
            assert isinstance(left, cst.SimpleString)
            alternatives = [updated] + [
                cst.Comparison(left=_string_like(left, d), comparisons=[target]) for d in self._devices_for(lit_left)
            ]
            expr: cst.BaseExpression = alternatives[0]
            for alt in alternatives[1:]:
                expr = cst.BooleanOperation(left=expr, operator=cst.Or(), right=alt)
            result = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
            return self.record(original, result, "device check: a device string naming npu passes too")
        return updated

    def _already_or(self, node: cst.Comparison) -> bool:
        parent = self.parent(node)
        if not isinstance(parent, cst.BooleanOperation) or not isinstance(parent.operator, cst.Or):
            return False
        other = parent.right if parent.left is node else parent.left
        while isinstance(other, cst.BooleanOperation):
            other = other.right
        return isinstance(other, cst.Comparison) and _value(other.left) in self._devices_for(_value(node.left) or "")

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        # d.startswith("cuda") -> d.startswith(("cuda", "npu"))
        func = updated.func
        if not (isinstance(func, cst.Attribute) and func.attr.value == "startswith" and len(updated.args) == 1):
            return updated
        arg = updated.args[0]
        value = _value(arg.value)
        if value is None or not _CUDA.match(value) or arg.keyword is not None:
            return updated
        if self._gated(original, original.args[0].value):
            return updated
        assert isinstance(arg.value, cst.SimpleString)
        result = updated.with_changes(
            args=[arg.with_changes(value=self._tuple_of(arg.value, self._devices_for(value)))]
        )
        return self.record(original, result, "device check: a device string starting with npu passes too")

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        # x.is_cuda -> x.device.type in ("cuda", "npu")  (x.is_npu does not exist on CUDA hosts)
        if updated.attr.value != "is_cuda" or self._is_assign_target(original) or self._gated(original, original):
            return updated
        devices = ", ".join(f'"{d}"' for d in ["cuda", *self.params.devices])
        result = cst.parse_expression(f"(_.device.type in ({devices}))").with_changes()
        assert isinstance(result, cst.Comparison)
        result = result.with_changes(
            left=cst.Attribute(value=cst.Attribute(value=updated.value, attr=cst.Name("device")), attr=cst.Name("type"))
        )
        parent = self.parent(original)
        if isinstance(parent, (cst.If, cst.While, cst.IfExp, cst.Assign, cst.Return)) or (
            isinstance(parent, cst.UnaryOperation) and isinstance(parent.operator, cst.Not) and False
        ):
            result = result.with_changes(lpar=[], rpar=[])
        return self.record(original, result, "tensor check: is_cuda also accepts npu tensors")

    def _is_assign_target(self, node: cst.Attribute) -> bool:
        parent = self.parent(node)
        return isinstance(parent, (cst.AssignTarget, cst.AugAssign, cst.AnnAssign)) and getattr(parent, "target", None) is node


class WidenDeviceCheck(PythonTransform):
    """Widen comparisons of a device or device type against "cuda" so "npu" takes the same branch.

    `d.type == "cuda"` becomes `d.type in ("cuda", "npu")`, `!=` becomes `not in`, a literal
    collection gains "npu", `d.startswith("cuda")` takes a tuple, `"cuda" in str(d)` gains an `or`,
    and `x.is_cuda` becomes `x.device.type in ("cuda", "npu")`. Behaviour on CUDA and CPU is
    unchanged. This is not the one-way `cuda -> npu` swap of Ascend's GPU2Ascend tool: the ported
    code keeps running on CUDA. Gates are left alone (porter/transforms/_gates.py): branches that
    guard torch.compile or CUDA graphs (widening them would switch compile on for npu; see
    compile-bypass) and checks in front of flash-attention kernels, which have no npu build
    (see attention-fallback).
    """

    name = "widen-device-check"
    safety = Safety.SAFE
    prefilter = re.compile(r"""["']cuda(:\d+)?["']|is_cuda""")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        devices: tuple[str, ...] = Field(("npu",), description="device types that take the CUDA branch")
        skip_compile_gates: bool = Field(True, description="leave compile/CUDA-graph and flash-attention gates alone")

    rewriter = _Widen
    examples = [
        Example(
            id="eq",
            before='import torch\n\ndef f(x):\n    return 2 if x.device.type == "cuda" else 1\n',
            after='import torch\n\ndef f(x):\n    return 2 if x.device.type in ("cuda", "npu") else 1\n',
        ),
        Example(
            id="ne-seed001-change-a",
            before=(
                "def batch(chunk_count, max_gb, resolved_device):\n"
                '    if chunk_count <= 1 or max_gb <= 0 or resolved_device.type != "cuda":\n'
                "        return 1\n"
            ),
            after=(
                "def batch(chunk_count, max_gb, resolved_device):\n"
                '    if chunk_count <= 1 or max_gb <= 0 or resolved_device.type not in ("cuda", "npu"):\n'
                "        return 1\n"
            ),
        ),
        Example(
            id="single-quotes-reversed",
            before="ok = 'cuda' == device\n",
            after="ok = device in ('cuda', 'npu')\n",
        ),
        Example(id="indexed", before='same = str(dev) == "cuda:0"\n', after='same = str(dev) in ("cuda:0", "npu:0")\n'),
        Example(
            id="in-tuple",
            before='if device_type in ("cuda", "mps"):\n    pass\n',
            after='if device_type in ("cuda", "mps", "npu"):\n    pass\n',
        ),
        Example(
            id="not-in-list-multiline-comment",
            before='if dev.type not in [\n    "cuda",  # GPUs only\n    "xpu",\n]:\n    raise RuntimeError("no")\n',
            after='if dev.type not in [\n    "cuda",  # GPUs only\n    "xpu", "npu",\n]:\n    raise RuntimeError("no")\n',
        ),
        Example(
            id="startswith",
            before='if str(device).startswith("cuda"):\n    pass\n',
            after='if str(device).startswith(("cuda", "npu")):\n    pass\n',
        ),
        Example(
            id="substring",
            before='use_gpu = "cuda" in str(device)\n',
            after='use_gpu = ("cuda" in str(device) or "npu" in str(device))\n',
        ),
        Example(
            id="is-cuda",
            before="def f(x):\n    if x.is_cuda:\n        return 1\n",
            after='def f(x):\n    if x.device.type in ("cuda", "npu"):\n        return 1\n',
        ),
        Example(
            id="multi-line-with-comment",
            before='ok = (\n    device.type  # the device\n    == "cuda"\n)\n',
            after='ok = (\n    device.type  # the device\n    in ("cuda", "npu")\n)\n',
        ),
        Example(
            id="flash-gate-left-alone-seed001-change-c",
            note="flash_attn has no npu kernels; attention-fallback decides what npu does here",
            before=(
                "def attend(query, key, value):\n"
                '    if query.device.type != "cuda":\n'
                '        raise ValueError("flash_attention_2 requires CUDA tensors.")\n'
                "    return flash_attn_func(query, key, value)\n"
            ),
        ),
        Example(id="other-device-left-alone", before='if x.device.type != "cpu":\n    pass\n'),
        Example(id="already-widened", before='if x.device.type in ("cuda", "npu"):\n    pass\n'),
        Example(id="not-a-device-string", before='if provider == "CUDAExecutionProvider":\n    pass\n'),
        Example(id="f-string-left-alone", before='msg = f"{device} == cuda"\nok = f"cuda" == x\n'),
        Example(id="docstring-and-comment", before='def f():\n    """Compare device.type == "cuda"."""\n    # x == "cuda"\n'),
        Example(id="two-literals-left-alone", before='flag = "cuda" == "cuda"\n'),
        Example(
            id="compile-gate-left-alone",
            note="widening this gate would switch torch.compile on for npu",
            before=(
                "import torch\n\n"
                "def optimize(self):\n"
                '    if self.device != "cuda":\n'
                '        raise ValueError("compile needs CUDA")\n'
                '    self.step = torch.compile(self.step, mode="reduce-overhead")\n'
            ),
        ),
    ]
