"""recipes/moss_tts_nano.yaml end to end on porter's own fixtures (CI reaches neither HF nor GitHub).

tests/fixtures/moss_tts_nano/{hf,github} are small files written for these tests that reproduce the
code shapes the recipe rewrites in the two upstreams (HF remote code, GitHub scripts): every step
must match exactly its `expect:` count there too, and the whole port.diff is compared with a golden
file. The smoke test builds a tiny model from the patched fixture package and runs it on npu-sim
against a CPU reference; without change A (the voice-clone batch size from the device's free
memory) the same smoke test fails.

With local copies of the real upstreams, set MOSS_TTS_NANO_HF and MOSS_TTS_NANO_GITHUB to run the
recipe and its smoke test against them too (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from porter.cli import main
from porter.port import plan
from porter.recipe import load_recipe
from porter.rewrite import rewrite_tree

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "moss_tts_nano.yaml"
FIX = Path(__file__).parent / "fixtures" / "moss_tts_nano"
GOLDEN = FIX / "port.diff"


def sources(hf: Path = FIX / "hf", github: Path = FIX / "github") -> list[str]:
    return ["--source", f"hf={hf}", "--source", f"github={github}"]


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("moss")
    assert main(["apply", str(RECIPE), *sources(), "--out", str(out), "--no-smoke"]) == 0
    return out / "moss_tts_nano"


def report_of(pkg: Path) -> dict:
    return json.loads((pkg / "report.json").read_text())


def test_recipe_pins_both_upstreams_and_every_step_has_expect_and_reason():
    recipe = load_recipe(RECIPE).recipe
    hf, github = recipe.sources
    assert (hf.id, hf.hub, hf.into) == ("hf", "OpenMOSS-Team/MOSS-TTS-Nano", "moss_tts_nano")
    assert re.fullmatch(r"[0-9a-f]{40}", hf.revision)
    assert set(hf.files) == {
        "configuration_moss_tts_nano.py", "gpt2_decoder.py", "modeling_moss_tts_nano.py",
        "prompting.py", "tokenization_moss_tts_nano.py", "config.json",
    }
    assert (github.id, github.git, github.rev) == (
        "github", "https://github.com/OpenMOSS/MOSS-TTS-Nano", "42b46456f414b66e7e1df72bd88180322e243b40")
    assert "how" in hf.note or "revision" in hf.note
    for step in recipe.steps:
        assert step.expect is not None and step.expect > 0, step.use
        assert step.reason.strip(), step.use
    assert recipe.smoke is not None and "transformers==4.57.1" in recipe.smoke.requires


def test_full_diff_is_the_golden_one(patched: Path):
    assert (patched / "port.diff").read_text() == GOLDEN.read_text()


def test_every_step_matches_its_expect_and_the_decisions_are_recorded(patched: Path):
    report = report_of(patched)
    assert [s["matched"] for s in report["steps"]] == [s["expect"] for s in report["steps"]]
    assert not any(s["drift"] for s in report["steps"])
    rewrites = [c for c in report["changes"] if c["kind"] == "rewrite"]
    by = {(c["file"], c["transform"], c["before"]): c for c in rewrites}
    model = "moss_tts_nano/modeling_moss_tts_nano.py"
    # change A: the gate admits npu and the free memory comes from the device in use
    assert by[(model, "widen-device-check", 'resolved_device.type != "cuda"')]["after"] == \
        'resolved_device.type not in ("cuda", "npu")'
    assert by[(model, "mem-get-info", "torch.cuda.mem_get_info(resolved_device)")]["after"] == \
        "_porter_mem_get_info(resolved_device)"
    # change B: the stability fallback picks sdpa on npu
    assert by[(model, "attention-fallback", 'device.type == "cuda"')]["after"] == 'device.type in ("cuda", "npu")'
    # change C: flash_attention_2 on npu tensors runs SDPA before flash_attn is even looked for
    c = next(c for c in rewrites if c["transform"] == "replace-text-in-function")
    assert c["file"] == "moss_tts_nano/gpt2_decoder.py" and c["safety"] == "recipe-specific"
    assert "self._sdpa_attention(" in c["after"] and "NotImplementedError" in c["after"]
    decoder = (patched / "moss_tts_nano/gpt2_decoder.py").read_text()
    assert decoder.index('if query.device.type == "npu":') < decoder.index("if not _FLASH_ATTN_AVAILABLE:")
    assert 'if query.device.type != "cuda":\n            raise ValueError("flash_attention_2 requires CUDA tensors.")' \
        in decoder  # the seed's widening is not repeated: the CUDA check and message stay
    # torchaudio (no wheel matches every torch_npu torch) is imported only where wavs are read/written
    modeling = (patched / model).read_text()
    assert "\nimport torchaudio\n" not in modeling and modeling.count("        import torchaudio\n") == 3
    # the shipped config keeps flash_attention_2 for CUDA (a file cannot choose per device)
    assert (patched / "moss_tts_nano/config.json").read_bytes() == (FIX / "hf/config.json").read_bytes()
    findings = {(f["file"], f["category"]) for f in report["findings"]}
    assert ("moss_tts_nano/gpt2_decoder.py", "kernel_gate") in findings
    assert ("finetuning/sft.py", "device_check") in findings  # training: outside the recipe
    sft = (patched / "finetuning/sft.py").read_bytes()
    assert sft == (FIX / "github/finetuning/sft.py").read_bytes()
    for module in ("infer.py", "moss_tts_nano_runtime.py", model):
        compile((patched / module).read_text(), module, "exec")


def test_the_steps_change_nothing_on_patched_code(patched: Path):
    skip = {"port.diff", "report.md", "report.json"}
    files = {p.relative_to(patched).as_posix(): p for p in sorted(patched.rglob("*"))
             if p.is_file() and p.name not in skip}
    result = rewrite_tree(files, plan(load_recipe(RECIPE)), jobs=1)
    assert result.changes == []


def test_upstream_drift_is_caught(tmp_path: Path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(FIX / "hf", hf)
    out = tmp_path / "out"
    assert main(["apply", str(RECIPE), *sources(hf=hf), "--out", str(out), "--no-smoke"]) == 0  # counts confirmed
    model = hf / "modeling_moss_tts_nano.py"
    model.write_text(model.read_text().replace("torch.cuda.mem_get_info(resolved_device)", "(0, 0)"))
    assert main(["apply", str(RECIPE), *sources(hf=hf), "--out", str(out), "--no-smoke"]) == 1
    err = capsys.readouterr().err
    assert "upstream drift: step 4 (mem-get-info) expected 1 matches and found 0" in err
    assert "torch.cuda.mem_get_info" in (out / "moss_tts_nano/port.diff").read_text()  # not replaced


def smoke_figures(pkg: Path) -> tuple[dict, dict]:
    """The smoke result, and the script's ctx.note values as {role: {name: value}}."""
    smoke = report_of(pkg)["smoke"]
    noted: dict[str, dict] = {}
    for name, by_role in smoke["values"].items():
        for role, value in by_role.items():
            noted.setdefault(role, {})[name] = value
    return smoke, noted


