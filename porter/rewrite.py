"""Run a recipe's steps over a source tree. Per-file work returns values and never raises.

For each file, the steps whose `files:` globs match are applied in order. A cheap text
pre-filter decides whether a transform could matter before anything is parsed; a Python file is
parsed once and the libcst module is handed from step to step. A file that is not UTF-8 or does
not parse is copied unchanged and reported. Files run in parallel when there are enough of them.
"""

from __future__ import annotations

import difflib
import functools
import io
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import tokenize
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

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
    exclude_symbols: tuple[str, ...] = ()

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
            # a class matches one character other than "/": `[!abc]` and `[^abc]` negate it, and a
            # "]" right after the opening (or after the negation) is a member, as in fnmatch
            k = i + 1 + (pattern[i + 1 : i + 2] in ("!", "^"))
            j = pattern.find("]", k + 1 if pattern[k : k + 1] == "]" else k)
            if j == -1:
                out, i = out + re.escape(c), i + 1
            else:
                body = pattern[k:j].replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
                out, i = out + ("[^/" if k > i + 1 else "(?!/)[") + body + "]", j + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def map_line(old: list[str], new: list[str], line: int) -> int:
    """Where 1-based `line` of `old` is in `new`; a replaced line maps to its counterpart in the
    replacement (the same offset, clamped to the replacement's length)."""
    return _map_line(difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes(), len(new), line)


def _map_line(opcodes: list[tuple[str, int, int, int, int]], new_len: int, line: int) -> int:
    """map_line with the diff's opcodes computed once (a file's changes all map through them)."""
    for tag, i1, i2, j1, j2 in opcodes:
        if i1 <= line - 1 < i2:
            offset = line - 1 - i1
            if tag != "equal":
                offset = min(offset, max(j2 - j1 - 1, 0))
            return j1 + offset + 1
    return new_len


def rewrite_file(path: str, data: bytes, steps: tuple[StepPlan, ...], helper_module: str | None = None) -> FileResult:
    """Apply every step that wants `path`; never raises. `helper_module`: see Context."""
    wanted = [s for s in steps if s.wants(path)]
    if not wanted:
        return FileResult(path, "unchanged")
    if len(data) > MAX_FILE_BYTES:
        return FileResult(path, "skipped", f"{len(data)} bytes, above porter's limit of {MAX_FILE_BYTES}"
                          " bytes per file (PORTER_MAX_FILE_BYTES): copied unchanged")
    try:
        original = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileResult(path, "skipped", f"not UTF-8 (byte {exc.start}): copied unchanged")
    text = original
    roundtrip: str | None = None  # libcst's rendering of the unchanged original
    module: cst.Module | None = None
    wrapper: MetadataWrapper | None = None
    stages: list[tuple[str, list[Change]]] = []  # (text the step received, its changes)
    findings: list[tuple[int, Finding]] = []  # (number of stages before the step, finding)
    nested_ok: str | None = None  # the text nesting_problem() last passed
    for step in wanted:
        t = step.transform
        if not t.could_match(text):
            continue
        ctx = Context(path=path, step=step.index, exclude_symbols=step.exclude_symbols, helper_module=helper_module)
        try:
            if isinstance(t, PythonTransform) and path.endswith((".py", ".pyi")):
                if module is None and nested_ok is not text:
                    deep = nesting_problem(text)
                    if deep is not None:
                        return FileResult(path, "skipped", f"{deep}: copied unchanged")
                    nested_ok = text
                if not t.acts_on(path, text):  # the analysis (an `ast` pass) finds no site of its own
                    continue
                if module is None:
                    try:
                        module = cst.parse_module(text)
                    except cst.ParserSyntaxError as exc:
                        where = f"line {exc.raw_line}, column {exc.raw_column}"
                        if text is original:
                            return FileResult(path, "skipped", f"does not parse ({where}): copied unchanged")
                        return FileResult(path, "failed", f"step {step.index} produced code that does not"
                                          f" parse ({where}); file copied unchanged")
                    if text is original:
                        roundtrip = module.code
                before = module
                module, outcome = t.apply_module(module, ctx, wrapper=wrapper, text=text)
                wrapper = t.last_wrapper if module is before else None
            else:
                outcome = t.apply(text, ctx)
                module = None
        except Exception as exc:  # a transform bug must not take the run down
            return FileResult(path, "failed", f"step {step.index} ({t.name}) raised"
                              f" {_describe(exc)}; file copied unchanged")
        findings.extend((len(stages), replace(f, step=step.index)) for f in outcome.findings)
        if outcome.changes:
            stages.append((text, [replace(c, step=step.index) for c in outcome.changes]))
            text = outcome.text
    if not stages:
        return FileResult(path, "unchanged", findings=tuple(f for _, f in findings))
    if roundtrip is not None and roundtrip != original:
        kept = keep_original_bytes(original, roundtrip, text)
        if kept is None:
            return FileResult(path, "skipped", "libcst cannot reproduce this file byte for byte (it drops"
                              " characters such as form feeds on lines porter would change): copied unchanged")
        text = kept
    # Report lines in the patched file: carry each change and finding through the later steps.
    final = _lines(text)
    texts = [_lines(s[0]) for s in stages] + [final]
    diffs: dict[int, list[tuple[str, int, int, int, int]]] = {}  # stage -> opcodes to the next text

    def carry(line: int, k: int) -> int:
        for i in range(k, len(texts) - 1):
            ops = diffs.get(i)
            if ops is None:
                ops = diffs[i] = difflib.SequenceMatcher(None, texts[i], texts[i + 1], autojunk=False).get_opcodes()
            line = _map_line(ops, len(texts[i + 1]), line)
        return line

    changes: list[Change] = []
    for k, (_, stage_changes) in enumerate(stages):
        for c in stage_changes:
            line = carry(c.line, k)
            changes.append(replace(c, line=line, end_line=line + c.after.count("\n")))
    moved = tuple(replace(f, line=carry(f.line, k)) for k, f in findings)
    return FileResult(path, "changed", changes=tuple(changes), findings=moved, text=text)


