"""Which aten ops reach the npu device, and which of them Ascend would not run well.

`OpRecorder` is a context manager (a TorchDispatchMode) that records every aten op with an npu
tensor argument or an npu `device=` while it is active, with the input dtypes and the model-code
location that issued it (the first stack frame outside torch and porter). It works the same on a
real Ascend device and on npu-sim, and sees ops at the granularity the backend sees them:
after autograd and after PyTorch's device-independent decompositions.

`op_report(recorded, kernels)` compares the recording with the NPU kernel list of a torch_npu
release (porter.npu.kernels) and lists

* ops without an NPU kernel: on Ascend they fail, or fall back to the CPU and are silently slow;
* dtype hazards: float64 and complex inputs, which Ascend's compute units do not support
  (torch_npu's transfer_to_npu even maps torch.cuda.DoubleTensor to torch.npu.FloatTensor).

An op PyTorch implements for every backend at once (a CompositeExplicitAutograd kernel: views,
`zeros`, `masked_fill`) needs no NPU kernel of its own; a structured op's functional form
(`gelu`) runs through its `.out` kernel (`gelu.out`), which must be in the list.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from porter.npu.kernels import KernelList, normalize_op

_INTERNAL_DIRS = tuple(
    str(Path(p).resolve()) + os.sep
    for p in (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
)


@dataclass(frozen=True)
class RecordedOp:
    """One aten op as it reached the npu device, aggregated over identical calls."""

    op: str  # normalised: aten::add.Tensor
    dtypes: tuple[str, ...]  # input tensor dtypes in argument order, then "dtype=..." if given
    location: str | None  # "transformers/models/qwen2/modeling_qwen2.py:206 (forward)"
    count: int = 1


class OpRecorder:
    """Record the aten ops that reach the npu device while active (a context manager).

    `locations=False` skips the stack walk that finds the model-code location (cheaper).
    `internal_paths` are extra directory prefixes to skip when looking for that location.
    """

    def __init__(self, *, locations: bool = True, internal_paths: Sequence[str] = (), device_type: str = "npu") -> None:
        self.locations = locations
        self.device_type = device_type
        self._internal = _INTERNAL_DIRS + tuple(str(Path(p).resolve()) + os.sep for p in internal_paths)
        self._counts: Counter[tuple[str, tuple[str, ...], str | None]] = Counter()
        self._mode: _RecordingMode | None = None
        self._internal_code: dict[Any, bool] = {}
        self.simulated = bool(getattr(sys.modules.get("torch_npu"), "__porter_simulated__", False))

    def __enter__(self) -> "OpRecorder":
        self._mode = _RecordingMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None
        self._mode.__exit__(*exc)
        self._mode = None

    @property
    def device(self) -> str:
        """The device label the recording belongs to: npu (Ascend) or npu-sim."""
        return "npu-sim" if self.simulated else self.device_type

    @property
    def ops(self) -> list[RecordedOp]:
        """Distinct (op, dtypes, location) records in first-seen order, with call counts."""
        return [RecordedOp(op, dtypes, loc, n) for (op, dtypes, loc), n in self._counts.items()]

    def clear(self) -> None:
        self._counts.clear()

    # -- called by the mode ---------------------------------------------------------------------
    def _record(self, func: Any, args: tuple, kwargs: dict) -> None:
        dtypes: list[str] = []
        on_device = False
        for a in _tensors(args):
            dtypes.append(_dtype_name(a.dtype))
            if a.device.type == self.device_type:
                on_device = True
        if kwargs:
            for key, value in kwargs.items():
                if isinstance(value, torch.Tensor):
                    dtypes.append(_dtype_name(value.dtype))
                    on_device = on_device or value.device.type == self.device_type
                elif key == "device" and value is not None:
                    on_device = on_device or torch.device(value).type == self.device_type
                elif key == "dtype" and isinstance(value, torch.dtype):
                    dtypes.append("dtype=" + _dtype_name(value))
        if not on_device:
            return
        location = self._location() if self.locations else None
        self._counts[(_op_name(func), tuple(dtypes), location)] += 1

    def _location(self) -> str | None:
        frame = sys._getframe(3)
        internal = self._internal_code
        while frame is not None:
            code = frame.f_code
            hidden = internal.get(code)
            if hidden is None:
                path = code.co_filename
                hidden = internal[code] = path.startswith("<") or os.path.realpath(path).startswith(self._internal)
            if not hidden:
                return f"{_short_path(code.co_filename)}:{frame.f_lineno} ({code.co_name})"
            frame = frame.f_back
        return None


class _RecordingMode(TorchDispatchMode):
    def __init__(self, recorder: OpRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self.recorder._record(func, args, kwargs)
        return func(*args, **kwargs)


def _tensors(args: Iterable[Any]) -> Iterable[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (x for x in a if isinstance(x, torch.Tensor))


@lru_cache(maxsize=None)
def _op_name(func: Any) -> str:
    return normalize_op(func)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@lru_cache(maxsize=4096)
def _short_path(path: str) -> str:
    """A path relative to the sys.path entry (or working directory) it lives under."""
    real = os.path.realpath(path)
    best = ""
    for entry in [os.getcwd()] + sys.path:
        root = os.path.realpath(entry or os.getcwd()) + os.sep
        if real.startswith(root) and len(root) > len(best):
            best = root
    return real[len(best) :] if best else real


# -- the report -------------------------------------------------------------------------------

HAZARD_DTYPES = {
    "float64": "Ascend has no float64 compute: most torch_npu kernels reject float64 or compute it "
    "in float32 (transfer_to_npu maps torch.cuda.DoubleTensor to torch.npu.FloatTensor); use "
    "float32, or keep this computation on the CPU",
    "complex64": "torch_npu has few complex kernels; keep complex math on the CPU or use "
    "real/imaginary pairs (torch.view_as_real)",
    "complex128": "complex128 is float64 twice over: see float64 and complex64",
    "complex32": "torch_npu has few complex kernels; keep complex math on the CPU",
}


@dataclass(frozen=True)
class OpUse:
    """One distinct op of a recording, with its status against the kernel list."""

    op: str
    status: str  # "npu-kernel" | "composite" | "missing"
    detail: str
    count: int
    dtypes: tuple[tuple[str, ...], ...]
    locations: tuple[str, ...]


@dataclass(frozen=True)
class DtypeHazard:
    op: str
    dtype: str
    count: int
    locations: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class OpReport:
    """Ops of a recording checked against one torch_npu release's NPU kernels."""

    device: str
    kernels_version: str
    ops: tuple[OpUse, ...]
    missing: tuple[OpUse, ...]
    dtype_hazards: tuple[DtypeHazard, ...]
    calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.dtype_hazards

    def to_dict(self) -> dict[str, Any]:
        def use(u: OpUse) -> dict[str, Any]:
            return {"op": u.op, "status": u.status, "detail": u.detail, "count": u.count,
                    "dtypes": [list(d) for d in u.dtypes], "locations": list(u.locations)}

        return {
            "device": self.device,
            "torch_npu": self.kernels_version,
            "calls": self.calls,
            "distinct_ops": len(self.ops),
            "missing": [use(u) for u in self.missing],
            "dtype_hazards": [
                {"op": h.op, "dtype": h.dtype, "count": h.count, "locations": list(h.locations), "reason": h.reason}
                for h in self.dtype_hazards
            ],
            "ops": [use(u) for u in self.ops],
        }

    def summary(self) -> str:
        lines = [
            f"{self.calls} op calls, {len(self.ops)} distinct ops on {self.device}, checked against "
            f"torch_npu {self.kernels_version}: {len(self.missing)} without an NPU kernel, "
            f"{len(self.dtype_hazards)} dtype hazards"
        ]
        for u in self.missing:
            where = f" at {u.locations[0]}" if u.locations else ""
            lines.append(f"  no NPU kernel: {u.op} ({u.count} calls){where}: {u.detail}")
        for h in self.dtype_hazards:
            where = f" at {h.locations[0]}" if h.locations else ""
            lines.append(f"  {h.dtype}: {h.op} ({h.count} calls){where}")
        return "\n".join(lines)


