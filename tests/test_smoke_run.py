"""run_smoke end to end: real subprocesses, real tiny models, real files. No mocks.

The fixture scripts live in tests/fixtures/smoke/; `pkg/` plays the patched package (it holds
porter's fake vocoder), so the tests also see that the script imported it from there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from porter.smoke import SmokeInputError, SmokeSpec, run_smoke

FIXTURES = Path(__file__).parent / "fixtures" / "smoke"
PKG = FIXTURES / "pkg"


def smoke(tmp_path, script, device="cpu", package_root=PKG, **fields):
    spec = SmokeSpec(script=script, **fields)
    out = tmp_path / "out"
    return run_smoke(spec, recipe_dir=FIXTURES, package_root=package_root, device=device, out_dir=out), out


def check_qwen2_run(result, out, kind):
    assert result.passed, result.to_markdown()
    assert result.device.kind == kind
    names = {o.name for o in result.outputs}
    assert {"logits", "backbone.last_hidden_state"} <= names
    for o in result.outputs:
        assert o.cosine == pytest.approx(1.0, abs=1e-6) and o.max_abs_diff <= 1e-5, o
    # audio: 16 greedy tokens * 256 samples at 16 kHz, from the fake vocoder
    data, sr = sf.read(out / "smoke.wav")
    assert sr == 16000 and data.shape == (16 * 256,)
    assert result.audio.n_tokens == 16 and result.audio.duration_s == pytest.approx(0.256)
    assert 0.05 < result.audio.rms < 0.5 and np.isfinite(data).all()
    assert (out / "smoke.png").stat().st_size > 10_000
    assert result.perf.generate_s > 0 and result.perf.tokens_per_s > 0 and result.perf.peak_memory_bytes > 0
    assert result.imports["imported"]["tiny_vocoder"].startswith(str(PKG.resolve()))
    saved = json.loads((out / "smoke.json").read_text())
    assert saved == json.loads(json.dumps(result.to_json()))
    assert saved["device"]["kind"] == kind
    md = result.to_markdown()
    assert "PASSED" in md and "smoke.png" in md


def test_tiny_qwen2_passes_on_cpu(tmp_path):
    result, out = smoke(tmp_path, "tiny_qwen2.py", inputs={"prompt_len": 8, "max_new_tokens": 16})
    check_qwen2_run(result, out, "cpu")
    assert result.ops is None  # op recording is for the npu device only
    assert "getrusage" in result.perf.peak_memory_source


def test_tiny_qwen2_passes_on_npu_sim(tmp_path):
    result, out = smoke(tmp_path, "tiny_qwen2.py", device="npu-sim", inputs={"prompt_len": 8, "max_new_tokens": 16})
    check_qwen2_run(result, out, "npu-sim")
    assert result.device.simulated and result.device.torch_device.startswith("npu")
    assert "torch.npu.max_memory_allocated" in result.perf.peak_memory_source
    assert result.ops is not None
    md = result.to_markdown()
    assert "npu-sim (CPU-backed simulation, not Ascend)" in md and "npu (Ascend)" not in md


def test_nan_in_an_output_fails_and_names_it(tmp_path):
    result, _ = smoke(tmp_path, "plain.py", inputs={"nan_output": "head"})
    assert not result.passed
    checks = {(f.check, f.output) for f in result.failures}
    assert ("finite", "head") in checks and ("finite-reference", "head") in checks
    msg = next(f.message for f in result.failures if f.check == "finite")
    assert "'head'" in msg and "NaN" in msg and "cpu" in msg
    assert all(f.output == "head" for f in result.failures)  # encoder, ids and audio are fine
    assert "FAILED" in result.to_markdown() and "'head'" in result.summary()


def test_violated_threshold_reports_the_numbers(tmp_path):
    result, _ = smoke(tmp_path, "plain.py", inputs={"target_scale": 1.05}, run=["forward"])
    assert not result.passed
    [f] = result.failures
    assert (f.check, f.output, f.threshold) == ("mean_rel_diff_max", "head", 0.01)
    assert f.measured == pytest.approx(0.05, rel=1e-4)
    assert "5.0000%" in f.message and "head" in f.message
    assert result.values == {"device type": {"reference": "cpu", "target": "cpu"}}
    assert '| device type | – | "cpu" | "cpu" |' in result.to_markdown()
    head = next(o for o in result.outputs if o.name == "head")
    assert not head.passed and head.cosine == pytest.approx(1.0)
    # a per-output override lets this port's 5% through and nothing else changes
    ok, _ = smoke(tmp_path, "plain.py", inputs={"target_scale": 1.05}, run=["forward"],
                  outputs={"head": {"mean_rel_diff_max": 0.06, "rel_l2_max": 0.06}})
    assert ok.passed, ok.summary()


def test_timeout_is_a_failed_smoke_with_the_phase(tmp_path):
    result, out = smoke(tmp_path, "plain.py", inputs={"sleep_in": "build", "sleep_s": 120}, timeout_s=8)
    assert not result.passed
    request = str(out / "smoke-request.json")
    alive = [p for p in Path("/proc").glob("[0-9]*/cmdline") if request in _read_cmdline(p)]
    assert not alive, "the timed-out smoke process is still running"
    [f] = result.failures
    assert f.check == "timeout" and f.threshold == 8
    # normally stuck in build; on a loaded machine it may still be importing torch
    assert result.error.stage == "timeout" and result.error.phase in ("setup-device", "import-script", "build")
    assert repr(result.error.phase) in f.message
    assert result.perf.wall_s < 30


def _read_cmdline(p: Path) -> str:
    try:
        return p.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_hard_crash_reports_stderr_tail(tmp_path):
    result, _ = smoke(tmp_path, "plain.py", inputs={"crash_in": "forward"})
    assert not result.passed
    [f] = result.failures
    assert f.check == "crash" and "SIGABRT" in f.message and "forward-reference" in f.message
    assert "about to crash in forward" in result.error.stderr_tail


def test_script_exception_keeps_earlier_figures(tmp_path):
    result, out = smoke(tmp_path, "plain.py", inputs={"raise_in": "generate"})
    assert not result.passed
    [f] = result.failures
    assert f.check == "script-error" and f.output == "generate"
    assert "fixture: failure raised in generate" in f.message
    assert "RuntimeError" in result.error.traceback
    assert {o.name for o in result.outputs} >= {"head", "encoder"}  # forward figures survive
    assert not (out / "smoke.wav").exists()


def test_silent_audio_fails(tmp_path):
    result, _ = smoke(tmp_path, "plain.py", inputs={"gain": 0.0}, run=["generate"])
    assert [f.check for f in result.failures] == ["audio.rms_min"]
    assert "silent" in result.failures[0].message


def test_missing_script_is_bad_input_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SmokeInputError) as e:
        run_smoke(SmokeSpec(script="nope.py"), recipe_dir=FIXTURES, package_root=PKG, device="cpu", out_dir=out)
    assert e.value.problems[0][0] == "smoke.script" and "nope.py" in str(e.value)
    assert not out.exists()


def test_unpatched_copy_winning_the_import_fails(tmp_path):
    root, other = tmp_path / "patched", tmp_path / "unpatched"
    root.mkdir(), other.mkdir()
    (root / "tiny_codec.py").write_text("SCALE = 1.0\n")
    (other / "tiny_codec.py").write_text("SCALE = 1.0\n")
    result, _ = smoke(tmp_path, "shadowed.py", package_root=root, run=["forward"],
                      env={"FIXTURE_SHADOW_DIR": str(other)})
    assert [(f.check, f.output) for f in result.failures] == [("patched-import", "tiny_codec")]
    assert "unpatched" in result.failures[0].message
    (other / "tiny_codec.py").unlink()  # now the patched copy is the one imported
    result, _ = smoke(tmp_path, "shadowed.py", package_root=root, run=["forward"],
                      env={"FIXTURE_SHADOW_DIR": str(other)})
    assert result.passed, result.summary()


def test_markdown_links_relative_to_the_report(tmp_path):
    result, out = smoke(tmp_path, "plain.py", run=["generate"])
    md = result.to_markdown(relative_to=tmp_path)
    assert "](out/smoke.png)" in md and "](out/smoke.wav)" in md


def test_compare_runs_patched_vs_unpatched_on_cpu(tmp_path):
    """Issue 5's 'the port changes nothing on CPU', done with two smoke runs' saved outputs."""
    from porter.smoke import compare_runs

    same, changed = tmp_path / "same", tmp_path / "changed"
    for root, edit in ((same, None), (changed, ("770.0", "771.0"))):
        shutil.copytree(PKG, root)
        if edit:
            f = root / "tiny_vocoder" / "__init__.py"
            f.write_text(f.read_text().replace(*edit))
    runs = {}
    for name, root in (("upstream", PKG), ("same", same), ("changed", changed)):
        result, out = smoke(tmp_path / name, "plain.py", package_root=root)
        assert result.passed, result.summary()
        runs[name] = out
    ok = compare_runs(runs["same"], runs["upstream"], a_label="patched", b_label="upstream")
    assert ok.passed and ok.device == "cpu"
    assert {o.name for o in ok.outputs} == {"head", "ids", "encoder", "audio.waveform"}
    bad = compare_runs(runs["changed"], runs["upstream"], a_label="patched", b_label="upstream")
    assert not bad.passed
    assert [(f.check, f.output) for f in bad.failures] == [("max_abs_diff_max", "audio.waveform")]
    assert "patched vs upstream" in bad.failures[0].message and "DIFFERENT" in bad.to_markdown()


def test_ops_without_npu_kernel_and_float64_are_reported_and_can_fail(tmp_path):
    inputs = {"use_lgamma": True, "use_float64": True}
    listed, _ = smoke(tmp_path / "a", "plain.py", device="npu-sim", inputs=inputs, run=["forward"])
    assert listed.passed, listed.summary()  # listed, not checked, by default
    assert [u["op"] for u in listed.ops["missing"]] == ["aten::lgamma"]
    assert any(u["locations"][0].startswith("plain.py:") for u in listed.ops["missing"])
    assert {h["dtype"] for h in listed.ops["dtype_hazards"]} == {"float64"}
    assert listed.values == {"device type": {"reference": "cpu", "target": "npu"}}
    md = listed.to_markdown()
    assert "`aten::lgamma`" in md and "1 without an NPU kernel" in md and "npu-sim" in md

    locked, _ = smoke(tmp_path / "b", "plain.py", device="npu-sim", inputs=inputs, run=["forward"],
                      ops={"missing_max": 0, "dtype_hazards_max": 0})
    checks = {f.check: f for f in locked.failures}
    assert set(checks) == {"ops.missing_max", "ops.dtype_hazards_max"}
    assert checks["ops.missing_max"].output == "aten::lgamma" and checks["ops.missing_max"].measured == 1
    assert "plain.py:" in checks["ops.missing_max"].message and "npu-sim" in checks["ops.missing_max"].message
