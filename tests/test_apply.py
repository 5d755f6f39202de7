"""`porter apply`, `diff`, `--check` end to end on a local fixture tree (no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from porter.cli import main
from support import host_like_venv

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A copy of the tinytts fixture and its recipe, so tests can damage it freely."""
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    shutil.copy(FIXTURES / "tinytts.yaml", tmp_path / "tinytts.yaml")
    return tmp_path


def run(*args: str) -> int:
    return main(list(args))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_apply_writes_package_diff_and_report(work: Path):
    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    pkg = out / "tinytts"
    patched = (pkg / "tinytts/model.py").read_text()
    assert 'device.type in ("cuda", "npu")' in patched
    assert 'resolved_device.type not in ("cuda", "npu")' in patched
    assert 'x.device.type in ("cuda", "npu")' in patched
    assert "_porter_mem_get_info(resolved_device)" in patched
    assert 'mentions device.type == "cuda" and must stay' in patched  # docstring untouched
    assert (pkg / "tinytts/util.py").read_bytes() == (work / "tinytts/tinytts/util.py").read_bytes()
    compile(patched, "model.py", "exec")

    diff = (pkg / "port.diff").read_text()
    assert diff.startswith("--- a/tinytts/model.py\n+++ b/tinytts/model.py\n")
    assert "+++ b/pyproject.toml" in diff  # the generated packaging file is part of the review

    report = json.loads((pkg / "report.json").read_text())
    assert [s["matched"] for s in report["steps"]] == [3, 1]
    assert {c["transform"] for c in report["changes"]} == {"widen-device-check", "mem-get-info"}
    lines = patched.splitlines()
    for c in report["changes"]:  # the helper is written once, into the package's helper module
        assert c["file"] == ("tinytts/_porter_npu.py" if c["kind"] == "helper" else "tinytts/model.py")
        assert c["reason"] and c["safety"] == "safe"
        if c["kind"] == "rewrite":  # the line points at the rewritten code in the patched file
            assert c["after"].splitlines()[0].strip() in lines[c["line"] - 1], c
    assert set(report["inputs"]["sha256"]) == {"tinytts/__init__.py", "tinytts/model.py", "tinytts/util.py"}
    assert report["sources"][0]["kind"] == "path"
    assert len(report["recipe"]["sha256"]) == 64
    md = (pkg / "report.md").read_text()
    assert "| tinytts/model.py:" in md and "widen-device-check" in md


PROBE = (
    "import sys, torch, tinytts\n"
    "torch.manual_seed(0); m = tinytts.TinyModel(); x = torch.randn(2, 8)\n"
    "y = m(x)  # forward() holds the rewritten `x.is_cuda` test\n"
    "print(tinytts.pick_attention(torch.device('cpu')), tinytts.voice_clone_batch_size(4, 1.0, torch.device('cpu')),"
    " y.detach().numpy().tobytes().hex(), 'porter' in sys.modules)\n"
)


def test_patched_behaviour_unchanged_on_cpu(work: Path):
    """The port changes nothing for CPU users: the same calls give the same answers, bit for bit."""
    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    assert "x.device.type in (\"cuda\", \"npu\")" in (out / "tinytts/tinytts/model.py").read_text()
    results = []
    for root in (work / "tinytts", out / "tinytts"):
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr
        results.append(proc.stdout.split())
    assert results[0] == results[1]
    assert results[0][:2] == ["eager", "1"] and len(results[0][2]) == 2 * 8 * 4 * 2


