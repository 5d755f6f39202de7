"""Remap a checkpoint's tensor names by rewriting headers and copying byte ranges.

Renaming and dropping never change a tensor's bytes, so a remap writes a new header and copies the
source's data ranges into place with `os.copy_file_range` (falling back to `sendfile`, then to a
bounded read/write loop). Memory stays at the size of the headers whatever the checkpoint size.
Merges along dim 0 are byte concatenations and are copied the same way; merges along a later dim
interleave rows and read only those tensors, a bounded block at a time.

Output is written to a temporary file (or directory) beside the destination, optionally verified,
then renamed into place: on any error nothing is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from porter.weights.checkpoint import Checkpoint, open_checkpoint
from porter.weights.errors import VerifyError, WeightsError, joined
from porter.weights.format import DTYPE_BITS, TensorEntry, alignment, encode_header, read_header
from porter.weights.plan import MappingRow, Plan, Target, plan_keys
from porter.weights.rules import Rule, WeightsSpec

BLOCK = 8 << 20  # read/write and hashing buffer: the only data-sized memory a remap holds
_COPY_CHUNK = 1 << 30  # bytes per copy_file_range/sendfile call


@dataclass(frozen=True)
class RemapResult:
    """What a remap did: the mapping table, counts and how the bytes were moved."""

    src: str
    dst: str
    plan: Plan
    shards: tuple[str, ...]
    bytes_in: int  # tensor data bytes in the source
    bytes_out: int  # tensor data bytes written
    copy_method: str  # "copy_file_range" | "sendfile" | "read/write" | "none" (dry run)
    seconds: float
    verified: bool = False  # True when every output tensor's sha256 matched its source bytes
    dry_run: bool = False
    index: str | None = None  # the index file written, for indexed sharded checkpoints
    notes: tuple[str, ...] = ()

    @property
    def rows(self) -> tuple[MappingRow, ...]:
        return self.plan.rows

    @property
    def unmatched_rules(self) -> tuple[str, ...]:
        return self.plan.unmatched

    def counts(self) -> dict[str, int]:
        return {**self.plan.counts(), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    def table(self, changed_only: bool = False) -> list[tuple[str, ...]]:
        """Rows of cells in `MappingRow.HEADERS` order (kept keys left out if `changed_only`)."""
        return [r.cells() for r in self.rows if not (changed_only and r.action == "kept")]

    def markdown(self, changed_only: bool = True) -> str:
        """The mapping table as Markdown (pipes in keys escaped)."""

        def cell(column: int, text: str) -> str:
            text = text.replace("|", "\\|")
            return f"`{text}`" if column < 2 and text != "-" else text  # keys in code spans

        lines = ["| " + " | ".join(MappingRow.HEADERS) + " |", "|" + "---|" * len(MappingRow.HEADERS)]
        for cells in self.table(changed_only):
            lines.append("| " + " | ".join(cell(i, c) for i, c in enumerate(cells)) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "dry_run": self.dry_run,
            "verified": self.verified,
            "counts": self.counts(),
            "shards": list(self.shards),
            "index": self.index,
            "copy_method": self.copy_method,
            "seconds": round(self.seconds, 3),
            "unmatched_rules": list(self.unmatched_rules),
            "notes": list(self.notes),
            "mapping": [r.to_dict() for r in self.rows],
        }


def remap_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    spec: WeightsSpec | Sequence[Rule],
    *,
    verify: bool | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
) -> RemapResult:
    """Remap the checkpoint at `src` (a .safetensors file or a shard directory) into `dst`.

    `verify` defaults to `spec.verify`. Raises `WeightsError` (bad input; nothing written) or
    `VerifyError` (output bytes differ from the source; nothing written).
    """
    started = time.perf_counter()
    if not isinstance(spec, WeightsSpec):
        spec = WeightsSpec(rules=tuple(spec))
    verify = spec.verify if verify is None else verify
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    plan = plan_keys(ckpt.sources(), spec.rules, origin=str(src))
    try:
        _check_destination(ckpt, dst, overwrite)
    except OSError as e:  # a name too long, a path under a file, no permission to look
        raise WeightsError(f"{dst}: cannot write the output there: {e.strerror or e}") from None
    shards = tuple(name for name, _ in ckpt.shards)
    bytes_out = sum(_nbytes(t) for t in plan.targets)
    if dry_run:
        return RemapResult(
            str(src), str(dst), plan, shards, ckpt.data_bytes, bytes_out, "none",
            time.perf_counter() - started, dry_run=True, notes=ckpt.notes,
        )

    copier = _Copier()
    layouts = _layouts(ckpt, plan)
    where = _where(ckpt)
    tmp = _temp_name(dst)
    try:
        if ckpt.is_dir:
            os.mkdir(tmp)
            outputs = {name: tmp / name for name in shards}
        else:
            outputs = {shards[0]: tmp}
        for name, path in outputs.items():
            _write_shard(layouts[name], where, path, copier)
        if ckpt.index_name is not None:
            (tmp / ckpt.index_name).write_text(_index_text(ckpt, plan), encoding="utf-8")
        if verify:
            verify_output(ckpt, plan, outputs, tmp if ckpt.is_dir else None)
        _commit(tmp, dst)
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise WeightsError(f"{dst}: cannot write the output: {e.strerror or e}") from None
        raise
    return RemapResult(
        str(src), str(dst), plan, shards, ckpt.data_bytes, bytes_out, copier.method,
        time.perf_counter() - started, verified=verify, index=ckpt.index_name, notes=ckpt.notes,
    )


# -- destination ------------------------------------------------------------------------------


def _check_destination(ckpt: Checkpoint, dst: Path, overwrite: bool) -> None:
    src = ckpt.path
    if dst.exists() and (os.path.samefile(src, dst) or src.resolve() == dst.resolve()):
        raise WeightsError(f"{dst}: is the source checkpoint; write the remap somewhere else")
    if not dst.parent.is_dir():
        raise WeightsError(f"{dst}: parent directory {dst.parent} does not exist")
    if ckpt.is_dir and dst.exists() and not dst.is_dir():
        raise WeightsError(f"{dst}: is a file, but the source {src} is a directory of shards")
    if not ckpt.is_dir and dst.is_dir():
        raise WeightsError(f"{dst}: is a directory, but the source {src} is one file; name the output file")
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst}: already exists; remove it or pass --force to replace it")
    if ckpt.is_dir and src.resolve() in dst.resolve().parents:
        raise WeightsError(f"{dst}: is inside the source directory {src}")


def _temp_name(dst: Path) -> Path:
    """A fresh hidden name beside `dst`, so the final rename stays on one filesystem."""
    return dst.parent / f".{dst.name}.{secrets.token_hex(4)}.porter-tmp"


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, dst: Path) -> None:
    """Move the finished output into place; an existing `dst` (with --force) is replaced."""
    if not tmp.is_dir() or not dst.exists():
        os.replace(tmp, dst)  # atomic for files; for directories only when dst is absent
        return
    old = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.porter-old"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """One output shard: header entries (in header order) and targets in data order."""

    name: str
    entries: tuple[TensorEntry, ...]
    data_order: tuple[Target, ...]
    metadata: tuple[tuple[str, str], ...] | None


def _nbytes(t: Target) -> int:
    return math.prod(t.shape) * DTYPE_BITS[t.dtype] // 8


def _layouts(ckpt: Checkpoint, plan: Plan) -> dict[str, _Layout]:
    """Place each shard's targets: the source's data order, larger alignments first.

    A file written by safetensors is already in that order, so its byte ranges stay adjacent and
    coalesce into few copies; dropping a tensor never leaves a later one misaligned.
    """
    begins = {t.name: t.begin for _, h in ckpt.shards for t in h.tensors}
    out = {}
    for name, header in ckpt.shards:
        targets = [t for t in plan.targets if t.shard == name]

        def key(item: tuple[int, Target]) -> tuple[int, float, int]:
            seq, t = item
            first = t.parts[0]
            begin = begins[first.name] if first.shard == name else math.inf
            return (-alignment(t.dtype), begin, seq)

        order = [t for _, t in sorted(enumerate(targets), key=key)]
        offsets, cursor = {}, 0
        for t in order:
            offsets[t.name] = (cursor, cursor + _nbytes(t))
            cursor += _nbytes(t)
        entries = tuple(TensorEntry(t.name, t.dtype, t.shape, *offsets[t.name]) for t in targets)
        out[name] = _Layout(name, entries, tuple(order), header.metadata)
    return out


# -- writing ----------------------------------------------------------------------------------


@dataclass
class _Copier:
    """Copies byte ranges between files with the fastest call the kernel and filesystem allow."""

    method: str = "copy_file_range"
    fds: dict[Path, int] = field(default_factory=dict)

    def fd(self, path: Path) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def copy(self, src: Path, dst_fd: int, offset: int, length: int) -> None:
        src_fd = self.fd(src)
        while length > 0:
            n = self._once(src_fd, dst_fd, offset, min(length, _COPY_CHUNK))
            if n <= 0:
                raise WeightsError(f"{src}: file ended at byte {offset} while copying; did it change?")
            offset += n
            length -= n

    def _once(self, src_fd: int, dst_fd: int, offset: int, count: int) -> int:
        if self.method == "copy_file_range":
            try:
                return os.copy_file_range(src_fd, dst_fd, count, offset)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in _UNSUPPORTED:
                    raise
                self.method = "sendfile"
        if self.method == "sendfile":
            try:
                return os.sendfile(dst_fd, src_fd, offset, count)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in _UNSUPPORTED:
                    raise
                self.method = "read/write"
        data = os.pread(src_fd, min(count, BLOCK), offset)
        _write_all(dst_fd, data)
        return len(data)


_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP, errno.EBADF}


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_shard(layout: _Layout, where: Where, path: Path, copier: _Copier) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        _write_all(fd, encode_header(layout.entries, layout.metadata))
        for piece in _coalesce(_pieces(layout, where)):
            if isinstance(piece, Target):
                _write_interleaved(piece, where, copier, fd)
            else:
                path, offset, length = piece
                copier.copy(path, fd, offset, length)
    finally:
        os.close(fd)
        copier.close()


Where = Mapping[str, tuple[Path, int, int]]  # source tensor name -> (file, absolute offset, bytes)


def _where(ckpt: Checkpoint) -> dict[str, tuple[Path, int, int]]:
    out = {}
    for shard, header in ckpt.shards:
        path = ckpt.path / shard if ckpt.is_dir else ckpt.path
        for t in header.tensors:
            out[t.name] = (path, header.data_start + t.begin, t.nbytes)
    return out


def _ranges(target: Target, where: Where) -> list[tuple[Path, int, int]]:
    return [where[part.name] for part in target.parts]


Run = tuple[Path, int, int]  # (source file, absolute offset, length)


def _pieces(layout: _Layout, where: Where) -> Iterator[Run | Target]:
    """What to write, in data order: byte ranges to copy, or a merge to interleave."""
    for target in layout.data_order:
        if target.merged and math.prod(target.shape[: target.dim]) > 1:
            yield target
        else:  # a plain tensor, or a merge that is a byte concatenation (dim 0 or leading 1s)
            yield from _ranges(target, where)


def _coalesce(pieces: Iterable[Run | Target]) -> Iterator[Run | Target]:
    """Join ranges that are adjacent in the same file, so a remap makes few large copies."""
    current: Run | None = None
    for piece in pieces:
        if isinstance(piece, Target):
            if current:
                yield current
            current = None
            yield piece
            continue
        path, offset, length = piece
        if current and current[0] == path and current[1] + current[2] == offset:
            current = (path, current[1], current[2] + length)
            continue
        if current and current[2]:
            yield current
        current = piece
    if current and current[2]:
        yield current


def _row_bytes(part_shape: tuple[int, ...], dim: int, dtype: str) -> int:
    return math.prod(part_shape[dim:]) * DTYPE_BITS[dtype] // 8


def _write_interleaved(target: Target, where: Where, copier: _Copier, fd: int) -> None:
    """A merge along dim > 0: for each index of the leading dims, one row from each part."""
    import numpy as np

    dim = target.dim
    assert dim is not None
    outer = math.prod(target.shape[:dim])
    parts = []
    for part, (path, offset, _) in zip(target.parts, _ranges(target, where)):
        parts.append((path, offset, _row_bytes(part.shape, dim, part.dtype)))
    row_total = sum(p[2] for p in parts) or 1
    rows_per_block = max(1, BLOCK // row_total)
    for r0 in range(0, outer, rows_per_block):
        rows = min(rows_per_block, outer - r0)
        blocks = []
        for path, offset, row in parts:
            data = os.pread(copier.fd(path), rows * row, offset + r0 * row)
            if len(data) != rows * row:
                raise WeightsError(f"{path}: file ended while reading tensor rows; did it change?")
            blocks.append(np.frombuffer(data, dtype=np.uint8).reshape(rows, row))
        _write_all(fd, memoryview(np.ascontiguousarray(np.concatenate(blocks, axis=1))).cast("B"))


def _index_text(ckpt: Checkpoint, plan: Plan) -> str:
    """The source index with `weight_map` remapped (its order kept) and `total_size` updated."""
    assert ckpt.index is not None
    new_name = {r.old: r.new for r in plan.rows}
    shard_of = {t.name: t.shard for t in plan.targets}
    weight_map: dict[str, str] = {}
    for old in ckpt.index["weight_map"]:
        new = new_name.get(old)
        if new is not None and new not in weight_map:
            weight_map[new] = shard_of[new]
    index = dict(ckpt.index)
    metadata = index.get("metadata")
    if isinstance(metadata, dict) and "total_size" in metadata:
        index["metadata"] = {**metadata, "total_size": sum(_nbytes(t) for t in plan.targets)}
    index["weight_map"] = weight_map
    return json.dumps(index, indent=2, ensure_ascii=False) + "\n"


# -- verification -----------------------------------------------------------------------------


def verify_output(
    ckpt: Checkpoint, plan: Plan, outputs: Mapping[str, Path], out_dir: Path | None = None
) -> int:
    """Check written shards against the source: every tensor's sha256, names, dtypes, shapes.

    Returns the number of tensors checked; raises `VerifyError` listing every mismatch.
    """
    headers = dict(ckpt.shards)
    where = _where(ckpt)
    problems: list[str] = []
    checked = 0
    for shard, path in outputs.items():
        try:
            header = read_header(path)
        except WeightsError as e:
            raise VerifyError(f"written shard is not valid safetensors: {e}") from None
        got = header.by_name()
        expected = [t for t in plan.targets if t.shard == shard]
        missing = [t.name for t in expected if t.name not in got]
        unexpected = sorted(set(got) - {t.name for t in expected})
        problems += [f"{path}: tensor {n!r} is missing" for n in missing]
        problems += [f"{path}: unexpected tensor {n!r}" for n in unexpected]
        if header.metadata != headers[shard].metadata:
            problems.append(f"{path}: __metadata__ differs from the source's")
        out_fd = os.open(path, os.O_RDONLY)
        try:
            for t in expected:
                entry = got.get(t.name)
                if entry is None:
                    continue
                if (entry.dtype, entry.shape) != (t.dtype, t.shape):
                    problems.append(
                        f"{path}: {t.name!r} is {entry.dtype}{list(entry.shape)}, expected {t.dtype}{list(t.shape)}"
                    )
                    continue
                problems += _verify_target(t, header.data_start + entry.begin, out_fd, path, where)
                checked += 1
        finally:
            os.close(out_fd)
    if out_dir is not None and ckpt.index_name is not None:
        written = json.loads((out_dir / ckpt.index_name).read_text(encoding="utf-8"))["weight_map"]
        if written != {t.name: t.shard for t in plan.targets}:
            problems.append(f"{out_dir / ckpt.index_name}: weight_map does not match the shards")
    if problems:
        raise VerifyError("verify failed:\n" + joined(problems))
    return checked


def _verify_target(t: Target, base: int, out_fd: int, path: Path, where: Where) -> list[str]:
    """Problems with one written tensor starting at absolute offset `base` of `out_fd`."""
    sources = _ranges(t, where)
    problems = []
    if not t.merged:
        src_path, offset, length = sources[0]
        if _hash_range(src_path, offset, length) != _hash_fd(out_fd, base, length):
            problems.append(f"{path}: bytes of {t.name!r} differ from {t.parts[0].name!r} in {src_path}")
        return problems
    # A merge: part i occupies columns [col_i, col_i + row_i) of each of `outer` rows.
    assert t.dim is not None
    outer = math.prod(t.shape[: t.dim])
    rows = [_row_bytes(p.shape, t.dim, p.dtype) for p in t.parts]
    row_total = sum(rows)
    col = 0
    for part, (src_path, offset, length), row in zip(t.parts, sources, rows):
        expected = _hash_range(src_path, offset, length)
        actual = _hash_strided(out_fd, base + col, outer, row, row_total)
        if expected != actual:
            problems.append(f"{path}: the {part.name!r} part of merged {t.name!r} differs from {src_path}")
        col += row
    return problems


def _hash_range(path: Path, offset: int, length: int) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd, offset, length)
    finally:
        os.close(fd)


def _hash_fd(fd: int, offset: int, length: int) -> str:
    h = hashlib.sha256()
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(BLOCK, end - offset), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.hexdigest()


def _hash_strided(fd: int, start: int, count: int, width: int, stride: int) -> str:
    """sha256 of `count` runs of `width` bytes, `stride` bytes apart, from `start`."""
    if count <= 1 or width == stride:
        return _hash_fd(fd, start, count * width)
    h = hashlib.sha256()
    per_block = max(1, BLOCK // stride)
    for r0 in range(0, count, per_block):
        rows = min(per_block, count - r0)
        data = os.pread(fd, (rows - 1) * stride + width, start + r0 * stride)
        view = memoryview(data)
        for r in range(rows):
            h.update(view[r * stride : r * stride + width])
    return h.hexdigest()


def verify_remap(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], spec: WeightsSpec | Sequence[Rule]
) -> int:
    """Check an existing remap output `dst` against `src` and the rules that produced it.

    Returns the number of tensors checked; raises `VerifyError` listing every mismatch.
    """
    if not isinstance(spec, WeightsSpec):
        spec = WeightsSpec(rules=tuple(spec))
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    plan = plan_keys(ckpt.sources(), spec.rules, origin=str(src))
    if ckpt.is_dir:
        outputs = {name: dst / name for name, _ in ckpt.shards}
        return verify_output(ckpt, plan, outputs, dst)
    return verify_output(ckpt, plan, {ckpt.shards[0][0]: dst})
