"""What a name in a module means: a light resolver of import aliases and local bindings.

`import torch as t; t.cuda.mem_get_info()` and `from torch.cuda import mem_get_info as m; m()`
both name `torch.cuda.mem_get_info`; a parameter or local variable called `torch` names nothing
imported. libcst's `QualifiedNameProvider` answers this too, but through a full scope analysis that
costs ~10x a libcst parse (54 s for a 13.8k-line package where `ast.parse` takes 0.55 s). Like
pyupgrade and ruff, this resolver records only what the answer needs, in one walk of the tree that
skips whitespace and tokens: every scope (module, class, function, lambda, comprehension), the
names bound in each (imports with what they import, assignments, parameters, loop and `with`
targets, `def`/`class` names, `global`/`nonlocal`), and the scope each name is read in. A query is
then a dictionary look-up up the scope chain, with Python's rules: a class body is invisible to the
functions inside it, defaults, decorators and annotations belong to the enclosing scope, the first
iterable of a comprehension too.

It gives libcst's answers (names and sources: IMPORT, LOCAL, BUILTIN), which
tests/test_resolver.py checks node by node on real code, with one deliberate difference: libcst
resolves `a.b.x` through a module-level `import a.b` even where a local `a` shadows it (it looks the
dotted prefix up before the scope chain); Python, and this resolver, do not.
"""

from __future__ import annotations

import builtins
import dataclasses
from typing import Iterator

import libcst as cst
from libcst.metadata import QualifiedName, QualifiedNameSource

IMPORT, LOCAL, BUILTIN = QualifiedNameSource.IMPORT, QualifiedNameSource.LOCAL, QualifiedNameSource.BUILTIN

# Fields that hold only whitespace, tokens or flags: never a name.
_SKIP_FIELDS = frozenset({
    "lpar", "rpar", "comma", "semicolon", "colon", "equal", "dot", "lbrace", "rbrace", "lbracket",
    "rbracket", "leading_lines", "lines_after_decorators", "header", "footer", "trailing_whitespace",
    "newline", "operator", "asynchronous", "star", "first_colon", "second_colon", "separator",
    "trailing_comma", "comment", "indent", "default_indent", "default_newline", "encoding",
    "has_trailing_newline", "empty_lines", "first_line", "last_line", "relative", "conversion",
    "start", "end", "value_quote", "prefix", "quote",
})
_FIELDS: dict[type, tuple[str, ...]] = {}
_KEYWORDS = frozenset({"None", "True", "False"})  # constants, not names


def _fields(kind: type) -> tuple[str, ...]:
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(
            f.name for f in dataclasses.fields(kind)
            if f.name not in _SKIP_FIELDS and not f.name.startswith("whitespace")
        )
    return names


def parents(module: cst.CSTNode) -> dict[cst.CSTNode, cst.CSTNode]:
    """Every node that can hold a name -> its parent (libcst's ParentNodeProvider, without the
    whitespace and token nodes, in one walk of the fields instead of a metadata pass)."""
    out: dict[cst.CSTNode, cst.CSTNode] = {}
    stack: list[cst.CSTNode] = [module]
    CSTNode = cst.CSTNode
    while stack:
        node = stack.pop()
        for f in _fields(type(node)):
            v = getattr(node, f)
            if isinstance(v, CSTNode):
                out[v] = node
                stack.append(v)
            elif type(v) in (tuple, list):
                for c in v:
                    if isinstance(c, CSTNode):
                        out[c] = node
                        stack.append(c)
    return out


