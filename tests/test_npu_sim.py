"""npu-sim: a real `npu` device backed by CPU memory, run the way porter runs it.

Every simulated check runs in a child process started with `porter.npu.sim.sim_env()`, where
`import torch_npu` is porter's stand-in and installs the simulator. The pytest process keeps plain
torch (the last test checks that). Models are real: transformers' Qwen2ForCausalLM from a real
config shrunk to a few layers, random-initialised with a fixed seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.npu.sim import sim_env, sim_site_path
from support import host_like_venv

ROOT = Path(__file__).resolve().parents[1]


def run_sim(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None, expect_ok: bool = True) -> dict:
    """Run `code` in a simulated child; it must end by printing one JSON line (`emit(...)`)."""
    prelude = "import json, sys\ndef emit(obj):\n    print('@@' + json.dumps(obj))\n"
    env = dict(env or {})
    base = dict(os.environ)
    paths = [env.pop("PYTHONPATH", ""), str(ROOT), base.get("PYTHONPATH", "")]
    base["PYTHONPATH"] = os.pathsep.join(p for p in os.pathsep.join(paths).split(os.pathsep) if p)
    base.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=sim_env(base),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln[2:] for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, f"no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


TINY_QWEN2 = """
import torch
import torch_npu
from transformers import Qwen2Config, Qwen2ForCausalLM

torch.manual_seed(0)
config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
cpu_model = Qwen2ForCausalLM(config).eval()
ids = torch.randint(0, config.vocab_size, (2, 12))
mask = torch.ones_like(ids)
mask[1, :3] = 0  # left padding in the second row
"""


def test_tiny_qwen2_forward_and_generate_on_npu_sim_equal_cpu():
    result = run_sim(
        TINY_QWEN2
        + """
import copy
from transformers.utils import is_torch_npu_available

npu_model = copy.deepcopy(cpu_model).to("npu")
with torch.no_grad():
    ref = cpu_model(ids, attention_mask=mask).logits
    out = npu_model(ids.to("npu"), attention_mask=mask.to("npu")).logits
    gen_ref = cpu_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    gen = npu_model.generate(ids.npu(), attention_mask=mask.npu(), max_new_tokens=8, do_sample=False)
