"""The npu device layer: device choice, the CPU-backed npu simulator, op recording, NPU kernels.

    device.py      resolve_device(): auto | npu | npu-sim | cuda | cpu -> DeviceChoice
    sim.py         install(): a real `npu` device on PyTorch's PrivateUse1 key, backed by CPU
                   memory; sim_env() for child processes that run on it
    sim_tensor.py  the simulator's npu tensor and how each aten op on it runs
    sim_device.py  torch.npu of the simulator: device, memory, RNG, stream queries
    sim_site/      the torch_npu stand-in that exists only inside simulated runs
    ops.py         OpRecorder (aten ops reaching the npu device) and op_report() against a list
    kernels.py     the NPU kernel list of a pinned torch_npu release, extracted from its wheel
    cli.py         `porter npu-kernels VERSION_OR_WHEEL`

Importing this package imports neither torch nor torch_npu; device.py and kernels.py do not
either (until asked about CUDA); sim*.py and ops.py import torch.
"""
