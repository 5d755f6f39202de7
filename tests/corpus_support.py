"""The corpus: real PyPI packages porter has never seen, each with an audit written by reading it.

An audit (`tests/corpus/<package>.audit.json`, format in ../shared/AUDIT.md) is the answer key for
one pinned package: every line a correct dual-backend port must change (`change`), must leave
byte-identical (`keep`) or must put in front of a reviewer (`decision`). This module fetches the
pinned archive (cached, never built), checks that the audit still describes it (drift), runs
porter's generic steps over it through the installed `porter` executable, and grades the result:

    audit = load_audit(CORPUS_DIR / "outetts.audit.json")
    root = fetch(audit)                      # cached; raises Unreachable when the index is not
    assert audit_drift(audit, root) == []
    run = port(audit, root, work_dir)        # porter apply --no-smoke --json on a temp recipe
    g = grade(audit, root, run.patched_root, run.report)
    print(g.figures())                       # change hit 7/9, decision covered 3/4, keep violated 1/5

`grade` reads only the original tree, the patched tree and porter's report (its findings), so any
producer of a patched tree and a report (e.g. `porter init`) can be graded the same way.
"""

from __future__ import annotations

import configparser
import difflib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

CORPUS_DIR = Path(__file__).parent / "corpus"

# The generic steps, in the README's order ("model-specific edits and lazy-import first, then
# attention-fallback, compile-bypass, autocast-device, hardcoded-device, mem-get-info, cuda-api,
# widen-device-check, and import-order last"). lazy-import and guard-import need parameters (which
# package to move or guard), so a package porter has never seen gets none of them.
GENERIC_STEPS = ("attention-fallback", "compile-bypass", "autocast-device", "hardcoded-device",
                 "mem-get-info", "cuda-api", "widen-device-check", "import-order")

SEVERITIES = ("change", "decision", "keep", "cosmetic")
SCOPES = ("inference", "train", "tools")
CATEGORIES = ("device_check", "compile_gate", "kernel_gate", "hardcoded_device", "cuda_api", "autocast",
              "compile", "attention_backend", "cuda_only_import", "custom_kernel", "dtype", "other")


class Unreachable(Exception):
    """The package index cannot be reached and the archive is not cached: the test is skipped."""


class AuditError(Exception):
    """An audit file is malformed, or no longer matches the pinned package (drift)."""


def code_sha1(line: str) -> str:
    """The audit's fingerprint of a source line: sha1 of the stripped line, first 12 hex digits."""
    return hashlib.sha1(line.strip().encode("utf-8")).hexdigest()[:12]


# -- the audit ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    file: str
    line: int
    code_sha1: str
    category: str
    severity: str
    scope: str
    expected: str
    no_import_above: bool = False  # keep: no import may come to run before this line
    wrong_if: str | None = None  # change/decision: a regex over the patched lines around the site
    #   that marks an edit as wrong (e.g. an npu branch porter wrote where npu cannot reach it)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Audit:
    path: Path
    package: str
    version: str
    archive: str
    sha256: str
    notes: str
    subsystems: tuple[dict[str, Any], ...]
    sites: tuple[Site, ...]
    expected_failures: dict[str, str]  # failure id -> why porter fails it today

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_wheel(self) -> bool:
        return self.archive.endswith(".whl")

    def by_severity(self, severity: str) -> list[Site]:
        return [s for s in self.sites if s.severity == severity]


