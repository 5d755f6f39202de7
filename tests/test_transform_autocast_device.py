"""autocast-device beyond its examples: CPU behaviour unchanged, regions live on npu, findings.

The whole chain on npu-sim is in test_transform_device_runtime.py; here one child process checks
the autocast state the patched regions produce on npu-sim (CPU-backed simulation, not Ascend).
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from support import run_json

from porter.npu.sim import sim_env
from porter.transforms import Context, all_transforms

T = all_transforms()["autocast-device"]


def apply(text: str, **params):
    return T(params).apply(text, Context(path="m.py"))


REGIONS = '''\
import torch
from torch.cuda.amp import autocast


def regions(x):
    seen = {}
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        seen["keyword"] = [torch.is_autocast_enabled(), str(torch.get_autocast_gpu_dtype())]
        with torch.autocast("cuda", enabled=False):
            seen["inner_disabled"] = torch.is_autocast_enabled()
    with torch.autocast(device_type="cuda" if x.is_cuda else "cpu", dtype=torch.bfloat16):
        seen["from_tensor"] = torch.is_autocast_enabled()
    with autocast(dtype=torch.bfloat16):
        seen["cuda_amp"] = torch.is_autocast_enabled()
    with torch.autocast("cuda", enabled=torch.cuda.is_available()):
        seen["gated"] = torch.is_autocast_enabled()
    return seen
'''


def run_here(text: str, x) -> tuple[dict, list[str]]:
    namespace: dict = {"__name__": "regions"}
    exec(compile(text, "regions.py", "exec"), namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = namespace["regions"](x)
    return seen, sorted({str(w.message).split(".")[0] for w in caught})


def test_cpu_behaviour_unchanged():
    out = apply(REGIONS)
    assert len([c for c in out.changes if c.kind == "rewrite"]) == 12
    for x in (torch.ones(1), torch.ones(1, dtype=torch.bfloat16)):
        assert run_here(out.text, x) == run_here(REGIONS, x)
    seen, messages = run_here(REGIONS, torch.ones(1))
    assert seen["keyword"] == [False, "torch.bfloat16"]  # switched off on this host, before and after
    assert any("Disabling autocast" in m or "CUDA is not available" in m for m in messages)


CHILD = r'''
import importlib.util, json, sys, warnings
import torch, torch_npu  # npu-sim's stand-in (sim_env)
results = {}
for name in ("upstream", "patched"):
    spec = importlib.util.spec_from_file_location(name, sys.argv[1 if name == "upstream" else 2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = module.regions(torch.ones(1, device="npu"))
    seen["npu_enabled_after"] = torch.is_autocast_enabled("npu")
    seen["warnings"] = sorted({str(w.message).split(".")[0] for w in caught})
    results[name] = seen
print(json.dumps(results))
'''


@pytest.mark.slow
def test_npu_sim_regions_are_npu_autocast(tmp_path):
    out = apply(REGIONS)
    (tmp_path / "upstream.py").write_text(REGIONS)
    (tmp_path / "patched.py").write_text(out.text)
    (tmp_path / "child.py").write_text(CHILD)
    results = run_json([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "upstream.py"),
                        str(tmp_path / "patched.py")], env=sim_env())
    upstream, patched = results["upstream"], results["patched"]
    # upstream on an npu host: every region silently without autocast (one warning, no error)
    assert upstream["keyword"][0] is False and upstream["cuda_amp"] is False and upstream["from_tensor"] is False
    assert upstream["warnings"]
    # patched: the regions are npu autocast regions, enabled=False switches npu's off, state reads npu's
    assert patched["keyword"] == [True, "torch.bfloat16"]
    assert patched["inner_disabled"] is False
    assert patched["from_tensor"] is True
    assert patched["cuda_amp"] is True
    assert patched["gated"] is True
    assert patched["npu_enabled_after"] is False
    assert patched["warnings"] == []


def test_training_apis_are_findings():
    out = apply("import torch\n\nscaler = torch.cuda.amp.GradScaler()\n"
                "fwd = torch.cuda.amp.custom_fwd(cast_inputs=torch.float16)\n")
    assert out.text.count("_porter") == 0
    assert [f.line for f in out.findings] == [3, 4]
    assert all("training" in f.reason for f in out.findings)


def test_get_autocast_gpu_dtype_by_name_is_a_finding():
    text = "from torch import get_autocast_gpu_dtype as g\n\nd = g()\n"
    out = apply(text)
    assert out.text == text and "by hand" in out.findings[0].reason


def test_params_switch_parts_off():
    text = "import torch\n\nwith torch.autocast('cuda' if x.is_cuda else 'cpu'):\n    y = torch.is_autocast_enabled()\n"
    out = apply(text, follow_tensor=False, state_queries=False)
    assert "x.device.type" not in out.text and 'is_autocast_enabled("npu")' not in out.text
    assert "('npu' if _porter_npu_available() else 'cuda') if x.is_cuda else 'cpu'" in out.text
