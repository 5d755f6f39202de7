"""The transform contract: one module, one class, and its examples are its tests.

A transform rewrites one file's text and returns what it did as values: the new text, the
changes it made (where, before -> after, why, how safe) and the findings it chose not to act on.
It never raises for a file it cannot handle; the engine (`porter.rewrite`) turns that into a
`failed`/`skipped` outcome for the file.

Python transforms subclass `PythonTransform` and supply a `Rewriter` (a libcst transformer that
knows what names mean), so that `import torch as t; t.cuda.x()` and `from torch.cuda import x`
are matched by meaning and a parameter that shadows `torch` is not. Names are resolved by
`porter.resolve` (import aliases and local bindings, ~100x cheaper than libcst's scope analysis,
same answers).  Other files (JSON/YAML configs) subclass `TextTransform`.
"""

from __future__ import annotations

import ast
import enum
import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import (
    CodePosition,
    CodeRange,
    MetadataWrapper,
    PositionProvider,
    QualifiedNameProvider,
)
from pydantic import BaseModel, ConfigDict

from porter.analysis import site_owners
from porter.resolve import Resolver


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
    # "rewrite"; "helper": a helper function written into the module; "helper-import": the module
    # imports helpers from its package's helper module; "helper-source": a helper that module needs
    # (porter.runtime writes it into the helper module and reports it there).
    kind: str = "rewrite"


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
    exclude_symbols: tuple[str, ...] = ()  # functions/classes (name or Class.method) left alone
    # Where this module imports porter's helpers from (`.._porter_npu`: the package's helper module,
    # see porter.runtime); None: helpers are defined in the module itself (loose scripts, remote code).
    helper_module: str | None = None


HELPER_PREFIX = "_porter_"
# Transforms whose every change and finding, with their default parameters, is at a site that
# porter.analysis reports as theirs (`Site.transform`): the engine runs them (libcst parse and
# visit) only on files where the analysis finds such a site, an `ast` pass instead of a libcst one.
# tests/test_site_owners.py holds each of them to it on its examples and on real packages. Not
# here: transforms that react to what earlier steps wrote (import-order), recipe-specific edits,
# the import movers (their sites are any import a recipe names), and, until the analysis reports
# every construct they touch, attention-fallback (selector comparisons, `import flash_attn` that
# re-raises), autocast-device (`x.device.type` as device_type) and hardcoded-device (device-map
# dicts, CLI defaults, device getters): their examples show the gaps (tests/test_site_owners.py);
# compile-bypass reports compile gates owned by other transforms and CUDA-graph compile modes
# (transformers 5.23.0: generation/configuration_utils.py, exporters/exporter_executorch.py).
SITE_OWNERS = frozenset({"cuda-api", "mem-get-info", "widen-device-check"})
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
        return self.prefilter is None or prefilter_search(self.prefilter, text)

    def acts_on(self, path: str, text: str) -> bool:
        """False only when this transform certainly neither changes nor reports anything in `text`:
        it acts only at its own sites (SITE_OWNERS, default parameters) and the analysis finds none."""
        if self.name not in SITE_OWNERS or self.params != _default_params(type(self)):
            return True
        owners = site_owners(path, text)
        return owners is None or self.name in owners

    def apply(self, text: str, ctx: Context) -> Outcome:
        """Rewrite `text`; raise only for text this transform cannot read (the engine reports it)."""
        raise NotImplementedError


def prefilter_search(pattern: re.Pattern[str], text: str) -> bool:
    """`bool(pattern.search(text))`, fast. A pattern such as `\\bcuda\\b` gives `re` no literal to
    skip ahead with, so `search` tries every position of the file (~1 ms per 10 kB here, paid for
    each step on each file). Where every match must start with one of a few literals, only the
    places `str.find` finds them are tried (`match` at a position still sees the character before
    it, for `\\b`); other patterns are searched as they are."""
    starts = _literal_starts(pattern)
    if starts is None:
        return pattern.search(text) is not None
    match, find = pattern.match, text.find
    for literal in starts:
        at = find(literal)
        while at >= 0:
            if match(text, at) is not None:
                return True
            at = find(literal, at + 1)
    return False