class Scope:
    """One namespace: the names bound in it, and what each import binds them to."""

    __slots__ = ("kind", "parent", "prefix", "bindings", "overrides")

    def __init__(self, kind: str, parent: "Scope | None", name: str | None = None) -> None:
        self.kind = kind  # "module", "class", "function", "comprehension"
        self.parent = parent
        # The qualified-name prefix of names bound here, as libcst (PEP 3155 plus <locals>) spells it.
        up = parent.prefix if parent is not None else ""
        if kind == "function":
            self.prefix = ".".join(p for p in (up, name, "<locals>") if p)
        elif kind == "class":
            self.prefix = ".".join(p for p in (up, name) if p)
        elif kind == "comprehension":
            self.prefix = ".".join(p for p in (up, "<comprehension>") if p)
        else:
            self.prefix = ""
        # name -> what binds it here: the imported name (a str) for an import, None otherwise.
        self.bindings: dict[str, list[str | None]] = {}
        self.overrides: dict[str, str] = {}  # name -> "global" | "nonlocal"

    def visible_parent(self) -> "Scope | None":
        """The next scope a name not bound here is looked up in (class bodies are skipped)."""
        p = self.parent
        while p is not None and p.kind == "class":
            p = p.parent
        return p

    def target(self, name: str) -> "Scope":
        """Where a binding of `name` made in this scope lands (`global`/`nonlocal` move it)."""
        how = self.overrides.get(name)
        if how is None or self.parent is None:
            return self
        scope = self.module() if how == "global" else self.visible_parent()
        return scope.target(name) if scope is not None else self

    def module(self) -> "Scope":
        s = self
        while s.parent is not None:
            s = s.parent
        return s

    def lookup(self, name: str) -> "tuple[Scope, list[str | None]] | None":
        """The scope that binds `name` as seen from here, and its bindings; None: a builtin or unbound."""
        s: Scope | None = self
        while s is not None:
            how = s.overrides.get(name)
            if how is not None and s.parent is not None:
                s = s.module() if how == "global" else s.visible_parent()
                continue
            found = s.bindings.get(name)
            if found:
                return s, found
            s = s.visible_parent()
        return None

    def bind(self, name: str, imported: str | None = None) -> None:
        self.target(name).bindings.setdefault(name, []).append(imported)


class Resolver:
    """Qualified names of the names, attributes, calls, subscripts and decorators of one module."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.scope_of: dict[cst.Name, Scope] = {}  # every Name read (loaded or deleted) -> its scope
        self.stored: dict[cst.Name, Scope] = {}  # every Name assigned to -> the scope it binds in
        self.strings: dict[cst.CSTNode, Scope] = {}  # every string -> its scope (string annotations)
        self.top = Scope("module", None)
        self._walk(module)

    # -- queries ------------------------------------------------------------------------------
    def qualified_names(self, node: cst.CSTNode) -> set[QualifiedName]:
        """What `node` names, as libcst's QualifiedNameProvider would say (see the module doc)."""
        found = _dotted(node)
        if found is None:
            return set()
        full, root = found
        scope = self.scope_of.get(root)
        if scope is None:
            where = self.stored.get(root)  # an assignment target names what it binds, a local
            if where is None or root is not node:  # else an attribute's or a keyword's name: nothing
                return set()
            return {QualifiedName(f"{where.prefix}.{full}" if where.prefix else full, LOCAL)}
        name = root.value
        rest = full[len(name):]
        hit = scope.lookup(name)
        if hit is None:
            builtin = hasattr(builtins, name) and name not in _KEYWORDS
            return {QualifiedName(f"builtins.{name}", BUILTIN)} if builtin else set()
        where, bindings = hit
        out = set()
        for imported in bindings:
            if imported is None:
                out.add(QualifiedName(f"{where.prefix}.{full}" if where.prefix else full, LOCAL))
            else:
                out.add(QualifiedName(imported + rest, IMPORT))
        return out

    def imported_names(self, node: cst.CSTNode) -> set[str]:
        """The fully qualified names `node` refers to through imports (never a local shadow)."""
        return {q.name for q in self.qualified_names(node) if q.source is IMPORT}

    # -- the walk -----------------------------------------------------------------------------
    def _walk(self, module: cst.Module) -> None:
        top = self.top
        # (node, scope, store): store is True where a Name is bound rather than read.
        stack: list[tuple[cst.CSTNode, Scope, bool]] = [(module, top, False)]
        pop, push = stack.pop, stack.append
        scope_of, stored, strings = self.scope_of, self.stored, self.strings
        CSTNode = cst.CSTNode
        string_kinds = (cst.SimpleString, cst.ConcatenatedString)
        while stack:
            node, scope, store = pop()
            kind = type(node)
            if kind is cst.Name:
                if store:
                    scope.bind(node.value)
                    stored[node] = scope.target(node.value)
                else:
                    scope_of[node] = scope
                continue
            if kind in string_kinds:
                strings[node] = scope
                if kind is cst.SimpleString:
                    continue
            handler = _HANDLERS.get(kind)
            if handler is not None:
                for item in reversed(handler(node, scope, store)):
                    push(item)
                continue
            if kind in _STORE_PASS:  # tuples, lists, starred: a target's parts are targets too
                keep = store
            else:
                keep = False
            children = []
            for f in _fields(kind):
                v = getattr(node, f)
                if isinstance(v, CSTNode):
                    children.append((v, scope, keep))
                elif type(v) in (tuple, list):
                    children.extend((c, scope, keep) for c in v if isinstance(c, CSTNode))
            for item in reversed(children):
                push(item)


