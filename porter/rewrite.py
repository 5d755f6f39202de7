"""Run a recipe's steps over a source tree. Per-file work returns values and never raises.

For each file, the steps whose `files:` globs match are applied in order. A cheap text
pre-filter decides whether a transform could matter before anything is parsed; a Python file is
parsed once and the libcst module is handed from step to step. A file that is not UTF-8 or does
not parse is copied unchanged and reported. Files run in parallel when there are enough of them.
"""

from __future__ import annotations

import difflib
import functools
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import libcst as cst
from libcst.metadata import MetadataWrapper

from porter.transforms import Change, Context, Finding, PythonTransform, Transform

Status = Literal["changed", "unchanged", "skipped", "failed"]


@dataclass(frozen=True)
class StepPlan:
    index: int  # 1-based, as shown to users
    transform: Transform
    files: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def wants(self, path: str) -> bool:
        return any(_glob(g).match(path) for g in self.files) and not any(
            _glob(g).match(path) for g in self.exclude
        )


@dataclass(frozen=True)
class FileResult:
    path: str
    status: Status
    reason: str = ""
    changes: tuple[Change, ...] = ()
    findings: tuple[Finding, ...] = ()
    text: str | None = None  # the new text when status == "changed"


@dataclass(frozen=True)
class RewriteResult:
    files: tuple[FileResult, ...]
    # changes in files porter generated rather than rewrote (the package's helper module: porter.runtime)
    extra_changes: tuple[Change, ...] = ()

    def by_status(self, status: Status) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def changes(self) -> list[Change]:
        return [c for f in self.files for c in f.changes] + list(self.extra_changes)

    @property
    def findings(self) -> list[Finding]:
        return [x for f in self.files for x in f.findings]

    def matched(self, step: int) -> int:
        """Rewrites a step made (helpers it wrote into modules are not counted)."""
        return sum(1 for c in self.changes if c.step == step and c.kind == "rewrite")


@functools.lru_cache(maxsize=None)
def _glob(pattern: str) -> re.Pattern[str]:
    """`**` spans directories, `*` and `?` stay inside one, like git's wildmatch."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            j = pattern.find("]", i)
            if j == -1:
                out, i = out + re.escape(c), i + 1
            else:
                out, i = out + pattern[i : j + 1], j + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def map_line(old: list[str], new: list[str], line: int) -> int:
    """Where 1-based `line` of `old` is in `new`; a replaced line maps to its counterpart in the
    replacement (the same offset, clamped to the replacement's length)."""
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if i1 <= line - 1 < i2:
            offset = line - 1 - i1
            if tag != "equal":
                offset = min(offset, max(j2 - j1 - 1, 0))
            return j1 + offset + 1
    return len(new)


def rewrite_file(path: str, data: bytes, steps: tuple[StepPlan, ...], helper_module: str | None = None) -> FileResult:
    """Apply every step that wants `path`; never raises. `helper_module`: see Context."""
    wanted = [s for s in steps if s.wants(path)]
    if not wanted:
        return FileResult(path, "unchanged")
    try:
        original = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileResult(path, "skipped", f"not UTF-8 (byte {exc.start}): copied unchanged")
    text = original
    module: cst.Module | None = None
    wrapper: MetadataWrapper | None = None
    stages: list[tuple[str, list[Change]]] = []  # (text the step received, its changes)
    findings: list[tuple[int, Finding]] = []  # (number of stages before the step, finding)
    for step in wanted:
        t = step.transform
        if not t.could_match(text):
            continue
        ctx = Context(path=path, step=step.index, helper_module=helper_module)
        try:
            if isinstance(t, PythonTransform) and path.endswith((".py", ".pyi")):
                if module is None:
                    try:
                        module = cst.parse_module(text)
                    except cst.ParserSyntaxError as exc:
                        where = f"line {exc.raw_line}, column {exc.raw_column}"
                        if text is original:
                            return FileResult(path, "skipped", f"does not parse ({where}): copied unchanged")
                        return FileResult(path, "failed", f"step {step.index} produced code that does not"
                                          f" parse ({where}); file copied unchanged")
                before = module
                module, outcome = t.apply_module(module, ctx, wrapper=wrapper, text=text)
                wrapper = t.last_wrapper if module is before else None
            else:
                outcome = t.apply(text, ctx)
                module = None
        except Exception as exc:  # a transform bug must not take the run down
            return FileResult(path, "failed", f"step {step.index} ({t.name}) raised"
                              f" {type(exc).__name__}: {exc}; file copied unchanged")
        findings.extend((len(stages), replace(f, step=step.index)) for f in outcome.findings)
        if outcome.changes:
            stages.append((text, [replace(c, step=step.index) for c in outcome.changes]))
            text = outcome.text
    if not stages:
        return FileResult(path, "unchanged", findings=tuple(f for _, f in findings))
    # Report lines in the patched file: carry each change and finding through the later steps.
    final = text.splitlines()
    texts = [s[0].splitlines() for s in stages] + [final]

    def carry(line: int, k: int) -> int:
        for a, b in zip(texts[k:], texts[k + 1 :]):
            line = map_line(a, b, line)
        return line

    changes: list[Change] = []
    for k, (_, stage_changes) in enumerate(stages):
        for c in stage_changes:
            line = carry(c.line, k)
            changes.append(replace(c, line=line, end_line=line + c.after.count("\n")))
    moved = tuple(replace(f, line=carry(f.line, k)) for k, f in findings)
    return FileResult(path, "changed", changes=tuple(changes), findings=moved, text=text)


def _worker(job: tuple[str, str]) -> FileResult:
    path, disk = job
    return rewrite_file(path, Path(disk).read_bytes(), _STEPS, _HELPERS.get(path))


_STEPS: tuple[StepPlan, ...] = ()
_HELPERS: dict[str, str] = {}


def rewrite_tree(files: dict[str, Path], steps: tuple[StepPlan, ...], jobs: int | None = None,
                 helper_modules: dict[str, str] | None = None) -> RewriteResult:
    """Rewrite every file of a tree; files no step wants are reported unchanged without reading.

    `helper_modules`: path -> where that module imports porter's helpers from (porter.runtime)."""
    global _STEPS, _HELPERS
    helper_modules = helper_modules or {}
    candidates = sorted(p for p in files if any(s.wants(p) for s in steps))
    results = {p: FileResult(p, "unchanged") for p in files}
    jobs = jobs or min(len(candidates) // 8 + 1, os.cpu_count() or 1)
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for p in candidates:
            results[p] = rewrite_file(p, files[p].read_bytes(), steps, helper_modules.get(p))
    else:
        _STEPS, _HELPERS = steps, helper_modules  # inherited by forked workers; nothing is pickled but paths and results
        try:
            ctx = multiprocessing.get_context("fork")
            # Largest files first, one at a time: a few big modules dominate the work.
            order = sorted(candidates, key=lambda p: -files[p].stat().st_size)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                for res in pool.map(_worker, [(p, str(files[p])) for p in order], chunksize=1):
                    results[res.path] = res
        finally:
            _STEPS, _HELPERS = (), {}
    return RewriteResult(files=tuple(results[p] for p in sorted(results)))
