"""The NPU kernel list: the pinned data file, operator-name normalisation, and regeneration from a
wheel (a small wheel written here with the same layout and patterns as torch_npu's, plus the real
2.14.0 wheel from PyPI under the `network` marker)."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from porter.npu.cli import npu_kernels
from porter.npu.kernels import (
    PINNED_TORCH_NPU,
    KernelListError,
    load_kernels,
    load_transfer,
    normalize_op,
    regenerate,
    regenerate_files,
)

DATA = Path(__file__).resolve().parents[1] / "porter" / "data"


# -- the committed files ----------------------------------------------------------------------


def test_pinned_list_names_its_source_and_has_the_ops_models_use():
    kernels = load_kernels()
    assert kernels.version == PINNED_TORCH_NPU == "2.14.0"
    assert kernels.header["source"] == "torch_npu-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert re.fullmatch(r"[0-9a-f]{64}", kernels.header["sha256"])
    assert int(kernels.header["count"]) == len(kernels)
    for op in ("aten::add.Tensor", "aten::scaled_dot_product_attention", "aten::matmul",
               "aten::gelu.out", "aten::_to_copy", "aten::embedding", "aten::stft"):
        assert op in kernels, op
    # torch_npu's own operators are in the npu namespace, also when `supported` lists them
    assert "npu::npu_fusion_attention" in kernels
    assert "aten::npu_fusion_attention" not in kernels
    # real gaps of 2.14.0: no NPU kernel for i0 (used by kaiser windows), lgamma, digamma
    for op in ("aten::i0", "aten::lgamma", "aten::digamma", "aten::kaiser_window"):
        assert op not in kernels, op


def test_transfer_data_maps_cuda_memory_queries_to_npu():
    data = load_transfer()
    assert data["torch_npu"] == "2.14.0"
    assert data["source"]["sha256"] == load_kernels().header["sha256"]
    for name in ("mem_get_info", "memory_stats", "synchronize", "is_available", "Stream", "Event"):
        assert name in data["cuda_to_npu"], name
    assert "nvtx" not in data["cuda_to_npu"]
    assert data["module_patches"]["torch.cuda"] == "torch.npu"
    assert data["attribute_patches"]["torch.Tensor.cuda"] == "torch.Tensor.npu"
    assert data["attribute_patches"]["torch.cuda.DoubleTensor"] == "torch.npu.FloatTensor"
    assert "mem_get_info" in data["device_argument_functions"]["torch.cuda"]
    assert "zeros" in data["device_argument_functions"]["torch"]
    assert data["device_keyword_arguments"] == ["device", "device_type", "map_location", "device_id"]


def test_unknown_version_says_how_to_generate_it():
    with pytest.raises(KernelListError, match=r"porter npu-kernels 9\.9\.9"):
        load_kernels("9.9.9")


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("aten::add.Tensor", "aten::add.Tensor"),
        ("aten.add.Tensor", "aten::add.Tensor"),
        ("torch.ops.aten.add.Tensor", "aten::add.Tensor"),
        ("add.Tensor", "aten::add.Tensor"),
        ("aten.gelu.default", "aten::gelu"),
        ("gelu", "aten::gelu"),
        ("add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor", "aten::add.Tensor"),
        ("npu::npu_fusion_attention", "npu::npu_fusion_attention"),
        ("npu.npu_format_cast.Tensor", "npu::npu_format_cast.Tensor"),
    ],
)
def test_normalize_op_spellings(spelling, canonical):
    assert normalize_op(spelling) == canonical


def test_normalize_op_objects_match_the_list():
    torch = pytest.importorskip("torch")
    kernels = load_kernels()
    assert normalize_op(torch.ops.aten.add.Tensor) == "aten::add.Tensor"
    assert normalize_op(torch.ops.aten.gelu.default) == "aten::gelu"
    assert normalize_op(torch.ops.aten.add) == "aten::add"
    assert torch.ops.aten.mm.default in kernels
    assert torch.ops.aten.i0.default not in kernels
    assert kernels.has_packet("aten::add") and not kernels.has_packet("aten::i0")


# -- regeneration from a wheel ----------------------------------------------------------------

SMALL_YAML = """\
backend: NPU
cpp_namespace: at_npu::native
supported:
  - contiguous
  - func: clone
    op_api: True
