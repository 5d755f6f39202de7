"""Fetch pinned upstream code (path, PyPI, git, Hugging Face hub, ModelScope) into a cache, by identity.

`fetch_tree` turns a recipe's sources into one `SourceTree`: every regular file under its
relative path in the patched package, what was skipped and why, and the provenance of each
source for the report. Nothing here writes outside the cache directory.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from porter.errors import PortProblem, UsageError
from porter.recipe import Source, check_git_url

IGNORED_DIRS = {".git", "__pycache__", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
IGNORED_SUFFIXES = (".pyc", ".pyo")
MAX_METADATA = 16 << 20  # bytes of METADATA / entry_points.txt read


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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # archive members refused on unpacking


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
def _dist_from_metadata(info: Path) -> DistMetadata | None:
    """What `<name>-<version>.dist-info/METADATA` says, or None when there is nothing usable.
    Tolerates what pip tolerates (missing optional fields, an empty or invalid Requires-Python,
    `Requires-Dist: x ;` with an empty marker); a Requires-Dist that no tool can read is exit 2."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    stem = info.name.removesuffix(".dist-info")
    dir_name, _, dir_version = stem.partition("-")
    msg = email.parser.Parser().parsestr(_read_capped(info / "METADATA"))

    def field(key: str) -> str | None:
        value = msg.get(key)
        return str(value).strip() if value is not None and str(value).strip() else None

    name = field("Name") or dir_name or None
    version = field("Version") or dir_version or None
    if not name or not version or not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", name) \
            or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.!+_-]*", version):
        return None
    requires_python = field("Requires-Python")
    if requires_python is not None:
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier:
            requires_python = None  # pip ignores an invalid Requires-Python too
    requires = []
    for raw in msg.get_all("Requires-Dist") or ():
        line = " ".join(str(raw).split())
        line = re.sub(r"\s*;\s*$", "", line)  # `x ;`: an empty marker means no marker
        if not line:
            continue
        try:
            requires.append(str(Requirement(line)))
        except InvalidRequirement as exc:
            raise UsageError(
                f"{info.name}/METADATA: Requires-Dist {line!r} is not a PEP 508 requirement"
                f" ({str(exc).splitlines()[0] if str(exc) else 'unreadable'}); the package's metadata is broken"
                "\n  fix: pin another version, or pass --source DIR with a corrected copy"
            ) from None
    return DistMetadata(name=name, version=version, requires_python=requires_python,
                        requires=tuple(requires), entry_points=_read_capped(info / "entry_points.txt"))


def _read_capped(path: Path) -> str:
    """A metadata file's text, at most MAX_METADATA bytes; "" when it is missing or unreadable
    (never follows a FIFO or device: only a regular file is opened)."""
    try:
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            return f.read(MAX_METADATA).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _read_wheel_metadata(root: Path) -> DistMetadata | None:
    infos = sorted(p for p in root.glob("*.dist-info") if p.is_dir() and not p.is_symlink())
    return _dist_from_metadata(infos[0]) if infos else None


