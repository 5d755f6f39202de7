"""Bad input to `porter remap`: each case gets a clear message naming the file and the problem,
exit code 2, no traceback, and nothing left behind (no output, no temporary file)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from porter.weights import MAX_HEADER_BYTES, WeightsError, read_header
from porter.weights.cli import remap as remap_cmd


def raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A file in safetensors layout from a header we choose (valid or not)."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def f32(begin: int, end: int, shape: list[int] | None = None) -> dict:
    return {"dtype": "F32", "shape": shape if shape is not None else [(end - begin) // 4], "data_offsets": [begin, end]}


def valid(path: Path) -> Path:
    save_file({"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(4)}, path)
    return path


def truncated(path: Path) -> Path:
    valid(path)
    path.write_bytes(path.read_bytes()[:-10])
    return path


def sparse_huge_header(path: Path) -> Path:
    # Claims (and, sparsely, has) a 150 MB header: must be refused before it is read.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(8 + 150_000_000 + 16)
    return path


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated-data": (truncated, "run past the end of the data section"),
    "truncated-prefix": (lambda p: (p.write_bytes(b"\x10\x00\x00"), p)[1], "fewer than the 8-byte header length"),
    "empty-file": (lambda p: (p.write_bytes(b""), p)[1], "the file has 0 bytes"),
    "header-length-beyond-file": (
        lambda p: raw(p, {"a": f32(0, 8)}, b"\0" * 8, length=4096),
        "header length field says 4096 bytes but the file has only",
    ),
    "header-not-json": (lambda p: raw(p, b"{not json at all}   "), "header is not JSON"),
    "header-not-utf8": (lambda p: raw(p, b"\xff\xfe{}"), "header is not UTF-8"),
    "header-json-list": (lambda p: raw(p, b"[1, 2]"), "header is JSON list"),
    "duplicate-key": (
        lambda p: raw(p, b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                         b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        "key 'a' appears twice",
    ),
    "overlapping-offsets": (
        lambda p: raw(p, {"a": f32(0, 16), "b": f32(8, 24)}, b"\0" * 24),
        "tensors 'a' [0, 16] and 'b' [8, 24] overlap",
    ),
    "out-of-range-offsets": (
        lambda p: raw(p, {"a": f32(0, 8), "b": f32(8, 4008)}, b"\0" * 16),
        "tensor 'b': data_offsets [8, 4008] run past the end of the data section (16 bytes)",
    ),
    "gap-between-tensors": (
        lambda p: raw(p, {"a": f32(0, 8), "b": f32(12, 20)}, b"\0" * 20),
        "4 bytes before tensor 'b' belong to no tensor",
    ),
    "trailing-bytes": (
        lambda p: raw(p, {"a": f32(0, 8)}, b"\0" * 12),
        "4 bytes after the last tensor belong to no tensor",
    ),
    "offsets-disagree-with-shape": (
        lambda p: raw(p, {"a": f32(0, 8, shape=[3])}, b"\0" * 8),
        "hold 8 bytes but F32[3] needs 12",
    ),
    "unknown-dtype": (
        lambda p: raw(p, {"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        "tensor 'a': unknown dtype 'Q4_K'",
    ),
    "bad-shape": (
        lambda p: raw(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "shape [-1] is not a list of non-negative integers",
    ),
    "missing-field": (
        lambda p: raw(p, {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
        "tensor 'a': missing data_offsets",
    ),
    "metadata-not-strings": (
        lambda p: raw(p, {"__metadata__": {"step": 3}, "a": f32(0, 4)}, b"\0" * 4),
        "__metadata__ must map strings to strings",
    ),
    "huge-header": (sparse_huge_header, f"above the {MAX_HEADER_BYTES} byte limit"),
    "directory-instead-of-file": (lambda p: (p.mkdir(), p)[1], "no .safetensors files"),
}


def run(tmp_path: Path, src: Path, dst: Path, rules_text: str | None = "- add_prefix: x.\n", *extra: str):
    rules = tmp_path / "rules.yaml"
    if rules_text is not None:
        rules.write_text(rules_text)
    return CliRunner().invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules), *extra])


def assert_clean_failure(res, tmp_path: Path, inputs: set[str], message: str, names: Path) -> None:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    assert message in res.stderr, res.stderr
    assert str(names) in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_file(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    src = make(tmp_path / "bad.safetensors")
    res = run(tmp_path, src, tmp_path / "out.safetensors")
    assert_clean_failure(res, tmp_path, {"bad.safetensors", "rules.yaml"}, message, src)


@pytest.mark.parametrize("case", ["overlapping-offsets", "gap-between-tensors", "unknown-dtype", "truncated-data"])
def test_the_real_safetensors_reader_rejects_these_files_too(tmp_path: Path, case: str) -> None:
    # Our checks are no stricter than the reference reader's on these cases.
    src = CASES[case][0](tmp_path / "bad.safetensors")
    with pytest.raises(Exception):
        with safe_open(src, "pt") as f:
            [f.get_tensor(k) for k in f.keys()]


def test_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # 150 MB of zeros would parse as "not JSON" if it were read; the size check must come first.
    with pytest.raises(WeightsError, match="not read"):
        read_header(sparse_huge_header(tmp_path / "huge.safetensors"))


def test_bad_shard_in_a_directory_leaves_no_output_directory(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    save_file({"a": torch.ones(2)}, src / "model-00001-of-00002.safetensors")
    truncated(src / "model-00002-of-00002.safetensors")
    res = run(tmp_path, src, tmp_path / "out")
    assert_clean_failure(res, tmp_path, {"ckpt", "rules.yaml"}, "run past the end", src / "model-00002-of-00002.safetensors")


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{not json", "model.safetensors.index.json: not JSON"),
        (json.dumps({"metadata": {}}), "expected an object with a `weight_map` object"),
        (json.dumps({"weight_map": {"a": "gone.safetensors"}}), "lists shard 'gone.safetensors', which is not in"),
        (json.dumps({"weight_map": {"a": "../escape.safetensors"}}), "is not a plain file name"),
        (json.dumps({"weight_map": {"a": "s.safetensors", "ghost": "s.safetensors"}}), "maps 'ghost' to 's.safetensors', which has no such tensor"),
        (json.dumps({"weight_map": {"b": "s.safetensors"}}), "holds 'a' (the index does not list it)"),
        (json.dumps({"weight_map": {}}), "`weight_map` is empty"),
    ],
)
def test_bad_index(tmp_path: Path, index: str, message: str) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    save_file({"a": torch.ones(2)}, src / "s.safetensors")
    (src / "model.safetensors.index.json").write_text(index)
    res = run(tmp_path, src, tmp_path / "out")
    assert_clean_failure(res, tmp_path, {"ckpt", "rules.yaml"}, message, src)


def test_missing_source_missing_rules_and_bad_rules_yaml(tmp_path: Path) -> None:
    src = valid(tmp_path / "ok.safetensors")
    res = run(tmp_path, tmp_path / "nope.safetensors", tmp_path / "out.safetensors")
    assert_clean_failure(res, tmp_path, {"ok.safetensors", "rules.yaml"}, "no such file or directory", tmp_path / "nope.safetensors")

    (tmp_path / "rules.yaml").unlink()
    res = run(tmp_path, src, tmp_path / "out.safetensors", None)
    assert_clean_failure(res, tmp_path, {"ok.safetensors"}, "rules file not found", tmp_path / "rules.yaml")

    res = run(tmp_path, src, tmp_path / "out.safetensors", "- rename: {from: a, to: b\n")
    assert_clean_failure(res, tmp_path, {"ok.safetensors", "rules.yaml"}, "bad YAML", tmp_path / "rules.yaml")

    res = run(tmp_path, src, tmp_path / "out.safetensors", "- rename: {from: '[', to: b}\n")
    assert_clean_failure(res, tmp_path, {"ok.safetensors", "rules.yaml"}, "rules[0].rename.from: bad regex", tmp_path / "rules.yaml")


def test_json_mode_reports_the_error_as_data(tmp_path: Path) -> None:
    src = CASES["unknown-dtype"][0](tmp_path / "bad.safetensors")
    res = run(tmp_path, src, tmp_path / "out.safetensors", "- drop: x\n", "--json")
    assert res.exit_code == 2
    body = json.loads(res.stdout)
    assert body["ok"] is False and body["exit_code"] == 2 and "unknown dtype 'Q4_K'" in body["error"]


def test_destination_problems(tmp_path: Path) -> None:
    src = valid(tmp_path / "ok.safetensors")
    res = run(tmp_path, src, tmp_path / "no" / "such" / "out.safetensors")
    assert_clean_failure(res, tmp_path, {"ok.safetensors", "rules.yaml"}, "parent directory", tmp_path / "no" / "such")
    (tmp_path / "adir").mkdir()
    res = run(tmp_path, src, tmp_path / "adir")
    assert_clean_failure(res, tmp_path, {"ok.safetensors", "rules.yaml", "adir"}, "is a directory, but the source", tmp_path / "adir")