@functools.lru_cache(maxsize=None)
def _literal_starts(pattern: re.Pattern[str]) -> tuple[str, ...] | None:
    """Literals one of which every match of `pattern` starts with; None when there are none to use."""
    if pattern.flags & (re.IGNORECASE | re.VERBOSE) or not isinstance(pattern.pattern, str):
        return None
    try:
        from re import _parser  # the parser `re` itself uses (sre_parse before Python 3.11)
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as _parser  # type: ignore[no-redef]
    try:
        starts, _ = _sequence_starts(list(_parser.parse(pattern.pattern, pattern.flags & ~re.UNICODE)), _parser)
    except Exception:  # an unfamiliar parse tree: search as before
        return None
    if starts is None or "" in starts or len(starts) > 32:
        return None
    return tuple(sorted(s for s in starts if not any(s != t and s.startswith(t) for t in starts)))


def _sequence_starts(items: list[Any], p: Any) -> tuple[set[str] | None, bool]:
    """(prefixes every match of `items` starts with, whether a match is exactly one of them)."""
    prefixes = {""}
    for op, av in items:
        if op is p.AT:  # zero-width (\b, ^): consumes nothing
            continue
        if op is p.LITERAL:
            part, whole = {chr(av)}, True
        elif op is p.IN and av and all(o is p.LITERAL for o, _ in av):
            part, whole = {chr(c) for _, c in av}, True
        elif op is p.SUBPATTERN and not av[1] and not av[2]:
            part, whole = _sequence_starts(list(av[3]), p)
        elif op is p.BRANCH:
            part, whole = set(), True
            for alt in av[1]:
                found, alt_whole = _sequence_starts(list(alt), p)
                if found is None:
                    return prefixes, False
                part |= found
                whole = whole and alt_whole
        else:  # repeats, classes, groups with flags ...: the literal prefix ends here
            return prefixes, False
        if part is None:
            return prefixes, False
        prefixes = {a + b for a in prefixes for b in part}
        if len(prefixes) > 32:
            return None, False
        if not whole:
            return prefixes, False
    return prefixes, True


@functools.lru_cache(maxsize=None)
def _default_params(cls: type[Transform]) -> BaseModel | None:
    try:
        return cls.Params()
    except Exception:  # required parameters: there is no default to compare with
        return None


class TextTransform(Transform, abstract=True):
    """A transform over non-Python files (configs). Implement `apply`."""

    default_files = ("**/*.json",)


class PythonTransform(Transform, abstract=True):
    """A transform implemented by a libcst `Rewriter` subclass named in `rewriter`."""

    rewriter: ClassVar[type["Rewriter"]]

    def apply(self, text: str, ctx: Context) -> Outcome:
        module = cst.parse_module(text)
        return self.apply_module(module, ctx, text=text)[1]

    def apply_module(
        self,
        module: cst.Module,
        ctx: Context,
        wrapper: MetadataWrapper | None = None,
        text: str | None = None,
    ) -> tuple[cst.Module, Outcome]:
        """Rewrite a parsed module; the engine chains steps through this without re-parsing.

        Pass the `wrapper` of the previous step when it left the module unchanged: metadata
        (qualified names, scopes) it already resolved is reused. `text` is the module's code,
        when the caller has it, so an unchanged module is not generated again.
        """
        if wrapper is None or wrapper.module is not module:
            wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        rewriter = self.rewriter(self, ctx)
        rewriter.wrapper = wrapper
        rewriter.source = module.code if text is None else text
        self.last_wrapper = wrapper
        new_module = wrapper.visit(rewriter)
        if not rewriter.changes:
            return module, Outcome(text=module.code if text is None else text,
                                   findings=tuple(rewriter.findings))
        return new_module, Outcome(
            text=new_module.code,
            changes=tuple(rewriter.changes),
            findings=tuple(rewriter.findings),
        )