# Limits that keep one hostile file from crashing or stalling a run (README: Output safety).
MAX_FILE_BYTES = int(os.environ.get("PORTER_MAX_FILE_BYTES") or 8 * 2**20)
MAX_BRACKETS = int(os.environ.get("PORTER_MAX_BRACKETS") or 200)  # CPython refuses deeper nesting too
MAX_EXPRESSION_DEPTH = int(os.environ.get("PORTER_MAX_EXPRESSION_DEPTH") or 1000)
FILE_TIMEOUT_S = float(os.environ.get("PORTER_FILE_TIMEOUT") or 120)
_CHAIN_RESET = {",", ":", ";", "=", "->", ":=", "+=", "-=", "*=", "/=", "//=", "%=", "@=", "&=", "|=", "^=",
                ">>=", "<<=", "**="}
_CHAIN_WORDS = {"and", "or", "not", "in", "is", "if", "else", "await", "lambda"}


def nesting_problem(text: str) -> str | None:
    """Why libcst must not be given `text`, or None. Cheap: one pass of the tokenizer, no tree.

    libcst's parser and visitors recurse once per level of nesting: thousands of brackets overflow the
    native stack (a segmentation fault), long `a+a+...` or `a.b.c...` chains recurse once per link.
    The estimate per expression is its bracket depth plus the operators, dots and adjacent strings
    chained at each open level (commas and colons start a new element).
    """
    stack = [0]
    total = best = 0
    best_line = 1
    previous_string = False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            kind, s = tok.type, tok.string
            if kind == tokenize.OP:
                if s in "([{":
                    stack.append(0)
                    if len(stack) - 1 > MAX_BRACKETS:
                        return (f"brackets nested deeper than {MAX_BRACKETS} at line {tok.start[0]}"
                                " (CPython refuses such code too)")
                elif s in ")]}":
                    if len(stack) > 1:
                        total -= stack.pop()
                elif s in _CHAIN_RESET:
                    total -= stack[-1]
                    stack[-1] = 0
                else:
                    stack[-1] += 1
                    total += 1
            elif kind == tokenize.NAME and s in _CHAIN_WORDS or kind == tokenize.STRING and previous_string:
                stack[-1] += 1
                total += 1
            elif kind in (tokenize.NEWLINE, tokenize.ENDMARKER):
                stack, total = [0], 0
            previous_string = kind == tokenize.STRING
            depth = len(stack) - 1 + total
            if depth > best:
                best, best_line = depth, tok.start[0]
            if best > MAX_EXPRESSION_DEPTH:
                return (f"an expression nested or chained about {best} deep at line {best_line}, beyond porter's"
                        f" limit of {MAX_EXPRESSION_DEPTH} (PORTER_MAX_EXPRESSION_DEPTH)")
    except (tokenize.TokenError, SyntaxError, ValueError):
        return None  # libcst reports what does not parse
    return None


