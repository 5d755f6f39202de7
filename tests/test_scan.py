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
    sites = {(s.line, s.category, s.action) for s in scan_source(CODE)}
    assert sites == {
        (2, "custom_kernel", "decision"),
        (3, "attention_backend", "rewrite"),
        (6, "hardcoded_device", "rewrite"),
        (9, "hardcoded_device", "rewrite"),
        (10, "hardcoded_device", "rewrite"),
        (11, "compile_gate", "keep"),
        # everything after `if device != "cuda": raise` is reachable on CUDA only: harmless
        (13, "compile", "keep"),
        (14, "autocast", "keep"),
        (15, "cuda_api", "keep"),
        (16, "attention_backend", "keep"),
        (18, "cuda_api", "keep"),
        (19, "device_check", "keep"),
        (20, "hardcoded_device", "keep"),
    }  # line 23 is porter's own helper: not a site
    behind = [s for s in scan_source(CODE) if s.line == 13][0]
    assert behind.context == 'line 11: if device != "cuda":' and "gate at line 11" in behind.reason


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
    assert findings[("pkg/train.py", 2)]["reason"] == (
        "outside the recipe's files [owner: cuda-api; line unchanged]")
    by_cat = {f["category"]: f["reason"] for f in sorted(report["findings"], key=lambda f: -f["line"])
              if f["file"] == "pkg/model.py"}  # the first line of each category
    assert by_cat["hardcoded_device"].startswith("needs a decision: no step for this file handles hardcoded_device"
                                                 " (see hardcoded-device)")
    assert by_cat["compile"].startswith("harmless: only reachable on CUDA, behind the gate at line ")
    gate = [f for f in report["findings"] if f["code"] == 'if device != "cuda":']
    assert len(gate) == 1 and "torch.compile" in gate[0]["reason"] and gate[0]["reason"].startswith("harmless")
    patched = (tmp_path / "out/s/pkg/model.py").read_text().splitlines()
    assert patched[gate[0]["line"] - 1].strip() == 'if device != "cuda":'  # lines are in the patched file
    assert not any(f["category"] == "cuda_api" and "mem_get_info" in f["code"] for f in report["findings"])
    md = (tmp_path / "out/s/report.md").read_text()
    assert "| pkg/train.py:2 | cuda_api |" in md


def test_porter_routed_calls_and_compile_path_are_not_open_questions():
    code = (
        "import torch\n"
        "def optimize(self):\n"
        '    if self.device != "cuda":\n'
        '        raise ValueError("compile needs CUDA")\n'
        "    import triton\n"
        '    self.f = _porter_compile_where_supported(torch.compile)(self.f, mode="reduce-overhead")\n'
    )
    sites = scan_source(code)  # line 6 is porter's own routing
    assert [(s.line, s.category, s.action) for s in sites] == [(3, "compile_gate", "keep"),
                                                               (5, "custom_kernel", "keep")]


def test_guarded_optional_import_is_harmless():
    from porter.scan import classify

    code = "try:\n    from flash_attn import flash_attn_func\nexcept ImportError:\n    flash_attn_func = None\nimport xformers\n"
    sites = scan_source(code)
    assert [(s.line, s.action) for s in sites] == [(2, "keep"), (5, "decision")]
    assert classify(sites[0], {"guard-import"}).startswith("harmless: an optional import")
    assert classify(sites[1], {"guard-import"}).startswith("needs a decision")


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
    assert [s.line for s in scan_source(code)] == [7]


def test_device_assignments_with_a_cuda_literal_are_sites():
    code = 'device = get_current_accelerator() or "cuda"\nself_device = "cpu"\nname = "cuda"\n'
    assert [(s.line, s.category) for s in scan_source(code)] == [(1, "hardcoded_device")]


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
        (1, "attention_backend"), (2, "attention_backend"), (3, "attention_backend"), (4, "attention_backend"),
        (5, "attention_backend"), (14, "attention_backend"),
    ]


def test_autocast_state_read_without_a_device_type_is_cudas():
    code = ("import torch\nif torch.is_autocast_enabled():\n    dtype = torch.get_autocast_gpu_dtype()\n"
            "torch.is_autocast_enabled('cpu')\n")
    assert [(s.line, s.category) for s in scan_source(code)] == [(2, "autocast"), (3, "autocast")]
