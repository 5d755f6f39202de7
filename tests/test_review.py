"""Reviewing a port in a pull request: report.md's summary, `porter diff --stat`, the pre-commit
hook and the README's GitHub Actions workflow, run the way their users run them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from porter.report.review import diff_stat, smoke_verdict

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
BIN = Path(sys.executable).parent
PORTER = str(BIN / "porter")


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env, **kw)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A repository that keeps recipes in recipes/ and commits patched_models/ (tinytts fixture)."""
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    (tmp_path / "recipes").mkdir()
    text = (FIXTURES / "tinytts.yaml").read_text().replace("path: tinytts", "path: ../tinytts")
    (tmp_path / "recipes" / "tinytts.yaml").write_text(text)
    proc = run([PORTER, "apply", "recipes/tinytts.yaml", "--no-smoke"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path


# -- diff --stat ----------------------------------------------------------------------------------
def test_diff_stat_counts_the_lines_of_the_diff(repo):
    full = run([PORTER, "diff", "recipes/tinytts.yaml"], repo)
    stat = run([PORTER, "diff", "recipes/tinytts.yaml", "--stat"], repo)
    assert full.returncode == stat.returncode == 0, stat.stderr
    lines = full.stdout.splitlines()
    added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
    files = [ln[6:] for ln in lines if ln.startswith("+++ b/")]
    rows = stat.stdout.splitlines()
    assert [r.split("|")[0].strip() for r in rows[:-1]] == files
    assert rows[-1] == f" {len(files)} files changed, {added} insertions(+), {removed} deletions(-)"
    assert " tinytts/_porter_npu.py " in stat.stdout  # the helper module, once
    for row in rows[:-1]:
        count, bar = row.split("|")[1].split()
        assert int(count) == len(bar)  # short files: one mark per line, like git


def test_diff_stat_scales_long_files_and_handles_an_empty_diff():
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1,1 +1,100 @@\n" + "+a\n" * 100 + "-b\n"
    row, total = diff_stat(diff).splitlines()
    assert row.startswith(" x.py | 101 ") and len(row.split()[-1]) == 40
    assert total == " 1 file changed, 100 insertions(+), 1 deletion(-)"
    assert diff_stat("") == "0 files changed\n"


# -- report.md's pull-request summary ----------------------------------------------------------
def test_report_md_opens_with_a_pull_request_summary(repo):
    md = (repo / "patched_models" / "tinytts" / "report.md").read_text()
    assert md.startswith("# porter report: tinytts\n\n## Pull request summary\n\nPort of **tinytts** to Ascend npu")
    summary = md.split("\n## ", 2)[1]
    order = [summary.index(h) for h in ("**Decisions**", "**Changes per file**", "**Smoke:**")]
    assert order == sorted(order)  # decisions first, the smoke verdict last
    assert "- step 1 `widen-device-check` (3 changes, safe): npu takes the CUDA branches" in summary
    assert "- helpers written once in `tinytts/_porter_npu.py` (_porter_mem_get_info)" in summary
    assert "| `tinytts/model.py` | 5 | safe | mem-get-info, widen-device-check |" in summary
    assert "**Smoke:** not run" in summary


@pytest.mark.parametrize("smoke, verdict", [
    ({"passed": True, "device": {"kind": "npu-sim"}},
     "passed on npu-sim, a CPU-backed simulation of the npu device: not an Ascend result"),
    ({"passed": False, "device": {"kind": "npu"}}, "FAILED on npu (Ascend)"),
    ({"passed": True, "device": {"kind": "cuda"}}, "passed on cuda"),
])
def test_the_smoke_verdict_names_its_device(smoke, verdict):
    assert smoke_verdict(smoke) == verdict


# -- the pre-commit hook ------------------------------------------------------------------------
def _hook() -> dict:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    return hook


def _run_hook(repo: Path, files: list[str]) -> subprocess.CompletedProcess:
    """As pre-commit runs it: the entry split like a shell command, then the matching file names."""
    hook = _hook()
    files = [f for f in files if re.search(hook["files"], f)]
    return run([*shlex.split(hook["entry"]), *files], repo)


def test_hook_definition():
    hook = _hook()
    assert hook["id"] == "porter-apply-check" and hook["language"] == "python"
    assert "porter apply --check" in hook["entry"]
    assert re.search(hook["files"], "recipes/voxcpm2.yaml") and not re.search(hook["files"], "recipes/smoke/x.py")
    # every recipe of this repository is one the hook looks at
    assert all(re.search(hook["files"], f"recipes/{p.name}") for p in (ROOT / "recipes").glob("*.yaml"))


def test_hook_passes_on_an_up_to_date_package_and_fails_on_a_stale_one(repo):
    ok = _run_hook(repo, ["recipes/tinytts.yaml", "README.md"])
    assert ok.returncode == 0, ok.stderr
    assert "is up to date" in ok.stderr
    (repo / "patched_models" / "tinytts" / "tinytts" / "model.py").write_text("# edited by hand\n")
    stale = _run_hook(repo, ["recipes/tinytts.yaml"])
    assert stale.returncode == 1 and "tinytts/model.py" in stale.stderr


def test_hook_fails_on_an_invalid_recipe_naming_the_line(repo):
    (repo / "recipes" / "broken.yaml").write_text("porter: 1\nname: broken\nsource: {path: x}\nsteps:\n  - use: nope\n")
    proc = _run_hook(repo, ["recipes/tinytts.yaml", "recipes/broken.yaml"])
    assert proc.returncode == 1
    assert "recipes/broken.yaml:5: steps[0].use: unknown transform 'nope'" in proc.stderr
    assert "is up to date" in proc.stderr  # the other recipe was still checked


@pytest.mark.network
def test_hook_and_workflow_check_step_on_this_repositorys_voxcpm2_recipe(tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    proc = run([PORTER, "apply", "recipes/voxcpm2.yaml", "--no-smoke"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    hooked = _run_hook(tmp_path, ["recipes/voxcpm2.yaml"])
    assert hooked.returncode == 0, hooked.stderr
    # the workflow's check step, as GitHub runs a `run:` block (bash -e), over the recipes present
    for other in (tmp_path / "recipes").glob("*.yaml"):
        if other.name != "voxcpm2.yaml":
            other.unlink()
    step = _workflow_step("patched packages match their recipes")
    proc = run(["bash", "-e", "-c", step["run"]], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "patched_models" / "voxcpm2" / "voxcpm" / "_porter_npu.py").unlink()
    proc = run(["bash", "-e", "-c", step["run"]], tmp_path)
    assert proc.returncode == 1 and "voxcpm/_porter_npu.py" in proc.stderr


# -- the README's GitHub Actions workflow -------------------------------------------------------
def _workflow() -> dict:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(\s*# \.github/workflows/porter\.yml\n.*?)```", readme, re.S)
    assert block, "the README has no workflow example"
    text = "\n".join(line[2:] if line.startswith("  ") else line for line in block.group(1).splitlines())
    return yaml.safe_load(text)


def _workflow_step(name: str) -> dict:
    steps = _workflow()["jobs"]["check"]["steps"]
    return next(s for s in steps if s.get("name") == name)


def test_workflow_checks_every_recipe_and_uploads_sarif():
    wf = _workflow()
    steps = wf["jobs"]["check"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert uses[0].startswith("actions/checkout@")
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == "sarif" and upload["if"] == "always()"
    assert wf["permissions"]["security-events"] == "write"
    assert "porter apply --check" in _workflow_step("patched packages match their recipes")["run"]
    scan = _workflow_step("CUDA-specific code left, as SARIF")["run"]
    assert 'porter scan "$port" --format sarif -o "sarif/' in scan


def test_workflow_scan_step_annotates_the_committed_port_by_repository_path(tmp_path):
    """The scan step over a repository holding a recipe and its port: one SARIF file per port, each
    result named by a path that exists in the repository (what GitHub needs to place it)."""
    (tmp_path / "recipes").mkdir()
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    text = (FIXTURES / "tinytts.yaml").read_text().replace("path: tinytts", "path: ../tinytts")
    (tmp_path / "recipes" / "tinytts.yaml").write_text(text)
    model = tmp_path / "tinytts/tinytts/model.py"  # a site no step of the recipe handles
    model.write_text(model.read_text() + "\n\ndef sync():\n    torch.cuda.synchronize()\n")
    assert run([PORTER, "apply", "recipes/tinytts.yaml", "--no-smoke"], tmp_path).returncode == 0
    proc = run(["bash", "-e", "-c", _workflow_step("CUDA-specific code left, as SARIF")["run"]], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    sarif = json.loads((tmp_path / "sarif" / "tinytts.sarif").read_text())
    results = sarif["runs"][0]["results"]
    assert sarif["version"] == "2.1.0" and results
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert "patched_models/tinytts/tinytts/model.py" in uris
    assert all((tmp_path / uri).is_file() for uri in uris), uris
