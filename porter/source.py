"""Fetch pinned upstream code (path, PyPI, git, Hugging Face hub) into a cache, by identity.

`fetch_tree` turns a recipe's sources into one `SourceTree`: every regular file under its
relative path in the patched package, what was skipped and why, and the provenance of each
source for the report. Nothing here writes outside the cache directory.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from porter.errors import PortProblem, UsageError
from porter.recipe import Source

IGNORED_DIRS = {".git", "__pycache__", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
IGNORED_SUFFIXES = (".pyc", ".pyo")


def cache_dir() -> Path:
    return Path(os.environ.get("PORTER_CACHE") or Path.home() / ".cache" / "porter")


@dataclass(frozen=True)
class DistMetadata:
    """What a wheel's METADATA says, for generating the patched package's pyproject.toml."""

    name: str
    version: str
    requires_python: str | None
    requires: tuple[str, ...]
    entry_points: str = ""


@dataclass
class FetchedSource:
    spec: Source
    root: Path
    provenance: dict[str, Any]
    dist: DistMetadata | None = None


@dataclass
class SourceTree:
    files: dict[str, Path] = field(default_factory=dict)  # relative posix path -> file on disk
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sources: list[FetchedSource] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the kinds of source ----------------------------------------------------------------------
def _pip_download(spec: Source, dest: Path) -> Path:
    only = ["--only-binary=:all:"] if spec.archive == "wheel" else ["--no-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *only, "-d", str(dest), spec.pypi]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        other = "sdist" if spec.archive == "wheel" else "wheel"
        raise UsageError(
            f"cannot download {spec.pypi} ({spec.archive}) from the package index: "
            + " / ".join(tail)
            + f"\n  fix: check the name and version, try `archive: {other}`,"
            f" or pass --source {spec.id + '=' if spec.id else ''}DIR with an unpacked copy"
        )
    return files[0]


def _unpack(archive: Path, dest: Path) -> list[tuple[str, str]]:
    """Unpack a wheel or sdist; members that would land outside `dest` are refused."""
    refused: list[tuple[str, str]] = []
    dest.mkdir(parents=True)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                p = PurePosixPath(info.filename)
                if p.is_absolute() or ".." in p.parts:
                    refused.append((info.filename, "archive member points outside the tree"))
                    continue
                z.extract(info, dest)
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                p = PurePosixPath(member.name)
                if p.is_absolute() or ".." in p.parts or not (member.isfile() or member.isdir()):
                    refused.append((member.name, "archive member is a link or points outside the tree"))
                    continue
                t.extract(member, dest, filter="data")
        tops = [p for p in dest.iterdir()]
        if len(tops) == 1 and tops[0].is_dir():  # sdists have one top directory name-version/
            inner = tops[0]
            for child in inner.iterdir():
                child.rename(dest / child.name)
            inner.rmdir()
    return refused


def _read_wheel_metadata(root: Path) -> DistMetadata | None:
    infos = sorted(root.glob("*.dist-info"))
    if not infos:
        return None
    msg = email.parser.Parser().parsestr((infos[0] / "METADATA").read_text(encoding="utf-8"))
    ep = infos[0] / "entry_points.txt"
    return DistMetadata(
        name=msg["Name"],
        version=msg["Version"],
        requires_python=msg.get("Requires-Python"),
        requires=tuple(msg.get_all("Requires-Dist") or ()),
        entry_points=ep.read_text(encoding="utf-8") if ep.exists() else "",
    )


def _fetch_pypi(spec: Source) -> FetchedSource:
    assert spec.pypi
    key = f"pypi/{spec.pypi.replace('==', '-')}-{spec.archive}"
    base = cache_dir() / key
    tree = base / "tree"
    if not tree.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_ensure(cache_dir() / "pypi")))
        try:
            archive = _pip_download(spec, tmp / "dl")
            refused = _unpack(archive, tmp / "tree")
            (tmp / "archive").mkdir()
            archive.rename(tmp / "archive" / archive.name)
            (tmp / "refused.txt").write_text("".join(f"{p}\t{r}\n" for p, r in refused))
            shutil.rmtree(tmp / "dl")
            if base.exists():
                shutil.rmtree(base)
            tmp.rename(base)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    archive = next((base / "archive").iterdir())
    digest = sha256_file(archive)
    if spec.sha256 and digest != spec.sha256:
        raise PortProblem(
            f"{spec.pypi}: the downloaded archive {archive.name} has sha256 {digest},"
            f" the recipe pins {spec.sha256}; the package index serves different bytes"
            " for this pinned version"
        )
    return FetchedSource(
        spec=spec,
        root=tree,
        provenance={"kind": "pypi", "requirement": spec.pypi, "archive": archive.name, "sha256": digest},
        dist=_read_wheel_metadata(tree),
    )


def _fetch_git(spec: Source) -> FetchedSource:
    assert spec.git and spec.rev
    base = cache_dir() / "git" / hashlib.sha256(f"{spec.git}@{spec.rev}".encode()).hexdigest()[:16]
    if not (base / "tree").is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_ensure(cache_dir() / "git")))
        work = tmp / "tree"
        try:
            for cmd in (
                ["git", "init", "-q", str(work)],
                ["git", "-C", str(work), "fetch", "-q", "--depth", "1", spec.git, spec.rev],
                ["git", "-C", str(work), "checkout", "-q", "FETCH_HEAD"],
            ):
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                      env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
                if proc.returncode != 0:
                    raise UsageError(
                        f"cannot fetch {spec.git} at {spec.rev}: {proc.stderr.strip().splitlines()[-1:]}"
                        f"\n  fix: pass --source {spec.id + '=' if spec.id else ''}DIR with a checkout of"
                        f" {spec.git} at commit {spec.rev}"
                    )
            shutil.rmtree(work / ".git")
            if base.exists():
                shutil.rmtree(base)
            tmp.rename(base)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return FetchedSource(spec=spec, root=base / "tree",
                         provenance={"kind": "git", "url": spec.git, "rev": spec.rev})


def _fetch_hub(spec: Source) -> FetchedSource:
    assert spec.hub and spec.revision
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError(
            f"source hub: {spec.hub} needs huggingface_hub: pip install 'porter[hub]'"
            f"\n  or pass --source {spec.id + '=' if spec.id else ''}DIR with a local copy"
        ) from None
    base = cache_dir() / "hub" / hashlib.sha256(f"{spec.hub}@{spec.revision}".encode()).hexdigest()[:16]
    try:
        local = snapshot_download(
            repo_id=spec.hub,
            revision=spec.revision,
            allow_patterns=list(spec.files) if spec.files else None,
            local_dir=str(base / "tree"),
        )
    except Exception as exc:  # network, auth, missing revision: all say the same fix
        raise UsageError(
            f"cannot download {spec.hub} at {spec.revision} from the Hugging Face hub"
            f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            f"\n  fix: pass --source {spec.id + '=' if spec.id else ''}DIR with a local copy of"
            f" {', '.join(spec.files or ('the repository',))} at revision {spec.revision}"
        ) from None
    return FetchedSource(spec=spec, root=Path(local),
                         provenance={"kind": "hub", "repo": spec.hub, "revision": spec.revision})


def _local(spec: Source, root: Path, override: bool) -> FetchedSource:
    if not root.is_dir():
        flag = "--source" if override else "source.path"
        raise UsageError(f"{flag}: {root} is not a directory")
    prov: dict[str, Any] = {"kind": "path", "path": str(root)}
    if override:
        prov = {"kind": "override", "path": str(root), "instead_of": spec.label}
    return FetchedSource(spec=spec, root=root, provenance=prov, dist=_read_wheel_metadata(root))


def fetch(spec: Source, recipe_dir: Path, override: Path | None = None) -> FetchedSource:
    if override is not None:
        return _local(spec, override, override=True)
    if spec.path is not None:
        return _local(spec, (recipe_dir / spec.path).resolve(), override=False)
    return {"pypi": _fetch_pypi, "git": _fetch_git, "hub": _fetch_hub}[spec.kind](spec)


# -- the combined tree ------------------------------------------------------------------------
def walk(root: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Regular files under root by relative posix path; links and special files are skipped."""
    files: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            if d in IGNORED_DIRS or d.endswith(".dist-info") or d.endswith(".egg-info"):
                continue
            if p.is_symlink():
                skipped.append(((rel_dir / d).as_posix(), "symbolic link to a directory: not followed"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = here / name
            rel = (rel_dir / name).as_posix()
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if p.is_symlink():
                skipped.append((rel, "symbolic link: not followed, not copied"))
            elif not p.is_file():
                skipped.append((rel, "not a regular file"))
            else:
                files[rel] = p
    return files, skipped


def fetch_tree(sources: tuple[Source, ...], recipe_dir: Path, overrides: dict[str | None, Path]) -> SourceTree:
    tree = SourceTree()
    for i, spec in enumerate(sources):
        override = overrides.get(spec.id) if spec.id in overrides else (
            overrides.get(None) if i == 0 else None
        )
        fetched = fetch(spec, recipe_dir, override)
        tree.sources.append(fetched)
        files, skipped = walk(fetched.root)
        _drop_porter_output(fetched.root, files, skipped)
        if spec.files:
            from porter.rewrite import _glob

            kept = {r: p for r, p in files.items() if any(_glob(g).match(r) for g in spec.files)}
            fetched.provenance["files"] = list(spec.files)
            fetched.provenance["files_left_out"] = len(files) - len(kept)
            files = kept
        prefix = PurePosixPath(spec.into)
        for rel, p in files.items():
            dest = (prefix / rel).as_posix() if spec.into != "." else rel
            if dest in tree.files:
                raise UsageError(
                    f"sources {tree.sources[0].spec.label!r} and {spec.label!r} both provide {dest};"
                    " give one of them a different into:"
                )
            tree.files[dest] = p
        tree.skipped.extend(((prefix / r).as_posix() if spec.into != "." else r, why) for r, why in skipped)
    return tree


PORTER_OUTPUTS = ("port.diff", "report.md", "report.json")


def _drop_porter_output(root: Path, files: dict[str, Path], skipped: list[tuple[str, str]]) -> None:
    """A tree porter wrote earlier (applying a recipe to patched code): leave out its own files."""
    report = files.get("report.json")
    if report is None or "port.diff" not in files:
        return
    try:
        import json

        if "porter_version" not in json.loads(report.read_text(encoding="utf-8")):
            return
    except (ValueError, OSError):
        return
    generated = [p for p in ("pyproject.toml",) if p in files
                 and files[p].read_text(encoding="utf-8", errors="replace").startswith("# Generated by porter")]
    for rel in list(files):
        if rel in PORTER_OUTPUTS or rel in generated or rel.startswith("smoke/"):
            del files[rel]
            skipped.append((rel, "written by porter in an earlier run: not upstream code"))


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
