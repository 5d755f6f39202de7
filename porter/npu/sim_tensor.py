"""The npu tensor of the simulator and how each aten op on it runs (the hot path of npu-sim).

An npu tensor is an `NpuSimTensor`: a wrapper subclass (`_make_wrapper_subclass`, device npu, the
same sizes, strides and offset as its CPU tensor) holding the CPU tensor that has the data in
`_cpu`. Its `__torch_dispatch__` runs below autograd: `_dispatch` unwraps npu tensors to their CPU
tensors, runs the same aten op on the CPU, and wraps tensor results as npu tensors, so float32
results are the CPU's bit for bit. Ops that write an argument return that argument's npu tensor;
view ops return npu views that share the base's counted storage (`_root`).

Every op pays for this in Python, so `_dispatch` does per call only what the op's schema needs
(`_Call`, computed once per op); porter.npu.sim registers it with PyTorch.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from porter.npu import sim_device

_DEV: Any = None  # torch.device("npu", 0), set by porter.npu.sim.install() after the rename
_CPU = torch.device("cpu")
_Tensor = torch.Tensor
_TensorBase = torch._C.TensorBase
aten = torch.ops.aten


# -- the tensor -------------------------------------------------------------------------------


class NpuSimTensor(torch.Tensor):
    """A tensor on the simulated npu device; `_cpu` is the CPU tensor holding its data."""

    _cpu: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, cpu: torch.Tensor, requires_grad: bool = False) -> "NpuSimTensor":
        return _wrap_new(cpu, requires_grad)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(func, args, kwargs)

    # traceable wrapper subclass protocol: lets nn.Module.to() swap parameters in place, which
    # keeps tied weights tied (as `.data =` does on a C++ backend)
    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["_cpu"], None

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], meta: Any, outer_size: Any, outer_stride: Any) -> "NpuSimTensor":
        return _wrap_new(inner["_cpu"])

    def __format__(self, format_spec: str) -> str:
        if self.dim() == 0:
            return self.item().__format__(format_spec)
        return object.__format__(self, format_spec)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        text = _Tensor.__repr__(self, tensor_contents=tensor_contents)
        head = type(self).__name__ + "("
        if text.startswith(head):  # print like any device tensor: tensor([...], device='npu:0')
            pad = " " * (len(head) - len("tensor("))
            text = "tensor(" + text[len(head) :].replace("\n" + pad, "\n")
        return text

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError(
            "can't convert npu:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
            "to host memory first."
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # torch.save() writes the data as a CPU tensor: the file loads anywhere, also with
        # weights_only=True (a real npu tensor would be tagged "npu:0"; see _serialization)
        return self._cpu.detach().clone().__reduce_ex__(protocol)

    def tolist(self) -> Any:  # copies to the host, as on a real device
        return self._cpu.tolist()

    def data_ptr(self) -> int:  # the CPU address stands in for a device address
        return self._cpu.data_ptr()

    def untyped_storage(self) -> torch.UntypedStorage:
        return self._cpu.untyped_storage()

    @property  # type: ignore[override]
    def data(self) -> torch.Tensor:
        return _TensorBase.data.__get__(self)

    @data.setter
    def data(self, new: torch.Tensor) -> None:
        _TensorBase.data.__set__(self, new)
        if isinstance(new, NpuSimTensor):
            self._cpu, self._root = new._cpu, new._root
        else:  # now a CPU tensor in every respect but its Python class
            self._cpu = self._root = new

    def __deepcopy__(self, memo: dict) -> "NpuSimTensor":
        if id(self) in memo:
            return memo[id(self)]
        with torch.no_grad():
            new = _wrap_new(self._cpu.clone(memory_format=torch.preserve_format))
        new.requires_grad_(self.requires_grad)
        for key, value in self.__dict__.items():
            if key not in ("_cpu", "_root"):
                setattr(new, key, copy.deepcopy(value, memo))
        memo[id(self)] = new
        return new


_make_wrapper = _Tensor._make_wrapper_subclass
_MEMORY = sim_device.MEMORY
_live = _MEMORY.live
_refs = _MEMORY.refs
_release = _MEMORY.release
_StorageRef = sim_device.StorageRef


def _wrap_new(cpu: torch.Tensor, requires_grad: bool = False) -> NpuSimTensor:
    """An npu tensor for a CPU tensor an op returned; its storage is counted until it dies.

    Runs for most op outputs, so the accounting of sim_device.Memory is done inline here.
    `_root` is the counted CPU tensor that keeps the count alive (see `_wrap_view`).
    """
    w = _make_wrapper(
        NpuSimTensor, cpu.size(), cpu.stride(), cpu.storage_offset(), None, cpu.dtype, cpu.layout,
        _DEV, False, requires_grad,
    )
    w._cpu = w._root = cpu
    storage = cpu.untyped_storage()
    ptr = storage.data_ptr()
    if ptr:
        rec = _live.get(ptr)
        if rec is None:
            nbytes = storage.nbytes()
            _MEMORY.allocate(nbytes)
            _live[ptr] = [nbytes, 1]
        else:
            rec[1] += 1
        ref = _StorageRef(cpu, _release)
        ref.ptr = ptr
        _refs[id(ref)] = ref
    return w


def _wrap_view(cpu: torch.Tensor, base: NpuSimTensor) -> NpuSimTensor:
    """An npu view of `base`: it holds base's counted CPU tensor, so the storage stays counted
    while any view of it lives, without counting the view itself."""
    root = getattr(base, "_root", None)
    if root is None:  # not an npu tensor after all: count the result on its own
        return _wrap_new(cpu)
    if torch.is_inference_mode_enabled() and not base.is_inference():
        # A view of a normal tensor made under inference_mode is a normal tensor (as on a real
        # device); making the wrapper inside inference mode would try to give it an inference
        # version counter and fail ("Cannot set version_counter for inference tensor").
        with torch.inference_mode(False):
            w = _make_wrapper(
                NpuSimTensor, cpu.size(), cpu.stride(), cpu.storage_offset(), None, cpu.dtype,
                cpu.layout, _DEV, False, False,
            )
    else:
        w = _make_wrapper(
            NpuSimTensor, cpu.size(), cpu.stride(), cpu.storage_offset(), None, cpu.dtype, cpu.layout,
            _DEV, False, False,
        )
    w._cpu = cpu
    w._root = root
    return w


# -- dispatch ---------------------------------------------------------------------------------

# Ops that may legitimately see a CPU tensor next to an npu tensor.
_MIXED_DEVICE_OK = {
    aten.copy_.default,
    aten._copy_from.default,
    aten._copy_from_and_resize.default,
    aten._to_copy.default,
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
    aten._unsafe_index.Tensor,
    aten._unsafe_index_put.default,
    aten.set_.source_Tensor,
}


def _same_device_error(func: Any, cpu: torch.Tensor) -> RuntimeError:
    return RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, "
        f"npu:0 and cpu! (npu-sim: {func} got a CPU tensor of shape {tuple(cpu.shape)}; "
        "move it to the npu device first)"
    )


def _holds_tensor(arg: Any) -> bool:
    return "Tensor" in str(arg.type)


class _Call:
    """Per-op facts, computed on first use, so each call does only the work its schema needs."""

    __slots__ = (
        "special", "mutable", "view", "generator", "swap_rng", "rng_args", "mixed_ok", "op", "tensor_args",
    )

    def __init__(self, func: Any) -> None:
        schema = func._schema
        arguments = schema.arguments
        self.special = _special.get(func)
        self.mutable = schema.is_mutable
        first = arguments[0].alias_info if arguments else None
        self.view = (
            first is not None
            and not first.is_write
            and bool(schema.returns)
            and all(r.alias_info is not None for r in schema.returns)
        )
        self.mixed_ok = func in _MIXED_DEVICE_OK
        seeded = torch.Tag.nondeterministic_seeded in func.tags
        self.generator = seeded and any(a.name == "generator" and a.kwarg_only for a in arguments)
        # seeded ops without a generator argument (randn, dropout, ...) draw from the CPU default
        # generator; they run with the npu generator's state swapped in
        self.swap_rng = seeded and not self.generator
        # ...unless their randomness is switched off: dropout probability 0 or train=False
        self.rng_args = tuple(
            (i, a.name) for i, a in enumerate(arguments) if a.name in ("dropout_p", "p", "dropout", "train")
        )
        self.op = func._op  # the C++ callable behind OpOverload.__call__
        # positional arguments that can hold tensors; the rest pass through untouched
        self.tensor_args = tuple(i for i, a in enumerate(arguments) if not a.kwarg_only and _holds_tensor(a))


_calls: dict[Any, _Call] = {}
_special: dict[Any, Callable[..., Any]] = {}


def _unwrap_other(a: Any, pairs: list | None, func: Any, mixed_ok: bool) -> Any:
    """Unwrap an argument that is not exactly an NpuSimTensor: a list, a CPU tensor, a subclass."""
    if isinstance(a, NpuSimTensor):
        if pairs is not None:
            pairs.append((a._cpu, a))
        return a._cpu
    if isinstance(a, _Tensor):
        if a.dim() and not mixed_ok:
            raise _same_device_error(func, a)
        return a
    if type(a) is list or type(a) is tuple:
        out = [_unwrap_other(x, pairs, func, mixed_ok) if x is not None else None for x in a]
        return out if type(a) is list else tuple(out)
    return a


def _dispatch(func: Any, args: tuple, kwargs: dict | None) -> Any:
    call = _calls.get(func)
    if call is None:
        call = _calls[func] = _Call(func)
    if call.special is not None:
        return call.special(func, args, kwargs or {})
    # Only ops that write to an argument can return one; only they need the CPU -> npu map.
    pairs: list | None = [] if call.mutable else None
    cargs = list(args)
    n = len(args)
    for i in call.tensor_args:
        if i >= n:
            break
        a = args[i]
        if type(a) is NpuSimTensor:
            c = cargs[i] = a._cpu
            if pairs is not None:
                pairs.append((c, a))
        elif a is not None:
            cargs[i] = _unwrap_other(a, pairs, func, call.mixed_ok)
    wrap = True
    if kwargs:
        ckwargs = {}
        for k, v in kwargs.items():
            if k == "device":
                if v is not None:
                    dev = v if isinstance(v, torch.device) else torch.device(v)
                    if dev.type == "npu":
                        if dev.index not in (None, 0):
                            sim_device._check_device(dev)  # raises: the simulator has npu:0 only
                        v = _CPU
                    else:
                        wrap = False  # e.g. _to_copy(x, device="cpu"): the result is a CPU tensor
            elif isinstance(v, (_Tensor, list, tuple)):
                v = _unwrap_other(v, pairs, func, call.mixed_ok)
            ckwargs[k] = v
        if call.generator and ckwargs.get("generator") is None:
            ckwargs["generator"] = sim_device.GENERATOR
    else:
        ckwargs = {"generator": sim_device.GENERATOR} if call.generator else None
    if call.swap_rng and _draws_random(call.rng_args, cargs, ckwargs):
        out = _with_npu_rng(call.op, cargs, ckwargs)
    elif ckwargs:
        out = call.op(*cargs, **ckwargs)
    else:
        out = call.op(*cargs)
    if pairs:
        _fix_resized(pairs)
    if not wrap:
        return out
    if type(out) is _Tensor:
        if pairs:
            for c, w in pairs:
                if out is c:
                    return w
        if call.view:
            return _wrap_view(out, args[0])
        return _wrap_new(out)
    if type(out) is tuple or type(out) is list:
        res = []
        for o in out:
            if type(o) is _Tensor:
                for c, w in pairs or ():
                    if o is c:
                        o = w
                        break
                else:
                    o = _wrap_view(o, args[0]) if call.view else _wrap_new(o)
            res.append(o)
        return type(out)(res)
    return out


def _draws_random(rng_args: tuple, args: list, kwargs: dict | None) -> bool:
    for i, name in rng_args:
        value = args[i] if i < len(args) else (kwargs or {}).get(name)
        if value is not None and not value:  # p == 0.0 or train is False
            return False
    return True


def _with_npu_rng(op: Any, args: list, kwargs: dict | None) -> Any:
    cpu_gen, npu_gen = torch.default_generator, sim_device.GENERATOR
    saved = cpu_gen.get_state()
    cpu_gen.set_state(npu_gen.get_state())
    try:
        return op(*args, **(kwargs or {}))
    finally:
        npu_gen.set_state(cpu_gen.get_state())
        cpu_gen.set_state(saved)


def _fix_resized(pairs: list) -> None:
    """An op resized a CPU tensor in place (an `out=` argument): give its npu tensor the new shape."""
    for c, w in pairs:
        if c.shape != w.shape or c.stride() != w.stride() or c.storage_offset() != w.storage_offset():
            _rebind(w, c)


def _rebind(w: NpuSimTensor, cpu: torch.Tensor) -> None:
    """Point the npu tensor `w` at `cpu` (new sizes, strides, storage), keeping its identity.

    `.data =` (set_data) replaces the metadata of w's TensorImpl in place, as resize_ does on a
    C++ backend; `w` keeps its autograd identity and every reference to it sees the new shape.
    """
    fresh = _wrap_new(cpu)
    _TensorBase.data.__set__(w, fresh)
    w._cpu = cpu
    w._root = fresh._root


def _cpu_of(x: Any) -> Any:
    return x._cpu if isinstance(x, NpuSimTensor) else x


def _special_op(*ops: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op in ops:
            _special[op] = fn
        return fn

    return deco


@_special_op(aten._copy_from.default)
def _copy_from(func: Any, args: tuple, kwargs: dict) -> Any:
    src, dst = args[0], args[1]
    _cpu_of(dst).copy_(_cpu_of(src))
    return dst


@_special_op(aten._copy_from_and_resize.default)
def _copy_from_and_resize(func: Any, args: tuple, kwargs: dict) -> Any:
    src, dst = args[0], args[1]
    c = _cpu_of(dst)
    c.resize_(src.shape).copy_(_cpu_of(src))
    if isinstance(dst, NpuSimTensor) and c.shape != dst.shape:
        _rebind(dst, c)
    return dst


@_special_op(aten.resize_.default, aten.resize_as_.default)
def _resize(func: Any, args: tuple, kwargs: dict) -> Any:
    w = args[0]
    rest = [_cpu_of(a) for a in args[1:]]
    c = w._cpu
    func(c, *rest, **kwargs)
    if c.shape != w.shape or c.stride() != w.stride():
        _rebind(w, c)
    return w


@_special_op(aten.set_.source_Tensor)
def _set_source(func: Any, args: tuple, kwargs: dict) -> Any:
    w, src = args[0], args[1]
    if not isinstance(src, NpuSimTensor):
        raise _same_device_error(func, src)
    _rebind(w, src._cpu)
    return w


@_special_op(aten.is_pinned.default)
def _is_pinned(func: Any, args: tuple, kwargs: dict) -> bool:
    return False


@_special_op(aten.lift_fresh.default)
def _lift_fresh(func: Any, args: tuple, kwargs: dict) -> Any:
    return args[0]
