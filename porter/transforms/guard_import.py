"""guard-import: imports of packages that can be installed yet fail to load no longer take the
whole module down."""

from __future__ import annotations

import re

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety

COMMENT = "# installed but cannot load on this host (added by porter)"
_ERROR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_BROAD = {"Exception", "BaseException"}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modules: tuple[str, ...] = Field(min_length=1, description="top-level packages whose imports are guarded")
    errors: tuple[str, ...] = Field(
        default=("ImportError", "OSError"),
        description="exceptions that mean 'cannot load here' (OSError: a native library that does not load)",
    )

    @field_validator("modules")
    @classmethod
    def _top_level(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a top-level package name (no dots)")
        return v

    @field_validator("errors")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("errors needs at least one exception name")
        for name in v:
            if not _ERROR.match(name):
                raise ValueError(f"{name!r} is not an exception name")
        return v


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _tops(stmt: cst.BaseSmallStatement) -> set[str]:
    """The top-level packages an import statement imports from (empty: relative or not an import)."""
    if isinstance(stmt, cst.Import):
        return {_dotted(a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, cst.ImportFrom) and not stmt.relative and stmt.module is not None:
        return {_dotted(stmt.module).split(".")[0]}
    return set()


def _bound(stmt: cst.BaseSmallStatement) -> list[str] | None:
    """Names an import binds; None for `from x import *`."""
    if isinstance(stmt, cst.ImportFrom) and isinstance(stmt.names, cst.ImportStar):
        return None
    out = []
    for alias in stmt.names:  # type: ignore[union-attr]
        if alias.asname is not None:
            out.append(_dotted(alias.asname.name))  # type: ignore[arg-type]
        elif isinstance(stmt, cst.Import):
            out.append(_dotted(alias.name).split(".")[0])
        else:
            out.append(_dotted(alias.name))
    return out


class _Uses(cst.CSTVisitor):
    """Names from `names` that code running at import time reads (function bodies never run then)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.used: list[str] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        # decorators and defaults run at import time, the body does not
        for d in node.decorators:
            d.visit(self)
        node.params.visit(self)
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
        return not isinstance(node.target, cst.Name)  # `x = None` rebinds, it does not read x

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.names and node.value not in self.used:
            self.used.append(node.value)


def _uses(node: cst.CSTNode, names: set[str]) -> list[str]:
    v = _Uses(names)
    node.visit(v)
    return v.used


def _is_not_none(test: cst.BaseExpression, name: str) -> bool:
    """`test` already requires `name is not None` (idempotence)."""
    code = cst.Module(body=[]).code_for_node(test)
    return re.search(rf"\b{re.escape(name)}\s+is\s+not\s+None\b", code) is not None


class _GuardImport(Rewriter):
    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        self.guarded: list[str] = []  # names bound by imports guarded in this module, in order
        body = self._body(list(original_node.body), top=True)
        result = updated_node.with_changes(body=body) if self.changes else updated_node
        return super().leave_Module(original_node, result)

    # -- the module-level statement lists ---------------------------------------------------------
    def _body(self, stmts: list[cst.BaseStatement], top: bool) -> list[cst.BaseStatement]:
        out: list[cst.BaseStatement] = []
        i = 0
        while i < len(stmts):
            stmt = stmts[i]
            if self._guardable(stmt):
                j = i
                while j < len(stmts) and self._guardable(stmts[j]):
                    j += 1
                out.append(self._wrap(stmts[i:j]))
                i = j
                continue
            if isinstance(stmt, cst.If) and not self._type_checking(stmt):
                out.append(self._if(stmt, top))
            elif isinstance(stmt, cst.Try):
                self._check_try(stmt)
                out.append(self._uses_at_import_time(stmt) if top else stmt)
            elif top:
                out.append(self._uses_at_import_time(stmt))
            else:
                out.append(stmt)
            i += 1
        return out

    def _if(self, stmt: cst.If, top: bool) -> cst.If:
        """Imports inside a module-level if/elif/else are guarded in place; a later module-level
        `if` whose body reads a guarded name at import time also tests that it is not None."""
        before = len(self.guarded)
        body = stmt.body.with_changes(body=self._body(list(stmt.body.body), top=False))  # type: ignore[arg-type]
        orelse = stmt.orelse
        if isinstance(orelse, cst.If):
            orelse = self._if(orelse, top=False)
        elif isinstance(orelse, cst.Else):
            orelse = orelse.with_changes(
                body=orelse.body.with_changes(body=self._body(list(orelse.body.body), top=False))  # type: ignore[arg-type]
            )
        new = stmt.with_changes(body=body, orelse=orelse)
        if len(self.guarded) != before or not top:
            return new  # this `if` holds the imports themselves
        names = set(self.guarded)
        in_body = [n for n in _uses(stmt.body, names) if not _is_not_none(stmt.test, n)]
        in_test = _uses(stmt.test, names)
        in_else = _uses(stmt.orelse, names) if stmt.orelse is not None else []
        if not in_body:
            for n in in_test + in_else:
                self._finding(stmt, n, "read at import time by this `if` (its test or else branch)")
            return new
        if in_test or in_else:
            for n in in_body:
                self._finding(stmt, n, "read at import time by this `if`, which also reads it in its test or else branch")
            return new
        test = stmt.test
        if isinstance(test, (cst.BooleanOperation, cst.IfExp, cst.Lambda, cst.NamedExpr)) and not (
            isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And)
        ):
            test = test.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        for n in in_body:
            test = cst.BooleanOperation(
                left=test,
                operator=cst.And(),
                right=cst.Comparison(
                    left=cst.Name(n),
                    comparisons=[cst.ComparisonTarget(operator=cst.IsNot(), comparator=cst.Name("None"))],
                ),
            )
        header_old = self.code(stmt.test)
        header_new = cst.Module(body=[]).code_for_node(test)
        line = self.line_of(stmt)[0]
        self.record_lines(
            line, f"if {header_old}:", f"if {header_new}:",
            f"{', '.join(in_body)} is None when the guarded import failed; this import-time code needs the package",
        )
        return new.with_changes(test=test)

    # -- one run of imports ---------------------------------------------------------------------
    def _guardable(self, stmt: cst.BaseStatement) -> bool:
        if not isinstance(stmt, cst.SimpleStatementLine):
            return False
        modules = set(self.params.modules)
        tops = [_tops(s) for s in stmt.body]
        if not any(t & modules for t in tops):
            return False
        if not all(t and t <= modules for t in tops) or any(_bound(s) is None for s in stmt.body):
            self.find(stmt, "needs_decision",
                      "import of a guarded package that cannot be wrapped (mixed with other statements,"
                      " several packages in one import, or `import *`); guard it by hand")
            return False
        return True

    def _wrap(self, run: list[cst.BaseStatement]) -> cst.Try:
        names: list[str] = []
        for stmt in run:
            for small in stmt.body:  # type: ignore[attr-defined]
                for n in _bound(small) or ():
                    if n not in names:
                        names.append(n)
        errors = self.params.errors
        caught = errors[0] if len(errors) == 1 else f"({', '.join(errors)})"
        template = cst.parse_statement(
            "try:\n    pass\n"
            f"except {caught}:  {COMMENT}\n"
            + "".join(f"    {n} = None\n" for n in names)
        )
        assert isinstance(template, cst.Try)
        first = run[0]
        inner = [first.with_changes(leading_lines=[])] + list(run[1:])  # type: ignore[attr-defined]
        new = template.with_changes(
            body=template.body.with_changes(body=inner),
            leading_lines=first.leading_lines,  # type: ignore[attr-defined]
        )
        self.guarded += [n for n in names if n not in self.guarded]
        start = self.line_of(first)[0]
        before = "".join(cst.Module(body=[s.with_changes(leading_lines=[])]).code for s in run)  # type: ignore[attr-defined]
        after = cst.Module(body=[new.with_changes(leading_lines=[])]).code
        self.record_lines(
            start, before, after,
            f"{', '.join(names)}: the package may be installed yet fail to load ({', '.join(errors)}),"
            " e.g. a native wheel built for another torch; the module must still import",
        )
        return new

    # -- sites left as findings -------------------------------------------------------------------
    def _uses_at_import_time(self, stmt: cst.BaseStatement) -> cst.BaseStatement:
        if self.guarded:
            for n in _uses(stmt, set(self.guarded)):
                self._finding(stmt, n, "read at import time outside an `if`")
        return stmt

    def _finding(self, node: cst.CSTNode, name: str, where: str) -> None:
        self.find(node, "needs_decision",
                  f"{name} is None when its guarded import failed, and it is {where}; guard this by hand")

    def _check_try(self, stmt: cst.Try) -> None:
        """Imports already inside a try are left alone; say so when its handlers miss an error."""
        has_import = any(
            isinstance(s, cst.SimpleStatementLine) and any(_tops(x) & set(self.params.modules) for x in s.body)
            for s in stmt.body.body  # type: ignore[attr-defined]
        )
        if not has_import:
            return
        caught: set[str] = set()
        for h in stmt.handlers:
            if h.type is None:
                return  # bare except catches everything
            types = h.type.elements if isinstance(h.type, cst.Tuple) else [h.type]  # type: ignore[attr-defined]
            for t in types:
                caught.add(_dotted(t.value if isinstance(t, cst.Element) else t).split(".")[-1])
        if caught & _BROAD:
            return
        missing = [e for e in self.params.errors if e.split(".")[-1] not in caught]
        if missing:
            self.find(stmt, "needs_decision",
                      f"import already inside a try whose handlers do not catch {', '.join(missing)}; left as is")

    @staticmethod
    def _type_checking(stmt: cst.If) -> bool:
        return _dotted(stmt.test).split(".")[-1] == "TYPE_CHECKING"


class GuardImport(PythonTransform):
    """Imports of packages that may be installed yet fail to load are guarded; the module still imports.

    A wheel with native code built for another torch (the PyPI torchaudio next to CPU torch or
    torch_npu raises `OSError: ... libc10_cuda.so`), or a deepspeed that cannot start on the host,
    fails with something other than ImportError, so a bare `import x`, or one behind a metadata
    check such as transformers' `if is_torchaudio_available():`, takes the whole model package down
    although the model never needs that package. Each module-level import from a package in
    `modules` (at the top level, or inside module-level if/elif/else blocks) becomes

        try:
            import torchaudio
        except (ImportError, OSError):  # installed but cannot load on this host (added by porter)
            torchaudio = None

    (a run of consecutive such imports shares one `try`). Where the package loads, nothing changes.
    Where it does not, the names it binds are None: a later module-level `if` whose body reads one
    of them at import time also tests `name is not None`; any other import-time use is a finding.
    Code inside functions is left as it is: it fails with an error about None when called, which
    the recipe's reason should say. lazy-import is the other way out (the import moves into the
    functions that use it); it leaves imports behind an `if` and packages used at import time
    alone, which is where this transform is for. Imports inside functions (lazy already), inside `try` blocks
    (a finding if the handlers miss one of `errors`) and under `if TYPE_CHECKING:` are left alone.
    """

    name = "guard-import"
    safety = Safety.SAFE
    Params = _Params
    prefilter = re.compile(r"\bimport\b")
    rewriter = _GuardImport

    examples = [
        Example(
            id="transformers-audio-utils-torchaudio",
            params={"modules": ["torchaudio"]},
            note="transformers 5.x audio_utils.py: is_torchaudio_available() only reads package metadata",
            before=(
                "from .utils import is_soundfile_available, is_torchaudio_available\n"
                "\n"
                "if is_soundfile_available():\n"
                "    import soundfile as sf\n"
                "\n"
                "if is_torchaudio_available():\n"
                "    import torchaudio\n"
                "\n"
                "\n"
                "def load(path):\n"
                "    return torchaudio.load(path)\n"
            ),
            after=(
                "from .utils import is_soundfile_available, is_torchaudio_available\n"
                "\n"
                "if is_soundfile_available():\n"
                "    import soundfile as sf\n"
                "\n"
                "if is_torchaudio_available():\n"
                "    try:\n"
                "        import torchaudio\n"
                f"    except (ImportError, OSError):  {COMMENT}\n"
                "        torchaudio = None\n"
                "\n"
                "\n"
                "def load(path):\n"
                "    return torchaudio.load(path)\n"
            ),
        ),
        Example(
            id="bare-import-with-comment-and-alias",
            params={"modules": ["torchaudio"]},
            before=(
                "import torch\n"
                "# resampling\n"
                "import torchaudio.functional as AF\n"
                "import torchaudio  # io\n"
                "import numpy as np\n"
            ),
            after=(
                "import torch\n"
                "# resampling\n"
                "try:\n"
                "    import torchaudio.functional as AF\n"
                "    import torchaudio  # io\n"
                f"except (ImportError, OSError):  {COMMENT}\n"
                "    AF = None\n"
                "    torchaudio = None\n"
                "import numpy as np\n"
            ),
        ),
        Example(
            id="deepspeed-import-and-later-import-time-use",
            params={"modules": ["deepspeed"], "errors": ["Exception"]},
            note="boson-multimodal model/higgs_audio/utils.py: monkeypatches deepspeed at import time",
            before=(
                "from transformers.integrations import is_deepspeed_available\n"
                "\n"
                "if is_deepspeed_available():\n"
                "    from deepspeed.utils import groups as deepspeed_groups\n"
                "    from deepspeed.sequence.layer import _SeqAllToAll\n"
                "else:\n"
                "    deepspeed_groups = None\n"
                "    _SeqAllToAll = None\n"
                "\n"
                "\n"
                "def world():\n"
                "    return 1\n"
                "\n"
                "\n"
                "if is_deepspeed_available():\n"
                "    deepspeed_groups._world = world\n"
            ),
            after=(
                "from transformers.integrations import is_deepspeed_available\n"
                "\n"
                "if is_deepspeed_available():\n"
                "    try:\n"
                "        from deepspeed.utils import groups as deepspeed_groups\n"
                "        from deepspeed.sequence.layer import _SeqAllToAll\n"
                f"    except Exception:  {COMMENT}\n"
                "        deepspeed_groups = None\n"
                "        _SeqAllToAll = None\n"
                "else:\n"
                "    deepspeed_groups = None\n"
                "    _SeqAllToAll = None\n"
                "\n"
                "\n"
                "def world():\n"
                "    return 1\n"
                "\n"
                "\n"
                "if is_deepspeed_available() and deepspeed_groups is not None:\n"
                "    deepspeed_groups._world = world\n"
            ),
        ),
        Example(
            id="or-test-gets-parentheses",
            params={"modules": ["deepspeed"]},
            before="import deepspeed\n\nif A or B:\n    deepspeed.init()\n",
            after=(
                "try:\n"
                "    import deepspeed\n"
                f"except (ImportError, OSError):  {COMMENT}\n"
                "    deepspeed = None\n"
                "\nif (A or B) and deepspeed is not None:\n    deepspeed.init()\n"
            ),
        ),
        Example(
            id="import-inside-function-left-alone",
            params={"modules": ["torchaudio"]},
            before="def resample(x):\n    import torchaudio\n    return torchaudio.functional.resample(x, 16000, 24000)\n",
        ),
        Example(
            id="already-in-try-left-alone",
            params={"modules": ["torchaudio"]},
            before="try:\n    import torchaudio\nexcept Exception:\n    torchaudio = None\n",
        ),
        Example(
            id="type-checking-and-other-packages-left-alone",
            params={"modules": ["torchaudio"]},
            before=(
                "from typing import TYPE_CHECKING\n"
                "import torchvision\n"
                "from . import torchaudio_utils\n"
                "if TYPE_CHECKING:\n"
                "    import torchaudio\n"
            ),
        ),
    ]