class Rewriter(cst.CSTTransformer):
    """libcst transformer with the metadata porter's transforms need and change recording.

    Read positions and names from `original_node`, build results from `updated_node`, and call
    `self.record(original_node, result, reason)` for every node whose text you change.

    `visit_<Node>`/`leave_<Node>` methods are found once per class and node type (libcst looks
    them up by name on every node, and for every field of every node: most of a visit's own cost).
    Per-field `visit_<Node>_<field>` methods and matcher decorators are not supported.
    """

    _methods: ClassVar[dict[tuple[type, type], tuple[Any, Any]]] = {}

    # Nothing is resolved before the visit: `meta()` resolves a provider (qualified names, scopes,
    # parents, positions) for the whole module the first time a rewrite asks for it. Most files a
    # pre-filter lets through hold no candidate a transform must resolve, and scope analysis is
    # most of a run's time (transformers: ~650 files pass the attention and compile pre-filters).
    METADATA_DEPENDENCIES = ()

    def __init__(self, transform: Transform, ctx: Context) -> None:
        super().__init__()
        self.transform = transform
        self.params = transform.params
        self.ctx = ctx
        self.changes: list[Change] = []
        self.findings: list[Finding] = []
        self.module: cst.Module | None = None
        self._helpers: dict[str, str] = {}
        self._stack: list[cst.CSTNode] = []
        self._parents: dict[cst.CSTNode, cst.CSTNode] = {}
        self._resolved: dict[type, Any] = {}
        self._line_queries = 0
        self._spans: dict[cst.CSTNode, tuple[int, int] | None] = {}  # ancestors' places in the text
        self.wrapper: MetadataWrapper | None = None
        self.source: str | None = None  # the module's code (PythonTransform sets it)

    def visit_Module(self, node: cst.Module) -> bool:
        self.module = node
        return True

    def on_visit(self, node: cst.CSTNode) -> bool:
        # Helpers porter wrote into a module (`def _porter_*`) call the CUDA APIs on purpose;
        # symbols the step excludes (`exclude_symbols:`) are left alone.
        if self._left_alone(node):
            return False
        if self._stack:
            self._parents[node] = self._stack[-1]
        self._stack.append(node)
        visit = self._handlers(type(node))[0]
        return visit is None or visit(self, node) is not False

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode):  # type: ignore[override]
        if self._left_alone(original_node):
            return updated_node
        self._stack.pop()
        leave = self._handlers(type(original_node))[1]
        return updated_node if leave is None else leave(self, original_node, updated_node)

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        return None

    def on_leave_attribute(self, original_node: cst.CSTNode, attribute: str) -> None:
        return None

    @classmethod
    def _handlers(cls, kind: type) -> tuple[Any, Any]:
        """This class's (visit_<kind>, leave_<kind>) functions, None where it has none."""
        key = (cls, kind)
        found = Rewriter._methods.get(key)
        if found is None:
            found = Rewriter._methods[key] = (getattr(cls, f"visit_{kind.__name__}", None),
                                              getattr(cls, f"leave_{kind.__name__}", None))
        return found

    def _left_alone(self, node: cst.CSTNode) -> bool:
        kind = type(node)
        if kind is not cst.FunctionDef and kind is not cst.ClassDef:
            return False
        if kind is cst.FunctionDef and node.name.value.startswith(HELPER_PREFIX):  # type: ignore[attr-defined]
            return True
        if not self.ctx.exclude_symbols:
            return False
        outer = [n.name.value for n in self._stack if isinstance(n, (cst.FunctionDef, cst.ClassDef))]
        name = node.name.value  # type: ignore[attr-defined]
        return name in self.ctx.exclude_symbols or ".".join(outer + [name]) in self.ctx.exclude_symbols

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        """The parent of an original node visited so far (cheaper than ParentNodeProvider)."""
        return self._parents.get(node)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return self._insert_helpers(original_node, updated_node)

    # -- module-level helpers -----------------------------------------------------------------
    def need_helper(self, name: str, source: str) -> str:
        """Ask for a module-level helper (a `def name(...)` in `source`); returns `name`.

        Helper names start with `_porter_`; rewriters never look inside such functions.

        Patched code must not depend on porter at run time, so a rewrite that needs more than an
        expression calls a small helper that porter writes itself: once per package, in the
        package's helper module, imported by the modules that call it (`Context.helper_module`);
        or, in a module that is not part of a package, into the module itself, once, after the
        imports. Either is recorded as a change of its own.
        """
        assert name.startswith(HELPER_PREFIX), f"helper names start with {HELPER_PREFIX}"
        self._helpers.setdefault(name, source.strip() + "\n")
        return name

    def _insert_helpers(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        existing = _module_level_names(updated)
        missing = [(name, src) for name, src in self._helpers.items() if name not in existing]
        if not missing:
            return updated
        if self.ctx.helper_module is not None:
            return self._import_helpers(updated, self.ctx.helper_module, missing)
        return self._define_helpers(updated, [src for _, src in missing])

    def _helper_change(self, line: int, end_line: int, before: str, after: str, kind: str, reason: str) -> None:
        self.changes.append(Change(
            file=self.ctx.path, line=line, end_line=end_line, transform=self.transform.name, before=before,
            after=after, safety=self.transform.safety, reason=reason, step=self.ctx.step, kind=kind,
        ))

    def _import_helpers(self, updated: cst.Module, spec: str, missing: list[tuple[str, str]]) -> cst.Module:
        """`from <spec> import <the helpers this module calls>`, one statement, after the imports.

        Every helper asked for (including those a called helper builds on) is recorded as a
        "helper-source" change; porter.runtime writes them, once, into the helper module."""
        for name, src in missing:
            self._helper_change(0, 0, "", src.strip(), "helper-source",
                                "helper written once into the package's helper module")
        called = {
            n.value for n in walk(updated)
            if isinstance(n, cst.Name) and n.value.startswith(HELPER_PREFIX)
        } & {name for name, _ in missing}
        if not called:
            return updated
        body = list(updated.body)
        nl = updated.default_newline
        at, old = _helper_import_at(body, spec)
        names = sorted(called | (set(_imported(old)) if old is not None else set()))
        text = f"from {spec} import {', '.join(names)}"
        if len(text) > 100:
            text = f"from {spec} import (" + "".join(f"{nl}    {n}," for n in names) + f"{nl})"
        stmt = cst.parse_statement(text + nl, config=cst.PartialParserConfig(default_newline=nl))
        before = ""
        if old is not None:
            before = cst.Module(body=[old]).code.strip()
            stmt = stmt.with_changes(leading_lines=old.leading_lines)
            body[at] = stmt
        else:
            body.insert(at, stmt)
        line = 1 + len(cst.Module(body=body[:at], header=updated.header).code.splitlines())
        line += len(getattr(stmt, "leading_lines", ()))
        after = cst.Module(body=[stmt.with_changes(leading_lines=[])]).code.strip()
        self._helper_change(line, line + after.count("\n"), before, after, "helper-import",
                            "the helpers this module calls, from the package's helper module"
                            " (patched code must not import porter)")
        return updated.with_changes(body=body)

    def _define_helpers(self, updated: cst.Module, missing: list[str]) -> cst.Module:
        body = list(updated.body)
        at = _after_imports(body)
        new_nodes = []
        nl = updated.default_newline
        for src in missing:
            # Written in the module's own line endings (CRLF files stay CRLF, docstrings included).
            helper = cst.parse_statement(src.replace("\n", nl),
                                         config=cst.PartialParserConfig(default_newline=nl))
            helper = helper.with_changes(
                leading_lines=[cst.EmptyLine(), cst.EmptyLine()]
            ) if isinstance(helper, cst.FunctionDef) else helper
            new_nodes.append(helper)
        # The insertion lands somewhere in the blank lines in front of the next statement.
        below = 0
        if at < len(body):
            for ll in getattr(body[at], "leading_lines", ()):
                if ll.comment is not None:
                    break
                below += 1
        # Two blank lines after the helpers, before whatever followed the imports.
        if at < len(body):
            nxt = body[at]
            if hasattr(nxt, "leading_lines"):
                blank = [l for l in nxt.leading_lines if l.comment is None]
                if len(blank) < 2:
                    body[at] = nxt.with_changes(
                        leading_lines=[cst.EmptyLine()] * (2 - len(blank)) + list(nxt.leading_lines)
                    )
        body[at:at] = new_nodes
        result = updated.with_changes(body=body)
        line = 1 + len(cst.Module(body=body[:at], header=updated.header).code.splitlines())
        for src in missing:
            self._helper_change(line, line + below, "", src.strip(), "helper",
                                "helper used by the rewrites in this module (patched code must not import porter)")
        return result

    # -- names --------------------------------------------------------------------------------
    def meta(self, provider: type, node: cst.CSTNode, default: Any = None) -> Any:
        """`provider`'s metadata for an original node, resolved on first use (see above).

        The wrapper caches what it resolved, so the next step over an unchanged module reuses it.
        `QualifiedNameProvider` is answered by `porter.resolve.Resolver` (libcst's answers, without
        its scope analysis).
        """
        if provider is QualifiedNameProvider:  # answered by porter.resolve, not libcst's scopes
            return self.resolver.qualified_names(node)
        if provider is PositionProvider and provider not in self._resolved and self.source is not None \
                and self.module is not None and isinstance(node, cst.BaseExpression):
            # An expression's place read off the text where certain (as line_of): a position pass
            # is a code generation of the whole module. Past a few dozen queries that pass is cheaper.
            self._line_queries += 1
            if self._line_queries <= 40:
                found = _range_in_text(self.source, self.module, node, self._parents, self._spans)
                if found is not None:
                    return found
        table = self._resolved.get(provider)
        if table is None:
            assert self.wrapper is not None, "meta() is for rewriters run by PythonTransform"
            table = self._resolved[provider] = self.wrapper.resolve(provider)
        value = table.get(node, default)
        # Some providers store a lazy value (a callable) that get_metadata would call; no metadata
        # value porter reads (names, scopes, nodes, positions) is itself callable.
        return value() if callable(value) else value

    def imported_names(self, node: cst.CSTNode, within: str = "") -> set[str]:
        """Fully qualified names `node` refers to through imports (never local shadows).

        With `within` ("torch.cuda."), only the names under it. The module's names are resolved
        (one walk, `porter.resolve`) only once `may_import` lets a node through.
        """
        if not self.may_import(node, *((within,) if within else ())):
            return set()
        return {n for n in self.resolver.imported_names(node) if n.startswith(within)}

    @property
    def resolver(self) -> Resolver:
        """What the names of the module being visited mean (built on first use, shared by steps)."""
        assert self.wrapper is not None, "names are for rewriters run by PythonTransform"
        return resolver_for(self.wrapper.module)

    def refers_to(self, node: cst.CSTNode, *qualified: str) -> bool:
        return self.may_import(node, *qualified) and bool(self.imported_names(node) & set(qualified))

    def may_import(self, node: cst.CSTNode, *prefixes: str) -> bool:
        """Could `node` name something (under one of `prefixes`) through the module's imports?

        A spelling filter that never says no wrongly. libcst names a node by its spelling
        (`get_full_name_for_node`: `a.b.c`, also `a.b()` -> a.b, `super().f` -> super.f), and
        that spelling resolves through an import only if some import statement in the module binds
        its root `a`, and then only to what that import spells (`import torch.cuda as tc`:
        `tc.sync` -> torch.cuda.sync).
        """
        dotted = get_full_name_for_node(node)
        bindings = None if self.source is None else import_bindings(self.source)
        if dotted is None or bindings is None:
            return True
        root, _, rest = dotted.partition(".")
        spelled = {f"{full}.{rest}" if rest else full for full in bindings.get(root, ())}
        return bool(spelled) and (not prefixes or any(s.startswith(prefixes) for s in spelled))

    def code(self, node: cst.CSTNode) -> str:
        assert self.module is not None
        return self.module.code_for_node(node)

    def line_of(self, node: cst.CSTNode) -> tuple[int, int]:
        """Lines of an original node.

        Found in the module's text where that is certain (below); otherwise from libcst's
        positions, computed once on first use (a code generation of the whole module).
        """
        self._line_queries += 1
        # Past a few dozen queries one pass over the module is the cheaper way.
        if self.source is not None and self.module is not None and self._line_queries <= 40 \
                and PositionProvider not in self._resolved:
            found = _lines_in_text(self.source, self.module, node, self._parents, self._spans)
            if found is not None:
                return found
        pos = self.meta(PositionProvider, node)
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

    def record_lines(self, first_line: int, before: str, after: str, reason: str,
                     safety: Safety | None = None) -> None:
        """Record a change given as lines (for rewrites made on text inside a node)."""
        self.changes.append(
            Change(
                file=self.ctx.path,
                line=first_line,
                end_line=first_line + max(0, before.count("\n")),
                transform=self.transform.name,
                before=before.strip(),
                after=after.strip(),
                safety=safety or self.transform.safety,
                reason=reason,
                step=self.ctx.step,
            )
        )

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


_RESOLVERS: dict[int, tuple[cst.Module, Resolver]] = {}


def resolver_for(module: cst.Module) -> Resolver:
    """The resolver of `module`; the steps over one unchanged module share it."""
    hit = _RESOLVERS.get(id(module))
    if hit is not None and hit[0] is module:
        return hit[1]
    if len(_RESOLVERS) >= 4:  # a module per step at most; holding more only holds memory
        _RESOLVERS.pop(next(iter(_RESOLVERS)))
    resolver = Resolver(module)
    _RESOLVERS[id(module)] = (module, resolver)
    return resolver


@functools.lru_cache(maxsize=8)  # the steps over one file share it
def import_bindings(source: str) -> dict[str, frozenset[str]] | None:
    """Every name an import statement anywhere in `source` binds -> what it imports (read with
    `ast`, which is fast); None when `ast` cannot read the code (newer syntax than this Python)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    bindings: dict[str, set[str]] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.asname:  # import torch.cuda as tc
                    bindings.setdefault(a.asname, set()).add(a.name)
                else:  # import torch.cuda binds torch
                    root = a.name.split(".")[0]
                    bindings.setdefault(root, set()).add(root)
        elif isinstance(n, ast.ImportFrom):
            base = "." * n.level + (n.module or "")
            for a in n.names:
                if a.name != "*":
                    full = f"{base}.{a.name}" if n.module else f"{base}{a.name}"
                    bindings.setdefault(a.asname or a.name, set()).add(full)
    return {k: frozenset(v) for k, v in bindings.items()}


# Nodes whose generated code is not their text in the file: indented blocks are generated at
# indentation zero.
_NOT_VERBATIM = (cst.BaseCompoundStatement, cst.IndentedBlock, cst.Else, cst.ExceptHandler,
                 cst.ExceptStarHandler, cst.Finally, cst.MatchCase, cst.Module)


def _verbatim(module: cst.Module, node: cst.CSTNode, parens: bool = False, blocks: bool = False) -> str:
    """`node`'s code from its first token to its last (its parentheses only with `parens`:
    libcst positions leave them out); "" if unsure. Its first line is verbatim in the file;
    statements with blocks (only with `blocks`) are generated at indentation zero."""
    if isinstance(node, _NOT_VERBATIM) and not blocks:
        return ""
    if getattr(node, "leading_lines", None):  # comments and blank lines above a statement
        node = node.with_changes(leading_lines=())
    if not parens and getattr(node, "lpar", None):
        node = node.with_changes(lpar=(), rpar=())
    if isinstance(node, (cst.Arg, cst.Param)):  # the comma and what follows are not the node's
        node = node.with_changes(comma=cst.MaybeSentinel.DEFAULT, **{
            "whitespace_after_arg" if isinstance(node, cst.Arg) else "whitespace_after_param":
                cst.SimpleWhitespace("")})
    elif getattr(node, "comma", None) is not None and not isinstance(node.comma, cst.MaybeSentinel):
        node = node.with_changes(comma=cst.MaybeSentinel.DEFAULT)
    try:
        return module.code_for_node(node).rstrip()
    except Exception:  # a node that cannot be generated alone (an Annotation, ...)
        return ""


def _header(node: cst.CSTNode) -> tuple[str, cst.CSTNode] | None:
    """The verbatim start of a compound statement's first line (`if x`, `def f(`), and the node
    that text ends in: the compound statement starts on that node's line."""
    if isinstance(node, cst.If):
        return f"if{node.whitespace_before_test.value}", node.test  # also the end of "elif"
    if isinstance(node, cst.While):
        return f"while{node.whitespace_after_while.value}", node.test
    if isinstance(node, cst.For):
        return f"for{node.whitespace_after_for.value}", node.target
    if isinstance(node, cst.FunctionDef):
        return f"def{node.whitespace_after_def.value}", node.name
    if isinstance(node, cst.ClassDef):
        return f"class{node.whitespace_after_class.value}", node.name
    return None


