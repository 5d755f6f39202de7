"""recipes/higgs_audio_v2.yaml on the pinned PyPI wheel (boson-multimodal 0.1.1), end to end. No mocks.

* the rewrite: every step matches its `expect:`; the SDPA unmask checks admit npu, the CUDA-graph
  gate in serve_engine.py is byte-identical, deepspeed is guarded;
* line endings: the wheel's files are CRLF (the recipe records that they equal the GitHub commit
  modulo line endings); the patched files stay CRLF, and port.diff applied with `git apply` to the
  pristine wheel reproduces the patched files byte for byte;
* the patched package imports next to a deepspeed that cannot start (a fixture), the unpatched one
  does not;
* `porter apply` with smoke on npu-sim passes: teacher-forced text and audio logits against the
  CPU float32 reference, greedy delay-pattern codes identical to the CPU's (codes only: see
  recipes/smoke/higgs_audio_v2.py for why no waveform);
* the port changes nothing for CPU users: the same smoke on `--device cpu` gives bit-identical
  outputs for the patched package and for the unpatched wheel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import support
from support import assert_every_step_explained, changed_lines

from porter import port
from porter.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "higgs_audio_v2.yaml"
FIX = Path(__file__).parent / "fixtures" / "higgs_audio_v2"
COMMIT = "f04f5df76a6a7b14674e0d6d715b436c422883c6"

network = pytest.mark.network

MODEL = "boson_multimodal/model/higgs_audio/modeling_higgs_audio.py"
UTILS = "boson_multimodal/model/higgs_audio/utils.py"
SERVE = "boson_multimodal/serve/serve_engine.py"

PROBE = support.import_probe('''\
    from boson_multimodal.model.higgs_audio import HiggsAudioModel  # noqa: F401
    from boson_multimodal.model.higgs_audio import utils
    out["deepspeed_groups"] = repr(utils.deepspeed_groups)
''')


def test_recipe_is_complete():
    r = load_recipe(RECIPE).recipe
    (src,) = r.source
    assert src.pypi == "boson-multimodal==0.1.1" and src.sha256
    assert COMMIT in src.note and "boson-ai/higgs-audio" in src.note and "CRLF" in src.note
    assert_every_step_explained(r)
    assert r.steps[-1].use == "import-order"  # it must run last
    smoke = r.smoke
    assert smoke is not None and smoke.dtype == "float32" and smoke.run == ("forward",)
    (tf,) = smoke.requires
    assert tf == "transformers==4.46.3"  # >=4.45.1,<4.47 (the wheel's pin); LLAMA_ATTENTION_CLASSES gone in 4.48
    assert (RECIPE.parent / smoke.script).is_file()


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """`porter apply recipes/higgs_audio_v2.yaml` with smoke on npu-sim."""
    return port.apply(RECIPE, out=tmp_path_factory.mktemp("higgs"), device="npu-sim")


def _texts(applied, rel: str) -> tuple[str, str]:
    before = applied.build.tree.files[rel].read_bytes().decode("utf-8")
    return before, (applied.target / rel).read_bytes().decode("utf-8")


@network
@pytest.mark.slow
def test_every_step_matches_its_expect(applied):
    build = applied.build
    assert not build.drift, build.drift
    assert [(s["use"], s["matched"]) for s in build.report["steps"]] == [
        ("widen-device-check", 3), ("compile-bypass", 0), ("hardcoded-device", 4), ("cuda-api", 1),
        ("guard-import", 2), ("attention-fallback", 0), ("import-order", 4),
    ]
    assert sorted(f.path for f in build.result.files if f.status == "changed") == [
        "boson_multimodal/audio_processing/higgs_audio_tokenizer.py",
        "boson_multimodal/audio_processing/quantization/ddp_utils.py",
        "boson_multimodal/audio_processing/quantization/distrib.py",
        MODEL,
        UTILS,
        SERVE,
    ]


@network
@pytest.mark.slow
def test_sdpa_unmask_widened_and_cuda_graph_gate_kept(applied):
    before, after = _texts(applied, MODEL)
    removed, added = changed_lines(before, after)
    assert [r.strip() for r in removed] == [
        'and attention_mask.device.type == "cuda"',
        'and audio_attention_mask.device.type == "cuda"',
        'and attention_mask.device.type == "cuda"',
    ]
    assert [a.strip() for a in added] == [r.strip().replace('== "cuda"', 'in ("cuda", "npu")') for r in removed]
    assert "torch.cuda.Stream(device=self.device)" in after  # CUDA-graph capture code is left CUDA-only
    before, after = _texts(applied, SERVE)
    gate = '        if device == "cuda":\r\n            logger.info(f"Capturing CUDA graphs'
    assert before.count(gate) == 1 and after.count(gate) == 1
    assert any(f["category"] == "compile_gate" and f["file"] == SERVE for f in applied.build.report["findings"])


@network
@pytest.mark.slow
def test_deepspeed_guard(applied):
    before, after = _texts(applied, UTILS)
    removed, added = changed_lines(before, after)
    imports = ["from deepspeed.utils import groups as deepspeed_groups", "from deepspeed.sequence.layer import _SeqAllToAll"]
    assert removed == ["    " + i for i in imports] + ["if is_deepspeed_available():"]
    assert added == ["    try:"] + ["        " + i for i in imports] + [
        "    except Exception:  # installed but cannot load on this host (added by porter)",
        "        deepspeed_groups = None",
        "        _SeqAllToAll = None",
        "if is_deepspeed_available() and deepspeed_groups is not None:",  # the import-time monkeypatch
    ]


@network
@pytest.mark.slow
def test_crlf_kept_and_port_diff_reproduces_the_patched_files(applied, tmp_path):
    build = applied.build
    py = [rel for rel in build.tree.files if rel.endswith(".py")]
    crlf = [rel for rel in py if b"\r\n" in build.tree.files[rel].read_bytes()]
    assert len(py) == 32 and len(crlf) == 27  # the 5 others are empty __init__.py files
    for rel in crlf:
        data = build.tree.files[rel].read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n"), f"{rel}: the wheel mixes line endings"
    changed = [f.path for f in build.result.files if f.status == "changed"]
    for rel in changed:
        data = (applied.target / rel).read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n"), f"{rel}: porter wrote LF lines into a CRLF file"
    # port.diff, applied by git to the pristine wheel, gives the patched files byte for byte
    pristine = tmp_path / "pristine"
    for rel in py:
        (pristine / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build.tree.files[rel], pristine / rel)
    diff = (applied.target / "port.diff").read_bytes().split(b"--- /dev/null\n+++ b/pyproject.toml")[0]
    (tmp_path / "code.diff").write_bytes(diff)
    proc = subprocess.run(["git", "apply", "--whitespace=nowarn", str(tmp_path / "code.diff")],
                          cwd=pristine, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for rel in py:
        assert (pristine / rel).read_bytes() == (applied.target / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def smoke_python(applied):
    return support.smoke_python(RECIPE)


def _upstream_root(applied) -> Path:
    (src,) = applied.build.tree.sources
    assert (src.root / MODEL).is_file()
    return src.root


def _probe(python: str, *roots: Path) -> dict:
    return support.probe(python, PROBE, *roots)


@network
@pytest.mark.slow
def test_patched_imports_next_to_a_deepspeed_that_cannot_start(applied, smoke_python):
    broken = FIX / "broken_deepspeed"
    upstream = _probe(smoke_python, broken, _upstream_root(applied))
    assert upstream.get("import_error", "").startswith("RuntimeError: porter test fixture"), upstream
    assert _probe(smoke_python, broken, applied.target) == {"deepspeed_groups": "None"}
    # without deepspeed both import, and the patched module has the same names
    assert _probe(smoke_python, _upstream_root(applied)) == _probe(smoke_python, applied.target) == {
        "deepspeed_groups": "None"}


@network
@pytest.mark.slow
def test_apply_with_smoke_on_npu_sim(applied):
    smoke = applied.smoke
    assert applied.exit_code == 0, applied.messages
    assert smoke.passed, smoke.failures
    assert smoke.device.kind == "npu-sim"
    figures = {o.name: o for o in smoke.outputs}
    assert set(figures) == {"text_logits", "audio_logits", "generated_codes", "reverted_codes"}
    assert tuple(figures["generated_codes"].shape) == (8, 24) and figures["generated_codes"].mismatched == 0
    assert tuple(figures["audio_logits"].shape) == (6, 8, 1026)
    assert figures["text_logits"].cosine > 0.9999
    assert smoke.audio is None  # codes, not audio: no honest offline audio tokenizer
    assert smoke.ops["missing"] == []
    # the widened SDPA site ran on the npu device
    used = {u["op"]: u for u in smoke.ops["ops"]}
    assert any("_unmask_unattended" in loc for loc in used["aten::all.dim"]["locations"])


@network
@pytest.mark.slow
def test_cpu_outputs_identical_to_unpatched_upstream(applied, tmp_path):
    from porter.smoke import run_smoke
    from porter.smoke.compare import compare_runs

    spec = load_recipe(RECIPE).recipe.smoke
    runs = {}
    for label, root in (("patched", applied.target), ("upstream", _upstream_root(applied))):
        out = tmp_path / label
        result = run_smoke(spec, recipe_dir=RECIPE.parent, package_root=root, device="cpu", out_dir=out)
        assert result.passed, (label, result.failures)
        runs[label] = out
    cmp = compare_runs(runs["patched"], runs["upstream"], a_label="patched", b_label="upstream")
    assert cmp.device == "cpu"
    assert {o.name for o in cmp.outputs} == {"text_logits", "audio_logits", "generated_codes", "reverted_codes"}
    assert cmp.passed, cmp.to_markdown()
