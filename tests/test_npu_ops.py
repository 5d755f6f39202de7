"""Op recording on the npu device and the report against the pinned torch_npu kernel list."""

from __future__ import annotations

import pytest
import torch

from porter.npu.kernels import KernelList, load_kernels
from porter.npu.ops import OpRecorder, RecordedOp, classify, op_report, structured_delegate

from test_npu_sim import run_sim

RESAMPLER = '''
import torch
from torch import nn


class KaiserResampler(nn.Module):
    """Windowed-sinc resampling filter built on the fly, as audio front ends do."""

    def __init__(self, taps=16, beta=8.0):
        super().__init__()
        self.taps, self.beta = taps, beta

    def forward(self, x):
        n = torch.arange(self.taps, device=x.device, dtype=x.dtype)
        ratio = 2 * n / (self.taps - 1) - 1
        window = torch.i0(self.beta * torch.sqrt(1 - ratio ** 2))
        kernel = torch.sinc(ratio * 4) * window / window.max()
        phase = x.double().cumsum(-1).float()
        return torch.nn.functional.gelu(torch.conv1d(x[:, None], kernel[None, None], padding="same")[:, 0] + phase)
'''


def test_report_flags_an_op_the_pinned_list_lacks_with_its_model_location(tmp_path):
    (tmp_path / "resampler.py").write_text(RESAMPLER)
    lines = RESAMPLER.splitlines()
    i0_line = next(i for i, ln in enumerate(lines, 1) if "torch.i0(" in ln)
    double_line = next(i for i, ln in enumerate(lines, 1) if ".double()" in ln)
    result = run_sim(
        """
import torch, torch_npu
from resampler import KaiserResampler
from porter.npu.kernels import load_kernels
from porter.npu.ops import OpRecorder, op_report

x = torch.randn(2, 64)
model = KaiserResampler()
with torch.no_grad():
    ref = model(x)
    with OpRecorder() as recorder:
        out = model(x.to("npu"))
report = op_report(recorder, load_kernels())
emit({"same": torch.equal(out.cpu(), ref), "report": report.to_dict(), "summary": report.summary(),
      "ok": report.ok})
""",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result["same"] is True
    report = result["report"]
    assert report["device"] == "npu-sim" and report["torch_npu"] == "2.14.0"
    missing = {m["op"]: m for m in report["missing"]}
    assert list(missing) == ["aten::i0"], result["summary"]
    assert missing["aten::i0"]["locations"] == [f"resampler.py:{i0_line} (forward)"]
    assert missing["aten::i0"]["dtypes"] == [["float32"]]
    assert "aten::i0.out is not in torch_npu 2.14.0" in missing["aten::i0"]["detail"]
    hazards = {(h["op"], h["dtype"]): h for h in report["dtype_hazards"]}
    assert ("aten::cumsum", "float64") in hazards
    assert hazards[("aten::cumsum", "float64")]["locations"] == [f"resampler.py:{double_line} (forward)"]
    assert ("aten::_to_copy", "float64") in hazards  # .float() of the double tensor
    status = {u["op"]: u["status"] for u in report["ops"]}
    assert status["aten::arange"] == "npu-kernel"
    assert status["aten::convolution"] == "npu-kernel"  # conv1d decomposes above the backend
    assert status["aten::gelu"] == "npu-kernel"  # through aten::gelu.out
    assert status["aten::select.int"] == "composite"  # x[:, None] etc.: PyTorch's own view kernels
    assert result["ok"] is False
    assert "no NPU kernel: aten::i0" in result["summary"]


def test_recorder_ignores_ops_that_never_touch_the_npu():
    with OpRecorder() as recorder:
        (torch.ones(3) * 2).sum()
    assert recorder.ops == []
    assert recorder.device == "npu"
    report = op_report(recorder, load_kernels())
    assert report.ok and report.calls == 0


SMALL = KernelList(
    version="0.test",
    ops=frozenset({"aten::add.Tensor", "aten::gelu.out", "aten::mm", "npu::npu_rms_norm"}),
)


@pytest.mark.parametrize(
    "op, status, detail",
    [
        ("aten::add.Tensor", "npu-kernel", "has an NPU kernel"),
        ("aten.add.Tensor", "npu-kernel", "has an NPU kernel"),
        ("aten::gelu", "npu-kernel", "runs through aten::gelu.out"),
        ("aten::gelu_", "npu-kernel", "runs through aten::gelu.out"),
        ("aten::silu", "missing", "its kernel aten::silu.out is not in torch_npu 0.test"),
        ("aten::slice.Tensor", "composite", "backend-independent"),
        ("aten::zeros", "composite", "backend-independent"),
        ("aten::i0", "missing", "aten::i0.out is not in torch_npu 0.test"),
        ("aten::bmm", "missing", "its kernel aten::bmm.out is not in torch_npu 0.test"),
        ("aten::_fft_r2c", "missing", "no NPU kernel in torch_npu 0.test"),
        ("aten::no_such_op", "missing", "unknown to torch"),
        ("npu::npu_rms_norm", "npu-kernel", "has an NPU kernel"),
        ("mylib::custom_op", "missing", "not an operator of torch_npu 0.test"),
    ],
)
def test_classification_rules(op, status, detail):
    got_status, got_detail = classify(op, SMALL)
    assert got_status == status
    assert detail in got_detail


def test_structured_delegates_come_from_torch():
    assert structured_delegate("aten::gelu") == "aten::gelu.out"
    assert structured_delegate("aten::add.Tensor") == "aten::add.out"
    assert structured_delegate("aten::pow.Tensor_Scalar") == "aten::pow.Tensor_Scalar_out"
    assert structured_delegate("aten::mm") == "aten::mm.out"
    assert structured_delegate("aten::view") is None


def test_report_groups_calls_and_lists_dtype_hazards():
    records = [
        RecordedOp("aten::add.Tensor", ("float32", "float32"), "model.py:3 (forward)", 5),
        RecordedOp("aten::add.Tensor", ("float64", "float64"), "model.py:9 (forward)", 2),
        RecordedOp("aten::mm", ("complex64", "complex64"), "model.py:12 (forward)", 1),
        RecordedOp("aten::i0", ("float32",), None, 1),
        RecordedOp("aten::empty.memory_format", ("dtype=float64",), "model.py:20 (f)", 1),
    ]
    report = op_report(records, SMALL, device="npu")
    assert report.calls == 10 and len(report.ops) == 4
    add = next(u for u in report.ops if u.op == "aten::add.Tensor")
    assert add.count == 7 and add.locations == ("model.py:3 (forward)", "model.py:9 (forward)")
    assert [u.op for u in report.missing] == ["aten::i0", "aten::empty.memory_format"]
    assert {(h.op, h.dtype, h.locations) for h in report.dtype_hazards} == {
        ("aten::add.Tensor", "float64", ("model.py:9 (forward)",)),
        ("aten::mm", "complex64", ("model.py:12 (forward)",)),
        ("aten::empty.memory_format", "float64", ("model.py:20 (f)",)),
    }
    assert not report.ok
    assert report.to_dict()["missing"][0]["op"] == "aten::i0"