def _lines_in_text(source: str, module: cst.Module, node: cst.CSTNode,
                   parents: dict[cst.CSTNode, cst.CSTNode],
                   spans: dict[cst.CSTNode, tuple[int, int] | None] | None = None) -> tuple[int, int] | None:
    """(first, last) line of an original node, read off the file's text without libcst positions.

    Certain, or None. A node's first line, as generated, is verbatim in the file (later lines
    may not be: continuation lines are generated without the block's indentation); where it
    occurs once in the file, or once within the lines of an ancestor whose first line occurs once,
    the node starts there, and it spans as many lines as its code. A compound statement starts
    where its keyword and test/target/name do (`if (` ...). tests/test_resolver.py checks this
    against libcst's PositionProvider on real modules.
    """
    head = _header(node)
    if head is not None:
        keyword, anchor = head
        code = _verbatim(module, anchor, parens=True)
        if not code:
            return None
        at = _offset(source, module, anchor, keyword + code, parents, node, spans)
        if at is None:
            return None
        whole = node.with_changes(leading_lines=())
        if isinstance(whole, (cst.FunctionDef, cst.ClassDef)):
            whole = whole.with_changes(decorators=(), lines_after_decorators=())
        line = source.count("\n", 0, at) + 1
        return line, line + module.code_for_node(whole).rstrip().count("\n")
    if "\f" in source or "\v" in source or "\ufeff" in source or source.count("\r") != source.count("\r\n"):
        return None  # characters libcst drops or counts as line ends: its own positions answer
    code = _verbatim(module, node)
    at = _offset(source, module, node, code, parents, None, spans)
    if at is None:
        return None
    line = source.count("\n", 0, at) + 1
    return line, line + code.count("\n")