def op_report(recorded: OpRecorder | Iterable[RecordedOp], kernels: KernelList, device: str | None = None) -> OpReport:
    """Check recorded ops against `kernels`; see the module docstring for the rules."""
    records = list(recorded.ops if isinstance(recorded, OpRecorder) else recorded)
    if device is None:
        device = recorded.device if isinstance(recorded, OpRecorder) else "npu"
    by_op: dict[str, list[RecordedOp]] = {}
    for r in records:
        by_op.setdefault(normalize_op(r.op), []).append(r)
    uses = []
    hazards: dict[tuple[str, str], list[RecordedOp]] = {}
    for op, recs in by_op.items():
        status, detail = classify(op, kernels)
        uses.append(
            OpUse(
                op=op,
                status=status,
                detail=detail,
                count=sum(r.count for r in recs),
                dtypes=tuple(dict.fromkeys(r.dtypes for r in recs)),
                locations=tuple(dict.fromkeys(r.location for r in recs if r.location)),
            )
        )
        for r in recs:
            for d in dict.fromkeys(x.replace("dtype=", "") for x in r.dtypes):
                if d in HAZARD_DTYPES:
                    hazards.setdefault((op, d), []).append(r)
    hazard_list = tuple(
        DtypeHazard(
            op=op,
            dtype=d,
            count=sum(r.count for r in recs),
            locations=tuple(dict.fromkeys(r.location for r in recs if r.location)),
            reason=HAZARD_DTYPES[d],
        )
        for (op, d), recs in hazards.items()
    )
    return OpReport(
        device=device,
        kernels_version=kernels.version,
        ops=tuple(uses),
        missing=tuple(u for u in uses if u.status == "missing"),
        dtype_hazards=hazard_list,
        calls=sum(r.count for r in records),
    )