def _dotted(node: cst.CSTNode) -> tuple[str, cst.Name] | None:
    """(libcst's full name of `node`, the Name it starts with): `a.b().c` -> ("a.b.c", a)."""
    parts: list[str] = []
    while True:
        kind = type(node)
        if kind is cst.Name:
            parts.append(node.value)  # type: ignore[attr-defined]
            return ".".join(reversed(parts)), node  # type: ignore[return-value]
        if kind is cst.Attribute:
            parts.append(node.attr.value)  # type: ignore[attr-defined]
            node = node.value  # type: ignore[attr-defined]
        elif kind is cst.Call:
            node = node.func  # type: ignore[attr-defined]
        elif kind is cst.Subscript:
            node = node.value  # type: ignore[attr-defined]
        elif kind is cst.Decorator:
            node = node.decorator  # type: ignore[attr-defined]
        else:
            return None


# -- how each construct binds and scopes names (mirrors libcst's ScopeVisitor) ------------------
Item = tuple[cst.CSTNode, Scope, bool]
_STORE_PASS = (cst.Tuple, cst.List, cst.Element, cst.StarredElement)


def _import(node: cst.Import, scope: Scope, store: bool) -> list[Item]:
    for alias in node.names:
        dotted = _name(alias.name)
        if alias.asname is not None:
            bound = alias.asname.name
            if isinstance(bound, cst.Name):
                scope.bind(bound.value, dotted)
        else:
            root = dotted.split(".")[0]
            scope.bind(root, root)  # `import a.b` binds a; `a.x` is then a.x
    return []


def _import_from(node: cst.ImportFrom, scope: Scope, store: bool) -> list[Item]:
    if isinstance(node.names, cst.ImportStar):
        return []
    module = "." * len(node.relative) + (_name(node.module) if node.module is not None else "")
    for alias in node.names:
        name = _name(alias.name)
        full = f"{module}{name}" if module.endswith(".") else f"{module}.{name}" if module else name
        bound = alias.asname.name if alias.asname is not None else alias.name
        if isinstance(bound, cst.Name):
            scope.bind(bound.value, full)
    return []


def _name(node: cst.BaseExpression) -> str:
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    parts.append(node.value if isinstance(node, cst.Name) else "")
    return ".".join(reversed(parts))


def _params(params: cst.Parameters, outer: Scope, inner: Scope) -> list[Item]:
    """Parameter names bind in the function; defaults and annotations are read outside it."""
    out: list[Item] = []
    every = [*params.posonly_params, *params.params, *params.kwonly_params]
    for extra in (params.star_arg, params.star_kwarg):
        if isinstance(extra, cst.Param):
            every.append(extra)
    for p in every:
        inner.bind(p.name.value)
        out.append((p.name, inner, False))  # a parameter's name reads as what binds it there
        if p.annotation is not None:
            out.append((p.annotation, outer, False))
        if p.default is not None:
            out.append((p.default, outer, False))
    return out


def _function(node: cst.FunctionDef, scope: Scope, store: bool) -> list[Item]:
    scope.bind(node.name.value)
    inner = Scope("function", scope, node.name.value)
    out = [(node.name, scope, False)] + _params(node.params, scope, inner)
    out.append((node.body, inner, False))
    out.extend((d, scope, False) for d in node.decorators)
    if node.returns is not None:
        out.append((node.returns, scope, False))
    if node.type_parameters is not None:
        out.append((node.type_parameters, scope, False))
    return out


def _lambda(node: cst.Lambda, scope: Scope, store: bool) -> list[Item]:
    inner = Scope("function", scope)
    return _params(node.params, scope, inner) + [(node.body, inner, False)]


def _class(node: cst.ClassDef, scope: Scope, store: bool) -> list[Item]:
    scope.bind(node.name.value)
    out: list[Item] = [(node.name, scope, False)] + [(d, scope, False) for d in node.decorators]
    out.extend((a, scope, False) for a in (*node.bases, *node.keywords))
    inner = Scope("class", scope, node.name.value)
    body = node.body
    if isinstance(body, cst.IndentedBlock):
        out.extend((s, inner, False) for s in body.body)
    else:
        out.append((body, inner, False))
    return out


def _comprehension(node: cst.BaseComp, scope: Scope, store: bool) -> list[Item]:
    for_in: cst.CompFor = node.for_in  # type: ignore[attr-defined]
    inner = Scope("comprehension", scope)
    out: list[Item] = [(for_in.iter, scope, False), (for_in.target, inner, True)]
    out.extend((c, inner, False) for c in for_in.ifs)
    if for_in.inner_for_in is not None:
        out.append((for_in.inner_for_in, inner, False))
    if isinstance(node, cst.DictComp):
        out += [(node.key, inner, False), (node.value, inner, False)]
    else:
        out.append((node.elt, inner, False))  # type: ignore[attr-defined]
    return out