def _range_in_text(source: str, module: cst.Module, node: cst.BaseExpression,
                   parents: dict[cst.CSTNode, cst.CSTNode],
                   spans: dict[cst.CSTNode, tuple[int, int] | None] | None = None) -> CodeRange | None:
    """libcst's PositionProvider range of an original expression, read off the file's text (an
    expression's code is verbatim in the file, parentheses left out as libcst does); None unless
    certain (see _lines_in_text). tests/test_resolver.py checks it against PositionProvider."""
    if "\f" in source or "\v" in source or "\ufeff" in source or source.count("\r") != source.count("\r\n"):
        return None  # characters libcst drops or counts as line ends: its own positions answer
    try:
        code = _verbatim(module, node)
    except Exception:  # a node libcst cannot regenerate without its parentheses: `()`
        return None
    at = _offset(source, module, node, code, parents, None, spans)
    if at is None:
        return None
    line = source.count("\n", 0, at) + 1
    column = at - source.rfind("\n", 0, at) - 1
    if "\n" not in code:
        return CodeRange(CodePosition(line, column), CodePosition(line, column + len(code)))
    # The code's later lines are generated without the block's indentation: the last line sits in
    # the file behind whitespace, its first character where the file's last line has its own.
    end_line = line + code.count("\n")
    last = code.rsplit("\n", 1)[1]
    lines = source.split("\n", end_line)
    if len(lines) < end_line:
        return None
    text = lines[end_line - 1].rstrip("\r") if len(lines) > end_line else lines[end_line - 1]
    k = (len(text) - len(text.lstrip())) - (len(last) - len(last.lstrip()))
    if k < 0 or not text.startswith(last, k) or text[:k].strip():
        return None
    return CodeRange(CodePosition(line, column), CodePosition(end_line, k + len(last)))


