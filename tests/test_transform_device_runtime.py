"""The device transforms together, run: CPU behaviour unchanged, npu taking the CUDA path.

One module written for CUDA (patterns from MOSS-TTS-Nano, VoxCPM2, Higgs-Audio, CSM and
Ming-omni-tts, written here, not copied) goes through hardcoded-device, autocast-device, cuda-api
and import-order in the order a recipe runs them. The upstream text and the patched text are then
run on this CPU host, in-process, and on npu-sim (porter's CPU-backed simulation of the npu
device; not Ascend) in one child process.
"""

from __future__ import annotations

import sys

import pytest
import torch

from support import run_json

from porter.npu.sim import sim_env
from porter.transforms import Context, all_transforms

STEPS = ["hardcoded-device", "autocast-device", "cuda-api", "import-order"]

UPSTREAM = '''\
"""A TTS runtime written for CUDA."""
import warnings

import torch


def resolve_device(device_arg="auto"):
    if device_arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_arg)


def set_seed(seed):
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def load_codec(device: str = "cuda"):
    return torch.nn.Linear(4, 4).to(device)


class Engine:
    def __init__(self, device_id=None):
        if device_id is not None:
            self._device = f"cuda:{device_id}"
        elif torch.cuda.is_available():
            self._device = "cuda:0"
        else:
            self._device = "cpu"

    def generate(self, x):
        model = torch.nn.Linear(4, 4)
        if torch.cuda.is_available():
            model = model.cuda()
            x = x.cuda()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # autocast("cuda") off CUDA warns that it switches off
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                enabled = torch.is_autocast_enabled()
                dtype = torch.get_autocast_gpu_dtype() if enabled else None
            with torch.cuda.amp.autocast(dtype=torch.bfloat16):
                legacy = torch.is_autocast_enabled()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            memory = torch.cuda.memory_allocated()
        else:
            memory = -1
        return model(x), enabled, dtype, legacy, memory


def attempt(fn):
    try:
        return fn()
    except Exception as e:  # the same failure before and after the port is the point on CPU
        return "error:" + type(e).__name__


def report():
    set_seed(0)
    engine = Engine()
    out, enabled, dtype, legacy, memory = engine.generate(torch.ones(1, 4))
    return {
        "resolve": str(resolve_device()),
        "codec": attempt(lambda: str(next(load_codec().parameters()).device)),
        "engine": engine._device,
        "engine_1": Engine(1)._device,
        "out": str(out.device),
        "autocast": enabled,
        "autocast_dtype": str(dtype),
        "cuda_amp_autocast": legacy,
        "memory_positive": memory > 0,
        "npu_module": hasattr(torch, "npu"),
    }
'''


def port(text: str) -> tuple[str, list]:
    transforms = all_transforms()
    changes = []
    for step, name in enumerate(STEPS):
        out = transforms[name]().apply(text, Context(path="runtime.py", step=step))
        changes += out.changes
        text = out.text
    return text, changes


def run_here(text: str) -> dict:
    namespace: dict = {"__name__": "runtime"}
    exec(compile(text, "runtime.py", "exec"), namespace)
    return namespace["report"]()


@pytest.fixture(scope="module")
def patched() -> str:
    text, changes = port(UPSTREAM)
    assert {c.transform for c in changes} == set(STEPS)
    return text


def test_chain_is_idempotent(patched):
    again, changes = port(patched)
    assert again == patched and changes == []


def test_cpu_behaviour_unchanged(patched):
    assert not torch.cuda.is_available() and not hasattr(torch, "npu")  # a plain CPU host
    before, after = run_here(UPSTREAM), run_here(patched)
    assert after == before
    assert before["resolve"] == "cpu" and before["codec"].startswith("error:") and before["autocast"] is False


CHILD = r'''
import importlib.util, json, sys
results = {}
for name in ("upstream", "patched"):
    spec = importlib.util.spec_from_file_location(name, sys.argv[1 if name == "upstream" else 2])
    module = importlib.util.module_from_spec(spec)
    if name == "patched":
        spec.loader.exec_module(module)  # its guarded `import torch_npu` loads npu-sim
    else:
        import torch  # upstream code never imports torch_npu: torch.npu does not exist for it yet
        results["upstream_sees_npu"] = hasattr(torch, "npu")
        spec.loader.exec_module(module)
    results[name] = module.report()
print(json.dumps(results))
'''


@pytest.mark.slow
def test_npu_sim_takes_the_cuda_path(patched, tmp_path):
    (tmp_path / "upstream.py").write_text(UPSTREAM)
    (tmp_path / "patched.py").write_text(patched)
    (tmp_path / "child.py").write_text(CHILD)
    results = run_json([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "upstream.py"),
                        str(tmp_path / "patched.py")], env=sim_env())
    # upstream on the npu host (npu-sim): no torch_npu import, so CPU everywhere, autocast off
    assert results["upstream_sees_npu"] is False
    assert results["upstream"]["resolve"] == "cpu" and results["upstream"]["autocast"] is False
    # patched on npu-sim: every device decision lands on npu, autocast regions are npu's
    assert results["patched"] == {
        "resolve": "npu",
        "codec": "npu:0",
        "engine": "npu:0",
        "engine_1": "npu:1",
        "out": "npu:0",
        "autocast": True,
        "autocast_dtype": "torch.bfloat16",
        "cuda_amp_autocast": True,
        "memory_positive": True,
        "npu_module": True,
    }
