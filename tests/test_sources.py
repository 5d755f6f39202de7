"""git: and hub: sources, with a real local git repository and an unreachable hub."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from porter.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def tinytts_repo(tmp_path: Path) -> tuple[Path, str]:
    """tmp_path/upstream: a git repository of the tinytts fixture, one commit; (its path, the commit)."""
    repo = tmp_path / "upstream"
    shutil.copytree(FIXTURES / "tinytts", repo)
    git("init", "-q", cwd=repo)
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", ".", cwd=repo)
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "v1", cwd=repo)
    return repo, git("rev-parse", "HEAD", cwd=repo)


def test_git_source_pinned_to_a_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    repo, rev = tinytts_repo(tmp_path)
    (repo / "tinytts/model.py").write_text("# a later commit that the recipe does not pin\n")
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qam", "v2", cwd=repo)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"porter: 1\nname: tiny-git\nsource: {{git: 'file://{repo}', rev: {rev}}}\n"
        "steps:\n  - use: widen-device-check\n    expect: 3\n"
    )
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    report = json.loads((tmp_path / "out/tiny-git/report.json").read_text())
    assert report["sources"][0] == {"into": ".", "kind": "git", "url": f"file://{repo}", "rev": rev}
    assert "_porter" not in (tmp_path / "out/tiny-git/tinytts/model.py").read_text()  # no mem step here
    assert 'in ("cuda", "npu")' in (tmp_path / "out/tiny-git/tinytts/model.py").read_text()
    assert not list((tmp_path / "out/tiny-git").rglob(".git"))


def test_unreachable_git_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "porter: 1\nname: g\nsource: {id: code, git: 'file:///nonexistent/repo', rev: " + "a" * 40 + "}\nsteps: []\n"
    )
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--no-smoke"]) == 2
    err = capsys.readouterr().err
    assert "cannot fetch file:///nonexistent/repo" in err and "--source code=DIR" in err
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "porter: 1\nname: h\nsource:\n  - {id: remote, hub: org/model, revision: " + "b" * 40
        + ", files: ['*.py'], into: model}\nsteps: []\n"
    )
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--no-smoke"]) == 2
    err = capsys.readouterr().err
    assert "cannot download org/model" in err and "--source remote=DIR" in err


def test_two_sources_with_into_and_overrides(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(FIXTURES / "tinytts/tinytts", a / "pkg")
    (b / "scripts").mkdir(parents=True)
    (b / "scripts/infer.py").write_text('import torch\ndevice = "cuda" if torch.cuda.is_available() else "cpu"\nok = device == "cuda"\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "porter: 1\nname: two\nsource:\n"
        "  - {id: code, hub: org/code, revision: main, into: remote}\n"
        "  - {id: scripts, git: 'file:///nowhere', rev: " + "c" * 40 + "}\n"
        "steps:\n  - use: widen-device-check\n"
    )
    assert main(["apply", str(recipe), "--source", f"code={a}", "--source", f"scripts={b}",
                 "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    out = tmp_path / "out/two"
    assert (out / "remote/pkg/model.py").is_file() and (out / "scripts/infer.py").is_file()
    assert 'ok = device in ("cuda", "npu")' in (out / "scripts/infer.py").read_text()
    kinds = [s["kind"] for s in json.loads((out / "report.json").read_text())["sources"]]
    assert kinds == ["override", "override"]


def test_source_files_filter(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "tinytts", src)
    (src / "assets").mkdir()
    (src / "assets/big.bin").write_bytes(b"\0" * 1000)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("porter: 1\nname: f\nsource: {path: src, files: ['tinytts/**/*.py']}\nsteps: []\n")
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    out = tmp_path / "out/f"
    assert (out / "tinytts/model.py").is_file() and not (out / "assets").exists()
    prov = json.loads((out / "report.json").read_text())["sources"][0]
    assert prov["files_left_out"] == 1


# -- modelscope: and mirrors: hosts Ascend users can reach (neither is reachable from the tests) -------
import hashlib  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

from porter.source import MODELSCOPE_ENDPOINT, snapshot_cache  # noqa: E402

MS_RECIPE = ("porter: 1\nname: ms\nsource: {id: ms, modelscope: OpenBMB/TinyTTS, revision: v1.0}\n"
             "steps:\n  - use: widen-device-check\n")


def modelscope_snapshot(root: Path) -> None:
    """A directory as modelscope's snapshot_download(local_dir=...) leaves it: the repository's files
    plus its bookkeeping (.msc, .mdl, .mv and the ._____temp download folder)."""
    shutil.copytree(FIXTURES / "tinytts", root)
    (root / "configuration.json").write_text('{"framework": "pytorch"}\n')
    (root / ".msc").write_bytes(b"\x80\x04pickled file list")
    (root / ".mdl").write_bytes(b"\x80\x04model meta")
    (root / ".mv").write_text("Revision:v1.0,CreatedAt:1700000000\n")
    (root / "._____temp").mkdir()
    (root / "._____temp/model.safetensors.part").write_bytes(b"\0" * 10)


def test_modelscope_recipe_validates_and_an_unreachable_host_names_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "r.yaml").write_text(MS_RECIPE)
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--no-smoke"]) == 2
    err = capsys.readouterr().err
    assert "OpenBMB/TinyTTS" in err and "--source ms=DIR" in err, err
    assert not (tmp_path / "out").exists()


def test_modelscope_snapshot_directory_works_as_source(tmp_path):
    modelscope_snapshot(tmp_path / "snap")
    (tmp_path / "r.yaml").write_text(MS_RECIPE)
    assert main(["apply", str(tmp_path / "r.yaml"), "--source", f"ms={tmp_path / 'snap'}",
                 "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    out = tmp_path / "out/ms"
    assert 'in ("cuda", "npu")' in (out / "tinytts/model.py").read_text()
    assert (out / "configuration.json").is_file()
    assert not any((out / n).exists() for n in (".msc", ".mdl", ".mv", "._____temp"))


def test_modelscope_cached_snapshot_is_used_offline_and_hashed(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    base = snapshot_cache("modelscope", MODELSCOPE_ENDPOINT, "OpenBMB/TinyTTS", "v1.0")
    modelscope_snapshot(base / "tree")
    (base / "done").write_text("OpenBMB/TinyTTS@v1.0\n")
    (tmp_path / "r.yaml").write_text(MS_RECIPE)
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    prov = json.loads((tmp_path / "out/ms/report.json").read_text())["sources"][0]
    assert prov["kind"] == "modelscope" and prov["repo"] == "OpenBMB/TinyTTS" and prov["revision"] == "v1.0"
    assert prov["endpoint"] == MODELSCOPE_ENDPOINT and len(prov["tree_sha256"]) == 64
    first = prov["tree_sha256"]
    (base / "tree/.msc").write_bytes(b"other bookkeeping")  # not upstream code: the hash stays
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    assert json.loads((tmp_path / "out/ms/report.json").read_text())["sources"][0]["tree_sha256"] == first
    (base / "tree/tinytts/model.py").write_text("# changed upstream\n")  # upstream code: it changes
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out2"), "--no-smoke"]) == 0
    assert json.loads((tmp_path / "out2/ms/report.json").read_text())["sources"][0]["tree_sha256"] != first


class _Mirror(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        self.send_error(404)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def test_hub_honours_hf_endpoint(tmp_path):
    import os
    import sys

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_port}"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=mirror, PORTER_CACHE=str(tmp_path / "cache"), NO_PROXY="*", no_proxy="*")
    (tmp_path / "r.yaml").write_text("porter: 1\nname: h\nsource: {id: hf, hub: org/model, revision: main}\n"
                                     "steps: []\n")
    try:
        proc = subprocess.run([str(Path(sys.executable).with_name("porter")), "apply", "r.yaml", "--out", "out",
                               "--no-smoke"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr
    assert f"from the Hugging Face hub at {mirror}" in proc.stderr and "--source hf=DIR" in proc.stderr, proc.stderr
    assert any("org/model" in p for p in _Mirror.seen), _Mirror.seen  # the mirror was asked, not huggingface.co


def test_hub_snapshot_bookkeeping_is_not_copied(tmp_path):
    snap = tmp_path / "snap"
    shutil.copytree(FIXTURES / "tinytts", snap)
    (snap / ".cache/huggingface/download").mkdir(parents=True)
    (snap / ".cache/huggingface/download/model.py.metadata").write_text("sha\netag\n")
    (tmp_path / "r.yaml").write_text("porter: 1\nname: h\nsource: {id: hf, hub: org/model, revision: main}\n"
                                     "steps: []\n")
    assert main(["apply", str(tmp_path / "r.yaml"), "--source", f"hf={snap}", "--out", str(tmp_path / "out"),
                 "--no-smoke"]) == 0
    assert not (tmp_path / "out/h/.cache").exists() and (tmp_path / "out/h/tinytts/model.py").is_file()


def test_git_source_beside_the_recipe_and_a_wrong_commit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    repo, rev = tinytts_repo(tmp_path)
    (tmp_path / "r.yaml").write_text(f"porter: 1\nname: g\nsource: {{git: ./upstream, rev: {rev}}}\nsteps: []\n")
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    assert (tmp_path / "out/g/tinytts/model.py").is_file()
    other = hashlib.sha1(b"no such commit").hexdigest()
    (tmp_path / "r.yaml").write_text(f"porter: 1\nname: g\nsource: {{git: ./upstream, rev: {other}}}\nsteps: []\n")
    assert main(["apply", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out2"), "--no-smoke"]) == 2
    assert f"cannot fetch ./upstream at {other}" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["ms:OpenBMB/TinyTTS@v1.0", "modelscope:OpenBMB/TinyTTS@v1.0"])
def test_ms_spec_is_the_recipe_source(spec):
    from porter.source import parse_spec

    s = parse_spec(spec)
    assert s.kind == "modelscope" and s.label == "OpenBMB/TinyTTS@v1.0"
