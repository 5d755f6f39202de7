"""recipes/voxcpm2.yaml on the pinned PyPI wheel (voxcpm 2.0.3), end to end. No mocks.

* the rewrite: every step matches its `expect:`, the diff touches only what the recipe says
  (the device resolver, the torchaudio import), the compile gates, the compile calls behind them and
  every module attribute stay as they were (weights load with strict=False: a renamed
  parameter would silently stay random);
* the patched package imports next to the PyPI torchaudio that cannot load (the smoke
  environment installs it on purpose), the unpatched one does not; the resolver accepts npu
  and answers every other device exactly as upstream does;
* `porter apply` with smoke on npu-sim (the README's main job) passes;
* the port changes nothing for CPU users: the same smoke on `--device cpu` gives bit-identical
  outputs and audio for the patched package and for the unpatched wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import support
from support import assert_every_step_explained, changed_lines

from porter import port
from porter.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "voxcpm2.yaml"

network = pytest.mark.network

# The unpatched wheel imports torchaudio at import time and cannot import next to the smoke
# environment's torchaudio (that is the bug the port fixes). To run upstream at all, its tree
# gets this stand-in, which VoxCPM2 never calls; any use fails loudly.
TORCHAUDIO_STAND_IN = '''"""Test stand-in for torchaudio, for running the unpatched voxcpm only (it has no audio I/O)."""


def __getattr__(name):
    raise RuntimeError(f"torchaudio.{name} used: this stand-in has no audio I/O")
'''

PROBE = r'''
import json, sys
out = {}
try:
    import voxcpm  # noqa: F401
    from voxcpm.model.utils import resolve_runtime_device, auto_select_device
except BaseException as exc:
    out["import_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out)); sys.exit(0)
out["torchaudio_loaded"] = "torchaudio" in sys.modules and getattr(sys.modules["torchaudio"], "__file__", "") or False
res = {}
for d in [None, "auto", "cpu", "cuda", "cuda:1", "mps", "npu", "npu:0", "tpu"]:
    try:
        res[str(d)] = "-> " + resolve_runtime_device(d, "cuda")
    except Exception as exc:
        res[str(d)] = f"{type(exc).__name__}: {exc}"
for d in ["cuda", "npu", "mps", "cpu"]:
    res[f"auto_select_device({d})"] = auto_select_device(d)
out["resolve"] = res
print(json.dumps(out))
'''


def test_recipe_is_complete():
    loaded = load_recipe(RECIPE)
    r = loaded.recipe
    assert r.source[0].pypi == "voxcpm==2.0.3" and r.source[0].sha256
    assert_every_step_explained(r)
    assert r.smoke is not None and r.smoke.dtype == "bfloat16"
    assert r.smoke.audio.sample_rate == 48000
    assert "torchaudio==2.11.0" in r.smoke.requires_no_deps  # the wheel that cannot load
    assert (RECIPE.parent / r.smoke.script).is_file()


# -- the rewrite ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def build():
    return port.build_port(load_recipe(RECIPE), {})


def _texts(build, path):
    before = build.tree.files[path].read_text(encoding="utf-8")
    patched = {f.path: f.text for f in build.result.files if f.status == "changed"}
    return before, patched.get(path, before)


@network
def test_every_step_matches_its_expect(build):
    assert not build.drift, build.drift
    got = [(s["use"], s["matched"]) for s in build.report["steps"]]
    assert got == [
        ("lazy-import", 3),
        ("replace-text-in-function", 1), ("replace-text-in-function", 1),
        ("replace-text-in-function", 1), ("replace-text-in-function", 1),
        ("widen-device-check", 0),
        ("compile-bypass", 0),  # every compile call is behind the CUDA-only gate (issue 10)
        ("attention-fallback", 0),
    ]
    changed = sorted(f.path for f in build.result.files if f.status == "changed")
    # __init__.py: the runtime hook (porter.runtime); the helpers live in voxcpm/_porter_npu.py;
    # voxcpm2.py: its compile calls sit behind upstream's CUDA-only gate, so nothing there changes
    assert changed == ["voxcpm/__init__.py", "voxcpm/model/utils.py", "voxcpm/model/voxcpm.py"]
    assert sorted(build.emitted.generated) == ["pyproject.toml", "voxcpm/_porter_npu.py"]


@network
def test_resolver_diff_only_adds_npu(build):
    before, after = _texts(build, "voxcpm/model/utils.py")
    removed, added = changed_lines(before, after)
    assert removed == ["        \"'cuda', or indexed CUDA devices like 'cuda:0'.\""]
    assert added[-1] == "        \"'cuda', 'npu', or indexed devices like 'cuda:0' or 'npu:0'.\""
    assert sum('torch.npu.is_available()' in a for a in added) == 3
    assert '    if explicit.startswith("npu"):' in added
    assert "def auto_select_device" in after and "\n\n\ndef resolve_runtime_device" in after  # layout kept


@network
def test_model_files_change_only_imports(build):
    for path in ("voxcpm/model/voxcpm.py", "voxcpm/model/voxcpm2.py"):
        before, after = _texts(build, path)
        removed, added = changed_lines(before, after)
        # the compile calls sit behind `if self.device != "cuda": raise`: npu never reaches them
        assert removed == (["import torchaudio"] if path.endswith("/voxcpm.py") else []), (path, removed)
        assert after.count("torch.compile(") == before.count("torch.compile(") == 4
        # the CUDA-only compile gate is byte-identical
        assert after.count('            if self.device != "cuda":\n'
                           '                raise ValueError("VoxCPMModel can only be optimized on CUDA device")') == 1
    _, after = _texts(build, "voxcpm/model/voxcpm.py")
    assert "\nimport torchaudio\n" not in after
    assert after.count("import torchaudio\n") == 2  # inside _generate and build_prompt_cache


@network
def test_findings_keep_the_compile_gates_visible(build):
    cats = {(f["file"], f["category"]) for f in build.report["findings"]}
    for path in ("voxcpm/model/voxcpm.py", "voxcpm/model/voxcpm2.py"):
        assert any(p == path and "gate" in c for p, c in cats), cats
        behind = [f for f in build.report["findings"] if f["file"] == path and "behind the gate at line" in f["reason"]]
        assert len(behind) == 4 and all("torch.compile" in f["code"] for f in behind), behind


# -- the patched package at run time ------------------------------------------------------------
@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """`porter apply recipes/voxcpm2.yaml` with smoke on npu-sim: the README's main job."""
    out = tmp_path_factory.mktemp("voxcpm2")
    outcome = port.apply(RECIPE, out=out, device="npu-sim")
    return outcome


