"""replace-call: calls to one named function become another expression, recipe by recipe."""

from __future__ import annotations

import re
import string

import libcst as cst
from libcst.metadata import QualifiedNameProvider
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety


class _ReplaceCall(Rewriter):

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        p = self.params
        names = {q.name for q in self.meta(QualifiedNameProvider, original.func, set())}
        if p.target not in names:
            return updated
        args = updated.args
        positional = [self.code_of(a.value) for a in args if a.keyword is None and not a.star]
        func = self.code_of(updated.func)
        arg_text = ", ".join(self.code_of(a).strip().rstrip(",").strip() for a in args)
        try:
            text = p.replacement.format(*positional, func=func, args=arg_text)
        except (KeyError, IndexError):
            self.find(original, "recipe_edit",
                      f"replacement {p.replacement!r} needs more positional arguments than this call has: left alone")
            return updated
        try:
            result = cst.parse_expression(text)
        except cst.ParserSyntaxError:
            self.find(original, "recipe_edit", f"replacement {text!r} does not parse: left alone")
            return updated
        return self.record(original, result, p.reason)

    def code_of(self, node: cst.CSTNode) -> str:
        return cst.Module(body=[]).code_for_node(node)


class ReplaceCall(PythonTransform):
    """Replace calls to one function (matched by qualified name) with an expression template.

    An escape hatch for model-specific edits. `target` is the callee's qualified name as
    libcst resolves it: `torch.backends.cuda.sdp_kernel` for imported names (aliases and
    `from ... import` included), or `resolve_device` / `Model.resolve` for names defined in the
    module. `replacement` is a Python expression where `{func}` is the original callee, `{args}`
    the original arguments and `{0}`, `{1}`, ... the positional arguments. Every use shows up in
    the report as a recipe-specific change with the recipe's `reason`.
    """

    name = "replace-call"
    safety = Safety.RECIPE

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        target: str = Field(min_length=1, description="qualified name of the function whose calls are replaced")
        replacement: str = Field(min_length=1, description="expression template: {func}, {args}, {0}, {1}, ...")
        reason: str = Field(min_length=1, description="why this edit is needed (shown in the report)")

        @field_validator("replacement")
        @classmethod
        def _template(cls, v: str) -> str:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
            bad = [n for n in names if n not in ("func", "args") and not n.isdigit()]
            if bad:
                raise ValueError(f"unknown placeholder {{{bad[0]}}} (use {{func}}, {{args}}, {{0}}, {{1}}, ...)")
            return v

    rewriter = _ReplaceCall

    def could_match(self, text: str) -> bool:
        return self.params.target.rsplit(".", 1)[-1] in text

    examples = [
        Example(
            id="wrap-resolver",
            params={"target": "resolve_device", "replacement": "_npu_aware({func}, {args})",
                    "reason": "the upstream resolver rejects npu"},
            before="def resolve_device(d):\n    return d\n\nx = resolve_device('npu', strict=True)\n",
            after="def resolve_device(d):\n    return d\n\nx = _npu_aware(resolve_device, 'npu', strict=True)\n",
        ),
        Example(
            id="imported-alias",
            params={"target": "torch.backends.cuda.sdp_kernel", "replacement": "contextlib.nullcontext()",
                    "reason": "no CUDA SDPA backend choice on npu"},
            before="import contextlib\nfrom torch.backends.cuda import sdp_kernel as k\n\nwith k(enable_flash=True):\n    pass\n",
            after="import contextlib\nfrom torch.backends.cuda import sdp_kernel as k\n\nwith contextlib.nullcontext():\n    pass\n",
        ),
        Example(
            id="positional",
            params={"target": "torch.load", "replacement": "load_on_cpu({0})",
                    "reason": "load on CPU first"},
            before="import torch\nsd = torch.load(path)\n",
            after="import torch\nsd = load_on_cpu(path)\n",
        ),
        Example(
            id="shadowed-left-alone",
            params={"target": "torch.load", "replacement": "x()", "reason": "r"},
            before="def f(torch):\n    return torch.load(p)\n",
        ),
        Example(
            id="missing-positional-left-alone",
            params={"target": "torch.load", "replacement": "g({1})", "reason": "r"},
            before="import torch\nsd = torch.load(path)\n",
        ),
    ]


_ = re  # re is used by subclasses' prefilters; keep the import explicit for readers
