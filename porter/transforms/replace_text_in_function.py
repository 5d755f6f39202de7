"""replace-text-in-function: an exact, counted text edit confined to one named function."""

from __future__ import annotations

import difflib
import re

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety


class _ReplaceText(Rewriter):
    METADATA_DEPENDENCIES = ()

    def __init__(self, transform, ctx) -> None:
        super().__init__(transform, ctx)
        self._scope: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self._scope.append(node.name.value)
        return True

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self._scope.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._scope.append(node.name.value)
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.BaseStatement:
        qualname = ".".join(self._scope)
        self._scope.pop()
        p = self.params
        if qualname != p.function:
            return updated
        code = cst.Module(body=[updated]).code
        if p.new in code and (p.old not in p.new or code.count(p.old) == p.count * p.new.count(p.old)):
            return updated  # already applied: idempotent
        found = code.count(p.old)
        if found == 0:
            self.find(original, "recipe-edit", f"text to replace not found in {p.function}; upstream changed?")
            return updated
        if found != p.count:
            self.find(original, "recipe-edit",
                      f"{p.function} contains the text {found} times, the recipe expects {p.count}: left alone")
            return updated
        new_code = code.replace(p.old, p.new)
        try:
            new_func = cst.parse_module(new_code).body[0]
        except cst.ParserSyntaxError as exc:
            self.find(original, "recipe-edit", f"the replacement does not parse ({exc.message}): left alone")
            return updated
        start, _ = self.line_of(original)
        # `start` is the `def` line; decorators and leading comments come before it.
        offset = start - 1 - len(original.leading_lines) - len(original.decorators)
        a, b = code.splitlines(keepends=True), new_code.splitlines(keepends=True)
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if tag != "equal":
                self.record_lines(offset + i1 + 1, "".join(a[i1:i2]), "".join(b[j1:j2]), p.reason)
        return new_func  # type: ignore[return-value]


class ReplaceTextInFunction(PythonTransform):
    """Replace exact text inside one named function: an escape hatch for model-specific edits.

    For what no general transform covers (e.g. a device resolver that rejects "npu"). The edit is
    confined to the function named by `function` (`name`, or `Class.method`), must find `old`
    exactly `count` times there, and must leave code that parses; otherwise the site is reported
    as a finding and nothing changes. Every change shows up in the report as recipe-specific, with
    the recipe's `reason`.
    """

    name = "replace-text-in-function"
    safety = Safety.RECIPE

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        function: str = Field(description="function name, or Class.method, or outer.inner")
        old: str = Field(min_length=1, description="exact text to replace")
        new: str = Field(description="replacement text")
        count: int = Field(1, ge=1, description="how many times `old` must occur in the function")
        reason: str = Field(min_length=1, description="why this edit is needed (shown in the report)")

    rewriter = _ReplaceText

    def could_match(self, text: str) -> bool:
        return bool(re.search(rf"\bdef\s+{re.escape(self.params.function.split('.')[-1])}\b", text))

    examples = [
        Example(
            id="device-resolver-accepts-npu",
            params={
                "function": "resolve_device",
                "old": 'if explicit.startswith("cuda"):',
                "new": 'if explicit.startswith("npu"):\n        return explicit\n    if explicit.startswith("cuda"):',
                "reason": "the resolver rejected npu; an explicit npu device is now returned as is",
            },
            before=(
                "def resolve_device(explicit):\n"
                '    if explicit.startswith("cuda"):\n'
                "        return explicit\n"
                '    raise ValueError(f"unknown device {explicit}")\n'
            ),
            after=(
                "def resolve_device(explicit):\n"
                '    if explicit.startswith("npu"):\n'
                "        return explicit\n"
                '    if explicit.startswith("cuda"):\n'
                "        return explicit\n"
                '    raise ValueError(f"unknown device {explicit}")\n'
            ),
        ),
        Example(
            id="method-only",
            params={"function": "Model.optimize", "old": "self.compiled = True", "new": "self.compiled = False",
                    "reason": "keep compile off"},
            before=(
                "class Model:\n"
                "    def optimize(self):\n"
                "        self.compiled = True\n"
                "\n"
                "    def other(self):\n"
                "        self.compiled = True\n"
            ),
            after=(
                "class Model:\n"
                "    def optimize(self):\n"
                "        self.compiled = False\n"
                "\n"
                "    def other(self):\n"
                "        self.compiled = True\n"
            ),
        ),
        Example(
            id="other-function-left-alone",
            params={"function": "resolve_device", "old": "cuda", "new": "npu", "reason": "x"},
            before='def pick():\n    return "cuda"\n',
        ),
        Example(
            id="count-mismatch-left-alone",
            params={"function": "f", "old": "x", "new": "y", "count": 1, "reason": "x"},
            before="def f(x):\n    return x + x\n",
        ),
        Example(
            id="unparsable-replacement-left-alone",
            params={"function": "f", "old": "return 1", "new": "return (", "reason": "x"},
            before="def f():\n    return 1\n",
        ),
    ]
