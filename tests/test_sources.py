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


def test_git_source_pinned_to_a_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "upstream"
    shutil.copytree(FIXTURES / "tinytts", repo)
    git("init", "-q", cwd=repo)
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", ".", cwd=repo)
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "v1", cwd=repo)
    rev = git("rev-parse", "HEAD", cwd=repo)
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
