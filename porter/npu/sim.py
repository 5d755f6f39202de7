"""npu-sim: a real `npu` device in PyTorch whose tensors live in CPU memory.

Ascend support in PyTorch is an out-of-tree backend on the PrivateUse1 extension point, renamed
"npu". `install()` takes the same extension point, so model code sees what it would see on Ascend:
`torch.device("npu:0")`, `.to("npu")`, `.npu()`, `tensor.is_npu`, factory functions with
`device="npu"`, `nn.Module.to("npu")`, `torch.npu.*` (porter.npu.sim_device), while `torch.cuda`
stays unavailable, so a CUDA-only call fails here exactly where it would fail on Ascend.

What install() registers with PyTorch:

* the backend: rename PrivateUse1 to "npu", generate `Tensor.npu()`/`is_npu`/`Module.npu()`,
  register `torch.npu` and Python device hooks (so `torch.accelerator` reports npu);
* the ops: npu tensors are `NpuSimTensor`s whose `__torch_dispatch__` runs each aten op on the
  CPU (porter.npu.sim_tensor). Factory functions with `device="npu"` have no npu tensor argument;
  they reach the PrivateUse1 key, where kernels (and a fallback) run them on the CPU too;
* fidelity: ops that torch_npu implements whole although PyTorch decomposes them
  (`scaled_dot_product_attention`, `matmul`, `stft`, ...: the pinned kernel list says which) get
  an AutogradPrivateUse1 kernel that skips the decomposition when no gradient is needed, so the op
  recorder sees what Ascend would run; `torch.autocast("npu")` follows CUDA's autocast policy;
* checkpoints: `torch.load(..., map_location="npu")` works (see _serialization below).

Install it only in a process that runs a simulated model: `sim_env()` gives a child process an
environment whose `import torch_npu` is porter's stand-in (porter/npu/sim_site), which calls
`install()`. porter's tests do the same; the pytest process itself keeps plain torch.

Not simulated: `torch.Generator(device="npu")` and `Tensor.pin_memory()` (they need C++ hooks a
Python backend cannot register; both raise), `torch.UntypedStorage(..., device="npu")` (needs a
C++ allocator), torch_npu's own operators (the stand-in has them as stubs that raise), more than
one device, and `torch.compile` to an npu backend.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from porter.npu import sim_device, sim_tensor
from porter.npu.sim_tensor import NpuSimTensor, _dispatch

_Tensor = torch.Tensor
aten = torch.ops.aten

_lock = threading.Lock()
_installed = False
_libs: list[torch.library.Library] = []  # registrations live as long as these objects


class SimUnavailable(RuntimeError):
    """The simulator cannot be installed in this process (e.g. a real torch_npu owns the key)."""


# -- kernels at the PrivateUse1 and AutogradPrivateUse1 keys ---------------------------------


def _fallback(op: Any, *args: Any, **kwargs: Any) -> Any:
    """PrivateUse1 fallback: factory functions with device="npu" (no npu tensor argument)."""
    return _dispatch(op, args, kwargs)


def _pu1_kernel(op: Any) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        return _dispatch(op, args, kwargs)

    return kernel


# Reached at the PrivateUse1 key with npu tensor arguments when the Python key is excluded (e.g.
# inside torch.tensor(..., device="npu")). PyTorch's Python *fallback* cannot take those, so they
# get kernels of their own.
_PU1_KERNELS = (
    "_copy_from",
    "_copy_from_and_resize",
    "copy_",
    "_to_copy",
    "lift_fresh",
    "lift_fresh_copy",
    "detach",
    "alias",
    "view",
    "as_strided",
    "clone",
    "empty_like",
    "_local_scalar_dense",
    "resize_",
)

# Composite ops that torch_npu implements directly but that are cheap shape logic on any backend;
# decomposing them costs nothing and keeps the simulator fast.
_KEEP_DECOMPOSING = {"aten::contiguous"}


def _factory_ops() -> list[Any]:
    """Factory functions (a BackendSelect kernel: no tensor says which device) that PyTorch does not
    decompose above the backend; they run whole on the CPU and come back as npu tensors."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    out = []
    for name in torch._C._dispatch_get_all_op_names():
        if not name.startswith("aten::") or any(w in name for w in ("sparse", "quantized", "affine")):
            continue
        if not has(name, "BackendSelect") or has(name, "CompositeImplicitAutograd"):
            continue
        packet, _, overload = name[len("aten::") :].partition(".")
        op = getattr(getattr(aten, packet), overload or "default", None)
        if op is not None:
            out.append(op)
    return out


def _no_decompose_kernel(op: Any) -> Callable[..., Any]:
    """AutogradPrivateUse1 kernel: without gradients, skip PyTorch's decomposition (the op goes
    whole to the npu, as with torch_npu); with gradients, decompose so autograd works."""
    after_autograd = torch._C._after_autograd_keyset
    redispatch = op._handle.redispatch_boxed
    grad_enabled = torch.is_grad_enabled

    def kernel(keyset: Any, *args: Any, **kwargs: Any) -> Any:
        if grad_enabled() and _needs_grad(args, kwargs):
            return op.decompose(*args, **kwargs)
        return redispatch(keyset & after_autograd, *args, **kwargs)

    return kernel


