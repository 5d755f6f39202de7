"""cuda-api beyond its examples: the counterpart list is torch_npu's, findings say why, CPU unchanged.

The npu side (patched code on the npu simulator) is in test_transform_device_runtime.py.
"""

from __future__ import annotations

import torch

from porter.transforms import Context, all_transforms
from porter.transforms._npu_runtime import CUDA_OR_NPU
from porter.transforms._torch_npu_data import load
from porter.transforms.cuda_api import OWNED_ELSEWHERE

T = all_transforms()["cuda-api"]
DATA = load("2.14.0")

# The list in the issue: every one of them must have a counterpart in torch_npu's own table.
ISSUE_LIST = [
    "synchronize", "empty_cache", "manual_seed_all", "memory_allocated", "memory_reserved", "memory_stats",
    "max_memory_allocated", "reset_peak_memory_stats", "get_device_properties", "get_device_name",
    "set_device", "current_device", "device_count", "Stream", "Event", "is_available",
]


def apply(text: str, **params):
    return T(params).apply(text, Context(path="m.py"))


def test_issue_list_is_covered_by_torch_npu_data():
    missing = [n for n in ISSUE_LIST if not DATA.has_npu_counterpart(n)]
    assert missing == []


def test_every_counterpart_is_rewritten_and_nothing_else():
    """One call per name torch.cuda has; what is rewritten is exactly transfer_to_npu's table."""
    names = sorted(n for n in dir(torch.cuda) if not n.startswith("_") and callable(getattr(torch.cuda, n, None)))
    text = "import torch\n\n\ndef f(x):\n" + "".join(f"    torch.cuda.{n}(x)\n" for n in names)
    out = apply(text)
    rewritten = {c.before.split("(")[0].removeprefix("torch.cuda.") for c in out.changes if c.kind == "rewrite"}
    left = {f.code.split("(")[0].removeprefix("torch.cuda.") for f in out.findings}
    expected = {
        n for n in names
        if DATA.has_npu_counterpart(n) and n not in OWNED_ELSEWHERE and n not in ("is_available", "device_count")
        and n != "get_device_capability" and not n.endswith(("Tensor", "Storage"))
    }
    assert rewritten == expected
    assert {"synchronize", "empty_cache", "manual_seed_all", "Stream", "Event"} <= rewritten
    owned = {n for n in names if n in OWNED_ELSEWHERE}
    assert left == set(names) - rewritten - owned  # everything else is reported, nothing is silent
    assert "mem_get_info" in owned and "mem_get_info" not in left


def test_findings_say_why():
    out = apply(
        "import torch\n\nuse_cuda = torch.cuda.is_available()\n"
        "def need():\n    if not torch.cuda.is_available():  raise SystemExit('CUDA required')\n"
        "if torch.cuda.is_available():\n    model = model.cuda()\n"
        "if torch.cuda.is_available():\n    model = torch.compile(model)\n"
        "if torch.cuda.is_available():\n    setup_kernels()\n"
        "if torch.cuda.is_available():\n    device = 'cuda'\n"
        "if torch.cuda.device_count() > 1:\n    model = torch.nn.DataParallel(model)\n"
        "major, minor = torch.cuda.get_device_capability()\n"
        "torch.cuda.nvtx.range_push('step')\n"
    )
    reasons = {f.line: f.reason for f in out.findings}
    assert "outside an if-test" in reasons[3]
    assert "`not torch.cuda.is_available()`" in reasons[5]  # in a function: the module code is not behind it
    assert "calls model.cuda()" in reasons[6]
    assert "calls torch.compile()" in reasons[8]
    assert "calls setup_kernels()" in reasons[10]
    assert "hard-codes a CUDA device" in reasons[12]
    assert "calls torch.nn.DataParallel()" in reasons[14]
    assert "TORCH_NPU_DEVICE_CAPABILITY" in reasons[16]
    assert "no npu counterpart" in reasons[17]
    assert out.text.count(CUDA_OR_NPU) == 0  # none of these guards is widened


def test_guard_is_widened_once_hardcoded_device_ran_first():
    text = "import torch\n\nif torch.cuda.is_available():\n    device = 'cuda:0'\n    model = model.cuda()\n"
    hard = all_transforms()["hardcoded-device"]()
    first = apply(hard.apply(text, Context(path="m.py")).text)
    assert f"if {CUDA_OR_NPU}().is_available():" in first.text and not first.findings
    # the other order leaves the guard (a finding) and never widens it around raw CUDA code
    reverse = apply(text)
    assert reverse.text == text and "hard-codes a CUDA device" in reverse.findings[0].reason


def test_widen_guards_off_leaves_every_predicate():
    out = apply("import torch\n\nif torch.cuda.is_available():\n    torch.cuda.synchronize()\n", widen_guards=False)
    assert f"if torch.cuda.is_available():\n    {CUDA_OR_NPU}().synchronize()" in out.text
    assert "widen_guards is off" in out.findings[0].reason


def test_leave_param_keeps_more_names():
    out = apply("import torch\n\ntorch.cuda.empty_cache()\n", leave=["empty_cache"])
    assert out.text == "import torch\n\ntorch.cuda.empty_cache()\n"
    assert "`leave` parameter" in out.findings[0].reason


CPU_SNIPPET = '''\
import torch
from torch.cuda import synchronize as sync


def attempt(fn):
    try:
        return fn()
    except Exception as e:
        return "error:" + type(e).__name__


def set_seed(seed):
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.rand(1).item()


def memory():
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated()
    return -1


RESULT = {
    "seed": set_seed(0),
    "memory": memory(),
    "bf16": attempt(lambda: torch.cuda.is_bf16_supported()),
    "count": attempt(lambda: print(torch.cuda.device_count())),
    "sync": attempt(lambda: sync()),
    "empty": attempt(lambda: torch.cuda.empty_cache()),
    "name": attempt(lambda: torch.cuda.get_device_name(0)),
    "stream": attempt(lambda: torch.cuda.Stream()),
    "seed_all": attempt(lambda: torch.cuda.manual_seed_all(1)),
}
'''


def test_patched_code_behaves_the_same_on_cpu():
    out = apply(CPU_SNIPPET)
    assert out.text.count(f"{CUDA_OR_NPU}().") == 11

    def run(text):
        namespace: dict = {"__name__": "snippet"}
        exec(compile(text, "snippet.py", "exec"), namespace)
        return namespace["RESULT"]

    assert run(out.text) == run(CPU_SNIPPET)
