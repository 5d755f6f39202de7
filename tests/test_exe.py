"""The installed `porter` executable, in a subprocess: every command's documented exit codes.

README, "Exit codes": 0 success, 1 the port has a problem, 2 usage error / bad input, 3 internal
error, 130 interrupted. click's test runner hides how the console script turns a command's result
into the process's exit status (`ctx.exit(n)` is returned, not raised, outside standalone mode),
so these tests run what users run: the `porter` script pip installed next to this interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from support import installed_porter

FIXTURES = Path(__file__).parent / "fixtures"
PORTER = installed_porter()


def porter(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(PORTER), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    shutil.copy(FIXTURES / "tinytts.yaml", tmp_path / "tinytts.yaml")
    return tmp_path


# -- every command, its success -----------------------------------------------------------------
def test_success_is_0_for_every_command(work: Path):
    recipe = str(work / "tinytts.yaml")
    assert porter("--version").stdout.startswith("porter")
    for args in (["--help"], ["transforms"], ["transforms", "--json"], ["explain", "widen-device-check"],
                 ["validate", recipe], ["diff", recipe],
                 ["apply", recipe, "--out", str(work / "out"), "--no-smoke"],
                 ["apply", recipe, "--out", str(work / "out"), "--check"]):
        proc = porter(*args, cwd=work)
        assert proc.returncode == 0, (args, proc.stderr)


# -- 2: usage errors and bad input ----------------------------------------------------------------
BAD_RECIPES = {
    "unknown-transform": ("use: widen-device-check", "use: widen-device-chek", "did you mean"),
    "not-yaml": ("steps:", "steps: [", "tinytts.yaml"),
    "wrong-type": ("expect: 3", "expect: lots", "expect"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
@pytest.mark.parametrize("command", ["validate", "apply", "diff"])
def test_bad_recipe_is_2(work: Path, command: str, case: str):
    old, new, message = BAD_RECIPES[case]
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text().replace(old, new, 1))
    args = [command, str(recipe)] + (["--out", str(work / "out"), "--no-smoke"] if command == "apply" else [])
    proc = porter(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (work / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["nosuchcommand"], "No such command"),
    (["apply"], "Missing argument"),
    (["apply", "tinytts.yaml", "--device", "tpu"], "Invalid value"),
    (["apply", "tinytts.yaml", "--jobs", "0"], "Invalid value"),
    (["apply", "missing.yaml", "--no-smoke"], "missing.yaml"),
    (["validate", "missing.yaml"], "missing.yaml"),
    (["diff", "missing.yaml"], "missing.yaml"),
    (["explain", "widen-device-chek"], "did you mean 'widen-device-check'"),
    (["remap", "a.safetensors"], "Missing argument"),
    (["npu-kernels", "nonexistent.whl"], "no such wheel file"),
])
def test_bad_arguments_are_2(work: Path, args: list[str], message: str):
    proc = porter(*args, cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_missing_source_is_2(work: Path):
    shutil.rmtree(work / "tinytts")
    for args in (["apply", "tinytts.yaml", "--no-smoke"], ["diff", "tinytts.yaml"]):
        proc = porter(*args, cwd=work)
        assert proc.returncode == 2, proc.stderr
        assert "tinytts" in proc.stderr
    proc = porter("apply", "tinytts.yaml", "--source", str(work / "nowhere"), "--no-smoke", cwd=work)
    assert proc.returncode == 2 and "nowhere" in proc.stderr


# -- remap: malformed input is 2 through the executable (it used to exit 0) ---------------------
def _raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def _valid(path: Path) -> Path:
    return _raw(path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)


REMAP_CASES = {
    "truncated-file": (lambda p: (p.write_bytes(b"\x10\x00"), p)[1], "- add_prefix: x.\n", "fewer than the 8-byte"),
    "header-beyond-file": (lambda p: _raw(p, {}, length=4096), "- add_prefix: x.\n", "header length field says 4096"),
    "header-not-json": (lambda p: _raw(p, b"{not json}"), "- add_prefix: x.\n", "header is not JSON"),
    "unknown-dtype": (lambda p: _raw(p, {"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
                      "- add_prefix: x.\n", "unknown dtype 'Q4_K'"),
    "missing-file": (lambda p: p, "- add_prefix: x.\n", "no such file or directory"),
    "bad-rules-yaml": (_valid, "- rename: {from: a, to: b\n", "bad YAML"),
    "bad-rules-regex": (_valid, "- rename: {from: '[', to: b}\n", "bad regex"),
    "required-rule-matches-nothing": (_valid, "- rename: {from: zzz, to: b}\n  required: true\n", "zzz"),
}


@pytest.mark.parametrize("case", list(REMAP_CASES))
def test_remap_bad_input_is_2(tmp_path: Path, case: str):
    make, rules, message = REMAP_CASES[case]
    src = make(tmp_path / "in.safetensors")
    (tmp_path / "rules.yaml").write_text(rules)
    proc = porter("remap", str(src), str(tmp_path / "out.safetensors"), "--rules", str(tmp_path / "rules.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()
    as_json = porter("remap", str(src), str(tmp_path / "out.safetensors"), "--rules", str(tmp_path / "rules.yaml"), "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["exit_code"] == 2


def test_remap_success_is_0(tmp_path: Path):
    src = _valid(tmp_path / "in.safetensors")
    (tmp_path / "rules.yaml").write_text("- add_prefix: model.\n")
    proc = porter("remap", str(src), str(tmp_path / "out.safetensors"), "--rules", str(tmp_path / "rules.yaml"), "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stderr


# -- 1: the port has a problem --------------------------------------------------------------------
def test_expect_mismatch_is_1_for_apply_and_diff(work: Path):
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text().replace("expect: 3", "expect: 4"))
    proc = porter("apply", str(recipe), "--out", str(work / "out"), "--no-smoke")
    assert proc.returncode == 1 and "expect mismatch" in proc.stderr, proc.stderr
    assert not (work / "out/tinytts").exists() and (work / "out/tinytts.rejected/report.md").is_file()
    assert porter("diff", str(recipe)).returncode == 1


def test_upstream_drift_is_1_and_keeps_the_clean_port(work: Path):
    recipe, out = str(work / "tinytts.yaml"), str(work / "out")
    assert porter("apply", recipe, "--out", out, "--no-smoke").returncode == 0
    before = (work / "out/tinytts/port.diff").read_bytes()
    model = work / "tinytts/tinytts/model.py"  # the upstream grows one more device comparison
    model.write_text(model.read_text() + '\n\ndef pick(device):\n    return 2 if device.type == "cuda" else 1\n')
    proc = porter("apply", recipe, "--out", out, "--no-smoke")
    assert proc.returncode == 1 and "upstream drift" in proc.stderr, proc.stderr
    assert (work / "out/tinytts/port.diff").read_bytes() == before  # the clean port is not replaced
    assert (work / "out/tinytts.rejected/report.md").is_file()


def test_check_stale_is_1(work: Path):
    recipe, out = str(work / "tinytts.yaml"), str(work / "out")
    assert porter("apply", recipe, "--out", out, "--no-smoke").returncode == 0
    (work / "out/tinytts/tinytts/model.py").write_text("# edited\n")
    proc = porter("apply", recipe, "--out", out, "--check")
    assert proc.returncode == 1 and "stale" in proc.stderr


def test_a_transform_failing_on_a_file_is_1(work: Path):
    # config-edit reads the JSON it edits; a config.json that is not JSON makes the step fail there
    (work / "tinytts/config.json").write_text('{"attn_implementation": "flash_attention_2",}\n')
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text() + (
        "  - use: config-edit\n    with:\n      edits: [{key: attn_implementation, value: sdpa}]\n"
        "      reason: no flash-attention on npu\n    expect: 1\n"))
    proc = porter("apply", str(recipe), "--out", str(work / "out"), "--no-smoke")
    assert proc.returncode == 1, proc.stderr
    assert "config.json" in proc.stderr and "config-edit" in proc.stderr
    # nothing is installed; what the run found is beside the target for the user to read
    assert [p.name for p in (work / "out").iterdir()] == ["tinytts.rejected"]
    assert "config.json" in (work / "out/tinytts.rejected/report.md").read_text()


def test_npu_kernels_check_is_0_then_1_when_stale(tmp_path: Path):
    from test_npu_kernels import make_wheel

    wheel = make_wheel(tmp_path)
    out = tmp_path / "data"
    assert porter("npu-kernels", str(wheel), "--out-dir", str(out)).returncode == 0
    assert porter("npu-kernels", str(wheel), "--out-dir", str(out), "--check").returncode == 0
    listed = next(out.glob("torch_npu_kernels-*.txt"))
    listed.write_text(listed.read_text() + "aten::not_in_the_wheel\n")
    assert porter("npu-kernels", str(wheel), "--out-dir", str(out), "--check").returncode == 1


def test_failed_smoke_is_1(work: Path):
    shutil.copy(FIXTURES / "tinytts_smoke.py", work / "tinytts_smoke.py")
    recipe = work / "tinytts.yaml"
    recipe.write_text(recipe.read_text() + "smoke:\n  script: tinytts_smoke.py\n  run: [forward]\n"
                      "  inputs: {poison: true}\n")
    proc = porter("apply", str(recipe), "--out", str(work / "out"), "--device", "cpu")
    assert proc.returncode == 1 and "smoke test failed" in proc.stderr and "NaN" in proc.stderr


# -- 130: Ctrl-C at any moment, quietly -----------------------------------------------------------
def _interrupt_when(args: list[str], marker: str, cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start porter, send SIGINT as soon as `marker` shows on its stderr; (exit status, stderr)."""
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen([str(PORTER), *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGINT)
            break
    else:
        proc.wait()
        pytest.fail(f"porter ended before {marker!r} appeared: {''.join(seen)[-2000:]}")
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    return proc.returncode, "".join(seen) + rest


def test_ctrl_c_while_porter_imports_exits_130_without_traceback(work: Path):
    # -X importtime prints each import as it completes: click's parts mean porter.cli is importing
    code, err = _interrupt_when(["transforms"], "click._compat", work, {"PYTHONPROFILEIMPORTTIME": "1"})
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err


def test_ctrl_c_during_the_rewrite_exits_130_and_writes_nothing(work: Path):
    code, err = _interrupt_when(["apply", "tinytts.yaml", "--out", str(work / "out"), "--no-smoke"],
                                "source:", work)
    assert code in (130, 0), err  # 0 only if the tiny port finished before the signal landed
    assert "Traceback" not in err
    if code == 130:
        assert not (work / "out").exists() or [p.name for p in (work / "out").iterdir()] in ([], ["tinytts"])


def test_sigterm_unwinds_like_ctrl_c(work: Path):
    proc = subprocess.Popen([str(PORTER), "transforms"], cwd=work, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    for line in proc.stderr:
        if "click._compat" in line:
            proc.terminate()
            break
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