def _describe(exc: BaseException) -> str:
    """`Type: message`, short, even when the message is huge or cannot be built (a deep node's repr)."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - RecursionError, MemoryError from a repr
        text = "(message could not be shown)"
    return f"{type(exc).__name__}: {text[:300] + ' ...' if len(text) > 300 else text}"


def _lines(text: str) -> list[str]:
    """Lines as Python and libcst count them (\\r\\n, \\r or \\n; a form feed or \\u2028 is not a line end)."""
    lines = re.split(r"\r\n|[\r\n]", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _lines_ends(text: str) -> list[str]:
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", text)


def keep_original_bytes(original: str, roundtrip: str, final: str) -> str | None:
    """`final` with the bytes libcst dropped from `original` put back (a UTF-8 BOM, a form feed that
    starts a line, the last "\\r" of a file with old Mac line ends): lines the rewrite left alone are taken from `original` verbatim, and a rewritten
    line gets back the characters libcst dropped before it. None when that cannot be done exactly.
    """
    o, r, f = _lines_ends(original), _lines_ends(roundtrip), _lines_ends(final)
    if len(o) != len(r):
        return None
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, r, f, autojunk=False).get_opcodes():
        if tag == "equal":
            out += o[i1:i2]
            continue
        new = f[j1:j2]
        for k in range(i1, i2):
            if o[k] == r[k]:
                continue
            if k - i1 >= len(new):
                return None
            if o[k].endswith(r[k]):  # dropped before the line (a BOM, a form feed)
                new[k - i1] = o[k][: len(o[k]) - len(r[k])] + new[k - i1]
            elif o[k].startswith(r[k]) and k == len(o) - 1:  # dropped at the end of the file
                new[k - i1] += o[k][len(r[k]):]
            else:
                return None
        out += new
    return "".join(out)


_STEPS: tuple[StepPlan, ...] = ()
_HELPERS: dict[str, str] = {}
_CRASH_ON = "_PORTER_TEST_CRASH_ON"  # tests/test_rewrite_limits.py: a worker dies on this file


def _serve(conn: Connection) -> None:
    """A worker: rewrite the files it is sent, one at a time, until it is sent None.

    Runs in a thread with a large stack and a high recursion limit, so deep but legal code (a hundred
    nested blocks, a long chain) is handled instead of failing with RecursionError.
    """
    sys.setrecursionlimit(30_000)
    threading.stack_size(512 * 2**20)
    box: list[FileResult] = []

    def one(path: str, disk: str) -> None:
        if os.environ.get(_CRASH_ON) == path:  # test hook: die like a segfault inside libcst would
            os.kill(os.getpid(), signal.SIGSEGV)
        try:
            box.append(rewrite_file(path, Path(disk).read_bytes(), _STEPS, _HELPERS.get(path)))
        except BaseException as exc:  # noqa: BLE001 - reported for this file, the worker lives on
            box.append(FileResult(path, "failed", f"porter failed on this file ({_describe(exc)});"
                                  " copied unchanged"))

    while True:
        job = conn.recv()
        if job is None:
            return
        box.clear()
        t = threading.Thread(target=one, args=job)
        t.start()
        t.join()
        conn.send(box[0])


class _Pool:
    """Fork workers; each file gets `timeout` seconds; a worker that dies or overruns is replaced.

    (concurrent.futures would mark the whole pool broken when one worker dies, losing every file.)
    """

    def __init__(self, jobs: int, timeout: float):
        self.ctx = multiprocessing.get_context("fork")
        self.jobs, self.timeout = jobs, timeout
        self.idle: list[tuple[Any, Connection]] = []
        self.busy: dict[Connection, tuple[Any, str, float]] = {}

    def _spawn(self) -> tuple[Any, Connection]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child,), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def run(self, jobs: list[tuple[str, str]]) -> Iterator[FileResult]:
        pending = list(reversed(jobs))
        try:
            while pending or self.busy:
                while pending and len(self.busy) < self.jobs:
                    proc, conn = self.idle.pop() if self.idle else self._spawn()
                    path, disk = pending[-1]
                    try:
                        conn.send((path, disk))
                    except OSError:  # an idle worker that died in between: start another
                        conn.close()
                        proc.kill()
                        proc.join(5)
                        continue
                    pending.pop()
                    self.busy[conn] = (proc, path, time.monotonic() + self.timeout)
                left = min(d for _, _, d in self.busy.values()) - time.monotonic()
                ready = wait(list(self.busy), timeout=max(left, 0))
                for conn in ready:
                    proc, path, _ = self.busy.pop(conn)  # type: ignore[arg-type]
                    try:
                        yield conn.recv()  # type: ignore[union-attr]
                        self.idle.append((proc, conn))  # type: ignore[arg-type]
                    except (EOFError, OSError):
                        proc.join(5)
                        code = proc.exitcode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        conn.close()  # type: ignore[union-attr]
                        yield FileResult(path, "failed", f"the rewriter process died on this file ({how},"
                                         " e.g. a crash inside libcst); copied unchanged")
                now = time.monotonic()
                for conn, (proc, path, deadline) in list(self.busy.items()):
                    if now >= deadline:
                        del self.busy[conn]
                        proc.kill()
                        proc.join(5)
                        conn.close()
                        yield FileResult(path, "failed", f"took longer than {self.timeout:g} s, porter's limit per"
                                         " file (PORTER_FILE_TIMEOUT); copied unchanged")
        finally:
            for proc, conn in self.idle:
                try:
                    conn.send(None)
                except OSError:
                    pass
                conn.close()
            for proc, _, _ in self.busy.values():
                proc.kill()
            for proc, _ in self.idle:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
            for proc, _, _ in self.busy.values():
                proc.join(5)


def rewrite_tree(files: dict[str, Path], steps: tuple[StepPlan, ...], jobs: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 helper_modules: dict[str, str] | None = None) -> RewriteResult:
    """Rewrite every file of a tree; files no step wants are reported unchanged without reading.

    Where the platform can fork, files are rewritten in worker processes, so a file that crashes
    libcst or runs past the time limit is reported as failed and the rest go on.
    `progress(done, total)` is called as each file the steps want is finished (porter.progress).
    `helper_modules`: path -> where that module imports porter's helpers from (porter.runtime).
    """
    global _STEPS, _HELPERS
    helper_modules = helper_modules or {}
    candidates = sorted(p for p in files if any(s.wants(p) for s in steps))
    results = {p: FileResult(p, "unchanged") for p in files}
    jobs = jobs or min(len(candidates) // 8 + 1, os.cpu_count() or 1)
    done, total = 0, len(candidates)
    if not candidates:
        pass
    elif "fork" not in multiprocessing.get_all_start_methods():
        for p in candidates:
            results[p] = rewrite_file(p, files[p].read_bytes(), steps, helper_modules.get(p))
            done += 1
            if progress is not None:
                progress(done, total)
    else:
        _STEPS, _HELPERS = steps, helper_modules  # inherited by forked workers; nothing is pickled but paths and results
        try:
            # Largest files first, one at a time: a few big modules dominate the work.
            order = sorted(candidates, key=lambda p: -files[p].stat().st_size)
            for res in _Pool(jobs, FILE_TIMEOUT_S).run([(p, str(files[p])) for p in order]):
                results[res.path] = res
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            _STEPS, _HELPERS = (), {}
    return RewriteResult(files=tuple(results[p] for p in sorted(results)))