def _fetch_pypi(spec: Source) -> FetchedSource:
    assert spec.pypi
    from porter import archive as arch

    name, _, version = spec.pypi.partition("==")
    base = cache_dir() / "pypi" / f"{arch.normalize(name)}-{version}-{spec.archive}"
    origin_file = base / "origin.json"
    if not _complete_pypi_entry(base):  # missing, cut short, or from before porter fetched by itself
        config = arch.pip_config()
        fix = (f"\n  fix: check the name and version, try `archive: {'sdist' if spec.archive == 'wheel' else 'wheel'}`,"
               f" or pass --source {spec.id + '=' if spec.id else ''}DIR with an unpacked copy")
        try:
            found = arch.find_archive(name, version, spec.archive, config)
        except LookupError as exc:
            raise UsageError(f"cannot download {spec.pypi} ({spec.archive}): no index lists it"
                             f" (looked in: {exc}){fix}") from None
        tmp = _fetch_dir("pypi")
        try:
            (tmp / "archive").mkdir()
            archive = tmp / "archive" / PurePosixPath(found.filename).name
            digest = arch.download(found, archive, config.cert)
            if spec.sha256 and digest != spec.sha256:
                raise _hash_changed(spec, archive.name, digest, found.index)
            refused = arch.unpack(archive, tmp / "tree")
            (tmp / "refused.txt").write_text("".join(f"{p}\t{r}\n" for p, r in refused))
            origin = {"index": found.index, "url": arch.redact(found.url), "index_sha256": found.sha256,
                      "index_from": config.origin}
            (tmp / "origin.json").write_text(json.dumps(origin, indent=2))
            _publish(tmp, base, _complete_pypi_entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    archive = next((base / "archive").iterdir())
    digest = sha256_file(archive)
    origin = json.loads(origin_file.read_text())
    if spec.sha256 and digest != spec.sha256:
        raise _hash_changed(spec, archive.name, digest, origin.get("index"))
    refused = [tuple(line.split("\t", 1)) for line in (base / "refused.txt").read_text().splitlines() if "\t" in line]
    return FetchedSource(
        spec=spec,
        root=base / "tree",
        provenance={"kind": "pypi", "requirement": spec.pypi, "archive": archive.name, "sha256": digest,
                    "index": origin.get("index"), "index_from": origin.get("index_from"), "url": origin.get("url"),
                    "pinned": bool(spec.sha256)},
        dist=_read_wheel_metadata(base / "tree"),
        skipped=[(p, r) for p, r in refused],
    )


def _hash_changed(spec: Source, archive: str, digest: str, index: str | None) -> PortProblem:
    return PortProblem(
        f"pinned archive hash changed: {spec.pypi}: {archive} from {index or 'the package index'} has sha256"
        f" {digest}, the recipe pins {spec.sha256}; the index serves different bytes for this pinned version"
        "\n  fix: check where pip is configured to fetch from (`pip config list`, PIP_INDEX_URL); update"
        " sha256: only after reviewing the new archive"
    )


# git runs a command for a few transports (ext::, fd::) and for option-like values: refuse every
# protocol but these, and never let a hook, a template or a credential prompt run.
_GIT_HARDENING = (
    "-c", "protocol.allow=never",
    *[a for p in ("https", "http", "ssh", "git", "file") for a in ("-c", f"protocol.{p}.allow=always")],
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "submodule.recurse=false",
)


_GIT_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_NAMESPACE",
                  "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES")