def _offset(source: str, module: cst.Module, node: cst.CSTNode, code: str,
            parents: dict[cst.CSTNode, cst.CSTNode], parent: cst.CSTNode | None,
            spans: dict[cst.CSTNode, tuple[int, int] | None] | None = None) -> int | None:
    """Where `code`, the generated text of `node`, starts in `source`, if that is certain."""
    spans = {} if spans is None else spans
    first = code.split("\n", 1)[0]
    if not first.strip():
        return None
    at = source.find(first)
    if at < 0:
        return None
    if source.find(first, at + 1) < 0:
        return at
    above = parents.get(node, parent)
    while above is not None and not isinstance(above, cst.Module):
        if above not in spans:
            spans[above] = _span(source, _verbatim(module, above, parens=True, blocks=True))
            if spans[above] is None and isinstance(above, (cst.FunctionDef, cst.ClassDef)) and above.decorators:
                # `@torch.inference_mode()` above many methods: the span from the `def` line on
                # (a node in the decorators is then not found in it, and stays unsure)
                bare = above.with_changes(decorators=(), lines_after_decorators=())
                spans[above] = _span(source, _verbatim(module, bare, parens=True, blocks=True))
        span = spans[above]
        if span is not None:
            start, stop = span
            at = source.find(first, start, stop)
            if at < 0 or source.find(first, at + 1, stop) >= 0:
                return None
            return at
        above = parents.get(above)
    return None


