"""`torch.npu` of the npu simulator: device queries, memory accounting, RNG, streams and events.

`porter.npu.sim.install()` registers this module as `torch.npu`, so model code calling
`torch.npu.mem_get_info()` or `torch.npu.memory_stats()` gets answers about the simulated device.

Memory is accounted honestly: every CPU storage that backs a live npu tensor is counted once, from
the op that created it until the last npu tensor viewing it dies. `reserved` models a caching
allocator (it only shrinks on `empty_cache()`), and `mem_get_info()` reports
free = capacity - reserved, as a real device does. The capacity is PORTER_NPU_SIM_MEMORY
(e.g. "64GiB", "24GB", or bytes; default 64 GiB, an Ascend 910B); an allocation beyond it raises
`torch.OutOfMemoryError`, so a model that would not fit fails here too.

The simulator has one device, npu:0.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import weakref
from types import SimpleNamespace
from typing import Any, Iterator

import torch

DEVICE_NAME = "npu-sim (porter, CPU-backed simulation; not an Ascend device)"
DEFAULT_CAPACITY = 64 * 1024**3
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """`"64GiB"` -> 68719476736; plain integers are bytes."""
    m = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"PORTER_NPU_SIM_MEMORY={text!r}: expected a size such as 64GiB, 24GB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _capacity() -> int:
    env = os.environ.get("PORTER_NPU_SIM_MEMORY")
    return parse_bytes(env) if env else DEFAULT_CAPACITY


# -- memory accounting ------------------------------------------------------------------------


class StorageRef(weakref.ref):
    __slots__ = ("ptr",)


class Memory:
    """Bytes of CPU storage backing live npu tensors, with torch-style statistics.

    porter.npu.sim_tensor counts each new storage here (`live[ptr] = [nbytes, tensors]`, then
    `allocate(nbytes)`) and hangs a `StorageRef` on each CPU tensor it wraps; `release` runs when
    that tensor dies and frees the storage's bytes with its last tensor.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensors]
        self.refs: dict[int, StorageRef] = {}  # id -> ref (weakrefs compare by referent)
        self.allocated = 0
        self.allocated_peak = 0
        self.allocated_total = 0
        self.freed_total = 0
        self.reserved = 0
        self.reserved_peak = 0
        self.count = 0
        self.count_peak = 0
        self.count_total = 0
        self.count_freed = 0
        self.num_alloc_retries = 0
        self.num_ooms = 0
        self.release = self._make_release()

    def _make_release(self) -> Any:
        live, refs = self.live, self.refs

        def release(ref: StorageRef) -> None:
            refs.pop(id(ref), None)
            rec = live.get(ref.ptr)
            if rec is None:
                return
            rec[1] -= 1
            if rec[1] == 0:
                del live[ref.ptr]
                self.allocated -= rec[0]
                self.freed_total += rec[0]
                self.count -= 1
                self.count_freed += 1

        return release

    def allocate(self, nbytes: int) -> None:
        need = self.allocated + nbytes
        if need > self.capacity:
            self.num_ooms += 1
            raise torch.OutOfMemoryError(
                f"NPU out of memory (npu-sim). Tried to allocate {_fmt(nbytes)}; {_fmt(self.allocated)} "
                f"already allocated of {_fmt(self.capacity)} simulated capacity "
                "(set PORTER_NPU_SIM_MEMORY to change it)."
            )
        if self.reserved - self.allocated < nbytes:  # no cached block fits: reserve a new one
            self.reserved += nbytes
            if self.reserved > self.capacity:  # a caching allocator frees its cache and retries
                self.num_alloc_retries += 1
                self.reserved = need
            self.reserved_peak = max(self.reserved_peak, self.reserved)
        self.allocated = need
        self.allocated_peak = max(self.allocated_peak, need)
        self.allocated_total += nbytes
        self.count += 1
        self.count_peak = max(self.count_peak, self.count)
        self.count_total += 1

    def empty_cache(self) -> None:
        self.reserved = self.allocated

    def reset_peak(self) -> None:
        self.allocated_peak = self.allocated
        self.reserved_peak = self.reserved
        self.count_peak = self.count

    def reset_accumulated(self) -> None:
        self.allocated_total = self.freed_total = 0
        self.count_total = self.count_freed = 0
        self.num_alloc_retries = self.num_ooms = 0

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, cur, peak, total, freed in (
            ("allocated_bytes", self.allocated, self.allocated_peak, self.allocated_total, self.freed_total),
            ("active_bytes", self.allocated, self.allocated_peak, self.allocated_total, self.freed_total),
            ("requested_bytes", self.allocated, self.allocated_peak, self.allocated_total, self.freed_total),
            ("reserved_bytes", self.reserved, self.reserved_peak, self.reserved_peak, 0),
            ("allocation", self.count, self.count_peak, self.count_total, self.count_freed),
            ("active", self.count, self.count_peak, self.count_total, self.count_freed),
        ):
            for pool in ("all", "large_pool", "small_pool"):
                scale = 1 if pool in ("all", "large_pool") else 0  # one pool: everything is "large"
                out[f"{key}.{pool}.current"] = cur * scale
                out[f"{key}.{pool}.peak"] = peak * scale
                out[f"{key}.{pool}.allocated"] = total * scale
                out[f"{key}.{pool}.freed"] = freed * scale
        out["num_alloc_retries"] = self.num_alloc_retries
        out["num_ooms"] = self.num_ooms
        out["num_sync_all_streams"] = 0
        out["num_device_alloc"] = self.count_total
        out["num_device_free"] = self.count_freed
        return dict(sorted(out.items()))


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


