"""Fetch a pinned PyPI archive without running anything from it.

pip prepares an sdist's metadata by running its build backend, even for `pip download`, and an
sdist may ship its own backend. So porter reads the package index itself: the simple API
(PEP 691 JSON or PEP 503 HTML) of the index pip is configured with, the archive's link and hash,
the bytes (checked against the index's sha256), and unpacks them with its own checks: no absolute
paths, no `..`, no links or device files, bounded sizes. Nothing from the archive is imported or run.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urldefrag, urljoin, urlsplit, urlunsplit
from urllib.request import Request, url2pathname, urlopen

from porter.errors import UsageError

DEFAULT_INDEX = "https://pypi.org/simple"
MAX_INDEX_PAGE = 64 << 20  # a project page with every release of a large project is a few MB
MAX_ARCHIVE = 2 << 30  # bytes downloaded
MAX_UNPACKED = 4 << 30  # bytes written when unpacking
MAX_MEMBERS = 200_000
TIMEOUT_S = 60
_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2,"
           " text/html;q=0.01")


@dataclass(frozen=True)
class IndexConfig:
    """Where pip on this machine looks for packages, and which settings said so."""

    index_url: str
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    cert: str | None = None
    origin: str = "default"  # where index_url came from: default, PIP_INDEX_URL, pip config global.index-url


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None
    index: str  # the index (or find-links location) that listed it, credentials removed


def redact(url: str) -> str:
    """A URL without user:password@ (index URLs often carry tokens)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def pip_config() -> IndexConfig:
    """The index settings pip would use for `pip download` here: PIP_* variables over the
    `download` section over `global` of every pip.conf (`pip config list` merges the files)."""
    values: dict[str, str] = {}
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=TIMEOUT_S, env={**os.environ, "PIP_NO_INPUT": "1"})
        for line in proc.stdout.splitlines():
            m = re.fullmatch(r"([^.=]*)\.([a-z0-9-]+)='(.*)'", line.strip())
            if m:
                values[f"{m[1]}.{m[2]}"] = m[3]
    except (OSError, subprocess.SubprocessError):
        pass

    def get(key: str) -> tuple[str | None, str]:
        env = "PIP_" + key.upper().replace("-", "_")
        if os.environ.get(env):
            return os.environ[env], env
        for section in (":env:", "download", "global"):
            if f"{section}.{key}" in values:
                return values[f"{section}.{key}"], ("PIP_" + key.upper().replace("-", "_") if section == ":env:"
                                                    else f"pip config {section}.{key}")
        return None, "default"

    index, origin = get("index-url")
    extra, _ = get("extra-index-url")
    links, _ = get("find-links")
    cert, _ = get("cert")
    return IndexConfig(index_url=index or DEFAULT_INDEX, extra_index_urls=tuple((extra or "").split()),
                       find_links=tuple((links or "").split()), cert=cert, origin=origin)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- reading an index -------------------------------------------------------------------------
class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text.strip()))
            self._href = None


def _ssl_context(cert: str | None) -> ssl.SSLContext:
    if cert and Path(cert).is_file():
        return ssl.create_default_context(cafile=cert)
    return ssl.create_default_context()


def _open(url: str, cert: str | None, accept: str | None = None):  # noqa: ANN202 - a response
    headers = {"User-Agent": "porter (+simple API reader)"}
    if accept:
        headers["Accept"] = accept
    parts = urlsplit(url)
    if "@" in parts.netloc:  # https://user:token@host/simple: urllib wants the credentials as a header
        userinfo, host = parts.netloc.rsplit("@", 1)
        headers["Authorization"] = "Basic " + base64.b64encode(unquote(userinfo).encode()).decode()
        url = urlunsplit(parts._replace(netloc=host))
    return urlopen(Request(url, headers=headers), timeout=TIMEOUT_S, context=_ssl_context(cert))


