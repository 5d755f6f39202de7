"""hardcoded-device beyond its examples: findings, torch_npu's data, and patched code run on CPU.

The npu side (patched code on the npu simulator) is in test_transform_device_runtime.py.
"""

from __future__ import annotations

import re

import torch

from porter.transforms import Context, all_transforms
from porter.transforms._torch_npu_data import load
from porter.transforms.hardcoded_device import DEVICE_NAMES

T = all_transforms()["hardcoded-device"]


def apply(text: str, **params):
    return T(params).apply(text, Context(path="m.py"))


def run(text: str) -> dict:
    """Execute a module's text on this (CPU) host; every RESULT entry is a value or an error name."""
    namespace: dict = {"__name__": "snippet"}
    exec(compile(text, "snippet.py", "exec"), namespace)
    return namespace["RESULT"]


CPU_SNIPPET = '''\
import torch


def load_tokenizer(path=None, device="cuda"):
    return device


def auto_select_device():
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class Config:
    device: str = "cuda:0"
    asr_device = "cuda:1"


def place(rank):
    return [str(torch.device(f"cuda:{rank}")), str(torch.device("cuda", rank)), str(torch.device("cuda:0"))]


def attempt(fn):
    try:
        return fn()
    except Exception as e:  # the same failure before and after the port is the point
        return "error:" + type(e).__name__


RESULT = {
    "default": load_tokenizer(),
    "auto": auto_select_device(),
    "choice": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    "config": [Config.device, Config.asr_device],
    "place": place(1),
    "dot_cuda": attempt(lambda: torch.ones(1).cuda()),
    "dot_cuda_1": attempt(lambda: torch.nn.Linear(1, 1).cuda(1)),
    "to_cuda": attempt(lambda: torch.ones(1).to("cuda:0", non_blocking=True)),
    "factory": attempt(lambda: torch.zeros(2, device="cuda")),
    "load_map": attempt(lambda: torch.load(__file__, map_location="cuda")),
}
'''


def test_patched_code_behaves_the_same_on_cpu():
    out = apply(CPU_SNIPPET)
    assert len([c for c in out.changes if c.kind == "rewrite"]) == 13
    assert "_porter_cuda(torch.ones(1))" in out.text and "_porter_cuda(torch.nn.Linear(1, 1), 1)" in out.text
    assert run(out.text) == run(CPU_SNIPPET)
    assert torch.cuda.is_available() is False  # this host: the comparison above is the CPU one
    assert run(out.text)["default"] == "cuda" and run(out.text)["dot_cuda"].startswith("error:")


def test_device_names_cover_transfer_to_npu_device_keywords():
    names = re.compile(DEVICE_NAMES)
    keywords = load("2.14.0").device_keyword_arguments
    assert "device" in keywords
    for keyword in keywords:
        # device_type is autocast's (autocast-device); every other one is a device here
        assert bool(names.match(keyword)) is (keyword != "device_type"), keyword
    for name in ("device", "_device", "asr_device", "DEVICE", "device_map", "devices", "map_location"):
        assert names.match(name), name
    for name in ("device_type", "use_cuda_graph", "backend", "provider", "devicename"):
        assert not names.match(name), name


def findings(text: str) -> list[tuple[int, str]]:
    out = apply(text)
    assert out.text == text
    return [(f.line, f.reason) for f in out.findings]


def test_unrecognised_cuda_strings_are_findings_not_rewrites():
    got = findings(
        'EXECUTION_PROVIDER_CUDA = "cuda"\n'
        "def pick(preferred_device=None):\n    return preferred_device or 'cuda'\n"
        'kernels = {"cuda": 1}\n'
    )
    assert [line for line, _ in got] == [1, 3, 4]
    assert all("does not recognise as a device" in reason for _, reason in got)


def test_computed_devices_and_cli_choices_are_findings():
    got = findings(
        "import argparse\nimport torch\n\n\ndef f(x, d, rank):\n"
        "    return torch.device(\"cuda:\" + str(rank)), torch.device(\"cuda:%d\" % rank)\n\n\n"
        "p = argparse.ArgumentParser()\np.add_argument('--device', choices=['cpu', 'cuda'])\n"
    )
    reasons = " | ".join(r for _, r in got)
    assert reasons.count("built from a CUDA string at run time") == 2
    assert "choices offer CUDA but not npu" in reasons
    assert [line for line, _ in got] == [6, 6, 10]


def test_what_other_transforms_own_is_neither_rewritten_nor_reported():
    assert findings(
        "import torch\n\n\ndef f(d):\n    if d == 'cuda' or d.type in ('cuda',) or str(d).startswith('cuda'):\n"
        "        pass\n    with torch.autocast('cuda'):\n        pass\n    with torch.autocast(device_type='cuda'):\n"
        "        pass\n    return torch.amp.GradScaler('cuda')\n"
    ) == []


def test_dot_cuda_on_an_imported_class_is_a_finding():
    got = findings("import torch\n\nm = torch.nn.Module.cuda(model)\n")
    assert got and "imported name" in got[0][1]


def test_literal_quotes_prefix_and_index_are_kept():
    out = apply("def f(device=r'cuda:3', other_device=u\"cuda\"):\n    pass\n")
    assert "device=r'npu:3' if _porter_npu_available() else r'cuda:3'" in out.text
    assert 'other_device=u"npu" if _porter_npu_available() else u"cuda"' in out.text


def test_params_narrow_the_device_names():
    text = 'def f(device="cuda", target="cuda"):\n    pass\n'
    assert "target=\"npu\"" not in apply(text).text
    out = apply(text, device_names=r"^(device|target)$")
    assert out.text.count('"npu" if _porter_npu_available() else "cuda"') == 2
