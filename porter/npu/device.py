"""Which device a run uses: a real Ascend npu, the CPU-backed npu simulator, cuda or cpu.

`auto` means a real Ascend device when the real `torch_npu` imports and reports at least one
device, otherwise `npu-sim`. Whether torch_npu works is asked of a *child* Python process: a
torch_npu wheel without CANN (libhccl.so, libascendcl.so) fails halfway through its import, after
it has already renamed PyTorch's PrivateUse1 backend and patched torch, which would leave this
process unable to host the simulator. The child runs with TORCH_DEVICE_BACKEND_AUTOLOAD=0 and
without porter's sim_site on its path, so only a real torch_npu can answer "npu".

A process that has already imported a real torch_npu is asked directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

KINDS = ("npu", "npu-sim", "cuda", "cpu")
NAMES = ("auto",) + KINDS

SIM_DESCRIPTION = "npu-sim (CPU-backed simulation of the npu device; not Ascend)"
PROBE_TIMEOUT_S = 120.0

_SIM_SITE = (Path(__file__).parent / "sim_site").resolve()


class DeviceUnavailable(Exception):
    """The requested device cannot be used here; the message says why and what to use instead."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses, and how to name it in every figure."""

    kind: str  # "npu" | "npu-sim" | "cuda" | "cpu"
    torch_device: str  # "npu:0" | "cuda:0" | "cpu"
    simulated: bool
    description: str  # names the device, e.g. "npu (Ascend910B3, torch_npu 2.14.0)"
    reason: str = ""  # why `auto` chose this kind, when it did

    @property
    def label(self) -> str:
        """The short name every report figure carries: npu, npu-sim, cuda or cpu."""
        return self.kind

    @property
    def needs_sim(self) -> bool:
        """Whether the process that runs the model must install porter's npu simulator."""
        return self.kind == "npu-sim"


@dataclass(frozen=True)
class NpuProbe:
    """What a clean child process found out about torch_npu."""

    importable: bool  # a torch_npu module was found on the path
    works: bool  # it imported and torch.npu answered
    device_count: int = 0
    device_name: str = ""
    version: str = ""
    error: str = ""  # why not, in one line


def resolve_device(name: str) -> DeviceChoice:
    """The DeviceChoice for `name` (auto|npu|npu-sim|cuda|cpu); DeviceUnavailable if impossible."""
    key = (name or "").strip().lower()
    if key not in NAMES:
        raise DeviceUnavailable(
            f"unknown device {name!r}; choose one of {', '.join(NAMES)}"
        )
    if key == "cpu":
        return DeviceChoice("cpu", "cpu", False, "cpu (host CPU, float32 reference)")
    if key == "npu-sim":
        return sim_choice(reason="requested")
    if key == "cuda":
        return _cuda_choice()
    probe = probe_npu()
    if probe.works and probe.device_count > 0:
        detail = ", ".join(x for x in (probe.device_name, f"torch_npu {probe.version}") if x)
        return DeviceChoice(
            "npu",
            "npu:0",
            False,
            f"npu ({detail}; {probe.device_count} device(s))",
            reason="torch_npu imported and reports an Ascend device" if key == "auto" else "",
        )
    why = _why_no_npu(probe)
    if key == "npu":
        raise DeviceUnavailable(
            f"device 'npu' is not available: {why}. Use --device npu-sim for the CPU-backed "
            "simulation, or run on an Ascend host with CANN and torch_npu installed."
        )
    return sim_choice(reason=f"auto: {why}")


def sim_choice(reason: str = "") -> DeviceChoice:
    return DeviceChoice("npu-sim", "npu:0", True, SIM_DESCRIPTION, reason=reason)


def _why_no_npu(probe: NpuProbe) -> str:
    if not probe.importable:
        return "torch_npu is not installed"
    if not probe.works:
        return f"torch_npu is installed but does not work ({probe.error})"
    return "torch_npu reports no Ascend device"


def _cuda_choice() -> DeviceChoice:
    import torch

    if not torch.cuda.is_available():
        built = torch.backends.cuda.is_built()
        why = "no CUDA device is visible" if built else f"torch {torch.__version__} is built without CUDA"
        raise DeviceUnavailable(f"device 'cuda' is not available: {why}. Use --device cpu or npu-sim.")
    return DeviceChoice("cuda", "cuda:0", False, f"cuda ({torch.cuda.get_device_name(0)})")


