"""Find and validate a checkpoint: one .safetensors file, or a directory of shards.

A directory holds either one `*.safetensors.index.json` (Hugging Face sharding: `weight_map` maps
each tensor to its shard file, `metadata` usually carries `total_size`) or, without an index, one or
more `.safetensors` files whose tensor names must be distinct. Every header is read and checked, and
the index is checked against the headers, before a remap writes anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from porter.weights.errors import WeightsError, joined
from porter.weights.format import Header, read_header
from porter.weights.plan import SourceTensor

INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class Checkpoint:
    """A validated source checkpoint: its shard headers and, for indexed directories, the index."""

    path: Path
    is_dir: bool
    shards: tuple[tuple[str, Header], ...]  # (file name, header) in shard order
    index_name: str | None = None
    index: dict[str, Any] | None = None  # parsed index JSON, key order kept (read-only)
    notes: tuple[str, ...] = ()

    def sources(self) -> list[SourceTensor]:
        return [
            SourceTensor(t.name, t.dtype, t.shape, name) for name, header in self.shards for t in header.tensors
        ]

    def header(self, shard: str) -> Header:
        return dict(self.shards)[shard]

    @property
    def data_bytes(self) -> int:
        return sum(h.data_size for _, h in self.shards)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Validate the checkpoint at `path` (file or directory); raise `WeightsError` naming problems."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if not path.is_dir():
        return Checkpoint(path, False, ((path.name, read_header(path)),))

    indexes = sorted(p.name for p in path.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file())
    if len(indexes) > 1:
        raise WeightsError(f"{path}: several index files ({', '.join(indexes)}); keep one")
    if not indexes:
        files = sorted(p.name for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
        if not files:
            raise WeightsError(
                f"{path}: no .safetensors files and no *{INDEX_SUFFIX} in this directory"
            )
        return Checkpoint(path, True, tuple((f, read_header(path / f)) for f in files))

    index_name = indexes[0]
    index_path = path / index_name
    index = _read_index(index_path)
    weight_map: dict[str, str] = index["weight_map"]
    shard_names = sorted(set(weight_map.values()))
    problems = []
    for shard in shard_names:
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            problems.append(f"{index_path}: shard name {shard!r} is not a plain file name")
        elif not (path / shard).is_file():
            problems.append(f"{index_path}: lists shard {shard!r}, which is not in {path}")
    if problems:
        raise WeightsError(joined(problems))
    shards = tuple((s, read_header(path / s)) for s in shard_names)
    for shard, header in shards:
        listed = {k for k, v in weight_map.items() if v == shard}
        present = {t.name for t in header.tensors}
        for name in sorted(listed - present):
            problems.append(f"{index_path}: maps {name!r} to {shard!r}, which has no such tensor")
        for name in sorted(present - listed):
            where = weight_map.get(name)
            also = f" (the index says {where!r})" if where else " (the index does not list it)"
            problems.append(f"{path / shard}: holds {name!r}{also}")
    if problems:
        raise WeightsError(joined(problems))
    extra = sorted(
        p.name for p in path.iterdir() if p.suffix == ".safetensors" and p.name not in set(shard_names)
    )
    notes = tuple(f"{path / e}: not in {index_name}; not copied" for e in extra)
    return Checkpoint(path, True, shards, index_name, index, notes)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{index_path}: not JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"{index_path}: cannot read: {e}") from None
    except RecursionError:
        raise WeightsError(f"{index_path}: JSON nests too deeply to be a shard index") from None
    except ValueError as e:  # NaN/Infinity, integers too long to convert
        raise WeightsError(f"{index_path}: holds a value no shard index holds: {e}") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise WeightsError(f"{index_path}: expected an object with a `weight_map` object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in index["weight_map"].items()):
        raise WeightsError(f"{index_path}: `weight_map` must map tensor names to shard file names")
    if not index["weight_map"]:
        raise WeightsError(f"{index_path}: `weight_map` is empty; it must list every tensor's shard")
    if "metadata" in index and not isinstance(index["metadata"], dict):
        raise WeightsError(f"{index_path}: `metadata` must be an object")
    return index
