"""The `smoke:` schema, the measurement definitions and the judging, without a subprocess."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from porter.smoke.checks import judge_audio, judge_outputs
from porter.smoke.metrics import audio_figures, compare
from porter.smoke.result import SmokeResult, DeviceInfo
from porter.smoke.spec import SmokeSpec, Thresholds

EXAMPLE = """
smoke:
  script: smoke/tiny_qwen2.py
  requires: ["transformers==4.47.1"]
  seed: 0
  dtype: float32
  run: [forward, generate]
  inputs: {prompt_len: 8, max_new_tokens: 16}
  thresholds: {mean_rel_diff_max: 0.01, cosine_min: 0.9999}
  outputs:
    logits: {max_abs_diff_max: 0.001}
  audio: {sample_rate: 24000, duration_min_s: 0.05, duration_max_s: 30}
"""


def test_documented_example_loads():
    spec = SmokeSpec.model_validate(yaml.safe_load(EXAMPLE)["smoke"])
    assert spec.requires == ("transformers==4.47.1",)
    assert spec.run == ("forward", "generate")
    th = spec.thresholds_for("logits")
    assert (th.mean_rel_diff_max, th.cosine_min, th.max_abs_diff_max) == (0.01, 0.9999, 0.001)
    assert spec.thresholds_for("backbone").max_abs_diff_max is None


def test_defaults_are_the_seed_criteria():
    th = SmokeSpec(script="s.py").thresholds
    assert th.mean_rel_diff_max == 0.01  # seed 000
    assert th.cosine_min == 0.9999  # seed 002


@pytest.mark.parametrize(
    "data, words",
    [
        ({"script": "s.py", "scirpt": "x"}, "scirpt"),
        ({"script": "s.txt"}, ".py"),
        ({"script": "s.py", "run": []}, "at least one"),
        ({"script": "s.py", "run": ["forward", "forward"]}, "twice"),
        ({"script": "s.py", "run": ["decode"]}, "forward"),
        ({"script": "s.py", "requires": ["--index-url x"]}, "pip options"),
        ({"script": "s.py", "dtype": "float64"}, "float32"),
        ({"script": "s.py", "thresholds": {"cosine_min": 2}}, "cosine_min"),
        ({"script": "s.py", "audio": {"duration_min_s": 5, "duration_max_s": 1}}, "duration_max_s"),
        ({"script": "s.py", "run": ["generate"], "outputs": {"logits": {}}}, "forward"),
        ({"script": "s.py", "inputs": {"x": float("nan")}}, "finite"),
        ({"script": "s.py", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_sections_are_rejected_with_the_place(data, words):
    with pytest.raises(ValidationError) as e:
        SmokeSpec.model_validate(data)
    assert words in str(e.value)


def test_spec_is_frozen():
    spec = SmokeSpec(script="s.py")
    with pytest.raises(ValidationError):
        spec.seed = 3


def test_check_files_names_missing_paths(tmp_path):
    spec = SmokeSpec(script="smoke/none.py", weights="w/model.safetensors")
    problems = dict(spec.check_files(tmp_path))
    assert "smoke/none.py" in problems["smoke.script"]
    assert "model.safetensors" in problems["smoke.weights"]
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "none.py").write_text("")
    assert [p for p, _ in spec.check_files(tmp_path)] == ["smoke.weights"]


def test_compare_definitions():
    ref = np.array([1.0, -2.0, 3.0, -4.0], dtype=np.float32)
    tgt = ref * 1.01
    m = compare(tgt, ref)
    assert m["mean_rel_diff"] == pytest.approx(0.01, rel=1e-5)
    assert m["rel_l2"] == pytest.approx(0.01, rel=1e-5)
    assert m["max_abs_diff"] == pytest.approx(0.04, rel=1e-5)
    assert m["mae"] == pytest.approx(0.025, rel=1e-5)
    assert m["cosine"] == pytest.approx(1.0)
    flipped = compare(-ref, ref)
    assert flipped["cosine"] == pytest.approx(-1.0)


def test_compare_counts_nan_and_keeps_json_clean():
    ref = np.ones((2, 3), dtype=np.float32)
    tgt = ref.copy()
    tgt[0, 1] = np.nan
    tgt[1, 2] = np.inf
    m = compare(tgt, ref)
    assert (m["nan"], m["inf"]) == (1, 1)
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in m.values())


def test_integer_outputs_compare_exactly():
    m = compare(np.array([1, 2, 3]), np.array([1, 5, 3]))
    assert m["mismatched"] == 1 and "cosine" not in m


def _judge(spec, name, tgt, ref, kind="npu-sim"):
    return judge_outputs(spec, {name: compare(tgt, ref)}, kind, spec.dtype)


def test_threshold_failure_says_check_output_and_amount():
    spec = SmokeSpec(script="s.py")
    ref = np.linspace(1, 2, 50).astype(np.float32)
    figures, failures = _judge(spec, "logits", ref * 1.05, ref)
    assert [f.check for f in failures] == ["mean_rel_diff_max"]
    f = failures[0]
    assert f.output == "logits" and f.device == "npu-sim"
    assert f.measured == pytest.approx(0.05, rel=1e-4) and f.threshold == 0.01
    assert "logits" in f.message and "5.0000%" in f.message and "1.0000%" in f.message
    assert not figures[0].passed


def test_per_output_override_and_missing_named_output():
    spec = SmokeSpec(script="s.py", outputs={"logits": Thresholds(mean_rel_diff_max=0.1), "dit_head": Thresholds()})
    ref = np.linspace(1, 2, 50).astype(np.float32)
    _, failures = _judge(spec, "logits", ref * 1.05, ref)
    assert [(f.check, f.output) for f in failures] == [("missing-output", "dit_head")]
    assert "produced: logits" in failures[0].message


def test_nan_fails_whatever_the_thresholds():
    spec = SmokeSpec(script="s.py", thresholds=Thresholds())
    ref = np.ones(8, dtype=np.float32)
    tgt = ref.copy()
    tgt[3] = np.nan
    _, failures = _judge(spec, "mel", tgt, ref)
    assert [f.check for f in failures] == ["finite"]
    assert "'mel'" in failures[0].message and "1 NaN" in failures[0].message


@pytest.mark.parametrize(
    "wave, checks, expected",
    [
        (np.zeros((1, 8000)), {}, ["audio.rms_min"]),
        (np.full((1, 8000), 2.0), {}, ["audio.peak_max", "audio.clip_fraction_max"]),
        (np.full((1, 80), 0.3), {"duration_min_s": 0.5}, ["audio.duration_min_s"]),
        (np.full((1, 80000), 0.3), {"duration_max_s": 1.0}, ["audio.duration_max_s"]),
        (np.full((1, 800), 0.3), {"sample_rate": 24000}, ["audio.sample_rate"]),
        (np.array([[0.3, np.nan, 0.2, 0.1]]), {}, ["audio.finite"]),
        (np.full((2, 8000), 0.3), {}, []),
    ],
)
def test_audio_checks(wave, checks, expected):
    spec = SmokeSpec(script="s.py", audio=checks)
    a = audio_figures(wave, 16000, spec.audio.clip_level)
    a.update(device="npu-sim", n_tokens=None, wav="smoke.wav")
    figures, failures = judge_audio(spec, a, None)
    assert [f.check for f in failures] == expected
    for f in failures:
        assert "npu-sim" in f.message


def test_simulated_result_never_claims_ascend():
    dev = DeviceInfo(kind="npu-sim", torch_device="npu:0", simulated=True, description="porter npu simulator")
    r = SmokeResult(passed=True, device=dev, dtype="float32", seed=0, script="s.py", out_dir="/tmp")
    md = r.to_markdown()
    assert "npu-sim (CPU-backed simulation, not Ascend)" in md
    assert "not Ascend results" in md
    j = r.to_json()
    assert j["device"]["label"] == "npu-sim (CPU-backed simulation, not Ascend)" and "simulation_note" in j
    real = SmokeResult(passed=True, device=DeviceInfo("npu", "npu:0", False, "Ascend 910B"), dtype="bfloat16",
                       seed=0, script="s.py", out_dir="/tmp")
    assert "simulation" not in real.to_markdown() and "simulation_note" not in real.to_json()
