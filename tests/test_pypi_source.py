"""The pypi: source: a real package (voxcpm==2.0.3, small, fetched once into the cache) and local
package indexes built by the tests (PEP 503 HTML over file://, PEP 691 JSON over HTTP), where an
sdist's in-tree build backend would leave a marker file if anything ran it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from porter.cli import main
from porter.recipe import load_recipe
from porter.source import fetch_tree

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.network
def test_pypi_source_is_pinned_and_recorded(tmp_path):
    recipe = tmp_path / "v.yaml"
    recipe.write_text(
        "porter: 1\nname: vox\nsource: {pypi: voxcpm==2.0.3}\nsteps:\n"
        "  - use: widen-device-check\n    files: ['voxcpm/**/*.py']\n"
    )
    loaded = load_recipe(recipe)
    tree = fetch_tree(loaded.recipe.sources, tmp_path, {})
    assert "voxcpm/model/utils.py" in tree.files
    assert not any(p.endswith(".dist-info/METADATA") for p in tree.files)  # wheel metadata is dropped
    prov = tree.sources[0].provenance
    assert prov["archive"] == "voxcpm-2.0.3-py3-none-any.whl" and len(prov["sha256"]) == 64
    assert prov["index"] and prov["url"].endswith("/voxcpm-2.0.3-py3-none-any.whl")  # where the bytes came from
    assert tree.sources[0].dist is not None and tree.sources[0].dist.version == "2.0.3"

    # A wrong pinned hash is refused with both hashes named.
    recipe.write_text(recipe.read_text().replace("voxcpm==2.0.3}", "voxcpm==2.0.3, sha256: '" + "0" * 64 + "'}"))
    assert main(["apply", str(recipe), "--out", str(tmp_path / "o"), "--no-smoke"]) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.network
def test_voxcpm2_recipe_applies(tmp_path):
    assert main(["apply", str(RECIPES / "voxcpm2.yaml"), "--out", str(tmp_path), "--no-smoke"]) == 0
    report = json.loads((tmp_path / "voxcpm2/report.json").read_text())
    assert report["sources"][0]["requirement"] == "voxcpm==2.0.3"
    assert all(not s["drift"] for s in report["steps"])
    pyproject = (tmp_path / "voxcpm2/pyproject.toml").read_text()
    assert 'name = "voxcpm"' in pyproject and 'version = "2.0.3+npu"' in pyproject
    assert main(["apply", str(RECIPES / "voxcpm2.yaml"), "--out", str(tmp_path), "--check"]) == 0


@pytest.mark.network
def test_unknown_package_says_what_to_do(tmp_path, capsys):
    recipe = tmp_path / "v.yaml"
    recipe.write_text("porter: 1\nname: nope\nsource: {pypi: porter-no-such-package-xyz==0.0.1}\nsteps: []\n")
    assert main(["apply", str(recipe), "--out", str(tmp_path / "o"), "--no-smoke"]) == 2
    err = capsys.readouterr().err
    assert "cannot download porter-no-such-package-xyz==0.0.1" in err and "--source" in err


# -- local indexes: nothing from the archive runs, every byte is accounted for -------------------------
import hashlib  # noqa: E402
import http.server  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import threading  # noqa: E402
import zipfile  # noqa: E402

PORTER = Path(sys.executable).with_name("porter")
CODE = 'import torch\nok = torch.device("cuda").type == "cuda"\n'


def evil_sdist(path: Path, marker: Path) -> bytes:
    """An sdist whose in-tree build backend creates `marker` when imported (pip imports it to
    prepare metadata, even for `pip download`)."""
    files = {
        "evilpkg-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "evilpkg-1.0/backend.py": f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                  "def get_requires_for_build_wheel(c=None): return []\n",
        "evilpkg-1.0/setup.py": f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n",
        "evilpkg-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
        "evilpkg-1.0/evilpkg/__init__.py": CODE,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def plain_wheel(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evilpkg/__init__.py", CODE)
        z.writestr("evilpkg-1.0.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\nRequires-Dist: numpy ;\n")
        z.writestr("evilpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def html_index(root: Path, files: dict[str, bytes], listed_sha: dict[str, str] | None = None) -> str:
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "simple/evilpkg").mkdir(parents=True, exist_ok=True)
    links = []
    for name, data in files.items():
        (root / "files" / name).write_bytes(data)
        sha = (listed_sha or {}).get(name, hashlib.sha256(data).hexdigest())
        links.append(f'<a href="../../files/{name}#sha256={sha}">{name}</a>')
    (root / "simple/evilpkg/index.html").write_text("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>")
    return (root / "simple").as_uri()


def run_porter(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PORTER), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def recipe(tmp_path: Path, archive: str, sha256: str | None = None) -> Path:
    r = tmp_path / "r.yaml"
    pin = f", sha256: '{sha256}'" if sha256 else ""
    r.write_text(f"porter: 1\nname: evil\nsource: {{pypi: evilpkg==1.0, archive: {archive}{pin}}}\n"
                 "steps:\n  - use: widen-device-check\n")
    return r


def test_sdist_is_fetched_without_running_its_build_backend(tmp_path):
    marker = tmp_path / "MARKER"
    data = evil_sdist(tmp_path / "evilpkg-1.0.tar.gz", marker)
    index = html_index(tmp_path / "idx", {"evilpkg-1.0.tar.gz": data})
    recipe(tmp_path, "sdist")
    env = {"PIP_INDEX_URL": index, "PORTER_CACHE": str(tmp_path / "cache")}
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "the sdist's build backend ran"
    assert 'in ("cuda", "npu")' in (tmp_path / "out/evil/evilpkg/__init__.py").read_text()
    prov = json.loads((tmp_path / "out/evil/report.json").read_text())["sources"][0]
    assert prov["index"] == index and prov["index_from"] == "PIP_INDEX_URL"
    assert prov["sha256"] == hashlib.sha256(data).hexdigest() and prov["archive"] == "evilpkg-1.0.tar.gz"
    assert prov["url"].endswith("/files/evilpkg-1.0.tar.gz")
    md = (tmp_path / "out/evil/report.md").read_text()
    assert index in md and hashlib.sha256(data).hexdigest() in md  # the report shows where it came from


def test_recipe_sha256_refuses_other_bytes(tmp_path):
    data = plain_wheel(tmp_path / "w.whl")
    index = html_index(tmp_path / "idx", {"evilpkg-1.0-py3-none-any.whl": data})
    env = {"PIP_INDEX_URL": index, "PORTER_CACHE": str(tmp_path / "cache")}
    recipe(tmp_path, "wheel", "0" * 64)
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "pinned archive hash changed" in proc.stderr and index in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    recipe(tmp_path, "wheel", hashlib.sha256(data).hexdigest())  # the right pin applies
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    prov = json.loads((tmp_path / "out/evil/report.json").read_text())["sources"][0]
    assert prov["pinned"] is True
    # Requires-Dist `numpy ;` (an empty marker) became a plain requirement
    assert '"numpy"' in (tmp_path / "out/evil/pyproject.toml").read_text()
    # A cached archive is checked against the pin too
    recipe(tmp_path, "wheel", "1" * 64)
    proc = run_porter("apply", "r.yaml", "--out", "out2", "--no-smoke", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "pinned archive hash changed" in proc.stderr


def test_bytes_that_differ_from_the_index_hash_are_refused(tmp_path):
    data = plain_wheel(tmp_path / "w.whl")
    index = html_index(tmp_path / "idx", {"evilpkg-1.0-py3-none-any.whl": data},
                       {"evilpkg-1.0-py3-none-any.whl": "f" * 64})
    recipe(tmp_path, "wheel")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path,
                      env={"PIP_INDEX_URL": index, "PORTER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1 and "the index lists" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").rglob("evilpkg/__init__.py"))


class _JsonIndex(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/simple/evilpkg":
            body = json.dumps({"meta": {"api-version": "1.0"}, "name": "evilpkg", "files": [
                {"filename": n, "url": f"/files/{n}", "hashes": {"sha256": hashlib.sha256(d).hexdigest()}}
                for n, d in self.files.items()]}).encode()
            ctype = "application/vnd.pypi.simple.v1+json"
        elif self.path.startswith("/files/") and self.path[7:] in self.files:
            body, ctype = self.files[self.path[7:]], "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_pep691_json_index_over_http_with_credentials_kept_out_of_the_report(tmp_path):
    marker = tmp_path / "MARKER"
    _JsonIndex.files = {"evilpkg-1.0.tar.gz": evil_sdist(tmp_path / "s.tar.gz", marker),
                        "evilpkg-1.0-py3-none-any.whl": plain_wheel(tmp_path / "w.whl")}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://user:s3cret@127.0.0.1:{server.server_port}/simple/"
        env = {"PIP_INDEX_URL": index, "PORTER_CACHE": str(tmp_path / "cache"), "no_proxy": "*", "NO_PROXY": "*"}
        for archive in ("wheel", "sdist"):
            recipe(tmp_path, archive)
            proc = run_porter("apply", "r.yaml", "--out", f"out-{archive}", "--no-smoke", cwd=tmp_path, env=env)
            assert proc.returncode == 0, proc.stderr
            report = (tmp_path / f"out-{archive}/evil/report.json").read_text()
            prov = json.loads(report)["sources"][0]
            assert prov["index"] == f"http://***@127.0.0.1:{server.server_port}/simple/", prov
            assert "s3cret" not in report and "s3cret" not in (tmp_path / f"out-{archive}/evil/report.md").read_text()
            assert prov["archive"].endswith(".whl" if archive == "wheel" else ".tar.gz")
    finally:
        server.shutdown()
    assert not marker.exists()


def test_package_no_index_lists(tmp_path):
    index = html_index(tmp_path / "idx", {})
    recipe(tmp_path, "wheel")
    proc = run_porter("apply", "r.yaml", "--out", "out", "--no-smoke", cwd=tmp_path,
                      env={"PIP_INDEX_URL": index, "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
                           "PORTER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "no index lists it" in proc.stderr and index in proc.stderr, proc.stderr
    assert "--source DIR" in proc.stderr