def _span(source: str, code: str) -> tuple[int, int] | None:
    """(start, end of last line) of generated `code` in `source` if its first line occurs once."""
    first = code.split("\n", 1)[0]
    start = source.find(first) if first.strip() else -1
    if start < 0 or source.find(first, start + 1) >= 0:
        return None
    stop = start
    for _ in range(code.count("\n") + 1):
        stop = source.find("\n", stop + 1)
        if stop < 0:
            return start, len(source)
    return start, stop


def walk(node: cst.CSTNode, prune: Callable[[cst.CSTNode], bool] | None = None) -> Iterator[cst.CSTNode]:
    """`node` and everything below it, in source order; below a node `prune` accepts, nothing."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if prune is None or not prune(n):
            stack.extend(reversed(n.children))


def _module_level_names(module: cst.Module) -> set[str]:
    """Names the module's top level defines: functions, simple assignments, imported names."""
    out: set[str] = set()
    for s in module.body:
        if isinstance(s, cst.FunctionDef):
            out.add(s.name.value)
        elif isinstance(s, cst.SimpleStatementLine):
            for a in s.body:
                if isinstance(a, cst.Assign):
                    out.update(t.target.value for t in a.targets if isinstance(t.target, cst.Name))
                elif isinstance(a, cst.ImportFrom) and not isinstance(a.names, cst.ImportStar):
                    out.update(_imported(s))
    return out


