"""Hostile safetensors headers: `porter remap` exits 2 with a message naming the file, never 3.

The named cases are the ones a reliability pass found (each crashed with a traceback or exited 0
after printing an error); the Hypothesis test walks the whole class: any JSON a header can hold,
any length field, either `read_header` validates it or it raises `WeightsError`.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from porter.weights import WeightsError, read_header

PORTER = str(Path(sys.executable).with_name("porter"))


def raw(path: Path, body: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def entry(dtype: object = "F32", shape: object = (1,), offsets: object = (0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


CASES: dict[str, tuple[bytes, str]] = {
    "dtype-is-a-list": (json.dumps({"a": entry(dtype=["F32"])}).encode(), "unknown dtype"),
    "dtype-is-an-object": (json.dumps({"a": entry(dtype={})}).encode(), "unknown dtype"),
    "nested-arrays": (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    "nested-objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nests too deeply"),
    "lone-surrogate-name": (b'{"\\ud800": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "lone surrogate"),
    "lone-surrogate-metadata": (b'{"__metadata__": {"k": "\\udfff"}, "a": {"dtype":"F32","shape":[1],'
                                b'"data_offsets":[0,4]}}', "lone surrogate"),
    "nan": (b'{"a": NaN}', "NaN is not a JSON value"),
    "infinity-offset": (b'{"a": {"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}}', "Infinity"),
    "5000-digit-integer": (b'{"a": {"dtype":"F32","shape":[1' + b"0" * 5000 + b'],"data_offsets":[0,4]}}',
                           "value no safetensors header holds"),
    "metadata-int-value": (json.dumps({"__metadata__": {"a": 1}}).encode(), "__metadata__ must map strings"),
    "metadata-list": (json.dumps({"__metadata__": [1]}).encode(), "__metadata__ must map strings"),
    "metadata-null": (json.dumps({"__metadata__": None}).encode(), "__metadata__ must map strings"),
    "duplicate-key": (b'{"a": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}, "a": {}}', "appears twice"),
    "entry-is-a-list": (json.dumps({"a": [1, 2]}).encode(), "expected an object"),
    "offsets-out-of-range": (json.dumps({"a": entry(offsets=(2**70, 2**70 + 4))}).encode(), "run past the end"),
    "float-offsets": (json.dumps({"a": entry(offsets=(0.0, 4.0))}).encode(), "is not [begin, end]"),
    "huge-shape": (json.dumps({"a": entry(shape=(2**62, 2**62))}).encode(), "needs"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_header_exits_2_through_the_installed_executable(tmp_path: Path, name: str):
    body, message = CASES[name]
    src = raw(tmp_path / "in.safetensors", body, b"\0" * 4)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    proc = subprocess.run([PORTER, "remap", str(src), str(tmp_path / "out.safetensors"), "--rules", str(rules)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr and "in.safetensors" in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_huge_header_length_is_refused_before_reading(tmp_path: Path):
    src = raw(tmp_path / "in.safetensors", b"{}", length=2**63)
    with pytest.raises(WeightsError, match="above the"):
        read_header(src)


# -- the class: any JSON value in any place a header has one ----------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=10)
dtypes = st.one_of(st.sampled_from(["F32", "BF16", "F4", "BOOL", "I64", "Q4_K", ""]), json_values)
shapes = st.one_of(st.lists(st.integers(min_value=-2, max_value=2**64), max_size=4), json_values)
offsets = st.one_of(st.lists(st.integers(min_value=-4, max_value=2**64), min_size=0, max_size=3), json_values)
entries = st.one_of(st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets}), json_values)
metadata = st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), json_values), max_size=3),
                     json_values)
headers = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=10), st.just("__metadata__")), entries, max_size=4),
    st.builds(lambda m, e: {"__metadata__": m, **e}, metadata,
              st.dictionaries(st.text(max_size=10), entries, max_size=3)),
    json_values,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, data=st.binary(max_size=64), length_delta=st.sampled_from([0, 0, 0, -1, 3, 2**40]),
       surrogate=st.booleans())
def test_any_header_is_valid_or_a_weights_error(tmp_path: Path, header: object, data: bytes, length_delta: int,
                                                 surrogate: bool):
    body = json.dumps(header).encode()
    if surrogate:  # a lone surrogate escape in the first string of the header
        body = body.replace(b'"', b'"\\ud834', 1) if b'"' in body else body
    path = raw(tmp_path / "h.safetensors", body, data, length=max(0, len(body) + length_delta))
    try:
        h = read_header(path)
    except WeightsError as e:
        assert str(e).startswith(str(path))
        return
    # Accepted: everything the remapper relies on holds.
    assert h.data_start + sum(t.nbytes for t in h.tensors) == h.file_size
    for t in h.tensors:
        t.name.encode("utf-8")
        assert isinstance(t.dtype, str) and all(isinstance(d, int) for d in t.shape)


# -- shard indexes and destinations --------------------------------------------------------------
def valid_file(path: Path) -> Path:
    return raw(path, json.dumps({"a": entry()}).encode(), b"\0" * 4)


INDEXES = {
    "nested": ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
    "5000-digit-total-size": ('{"weight_map": {"a": "s.safetensors"}, "metadata": {"total_size": 1'
                              + "0" * 5000 + "}}", "holds a value no shard index holds"),
    "nan-total-size": ('{"weight_map": {"a": "s.safetensors"}, "metadata": {"total_size": NaN}}',
                       "NaN is not a JSON value"),
    "nul-in-shard-name": (json.dumps({"weight_map": {"a": "s\0.safetensors"}}), "which is not in"),
    "lone-surrogate-shard": ('{"weight_map": {"a": "\\ud800.safetensors"}}', "which is not in"),
    "shard-is-a-path": (json.dumps({"weight_map": {"a": "../s.safetensors"}}), "not a plain file name"),
}


def remap(tmp_path: Path, src: Path, dst: str) -> subprocess.CompletedProcess:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    return subprocess.run([PORTER, "remap", str(src), dst, "--rules", str(rules)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_hostile_index_exits_2(tmp_path: Path, name: str):
    text, message = INDEXES[name]
    ck = tmp_path / "ck"
    ck.mkdir()
    valid_file(ck / "s.safetensors")
    (ck / "model.safetensors.index.json").write_text(text)
    proc = remap(tmp_path, ck, str(tmp_path / "out"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dst", ["{tmp}/afile/x.safetensors", "/proc/1/x.safetensors", "{tmp}/" + "x" * 300])
def test_impossible_destination_exits_2(tmp_path: Path, dst: str):
    (tmp_path / "afile").write_text("a file\n")
    proc = remap(tmp_path, valid_file(tmp_path / "in.safetensors"), dst.format(tmp=tmp_path))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