def load_audit(path: Path) -> Audit:
    """Read and validate one audit file; every problem is reported at once, naming the entry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the audit: {exc}") from None
    problems = []
    for key in ("package", "version", "archive", "sha256", "notes", "subsystems", "sites"):
        if key not in data:
            problems.append(f"{path}: missing top-level field {key!r}")
    sites = []
    for i, raw in enumerate(data.get("sites", [])):
        where = f"{path}: sites[{i}] ({raw.get('file')}:{raw.get('line')})"
        unknown = set(raw) - {"file", "line", "code_sha1", "category", "severity", "scope", "expected",
                              "no_import_above", "wrong_if"}
        if raw.get("wrong_if") is not None:
            try:
                re.compile(raw["wrong_if"])
            except re.error as exc:
                problems.append(f"{where}: wrong_if is not a regular expression: {exc}")
        if unknown:
            problems.append(f"{where}: unknown field(s) {sorted(unknown)}")
        if raw.get("severity") not in SEVERITIES:
            problems.append(f"{where}: severity must be one of {SEVERITIES}")
        if raw.get("scope") not in SCOPES:
            problems.append(f"{where}: scope must be one of {SCOPES}")
        if raw.get("category") not in CATEGORIES:
            problems.append(f"{where}: category must be one of {CATEGORIES}")
        if not re.fullmatch(r"[0-9a-f]{12}", str(raw.get("code_sha1", ""))):
            problems.append(f"{where}: code_sha1 must be 12 lowercase hex digits")
        if not isinstance(raw.get("line"), int) or raw["line"] < 1:
            problems.append(f"{where}: line must be a positive integer")
        if not str(raw.get("expected", "")).strip():
            problems.append(f"{where}: expected must say what a correct port does here")
        if not problems:
            sites.append(Site(**{k: raw[k] for k in raw}))
    ids = Counter(s.id for s in sites)
    problems += [f"{path}: site {k} is listed {n} times" for k, n in ids.items() if n > 1]
    failures: dict[str, str] = {}
    for i, raw in enumerate(data.get("expected_failures", [])):
        if not isinstance(raw, dict) or not raw.get("id") or not raw.get("reason"):
            problems.append(f"{path}: expected_failures[{i}] needs an 'id' and a 'reason'")
            continue
        failures[raw["id"]] = raw["reason"]
    if problems:
        raise AuditError("\n".join(problems))
    return Audit(path=path, package=data["package"], version=data["version"], archive=data["archive"],
                 sha256=data["sha256"], notes=data["notes"], subsystems=tuple(data["subsystems"]),
                 sites=tuple(sites), expected_failures=failures)


def all_audits() -> list[Audit]:
    return [load_audit(p) for p in sorted(CORPUS_DIR.glob("*.audit.json"))]


def audit_drift(audit: Audit, root: Path) -> list[str]:
    """Entries whose line no longer reads as audited (the package changed under the audit)."""
    out, cache = [], {}
    for s in audit.sites:
        if s.file not in cache:
            p = root / s.file
            cache[s.file] = p.read_text(encoding="utf-8").splitlines() if p.is_file() else None
        lines = cache[s.file]
        if lines is None:
            out.append(f"{s.id}: file not in {audit.archive}")
        elif s.line > len(lines):
            out.append(f"{s.id}: the file has only {len(lines)} lines")
        elif code_sha1(lines[s.line - 1]) != s.code_sha1:
            out.append(f"{s.id}: reads {lines[s.line - 1].strip()[:80]!r}, sha1 {code_sha1(lines[s.line - 1])}"
                       f" != audited {s.code_sha1}")
    return out


# -- fetching the pinned archive (cached, never built) ------------------------------------------
def cache_root() -> Path:
    base = os.environ.get("PORTER_CACHE") or Path.home() / ".cache" / "porter"
    return Path(base) / "corpus"


def index_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL, pip config), else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and not key.strip().endswith("extra-index-url"):
            return value.strip().strip("'\"").rstrip("/")
    return "https://pypi.org/simple"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _simple_files(name: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (url, sha256) from the index's simple API (PEP 691 JSON, or PEP 503 HTML)."""
    url = f"{index_url()}/{_normalise(name)}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body, ctype = resp.read(), resp.headers.get("Content-Type", "")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise Unreachable(f"the package index {url} cannot be reached ({exc})") from None
    if "json" in ctype:
        return {f["filename"]: (f["url"], f.get("hashes", {}).get("sha256")) for f in json.loads(body)["files"]}
    out = {}
    for href, fname in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', body.decode("utf-8", "replace")):
        target, _, frag = href.partition("#")
        out[fname.strip()] = (urllib.request.urljoin(url, target), frag[7:] if frag.startswith("sha256=") else None)
    return out