def _imported(stmt: cst.SimpleStatementLine | None) -> list[str]:
    """The names a `from x import a, b as c` statement binds (a, c)."""
    if stmt is None:
        return []
    out = []
    for a in stmt.body:
        if isinstance(a, cst.ImportFrom) and not isinstance(a.names, cst.ImportStar):
            for alias in a.names:
                bound = alias.asname.name if alias.asname else alias.name
                if isinstance(bound, cst.Name):
                    out.append(bound.value)
    return out


def _helper_import_at(body: list[cst.BaseStatement], spec: str) -> tuple[int, cst.SimpleStatementLine | None]:
    """Where the `from <spec> import ...` statement is (index, statement), or where it goes: after
    the last plain import of the module's leading block (no blank line added), else after the
    docstring and `__future__` imports."""
    dots = len(spec) - len(spec.lstrip("."))
    module = spec[dots:]
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            imp = stmt.body[0]
            if (isinstance(imp, cst.ImportFrom) and len(imp.relative) == dots
                    and imp.module is not None and get_full_name_for_node(imp.module) == module):
                return i, stmt
    limit = _after_imports(body)
    at = None
    for i, stmt in enumerate(body[:limit]):
        if isinstance(stmt, cst.SimpleStatementLine) and all(isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body):
            at = i + 1
    if at is None:
        at = 0
        for i, stmt in enumerate(body[:limit]):
            if isinstance(stmt, cst.SimpleStatementLine):
                at = i + 1
    return at, None


def _after_imports(body: list[cst.BaseStatement]) -> int:
    """Index after the module docstring, `__future__` and the leading block of imports."""
    at = 0
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and all(
            isinstance(s, (cst.Import, cst.ImportFrom)) or (
                i == 0 and isinstance(s, cst.Expr) and isinstance(s.value, cst.SimpleString)
            )
            for s in stmt.body
        ):
            at = i + 1
            continue
        if isinstance(stmt, cst.If) or isinstance(stmt, cst.Try):
            # guarded imports such as `try: import x / except ImportError: ...`
            code = cst.Module(body=[stmt]).code
            if re.match(r"^(try:|if )", code) and "import " in code and "def " not in code:
                at = i + 1
                continue
        break
    return at


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