def _needs_grad(args: tuple, kwargs: dict) -> bool:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, _Tensor) and a.requires_grad:
            return True
        if isinstance(a, (list, tuple)) and any(isinstance(x, _Tensor) and x.requires_grad for x in a):
            return True
    return False


def _composite_ops_npu_runs_whole(kernels_version: str | None) -> list[Any]:
    from porter.npu.kernels import load_kernels

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    out = []
    for name in sorted(load_kernels(kernels_version).ops):
        if not name.startswith("aten::") or name in _KEEP_DECOMPOSING:
            continue
        try:
            if not has(name, "CompositeImplicitAutograd"):
                continue
        except RuntimeError:
            continue  # not an operator of this torch version
        packet, _, overload = name[len("aten::") :].partition(".")
        op = getattr(getattr(aten, packet), overload or "default", None)
        if op is not None:
            out.append(op)
    return out


# -- autocast ---------------------------------------------------------------------------------

# `torch.autocast("npu")`: torch_npu registers autocast kernels like CUDA's; PyTorch has none for
# PrivateUse1. These follow CUDA's policy for the ops models use most (lower precision for
# matmul-like ops, float32 for reductions, norms and exponentials); every other op passes through.
_AUTOCAST_LOWER = (
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv",
    "addr", "matmul", "einsum", "mm", "mv", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "scaled_dot_product_attention",
)
_AUTOCAST_FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar",
    "softplus", "layer_norm", "native_layer_norm", "group_norm", "rms_norm", "norm.Scalar",
    "cosine_similarity", "nll_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss",
    "mse_loss", "binary_cross_entropy_with_logits", "dist", "cdist", "renorm", "logsumexp",
    "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm", "prod", "sum",
    "upsample_nearest1d", "upsample_linear1d", "upsample_bilinear2d", "stft",
)


def _autocast_kernel(op: Any, lower: bool) -> Callable[..., Any]:
    below = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastPrivateUse1)

    def cast(x: Any, dtype: torch.dtype) -> Any:
        if isinstance(x, _Tensor):
            if x.is_floating_point() and x.dtype != dtype and x.dtype != torch.float64 and x.device.type == "npu":
                return x.to(dtype)
            return x
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v, dtype) for v in x)
        return x

    def kernel(*args: Any, **kwargs: Any) -> Any:
        dtype = torch.get_autocast_dtype("npu") if lower else torch.float32
        args = tuple(cast(a, dtype) for a in args)
        kwargs = {k: cast(v, dtype) for k, v in kwargs.items()}
        with torch._C._ExcludeDispatchKeyGuard(below):
            return op(*args, **kwargs)

    return kernel


def _register_autocast(fallback: torch.library.Library, lib: torch.library.Library) -> None:
    fallback.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    for names, lower in ((_AUTOCAST_LOWER, True), (_AUTOCAST_FP32, False)):
        for name in names:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(aten, packet, None), overload or "default", None)
            if op is not None:
                lib.impl(op, _autocast_kernel(op, lower), "AutocastPrivateUse1")


# -- serialization ----------------------------------------------------------------------------

# torch.load(..., map_location="npu") would restore storages with torch.UntypedStorage(device="npu"),
# which needs a C++ allocator this Python backend cannot register (the process would crash). A
# deserializer registered ahead of torch's own restores npu-located storages in CPU memory and
# notes them; the torch.load wrapper then moves the tensors built on them to the npu device.
_loads: list[set[int]] = []


def _npu_location(location: str) -> bool:
    return location == "npu" or location.startswith("npu:")


def _npu_deserialize(storage: Any, location: str) -> Any:
    if not _npu_location(location):
        return None
    if _loads:
        _loads[-1].add(storage.data_ptr())
    return storage  # in CPU memory; the wrapper moves the tensors


