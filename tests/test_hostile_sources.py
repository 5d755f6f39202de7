"""Sources written by someone else: a git: value never becomes a git option or a command-running
transport, archives never write outside their folder, odd package metadata and source trees are
exit 0 or 2, never an internal error. Each refusal is checked by its effect: the marker file that
the attack would create is absent."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from porter import archive
from porter.cli import main
from porter.errors import UsageError
from porter.recipe import Source, check_git_url
from porter.source import _GIT_HARDENING, _git_env, fetch, parse_spec

PORTER = Path(sys.executable).with_name("porter")
FIXTURES = Path(__file__).parent / "fixtures"
SHA = "a" * 40


def run_porter(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([str(PORTER), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def git_recipe(tmp_path: Path, url: str) -> Path:
    r = tmp_path / "r.yaml"
    r.write_text(f"porter: 1\nname: g\nsource: {{git: {json.dumps(url)}, rev: {SHA}}}\nsteps: []\n")
    return r


# -- git: values that would run a command ----------------------------------------------------------
def attacks(marker: Path) -> list[str]:
    m = str(marker)
    return [
        f"--upload-pack=touch {m};",
        f"--upload-pack=touch {m}",
        f"-u touch {m};",
        f"--config=core.sshCommand=touch {m}",
        f"ext::sh -c touch% {m}",
        f"ext::sh -c 'touch {m}'",
        "fd::17",
        "fd::0,1/x",
        f"ssh://-oProxyCommand=touch%20{m}/x",
        f"ssh://user@-oProxyCommand=touch {m}/x",
        f"-oProxyCommand=touch {m}@host:repo",
        f"https://example.invalid/x\n--upload-pack=touch {m}",
        f"file:///tmp/x\0--upload-pack=touch {m}",
        f"transport::touch {m}",
        f"foo://touch {m}",
    ]


@pytest.mark.parametrize("i", range(15))
def test_git_attack_is_refused_by_validate_and_apply_and_nothing_runs(tmp_path, i):
    marker = tmp_path / "MARKER"
    url = attacks(marker)[i]
    recipe = git_recipe(tmp_path, url)
    for cmd in (["validate", "r.yaml"], ["apply", "r.yaml", "--out", "out", "--no-smoke"]):
        proc = run_porter(*cmd, cwd=tmp_path, env={"PORTER_CACHE": str(tmp_path / "cache")})
        assert proc.returncode == 2, (cmd, proc.returncode, proc.stderr)
        assert "r.yaml:3: source.git:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    assert recipe.exists()


option_like = st.text(min_size=1, max_size=40).map(lambda s: "-" + s)
with_transport = st.tuples(st.sampled_from(["ext", "fd", "x", "git", "https", "file", "ssh", ""]),
                           st.text(max_size=30)).map(lambda t: f"{t[0]}::{t[1]}")
with_control = st.tuples(st.text(max_size=15), st.characters(max_codepoint=31) | st.just("\x7f"),
                         st.text(max_size=15)).map(lambda t: "https://h/" + "".join(t))
ssh_option_host = st.text(min_size=1, max_size=20).map(lambda s: f"ssh://-{s}/repo")


@settings(max_examples=500, deadline=None)
@given(st.one_of(option_like, with_transport, with_control, ssh_option_host))
@example("--upload-pack=touch /tmp/x;")
@example("ext::sh -c touch% /tmp/x")
def test_option_like_or_transport_values_never_validate(value):
    with pytest.raises(ValueError):
        check_git_url(value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_every_accepted_value_is_data_to_git(value):
    try:
        check_git_url(value)
    except ValueError:
        return
    assert not value.startswith("-") and not re.match(r"[A-Za-z0-9+.-]*::", value)
    assert not any(ord(c) < 32 or ord(c) == 127 for c in value)
    assert value.startswith(("/", "./", "../", "https://", "http://", "ssh://", "git://", "file://")) or (
        "@" in value and ":" in value), value


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(option_like, with_transport, ssh_option_host))
def test_installed_validate_refuses_generated_option_values(tmp_path, value):
    value = value.replace("\0", "")
    git_recipe(tmp_path, value)
    proc = run_porter("validate", "r.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "source.git" in proc.stderr, (value, proc.stderr)


@pytest.mark.parametrize("url", ["https://github.com/org/repo.git", "http://host:8080/r", "ssh://git@host/r.git",
                                 "ssh://host:22/r", "git://host/r", "file:///srv/r.git", "git@github.com:org/r.git",
                                 "/srv/repos/r", "./upstream", "../upstream", "https://[::1]/r"])
def test_real_addresses_are_accepted(url):
    assert check_git_url(url) == url


def test_fetch_refuses_an_unvalidated_source_too(tmp_path, monkeypatch):
    """Defence in depth: a Source built without the loader (model_construct) is checked again."""
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "MARKER"
    for url in attacks(marker):
        spec = Source.model_construct(git=url, rev=SHA, into=".", id=None, path=None, pypi=None, hub=None,
                                      modelscope=None, revision=None, files=None, archive="wheel", sha256=None,
                                      note="")
        with pytest.raises(UsageError, match="git:"):
            fetch(spec, tmp_path)
    assert not marker.exists()


def test_git_itself_refuses_ext_with_porters_settings(tmp_path):
    """Belt and braces: with porter's -c settings git refuses command-running transports even if a
    value got past validation, and a hostile global template or hook never runs."""
    marker = tmp_path / "MARKER"
    work = tmp_path / "w"
    subprocess.run(["git", *_GIT_HARDENING, "init", "-q", "--template=", "--", str(work)], check=True)
    for url in (f"ext::sh -c touch% {marker}", "fd::0"):
        proc = subprocess.run(["git", *_GIT_HARDENING, "-C", str(work), "fetch", "--", url, SHA],
                              capture_output=True, text=True, env=_git_env(), timeout=60)
        assert proc.returncode != 0
    assert not marker.exists()


def test_hooks_from_a_global_template_do_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    home = tmp_path / "home"
    hooks = home / "template/hooks"
    hooks.mkdir(parents=True)
    for hook in ("post-checkout", "reference-transaction", "post-merge"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    (home / ".gitconfig").write_text(f"[init]\n\ttemplateDir = {home / 'template'}\n")
    repo = tmp_path / "upstream"
    shutil.copytree(FIXTURES / "tinytts", repo)
    git("init", "-q", "--template=", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "v1", cwd=repo)
    rev = git("rev-parse", "HEAD", cwd=repo)
    r = tmp_path / "r.yaml"
    r.write_text(f"porter: 1\nname: g\nsource: {{git: ./upstream, rev: {rev}}}\nsteps: []\n")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path,
                      env={"HOME": str(home), "PORTER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/g/tinytts/model.py").is_file()  # ./upstream resolved beside the recipe
    assert not marker.exists()


# -- one-line source specs (porter scan / init) ----------------------------------------------------
def test_parse_spec_each_kind(tmp_path):
    assert parse_spec("pypi:voxcpm==2.0.3").pypi == "voxcpm==2.0.3"
    s = parse_spec(f"git:https://github.com/org/r.git@{SHA}")
    assert (s.git, s.rev) == ("https://github.com/org/r.git", SHA)
    s = parse_spec(f"git:git@github.com:org/r.git@{SHA}")
    assert (s.git, s.rev) == ("git@github.com:org/r.git", SHA)
    s = parse_spec("hub:openbmb/VoxCPM1.5@main")
    assert (s.kind, s.hub, s.revision) == ("hub", "openbmb/VoxCPM1.5", "main")
    for prefix in ("ms", "modelscope"):
        s = parse_spec(f"{prefix}:OpenBMB/VoxCPM1.5@master")
        assert (s.kind, s.modelscope, s.revision, s.label) == (
            "modelscope", "OpenBMB/VoxCPM1.5", "master", "OpenBMB/VoxCPM1.5@master")
    s = parse_spec(str(tmp_path))
    assert s.kind == "path" and s.path == str(tmp_path.resolve())


@pytest.mark.parametrize("text,needle", [
    ("pypi:voxcpm", "name==version"),
    ("git:https://github.com/org/r.git@main", "40-character"),
    (f"git:--upload-pack=touch /tmp/x;@{SHA}", "starts with '-'"),
    (f"git:ext::sh -c x@{SHA}", "'::'"),
    ("hub:org/model", "hub:REPO@REVISION"),
    ("ms:model@master", "OWNER/NAME"),
    ("ms:org/model@--output", "not a revision"),
    ("/no/such/dir", "not a source spec"),
    ("", "not a source spec"),
])
def test_parse_spec_refusals_name_the_forms(text, needle):
    with pytest.raises(UsageError) as exc:
        parse_spec(text)
    assert needle in str(exc.value) and "pypi:NAME==VERSION" in str(exc.value)


# -- archives that try to write outside their folder -------------------------------------------------
def hostile_tar(path: Path, outside: Path) -> None:
    import io

    with tarfile.open(path, "w:gz") as t:
        def add(name: str, data: bytes = b"x = 1\n", **kw) -> None:
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)

        add("pkg-1.0/pkg/__init__.py")
        add(f"pkg-1.0/../{outside.name}")
        add(str(outside))
        add("pkg-1.0/pkg/link", type=tarfile.SYMTYPE, linkname=str(outside))
        add("pkg-1.0/pkg/hard", type=tarfile.LNKTYPE, linkname="pkg-1.0/pkg/__init__.py")
        add("pkg-1.0/pkg/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("pkg-1.0/pkg/fifo", type=tarfile.FIFOTYPE)


def hostile_zip(path: Path, outside: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr(f"../{outside.name}", "owned\n")
        z.writestr(str(outside), "owned\n")
        link = zipfile.ZipInfo("pkg/link")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, str(outside))
        z.writestr("pkg\\..\\..\\evil.py", "owned\n")


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_hostile_archive_members_are_refused(tmp_path, kind):
    outside = tmp_path / "OUTSIDE"
    path = tmp_path / ("pkg-1.0.tar.gz" if kind == "tar" else "pkg-1.0-py3-none-any.whl")
    (hostile_tar if kind == "tar" else hostile_zip)(path, outside)
    dest = tmp_path / "x" / "tree"
    refused = archive.unpack(path, dest)
    assert not outside.exists() and not (tmp_path / "x" / outside.name).exists()
    assert (dest / "pkg/__init__.py").read_text() == "x = 1\n"
    assert not (dest / "pkg/link").exists() and not (dest / "pkg/link").is_symlink()
    names = {n for n, _ in refused}
    assert any(n.endswith("link") for n in names) and any(".." in n for n in names)
    assert all(p.is_file() or p.is_dir() for p in dest.rglob("*"))
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_archive_limits(tmp_path):
    path = tmp_path / "many-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(50):
            z.writestr(f"many/m{i}.py", "x" * 1000)
    with pytest.raises(UsageError, match="more than 10 members"):
        archive.unpack(path, tmp_path / "a", max_members=10)
    with pytest.raises(UsageError, match="unpacks to more than"):
        archive.unpack(path, tmp_path / "b", max_bytes=10_000)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    damaged = tmp_path / "bad-1.0.tar.gz"
    damaged.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UsageError, match="cannot be unpacked"):
        archive.unpack(damaged, tmp_path / "c")


def test_redact_keeps_tokens_out_of_reports():
    assert archive.redact("https://user:tok3n@pypi.example/simple") == "https://***@pypi.example/simple"
    assert archive.redact("https://pypi.org/simple") == "https://pypi.org/simple"


# -- package metadata and source trees ---------------------------------------------------------------
def tree_with_metadata(root: Path, metadata: str | bytes) -> None:
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "pkg/__init__.py").write_text('import torch\nok = torch.device("cuda").type == "cuda"\n')
    info = root / "pkg-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_bytes(metadata if isinstance(metadata, bytes) else metadata.encode("utf-8", "replace"))


def apply_tree(tmp_path: Path, src: Path) -> tuple[int, str]:
    r = tmp_path / "r.yaml"
    r.write_text("porter: 1\nname: m\nsource: {path: src}\nsteps:\n  - use: widen-device-check\n")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    code = main(["apply", str(r), "--out", str(tmp_path / "out"), "--no-smoke"])
    return code, (tmp_path / "out/m/pyproject.toml").read_text() if code == 0 else ""


@pytest.mark.parametrize("metadata,expect", [
    ("Metadata-Version: 2.1\n", 'name = "pkg"'),  # no Name/Version: the dist-info folder's name
    ("Name: pkg\nVersion: 1.0\nRequires-Dist: numpy ;\n", '"numpy"'),  # an empty marker: no marker
    ("Name: pkg\nVersion: 1.0\nRequires-Dist: numpy ; \nRequires-Dist: torch>=2 ;  \n", '"torch>=2"'),
    ("Name: pkg\nVersion: 1.0\nRequires-Python: not a specifier\n", 'version = "1.0+npu"'),
    (b"Name: pkg\nVersion: 1.0\nSummary: \xff\xfe not utf-8\n", 'version = "1.0+npu"'),
    ("", 'name = "pkg"'),
])
def test_odd_wheel_metadata_is_tolerated(tmp_path, metadata, expect):
    tree_with_metadata(tmp_path / "src", metadata)
    code, pyproject = apply_tree(tmp_path, tmp_path / "src")
    assert code == 0 and expect in pyproject, pyproject


def test_unreadable_requirement_is_a_usage_error(tmp_path, capsys):
    tree_with_metadata(tmp_path / "src", "Name: pkg\nVersion: 1.0\nRequires-Dist: numpy >=>= 1\n")
    code, _ = apply_tree(tmp_path, tmp_path / "src")
    err = capsys.readouterr().err
    assert code == 2 and "pkg-1.0.dist-info/METADATA: Requires-Dist 'numpy >=>= 1'" in err, err


def test_metadata_folder_without_metadata_file(tmp_path):
    (tmp_path / "src/pkg").mkdir(parents=True)
    (tmp_path / "src/pkg/__init__.py").write_text("x = 1\n")
    (tmp_path / "src/pkg-1.0.dist-info").mkdir()
    code, pyproject = apply_tree(tmp_path, tmp_path / "src")
    assert code == 0 and 'name = "pkg"' in pyproject


requirement = st.one_of(
    st.sampled_from(["numpy", "numpy>=1", "numpy ;", "numpy; ", "numpy ; extra == 'x'", "numpy; extra == \"\"",
                     "torch ; python_version < '3.12' and extra == 'gpu'", "a[b,c]>=1,<2", "x @ https://h/x.whl",
                     "numpy >=>= 1", ";", "", "numpy; extra != 'x'", "numpy ; os_name == 'nt' or extra == 'y'",
                     "numpy; 'gpu' == extra", "numpy; extra == ''", "numpy; extra=='x'", "numpy; extra == 'x y'"]),
    st.text(max_size=20),
)
metadata = st.tuples(
    st.lists(st.sampled_from(["Metadata-Version: 2.1", "Name: pkg", "Version: 1.0", "Name:", "Version: ",
                              "Name: weird name!", "Version: 1.0 beta", "Requires-Python: >=3.8",
                              "Requires-Python: ???", "Summary: s", "Name: pkg\n\tcontinued"]), max_size=6),
    st.lists(requirement, max_size=4, unique=True),
).map(lambda t: "\n".join(t[0] + [f"Requires-Dist: {r}" for r in t[1]]) + "\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(metadata)
@example("Name: pkg\nVersion: 1.0\nRequires-Dist: numpy ;\n")
@example("Metadata-Version: 2.1\nSummary: no name or version\n")
@example('Name: pkg\nVersion: 1.0\nRequires-Dist: numpy; extra == ""\n')
@example("Name: pkg\nVersion: 1.0\nRequires-Dist: numpy; 'gpu' == extra\n")
@example("Name: pkg\nVersion: 1.0\nRequires-Dist: numpy; extra == 'a' or extra == 'b'\n")
def test_any_wheel_metadata_is_exit_0_or_2(tmp_path, metadata):
    tree_with_metadata(tmp_path / "src", metadata)
    code, _ = apply_tree(tmp_path, tmp_path / "src")
    assert code in (0, 2)


names = st.text(alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=30).filter(lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(st.tuples(names, st.binary(max_size=200), st.sampled_from(["file", "dir", "link", "fifo"])),
                max_size=6))
def test_any_source_tree_is_exit_0_or_2(tmp_path, entries):
    import os

    src = tmp_path / "src"
    shutil.rmtree(src, ignore_errors=True)
    (src / "pkg").mkdir(parents=True)
    (src / "pkg/__init__.py").write_text('device = "cuda"\nok = device == "cuda"\n')
    for name, data, kind in entries:
        p = src / "pkg" / name
        if os.path.lexists(p):
            continue
        try:
            if kind == "file":
                p.write_bytes(data)
            elif kind == "dir":
                p.mkdir()
                (p / "m.py").write_bytes(data)
            elif kind == "link":
                p.symlink_to("/etc" if data[:1] == b"a" else "../pkg")
            else:
                os.mkfifo(p)
        except OSError:  # a name this file system refuses (too long in bytes)
            continue
    code, _ = apply_tree(tmp_path, src)
    assert code in (0, 2)


def test_odd_file_names_are_skipped_and_reported(tmp_path):
    import os

    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg/__init__.py").write_text('ok = "cuda" == "cuda"\n')
    (src / "pkg/new\nline.py").write_text("x = 1\n")
    os.mkdir(os.fsencode(src / "pkg") + b"/bad\xffname")
    code, _ = apply_tree(tmp_path, src)
    assert code == 0
    skipped = dict((s["path"], s["reason"]) if isinstance(s, dict) else tuple(s) for s in
                   json.loads((tmp_path / "out/m/report.json").read_text())["files"]["skipped"])
    assert any("control character" in r for r in skipped.values()), skipped
    assert any("not UTF-8" in r for r in skipped.values()), skipped
    assert not (tmp_path / "out/m/pkg/new\nline.py").exists()


# -- caches and combined trees ----------------------------------------------------------------------
def test_two_sources_giving_a_file_and_a_folder_of_one_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x").write_text("x = 1\n")
    (tmp_path / "b/x").mkdir(parents=True)
    (tmp_path / "b/x/y.py").write_text("y = 1\n")
    (tmp_path / "r.yaml").write_text("porter: 1\nname: c\nsource:\n  - {id: a, path: a}\n  - {id: b, path: b}\n"
                                     "steps: []\n")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path)
    assert proc.returncode == 2 and "x both as a file and as a folder" in proc.stderr, proc.stderr


def test_cache_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "cache").write_text("not a folder\n")
    repo = tmp_path / "upstream"
    shutil.copytree(FIXTURES / "tinytts", repo)
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "v1", cwd=repo)
    rev = git("rev-parse", "HEAD", cwd=repo)
    (tmp_path / "r.yaml").write_text(f"porter: 1\nname: g\nsource: {{git: ./upstream, rev: {rev}}}\nsteps: []\n")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path,
                      env={"PORTER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "PORTER_CACHE" in proc.stderr, proc.stderr


def test_a_cut_short_pypi_cache_entry_is_fetched_again(tmp_path):
    import hashlib
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cutpkg/__init__.py", "x = 1\n")
        z.writestr("cutpkg-1.0.dist-info/METADATA", "Name: cutpkg\nVersion: 1.0\n")
    (tmp_path / "idx/files").mkdir(parents=True)
    (tmp_path / "idx/simple/cutpkg").mkdir(parents=True)
    (tmp_path / "idx/files/cutpkg-1.0-py3-none-any.whl").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "idx/simple/cutpkg/index.html").write_text(
        f'<a href="../../files/cutpkg-1.0-py3-none-any.whl#sha256={sha}">cutpkg-1.0-py3-none-any.whl</a>')
    entry = tmp_path / "cache/pypi/cutpkg-1.0-wheel"
    (entry / "tree").mkdir(parents=True)  # a fetch that stopped before the archive was kept
    (entry / "archive").mkdir()
    (tmp_path / "r.yaml").write_text("porter: 1\nname: cut\nsource: {pypi: cutpkg==1.0}\nsteps: []\n")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path,
                      env={"PORTER_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": (tmp_path / "idx/simple").as_uri()})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out/cut/report.json").read_text())["sources"][0]["sha256"] == sha