def _download_wheel(audit: Audit, dest: Path) -> Path:
    """pip download of the pinned wheel only (--only-binary: nothing is built)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "-d", str(dest), audit.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    path = dest / audit.archive
    if proc.returncode != 0 or not path.is_file():
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        if re.search(r"connection|resolve|network|timed out|No matching distribution", tail, re.I):
            raise Unreachable(f"pip cannot download {audit.requirement}: {tail}")
        raise AuditError(f"pip download {audit.requirement} did not give {audit.archive}: {tail}")
    return path


def _download_sdist(audit: Audit, dest: Path) -> Path:
    """The sdist archive itself, from the index's simple API: pip would run its build backend."""
    files = _simple_files(audit.package)
    if audit.archive not in files:
        raise AuditError(f"{index_url()} lists no {audit.archive} for {audit.package}")
    url, _ = files[audit.archive]
    path = dest / audit.archive
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(path, "wb") as out:
            shutil.copyfileobj(resp, out)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise Unreachable(f"cannot download {url} ({exc})") from None
    return path


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack a wheel or an sdist (its one top directory stripped); refuse links and '..'."""
    dest.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                p = PurePosixPath(info.filename)
                if p.is_absolute() or ".." in p.parts:
                    raise AuditError(f"{archive.name}: member {info.filename} points outside the tree")
            z.extractall(dest)
        return
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for m in members:
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                raise AuditError(f"{archive.name}: member {m.name} is a link or points outside the tree")
        t.extractall(dest, filter="data")
    tops = list(dest.iterdir())
    if len(tops) == 1 and tops[0].is_dir():
        inner = tops[0]
        for child in inner.iterdir():
            child.rename(dest / child.name)
        inner.rmdir()


def fetch(audit: Audit) -> Path:
    """The unpacked pinned archive, cached under $PORTER_CACHE/corpus/<archive>/tree."""
    base = cache_root() / audit.archive
    tree = base / "tree"
    if not tree.is_dir():
        base.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base.parent))
        try:
            archive = (_download_wheel if audit.is_wheel else _download_sdist)(audit, tmp)
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            if digest != audit.sha256:
                raise AuditError(f"{audit.archive}: sha256 {digest}, the audit pins {audit.sha256}:"
                                 " the index serves different bytes for this pinned version")
            _unpack(archive, tmp / "tree")
            archive.unlink()
            if base.exists():
                shutil.rmtree(base)
            tmp.rename(base)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return tree


# -- running porter -----------------------------------------------------------------------------
@dataclass
class PortRun:
    exit_code: int
    report: dict[str, Any]
    patched_root: Path
    stderr: str
    seconds: float


def porter_executable() -> str:
    exe = Path(sys.executable).with_name("porter")
    return str(exe) if exe.exists() else (shutil.which("porter") or "porter")


def write_recipe(audit: Audit, root: Path, work: Path, name: str, files: Iterable[str] | None = None) -> Path:
    """A recipe with a `path:` source and the generic steps, as a new user would write it."""
    import yaml

    source: dict[str, Any] = {"path": str(root)}
    if files is not None:
        source["files"] = sorted(files)
    recipe = {
        "porter": 1,
        "name": name,
        "description": f"{audit.requirement}: porter's generic steps, graded against tests/corpus",
        "source": source,
        "package": {"name": audit.package, "version": audit.version},
        "steps": [{"use": s} for s in GENERIC_STEPS],
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def port(audit: Audit, root: Path, work: Path, name: str | None = None,
         files: Iterable[str] | None = None, timeout: int = 1800) -> PortRun:
    """`porter apply RECIPE --no-smoke --json --out WORK/out` in a subprocess, as a user runs it."""
    import time

    name = name or f"corpus-{_normalise(audit.package)}"
    recipe = write_recipe(audit, root, work, name, files)
    out = work / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([porter_executable(), "apply", str(recipe), "--no-smoke", "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=work)
    seconds = time.perf_counter() - t0
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    return PortRun(proc.returncode, report, out / name, proc.stderr, seconds)


# -- grading (AUDIT.md) -------------------------------------------------------------------------
@dataclass(frozen=True)
class LineMap:
    """Where each original line went in the patched text (difflib opcodes)."""

    changed: frozenset[int]  # 0-based original lines replaced or deleted
    inserted_at: frozenset[int]  # original positions with new lines inserted before them
    to_patched: Mapping[int, int]  # 0-based original line -> 0-based patched line (equal lines)
    to_original: Mapping[int, int]  # the reverse

    @classmethod
    def of(cls, before: list[str], after: list[str]) -> "LineMap":
        changed, inserted, fwd, back = set(), set(), {}, {}
        sm = difflib.SequenceMatcher(None, before, after, autojunk=False)
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag == "equal":
                for k in range(i2 - i1):
                    fwd[i1 + k] = j1 + k
                    back[j1 + k] = i1 + k
            elif tag == "insert":
                inserted.add(i1)
            else:  # replace / delete
                changed.update(range(i1, i2))
        return cls(frozenset(changed), frozenset(inserted), fwd, back)

    def patched_window(self, line: int, after: list[str]) -> str:
        """The patched lines between the nearest unchanged lines around a 1-based original line."""
        i = line - 1
        lo = max((k for k in self.to_patched if k < i), default=None)
        hi = min((k for k in self.to_patched if k > i), default=None)
        start = self.to_patched[lo] if lo is not None else 0
        end = self.to_patched[hi] if hi is not None else len(after) - 1
        return "\n".join(after[start:end + 1])

    def touched(self, line: int) -> bool:
        """A 1-based original line changed, or lines were inserted right before or after it."""
        i = line - 1
        return i in self.changed or i in self.inserted_at or (i + 1) in self.inserted_at


@dataclass
class SiteResult:
    site: Site
    touched: bool
    reported: bool
    ok: bool
    why: str


@dataclass
class Grade:
    package: str
    results: list[SiteResult] = field(default_factory=list)
    not_compiling: dict[str, str] = field(default_factory=dict)  # file -> error
    files_changed: int = 0
    changes: int = 0
    findings: int = 0
    unaudited: list[str] = field(default_factory=list)  # original lines changed that no site names


    def of(self, severity: str, scope: str | None = None) -> list[SiteResult]:
        return [r for r in self.results if r.site.severity == severity and (scope is None or r.site.scope == scope)]

    def figures(self, scope: str | None = None) -> str:
        ch, de, ke = self.of("change", scope), self.of("decision", scope), self.of("keep", scope)
        return (f"change hit {sum(r.ok for r in ch)}/{len(ch)}, decision covered {sum(r.ok for r in de)}/{len(de)},"
                f" keep violated {sum(not r.ok for r in ke)}/{len(ke)}")

    def failures(self) -> dict[str, str]:
        """failure id -> what went wrong; ids match an audit's `expected_failures`."""
        out = {r.site.id: r.why for r in self.results if not r.ok}
        out.update({f"compile {f}": e for f, e in self.not_compiling.items()})
        return out