# -- probing torch_npu ------------------------------------------------------------------------


def probe_npu() -> NpuProbe:
    """Ask whether a real torch_npu works, without risking this process (see module docstring)."""
    loaded = sys.modules.get("torch_npu")
    if loaded is not None:
        if getattr(loaded, "__porter_simulated__", False):
            return NpuProbe(True, False, error="this process runs porter's npu simulator")
        return _probe_loaded(loaded)
    return _probe_child(_clean_pythonpath(os.environ.get("PYTHONPATH", "")))


def _probe_loaded(module: object) -> NpuProbe:
    try:
        import torch

        count = int(torch.npu.device_count())  # type: ignore[attr-defined]
        name = torch.npu.get_device_name(0) if count else ""  # type: ignore[attr-defined]
        return NpuProbe(True, True, count, name, str(getattr(module, "__version__", "")))
    except Exception as exc:  # a broken driver raises anything
        return NpuProbe(True, False, error=_one_line(exc))


_CHILD = r"""
import json, os, sys
out = {"importable": False, "works": False}
try:
    import importlib.util
    spec = importlib.util.find_spec("torch_npu")
    out["importable"] = spec is not None
    if spec is not None:
        import torch, torch_npu
        if getattr(torch_npu, "__porter_simulated__", False):
            raise RuntimeError("found porter's npu simulator, not torch_npu")
        out["version"] = str(getattr(torch_npu, "__version__", ""))
        n = int(torch.npu.device_count())
        out["device_count"] = n
        out["device_name"] = torch.npu.get_device_name(0) if n else ""
        out["works"] = True
except BaseException as exc:
    msg = (str(exc).strip().splitlines() or [""])[0]
    out["error"] = f"{type(exc).__name__}: {msg}"[:300]
sys.stdout.write("\n@@PORTER_PROBE@@" + json.dumps(out) + "\n")
"""


@lru_cache(maxsize=8)
def _probe_child(pythonpath: str) -> NpuProbe:
    # Fast path: no torch_npu anywhere on the child's path -> no need to start Python.
    if not _child_can_find_torch_npu(pythonpath):
        return NpuProbe(False, False)
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return NpuProbe(True, False, error=f"importing torch_npu took over {PROBE_TIMEOUT_S:.0f} s")
    marker = "@@PORTER_PROBE@@"
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith(marker)), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return NpuProbe(True, False, error=f"probe process died (exit {proc.returncode}): {tail[:200]}")
    data = json.loads(line[len(marker) :])
    return NpuProbe(
        importable=bool(data.get("importable")),
        works=bool(data.get("works")),
        device_count=int(data.get("device_count", 0)),
        device_name=str(data.get("device_name", "")),
        version=str(data.get("version", "")),
        error=str(data.get("error", "")),
    )


def _child_can_find_torch_npu(pythonpath: str) -> bool:
    """Whether a child with this PYTHONPATH (and our sys.path otherwise) could find torch_npu."""
    dirs = [p for p in pythonpath.split(os.pathsep) if p] + [
        p for p in sys.path if p and Path(p).resolve() != _SIM_SITE
    ]
    for d in dirs:
        base = Path(d)
        if (base / "torch_npu").is_dir() or (base / "torch_npu.py").is_file():
            if (base / "torch_npu").resolve().parent == _SIM_SITE:
                continue
            return True
    # Editable installs and .pth tricks: fall back to the import system of this process.
    spec = importlib.util.find_spec("torch_npu") if "torch_npu" not in sys.modules else None
    return bool(spec and spec.origin and not Path(spec.origin).resolve().is_relative_to(_SIM_SITE))


def _clean_pythonpath(pythonpath: str) -> str:
    keep = [p for p in pythonpath.split(os.pathsep) if p and Path(p).resolve() != _SIM_SITE]
    return os.pathsep.join(keep)


def _one_line(exc: BaseException) -> str:
    msg = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {msg}"[:300]


def clear_probe_cache() -> None:
    """Forget earlier probe results (tests change PYTHONPATH between calls)."""
    _probe_child.cache_clear()