def _read_page(url: str, cert: str | None) -> tuple[bytes, str, str] | None:
    """(body, content type, final URL) of a simple-API page; None when it does not exist."""
    if url.startswith("file:"):
        path = Path(url2pathname(urlsplit(url).path))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            return None
        return path.read_bytes()[:MAX_INDEX_PAGE], "text/html", path.as_uri()
    try:
        with _open(url, cert, _ACCEPT) as resp:
            body = resp.read(MAX_INDEX_PAGE + 1)
            if len(body) > MAX_INDEX_PAGE:
                raise UsageError(f"{redact(url)}: the index page is larger than {MAX_INDEX_PAGE >> 20} MiB")
            return body, resp.headers.get_content_type(), resp.geturl()
    except HTTPError as exc:
        if exc.code == 404:
            return None
        raise UsageError(f"{redact(url)}: the package index answered HTTP {exc.code}") from None


def _files_on_page(body: bytes, ctype: str, base: str, index: str) -> list[IndexFile]:
    out: list[IndexFile] = []
    if ctype == "application/vnd.pypi.simple.v1+json":
        try:
            data = json.loads(body)
            entries = [(f["filename"], f["url"], (f.get("hashes") or {}).get("sha256")) for f in data["files"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{index}: the package index sent a malformed PEP 691 page") from None
        for filename, url, sha in entries:
            out.append(IndexFile(str(filename), urljoin(base, str(url)), sha if isinstance(sha, str) else None, index))
        return out
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    for href, text in parser.links:
        url, frag = urldefrag(urljoin(base, href))
        sha = frag.removeprefix("sha256=") if frag.startswith("sha256=") else None
        filename = PurePosixPath(urlsplit(url).path).name or text
        out.append(IndexFile(filename, url, sha, index))
    return out


def _find_links_files(location: str) -> list[IndexFile]:
    if re.match(r"^[a-z][a-z0-9+.-]*://", location) and not location.startswith("file:"):
        return []  # remote find-links pages: not read (pip's own flat-page format, rarely used)
    path = Path(url2pathname(urlsplit(location).path)) if location.startswith("file:") else Path(location)
    if not path.is_dir():
        return []
    return [IndexFile(p.name, p.resolve().as_uri(), None, f"find-links {path}") for p in sorted(path.iterdir())
            if p.is_file()]


def _matches(filename: str, name: str, version: str, archive: str) -> int | None:
    """The file's rank for name==version (lower is better), None when it does not fit."""
    from packaging.tags import sys_tags
    from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_name,
                                 parse_sdist_filename, parse_wheel_filename)
    from packaging.version import InvalidVersion, Version

    try:
        want = Version(version)
    except InvalidVersion:
        return None
    try:
        if archive == "wheel":
            if not filename.endswith(".whl"):
                return None
            wname, wver, _, tags = parse_wheel_filename(filename)
            if wname != canonicalize_name(name) or wver != want:
                return None
            ranks = [i for i, t in enumerate(sys_tags()) if t in tags]
            return min(ranks) if ranks else None
        if not filename.endswith((".tar.gz", ".zip")):
            return None
        sname, sver = parse_sdist_filename(filename)
        return 0 if sname == canonicalize_name(name) and sver == want else None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def find_archive(name: str, version: str, archive: str, config: IndexConfig) -> IndexFile:
    """The archive for name==version from the first index (then find-links location) listing one."""
    tried: list[str] = []
    for index in (config.index_url, *config.extra_index_urls):
        tried.append(redact(index))
        try:
            page = _read_page(index.rstrip("/") + f"/{normalize(name)}/", config.cert)
        except (URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            tried[-1] += f" (unreachable: {reason})"
            continue
        if page is None:
            continue
        files = _files_on_page(*page, index=redact(index))
        ranked = sorted((r, f.filename, f) for f in files if (r := _matches(f.filename, name, version, archive)) is not None)
        if ranked:
            return ranked[0][2]
    for location in config.find_links:
        tried.append(f"find-links {location}")
        ranked = sorted((r, f.filename, f) for f in _find_links_files(location)
                        if (r := _matches(f.filename, name, version, archive)) is not None)
        if ranked:
            return ranked[0][2]
    raise LookupError("; ".join(tried))


def download(file: IndexFile, dest: Path, cert: str | None) -> str:
    """Write the archive to dest; return its sha256. Refuses bytes that differ from the index's hash."""
    h = hashlib.sha256()
    size = 0
    try:
        with _open(file.url, cert) as src, open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                size += len(block)
                if size > MAX_ARCHIVE:
                    raise UsageError(f"{file.filename}: larger than {MAX_ARCHIVE >> 30} GiB; not downloaded")
                h.update(block)
                out.write(block)
    except (URLError, OSError) as exc:
        raise UsageError(f"cannot download {redact(file.url)}: {getattr(exc, 'reason', exc)}") from None
    digest = h.hexdigest()
    if file.sha256 is not None and digest != file.sha256.lower():
        from porter.errors import PortProblem

        raise PortProblem(f"{file.filename} from {file.index}: the bytes have sha256 {digest}, the index lists"
                          f" {file.sha256}; the download was altered or cut short, nothing was unpacked")
    return digest


# -- unpacking --------------------------------------------------------------------------------
def _member_problem(name: str) -> str | None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name:
        return "archive member points outside the tree"
    if any(ord(c) < 32 for c in name):
        return "archive member name has a control character"
    return None


def unpack(archive: Path, dest: Path, max_members: int = MAX_MEMBERS,
           max_bytes: int = MAX_UNPACKED) -> list[tuple[str, str]]:
    """Unpack a wheel or sdist into dest; return the members refused, with the reason. Only regular
    files and directories are written (no links, devices or fifos), none outside dest, at most
    MAX_MEMBERS members and MAX_UNPACKED bytes."""
    dest.mkdir(parents=True)
    try:
        if archive.name.endswith((".whl", ".zip")):
            refused = _unzip(archive, dest, (max_members, max_bytes))
        else:
            refused = _untar(archive, dest, (max_members, max_bytes))
    except UsageError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise UsageError(f"{archive.name}: the archive cannot be unpacked ({type(exc).__name__}: {exc})") from None
    tops = list(dest.iterdir())
    if not archive.name.endswith(".whl") and len(tops) == 1 and tops[0].is_dir():
        inner = tops[0]  # sdists have one top directory name-version/
        for child in inner.iterdir():
            child.rename(dest / child.name)
        inner.rmdir()
    return refused


def _limits(count: int, total: int, archive: Path, limits: tuple[int, int]) -> None:
    if count > limits[0]:
        raise UsageError(f"{archive.name}: more than {limits[0]} members; not unpacked")
    if total > limits[1]:
        raise UsageError(f"{archive.name}: unpacks to more than {limits[1]} bytes; not unpacked")


def _unzip(archive: Path, dest: Path, limits: tuple[int, int]) -> list[tuple[str, str]]:
    refused: list[tuple[str, str]] = []
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        _limits(len(infos), sum(i.file_size for i in infos), archive, limits)
        for info in infos:
            mode = info.external_attr >> 16
            why = _member_problem(info.filename.rstrip("/") if info.is_dir() else info.filename)
            if why is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
                why = "archive member is a link or special file"
            if why:
                refused.append((info.filename, why))
                continue
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with z.open(info) as src, open(target, "xb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    written += len(block)
                    if written > info.file_size:  # zipfile checks this too; belt and braces
                        raise ValueError(f"{info.filename} is longer than its header says")
                    out.write(block)
            target.chmod(0o755 if mode & 0o111 else 0o644)
    return refused


def _untar(archive: Path, dest: Path, limits: tuple[int, int]) -> list[tuple[str, str]]:
    refused: list[tuple[str, str]] = []
    with tarfile.open(archive) as t:
        members = []
        total = 0
        for member in t:
            members.append(member)
            total += member.size
            _limits(len(members), total, archive, limits)
        keep = []
        for member in members:
            why = _member_problem(member.name)
            if why is None and not (member.isfile() or member.isdir()):
                why = "archive member is a link or special file"
            if why:
                refused.append((member.name, why))
            else:
                keep.append(member)
        t.extractall(dest, members=keep, filter="data")
    return refused
