"""lazy-import: a module-level import of a package that may not load moves to where it is used."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field

from porter.resolve import Resolver, parents
from porter.transforms._base import Example, PythonTransform, Rewriter, Safety

_DEFAULT_REASON = "imported where it is used, so the module imports on hosts where {module} cannot load"


def _dotted(node: cst.BaseExpression | None) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _matches(dotted: str, modules: tuple[str, ...]) -> str | None:
    for m in modules:
        if dotted == m or dotted.startswith(m + "."):
            return m
    return None


def _alias_code(alias: cst.ImportAlias) -> str:
    name = _dotted(alias.name)  # type: ignore[arg-type]
    if alias.asname is not None:
        return f"{name} as {_dotted(alias.asname.name)}"  # type: ignore[arg-type]
    return name


@dataclass
class _Import:
    """One module-level import statement of a target module, and what uses its names."""

    stmt: cst.SimpleStatementLine
    small: cst.Import | cst.ImportFrom
    module: str
    aliases: list[cst.ImportAlias]  # the aliases that import the target (others stay at module level)
    # per alias (by index in `aliases`): the name nodes that use it
    uses: dict[int, list[cst.CSTNode]] = field(default_factory=dict)


class _Lazy(Rewriter):

    def visit_Module(self, node: cst.Module) -> bool:
        super().visit_Module(node)
        # original statement -> import statements (code) to insert before it
        self._insert: dict[cst.CSTNode, list[str]] = {}
        self._drop: dict[cst.SimpleStatementLine, list[_Import]] = {}
        self._child_at: dict[cst.CSTNode, dict[int, int]] = {}
        self._plan(node)
        # The traversal only goes down to the blocks that get an import: the statements above
        # them (every other subtree is kept as it is, unvisited).
        self._within: set[cst.CSTNode] = set()
        for stmt in self._insert:
            up = self._parents.get(stmt)
            while up is not None and up not in self._within:
                self._within.add(up)
                up = self._parents.get(up)
        return bool(self._insert or self._drop)

    def on_visit(self, node: cst.CSTNode) -> bool:
        within = getattr(self, "_within", None)  # set by visit_Module (the module's own visit)
        if within is None or node in within:
            return super().on_visit(node)
        super().on_visit(node)  # keeps the stack of ancestors that on_leave pops
        return False

    # -- analysis -----------------------------------------------------------------------------
    def _imports(self, module: cst.Module) -> list[_Import]:
        found: list[_Import] = []
        for stmt in module.body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    imp = self._target(stmt, small)
                    if imp is not None:
                        found.append(imp)
            elif isinstance(stmt, (cst.Try, cst.If)):
                for inner in _statements_in(stmt):
                    for small in inner.body:
                        if self._target(inner, small) is not None:
                            self.find(inner, "guarded_import",
                                      "already guarded (try/if) at module level: left alone")
        return found

    def _target(self, stmt: cst.SimpleStatementLine, small: cst.BaseSmallStatement) -> _Import | None:
        modules = self.params.modules
        if isinstance(small, cst.Import):
            hits = [(a, _matches(_dotted(a.name), modules)) for a in small.names]
            hits = [(a, m) for a, m in hits if m]
            if hits:
                return _Import(stmt, small, hits[0][1], [a for a, _ in hits])  # type: ignore[arg-type]
        elif isinstance(small, cst.ImportFrom) and not small.relative and small.module is not None:
            m = _matches(_dotted(small.module), modules)
            if m:
                if isinstance(small.names, cst.ImportStar):
                    self.find(stmt, "star_import", "`import *` binds names that cannot be traced: left alone")
                    return None
                return _Import(stmt, small, m, list(small.names))
        return None

    def _bound(self, imp: _Import, alias: cst.ImportAlias) -> tuple[str, str]:
        """(full bound name, first component) that an alias binds in the module scope."""
        if alias.asname is not None:
            name = _dotted(alias.asname.name)  # type: ignore[arg-type]
            return name, name
        if isinstance(imp.small, cst.ImportFrom):
            name = _dotted(alias.name)
            return name, name
        full = _dotted(alias.name)
        return full, full.split(".")[0]

    def _plan(self, module: cst.Module) -> None:
        imports = self._imports(module)
        if not imports:
            return
        # What uses each import: the accesses libcst's scope analysis would link to the import's
        # assignments, found with porter.resolve (one light walk, no ScopeProvider pass) and put
        # in source order without a position pass.
        self._parents = parents(module)
        accesses = _Accesses(self.resolver, module, self._parents, self._order)
        for imp in imports:
            bound = _assigned(imp.small)
            for i, alias in enumerate(imp.aliases):
                full, first = self._bound(imp, alias)
                names = {n for n in bound if n == full or n.split(".")[0] == first}
                nodes = [node for name in names for node in accesses.of(name)]
                imp.uses[i] = sorted(dict.fromkeys(nodes), key=self._order)
        for imp in imports:
            self._plan_one(imp)

    def _order(self, node: cst.CSTNode) -> tuple[int, ...]:
        """Source order: the node's path of child positions from the module (a pre-order key)."""
        path = []
        child, parent = node, self._parents.get(node)
        while parent is not None:
            at = self._child_at.get(parent)
            if at is None:
                at = self._child_at[parent] = {id(c): k for k, c in enumerate(parent.children)}
            path.append(at[id(child)])
            child, parent = parent, self._parents.get(parent)
        return tuple(reversed(path))

    def _plan_one(self, imp: _Import) -> None:
        # Every use must sit in a function body (it runs after import time); find where each
        # function needs the import: before the statement holding the use, unless an import
        # inserted earlier in the same or an enclosing block already ran.
        points: dict[cst.FunctionDef, list[tuple[list[tuple[cst.IndentedBlock, cst.BaseStatement]], set[int]]]] = {}
        for i, nodes in imp.uses.items():
            for node in nodes:
                func = self._function_of(node)
                if func is None:
                    self.find(node, "import_time_use",
                              f"{imp.module} is used outside any function body (module level, class body, decorator,"
                              " default or lambda): its import cannot move, left alone")
                    self.find(imp.stmt, "import_time_use",
                              f"{imp.module} is used at import time in this module: import left alone")
                    return
                chain = self._chain(node, func)
                if chain is None:
                    self.find(node, "one_line_body",
                              f"{imp.module} is used in a one-line block; write it as a block first: import left alone")
                    return
                spots = points.setdefault(func, [])
                for other_chain, aliases in spots:
                    if _dominates(other_chain[0], chain):
                        aliases.add(i)
                        break
                else:
                    spots.append((chain, {i}))
        for spots in points.values():
            for chain, aliases in spots:
                _block, stmt = chain[0]
                code = _import_code(imp, sorted(aliases))
                self._insert.setdefault(stmt, []).append(code)
        self._drop.setdefault(imp.stmt, []).append(imp)

    def _function_of(self, node: cst.CSTNode) -> cst.FunctionDef | None:
        """The function whose body evaluates `node` (decorators, defaults and annotations run
        in the enclosing scope, at definition time)."""
        child, parent = node, self._parent(node)
        while parent is not None:
            if isinstance(parent, cst.FunctionDef) and child is parent.body:
                return parent
            child, parent = parent, self._parent(parent)
        return None

    def _chain(self, node: cst.CSTNode, func: cst.FunctionDef) -> list[tuple[cst.IndentedBlock, cst.BaseStatement]] | None:
        """(block, statement) pairs from the innermost statement holding `node` up to the
        function body."""
        chain = []
        child, parent = node, self._parent(node)
        while parent is not None and child is not func.body:
            if (isinstance(parent, cst.IndentedBlock) and isinstance(child, cst.BaseStatement)
                    and not isinstance(self._parent(parent), cst.ClassDef)):  # never a class attribute
                chain.append((parent, child))
            child, parent = parent, self._parent(parent)
        return chain or None

    def _parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._parents.get(node)

    # -- rewriting ----------------------------------------------------------------------------
    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        if not self._insert or not any(s in self._insert for s in original.body):
            return updated
        body: list[cst.BaseStatement] = []
        for orig, new in zip(original.body, updated.body):
            codes = self._insert.get(orig)
            if codes:
                line, _ = self.line_of(orig)
                for k, code in enumerate(codes):
                    stmt = cst.parse_statement(code)
                    if k == 0:  # the import takes the blank lines and comments above the statement
                        stmt = stmt.with_changes(leading_lines=new.leading_lines)
                        new = new.with_changes(leading_lines=())
                    body.append(stmt)
                    self.record_lines(line, "", code, self._reason(code))
            body.append(new)
        return updated.with_changes(body=body)

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        if self._drop:
            body: list[cst.BaseStatement] = []
            carry: list[cst.EmptyLine] = []
            for orig, new in zip(original.body, updated.body):
                imps = self._drop.get(orig)  # type: ignore[arg-type]
                if imps is None:
                    if carry:
                        new = new.with_changes(leading_lines=[*carry, *new.leading_lines])
                        carry = []
                    body.append(new)
                    continue
                kept = self._without(new, imps)  # type: ignore[arg-type]
                line, _ = self.line_of(orig)
                before = self.code(orig).strip().splitlines()[-1]
                if kept is None:  # comments above the import stay, above the next statement
                    carry += [ln for ln in new.leading_lines if ln.comment is not None]
                    after = ""
                else:
                    body.append(kept)
                    after = cst.Module(body=[kept]).code.strip().splitlines()[-1]
                self.record_lines(line, before, after, self._reason(before))
            updated = updated.with_changes(body=body, footer=[*carry, *updated.footer])
        return super().leave_Module(original, updated)

    def _without(self, stmt: cst.SimpleStatementLine, imps: list[_Import]) -> cst.SimpleStatementLine | None:
        """`stmt` minus the target aliases (None when nothing is left)."""
        drop_small = {id(i.small): i for i in imps}
        small_out: list[cst.BaseSmallStatement] = []
        orig = imps[0].stmt
        for o, n in zip(orig.body, stmt.body):
            imp = drop_small.get(id(o))
            if imp is None:
                small_out.append(n)
                continue
            if isinstance(o, cst.Import):
                keep = [na for oa, na in zip(o.names, n.names) if oa not in imp.aliases]  # type: ignore[union-attr]
                if keep:
                    keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                    small_out.append(n.with_changes(names=keep))  # type: ignore[union-attr]
        if not small_out:
            return None
        small_out[-1] = small_out[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
        return stmt.with_changes(body=small_out)

    def _reason(self, code: str) -> str:
        module = next((m for m in self.params.modules if m in code), self.params.modules[0])
        return (self.params.reason or _DEFAULT_REASON).replace("{module}", module)


def _assigned(small: cst.Import | cst.ImportFrom) -> set[str]:
    """The names an import statement assigns, as libcst's scope analysis records them:
    `import a.b.c` assigns a.b.c, a.b and a; `import a.b as c` and `from a import b as c` assign c."""
    out: set[str] = set()
    for alias in small.names:  # type: ignore[union-attr]
        name = _dotted(alias.asname.name if alias.asname is not None else alias.name)  # type: ignore[arg-type]
        parts = name.split(".")
        out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


# Nodes whose visit ends a binding in libcst's scope analysis (its _ASSIGNMENT_LIKE_NODES).
_ASSIGNMENT_LIKE = (cst.AnnAssign, cst.AsName, cst.Assign, cst.AugAssign, cst.ClassDef, cst.CompFor, cst.FunctionDef,
                    cst.Global, cst.Import, cst.ImportFrom, cst.NamedExpr, cst.Nonlocal, cst.Parameters, cst.WithItem)


class _Accesses:
    """The accesses of a module that resolve to a module-level assignment, by assigned name.

    As libcst's ScopeVisitor records them: a name read (loaded, deleted) whose scope chain ends at
    the module; where it heads a dotted name (`a.b.c`) and a module-level `import a.b` assigns a
    prefix, the access is that prefix (the Attribute `a.b`, named "a.b"), else the Name itself; a
    string annotation that reads the name is one access, the string node; a read before a binding
    of the same name in its own scope (`x = x.y` in a class body) goes to the enclosing scope.
    Differences: a local `a` shadows `a.b.c` here, as in Python (see porter.resolve); only
    assignment targets count as such later bindings (not a later `def x`/`import x` in the scope).
    """

    def __init__(self, resolver: Resolver, module: cst.Module, parents: dict[cst.CSTNode, cst.CSTNode],
                 order) -> None:
        self.resolver, self.module, self.parents, self.order = resolver, module, parents, order
        dotted: set[str] = set()  # dotted names module-level imports assign
        for stmt in _statements_in(module):
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    dotted.update(n for n in _assigned(small) if "." in n)
        self.dotted = dotted
        self._roots = {n.split(".")[0] for n in dotted}
        self._by_name: dict[str, list[cst.CSTNode]] | None = None
        self._stores: dict[tuple[int, str], list[cst.Name]] | None = None

    def of(self, name: str) -> list[cst.CSTNode]:
        if self._by_name is None:
            self._by_name = self._collect()
        return self._by_name.get(name, [])

    def _at_module(self, scope, name: str, read: cst.Name | None = None) -> bool:
        hit = scope.lookup(name)
        if hit is None:
            return False
        if hit[0] is scope and read is not None and scope is not self.resolver.top and self._before_binding(read, scope):
            # libcst attaches a read that comes before a binding of its own scope (`x = x.y`
            # in a class body) to the enclosing scope's assignments
            return scope.parent is not None and self._at_module(scope.parent, name)
        return hit[0] is self.resolver.top

    def _before_binding(self, read: cst.Name, scope) -> bool:
        if self._stores is None:
            self._stores = {}
            for n, where in self.resolver.stored.items():
                self._stores.setdefault((id(where), n.value), []).append(n)
        stores = self._stores.get((id(scope), read.value))
        if not stores:
            return False
        at = self.order(read)
        for store in stores:
            holder = store
            while holder is not None and not isinstance(holder, _ASSIGNMENT_LIKE):
                holder = self.parents.get(holder)
            if holder is None:
                continue
            start = self.order(holder)
            if at < start or at[:len(start)] == start:
                return True
        return False

    def _collect(self) -> dict[str, list[cst.CSTNode]]:
        by_name: dict[str, list[cst.CSTNode]] = {}
        roots = self._roots
        for name, scope in self.resolver.scope_of.items():
            if not self._at_module(scope, name.value, name):
                continue
            holder = self.parents.get(name)
            if isinstance(holder, (cst.FunctionDef, cst.ClassDef)) and holder.name is name:
                continue  # the name a def or class binds is an assignment, not a read
            node: cst.CSTNode = name
            key = name.value
            if key in roots:
                node, key = self._dotted_access(name)
            by_name.setdefault(key, []).append(node)
        for string, scope in self.resolver.strings.items():
            for key in self._string_reads(string, scope):
                by_name.setdefault(key, []).append(string)
        return by_name

    def _dotted_access(self, name: cst.Name, parents: dict | None = None) -> tuple[cst.CSTNode, str]:
        parents = self.parents if parents is None else parents
        chain: list[cst.Attribute] = []
        child, parent = name, parents.get(name)
        while isinstance(parent, cst.Attribute) and parent.value is child:
            chain.append(parent)
            child, parent = parent, parents.get(parent)
        for node in reversed(chain):  # the longest prefix first, as libcst tries them
            key = _dotted(node)
            if key in self.dotted:
                return node, key
        return name, name.value

    def _string_reads(self, string: cst.CSTNode, scope) -> set[str]:
        """Names a string annotation reads that resolve at module level (libcst parses a string
        inside an annotation, or in a typing subscript, cast() or TypeVar() argument)."""
        if self.parents.get(string) is not None and isinstance(self.parents[string], cst.ConcatenatedString):
            return set()  # the whole concatenation is the string
        value = getattr(string, "evaluated_value", None)
        if not isinstance(value, str) or not value or not self._in_type_hint(string):
            return set()
        try:
            parsed = cst.parse_module(value)
        except (cst.ParserSyntaxError, RecursionError):
            return set()
        inner, inner_parents = Resolver(parsed), parents(parsed)
        found = set()
        for n, s in inner.scope_of.items():
            if s is inner.top and self._at_module(scope, n.value):
                found.add(self._dotted_access(n, inner_parents)[1] if n.value in self._roots else n.value)
        return found

    def _in_type_hint(self, node: cst.CSTNode) -> bool:
        child, parent = node, self.parents.get(node)
        hint: bool | None = None  # the innermost Call's or Subscript's say
        while parent is not None:
            if isinstance(parent, cst.Annotation):
                return not self._in_literal(node)
            if hint is None and isinstance(parent, cst.Call):
                hint = self._hint_call(parent, child)
            elif hint is None and isinstance(parent, cst.Subscript):
                hint = self._typing(parent.value) is not None
            child, parent = parent, self.parents.get(parent)
        return bool(hint) and not self._in_literal(node)

    def _hint_call(self, call: cst.Call, child: cst.CSTNode) -> bool:
        names = self.resolver.imported_names(call)
        if not isinstance(child, cst.Arg) or child not in call.args:
            return False
        at = list(call.args).index(child)
        if names & {"typing.NewType", "typing.TypeVar"}:
            return at >= 1
        if "typing.cast" in names:
            return at == 0
        return False

    def _typing(self, node: cst.CSTNode) -> str | None:
        if not isinstance(node, cst.Name):
            return None
        return next((q for q in self.resolver.imported_names(node) if q.startswith(("typing.", "typing_extensions."))), None)

    def _in_literal(self, node: cst.CSTNode) -> bool:
        parent = self.parents.get(node)
        while parent is not None:
            if isinstance(parent, cst.Subscript) and self._typing(parent.value) in ("typing.Literal", "typing_extensions.Literal"):
                return True
            parent = self.parents.get(parent)
        return False


def _statements_in(node: cst.CSTNode) -> list[cst.SimpleStatementLine]:
    out: list[cst.SimpleStatementLine] = []

    class _V(cst.CSTVisitor):
        def visit_SimpleStatementLine(self, n: cst.SimpleStatementLine) -> bool:
            out.append(n)
            return False

        def visit_FunctionDef(self, n: cst.FunctionDef) -> bool:
            return False

        def visit_ClassDef(self, n: cst.ClassDef) -> bool:
            return False

    node.visit(_V())
    return out


def _dominates(point: tuple[cst.IndentedBlock, cst.BaseStatement],
               chain: list[tuple[cst.IndentedBlock, cst.BaseStatement]]) -> bool:
    """An import inserted before `point` has run when the innermost statement of `chain` runs:
    it sits in one of the chain's blocks, at or before the chain's statement in that block."""
    block, stmt = point
    at = list(block.body).index(stmt)
    for b, s in chain:
        if b is block:
            return at <= list(b.body).index(s)
    return False


def _import_code(imp: _Import, indices: list[int]) -> str:
    aliases = ", ".join(_alias_code(imp.aliases[i]) for i in indices)
    if isinstance(imp.small, cst.ImportFrom):
        return f"from {_dotted(imp.small.module)} import {aliases}"  # type: ignore[arg-type]
    return f"import {aliases}"


class LazyImport(PythonTransform):
    """A module-level import of a package that may fail to load moves into the functions that use it.

    For a package that is installed but cannot load on the target host, such as the PyPI
    torchaudio wheel next to a CPU or Ascend torch (it raises OSError, not ImportError, for a
    missing libc10_cuda.so), while the module needs it only in some functions. `import X`,
    `import X.sub`, `import X as Y` and `from X import a, b` at module level are removed, and
    each function that uses the names gets the same import just before the first statement that
    uses them (again in a branch the earlier import does not reach), so a code path that does
    not need the package does not import it. Uses are found by scope analysis: a parameter or a
    local that shadows the name is not a use. Behaviour where the package loads is unchanged,
    apart from when the import (and its side effects) happens; where it cannot load, only the
    calls that need it fail, with the package's own error.

    Left alone, as findings: an import used at import time (module level, class bodies,
    decorators, defaults), a use in a one-line block, `import *`, imports already guarded by
    `try`/`if`. Imports inside functions are already lazy and are not touched.
    """

    name = "lazy-import"
    safety = Safety.SAFE

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        modules: tuple[str, ...] = Field(min_length=1, description="top-level packages whose imports move")
        reason: str = Field("", description="why (shown in the report; {module} is the package); default: generic")

    rewriter = _Lazy

    def could_match(self, text: str) -> bool:
        return any(re.search(rf"^(import|from)\s+{re.escape(m)}\b", text, re.M) for m in self.params.modules)

    examples = [
        Example(
            id="voxcpm-torchaudio",
            note="voxcpm/model/voxcpm.py: torchaudio is needed only by the v1 prompt-audio paths",
            params={"modules": ["torchaudio"]},
            before=(
                "import torch\n"
                "import torchaudio\n"
                "import warnings\n"
                "\n\n"
                "class Model:\n"
                "    def generate(self, text, prompt_wav_path=None):\n"
                "        if prompt_wav_path is None:\n"
                "            audio = None\n"
                "        else:\n"
                "            n = len(text)\n"
                "\n"
                "            audio, sr = torchaudio.load(prompt_wav_path)\n"
                "            if sr != self.sample_rate:\n"
                "                audio = torchaudio.functional.resample(audio, sr, self.sample_rate)\n"
                "        return audio\n"
                "\n"
                "    def build_prompt_cache(self, prompt_wav_path):\n"
                "        # load audio\n"
                "        audio, sr = torchaudio.load(prompt_wav_path)\n"
                "        return audio\n"
            ),
            after=(
                "import torch\n"
                "import warnings\n"
                "\n\n"
                "class Model:\n"
                "    def generate(self, text, prompt_wav_path=None):\n"
                "        if prompt_wav_path is None:\n"
                "            audio = None\n"
                "        else:\n"
                "            n = len(text)\n"
                "\n"
                "            import torchaudio\n"
                "            audio, sr = torchaudio.load(prompt_wav_path)\n"
                "            if sr != self.sample_rate:\n"
                "                audio = torchaudio.functional.resample(audio, sr, self.sample_rate)\n"
                "        return audio\n"
                "\n"
                "    def build_prompt_cache(self, prompt_wav_path):\n"
                "        # load audio\n"
                "        import torchaudio\n"
                "        audio, sr = torchaudio.load(prompt_wav_path)\n"
                "        return audio\n"
            ),
        ),
        Example(
            id="aliases-from-and-branches",
            note="each branch that uses the package imports it; a shadowing parameter is not a use",
            params={"modules": ["torchaudio"]},
            before=(
                "import os, torchaudio.functional as F\n"
                "from torchaudio import load as read_wav\n"
                "\n\n"
                "def f(p, fast):\n"
                "    if fast:\n"
                "        return F.resample(read_wav(p)[0], 16000, 8000)\n"
                "    else:\n"
                "        return F.gain(read_wav(p)[0], 2.0)\n"
                "\n\n"
                "def g(F):\n"
                "    return F.gain(os.getcwd())\n"
            ),
            after=(
                "import os\n"
                "\n\n"
                "def f(p, fast):\n"
                "    if fast:\n"
                "        import torchaudio.functional as F\n"
                "        from torchaudio import load as read_wav\n"
                "        return F.resample(read_wav(p)[0], 16000, 8000)\n"
                "    else:\n"
                "        import torchaudio.functional as F\n"
                "        from torchaudio import load as read_wav\n"
                "        return F.gain(read_wav(p)[0], 2.0)\n"
                "\n\n"
                "def g(F):\n"
                "    return F.gain(os.getcwd())\n"
            ),
        ),
        Example(
            id="used-at-import-time-left-alone",
            params={"modules": ["torchaudio"]},
            before=(
                "import torchaudio\n"
                "\n"
                "BACKENDS = torchaudio.list_audio_backends()\n"
                "\n\n"
                "def f(p):\n"
                "    return torchaudio.load(p)\n"
            ),
        ),
        Example(
            id="decorator-and-default-left-alone",
            note="decorators and defaults run when the function is defined, at import time",
            params={"modules": ["torchaudio"]},
            before=(
                "import torchaudio\n"
                "\n\n"
                "def f(backend=torchaudio.get_audio_backend()):\n"
                "    return backend\n"
            ),
        ),
        Example(
            id="guarded-and-local-imports-left-alone",
            params={"modules": ["torchaudio"]},
            before=(
                "try:\n"
                "    import torchaudio\n"
                "except (ImportError, OSError):\n"
                "    torchaudio = None\n"
                "\n\n"
                "def f(p):\n"
                "    import torchaudio as ta\n"
                "    return ta.load(p)\n"
            ),
        ),
        Example(
            id="other-packages-left-alone",
            params={"modules": ["torchaudio"]},
            before="import torchaudiox\nimport torch.audio\n\n\ndef f():\n    return torchaudiox.x, torch.audio\n",
        ),
    ]
