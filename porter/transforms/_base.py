"""The transform contract: one module, one class, and its examples are its tests.

A transform rewrites one file's text and returns what it did as values: the new text, the
changes it made (where, before -> after, why, how safe) and the findings it chose not to act on.
It never raises for a file it cannot handle; the engine (`porter.rewrite`) turns that into a
`failed`/`skipped` outcome for the file.

Python transforms subclass `PythonTransform` and supply a `Rewriter` (a libcst transformer with
qualified-name metadata), so that `import torch as t; t.cuda.x()` and `from torch.cuda import x`
are matched by meaning and a parameter that shadows `torch` is not.  Other files (JSON/YAML
configs) subclass `TextTransform`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterable

import libcst as cst
import libcst.matchers as m
from libcst.metadata import (
    MetadataWrapper,
    ParentNodeProvider,
    PositionProvider,
    QualifiedName,
    QualifiedNameProvider,
    QualifiedNameSource,
    ScopeProvider,
)
from pydantic import BaseModel, ConfigDict


class Safety(str, enum.Enum):
    """How a change can affect behaviour; the report shows it on every change."""

    SAFE = "safe"  # behaviour on CUDA and CPU unchanged; npu takes the CUDA path
    NPU_ONLY = "npu-only"  # behaviour changes on npu only (e.g. compile kept off there)
    NUMERICS = "numerics"  # may change numerics or speed (e.g. attention backend); reason given
    RECIPE = "recipe-specific"  # an escape-hatch edit; the recipe's reason text is the proof


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Example:
    """A before/after pair. No `after` means the code must be left alone."""

    id: str
    before: str
    after: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    path: str = "example.py"  # the file name the example pretends to be (e.g. config.json)
    note: str = ""


@dataclass(frozen=True)
class Change:
    """One rewrite at one place. Lines are 1-based, in the text the step received."""

    file: str
    line: int
    end_line: int
    transform: str
    before: str
    after: str
    safety: Safety
    reason: str
    step: int | None = None  # filled in by the engine


@dataclass(frozen=True)
class Finding:
    """A site the transform saw and deliberately did not rewrite, with why."""

    file: str
    line: int
    category: str
    reason: str
    code: str = ""
    transform: str = ""
    step: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What one transform did to one file's text."""

    text: str
    changes: tuple[Change, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class Context:
    """What a transform knows about the file it rewrites."""

    path: str  # posix path relative to the source root
    step: int | None = None


_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
REGISTRY: dict[str, type["Transform"]] = {}


class Transform:
    """Base of every transform. Subclasses register themselves by their kebab-case `name`."""

    name: ClassVar[str]
    safety: ClassVar[Safety]
    Params: ClassVar[type[BaseModel]] = NoParams
    examples: ClassVar[list[Example]] = []
    # Globs (relative to the source root) a step uses when the recipe gives no `files:`.
    default_files: ClassVar[tuple[str, ...]] = ("**/*.py",)
    # A cheap "could this file matter?" test; files it does not match are never parsed.
    prefilter: ClassVar[re.Pattern[str] | None] = None

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        for attr in ("name", "safety"):
            if not hasattr(cls, attr):
                raise TypeError(f"transform {cls.__qualname__} has no `{attr}`")
        if not _NAME.match(cls.name):
            raise TypeError(f"transform name {cls.name!r} is not kebab-case")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"transform {cls.name} has no docstring")
        if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
            raise TypeError(f"two transforms are named {cls.name!r}")
        REGISTRY[cls.name] = cls

    def __init__(self, params: BaseModel | dict[str, Any] | None = None) -> None:
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params = params

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    def could_match(self, text: str) -> bool:
        return self.prefilter is None or bool(self.prefilter.search(text))

    def apply(self, text: str, ctx: Context) -> Outcome:
        """Rewrite `text`; raise only for text this transform cannot read (the engine reports it)."""
        raise NotImplementedError


class TextTransform(Transform, abstract=True):
    """A transform over non-Python files (configs). Implement `apply`."""

    default_files = ("**/*.json",)


