"""What porter writes into a patched package for run time: one helper module, the runtime hook.

The helper module. Rewrites that need more than an expression call small `_porter_*` helpers
(porter.transforms._runtime, _npu_runtime). Patched code never imports porter, so porter writes
the helpers into the patched tree itself: once per top-level package, in `<package>/_porter_npu.py`,
which the modules that call them import relatively (`from .._porter_npu import ...`, as many dots
as the module is deep, so nested subpackages and a renamed or vendored package resolve). A module
that is not inside a package (every directory up to it must have an `__init__.py`), or that came
from a `hub:` source (remote code, which transformers loads file by file with trust_remote_code),
keeps its own copy of the helpers it uses: a relative import would not resolve there.

The runtime hook. A recipe's `runtime:` section (env variables, torch_npu options) is written into
the helper module as `_porter_npu_runtime()` and called from the top of the package's
`__init__.py`, before the package imports torch (torch >= 2.5 loads torch_npu with it), so the
settings are in place before torch_npu initialises. It acts only where torch_npu is installed
(`importlib.util.find_spec`, which imports nothing: a CUDA or CPU host has no torch_npu and is left
alone), and `os.environ.setdefault` keeps what the user set. A tree without a package gets no hook;
the report says so and lists the settings to export instead.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from porter.errors import UsageError
from porter.recipe import LoadedRecipe, Runtime
from porter.rewrite import FileResult, RewriteResult
from porter.source import SourceTree
from porter.transforms import Change, Safety

HELPER_MODULE = "_porter_npu"
RUNTIME_FUNCTION = "_porter_npu_runtime"
_HELPER_NAME = re.compile(r"\b_porter_[A-Za-z0-9_]+\b")
_DEF = re.compile(r"^def (_porter_\w+)\(", re.M)


@dataclass(frozen=True)
class Written:
    """What `finish` adds to a port: new files (path -> text) and the runtime report rows."""

    generated: dict[str, str]
    runtime: dict[str, Any]


# -- where helpers live -----------------------------------------------------------------------
def _remote_code(tree: SourceTree) -> set[str]:
    """Files that came from a `hub:` source (remote code loaded with trust_remote_code)."""
    roots = [s.root.resolve() for s in tree.sources if s.spec.kind == "hub"]
    if not roots:
        return set()
    out = set()
    for rel, disk in tree.files.items():
        d = disk.resolve()
        if any(d.is_relative_to(r) for r in roots):
            out.add(rel)
    return out


def package_of(path: str, files: set[str] | dict[str, Any]) -> str | None:
    """The top-level package of module `path`, when every directory down to it is a package."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2 or not path.endswith(".py"):
        return None
    for k in range(1, len(parts)):
        if "/".join(parts[:k]) + "/__init__.py" not in files:
            return None
    return parts[0]


def helper_modules(tree: SourceTree) -> dict[str, str]:
    """Module path -> the relative import of its package's helper module (`.._porter_npu`), for
    every Python module that can import it; the others define their helpers themselves."""
    remote = _remote_code(tree)
    out = {}
    for path in tree.files:
        if path in remote or package_of(path, tree.files) is None:
            continue
        depth = len(PurePosixPath(path).parts) - 1
        out[path] = "." * depth + HELPER_MODULE
    return out


def top_packages(tree: SourceTree) -> list[str]:
    """Top-level regular packages of the tree (not from remote code), sorted."""
    remote = _remote_code(tree)
    return sorted(
        PurePosixPath(p).parts[0] for p in tree.files
        if p.count("/") == 1 and p.endswith("/__init__.py") and p not in remote
    )


# -- the helper module ------------------------------------------------------------------------
def _existing_defs(text: str) -> dict[str, str]:
    """`def _porter_*` sources of a helper module porter wrote earlier (applying to patched code)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    lines = text.splitlines()
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_porter_") and node.name != RUNTIME_FUNCTION:
            out[node.name] = "\n".join(lines[node.lineno - 1:node.end_lineno])
    return out


def _imported_helpers(text: str) -> set[str]:
    """Helper names a module imports from its package's helper module."""
    if HELPER_MODULE not in text:
        return set()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    return {
        a.name for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == HELPER_MODULE and n.level > 0
        for a in n.names
    }


def _ordered(sources: dict[str, str]) -> list[str]:
    """Helper names, each after the helpers it calls, otherwise alphabetical."""
    out: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in out or name in seen:
            return
        for dep in sorted(set(_HELPER_NAME.findall(sources[name])) - {name}):
            if dep in sources:
                visit(dep, seen + (name,))
        out.append(name)

    for name in sorted(sources):
        visit(name, ())
    return out


def runtime_lines(runtime: Runtime) -> list[str]:
    """The body of `_porter_npu_runtime()`: one line per setting."""
    body = [f"        os.environ.setdefault({_py(k)}, {_py(v)})" for k, v in runtime.env.items()]
    if runtime.npu_options.jit_compile is not None:
        body += ["        import torch_npu", "",
                 f"        torch_npu.npu.set_compile_mode(jit_compile={runtime.npu_options.jit_compile!r})"]
    return body


