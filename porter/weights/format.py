"""The safetensors file format: read and validate a header, write one.

Layout: 8 bytes little-endian u64 `N`, `N` bytes of UTF-8 JSON, then the data section. The JSON maps
each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the data
section) and may hold `"__metadata__"`: a str -> str map. The reference reader (the `safetensors`
package) also requires the tensors' byte ranges to tile the data section exactly: no overlap, no gap,
nothing after the last tensor. `read_header` checks all of that (and a little more) reading only the
header, so a bad file is rejected before anything is written, whatever its size.

The writer follows the reference writer's conventions: compact JSON, `__metadata__` first, the header
padded with spaces to a multiple of 8 bytes so the data section starts 8-byte aligned.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from porter.weights.errors import WeightsError

# The reference reader refuses headers above this size; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype the reference reader (safetensors 0.8) knows.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


def alignment(dtype: str) -> int:
    """The byte alignment a tensor of `dtype` wants (1 for sub-byte dtypes, at most 8)."""
    return max(1, min(8, DTYPE_BITS[dtype] // 8))


def nbytes_of(dtype: str, shape: Iterable[int]) -> int | None:
    """Bytes a tensor takes, or None when its bits do not end on a byte boundary."""
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header; `begin`/`end` are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header. `tensors` keeps the order of the JSON keys."""

    path: Path
    tensors: tuple[TensorEntry, ...]
    metadata: tuple[tuple[str, str], ...] | None  # `__metadata__`, order kept; None when absent
    data_start: int  # absolute file offset of the data section (8 + N)
    file_size: int

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}


class _Duplicate(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(f"key {key!r} appears twice")
        if not _is_unicode(key):
            raise ValueError(f"key {key.encode('utf-8', 'backslashreplace').decode()!r} holds a lone surrogate"
                             " escape (not Unicode text)")
        seen[key] = value
    return seen


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _is_unicode(s: str) -> bool:
    """False for strings with lone surrogates (`\\ud800` escapes): they cannot be written as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of one safetensors file; raise `WeightsError` naming the problem.

    Reads 8 + N bytes, never the data section.
    """
    path = Path(path)

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{path}: {problem}")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(
                    f"truncated: the file has {size} bytes, fewer than the 8-byte header length "
                    "that starts every safetensors file"
                )
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise bad(
                    f"header length field says {n} bytes, above the {MAX_HEADER_BYTES} byte limit "
                    "of safetensors readers; the file is corrupt or not safetensors (not read)"
                )
            if 8 + n > size:
                raise bad(
                    f"header length field says {n} bytes but the file has only {size - 8} bytes "
                    "after it; the file is truncated or not safetensors"
                )
            raw = f.read(n)
    except WeightsError:
        raise
    except IsADirectoryError:
        raise bad("is a directory, expected a .safetensors file") from None
    except OSError as e:
        raise bad(f"cannot read: {e.strerror or e}") from None

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not UTF-8 (byte {8 + e.start}); not a safetensors file?") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise bad(f"header is not JSON ({e.msg} at header byte {e.pos}); not a safetensors file?") from None
    except _Duplicate as e:
        raise bad(f"header JSON is ambiguous: {e}") from None
    except RecursionError:
        raise bad("header JSON nests too deeply to be a safetensors header (tensors are one level deep)") from None
    except ValueError as e:  # NaN/Infinity, integers too long to convert
        raise bad(f"header JSON has a value no safetensors header holds: {e}") from None
    if not isinstance(obj, dict):
        raise bad(f"header is JSON {type(obj).__name__}, expected an object of tensors")

    data_size = size - 8 - n
    metadata: tuple[tuple[str, str], ...] | None = None
    tensors: list[TensorEntry] = []
    for name, info in obj.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ must map strings to strings")
            if not all(_is_unicode(v) for v in info.values()):
                raise bad("__metadata__ holds a value with a lone surrogate escape (not Unicode text)")
            metadata = tuple(info.items())
            continue
        tensors.append(_entry(name, info, bad))

    # The byte ranges must tile the data section exactly (what the reference reader checks).
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    for t in ordered:
        if t.end > data_size:
            raise bad(
                f"tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] run past the end of the "
                f"data section ({data_size} bytes); the file is truncated or its header is wrong"
            )
    cursor, previous = 0, None
    for t in ordered:
        if t.begin < cursor:
            raise bad(
                f"tensors {previous.name!r} [{previous.begin}, {previous.end}] and {t.name!r} "  # type: ignore[union-attr]
                f"[{t.begin}, {t.end}] overlap"
            )
        if t.begin > cursor:
            raise bad(
                f"{t.begin - cursor} bytes before tensor {t.name!r} belong to no tensor "
                "(safetensors readers reject gaps)"
            )
        cursor, previous = t.end, t
    if cursor != data_size:
        raise bad(
            f"{data_size - cursor} bytes after the last tensor belong to no tensor "
            "(safetensors readers reject them)"
        )
    return Header(path, tuple(tensors), metadata, 8 + n, size)


def _entry(name: str, info: object, bad) -> TensorEntry:
    if not isinstance(info, dict):
        raise bad(f"tensor {name!r}: expected an object with dtype, shape, data_offsets")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise bad(f"tensor {name!r}: missing {', '.join(missing)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] with begin <= end")
    need = nbytes_of(dtype, shape)
    if need is None:
        raise bad(f"tensor {name!r}: {dtype}{shape} does not fill whole bytes")
    if offsets[1] - offsets[0] != need:
        raise bad(
            f"tensor {name!r}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes "
            f"but {dtype}{shape} needs {need}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def encode_header(
    tensors: Iterable[TensorEntry], metadata: Iterable[tuple[str, str]] | Mapping[str, str] | None
) -> bytes:
    """The 8-byte length plus JSON header, space-padded so the data section starts 8-byte aligned."""
    obj: dict[str, object] = {}
    if metadata is not None:
        obj["__metadata__"] = dict(metadata)
    for t in tensors:
        obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise WeightsError(
            f"the remapped header would be {len(raw)} bytes, above the {MAX_HEADER_BYTES} byte "
            "limit of safetensors readers"
        )
    return struct.pack("<Q", len(raw)) + raw