def test_smoke_on_npu_sim_batches_voice_clone_chunks_by_device_memory(tmp_path: Path):
    out = tmp_path / "out"
    assert main(["apply", str(RECIPE), *sources(), "--out", str(out), "--device", "npu-sim"]) == 0
    smoke, voice = smoke_figures(out / "moss_tts_nano")
    assert smoke["passed"] is True and smoke["device"]["kind"] == "npu-sim"
    outputs = {o["name"]: o for o in smoke["outputs"]}
    assert set(outputs) >= {"global_hidden_states", "text_logits", "audio0_logits",
                            "padded_batch.global_hidden_states", "voice_clone.audio_token_ids"}
    assert all(o["passed"] for o in outputs.values())
    target, reference = voice["target"], voice["reference"]
    assert reference["voice_clone.batch_size"] == 1  # CPU: upstream behaviour
    # 64 GiB simulated device, 16 GiB per sample: 0.9 * free // 16 GiB = 3 of the 4 chunks at once
    assert target["device.total_bytes"] == 64 * 1024**3
    assert target["voice_clone.batch_size"] == target["voice_clone.expected_batch_size"] == 3
    assert target["attention.global"] == target["attention.local"] == "flash_attention_2"
    assert reference["attention.local"] == "sdpa"
    assert target["attention.stability_fallback"] == "sdpa"
    assert smoke["audio"]["sample_rate"] == 48000 and smoke["audio"]["channels"] == 2


def test_smoke_fails_without_change_a(tmp_path: Path):
    """The seed's mistake class: without the mem-get-info step npu keeps batch size 1."""
    recipe_dir = tmp_path / "recipes"
    shutil.copytree(RECIPE.parent / "smoke", recipe_dir / "smoke")
    text = RECIPE.read_text()
    step = re.search(r"  - use: widen-device-check\n    files: \[moss_tts_nano/modeling.*?(?=\n  - use: )", text, re.S)
    assert step is not None
    (recipe_dir / "moss_tts_nano.yaml").write_text(text.replace(step.group(0) + "\n", ""))
    out = tmp_path / "out"
    assert main(["apply", str(recipe_dir / "moss_tts_nano.yaml"), *sources(), "--out", str(out),
                 "--device", "npu-sim"]) == 1
    smoke = report_of(out / "moss_tts_nano")["smoke"]
    assert smoke["passed"] is False
    assert "voice-clone batch size 1" in json.dumps(smoke["error"])


UPSTREAM = {k: os.environ.get(f"MOSS_TTS_NANO_{k.upper()}") for k in ("hf", "github")}


@pytest.mark.skipif(not all(UPSTREAM.values()), reason="set MOSS_TTS_NANO_HF and MOSS_TTS_NANO_GITHUB to local copies")
def test_real_upstream_with_local_copies(tmp_path: Path):
    out = tmp_path / "out"
    code = main(["apply", str(RECIPE), *sources(Path(UPSTREAM["hf"]), Path(UPSTREAM["github"])),
                 "--out", str(out), "--device", "npu-sim"])
    assert code == 0
    smoke, voice = smoke_figures(out / "moss_tts_nano")
    target = voice["target"]
    assert smoke["passed"] is True
    assert target["voice_clone.batch_size"] == target["voice_clone.expected_batch_size"] > 1