def classify(op: Any, kernels: KernelList) -> tuple[str, str]:
    """("npu-kernel" | "composite" | "missing", why) for one op against a kernel list."""
    name = normalize_op(op)
    if name in kernels.ops:
        return "npu-kernel", f"torch_npu {kernels.version} has an NPU kernel"
    if not name.startswith("aten::"):
        return "missing", f"not an operator of torch_npu {kernels.version}"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        explicit = has(name, "CompositeExplicitAutograd")
        implicit = has(name, "CompositeImplicitAutograd")
        non_functional = has(name, "CompositeExplicitAutogradNonFunctional")
    except RuntimeError:
        return "missing", f"unknown to torch {torch.__version__} and not in torch_npu {kernels.version}"
    if explicit or implicit:
        return "composite", "PyTorch's backend-independent implementation runs it through other ops"
    if non_functional:
        delegate = structured_delegate(name)
        if delegate and delegate in kernels.ops:
            return "npu-kernel", f"runs through {delegate}, which has an NPU kernel"
        if delegate:
            return "missing", f"its kernel {delegate} is not in torch_npu {kernels.version}"
    return "missing", f"no NPU kernel in torch_npu {kernels.version}; on Ascend it fails or falls back to the CPU"


@lru_cache(maxsize=1)
def _structured_delegates() -> dict[str, str]:
    """op -> the `.out` op it delegates to, from the native_functions.yaml torch ships in torchgen."""
    try:
        import torchgen

        path = Path(torchgen.__file__).parent / "packaged" / "ATen" / "native" / "native_functions.yaml"
        text = path.read_text(encoding="utf-8")
    except (ImportError, OSError):
        return {}
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^- func:\s*([A-Za-z0-9_.]+)\(", line)
        if m:
            current = normalize_op(m.group(1))
            continue
        m = re.match(r"^\s+structured_delegate:\s*([A-Za-z0-9_.]+)\s*$", line)
        if m and current:
            out[current] = normalize_op(m.group(1))
    return out


def structured_delegate(op: str) -> str | None:
    """The `.out` op a structured functional/in-place op runs through (`aten::gelu` -> `aten::gelu.out`)."""
    name = normalize_op(op)
    found = _structured_delegates().get(name)
    if found:
        return found
    packet, _, overload = name.partition(".")
    packet = packet.rstrip("_")  # in-place form
    guess = f"{packet}.{overload}_out" if overload else f"{packet}.out"
    return guess if _delegates_unavailable() else None


@lru_cache(maxsize=1)
def _delegates_unavailable() -> bool:
    return not _structured_delegates()


__all__ = [
    "DtypeHazard",
    "OpRecorder",
    "OpReport",
    "OpUse",
    "RecordedOp",
    "classify",
    "op_report",
    "structured_delegate",
]