MEMORY = Memory(_capacity())

# The npu generator: a CPU generator of its own, so CPU-side draws do not shift npu draws.
GENERATOR = torch.Generator(device="cpu")
_initial_seed = GENERATOR.initial_seed()


# -- device queries ---------------------------------------------------------------------------


def _check_device(device: Any = None) -> int:
    if device is None:
        return 0
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "npu":
            raise ValueError(f"Expected an npu device, got {device}")
        index = 0 if device.index is None else device.index
    else:
        index = int(device)
    if index < 0:
        return 0  # torch's convention for "current device"
    if index != 0:
        raise RuntimeError(
            f"npu-sim: invalid device ordinal {index}; the simulator has one device (npu:0)"
        )
    return index


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return True


def init() -> None:
    return None


def _is_in_bad_fork() -> bool:
    return False


def _lazy_init() -> None:
    return None


def device_count() -> int:
    return 1


def current_device() -> int:
    return 0


def set_device(device: Any) -> None:
    _check_device(device)


class device:  # noqa: N801  (torch.npu.device, like torch.cuda.device)
    """Context manager selecting an npu device (the simulator has only npu:0)."""

    def __init__(self, device: Any) -> None:
        self.idx = _check_device(device)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def device_of(obj: Any) -> device:
    return device(obj.device if hasattr(obj, "device") else None)


def synchronize(device: Any = None) -> None:
    _check_device(device)


def get_device_name(device: Any = None) -> str:
    _check_device(device)
    return DEVICE_NAME


def get_device_capability(device: Any = None) -> tuple[int, int]:
    _check_device(device)
    return (0, 0)


class _DeviceProperties(SimpleNamespace):
    def __repr__(self) -> str:
        return (
            f"_NPUDeviceProperties(name='{self.name}', total_memory={self.total_memory // 2**20}MB, "
            f"cube_core_num={self.cube_core_num}, vector_core_num={self.vector_core_num}, "
            f"L2_cache_size={self.L2_cache_size // 2**20}MB)"
        )


def get_device_properties(device: Any = None) -> _DeviceProperties:
    _check_device(device)
    return _DeviceProperties(
        name=DEVICE_NAME,
        total_memory=MEMORY.capacity,
        cube_core_num=0,
        vector_core_num=0,
        L2_cache_size=0,
        simulated=True,
    )


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return True


def get_amp_supported_dtype() -> list[torch.dtype]:
    return [torch.float16, torch.bfloat16]


def utilization(device: Any = None) -> int:
    _check_device(device)
    return 0


# -- memory -----------------------------------------------------------------------------------


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """(free, total) bytes of the simulated device: free = capacity - reserved."""
    _check_device(device)
    return MEMORY.capacity - MEMORY.reserved, MEMORY.capacity


def memory_stats(device: Any = None) -> dict[str, int]:
    _check_device(device)
    return MEMORY.stats()


def memory_allocated(device: Any = None) -> int:
    _check_device(device)
    return MEMORY.allocated


def max_memory_allocated(device: Any = None) -> int:
    _check_device(device)
    return MEMORY.allocated_peak


def memory_reserved(device: Any = None) -> int:
    _check_device(device)
    return MEMORY.reserved


def max_memory_reserved(device: Any = None) -> int:
    _check_device(device)
    return MEMORY.reserved_peak