def test_patched_code_never_imports_porter(work: Path):
    """README: patched code never imports porter. Run it where porter is not installed."""
    import ast

    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    for path in (out / "tinytts").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "porter" for n in names), (path, ast.dump(node))
    python = str(host_like_venv(work / "venv", without=("porter",)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert subprocess.run([python, "-c", "import porter"], env=env, cwd=work, capture_output=True).returncode != 0
    proc = subprocess.run([python, "-c", PROBE], cwd=out / "tinytts", capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(out / "tinytts")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "False"  # nothing imported porter


def test_rerun_is_byte_identical_and_check_detects_staleness(work: Path, capsys):
    out = work / "out"
    recipe = str(work / "tinytts.yaml")
    assert run("apply", recipe, "--out", str(out), "--no-smoke") == 0
    first = tree_bytes(out / "tinytts")
    assert run("apply", recipe, "--out", str(out), "--no-smoke") == 0
    assert tree_bytes(out / "tinytts") == first
    assert run("apply", recipe, "--out", str(out), "--check") == 0
    (out / "tinytts/tinytts/model.py").write_text("# edited by hand\n")
    assert run("apply", recipe, "--out", str(out), "--check") == 1
    assert "tinytts/model.py" in capsys.readouterr().err
    assert (out / "tinytts/tinytts/model.py").read_text() == "# edited by hand\n"  # --check writes nothing


def test_applying_to_patched_code_changes_nothing(work: Path):
    out = work / "out"
    recipe = work / "tinytts.yaml"
    assert run("apply", str(recipe), "--out", str(out), "--no-smoke") == 0
    text = recipe.read_text().replace("expect: 3", "expect: 0").replace("expect: 1", "expect: 0")
    (work / "again.yaml").write_text(text)
    assert run("apply", str(work / "again.yaml"), "--source", str(out / "tinytts"),
               "--out", str(work / "out2"), "--no-smoke") == 0
    report = json.loads((work / "out2/tinytts/report.json").read_text())
    assert report["changes"] == [] and report["files"]["changed"] == []
    assert report["sources"][0]["kind"] == "override"


def test_diff_prints_and_writes_nothing(work: Path, capsys, monkeypatch):
    monkeypatch.chdir(work)
    assert run("diff", "tinytts.yaml") == 0
    out = capsys.readouterr().out
    assert out.startswith("--- a/tinytts/model.py")
    assert '+    return "sdpa" if device.type in ("cuda", "npu") else "eager"' in out
    assert not (work / "patched_models").exists()


def test_drift_exits_1_naming_step_and_counts(work: Path, capsys):
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text().replace("expect: 3", "expect: 4"))
    out = work / "out"
    assert run("apply", str(recipe), "--out", str(out), "--no-smoke") == 1
    err = capsys.readouterr().err
    assert "expect mismatch: step 1 (widen-device-check) expected 4 matches and found 3" in err
    assert "upstream drift" not in err  # the counts were never confirmed on this source
    assert not (out / "tinytts").exists()
    assert "expected 4 matches and found 3" in (out / "tinytts.rejected/report.md").read_text()  # beside it


def test_unreadable_files_are_copied_and_reported(work: Path):
    pkg = work / "tinytts/tinytts"
    (pkg / "broken.py").write_text('if device == "cuda"\n    pass\n')  # syntax error
    (pkg / "latin1.py").write_bytes('x = "cuda"  # caf\xe9\n'.encode("latin-1"))
    outside = work / "secret.txt"
    outside.write_text("do not copy")
    os.symlink(outside, pkg / "link.txt")
    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    pkg_out = out / "tinytts/tinytts"
    assert (pkg_out / "broken.py").read_bytes() == (pkg / "broken.py").read_bytes()
    assert (pkg_out / "latin1.py").read_bytes() == (pkg / "latin1.py").read_bytes()
    assert not (pkg_out / "link.txt").exists()
    skipped = {s["path"]: s["reason"] for s in json.loads((out / "tinytts/report.json").read_text())["files"]["skipped"]}
    assert "does not parse" in skipped["tinytts/broken.py"]
    assert "not UTF-8" in skipped["tinytts/latin1.py"]
    assert "symbolic link" in skipped["tinytts/link.txt"]


def test_failed_run_leaves_previous_output_intact(work: Path):
    out = work / "out"
    recipe = work / "tinytts.yaml"
    assert run("apply", str(recipe), "--out", str(out), "--no-smoke") == 0
    before = tree_bytes(out / "tinytts")
    recipe.write_text(recipe.read_text().replace("expect: 1", "expect: 2"))
    assert run("apply", str(recipe), "--out", str(out), "--no-smoke") == 1
    assert tree_bytes(out / "tinytts") == before
    # no temporary directories left; the refused run's report is beside the package
    assert sorted(p.name for p in out.iterdir()) == ["tinytts", "tinytts.rejected"]


def test_source_override_unknown_id_is_a_usage_error(work: Path, capsys):
    assert run("apply", str(work / "tinytts.yaml"), "--source", f"nope={work}", "--no-smoke") == 2
    assert "no source with that id" in capsys.readouterr().err


def test_generated_package_installs_under_upstream_name(work: Path):
    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    target = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(out / "tinytts")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "_porter_mem_get_info" in (target / "tinytts/model.py").read_text()
    dist = [p.name for p in target.glob("tinytts-*.dist-info")]
    assert dist == ["tinytts-0.1+npu.dist-info"]


def test_crlf_files_keep_their_line_endings(work: Path):
    """Wheels such as boson-multimodal ship CRLF files: only the changed lines may differ."""
    model = work / "tinytts/tinytts/model.py"
    model.write_bytes(model.read_bytes().replace(b"\n", b"\r\n"))
    out = work / "out"
    assert run("apply", str(work / "tinytts.yaml"), "--out", str(out), "--no-smoke") == 0
    patched = (out / "tinytts/tinytts/model.py").read_bytes()
    assert b"\n" not in patched.replace(b"\r\n", b"")  # every line still ends in CRLF
    diff = (out / "tinytts/port.diff").read_bytes()
    model_diff = diff.split(b"+++ b/pyproject.toml")[0]
    removed = [l for l in model_diff.splitlines() if l.startswith(b"-") and not l.startswith(b"---")]
    assert len(removed) == 4  # the four rewritten lines, not the whole file


SMOKE = """
smoke:
  script: tinytts_smoke.py
  seed: 0
  run: [forward, generate]
  thresholds: {mean_rel_diff_max: 0.01, cosine_min: 0.9999}
  audio: {sample_rate: 24000, duration_min_s: 0.1, duration_max_s: 1.0}
"""


def smoke_recipe(work: Path, extra: str = "") -> Path:
    shutil.copy(FIXTURES / "tinytts_smoke.py", work / "tinytts_smoke.py")
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text() + SMOKE + extra)
    return recipe


def test_apply_with_smoke_on_npu_sim_reports_figures(work: Path):
    recipe = smoke_recipe(work)
    out = work / "out"
    assert run("apply", str(recipe), "--out", str(out), "--device", "npu-sim") == 0
    report = json.loads((out / "tinytts/report.json").read_text())
    smoke = report["smoke"]
    assert smoke["passed"] is True
    assert smoke["device"]["kind"] == "npu-sim" and smoke["device"]["simulated"] is True
    outputs = {o["name"]: o for o in smoke["outputs"]}
    assert outputs["out"]["cosine"] > 0.9999
    # The patched batch-size path asked the (simulated) npu for its real free memory: 8 fit.
    assert smoke["values"]["batch"] == {"reference": 1, "target": 8}
    assert (out / "tinytts/smoke").is_dir() and list((out / "tinytts/smoke").glob("*.wav"))
    md = (out / "tinytts/report.md").read_text()
    assert "## Smoke inference" in md and "npu-sim" in md and "not Ascend" in md


def test_unpatched_code_fails_on_npu_sim_where_ascend_would(work: Path):
    """Without mem-get-info the batch-size path calls torch.cuda.mem_get_info on an npu device."""
    recipe = smoke_recipe(work)
    text = recipe.read_text().replace("  - use: mem-get-info\n    expect: 1\n", "")
    recipe.write_text(text)
    out = work / "out"
    assert run("apply", str(recipe), "--out", str(out), "--device", "npu-sim") == 1
    smoke = json.loads((out / "tinytts/report.json").read_text())["smoke"]
    assert smoke["passed"] is False
    assert "cuda" in json.dumps(smoke["error"]).lower()


def test_nan_output_fails_the_smoke_naming_the_output(work: Path, capsys):
    recipe = smoke_recipe(work, "  inputs: {poison: true}\n")
    assert run("apply", str(recipe), "--out", str(work / "out"), "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "smoke test failed" in err and "out" in err and "NaN" in err


def test_map_line_follows_insertions_and_replacements():
    from porter.rewrite import map_line

    assert [map_line(["x", "a1", "a2", "y"], ["x", "b1", "b2", "y"], n) for n in (2, 3, 4)] == [2, 3, 4]
    assert [map_line(["h", "x", "y"], ["h", "n1", "n2", "n3", "x", "y"], n) for n in (2, 3)] == [5, 6]
    assert map_line(["h", "x", "y"], ["h", "y"], 3) == 2


def test_python_transform_with_json_default_files_never_parses_json_as_python(work: Path):
    (work / "tinytts/config.json").write_text('{\n  "attn_implementation": "flash_attention_2"\n}\n')
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text() + "  - use: attention-fallback\n    reason: flash falls back on npu\n")
    out = work / "out"
    assert run("apply", str(recipe), "--out", str(out), "--no-smoke") == 0
    shipped = out / "tinytts/config.json"
    assert json.loads(shipped.read_text()) == {"attn_implementation": "flash_attention_2"}
    report = json.loads((out / "tinytts/report.json").read_text())
    assert not report["files"]["failed"]
    assert any(f["file"] == "config.json" for f in report["findings"])  # reported, not rewritten