symint:
  - as_strided_
custom:
  - func: npu_format_cast(Tensor self, int acl_format) -> Tensor
"""

BIG_YAML = """\
backend: NPU
cpp_namespace: at_npu::native
supported:
- func: add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor
  impl_ns: acl_op, op_api
- func: gelu.out(Tensor self, *, str approximate='none', Tensor(a!) out) -> Tensor(a!)
  impl_ns: acl_op, op_api
- func: npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)
  impl_ns: op_api
- contiguous
autograd:
- func: _thnn_fused_gru_cell(Tensor input_gates, Tensor hidden_gates, Tensor hx) -> (Tensor, Tensor)
quant:
- func: dequantize.self(Tensor self) -> Tensor
custom:
- func: npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)
- func: npu_format_cast(Tensor self, int acl_format) -> Tensor
"""

TRANSFER = '''\
import torch
import torch_npu

torch_fn_white_list = ['zeros', 'ones', 'empty']
torch_cuda_fn_white_list = ['mem_get_info', 'set_device']
device_kwargs_list = ['device', 'map_location']


def _patch_cuda():
    patches = [
        ['cuda', torch_npu.npu],
        ['cuda.random', torch_npu.npu.random],
    ]
    _apply_patches(patches)


def _init():
    _patch_cuda()
    _device_wrapper(torch.cuda, torch_cuda_fn_white_list)
    _device_wrapper(torch, torch_fn_white_list)
    _device_wrapper(torch.fft, ['fftfreq'])
    torch.Tensor.cuda = torch.Tensor.npu
    torch.cuda.CUDAGraph = torch_npu.npu.NPUGraph
    torch.Generator = _GeneratorProxy
    torch.amp.custom_fwd = _wrapper_cuda(torch.amp.custom_fwd)
'''

NPU_INIT = '__all__ = ["mem_get_info", "synchronize"]\n__all__ += ["Stream"]\n'
NPU_RANDOM = '__all__ = ["manual_seed"]\n'


def make_wheel(path: Path, version: str = "9.8.7", big: str = BIG_YAML, extra: dict[str, str] | None = None) -> Path:
    wheel = path / f"torch_npu-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    files = {
        f"torch_npu-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch_npu\nVersion: {version}\n",
        "torch_npu/csrc/aten/npu_native_functions.yaml": SMALL_YAML,
        "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml": big,
        "torch_npu/contrib/transfer_to_npu.py": TRANSFER,
        "torch_npu/npu/__init__.py": NPU_INIT,
        "torch_npu/npu/random.py": NPU_RANDOM,
        **(extra or {}),
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_regenerate_from_a_wheel_writes_list_and_transfer(tmp_path):
    wheel = make_wheel(tmp_path)
    out = tmp_path / "out"
    path = regenerate(wheel, out)
    assert path == out / "torch_npu_kernels-9.8.7.txt"
    text = path.read_text()
    assert f"# sha256: {hashlib.sha256(wheel.read_bytes()).hexdigest()}" in text
    assert f"# source: {wheel.name}" in text
    ops = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert ops == sorted(ops)
    assert ops == [
        "aten::_thnn_fused_gru_cell",
        "aten::add.Tensor",
        "aten::as_strided_",
        "aten::clone",
        "aten::contiguous",
        "aten::dequantize.self",
        "aten::gelu.out",
        "npu::npu_format_cast",
        "npu::npu_rms_norm",
    ]
    kernels = load_kernels(path)
    assert kernels.version == "9.8.7" and "aten::gelu.out" in kernels

    transfer = json.loads((out / "torch_npu_transfer-9.8.7.json").read_text())
    assert transfer["cuda_to_npu"] == ["Stream", "mem_get_info", "synchronize"]
    assert transfer["module_patches"] == {"torch.cuda": "torch.npu", "torch.cuda.random": "torch.npu.random"}
    assert transfer["module_patch_names"]["torch.cuda.random"] == ["manual_seed"]
    assert transfer["device_argument_functions"] == {
        "torch": ["zeros", "ones", "empty"],
        "torch.cuda": ["mem_get_info", "set_device"],
        "torch.fft": ["fftfreq"],
    }
    assert transfer["attribute_patches"] == {
        "torch.Tensor.cuda": "torch.Tensor.npu",
        "torch.cuda.CUDAGraph": "torch.npu.NPUGraph",
    }
    assert transfer["wrapped_attributes"] == ["torch.amp.custom_fwd"]
    assert transfer["device_keyword_arguments"] == ["device", "map_location"]
    assert transfer["source"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_regeneration_is_deterministic(tmp_path):
    wheel = make_wheel(tmp_path)
    a = regenerate(wheel, tmp_path / "a").read_bytes()
    b = regenerate(wheel, tmp_path / "b").read_bytes()
    assert a == b


def test_unknown_yaml_section_stops_regeneration(tmp_path):
    wheel = make_wheel(tmp_path, big=BIG_YAML + "mystery:\n- func: i0(Tensor self) -> Tensor\n")
    with pytest.raises(KernelListError, match=r"npu_native_functions_by_codegen\.yaml: section `mystery`"):
        regenerate(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_section_is_read_but_not_counted_as_kernels(tmp_path):
    wheel = make_wheel(tmp_path, big=BIG_YAML + "unsupported:\n- i0\n")
    kernels = load_kernels(regenerate(wheel, tmp_path / "out"))
    assert "aten::i0" not in kernels and "aten::add.Tensor" in kernels


def test_cli_writes_files_and_prints_their_paths(tmp_path):
    wheel = make_wheel(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(npu_kernels, [str(wheel), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "torch_npu_kernels-9.8.7.txt") in result.output
    assert str(out / "torch_npu_transfer-9.8.7.json") in result.output


@pytest.mark.parametrize(
    "arg, message",
    [
        ("{tmp}/missing.whl", "missing.whl: no such wheel file"),
        ("latest", "'latest' is not a torch_npu version"),
        ("{tmp}/not-a-wheel.whl", "not a wheel (zip) file"),
        ("{tmp}/other.whl", "has no torch_npu/csrc/aten/npu_native_functions*.yaml"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, arg, message):
    (tmp_path / "not-a-wheel.whl").write_text("hello")
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("other/__init__.py", "")
    out = tmp_path / "out"
    result = CliRunner().invoke(npu_kernels, [arg.format(tmp=tmp_path), "--out-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_check_finds_a_stale_list(tmp_path):
    wheel = make_wheel(tmp_path)
    out = tmp_path / "out"
    assert CliRunner().invoke(npu_kernels, [str(wheel), "--out-dir", str(out)]).exit_code == 0
    assert CliRunner().invoke(npu_kernels, [str(wheel), "--out-dir", str(out), "--check"]).exit_code == 0
    stale = out / "torch_npu_kernels-9.8.7.txt"
    stale.write_text(stale.read_text().replace("aten::add.Tensor\n", ""))
    result = CliRunner().invoke(npu_kernels, [str(wheel), "--out-dir", str(out), "--check"])
    assert result.exit_code == 1
    assert "stale" in result.output and stale.name in result.output


def test_command_is_reachable_where_the_cli_looks_for_it():
    import porter.npu.kernels as kernels_module

    assert kernels_module.npu_kernels is npu_kernels


@pytest.mark.network
@pytest.mark.slow
def test_committed_files_match_the_pypi_wheel(tmp_path):
    """`pip download torch_npu==2.14.0` (cached) and regenerate: identical to porter/data."""
    done = regenerate_files(PINNED_TORCH_NPU, tmp_path)
    assert done.kernels.read_text() == (DATA / done.kernels.name).read_text()
    assert done.transfer.read_text() == (DATA / done.transfer.name).read_text()