def _comp_for(node: cst.CompFor, scope: Scope, store: bool) -> list[Item]:
    out: list[Item] = [(node.target, scope, True), (node.iter, scope, False)]
    out.extend((c, scope, False) for c in node.ifs)
    if node.inner_for_in is not None:
        out.append((node.inner_for_in, scope, False))
    return out


def _assign(node: cst.Assign, scope: Scope, store: bool) -> list[Item]:
    return [(t.target, scope, True) for t in node.targets] + [(node.value, scope, False)]


def _ann_assign(node: cst.AnnAssign, scope: Scope, store: bool) -> list[Item]:
    out: list[Item] = [(node.target, scope, True), (node.annotation, scope, False)]
    return out + ([(node.value, scope, False)] if node.value is not None else [])


def _aug_assign(node: cst.AugAssign, scope: Scope, store: bool) -> list[Item]:
    return [(node.target, scope, True), (node.value, scope, False)]


def _named_expr(node: cst.NamedExpr, scope: Scope, store: bool) -> list[Item]:
    return [(node.target, scope, True), (node.value, scope, False)]


def _for(node: cst.For, scope: Scope, store: bool) -> list[Item]:
    out: list[Item] = [(node.target, scope, True), (node.iter, scope, False), (node.body, scope, False)]
    return out + ([(node.orelse, scope, False)] if node.orelse is not None else [])


def _as_name(node: cst.AsName, scope: Scope, store: bool) -> list[Item]:
    return [(node.name, scope, True)]


def _attribute(node: cst.Attribute, scope: Scope, store: bool) -> list[Item]:
    return [(node.value, scope, False)]  # the attribute's own name is not a variable


def _arg(node: cst.Arg, scope: Scope, store: bool) -> list[Item]:
    return [(node.value, scope, False)]  # a keyword is not a variable


def _subscript(node: cst.Subscript, scope: Scope, store: bool) -> list[Item]:
    return [(node.value, scope, False)] + [(s, scope, False) for s in node.slice]


def _global(node: cst.Global, scope: Scope, store: bool) -> list[Item]:
    for item in node.names:
        scope.overrides[item.name.value] = "global"
    return []


def _nonlocal(node: cst.Nonlocal, scope: Scope, store: bool) -> list[Item]:
    for item in node.names:
        scope.overrides[item.name.value] = "nonlocal"
    return []


def _match_as(node: cst.MatchAs, scope: Scope, store: bool) -> list[Item]:
    out: list[Item] = [] if node.pattern is None else [(node.pattern, scope, False)]
    return out + ([(node.name, scope, True)] if node.name is not None else [])


def _match_star(node: cst.MatchStar, scope: Scope, store: bool) -> list[Item]:
    return [(node.name, scope, True)] if node.name is not None else []


def _match_mapping(node: cst.MatchMapping, scope: Scope, store: bool) -> list[Item]:
    out: list[Item] = [(e, scope, False) for e in node.elements]
    return out + ([(node.rest, scope, True)] if node.rest is not None else [])


def _match_keyword(node: cst.MatchKeywordElement, scope: Scope, store: bool) -> list[Item]:
    return [(node.pattern, scope, False)]


_HANDLERS = {
    cst.Import: _import,
    cst.ImportFrom: _import_from,
    cst.FunctionDef: _function,
    cst.Lambda: _lambda,
    cst.ClassDef: _class,
    cst.ListComp: _comprehension,
    cst.SetComp: _comprehension,
    cst.GeneratorExp: _comprehension,
    cst.DictComp: _comprehension,
    cst.CompFor: _comp_for,
    cst.Assign: _assign,
    cst.AnnAssign: _ann_assign,
    cst.AugAssign: _aug_assign,
    cst.NamedExpr: _named_expr,
    cst.For: _for,
    cst.AsName: _as_name,
    cst.Attribute: _attribute,
    cst.Arg: _arg,
    cst.Subscript: _subscript,
    cst.Global: _global,
    cst.Nonlocal: _nonlocal,
    cst.MatchAs: _match_as,
    cst.MatchStar: _match_star,
    cst.MatchMapping: _match_mapping,
    cst.MatchKeywordElement: _match_keyword,
}


def iter_named(module: cst.Module) -> Iterator[cst.CSTNode]:
    """Every Name, Attribute, Call, Subscript and Decorator of a module (for tests and benches)."""
    stack: list[cst.CSTNode] = [module]
    kinds = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Decorator)
    while stack:
        node = stack.pop()
        if isinstance(node, kinds):
            yield node
        stack.extend(reversed(node.children))
