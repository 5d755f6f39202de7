"""mem-get-info: `torch.cuda.mem_get_info` that also answers on npu, with real free memory."""

from __future__ import annotations

import re

import libcst as cst

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety

HELPER = "_porter_mem_get_info"
HELPER_SOURCE = f'''
def {HELPER}(device=None):
    """(free, total) device memory in bytes on CUDA or Ascend npu; written by porter."""
    import torch

    kind = getattr(device, "type", device)
    if isinstance(kind, str):
        kind = kind.split(":")[0]
    elif kind is None and not torch.cuda.is_available() and hasattr(torch, "npu") and torch.npu.is_available():
        kind = "npu"
    if kind == "npu":
        return torch.npu.mem_get_info(device)
    return torch.cuda.mem_get_info(device)
'''


def _with_helper(imports: str, rest: str) -> str:
    """What a module looks like once the helper is written after its imports."""
    return f"{imports}\n\n{HELPER_SOURCE.strip()}\n\n\n{rest}"


class _MemGetInfo(Rewriter):

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not self.refers_to(original.func, "torch.cuda.mem_get_info", "torch.cuda.memory.mem_get_info"):
            return updated
        name = self.need_helper(HELPER, HELPER_SOURCE)
        result = updated.with_changes(func=cst.Name(name))
        return self.record(
            original, result,
            "free/total memory from the device in use: torch.npu.mem_get_info on npu, CUDA unchanged",
        )


class MemGetInfo(PythonTransform):
    """Make `torch.cuda.mem_get_info(d)` answer for npu devices with the real free/total memory.

    The call becomes a small helper written into the module (patched code never imports porter):
    on a CUDA device, or with no npu, it is exactly `torch.cuda.mem_get_info(d)`; for an npu
    device it returns `torch.npu.mem_get_info(d)`, torch_npu's real (free, total) in bytes.
    Seed 001's hand port read `allocated_bytes.all.current` from `torch.npu.memory_stats` as if it
    were free memory, so the batch size grew as memory filled up; porter does not copy that bug.
    """

    name = "mem-get-info"
    safety = Safety.SAFE
    prefilter = re.compile(r"mem_get_info")
    rewriter = _MemGetInfo
    examples = [
        Example(
            id="seed001-batch-size",
            before=(
                "import torch\n"
                "\n"
                "def batch(device):\n"
                "    free_bytes, _ = torch.cuda.mem_get_info(device)\n"
                "    return free_bytes // 2**30\n"
            ),
            after=_with_helper(
                "import torch\n",
                "def batch(device):\n"
                f"    free_bytes, _ = {HELPER}(device)\n"
                "    return free_bytes // 2**30\n",
            ),
        ),
        Example(
            id="aliased-module",
            before="import torch as t\n\nfree, total = t.cuda.mem_get_info()\n",
            after=_with_helper("import torch as t\n", f"free, total = {HELPER}()\n"),
        ),
        Example(
            id="from-import-alias",
            before="from torch.cuda import mem_get_info as info\n\nfree, _ = info(0)\n",
            after=_with_helper("from torch.cuda import mem_get_info as info\n", f"free, _ = {HELPER}(0)\n"),
        ),
        Example(
            id="shadowed-torch-left-alone",
            before="def f(torch):\n    return torch.cuda.mem_get_info()\n",
        ),
        Example(
            id="strings-and-comments-left-alone",
            before='import torch\n# torch.cuda.mem_get_info(d)\nhelp = "torch.cuda.mem_get_info(d)"\nok = hasattr(torch.cuda, "mem_get_info")\n',
        ),
        Example(id="npu-call-left-alone", before="import torch\n\nfree, _ = torch.npu.mem_get_info()\n"),
    ]