def _wrap_load(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        _loads.append(set())
        try:
            obj = original(*args, **kwargs)
        finally:
            npu_storages = _loads.pop()
        return _move_loaded(obj, npu_storages) if npu_storages else obj

    load.__porter_npu_sim__ = True  # type: ignore[attr-defined]
    return load


def _move_loaded(obj: Any, npu_storages: set[int]) -> Any:
    if isinstance(obj, torch.nn.Parameter) and not isinstance(obj, NpuSimTensor):
        if obj.untyped_storage().data_ptr() in npu_storages:
            return torch.nn.Parameter(obj.detach().to(sim_tensor._DEV), requires_grad=obj.requires_grad)
        return obj
    if isinstance(obj, _Tensor) and not isinstance(obj, NpuSimTensor):
        return obj.to(sim_tensor._DEV) if obj.untyped_storage().data_ptr() in npu_storages else obj
    if isinstance(obj, torch.nn.Module):
        return obj._apply(lambda t: _move_loaded(t, npu_storages))
    if isinstance(obj, dict):
        moved = {k: _move_loaded(v, npu_storages) for k, v in obj.items()}
        try:
            out = type(obj)()  # keeps OrderedDict and its _metadata
            out.update(moved)
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata
            return out
        except TypeError:
            return moved
    if isinstance(obj, list):
        return [_move_loaded(v, npu_storages) for v in obj]
    if isinstance(obj, tuple):
        items = [_move_loaded(v, npu_storages) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def _register_serialization() -> None:
    torch.serialization.register_package(15, lambda storage: None, _npu_deserialize)
    if not getattr(torch.load, "__porter_npu_sim__", False):
        torch.load = _wrap_load(torch.load)
        torch.serialization.load = torch.load


# -- installation -----------------------------------------------------------------------------


def is_installed() -> bool:
    return _installed


def install(kernels_version: str | None = None) -> None:
    """Make `npu` a CPU-backed device in this process (idempotent).

    Raises SimUnavailable when a real torch_npu (or another backend) already owns PrivateUse1.
    """
    global _installed
    with _lock:
        if _installed:
            return
        real = _real_torch_npu_loaded()
        if real:
            raise SimUnavailable(
                f"a real torch_npu is imported in this process ({real}); run the simulator in a "
                "process without it (porter.npu.sim.sim_env())"
            )
        name = torch._C._get_privateuse1_backend_name()
        if name not in ("privateuseone", "npu"):
            raise SimUnavailable(f"PrivateUse1 is already the {name!r} backend in this process")
        if getattr(torch, "npu", None) is not None:
            raise SimUnavailable("torch.npu already exists (a torch_npu import failed halfway in this process?)")
        if name != "npu":
            torch.utils.rename_privateuse1_backend("npu")
        sim_tensor._DEV = torch.device("npu", 0)
        torch._register_device_module("npu", sim_device)
        torch.utils.generate_methods_for_privateuse1_backend(
            for_tensor=True, for_module=True, for_packed_sequence=True, for_storage=False
        )
        _register_hooks()
        _register_kernels(kernels_version)
        _register_serialization()
        _installed = True


def _real_torch_npu_loaded() -> str:
    mod = sys.modules.get("torch_npu")
    if mod is None or getattr(mod, "__porter_simulated__", False):
        return ""
    return str(getattr(mod, "__file__", "torch_npu"))


def _register_hooks() -> None:
    acc = getattr(torch._C, "_acc", None)
    if acc is None:  # older torch: no Python hooks; device queries still work through torch.npu
        return

    class Hooks(acc.PrivateUse1Hooks):  # type: ignore[misc, name-defined]
        def is_available(self) -> bool:
            return True

        def has_primary_context(self, dev_id: int) -> bool:
            return True

        def is_built(self) -> bool:
            return True

    class Guard(acc.DeviceGuard):  # type: ignore[misc, name-defined]
        def type_(self) -> Any:
            return torch._C._autograd.DeviceType.PrivateUse1

    acc.register_python_privateuseone_hook(Hooks())
    acc.register_python_privateuseone_device_guard(Guard())


def _register_kernels(kernels_version: str | None) -> None:
    fallback = torch.library.Library("_", "IMPL")
    fallback.fallback(_fallback, "PrivateUse1")
    _libs.append(fallback)

    lib = torch.library.Library("aten", "IMPL")
    pu1 = {getattr(getattr(aten, p), o) for p in _PU1_KERNELS for o in getattr(aten, p).overloads()}
    for op in sorted(pu1 | set(_factory_ops()), key=str):
        lib.impl(op, _pu1_kernel(op), "PrivateUse1")
    for op in _composite_ops_npu_runs_whole(kernels_version):
        lib.impl(op, _no_decompose_kernel(op), "AutogradPrivateUse1", with_keyset=True)
    _register_autocast(fallback, lib)
    _libs.append(lib)


# -- running simulated processes --------------------------------------------------------------

SIM_SITE = Path(__file__).resolve().parent / "sim_site"


def sim_site_path() -> Path:
    """The directory whose `torch_npu` package is the simulator's stand-in."""
    return SIM_SITE


def sim_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process that runs on npu-sim: `import torch_npu` gives the sim.

    Puts porter/npu/sim_site first on PYTHONPATH, turns off torch's automatic backend loading (a
    real torch_npu installed next to it must not load), and tells the stand-in where porter is,
    so it works in a virtual environment that does not have porter installed.
    """
    env = dict(os.environ if env is None else env)
    parts = [str(SIM_SITE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SIM_SITE)]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    env["PORTER_NPU_SIM"] = "1"
    env["PORTER_NPU_SIM_PORTER_ROOT"] = str(Path(__file__).resolve().parents[2])
    return env


def live_npu_tensors() -> int:
    """How many CPU storages currently back npu tensors (for tests and leak checks)."""
    return len(sim_device.MEMORY.live)


__all__ = [
    "NpuSimTensor",
    "SimUnavailable",
    "install",
    "is_installed",
    "live_npu_tensors",
    "sim_env",
    "sim_site_path",
]