@pytest.fixture(scope="module")
def smoke_python(applied):
    return support.smoke_python(RECIPE)


@pytest.fixture(scope="module")
def upstream_root(build, tmp_path_factory):
    """The unpacked wheel as it is."""
    root = tmp_path_factory.mktemp("voxcpm-upstream")
    for rel, src in build.tree.files.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return root


@pytest.fixture(scope="module")
def upstream_runnable(upstream_root, tmp_path_factory):
    """The unpacked wheel plus the torchaudio stand-in (see TORCHAUDIO_STAND_IN)."""
    root = tmp_path_factory.mktemp("voxcpm-upstream-runnable") / "root"
    shutil.copytree(upstream_root, root)
    (root / "torchaudio").mkdir()
    (root / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STAND_IN)
    return root


def _probe(python, *roots):
    return support.probe(python, PROBE, *roots)


@network
@pytest.mark.slow
def test_patched_imports_where_torchaudio_cannot_load(applied, smoke_python, upstream_root):
    upstream = _probe(smoke_python, upstream_root)
    assert upstream.get("import_error", "").startswith("OSError"), (
        "the smoke environment's torchaudio should fail to load (that is what the port is tested against)", upstream)
    patched = _probe(smoke_python, applied.target)
    assert "import_error" not in patched, patched
    assert patched["torchaudio_loaded"] is False


@network
@pytest.mark.slow
def test_resolver_accepts_npu_and_is_unchanged_for_other_devices(applied, smoke_python, upstream_runnable):
    upstream = _probe(smoke_python, upstream_runnable)["resolve"]
    patched = _probe(smoke_python, applied.target)["resolve"]
    # this host has no CUDA, no MPS and no npu
    assert patched["npu"] == "ValueError: Requested device 'npu', but NPU is not available. Install torch_npu " \
        "on an Ascend host, or use device='auto' for automatic fallback."
    assert patched["npu:0"].startswith("ValueError: Requested device 'npu:0', but NPU is not available.")
    assert upstream["npu"].startswith("ValueError: Unsupported device 'npu'")
    assert "'npu'" in patched["tpu"] and "'npu'" not in upstream["tpu"]
    same = [k for k in upstream if k not in ("npu", "npu:0", "tpu")]
    assert {k: patched[k] for k in same} == {k: upstream[k] for k in same}
    assert patched["auto"] == upstream["auto"] == "-> cpu"
    assert patched["cuda"] == upstream["cuda"] and "CUDA is not available" in patched["cuda"]


def _sim_view_gap() -> str | None:
    """npu-sim gap: a view of an ordinary npu tensor inside torch.inference_mode() (voxcpm's
    generate) raises "Cannot set version_counter for inference tensor"."""
    code = (
        "import torch\nfrom porter.npu import sim\nsim.install()\n"
        "p = torch.zeros(2, 3, device='npu')\nwith torch.inference_mode():\n    p.expand(2, 2, 3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


@network
@pytest.mark.slow
def test_apply_with_smoke_on_npu_sim(applied):
    smoke = applied.smoke
    assert smoke is not None
    if not smoke.passed and smoke.error is not None and "version_counter" in (smoke.error.message or ""):
        gap = _sim_view_gap()
        if gap:
            pytest.xfail(f"npu-sim cannot run views inside torch.inference_mode() yet: {gap}")
    assert applied.exit_code == 0, applied.messages
    assert smoke.passed, smoke.failures
    assert smoke.device.kind == "npu-sim"
    names = {o.name for o in smoke.outputs}
    assert {"base_lm_hidden", "residual_hidden", "stop_logits", "dit_velocity", "vae_wav"} <= names
    assert smoke.audio.sample_rate == 48000 and smoke.audio.samples == 61440
    assert (applied.target / "smoke" / "smoke.wav").is_file()
    assert "npu-sim" in (applied.target / "report.md").read_text()


@network
@pytest.mark.slow
def test_cpu_outputs_identical_to_unpatched_upstream(applied, upstream_runnable, tmp_path):
    """The port changes nothing for CPU users: same smoke, --device cpu, patched vs the wheel."""
    from porter.smoke import run_smoke
    from porter.smoke.compare import compare_runs

    spec = load_recipe(RECIPE).recipe.smoke
    runs = {}
    for label, root in (("patched", applied.target), ("upstream", upstream_runnable)):
        out = tmp_path / label
        result = run_smoke(spec, recipe_dir=RECIPE.parent, package_root=root, device="cpu", out_dir=out)
        assert result.passed, (label, result.failures)
        runs[label] = out
    cmp = compare_runs(runs["patched"], runs["upstream"], a_label="patched", b_label="upstream")
    assert cmp.device == "cpu"
    assert {o.name for o in cmp.outputs} >= {"base_lm_hidden", "vae_wav", "audio.waveform"}
    assert cmp.passed, cmp.to_markdown()
