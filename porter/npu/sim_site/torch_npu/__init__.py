"""porter's stand-in for torch_npu, importable only inside simulated (npu-sim) runs.

Not Ascend: importing it installs porter's CPU-backed npu simulator (porter.npu.sim) and marks
itself `__porter_simulated__ = True`. It exists on sys.path only when a run was started with
`porter.npu.sim.sim_env()`. torch_npu's own operators (torch_npu.npu_fusion_attention, ...) are
not simulated: asking for one raises AttributeError naming it.
"""

import importlib.util
import os
import sys


def _import_porter_sim():
    try:
        from porter.npu import sim
    except ImportError:
        # A per-recipe virtual environment without porter: load porter from where sim_env() says
        # it is, without putting that directory (maybe the host's site-packages) on sys.path.
        root = os.environ.get("PORTER_NPU_SIM_PORTER_ROOT")
        if not root or not os.path.isfile(os.path.join(root, "porter", "__init__.py")):
            raise ImportError(
                "porter's torch_npu stand-in needs porter; start the run with porter.npu.sim.sim_env()"
            ) from None
        pkg = os.path.join(root, "porter")
        spec = importlib.util.spec_from_file_location(
            "porter", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["porter"] = module
        spec.loader.exec_module(module)
        from porter.npu import sim
    return sim


__porter_simulated__ = True  # before install(), which refuses to run next to a real torch_npu
_sim = _import_porter_sim()
_sim.install()

import torch  # noqa: E402

from porter.npu.kernels import PINNED_TORCH_NPU as _PINNED  # noqa: E402

__version__ = f"{_PINNED}+npusim"
npu = torch.npu
sys.modules[__name__ + ".npu"] = torch.npu


_CUSTOM_OPS = None


def _not_simulated(name):
    def stub(*args, **kwargs):
        raise NotImplementedError(
            f"torch_npu.{name} is a torch_npu operator that porter's npu-sim does not simulate; "
            "this code path needs a real Ascend device (or a CPU path in the model)"
        )

    stub.__name__ = stub.__qualname__ = name
    stub.__porter_not_simulated__ = True
    return stub


def __getattr__(name):
    # torch_npu's own operators (npu_fusion_attention, ...) exist, so `from torch_npu import x`
    # works as on Ascend (transformers does that at import time), but calling one says plainly
    # that the simulator does not implement it.
    global _CUSTOM_OPS
    if _CUSTOM_OPS is None:
        from porter.npu.kernels import load_kernels

        _CUSTOM_OPS = {op[len("npu::") :] for op in load_kernels().ops if op.startswith("npu::")}
    if name in _CUSTOM_OPS:
        return _not_simulated(name)
    raise AttributeError(
        f"module 'torch_npu' has no attribute {name!r} (porter's npu-sim stand-in for torch_npu "
        f"{_PINNED}; it provides torch_npu.npu and, as stubs, torch_npu's own operators)"
    )