def _findings_by_file(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in report.get("findings", []):
        out.setdefault(f.get("file", ""), []).append(f)
    return out


def _module_imports(lines: list[str]) -> list[tuple[int, str]]:
    """(0-based line, normalised text) of each import run at module import time (top level, or in a
    top-level try/if/with block; not in functions or classes)."""
    import ast

    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    out: list[tuple[int, str]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append((node.lineno - 1, ast.unparse(node)))
            elif isinstance(node, (ast.Try, ast.If, ast.With)):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []) or [])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return out


def _imports_brought_above(before: list[str], after: list[str], lm: LineMap, line: int) -> list[str]:
    """Imports that run before `line` now and did not before: moved up from below it, or new (porter's
    own guarded `import torch_npu` aside, which reads no environment)."""
    j = lm.to_patched.get(line - 1)
    if j is None:
        return []
    was_above = {text for i, text in _module_imports(before) if i < line - 1}
    now_above = {text for i, text in _module_imports(after) if i < j}
    return sorted(t for t in now_above - was_above if not re.match(r"^(import|from) torch_npu\b", t))


def grade(audit: Audit, original_root: Path, patched_root: Path, report: Mapping[str, Any]) -> Grade:
    """Grade a port of `original_root` (written to `patched_root`, described by `report`) per AUDIT.md.

    change: hit when its line changed or lines were inserted right next to it, unless the patched
      lines around it match the site's `wrong_if` (an edit known to be wrong).
    decision: covered when its line changed (or got an insertion next to it) or a finding of the
      report names that line (in the patched file's numbering, or the original's with the same code).
    keep: violated when its line changed; with `no_import_above`, also when an import now runs
      before it that did not (moved up, or added; porter's guarded torch_npu import aside).
    cosmetic: not graded.
    Every patched .py file that differs from the original must compile.
    """
    g = Grade(package=audit.package, changes=len(report.get("changes", [])), findings=len(report.get("findings", [])))
    findings = _findings_by_file(report)
    texts: dict[str, tuple[list[str], list[str], LineMap]] = {}

    def load(rel: str) -> tuple[list[str], list[str], LineMap]:
        if rel not in texts:
            before = (original_root / rel).read_text(encoding="utf-8").splitlines()
            p = patched_root / rel
            after = p.read_text(encoding="utf-8").splitlines() if p.is_file() else before
            texts[rel] = (before, after, LineMap.of(before, after))
        return texts[rel]

    for s in audit.sites:
        if s.severity == "cosmetic":
            continue
        before, after, lm = load(s.file)
        touched = lm.touched(s.line)
        reported = False
        for f in findings.get(s.file, []):
            fl = int(f.get("line") or 0)
            code = str(f.get("code", "")).strip()
            orig_code = before[s.line - 1].strip()
            if lm.to_original.get(fl - 1) == s.line - 1 or (fl == s.line and code and orig_code.startswith(code[:60])):
                reported = True
                break
        wrong = bool(touched and s.wrong_if and re.search(s.wrong_if, lm.patched_window(s.line, after)))
        if s.severity == "change":
            ok, why = touched and not wrong, "" if touched else "not changed (no edit on or next to the line)"
        elif s.severity == "decision":
            ok = (touched and not wrong) or reported
            why = "" if ok else "neither changed nor reported as a finding"
        else:  # keep
            moved = _imports_brought_above(before, after, lm, s.line) if s.no_import_above else []
            changed = (s.line - 1) in lm.changed
            ok = not changed and not moved
            why = ("changed" if changed else "") + (f"imports now run before it: {moved}" if moved else "")
        if wrong and not ok and s.severity != "keep":
            why = f"changed, but wrongly (the patched lines match wrong_if {s.wrong_if!r})"
        g.results.append(SiteResult(s, touched, reported, ok, why))

    audited_lines: dict[str, set[int]] = {}
    for s in audit.sites:
        audited_lines.setdefault(s.file, set()).update((s.line - 1, s.line, s.line + 1))
    for p in sorted(patched_root.rglob("*.py")) if patched_root.is_dir() else []:
        rel = p.relative_to(patched_root).as_posix()
        orig = original_root / rel
        text = p.read_bytes()
        if orig.is_file() and orig.read_bytes() == text:
            continue
        if orig.is_file():
            g.files_changed += 1
            before, _after, lm = load(rel)
            near = audited_lines.get(rel, set())
            g.unaudited += [f"{rel}:{i + 1}: {before[i].strip()[:100]}" for i in sorted(lm.changed)
                            if i + 1 not in near and before[i].strip()]
        try:
            compile(text, rel, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            g.not_compiling[rel] = f"{type(exc).__name__}: {exc}"
    return g


def changed_files(original_root: Path, patched_root: Path) -> list[str]:
    """Relative paths of the .py files the port changed (for a fixpoint pass over just those)."""
    out = []
    for p in sorted(patched_root.rglob("*.py")):
        rel = p.relative_to(patched_root).as_posix()
        orig = original_root / rel
        if orig.is_file() and orig.read_bytes() != p.read_bytes():
            out.append(rel)
    return out


def summary_rows(audit: Audit) -> dict[str, int]:
    return dict(Counter(s.severity for s in audit.sites))
