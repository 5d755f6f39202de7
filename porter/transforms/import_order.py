"""import-order: packages that must load before torch_npu do, and torch.npu users import torch_npu."""

from __future__ import annotations

import re

import libcst as cst
from libcst.metadata import QualifiedNameSource, QualifiedNameProvider
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.transforms._base import Change, Example, PythonTransform, Rewriter, Safety, _after_imports
from porter.transforms._npu_runtime import NPU_AVAILABLE_SOURCE, ported

GUARD = (
    "try:\n"
    "    import torch_npu  # noqa: F401  (torch.npu and the npu device; added by porter)\n"
    "except ImportError:\n"
    "    pass\n"
)
FIRST = "import {pkg}  # noqa: F401  (must load before torch_npu; added by porter)\n"


def _top_level_imports(stmt: cst.CSTNode):
    """Import statements that run when the module is imported (not inside def/class bodies)."""
    if isinstance(stmt, (cst.Import, cst.ImportFrom)):
        yield stmt
        return
    if isinstance(stmt, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return
    for child in stmt.children:
        yield from _top_level_imports(child)


def _dotted(node: cst.CSTNode) -> str:
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return node.value if isinstance(node, cst.Name) else ""


def _imported_modules(stmt: cst.CSTNode) -> list[str]:
    """Modules a statement imports: `a.b` for `import a.b`, `a.b.c` for `from a.b import c`."""
    out = []
    for imp in _top_level_imports(stmt):
        if isinstance(imp, cst.Import):
            out.extend(_dotted(alias.name) for alias in imp.names)
        elif imp.module is not None and not imp.relative:
            module = _dotted(imp.module)
            out.append(module)
            if not isinstance(imp.names, cst.ImportStar):
                out.extend(f"{module}.{_dotted(alias.name)}" for alias in imp.names)
    return out


def _is_import_statement(stmt: cst.CSTNode) -> bool:
    """A statement that only imports (`import x`, `from x import y`, or try/except around imports)."""
    if isinstance(stmt, cst.SimpleStatementLine):
        return all(isinstance(s, (cst.Import, cst.ImportFrom, cst.Pass)) for s in stmt.body)
    if isinstance(stmt, cst.Try):
        blocks = [stmt.body, *(h.body for h in stmt.handlers)]
        return all(_is_import_statement(s) for b in blocks for s in b.body)
    return False


def _is_or_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class _Rewrite(Rewriter):

    def _uses_npu(self, node: cst.CSTNode) -> bool:
        """Whether `node` refers to torch.npu through an import (porter's own helpers included)."""
        if isinstance(node, (cst.Import, cst.ImportFrom)):
            return False
        if isinstance(node, (cst.Attribute, cst.Name)):
            for q in self.meta(QualifiedNameProvider, node, set()):
                if q.source is QualifiedNameSource.IMPORT and _is_or_under(q.name, "torch.npu"):
                    return True
        return any(self._uses_npu(child) for child in node.children)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = list(updated_node.body)
        imports = [_imported_modules(stmt) for stmt in body]
        npu_at = next((i for i, mods in enumerate(imports) if any(_is_or_under(m, "torch_npu") for m in mods)), None)
        transfer_at = next((i for i, mods in enumerate(imports) if any(
            _is_or_under(m, "torch_npu") and "transfer_to_npu" in m for m in mods)), None)
        group: list[tuple[cst.BaseStatement, str]] = []  # inserted at npu_at, in this order

        guard = npu_at is None and self.params.guard and self._uses_npu(original_node)
        if transfer_at is not None and npu_at is not None:
            # Only transfer_to_npu patches these packages; a plain torch_npu import needs no order.
            for pkg in self.params.first:
                if any(_is_or_under(m, pkg) for mods in imports[:npu_at] for m in mods):
                    continue
                pkg_at = next((i for i in range(npu_at, len(body)) if any(_is_or_under(m, pkg) for m in imports[i])),
                              None)
                if pkg_at is not None:
                    blocker = next((i for i in range(npu_at, pkg_at) if not _is_import_statement(body[i])), None)
                    if blocker is not None:
                        # never move an import above a statement it may depend on (env vars, sys.path,
                        # warnings filters, backend settings, monkeypatches)
                        stmt = original_node.body[blocker]
                        self.find(original_node.body[pkg_at], "import_order",
                                  f"{pkg} must be imported before torch_npu's transfer_to_npu, but moving its import "
                                  f"above line {self.line_of(stmt)[0]} (`{self.code(stmt).strip().splitlines()[0][:80]}`) "
                                  f"could change what {pkg} sees at import; reorder by hand")
                        continue
                    group.append((cst.parse_statement(FIRST.format(pkg=pkg)),
                                  f"{pkg} is imported before torch_npu (seed 002: torch_npu's transfer_to_npu patches "
                                  f"{pkg} and changes sys.path, so a later import of {pkg} picks up the wrong one)"))
                else:
                    self.find(original_node.body[transfer_at], "import_order",
                              f"torch_npu.contrib.transfer_to_npu is imported here but {pkg} is not imported before "
                              f"it in this module; import {pkg} first in the program's entry point")
        if guard:
            npu_at = _after_imports(body)
        if guard:
            group.append((cst.parse_statement(GUARD),
                          "this module calls torch.npu APIs: import torch_npu where it is installed "
                          "(it registers torch.npu and the npu device); ImportError elsewhere is ignored"))
        if not group:
            return super().leave_Module(original_node, updated_node)
        new_body = self._insert(body, npu_at, group, updated_node, keep_blank_lines_below=guard)
        return super().leave_Module(original_node, updated_node.with_changes(body=new_body))

    def _insert(self, body, at, group, module: cst.Module, keep_blank_lines_below: bool):
        """Insert `group` before body[at], recording each statement as a change."""
        before = cst.Module(body=body[:at], header=module.header).code if at else cst.Module(
            body=[], header=module.header, has_trailing_newline=False).code
        line = 1 + len(before.splitlines())
        new_body = list(body)
        blanks = 0
        statements = [stmt for stmt, _ in group]
        if at < len(body):
            lead = list(body[at].leading_lines)
            while blanks < len(lead) and lead[blanks].comment is None:
                blanks += 1
            if not keep_blank_lines_below:
                # Before an existing torch_npu import: blank lines stay above the group, comments
                # stay with the import they describe.
                statements[0] = statements[0].with_changes(leading_lines=lead[:blanks])
                new_body[at] = body[at].with_changes(leading_lines=lead[blanks:])
        new_body[at:at] = statements
        for stmt, (_, reason) in zip(statements, group):
            text = cst.Module(body=[stmt.with_changes(leading_lines=[])]).code.strip()
            self.changes.append(Change(
                file=self.ctx.path, line=line, end_line=line + blanks, transform=self.transform.name,
                before="", after=text, safety=self.transform.safety, reason=reason, step=self.ctx.step,
            ))
        return new_body


class ImportOrder(PythonTransform):
    """Packages that must load before torch_npu are imported first; torch.npu users import torch_npu.

    1. Where a module imports `torch_npu.contrib.transfer_to_npu` at import time, each package in
       `first` (default: transformers) that the module imports later at the top level gets an
       `import <pkg>` just before its first torch_npu import. Seed 002 (CSM-1B): transfer_to_npu
       wraps transformers functions and changes sys.path, so transformers must be imported before
       it. A plain `import torch_npu` needs no order. An import never moves above a statement it
       may depend on (environment variables, sys.path, warnings filters, backend settings,
       monkeypatches): when anything but imports stands between, it is a finding instead, as is a
       transfer_to_npu import with no top-level import of the package.
    2. A module that calls `torch.npu` APIs (after cuda-api and friends ran, their helpers do) and
       has no import of torch_npu that runs at import time gets
       `try: import torch_npu / except ImportError: pass` after its imports: on Ascend it makes
       `torch.npu` and the "npu" device exist, on CUDA and CPU hosts it does nothing. Names are
       matched through imports (`import torch as t; t.npu...`), never in strings or comments.

    Run it last in a recipe. Idempotent: a second run finds torch_npu imported and the packages
    already in front of it.
    """

    name = "import-order"
    safety = Safety.SAFE  # an extra import of a package already used; torch_npu only where installed
    prefilter = re.compile(r"\bnpu\b|torch_npu")  # not the "npu" in "input"
    rewriter = _Rewrite

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        first: tuple[str, ...] = Field(("transformers",), description="packages imported before torch_npu")
        guard: bool = Field(True, description="add a guarded `import torch_npu` to modules that use torch.npu")

        @field_validator("first")
        @classmethod
        def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            for pkg in value:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", pkg):
                    raise ValueError(f"{pkg!r} is not an importable module name")
            return value

    T = FIRST.format(pkg="transformers")
    examples = [
        Example(
            id="seed002-transformers-before-torch-npu",
            before=(
                "import torch\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n"
                "from transformers import AutoProcessor, CsmForConditionalGeneration\n\n"
                "model = CsmForConditionalGeneration.from_pretrained(path)\n"
            ),
            after=(
                f"import torch\n{T}import torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n"
                "from transformers import AutoProcessor, CsmForConditionalGeneration\n\n"
                "model = CsmForConditionalGeneration.from_pretrained(path)\n"
            ),
        ),
        Example(
            id="transfer-to-npu-with-blank-line-and-comment",
            before=(
                "import os\n\n# Ascend: map torch.cuda onto torch.npu\nimport torch_npu\n"
                "from torch_npu.contrib import transfer_to_npu\nimport transformers.models.llama as llama\n"
            ),
            after=(
                f"import os\n\n{T}# Ascend: map torch.cuda onto torch.npu\nimport torch_npu\n"
                "from torch_npu.contrib import transfer_to_npu\nimport transformers.models.llama as llama\n"
            ),
        ),
        Example(
            id="guarded-and-several-packages",
            params={"first": ["transformers", "accelerate"]},
            before=(
                "try:\n    import torch_npu.contrib.transfer_to_npu  # Ascend\nexcept ImportError:\n    pass\n"
                "from accelerate import Accelerator\nfrom transformers import AutoModel\n"
            ),
            after=(
                f"{T}{FIRST.format(pkg='accelerate')}"
                "try:\n    import torch_npu.contrib.transfer_to_npu  # Ascend\nexcept ImportError:\n    pass\n"
                "from accelerate import Accelerator\nfrom transformers import AutoModel\n"
            ),
        ),
        Example(
            id="guard-for-porter-helpers",
            before=ported("import torch\n", "def f():\n    return _porter_npu_available()\n", NPU_AVAILABLE_SOURCE),
            after=ported(f"import torch\n{GUARD}", "def f():\n    return _porter_npu_available()\n", NPU_AVAILABLE_SOURCE),
            note="the helpers that cuda-api, hardcoded-device and autocast-device write read torch.npu",
        ),
        Example(
            id="guard-aliased-torch-transformers-not-moved",
            before=(
                "\"\"\"Runtime.\"\"\"\nimport torch as t\n\nlogger = make_logger()\n\nfrom transformers import AutoModel\n\n\n"
                "def sync():\n    t.npu.synchronize()\n"
            ),
            after=(
                f"\"\"\"Runtime.\"\"\"\nimport torch as t\n{GUARD}\nlogger = make_logger()\n\nfrom transformers import AutoModel\n\n\n"
                "def sync():\n    t.npu.synchronize()\n"
            ),
            note="a plain torch_npu import needs no order (only transfer_to_npu patches transformers), and "
            "transformers is never moved above `logger = make_logger()`, a statement it may depend on",
        ),
        Example(
            id="never-above-an-environment-setting",
            note="transformers reads HF_HOME at import: moving it above the assignment changes behaviour on "
            "every host; reported instead",
            before=(
                "import os\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n\n"
                "os.environ[\"HF_HOME\"] = \"/data/hf\"\nimport transformers\n"
            ),
        ),
        Example(
            id="plain-torch-npu-left-alone",
            before="import torch\nimport torch_npu\nfrom transformers import AutoModel\n",
        ),
        Example(
            id="already-in-order-left-alone",
            before=(
                "import torch\nfrom transformers import AutoModel\nimport torch_npu\n"
                "from torch_npu.contrib import transfer_to_npu\n\ntorch.npu.set_device(0)\n"
            ),
        ),
        Example(
            id="torch-npu-imported-in-a-guard-left-alone",
            before=(
                "import torch\n\ntry:\n    import torch_npu\nexcept ImportError:\n    torch_npu = None\n\n\n"
                "def f():\n    return torch.npu.is_available()\n"
            ),
        ),
        Example(
            id="strings-comments-shadowed-and-lazy-left-alone",
            before=(
                "import torch\n\n# torch.npu.synchronize()\nDOC = \"call torch.npu.synchronize() and import torch_npu\"\n\n\n"
                "def f(torch):\n    return torch.npu.synchronize()\n\n\n"
                "def g():\n    import torch_npu\n    from transformers import AutoModel\n    return AutoModel\n"
            ),
            note="imports inside functions run later, at call time: nothing to order",
        ),
    ]
    del T
