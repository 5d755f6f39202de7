"""The residual scan: every CUDA-specific construct left after the steps is listed with why."""

from __future__ import annotations

import json

from porter.cli import main
from porter.scan import scan_source

CODE = '''\
import torch as t
import triton
from flash_attn import flash_attn_func
from torch.backends.cuda import sdp_kernel

def load(path, device="cuda"):
    """device == "cuda" in a docstring is not code."""
    # x.device.type == "cuda" in a comment is not code
    sd = t.load(path, map_location="cuda:0")
    model = Model().cuda()
    if device != "cuda":
        raise ValueError("compile needs CUDA")
    model = t.compile(model, mode="reduce-overhead")
    with t.autocast("cuda", dtype=t.bfloat16):
        t.cuda.synchronize()
    with sdp_kernel(enable_flash=False):
        pass
    free, _ = t.cuda.mem_get_info()
    ok = x.is_cuda or "cuda" in ("cuda", "mps")
    return t.device("cuda"), f"{device} is cuda"

def _porter_helper():
    return t.cuda.mem_get_info()
'''


def test_scan_finds_every_category_and_nothing_in_text():
    sites = {(s.line, s.category) for s in scan_source(CODE)}
    assert sites == {
        (2, "cuda-only-import"),
        (3, "flash-attention"),
        (6, "hardcoded-device"),
        (9, "hardcoded-device"),
        (10, "hardcoded-device"),
        (11, "device-comparison"),
        (13, "compile"),
        (14, "autocast"),
        (15, "cuda-api"),
        (16, "flash-attention"),
        (18, "cuda-api"),
        (19, "device-comparison"),
        (20, "hardcoded-device"),
        (23, "cuda-api"),
    }
    helper = [s for s in scan_source(CODE) if s.line == 23]
    assert helper[0].in_helper
    gate = [s for s in scan_source(CODE) if s.line == 11]
    assert gate[0].compile_gate


def test_report_lists_what_is_left_with_reasons(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg/model.py").write_text(CODE)
    (src / "pkg/train.py").write_text('import torch\ntorch.cuda.synchronize()\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "porter: 1\nname: s\nsource: {path: src}\nsteps:\n"
        "  - use: mem-get-info\n    files: ['pkg/model.py']\n"
    )
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--no-smoke"]) == 0
    report = json.loads((tmp_path / "out/s/report.json").read_text())
    findings = {(f["file"], f["line"]): f for f in report["findings"]}
    assert findings[("pkg/train.py", 2)]["reason"] == "outside the recipe's files"
    by_cat = {f["category"]: f["reason"] for f in report["findings"] if f["file"] == "pkg/model.py"}
    assert by_cat["autocast"].startswith("needs a decision: no step for this file handles autocast")
    assert by_cat["compile"].startswith("harmless: on the compile/CUDA-graph path")
    gate = [f for f in report["findings"] if f["code"] == 'if device != "cuda":']
    assert len(gate) == 1 and "guards torch.compile" in gate[0]["reason"]
    patched = (tmp_path / "out/s/pkg/model.py").read_text().splitlines()
    assert patched[gate[0]["line"] - 1].strip() == 'if device != "cuda":'  # lines are in the patched file
    assert not any(f["category"] == "cuda-api" and "mem_get_info" in f["code"] for f in report["findings"])
    md = (tmp_path / "out/s/report.md").read_text()
    assert "| pkg/train.py:2 | cuda-api |" in md


def test_porter_routed_calls_and_compile_path_are_not_open_questions():
    code = (
        "import torch\n"
        "def optimize(self):\n"
        '    if self.device != "cuda":\n'
        '        raise ValueError("compile needs CUDA")\n'
        "    import triton\n"
        '    self.f = _porter_compile_where_supported(torch.compile)(self.f, mode="reduce-overhead")\n'
    )
    sites = [s for s in scan_source(code) if not s.in_helper]  # line 6 is porter's own routing
    assert [(s.line, s.category) for s in sites] == [(3, "device-comparison"), (5, "cuda-only-import")]
    assert sites[0].compile_gate and sites[1].compile_path


def test_guarded_optional_import_is_harmless():
    from porter.scan import classify

    code = "try:\n    from flash_attn import flash_attn_func\nexcept ImportError:\n    flash_attn_func = None\nimport xformers\n"
    sites = scan_source(code)
    assert [(s.line, s.optional_import) for s in sites] == [(2, True), (5, False)]
    assert classify("m.py", sites[0], True, set()).startswith("harmless: an optional import")
    assert classify("m.py", sites[1], True, set()).startswith("needs a decision")


def test_upstream_branch_kept_behind_a_porter_test_is_not_reported():
    code = (
        "import torch\n"
        'device = "npu" if _porter_npu_available() else ("cuda" if torch.cuda.is_available() else "cpu")\n'
        "if _porter_npu_available():\n"
        "    torch.npu.synchronize()\n"
        "else:\n"
        "    torch.cuda.synchronize()\n"
        "torch.cuda.synchronize()\n"
    )
    assert [(s.line, s.in_helper) for s in scan_source(code)] == [(2, True), (6, True), (7, False)]


def test_device_assignments_with_a_cuda_literal_are_sites():
    code = 'device = get_current_accelerator() or "cuda"\nself_device = "cpu"\nname = "cuda"\n'
    assert [(s.line, s.category) for s in scan_source(code)] == [(1, "hardcoded-device")]


def test_flash_attention_requests_wherever_attention_fallback_looks_for_them():
    # transformers' modeling_falcon.py: `attn_implementation = ("flash_attention_2" if ... else ...)`
    code = '''\
def build(config, attn_implementation="flash_attention_2", *, draft_attn_implementation="eager"):
    attn_implementation = ("flash_attention_2" if is_flash(config) else config._attn_implementation)
    self.config._attn_implementation: str = "flash_attention_2"
    kwargs = {"attn_implementation": "eager" if slow else "flash_attention_2"}
    load(attn_implementation="flash_attention_2" if fast else "sdpa")
    if config._attn_implementation == "flash_attention_2":
        pass
    CLASSES = {"flash_attention_2": FlashAttention}
    ported = _porter_flash_attention_or_fallback("flash_attention_2")
    note = "flash_attention_2 is fast"


def default_attn_implementation():
    return "flash_attention_2"
'''
    assert [(s.line, s.category) for s in scan_source(code)] == [
        (1, "flash-attention"), (2, "flash-attention"), (3, "flash-attention"), (4, "flash-attention"),
        (5, "flash-attention"), (14, "flash-attention"),
    ]


def test_autocast_state_read_without_a_device_type_is_cudas():
    code = ("import torch\nif torch.is_autocast_enabled():\n    dtype = torch.get_autocast_gpu_dtype()\n"
            "torch.is_autocast_enabled('cpu')\n")
    assert [(s.line, s.category) for s in scan_source(code)] == [(2, "autocast"), (3, "autocast")]
