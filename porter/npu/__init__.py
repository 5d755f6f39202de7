"""The npu device layer: device choice, the CPU-backed npu simulator, op recording, NPU kernels.

    device.py   resolve_device(): auto | npu | npu-sim | cuda | cpu -> DeviceChoice
    sim.py      install(): a real `npu` device on PyTorch's PrivateUse1 key, backed by CPU memory
    ops.py      OpRecorder (aten ops reaching the npu device) and op_report() against a kernel list
    kernels.py  the NPU kernel list of a pinned torch_npu release, extracted from its wheel

Importing this package does not import torch or torch_npu; `porter.npu.sim` and `porter.npu.ops`
import torch when they are imported.
"""