emit({
    "transformers_sees_npu": is_torch_npu_available(),
    "param_devices": sorted({p.device.type for p in npu_model.parameters()}),
    "logits_device": str(out.device),
    "logits_dtype": str(out.dtype),
    "equal": torch.equal(out.cpu(), ref),
    "max_abs_diff": (out.cpu() - ref).abs().max().item(),
    "generate_device": str(gen.device),
    "generate_equal": torch.equal(gen.cpu(), gen_ref),
    "new_tokens": gen.shape[1] - ids.shape[1],
})
"""
    )
    assert result["transformers_sees_npu"] is True
    assert result["param_devices"] == ["npu"]
    assert result["logits_device"] == "npu:0" and result["logits_dtype"] == "torch.float32"
    assert result["equal"], f"npu-sim logits differ from CPU by {result['max_abs_diff']}"
    assert result["generate_device"] == "npu:0"
    assert result["generate_equal"] and result["new_tokens"] == 8


MODEL_CODE = '''
import torch
from torch import nn


class ChunkedProjection(nn.Module):
    """Sizes its chunks from free device memory, the way TTS decoders often do."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        free, _total = {mem_get_info}()
        rows = max(1, min(x.shape[0], free // (x.shape[1] * x.element_size() * 1024)))
        return torch.cat([self.proj(chunk) for chunk in x.split(rows)])
'''

PATCHED_CALL = '(torch.npu.mem_get_info if torch.npu.is_available() else torch.cuda.mem_get_info)'


@pytest.mark.parametrize("variant", ["original", "patched"])
def test_cuda_only_call_fails_on_npu_sim_and_the_patched_version_runs(tmp_path, variant):
    call = "torch.cuda.mem_get_info" if variant == "original" else PATCHED_CALL
    (tmp_path / "chunked.py").write_text(MODEL_CODE.format(mem_get_info=call))
    result = run_sim(
        """
import torch, torch_npu
from chunked import ChunkedProjection

torch.manual_seed(0)
model = ChunkedProjection().eval()
x = torch.randn(8, 16)
try:
    with torch.no_grad():
        out = model.to("npu")(x.to("npu"))
    emit({"ok": True, "device": str(out.device), "close": torch.allclose(out.cpu(), model.cpu()(x)),
          "cuda_available": torch.cuda.is_available()})
except Exception as exc:
    emit({"ok": False, "error": f"{type(exc).__name__}: {exc}", "cuda_available": torch.cuda.is_available()})
""",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result["cuda_available"] is False
    if variant == "original":
        assert result["ok"] is False
        assert "Torch not compiled with CUDA enabled" in result["error"]
    else:
        assert result == {"ok": True, "device": "npu:0", "close": True, "cuda_available": False}


def test_the_npu_device_surface():
    result = run_sim(
        """
import torch, torch_npu
import torch_npu.npu

out = {}
out["simulated"] = torch_npu.__porter_simulated__
out["npu_module"] = torch_npu.npu is torch.npu
x = torch.arange(6, dtype=torch.float32).view(2, 3)
for how, t in [("to", x.to("npu")), ("to_device", x.to(torch.device("npu:0"))), ("npu()", x.npu()),
               ("factory", torch.ones(2, 3, device="npu")), ("tensor", torch.tensor([1.0], device="npu"))]:
    out[how] = [t.device.type, t.device.index, t.is_npu, t.is_cpu]
m = torch.nn.Linear(3, 2).to("npu")
out["module"] = [p.device.type for p in m.parameters()]
out["module_npu()"] = torch.nn.Linear(3, 2).npu().weight.is_npu
y = x.npu()
out["roundtrip"] = torch.equal((y * 2 + 1).cpu(), x * 2 + 1)
out["repr"] = repr(torch.zeros(2, device="npu"))
try:
    torch.numpy_ = y.numpy()
except TypeError as exc:
    out["numpy"] = str(exc)
try:
    y + x
except RuntimeError as exc:
    out["mixed"] = str(exc)
out["cpu_scalar_ok"] = (y + torch.tensor(1.0)).device.type
api = torch.npu
out["api"] = [api.is_available(), api.device_count(), api.current_device(), api.is_bf16_supported()]
api.set_device(0); api.set_device("npu:0"); api.synchronize()
try:
    api.set_device(1)
except RuntimeError as exc:
    out["set_device_1"] = str(exc)
out["name"] = api.get_device_name(0)
props = api.get_device_properties(0)
out["props"] = [props.name == out["name"], props.total_memory]
api.manual_seed(3); a = torch.randn(4, device="npu").cpu()
api.manual_seed_all(3); torch.randn(4); b = torch.randn(4, device="npu").cpu()
out["seeded"] = torch.equal(a, b)
s = api.Stream(); e0, e1 = api.Event(enable_timing=True), api.Event(enable_timing=True)
e0.record(); s.synchronize(); e1.record(); e1.synchronize()
out["events"] = [api.current_stream() is api.default_stream(), e0.elapsed_time(e1) >= 0]
with api.stream(s):
    out["stream_ctx"] = api.current_stream() is s
out["cuda"] = torch.cuda.is_available()
try:
    torch.cuda.mem_get_info()
except Exception as exc:
    out["cuda_mem"] = type(exc).__name__
try:
    torch_npu.npu_fusion_attention()
except NotImplementedError as exc:
    out["custom_op"] = str(exc)
emit(out)
"""
    )
    for how in ("to", "to_device", "npu()", "factory", "tensor"):
        assert result[how] == ["npu", 0, True, False], how
    assert result["simulated"] is True and result["npu_module"] is True
    assert result["module"] == ["npu", "npu"] and result["module_npu()"] is True
    assert result["roundtrip"] is True
    assert result["repr"] == "tensor([0., 0.], device='npu:0')"
    assert "can't convert npu:0 device type tensor to numpy" in result["numpy"]
    assert "Expected all tensors to be on the same device" in result["mixed"] and "npu:0 and cpu" in result["mixed"]
    assert result["cpu_scalar_ok"] == "npu"
    assert result["api"] == [True, 1, 0, True]
    assert "invalid device ordinal 1" in result["set_device_1"]
    assert "npu-sim" in result["name"] and "not an Ascend device" in result["name"]
    assert result["props"] == [True, 64 * 2**30]
    assert result["seeded"] is True  # the npu generator is the npu's own: a CPU draw does not move it
    assert result["events"] == [True, True] and result["stream_ctx"] is True
    assert result["cuda"] is False and result["cuda_mem"] in ("AssertionError", "RuntimeError")
    assert "npu_fusion_attention is a torch_npu operator that porter's npu-sim does not simulate" in result["custom_op"]


def test_memory_is_accounted_from_live_npu_tensors():
    result = run_sim(
        """
import gc, torch, torch_npu
npu = torch.npu
out = {}
base = npu.memory_allocated()
t = torch.empty(256, 1024, device="npu")          # 1 MiB of float32
out["alloc"] = npu.memory_allocated() - base
v = t[128:]                                          # a view: no new storage
out["view"] = npu.memory_allocated() - base
del t
out["view_keeps_storage"] = npu.memory_allocated() - base
del v; gc.collect()
out["freed"] = npu.memory_allocated() - base
npu.reset_peak_memory_stats()
a = torch.ones(1024, device="npu"); b = a * 2; del a, b
out["peak"] = npu.max_memory_allocated() - npu.memory_allocated()
stats = npu.memory_stats()
out["keys"] = all(k in stats for k in ("allocated_bytes.all.current", "allocated_bytes.all.peak",
                                          "reserved_bytes.all.current", "active_bytes.all.current"))
out["stats_match"] = stats["allocated_bytes.all.current"] == npu.memory_allocated()
free, total = npu.mem_get_info()
out["mem_get_info"] = [total, total - free == npu.memory_reserved(), npu.memory_reserved() >= npu.memory_allocated()]
npu.empty_cache()
out["after_empty_cache"] = npu.memory_reserved() == npu.memory_allocated()
m = torch.nn.Linear(256, 256).npu()
out["model_bytes"] = npu.memory_allocated() - base
emit(out)
""",
        env={"PORTER_NPU_SIM_MEMORY": "1GiB"},
    )
    mib = 2**20
    assert result["alloc"] == mib
    assert result["view"] == mib
    assert result["view_keeps_storage"] == mib
    assert result["freed"] == 0
    assert result["peak"] == 2 * 4096
    assert result["keys"] and result["stats_match"]
    assert result["mem_get_info"] == [2**30, True, True]
    assert result["after_empty_cache"] is True
    assert result["model_bytes"] == (256 * 256 + 256) * 4


def test_allocations_beyond_the_simulated_capacity_raise_out_of_memory():
    result = run_sim(
        """
import torch, torch_npu
small = torch.empty(1024, device="npu")
try:
    torch.empty(1024, 1024, device="npu")
    emit({"raised": False})
except torch.OutOfMemoryError as exc:
    emit({"raised": True, "message": str(exc), "ooms": torch.npu.memory_stats()["num_ooms"],
          "allocated": torch.npu.memory_allocated()})
""",
        env={"PORTER_NPU_SIM_MEMORY": "1MiB"},
    )
    assert result["raised"] is True
    assert "NPU out of memory (npu-sim)" in result["message"] and "PORTER_NPU_SIM_MEMORY" in result["message"]
    assert result["ooms"] == 1 and result["allocated"] == 4096


def test_tensor_semantics_match_a_real_device():
    result = run_sim(
        """
import copy, torch, torch_npu
out = {}
x = torch.arange(6.0).view(2, 3).npu()
r = x.add_(1)
out["inplace_returns_self"] = r is x
x[:, 0].fill_(-1)
x[1, 1] = 42
out["views_write_through"] = x.cpu().tolist()
buf = torch.empty(0, device="npu")
torch.cat([x, x], out=buf)
out["out_resized"] = [list(buf.shape), torch.equal(buf.cpu(), torch.cat([x.cpu(), x.cpu()]))]
out["cpu_index"] = x[torch.tensor([1, 0])].cpu().tolist()
out["bool_mask"] = x[x > 5].cpu().tolist()
c = x.cpu(); c.add_(100)
out["cpu_copy_is_a_copy"] = x.cpu()[0, 2].item()
tied = torch.nn.Embedding(4, 3); head = torch.nn.Linear(3, 4, bias=False); head.weight = tied.weight
both = torch.nn.ModuleDict({"emb": tied, "head": head}).to("npu")
out["tied_after_to"] = both["emb"].weight is both["head"].weight
out["deepcopy"] = copy.deepcopy(both)["emb"].weight.device.type
lin = torch.nn.Linear(3, 2)
ref = copy.deepcopy(lin)
xin = torch.randn(4, 3)
lin.npu()(xin.npu()).pow(2).sum().backward()
ref(xin).pow(2).sum().backward()
out["grad"] = [lin.weight.grad.device.type, torch.allclose(lin.weight.grad.cpu(), ref.weight.grad)]
with torch.autocast("npu", dtype=torch.bfloat16):
    y = lin(xin.npu())
    out["autocast"] = [str(y.dtype), str(torch.softmax(y, -1).dtype)]
out["state_dict_load"] = str(lin.load_state_dict(ref.state_dict()))
import io
buf = io.BytesIO()
torch.save({"w": torch.arange(4.0), "p": torch.nn.Parameter(torch.ones(2))}, buf)
loaded = []
for location in ("npu", torch.device("npu:0"), {"cpu": "npu:0"}, "cpu"):
    buf.seek(0)
    sd = torch.load(buf, map_location=location)
    loaded.append([sd["w"].device.type, sd["w"].cpu().tolist(), isinstance(sd["p"], torch.nn.Parameter)])
out["torch_load"] = loaded
buf = io.BytesIO()
torch.save({"w": torch.ones(2, device="npu")}, buf)  # loads anywhere, also weights_only=True
buf.seek(0)
out["saved_npu_tensor"] = torch.load(buf)["w"].tolist()
emit(out)
"""
    )
    assert result["inplace_returns_self"] is True
    assert result["views_write_through"] == [[-1.0, 2.0, 3.0], [-1.0, 42.0, 6.0]]
    assert result["out_resized"] == [[4, 3], True]
    assert result["cpu_index"] == [[-1.0, 42.0, 6.0], [-1.0, 2.0, 3.0]]
    assert result["bool_mask"] == [42.0, 6.0]
    assert result["cpu_copy_is_a_copy"] == 3.0
    assert result["tied_after_to"] is True and result["deepcopy"] == "npu"
    assert result["grad"] == ["npu", True]
    assert result["autocast"] == ["torch.bfloat16", "torch.float32"]
    assert result["state_dict_load"] == "<All keys matched successfully>"
    npu_load = ["npu", [0.0, 1.0, 2.0, 3.0], True]
    assert result["torch_load"] == [npu_load, npu_load, npu_load, ["cpu", [0.0, 1.0, 2.0, 3.0], True]]
    assert result["saved_npu_tensor"] == [1.0, 1.0]


def test_transfer_to_npu_stand_in_maps_cuda_calls_to_npu():
    result = run_sim(
        """
import torch, torch_npu
import torch_npu.contrib.transfer_to_npu as t2n
x = torch.ones(2, device="cuda")
emit({"cuda_available": torch.cuda.is_available(), "device": str(x.device),
      "mem": torch.cuda.mem_get_info() == torch.npu.mem_get_info(),
      "module": str(torch.nn.Linear(2, 2).cuda().weight.device), "is_cuda": x.is_cuda,
      "applied": len(t2n.APPLIED) > 100})
"""
    )
    assert result == {"cuda_available": True, "device": "npu:0", "mem": True, "module": "npu:0",
                      "is_cuda": True, "applied": True}


def test_stand_in_works_in_an_environment_without_porter(tmp_path):
    # a real venv holding this interpreter's packages (torch included) except porter
    python = str(host_like_venv(tmp_path / "venv", without=("porter",)))
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    absent = subprocess.run([python, "-c", "import porter"], env=plain, cwd=tmp_path, capture_output=True, text=True)
    assert absent.returncode != 0 and "No module named 'porter'" in absent.stderr  # the fallback is needed
    env = sim_env(plain)
    assert env["PYTHONPATH"] == str(sim_site_path())  # porter itself is not on the path
    code = ("import torch, torch_npu, sys; print(torch_npu.__version__, torch.zeros(1, device='npu').device,"
            " sys.modules['porter'].__file__)")
    out = subprocess.run([python, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    version, device, porter_file = out.stdout.split()
    assert (version, device) == ("2.14.0+npusim", "npu:0")
    # porter was loaded from where sim_env() said it is, not found on the path
    assert Path(porter_file) == Path(env["PORTER_NPU_SIM_PORTER_ROOT"]) / "porter" / "__init__.py"


def test_this_pytest_process_keeps_plain_torch():
    import torch

    import porter.npu.sim as sim  # importing the module does not install anything

    assert not sim.is_installed()
    assert torch._C._get_privateuse1_backend_name() == "privateuseone"
    assert getattr(torch, "npu", None) is None
    assert "torch_npu" not in sys.modules


def test_views_under_inference_mode():
    """voxcpm and Ming generate under torch.inference_mode and take views of weights there."""
    out = run_sim(
        """
        import torch
        import torch_npu
        p = torch.randn(1, 4).to("npu")
        with torch.inference_mode():
            e = p.expand(2, 4)
            s = p[:, 1:3]
            u = p.unsqueeze(0)
            y = (e * 2).sum()
        emit({"dev": [e.device.type, s.device.type, u.device.type], "ok": bool(torch.allclose(
            y.cpu(), (p.cpu().expand(2, 4) * 2).sum())), "inference": [e.is_inference(), y.is_inference()]})
        """
    )
    assert out == {"dev": ["npu", "npu", "npu"], "ok": True, "inference": [False, True]}