def _py(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def module_text(recipe: str, helpers: list[tuple[str, str]], runtime: Runtime | None, package: str) -> str:
    head = [f'"""Helpers of the npu port of this package, written by porter (recipe {recipe}); the patched',
            "modules import what they call from here. Regenerated by `porter apply`; nothing here imports",
            'torch when the module is imported."""']
    parts = ["\n".join(head)]
    if runtime is not None and not runtime.empty:
        parts.append("import importlib.util\nimport os")
        parts.append("\n".join([
            f"def {RUNTIME_FUNCTION}():",
            '    """The recipe\'s npu runtime settings, called first thing in the package\'s __init__.py: only',
            "    where torch_npu is installed (an Ascend host), before torch_npu initialises; a variable the",
            '    user already set is kept."""',
            '    if importlib.util.find_spec("torch_npu") is not None:',
            *runtime_lines(runtime),
        ]))
    parts += [src.strip() for _, src in helpers]
    text = parts[0] + "\n"
    for p in parts[1:]:
        text += ("\n\n" if p.startswith("def") else "\n") + p + "\n"
    return text


# -- the hook in __init__.py ------------------------------------------------------------------
HOOK = (f"from .{HELPER_MODULE} import {RUNTIME_FUNCTION}", f"{RUNTIME_FUNCTION}()")


def with_hook(text: str) -> tuple[str, int] | None:
    """`text` (an `__init__.py`) with the runtime hook after its docstring and `__future__`
    imports, and the hook's first line; None when the text already has it or cannot be read."""
    if f"{RUNTIME_FUNCTION}()" in text:
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    nl = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    after = 0  # insert after this many lines
    body = tree.body
    for i, node in enumerate(body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if docstring or future:
            after = node.end_lineno or after
        else:
            if after == 0:
                # Right above the first statement, and above a comment that sits directly on it,
                # unless that comment runs up to the top of the file (a licence header).
                after = node.lineno - 1
                while after > 0 and lines[after - 1].lstrip().startswith("#"):
                    after -= 1
                if after == 0:
                    after = node.lineno - 1
            break
    else:
        if not body:
            after = len(lines)
    if after > 0 and after <= len(lines) and not lines[after - 1].endswith(("\n", "\r")):
        lines[after - 1] += nl
    hook = [line + nl for line in HOOK]
    return "".join(lines[:after] + hook + lines[after:]), after + 1


# -- putting it together ----------------------------------------------------------------------
def finish(loaded: LoadedRecipe, tree: SourceTree, result: RewriteResult) -> tuple[RewriteResult, Written]:
    """Write each package's helper module and runtime hook; report helpers where they are written.

    `result` holds, for modules inside packages, "helper-source" changes (a helper a module
    needs); they become "helper" changes of `<package>/_porter_npu.py`, one per helper."""
    recipe = loaded.recipe
    runtime = recipe.runtime if recipe.runtime is not None and not recipe.runtime.empty else None
    texts: dict[str, str] = {}
    for fr in result.files:
        if fr.status == "changed" and fr.text is not None:
            texts[fr.path] = fr.text
    wanted: dict[str, dict[str, tuple[str, Change]]] = {}  # package -> name -> (source, first change)
    for fr in result.files:
        for c in fr.changes:
            if c.kind != "helper-source":
                continue
            pkg = package_of(c.file, tree.files)
            assert pkg is not None, c.file
            name = _DEF.search(c.after).group(1)  # type: ignore[union-attr]
            have = wanted.setdefault(pkg, {}).get(name)
            if have is not None and have[0] != c.after:
                raise UsageError(
                    f"{loaded.path}: steps {have[1].step} ({have[1].transform}) and {c.step} ({c.transform}) need"
                    f" different versions of helper {name} in package {pkg} (their `on:` device lists differ);"
                    " give them the same `on:`"
                )
            if have is None:
                wanted[pkg][name] = (c.after, c)
    hooks = top_packages(tree) if runtime is not None else []
    packages = sorted(set(wanted) | set(hooks) | {
        PurePosixPath(p).parts[0] for p in tree.files if PurePosixPath(p).name == HELPER_MODULE + ".py"
        and package_of(p, tree.files)
    })
    generated: dict[str, str] = {}
    replaced: dict[str, FileResult] = {}
    helper_rows: list[Change] = []
    rows: dict[str, Any] = {"settings": [], "applied_in": [], "not_applied": None,
                            "helper_modules": [], "per_module_helpers": []}
    for pkg in packages:
        path = f"{pkg}/{HELPER_MODULE}.py"
        old_text = _read(tree, path)
        existing = _existing_defs(old_text) if old_text is not None else {}
        sources = {name: src for name, (src, _) in wanted.get(pkg, {}).items()}
        needed = set(sources)
        for p in tree.files:
            if p.startswith(pkg + "/") and p.endswith(".py") and p != path:
                needed |= _imported_helpers(texts[p] if p in texts else (_read(tree, p) or ""))
        if RUNTIME_FUNCTION in needed and pkg not in hooks:
            raise UsageError(f"{pkg}/__init__.py calls {RUNTIME_FUNCTION}() from an earlier port, but the recipe has"
                             " no runtime: section now; apply the recipe to the pristine upstream")
        needed.discard(RUNTIME_FUNCTION)  # written from the recipe, below
        # the helpers those build on
        todo = list(needed)
        while todo:
            name = todo.pop()
            src = sources.get(name) or existing.get(name)
            if src is None:
                raise UsageError(f"{path}: patched modules import {name}, which porter has no source for;"
                                 " apply the recipe to the pristine upstream")
            sources[name] = src
            for dep in set(_HELPER_NAME.findall(src)) - set(sources) - {name}:
                if dep in existing:
                    todo.append(dep)
                    sources[dep] = existing[dep]
        if not sources and pkg not in hooks:
            continue
        names = _ordered(sources)
        text = module_text(recipe.name, [(n, sources[n]) for n in names], runtime if pkg in hooks else None, pkg)
        if any("\r\n" in t for p, t in texts.items() if p.startswith(pkg + "/")):
            text = text.replace("\n", "\r\n")  # the package's own line endings (CRLF files stay CRLF)
        lines = text.splitlines()
        for n in (names if old_text != text else ()):  # a module written as it was changes nothing
            line = next(i for i, ln in enumerate(lines, 1) if ln.startswith(f"def {n}("))
            first = wanted.get(pkg, {}).get(n, (None, None))[1]
            helper_rows.append(Change(
                file=path, line=line, end_line=line + sources[n].count("\n"),
                transform=first.transform if first else "(earlier port)", before="", after=sources[n].strip(),
                safety=first.safety if first else Safety.SAFE,
                reason="helper written once for the package; the modules that call it import it",
                step=first.step if first else None, kind="helper",
            ))
        rows["helper_modules"].append({"path": path, "helpers": names})
        if old_text is None:
            generated[path] = text
        elif old_text != text:
            replaced[path] = FileResult(path, "changed", changes=(), text=text)
        if pkg in hooks:
            init = f"{pkg}/__init__.py"
            base = texts.get(init, _read(tree, init) or "")
            hooked = with_hook(base)
            line = _hook_line(base) if hooked is None else hooked[1]
            if hooked is not None:
                prev = next((f for f in result.files if f.path == init), None)
                changes = tuple(prev.changes) if prev is not None and prev.status == "changed" else ()
                changes += (Change(
                    file=init, line=hooked[1], end_line=hooked[1] + 1, transform="runtime", before="",
                    after="\n".join(HOOK), safety=Safety.NPU_ONLY,
                    reason="applies the recipe's runtime: settings when the package is imported, before it"
                           " imports torch; only where torch_npu is installed",
                    kind="runtime",
                ),)
                replaced[init] = FileResult(init, "changed", changes=changes,
                                            findings=prev.findings if prev else (), text=hooked[0])
            rows["applied_in"].append({"package": pkg, "hook": f"{init}:{line}", "function": f"{path}:"
                                       + str(next(i for i, ln in enumerate(lines, 1)
                                                  if ln.startswith(f"def {RUNTIME_FUNCTION}(")))})
    if runtime is not None:
        rows["settings"] = [{"kind": "env", "name": k, "value": v} for k, v in runtime.env.items()]
        if runtime.npu_options.jit_compile is not None:
            rows["settings"].append({"kind": "npu_option", "name": "jit_compile",
                                     "value": runtime.npu_options.jit_compile,
                                     "call": f"torch_npu.npu.set_compile_mode(jit_compile={runtime.npu_options.jit_compile!r})"})
        if not hooks:
            rows["not_applied"] = ("the patched tree has no package whose import could apply them; set them in"
                                   " the environment before starting Python: "
                                   + " ".join(f"{k}={v}" for k, v in runtime.env.items()))
    rows["per_module_helpers"] = sorted({c.file for c in result.changes if c.kind == "helper"})
    if runtime is not None and hooks:
        remote = _remote_code(tree)
        rows["outside"] = sorted(p for p in tree.files if p.endswith(".py")
                                 and (PurePosixPath(p).parts[0] not in hooks or p in remote))
    files = []
    for fr in result.files:
        fr = replaced.pop(fr.path, fr)
        changes = tuple(c for c in fr.changes if c.kind != "helper-source")
        files.append(replace(fr, changes=changes))
    files += [replaced[p] for p in sorted(replaced)]
    files = [replace(f, changes=f.changes + tuple(c for c in helper_rows if c.file == f.path)) for f in files]
    placed = {f.path for f in files}
    extra = tuple(c for c in helper_rows if c.file not in placed)
    new_result = RewriteResult(files=tuple(sorted(files, key=lambda f: f.path)), extra_changes=extra)
    return new_result, Written(generated=generated, runtime=rows)


def _hook_line(text: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip() == f"{RUNTIME_FUNCTION}()":
            return i
    return 0


def _read(tree: SourceTree, path: str) -> str | None:
    disk = tree.files.get(path)
    if disk is None:
        return None
    try:
        return disk.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