class PythonTransform(Transform, abstract=True):
    """A transform implemented by a libcst `Rewriter` subclass named in `rewriter`."""

    rewriter: ClassVar[type["Rewriter"]]

    def apply(self, text: str, ctx: Context) -> Outcome:
        module = cst.parse_module(text)
        return self.apply_module(module, ctx)[1]

    def apply_module(self, module: cst.Module, ctx: Context) -> tuple[cst.Module, Outcome]:
        """Rewrite a parsed module; the engine chains steps through this without re-parsing."""
        wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        rewriter = self.rewriter(self, ctx)
        new_module = wrapper.visit(rewriter)
        if not rewriter.changes:
            return module, Outcome(text=module.code, findings=tuple(rewriter.findings))
        return new_module, Outcome(
            text=new_module.code,
            changes=tuple(rewriter.changes),
            findings=tuple(rewriter.findings),
        )


class Rewriter(m.MatcherDecoratableTransformer):
    """libcst transformer with the metadata porter's transforms need and change recording.

    Read positions and names from `original_node`, build results from `updated_node`, and call
    `self.record(original_node, result, reason)` for every node whose text you change.
    """

    METADATA_DEPENDENCIES = (
        QualifiedNameProvider,
        PositionProvider,
        ParentNodeProvider,
        ScopeProvider,
    )

    def __init__(self, transform: Transform, ctx: Context) -> None:
        super().__init__()
        self.transform = transform
        self.params = transform.params
        self.ctx = ctx
        self.changes: list[Change] = []
        self.findings: list[Finding] = []
        self.module: cst.Module | None = None

    def visit_Module(self, node: cst.Module) -> bool:
        self.module = node
        return True

    # -- names --------------------------------------------------------------------------------
    def imported_names(self, node: cst.CSTNode) -> set[str]:
        """Fully qualified names `node` refers to through imports (never local shadows)."""
        names: Iterable[QualifiedName] = self.get_metadata(QualifiedNameProvider, node, set())
        return {q.name for q in names if q.source is QualifiedNameSource.IMPORT}

    def refers_to(self, node: cst.CSTNode, *qualified: str) -> bool:
        return bool(self.imported_names(node) & set(qualified))

    def code(self, node: cst.CSTNode) -> str:
        assert self.module is not None
        return self.module.code_for_node(node)

    def line_of(self, node: cst.CSTNode) -> tuple[int, int]:
        pos = self.get_metadata(PositionProvider, node)
        return pos.start.line, pos.end.line

    # -- results ------------------------------------------------------------------------------
    def record(
        self,
        original: cst.CSTNode,
        updated: cst.CSTNode,
        reason: str,
        safety: Safety | None = None,
    ) -> cst.CSTNode:
        """Record that `original` became `updated`; returns `updated` for convenience."""
        before, after = self.code(original), self.code(updated)
        if before != after:
            start, end = self.line_of(original)
            self.changes.append(
                Change(
                    file=self.ctx.path,
                    line=start,
                    end_line=end,
                    transform=self.transform.name,
                    before=before.strip(),
                    after=after.strip(),
                    safety=safety or self.transform.safety,
                    reason=reason,
                    step=self.ctx.step,
                )
            )
        return updated

    def find(self, node: cst.CSTNode, category: str, reason: str) -> None:
        start, _ = self.line_of(node)
        self.findings.append(
            Finding(
                file=self.ctx.path,
                line=start,
                category=category,
                reason=reason,
                code=self.code(node).strip().splitlines()[0][:160],
                transform=self.transform.name,
                step=self.ctx.step,
            )
        )


def with_step(outcome: Outcome, step: int) -> Outcome:
    return replace(
        outcome,
        changes=tuple(replace(c, step=step) for c in outcome.changes),
        findings=tuple(replace(f, step=step) for f in outcome.findings),
    )


def all_transforms() -> dict[str, type[Transform]]:
    """Every registered transform, importing the built-in modules first."""
    from porter import transforms  # noqa: F401  (imports every module, which registers it)

    return dict(sorted(REGISTRY.items()))