def _git_env() -> dict[str, str]:
    """The user's environment (their proxy, ssh and certificate settings are theirs to keep), less the
    variables that would point git at another repository, with every prompt turned off."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REPO_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
               GIT_LFS_SKIP_SMUDGE="1", GIT_PROTOCOL_FROM_USER="0")
    return env


def _git_location(spec: Source, recipe_dir: Path) -> str:
    """The URL or path handed to git, checked again here (defence in depth: a Source can be built
    without the recipe loader, e.g. by parse_spec or a test)."""
    assert spec.git is not None
    try:
        check_git_url(spec.git)
    except ValueError as exc:
        raise UsageError(f"source {spec.label}: git: {exc}") from None
    if not re.fullmatch(r"[0-9a-f]{40}", spec.rev or ""):
        raise UsageError(f"source {spec.label}: rev must be a full 40-character commit sha")
    if spec.git.startswith(("./", "../")):
        return str((recipe_dir / spec.git).resolve())
    return spec.git


def _fetch_git(spec: Source, recipe_dir: Path) -> FetchedSource:
    assert spec.git and spec.rev
    location = _git_location(spec, recipe_dir)
    base = cache_dir() / "git" / hashlib.sha256(f"{location}@{spec.rev}".encode()).hexdigest()[:16]
    if not (base / "tree").is_dir():
        tmp = _fetch_dir("git")
        work = tmp / "tree"
        try:
            for cmd in (
                ["git", *_GIT_HARDENING, "init", "-q", "--template=", "--", str(work)],
                ["git", *_GIT_HARDENING, "-C", str(work), "fetch", "-q", "--no-tags", "--no-recurse-submodules",
                 "--depth", "1", "--", location, spec.rev],
                ["git", *_GIT_HARDENING, "-C", str(work), "checkout", "-q", "--detach", spec.rev, "--"],
            ):
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_git_env(),
                                          stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    proc = subprocess.CompletedProcess(cmd, 1, "", "timed out after 600 s")
                if proc.returncode != 0:
                    raise UsageError(
                        f"cannot fetch {spec.git} at {spec.rev}: {proc.stderr.strip().splitlines()[-1:]}"
                        f"\n  fix: pass --source {spec.id + '=' if spec.id else ''}DIR with a checkout of"
                        f" {spec.git} at commit {spec.rev}"
                    )
            shutil.rmtree(work / ".git")
            _publish(tmp, base, lambda b: (b / "tree").is_dir())
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return FetchedSource(spec=spec, root=base / "tree",
                         provenance={"kind": "git", "url": spec.git, "rev": spec.rev})


def tree_sha256(root: Path) -> str:
    """One hash over every regular file under root (relative path and contents), links skipped."""
    h = hashlib.sha256()
    files, _ = walk(root, SNAPSHOT_METADATA["hub"] | SNAPSHOT_METADATA["modelscope"])
    for rel in sorted(files):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + sha256_file(files[rel]).encode() + b"\n")
    return h.hexdigest()


def snapshot_cache(kind: str, endpoint: str, repo: str, revision: str) -> Path:
    """Where a hub: or modelscope: snapshot is cached: by host, repository and revision."""
    return cache_dir() / kind / hashlib.sha256(f"{endpoint}|{repo}@{revision}".encode()).hexdigest()[:16]


def _fetch_hub(spec: Source) -> FetchedSource:
    assert spec.hub and spec.revision
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    fix = (f"\n  fix: pass --source {spec.id + '=' if spec.id else ''}DIR with a local copy of"
           f" {', '.join(spec.files or ('the repository',))} at revision {spec.revision}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError(
            f"source hub: {spec.hub} needs huggingface_hub: pip install 'porter[hub]'"
            f"\n  or pass --source {spec.id + '=' if spec.id else ''}DIR with a local copy"
        ) from None
    base = snapshot_cache("hub", endpoint, spec.hub, spec.revision)
    try:
        local = snapshot_download(
            repo_id=spec.hub,
            revision=spec.revision,
            allow_patterns=list(spec.files) if spec.files else None,
            local_dir=str(base / "tree"),
            endpoint=endpoint,
        )
    except Exception as exc:  # network, auth, missing revision: all say the same fix
        raise UsageError(
            f"cannot download {spec.hub} at {spec.revision} from the Hugging Face hub at {endpoint}"
            f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){fix}"
        ) from None
    return FetchedSource(spec=spec, root=Path(local),
                         provenance={"kind": "hub", "repo": spec.hub, "revision": spec.revision,
                                     "endpoint": endpoint, "tree_sha256": tree_sha256(Path(local))})


MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


def _fetch_modelscope(spec: Source) -> FetchedSource:
    assert spec.modelscope and spec.revision
    endpoint = os.environ.get("MODELSCOPE_DOMAIN") or MODELSCOPE_ENDPOINT  # modelscope's own variable: a
    if not endpoint.startswith(("http://", "https://")):                   # bare domain, https assumed
        endpoint = "https://" + endpoint
    fix = (f"\n  fix: pass --source {spec.id + '=' if spec.id else ''}DIR with a local copy of"
           f" {', '.join(spec.files or ('the repository',))} at revision {spec.revision}"
           " (a ModelScope snapshot directory works as it is)")
    base = snapshot_cache("modelscope", endpoint, spec.modelscope, spec.revision)
    tree = base / "tree"
    if not (base / "done").is_file():
        try:
            from modelscope import snapshot_download  # type: ignore[import-not-found]
        except ImportError:
            raise UsageError(f"source modelscope: {spec.modelscope} needs the modelscope package:"
                             f" pip install modelscope{fix}") from None
        try:
            import inspect

            mirror = {"endpoint": endpoint} if "endpoint" in inspect.signature(snapshot_download).parameters else {}
            snapshot_download(model_id=spec.modelscope, revision=spec.revision, local_dir=str(tree),
                              allow_patterns=list(spec.files) if spec.files else None, **mirror)
        except Exception as exc:  # network, auth, missing revision: all say the same fix
            raise UsageError(
                f"cannot download {spec.modelscope} at {spec.revision} from ModelScope at {endpoint}"
                f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){fix}"
            ) from None
        (base / "done").write_text(f"{spec.modelscope}@{spec.revision}\n")
    return FetchedSource(spec=spec, root=tree,
                         provenance={"kind": "modelscope", "repo": spec.modelscope, "revision": spec.revision,
                                     "endpoint": endpoint, "tree_sha256": tree_sha256(tree)})


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
    if spec.kind == "git":
        return _fetch_git(spec, recipe_dir)
    return {"pypi": _fetch_pypi, "hub": _fetch_hub, "modelscope": _fetch_modelscope}[spec.kind](spec)


# -- one-line source specs (porter scan / init) -----------------------------------------------
SPEC_FORMS = "pypi:NAME==VERSION, git:URL@SHA40, hub:REPO@REVISION, ms:REPO@REVISION, or a local directory"


def parse_spec(text: str) -> Source:
    """A one-line source spec as a recipe Source: `pypi:NAME==VERSION`, `git:URL@SHA40`,
    `hub:REPO@REVISION`, `ms:REPO@REVISION` (also `modelscope:`), or a local directory (made
    absolute). Raises UsageError naming the accepted forms."""
    from pydantic import ValidationError

    text = text.strip()
    kind, sep, rest = text.partition(":")
    fields: dict[str, Any]
    try:
        if sep and kind == "pypi":
            fields = {"pypi": rest}
        elif sep and kind == "git":
            url, at, rev = rest.rpartition("@")
            if not at or not re.fullmatch(r"[0-9a-f]{40}", rev):
                raise ValueError("git: specs end with @ and the full 40-character commit sha")
            fields = {"git": url, "rev": rev}
        elif sep and kind in ("hub", "ms", "modelscope"):
            repo, at, revision = rest.rpartition("@")
            if not at or not repo:
                raise ValueError(f"{kind}: specs are {kind}:REPO@REVISION")
            fields = {"hub" if kind == "hub" else "modelscope": repo, "revision": revision}
        elif text and Path(text).expanduser().is_dir():
            fields = {"path": str(Path(text).expanduser().resolve())}
        else:
            raise ValueError("not a source spec or an existing directory")
        return Source.model_validate(fields)
    except ValidationError as exc:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    except ValueError as exc:
        why = str(exc)
    raise UsageError(f"source {text!r}: {why}\n  expected {SPEC_FORMS}")


# -- the combined tree ------------------------------------------------------------------------
# What snapshot tools write into the directory they download into: not upstream code.
SNAPSHOT_METADATA = {
    "hub": {".cache"},  # huggingface_hub local_dir: .cache/huggingface/download/*.metadata
    "modelscope": {".msc", ".mdl", ".mv", "._____temp", ".cache"},
}


def walk(root: Path, ignore_top: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Regular files under root by relative posix path; links, special files, unreadable folders
    and names that cannot be written into a diff (not UTF-8, control characters) are skipped."""
    files: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []

    def unreadable(exc: OSError) -> None:
        name = Path(exc.filename or "?")
        rel = name.relative_to(root).as_posix() if name.is_relative_to(root) else str(name)
        skipped.append((_shown_name(rel), f"cannot be read: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            rel = (rel_dir / d).as_posix()
            if d in IGNORED_DIRS or d.endswith(".dist-info") or d.endswith(".egg-info") or (
                    rel_dir == Path(".") and d in ignore_top):
                continue
            if p.is_symlink():
                skipped.append((_shown_name(rel), "symbolic link to a directory: not followed"))
                continue
            if _bad_name(d):
                skipped.append((_shown_name(rel), f"folder name {_bad_name(d)}: not copied"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = here / name
            rel = (rel_dir / name).as_posix()
            if name.endswith(IGNORED_SUFFIXES) or (rel_dir == Path(".") and name in ignore_top):
                continue
            if p.is_symlink():
                skipped.append((_shown_name(rel), "symbolic link: not followed, not copied"))
            elif _bad_name(name):
                skipped.append((_shown_name(rel), f"file name {_bad_name(name)}: not copied"))
            elif not p.is_file():
                skipped.append((rel, "not a regular file"))
            else:
                files[rel] = p
    return files, skipped


def _bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a control character"
    return None


def _shown_name(rel: str) -> str:
    """A path safe to print and to write into JSON (undecodable bytes and controls escaped)."""
    return rel.encode("utf-8", "backslashreplace").decode("utf-8").encode("unicode_escape").decode("ascii") \
        if _bad_name(rel) else rel


def fetch_tree(sources: tuple[Source, ...], recipe_dir: Path, overrides: dict[str | None, Path]) -> SourceTree:
    tree = SourceTree()
    for i, spec in enumerate(sources):
        override = overrides.get(spec.id) if spec.id in overrides else (
            overrides.get(None) if i == 0 else None
        )
        fetched = fetch(spec, recipe_dir, override)
        tree.sources.append(fetched)
        files, skipped = walk(fetched.root, SNAPSHOT_METADATA.get(spec.kind, set()))
        skipped = fetched.skipped + skipped
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
    folders = {parent for rel in tree.files for parent in PurePosixPath(rel).parents}
    clash = sorted(str(f) for f in folders if str(f) in tree.files)
    if clash:
        raise UsageError(f"the sources give {clash[0]} both as a file and as a folder of other files;"
                         " give one of the sources a different into:")
    return tree


PORTER_OUTPUTS = ("port.diff", "report.md", "report.json")


def _drop_porter_output(root: Path, files: dict[str, Path], skipped: list[tuple[str, str]]) -> None:
    """A tree porter wrote earlier (applying a recipe to patched code): leave out its own files."""
    report = files.get("report.json")
    if report is None or "port.diff" not in files:
        return
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "porter_version" not in data:
            return
    except (ValueError, OSError, RecursionError):
        return
    generated = [p for p in ("pyproject.toml",) if p in files
                 and files[p].read_text(encoding="utf-8", errors="replace").startswith("# Generated by porter")]
    for rel in list(files):
        if rel in PORTER_OUTPUTS or rel in generated or rel.startswith("smoke/"):
            del files[rel]
            skipped.append((rel, "written by porter in an earlier run: not upstream code"))


def _ensure(p: Path) -> Path:
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot use the cache directory {p}: {exc.strerror or exc}"
                         "\n  fix: set PORTER_CACHE to a writable directory") from None
    return p


def _fetch_dir(kind: str) -> Path:
    """A fresh temporary folder beside the cache entries of `kind`, renamed into place when complete."""
    where = _ensure(cache_dir() / kind)
    try:
        return Path(tempfile.mkdtemp(prefix=".fetch-", dir=where))
    except OSError as exc:
        raise UsageError(f"cannot write in the cache directory {where}: {exc.strerror or exc}"
                         "\n  fix: set PORTER_CACHE to a writable directory") from None


def _publish(tmp: Path, base: Path, complete: Any) -> None:
    """Move a finished fetch into place. Another porter may have finished the same fetch first:
    then its entry is kept and this one dropped (the bytes are checked against the pins either way)."""
    if base.exists() and not complete(base):
        shutil.rmtree(base, ignore_errors=True)
    try:
        tmp.rename(base)
    except OSError:
        if not complete(base):
            raise


def _complete_pypi_entry(base: Path) -> bool:
    try:
        archives = list((base / "archive").iterdir())
        origin = json.loads((base / "origin.json").read_text())
    except (OSError, ValueError):
        return False
    return (base / "tree").is_dir() and len(archives) == 1 and archives[0].is_file() and isinstance(origin, dict) \
        and (base / "refused.txt").is_file()