memory_cached = memory_reserved
max_memory_cached = max_memory_reserved


def reset_peak_memory_stats(device: Any = None) -> None:
    _check_device(device)
    MEMORY.reset_peak()


reset_max_memory_allocated = reset_peak_memory_stats
reset_max_memory_cached = reset_peak_memory_stats


def reset_accumulated_memory_stats(device: Any = None) -> None:
    _check_device(device)
    MEMORY.reset_accumulated()


def empty_cache() -> None:
    MEMORY.empty_cache()


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    _check_device(device)
    return (
        f"{DEVICE_NAME}\n"
        f"allocated: {_fmt(MEMORY.allocated)} (peak {_fmt(MEMORY.allocated_peak)})\n"
        f"reserved:  {_fmt(MEMORY.reserved)} (peak {_fmt(MEMORY.reserved_peak)})\n"
        f"capacity:  {_fmt(MEMORY.capacity)}\n"
    )


def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
    _check_device(device)
    if not 0 <= fraction <= 1:
        raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
    MEMORY.capacity = int(_capacity() * fraction)


# -- random numbers ---------------------------------------------------------------------------


def manual_seed(seed: int) -> None:
    global _initial_seed
    GENERATOR.manual_seed(int(seed))
    _initial_seed = int(seed)


def manual_seed_all(seed: int) -> None:
    manual_seed(seed)


def seed() -> None:
    global _initial_seed
    _initial_seed = GENERATOR.seed()


seed_all = seed


def initial_seed() -> int:
    return _initial_seed


def get_rng_state(device: Any = "npu") -> torch.Tensor:
    _check_device(device)
    return GENERATOR.get_state()


def set_rng_state(new_state: torch.Tensor, device: Any = "npu") -> None:
    _check_device(device)
    GENERATOR.set_state(new_state)


def get_rng_state_all() -> list[torch.Tensor]:
    return [GENERATOR.get_state()]


def set_rng_state_all(new_states: list[torch.Tensor]) -> None:
    GENERATOR.set_state(new_states[0])


default_generators = (GENERATOR,)

# -- streams and events (work is synchronous on the CPU, so these only keep time) ------------


class Stream:
    """A stand-in for torch.npu.Stream: everything already ran when a call returns."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device_index = _check_device(device)
        self.priority = priority

    @property
    def device(self) -> torch.device:
        return torch.device("npu", self.device_index)

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def wait_stream(self, stream: "Stream") -> None:
        return None

    def wait_event(self, event: "Event") -> None:
        return None

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = event or Event()
        event.record(self)
        return event

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and other is self

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<torch.npu.Stream device=npu:0 (npu-sim) at {id(self):#x}>"


class Event:
    """A stand-in for torch.npu.Event; elapsed_time() is wall-clock time on the host."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing
        self._t: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._t = time.perf_counter()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def wait(self, stream: Stream | None = None) -> None:
        return None

    def elapsed_time(self, end_event: "Event") -> float:
        if self._t is None or end_event._t is None:
            raise RuntimeError("npu-sim: both events must be recorded before elapsed_time()")
        return (end_event._t - self._t) * 1000.0


_DEFAULT_STREAM = Stream()
_current_stream = _DEFAULT_STREAM


def current_stream(device: Any = None) -> Stream:
    _check_device(device)
    return _current_stream


def default_stream(device: Any = None) -> Stream:
    _check_device(device)
    return _DEFAULT_STREAM


def set_stream(stream: Stream) -> None:
    global _current_stream
    _current_stream = stream


@contextlib.contextmanager
def stream(s: Stream | None) -> Iterator[None]:
    global _current_stream
    previous = _current_stream
    if s is not None:
        _current_stream = s
    try:
        yield
    finally:
        _current_stream = previous


StreamContext = stream

# -- torch_npu knobs that ported code commonly sets (accepted, no effect on the CPU) ----------


_JIT_COMPILE = [True]


def set_compile_mode(jit_compile: bool = False) -> None:
    _JIT_COMPILE[0] = bool(jit_compile)  # recorded, so is_jit_compile_false() reads it back


def is_jit_compile_false() -> bool:
    return not _JIT_COMPILE[0]


def set_option(option: dict[str, Any]) -> None:
    return None


config = SimpleNamespace(allow_internal_format=False)

amp = SimpleNamespace(
    autocast=lambda *args, **kwargs: torch.autocast("npu", *args, **kwargs),
    get_amp_supported_dtype=get_amp_supported_dtype,
)

__porter_simulated__ = True
