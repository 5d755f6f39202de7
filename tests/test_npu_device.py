"""Device choice: auto means a real Ascend device only when a real torch_npu works, else npu-sim.

The torch_npu packages here are small fixtures written by the tests (an import that fails like a
wheel without CANN, one that reports a device), plus the real torch_npu 2.14.0 wheel under the
`network` marker. The probe runs them in a child process, so this process keeps plain torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.npu import device as device_mod
from porter.npu.device import SIM_DESCRIPTION, DeviceChoice, DeviceUnavailable, resolve_device
from porter.npu.kernels import cache_dir, download_wheel
from porter.npu.sim import sim_site_path

BROKEN = '''\
"""Fails like the torch_npu wheel on a host without CANN: after it has touched torch."""
import torch
torch.utils.rename_privateuse1_backend("npu")
raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")
'''

WORKING = '''\
"""Reports one Ascend device, as torch_npu does on an Ascend host."""
import types
import torch

__version__ = "2.14.0"
npu = types.ModuleType("torch.npu")
npu.device_count = lambda: 1
npu.is_available = lambda: True
npu.get_device_name = lambda index=0: "Ascend910B3"
torch.npu = npu
'''


@pytest.fixture
def pythonpath(monkeypatch, tmp_path):
    """Put a fixture torch_npu package on PYTHONPATH for the probe's child process."""

    def use(source: str | None, *extra: Path) -> None:
        entries = [str(p) for p in extra]
        if source is not None:
            pkg = tmp_path / "site" / "torch_npu"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text(source)
            entries.append(str(tmp_path / "site"))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(entries))
        device_mod.clear_probe_cache()

    yield use
    device_mod.clear_probe_cache()


def test_cpu_and_sim_need_nothing():
    cpu = resolve_device("cpu")
    assert cpu == DeviceChoice("cpu", "cpu", False, cpu.description)
    assert cpu.label == "cpu"
    sim = resolve_device("npu-sim")
    assert (sim.kind, sim.torch_device, sim.simulated, sim.label) == ("npu-sim", "npu:0", True, "npu-sim")
    assert sim.description == SIM_DESCRIPTION
    assert "not Ascend" in sim.description and sim.needs_sim


def test_unknown_device_names_the_choices():
    with pytest.raises(DeviceUnavailable, match=r"unknown device 'tpu'; choose one of auto, npu, npu-sim, cuda, cpu"):
        resolve_device("tpu")


def test_cuda_is_unavailable_on_a_cpu_build():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(DeviceUnavailable, match=r"device 'cuda' is not available: .*Use --device cpu or npu-sim"):
        resolve_device("cuda")


def test_auto_without_torch_npu_is_the_simulator(pythonpath):
    pythonpath(None)
    choice = resolve_device("auto")
    assert choice.kind == "npu-sim" and choice.simulated
    assert "torch_npu is not installed" in choice.reason
    with pytest.raises(DeviceUnavailable, match=r"torch_npu is not installed\. Use --device npu-sim"):
        resolve_device("npu")


def test_porters_own_stand_in_never_counts_as_ascend(pythonpath):
    pythonpath(None, sim_site_path())
    assert resolve_device("auto").kind == "npu-sim"
    with pytest.raises(DeviceUnavailable):
        resolve_device("npu")


def test_a_broken_torch_npu_falls_back_to_the_simulator_cleanly(pythonpath):
    import torch

    pythonpath(BROKEN)
    choice = resolve_device("auto")
    assert choice.kind == "npu-sim"
    assert "torch_npu is installed but does not work (ImportError: libhccl.so" in choice.reason
    with pytest.raises(DeviceUnavailable, match=r"libhccl\.so.*--device npu-sim"):
        resolve_device("npu")
    # the failed import happened in the probe's process, not here
    assert torch._C._get_privateuse1_backend_name() == "privateuseone"
    assert "torch_npu" not in sys.modules


def test_a_working_torch_npu_is_the_real_device(pythonpath):
    pythonpath(WORKING)
    for name in ("auto", "npu"):
        choice = resolve_device(name)
        assert (choice.kind, choice.torch_device, choice.simulated) == ("npu", "npu:0", False)
        assert "Ascend910B3" in choice.description and "torch_npu 2.14.0" in choice.description
    # with porter's stand-in also on the path, the real torch_npu still wins the probe
    pythonpath(WORKING, sim_site_path())
    assert resolve_device("auto").kind == "npu"


@pytest.mark.network
@pytest.mark.slow
def test_the_real_torch_npu_wheel_without_cann_resolves_to_the_simulator(pythonpath):
    """pip-installs the real torch_npu 2.14.0 wheel (no deps) into a cache directory."""
    target = cache_dir() / "torch_npu-2.14.0-target"
    if not (target / "torch_npu" / "__init__.py").is_file():
        wheel = download_wheel("2.14.0")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
            check=True,
        )
    pythonpath(None, target)
    choice = resolve_device("auto")
    assert choice.kind == "npu-sim"
    assert "torch_npu is installed but does not work" in choice.reason
    # and a real torch_npu on the path does not stop simulated runs from starting
    from porter.npu.sim import sim_env

    env = sim_env({**os.environ, "PYTHONPATH": str(target)})
    code = "import torch, torch_npu; print(torch_npu.__porter_simulated__, torch.ones(1, device='npu').device)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "npu:0"]


def test_probe_child_code_compiles():
    compile(textwrap.dedent(device_mod._CHILD), "<probe>", "exec")
