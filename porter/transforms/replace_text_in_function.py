"""replace-text-in-function: an exact, counted text edit confined to one named function
(or, with `function: "<module>"`, to the module's top-level statements outside any def/class)."""

from __future__ import annotations

import difflib
import re

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety


MODULE = "<module>"


class _ReplaceText(Rewriter):

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
        # The blank lines and comments above the def are not part of the edit, and parse_module
        # would move them into the module header (dropping the blank lines between functions).
        code = cst.Module(body=[updated.with_changes(leading_lines=())]).code
        if p.new in code and (p.old not in p.new or code.count(p.old) == p.count * p.new.count(p.old)):
            return updated  # already applied: idempotent
        found = code.count(p.old)
        if found == 0:
            self.find(original, "recipe_edit", f"text to replace not found in {p.function}; upstream changed?")
            return updated
        if found != p.count:
            self.find(original, "recipe_edit",
                      f"{p.function} contains the text {found} times, the recipe expects {p.count}: left alone")
            return updated
        new_code = code.replace(p.old, p.new)
        try:
            new_func = cst.parse_module(new_code).body[0].with_changes(leading_lines=updated.leading_lines)
        except cst.ParserSyntaxError as exc:
            self.find(original, "recipe_edit", f"the replacement does not parse ({exc.message}): left alone")
            return updated
        start, _ = self.line_of(original)
        # `start` is the `def` line; decorators come before it (leading lines are not in `code`).
        offset = start - 1 - len(original.decorators)
        a, b = code.splitlines(keepends=True), new_code.splitlines(keepends=True)
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if tag != "equal":
                self.record_lines(offset + i1 + 1, "".join(a[i1:i2]), "".join(b[j1:j2]), p.reason)
        return new_func  # type: ignore[return-value]

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        if self.params.function == MODULE:
            updated = self._edit_top_level(original, updated)
        return super().leave_Module(original, updated)

    def _edit_top_level(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        """`old` -> `new` in top-level statements that are not functions or classes (those have
        names of their own). Each occurrence must lie inside one statement."""
        p = self.params
        # Nothing else changes in this mode, so original.body and updated.body line up.
        sites = [
            (i, stmt, cst.Module(body=[stmt.with_changes(leading_lines=[])]).code)
            for i, stmt in enumerate(original.body)
            if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef))
        ]
        joined = "".join(code for _, _, code in sites)
        if p.new in joined and (p.old not in p.new or joined.count(p.old) == p.count * p.new.count(p.old)):
            return updated  # already applied: idempotent
        found = sum(code.count(p.old) for _, _, code in sites)
        anchor = sites[0][1] if sites else original
        if found == 0:
            self.find(anchor, "recipe_edit", "text to replace not found at module level; upstream changed?")
            return updated
        if found != p.count:
            self.find(anchor, "recipe_edit",
                      f"the module's top-level code contains the text {found} times, the recipe expects {p.count}: left alone")
            return updated
        body = list(updated.body)
        for i, stmt, code in reversed(sites):
            if p.old not in code:
                continue
            new_code = code.replace(p.old, p.new)
            try:
                new_stmts = list(cst.parse_module(new_code).body)
            except cst.ParserSyntaxError as exc:
                self.find(stmt, "recipe_edit", f"the replacement does not parse ({exc.message}): left alone")
                return updated
            if not new_stmts:
                self.find(stmt, "recipe_edit", "the replacement leaves no statement: left alone")
                return updated
            new_stmts[0] = new_stmts[0].with_changes(leading_lines=stmt.leading_lines)
            offset = self.line_of(stmt)[0] - 1
            a, b = code.splitlines(keepends=True), new_code.splitlines(keepends=True)
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
                if tag != "equal":
                    self.record_lines(offset + i1 + 1, "".join(a[i1:i2]), "".join(b[j1:j2]), p.reason)
            body[i:i + 1] = new_stmts
        self.changes.sort(key=lambda c: c.line)
        return updated.with_changes(body=body)


class ReplaceTextInFunction(PythonTransform):
    """Replace exact text inside one named function: an escape hatch for model-specific edits.

    For what no general transform covers (e.g. a device resolver that rejects "npu"). The edit is
    confined to the function named by `function` (`name`, or `Class.method`), must find `old`
    exactly `count` times there, and must leave code that parses; otherwise the site is reported
    as a finding and nothing changes. `function: "<module>"` confines it to the module's
    top-level statements outside any def or class (e.g. a module-level `try: import ...` whose
    except clause re-raises, which attention-fallback leaves for a recipe decision). Every change
    shows up in the report as recipe-specific, with the recipe's `reason`.
    """

    name = "replace-text-in-function"
    safety = Safety.RECIPE

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        function: str = Field(description='function name, or Class.method, or outer.inner, or "<module>" '
                                          "(top-level statements outside any def/class)")
        old: str = Field(min_length=1, description="exact text to replace")
        new: str = Field(description="replacement text")
        count: int = Field(1, ge=1, description="how many times `old` must occur in the function")
        reason: str = Field(min_length=1, description="why this edit is needed (shown in the report)")

    rewriter = _ReplaceText

    def could_match(self, text: str) -> bool:
        if self.params.function == MODULE:
            return self.params.old in text or self.params.new in text
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
            id="second-function-keeps-blank-lines",
            note="the two blank lines (and comments) above a top-level def stay where they are",
            params={"function": "pick", "old": 'return "cpu"', "new": 'return "npu"', "reason": "x"},
            before='def first():\n    return 1\n\n\n# choose\ndef pick():\n    return "cpu"\n',
            after='def first():\n    return 1\n\n\n# choose\ndef pick():\n    return "npu"\n',
        ),
        Example(
            id="module-level-reraising-import",
            note='function "<module>": top-level code outside defs and classes (Ming-omni-tts audio_encoder.py)',
            params={
                "function": "<module>",
                "old": "except ImportError:\n    raise ImportError(\"flash_attn is required\")\n",
                "new": (
                    "except ImportError:\n"
                    "    if not ON_NPU:\n"
                    "        raise ImportError(\"flash_attn is required\")\n"
                    "    flash_attn_func = None\n"
                ),
                "reason": "the module must import on npu, where the flash call runs as SDPA",
            },
            before=(
                "import torch\n"
                "\n"
                "# flash is required\n"
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "except ImportError:\n"
                "    raise ImportError(\"flash_attn is required\")\n"
                "\n"
                "\n"
                "def f():\n"
                "    try:\n"
                "        import x\n"
                "    except ImportError:\n"
                "        raise ImportError(\"flash_attn is required\")\n"
            ),
            after=(
                "import torch\n"
                "\n"
                "# flash is required\n"
                "try:\n"
                "    from flash_attn import flash_attn_func\n"
                "except ImportError:\n"
                "    if not ON_NPU:\n"
                "        raise ImportError(\"flash_attn is required\")\n"
                "    flash_attn_func = None\n"
                "\n"
                "\n"
                "def f():\n"
                "    try:\n"
                "        import x\n"
                "    except ImportError:\n"
                "        raise ImportError(\"flash_attn is required\")\n"
            ),
        ),
        Example(
            id="module-level-text-inside-a-function-left-alone",
            params={"function": "<module>", "old": 'return "cuda"', "new": 'return "npu"', "reason": "x"},
            before='X = 1\n\n\ndef pick():\n    return "cuda"\n',
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
