"""Living with a recipe: `porter expect`, `apply --update-expect`, expect mismatch vs upstream drift,
the refused run's report beside the target, and `exclude_symbols:` (the installed executable)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
PORTER = str(Path(sys.executable).with_name("porter"))

RECIPE = """\
porter: 1
name: tinytts
# a comment at the top, kept as it is
description: >
  porter's own fixture, with folded text
  that must keep its line breaks.
source:
  path: tinytts
package: {name: tinytts, version: "0.1"}
steps:
  - use: widen-device-check   # trailing comment
    files: ["tinytts/**/*.py"]
    expect: 7    # guessed
    reason: npu takes the CUDA branches
  # a comment between steps
  - use: mem-get-info
    reason: 'batch size from real free memory on npu'
"""


def porter(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PORTER, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


def test_expect_rewrites_only_the_counts(work: Path):
    proc = porter("expect", "r.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "step 1 (widen-device-check): expect 7 -> 3" in proc.stderr
    assert "step 2 (mem-get-info): expect (none) -> 1" in proc.stderr
    text = (work / "r.yaml").read_text()
    want = RECIPE.replace("expect: 7    # guessed", "expect: 3    # guessed").replace(
        "  - use: mem-get-info\n", "  - use: mem-get-info\n    expect: 1\n")
    assert text == want  # comments, folded text, quoting and flow mappings untouched
    again = porter("expect", "r.yaml", cwd=work)
    assert again.returncode == 0 and "every expect: count matches" in again.stderr
    assert (work / "r.yaml").read_text() == want


def test_expect_keeps_crlf_and_check_changes_nothing(work: Path):
    crlf = RECIPE.replace("\n", "\r\n").encode()
    (work / "r.yaml").write_bytes(crlf)
    proc = porter("expect", "r.yaml", "--check", cwd=work)
    assert proc.returncode == 1 and "would update 2" in proc.stderr
    assert (work / "r.yaml").read_bytes() == crlf
    assert porter("expect", "r.yaml", cwd=work).returncode == 0
    data = (work / "r.yaml").read_bytes()
    assert b"\r\n    expect: 1\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert [s["expect"] for s in yaml.safe_load(data)["steps"]] == [3, 1]


def test_expect_in_a_flow_mapping_step(work: Path):
    (work / "r.yaml").write_text(RECIPE.replace(
        "  - use: mem-get-info\n    reason: 'batch size from real free memory on npu'\n",
        "  - {use: mem-get-info, expect: 5, reason: why}\n"))
    assert porter("expect", "r.yaml", cwd=work).returncode == 0
    data = yaml.safe_load((work / "r.yaml").read_text())
    assert [s["expect"] for s in data["steps"]] == [3, 1]
    assert "# a comment between steps" in (work / "r.yaml").read_text()


def test_apply_update_expect_then_applies(work: Path):
    proc = porter("apply", "r.yaml", "--update-expect", "--no-smoke", "--out", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "expect 7 -> 3" in proc.stderr
    assert (work / "out/tinytts/report.json").is_file()
    assert yaml.safe_load((work / "r.yaml").read_text())["steps"][0]["expect"] == 3


def test_mismatch_on_a_never_applied_recipe_is_not_drift(work: Path):
    proc = porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work)
    assert proc.returncode == 1
    assert "expect mismatch: step 1 (widen-device-check) expected 7 matches and found 3" in proc.stderr
    assert "never confirmed" in proc.stderr and "upstream drift" not in proc.stderr
    assert not (work / "out/tinytts").exists()  # the package is not written
    rejected = work / "out/tinytts.rejected"
    assert "Refused" in (rejected / "report.md").read_text() and "expected 7 matches and found 3" in (
        rejected / "report.md").read_text()
    assert json.loads((rejected / "report.json").read_text())["steps"][0]["matched"] == 3
    assert "+++ b/tinytts/model.py" in (rejected / "port.diff").read_text()


def test_drift_after_a_clean_apply_keeps_the_package(work: Path):
    assert porter("expect", "r.yaml", cwd=work).returncode == 0
    assert porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work).returncode == 0
    before = (work / "out/tinytts/tinytts/model.py").read_bytes()
    # A new upstream: one more device check.
    model = work / "tinytts/tinytts/model.py"
    upstream = model.read_bytes()
    model.write_text(model.read_text() + '\n\ndef on_gpu(d):\n    return d.type == "cuda"\n')
    proc = porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work)
    assert proc.returncode == 1
    assert "upstream drift: step 1 (widen-device-check) expected 3 matches and found 4" in proc.stderr
    assert (work / "out/tinytts/tinytts/model.py").read_bytes() == before  # not replaced
    assert (work / "out/tinytts.rejected/report.md").is_file()
    # The same source with an edited recipe is an expect mismatch, not drift.
    model.write_bytes(upstream)
    (work / "r.yaml").write_text((work / "r.yaml").read_text().replace("expect: 3 ", "expect: 2 "))
    proc = porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work)
    assert proc.returncode == 1 and "expect mismatch" in proc.stderr and "steps (or porter) changed" in proc.stderr
    # A clean apply removes the stale refused report.
    assert porter("expect", "r.yaml", cwd=work).returncode == 0
    assert porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work).returncode == 0
    assert not (work / "out/tinytts.rejected").exists()


def test_exclude_symbols_leaves_named_functions_and_methods_alone(work: Path):
    text = RECIPE.replace('    files: ["tinytts/**/*.py"]\n',
                          '    files: ["tinytts/**/*.py"]\n    exclude_symbols: [pick_attention, TinyModel.forward]\n')
    (work / "r.yaml").write_text(text)
    assert porter("expect", "r.yaml", cwd=work).returncode == 0
    assert yaml.safe_load((work / "r.yaml").read_text())["steps"][0]["expect"] == 1
    assert porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=work).returncode == 0
    patched = (work / "out/tinytts/tinytts/model.py").read_text()
    assert 'return "sdpa" if device.type == "cuda" else "eager"' in patched  # excluded function
    assert "if x.is_cuda:" in patched  # excluded method
    assert 'resolved_device.type not in ("cuda", "npu")' in patched  # the rest is ported
    report = json.loads((work / "out/tinytts/report.json").read_text())
    assert report["steps"][0]["exclude_symbols"] == ["pick_attention", "TinyModel.forward"]


def test_exclude_symbols_bad_name_is_a_usage_error(work: Path):
    (work / "r.yaml").write_text(RECIPE.replace("    expect: 7", '    exclude_symbols: ["not a name"]\n    expect: 7'))
    proc = porter("validate", "r.yaml", cwd=work)
    assert proc.returncode == 2
    assert "r.yaml:13: steps[0].exclude_symbols" in proc.stderr and "not a function or class name" in proc.stderr
    assert "Traceback" not in proc.stderr
