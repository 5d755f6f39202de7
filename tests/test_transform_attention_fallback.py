"""attention-fallback beyond its examples: findings, params, the npu side of its helpers, and its
agreement with widen-device-check. Runs on cpu; "npu host" cases give torch a stand-in `torch.npu`
(the helpers only ask `torch.npu.is_available()`) or put a stand-in torch_npu package on sys.path."""

from __future__ import annotations

import contextlib
import sys
import types

import pydantic
import pytest
import torch

from porter.transforms import Context, all_transforms
from porter.transforms import _runtime

AF = all_transforms()["attention-fallback"]


def run(text: str, path: str = "m.py", **params):
    return AF(params).apply(text, Context(path=path))


def example(id_: str):
    return next(ex for ex in AF.examples if ex.id == id_)


def findings(out) -> list[tuple[int, str]]:
    return sorted((f.line, f.category) for f in out.findings)


# -- findings: what is left, where and why --------------------------------------------------------
def test_seed001_change_c_is_kept_and_reported_with_its_flash_path():
    out = run(example("seed001-change-c-left-alone").before)
    assert not out.changes
    assert findings(out) == [(13, "kernel_gate"), (16, "needs_decision"), (17, "attention_backend")]
    gate = next(f for f in out.findings if f.category == "kernel_gate")
    assert "seed 001 change C" in gate.reason and "sdpa" in gate.reason
    call = next(f for f in out.findings if f.category == "needs_decision")
    assert "dropout_p=dropout_p" in call.reason


def test_every_unproven_flash_argument_is_named():
    text = (
        "from flash_attn import flash_attn_func\n"
        "a = flash_attn_func(q, k, v, 0.1, causal=True)\n"
        "b = flash_attn_func(q, k, v, softcap=30.0, alibi_slopes=slopes, return_attn_probs=True)\n"
        "c = flash_attn_func(*qkv, causal=True)\n"
        "d = flash_attn_func(q, k, v, window_size=(-1, -1), softcap=0.0, deterministic=True)\n"
    )
    out = run(text)
    reasons = {f.line: f.reason for f in out.findings}
    assert "dropout_p=0.1" in reasons[2]
    assert all(s in reasons[3] for s in ("softcap=30.0", "alibi_slopes=slopes", "return_attn_probs=True"))
    assert "`*` arguments" in reasons[4]
    assert 5 not in reasons, "flash-attn's default window/softcap and `deterministic` are equivalent"
    assert "_porter_flash_attn_func_or_sdpa(flash_attn_func, q, k, v, window_size=(-1, -1)" in out.text


def test_dropout_guard_rewrites_expression_dropout():
    text = "from flash_attn import flash_attn_func\nout = flash_attn_func(q, k, v, dropout_p=p if training else 0.0)\n"
    assert "_porter_flash_attn_func_or_sdpa" not in run(text).text
    assert "_porter_flash_attn_func_or_sdpa(flash_attn_func, q, k, v, dropout_p=p if training else 0.0)" in run(
        text, dropout="guard").text


def test_reraising_import_and_shipped_config_are_reported():
    out = run(example("reraising-import-left-alone").before)
    assert findings(out) == [(2, "needs_decision")] and "re-raises" in out.findings[0].reason
    ex = example("shipped-config-reported-not-edited")
    out = run(ex.before, path="config.json")
    assert out.text == ex.before and findings(out) == [(3, "needs_decision")]


def test_sdp_contexts_kept_are_reported_harmless_and_unreadable_ones_need_a_decision():
    out = run(example("voxcpm-sdp-kernel-math-on-left-alone").before)
    assert findings(out) == [(4, "harmless")]
    text = "import torch\nwith torch.nn.attention.sdpa_kernel(backends):\n    pass\n"
    assert findings(run(text)) == [(2, "needs_decision")]


def test_line_numbers_of_changes_point_at_the_rewritten_code():
    text = example("varlen-aliased-multi-line-with-comments").before
    out = run(text)
    call = next(c for c in out.changes if c.before.startswith("varlen_attn("))
    assert (call.line, call.end_line) == (7, 18)
    assert "bottom-right causal mask" in call.reason and call.safety.value == "numerics"


def test_config_entry_covers_values_read_from_a_shipped_config():
    """MOSS-TTS-Nano's config.json asks for flash_attention_2; its config class is where it enters."""
    ex = example("config-class-entry-from-config-json")
    out = run(ex.before)
    entry = [c for c in out.changes if c.before == "self.attn_implementation = attn_implementation"]
    assert len(entry) == 1 and "shipped config.json" in entry[0].reason
    ns: dict = {}
    exec(compile(out.text.replace("from transformers import PretrainedConfig", "PretrainedConfig = object"),
                 "m.py", "exec"), ns)
    config = ns["TTSConfig"](attn_implementation="flash_attention_2")  # as from_pretrained passes it
    assert config.attn_implementation == "flash_attention_2", "a CPU host keeps the request"


# -- params ------------------------------------------------------------------------------------
def test_params_validate():
    for bad in ({"on": ["cuda"]}, {"on": []}, {"fallback": "flash_attention_2"}, {"flash": ["sdpa"]},
                {"devices": ["npu"]}):
        with pytest.raises(pydantic.ValidationError):
            AF(bad)


def test_params_change_the_fallback_the_names_and_the_keys():
    text = 'import x\nm = load(attn_impl="flash_attention_3")\n'
    assert run(text).text == text
    out = run(text, flash=["flash_attention_2", "flash_attention_3"], keys=["attn_impl"], fallback="eager",
              on=["npu", "cpu"])
    assert '_porter_flash_attention_or_fallback("flash_attention_3")' in out.text
    assert ('return "eager" if requested in ("flash_attention_2", "flash_attention_3") and '
            '_porter_runs_on(("npu", "cpu")) else requested') in out.text


# -- the helpers on an npu host -----------------------------------------------------------------
def exec_helpers(*helpers) -> dict:
    ns: dict = {}
    for _, source in [*_runtime.runs_on(), *helpers]:
        exec(compile(source, "<porter helper>", "exec"), ns)
    return ns


@pytest.fixture
def npu_host(monkeypatch):
    """torch as it looks with torch_npu loaded on an Ascend host without CUDA."""
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)


def test_value_helper_cpu_host_keeps_the_request():
    ns = exec_helpers(_runtime.flash_or_fallback(("npu",), "sdpa", ("flash_attention_2",)))
    assert ns["_porter_flash_attention_or_fallback"]("flash_attention_2") == "flash_attention_2"
    ns = exec_helpers(_runtime.flash_or_fallback(("cpu",), "sdpa", ("flash_attention_2",)))
    assert ns["_porter_flash_attention_or_fallback"]("flash_attention_2") == "sdpa"
    assert ns["_porter_flash_attention_or_fallback"]("eager") == "eager"


def test_value_and_context_helpers_on_an_npu_host(npu_host):
    ns = exec_helpers(_runtime.flash_or_fallback(("npu",), "sdpa", ("flash_attention_2",)), _runtime.sdp_context(("npu",)))
    assert ns["_porter_flash_attention_or_fallback"]("flash_attention_2") == "sdpa"
    assert ns["_porter_flash_attention_or_fallback"](None) is None
    cuda_only = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION)
    with ns["_porter_sdp_context"](cuda_only):  # would fail with "No viable backend" on this CPU
        torch.nn.functional.scaled_dot_product_attention(*(torch.randn(1, 2, 3, 4),) * 3)


def test_context_helper_keeps_the_restriction_off_npu():
    ns = exec_helpers(_runtime.sdp_context(("npu",)))
    context = contextlib.nullcontext()
    assert ns["_porter_sdp_context"](context) is context


def test_torch_npu_installed_but_not_imported_counts_as_npu(tmp_path, monkeypatch):
    """Defaults and decorators are evaluated at import time, possibly before `import torch_npu`."""
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not hasattr(torch, "npu")
    ns = exec_helpers(_runtime.flash_or_fallback(("npu",), "sdpa", ("flash_attention_2",)))
    assert ns["_porter_flash_attention_or_fallback"]("flash_attention_2") == "sdpa"
    assert "torch_npu" not in sys.modules, "the check must not import torch_npu"


# -- agreement with widen-device-check ----------------------------------------------------------
WIDEN = all_transforms().get("widen-device-check")


@pytest.mark.skipif(WIDEN is None, reason="widen-device-check not registered")
@pytest.mark.parametrize("id_", ["seed001-change-b-selector", "selector-ne-single-quotes"])
def test_either_order_gives_the_same_selector(id_):
    text = example(id_).before
    ctx = Context(path="m.py")
    a = WIDEN().apply(AF().apply(text, ctx).text, ctx).text
    b = AF().apply(WIDEN().apply(text, ctx).text, ctx).text
    assert a == b == example(id_).after


def test_realistic_module_is_idempotent_and_compiles():
    text = "\n".join(ex.before for ex in AF.examples if ex.path.endswith(".py"))
    once = run(text)
    compile(once.text, "m.py", "exec")
    twice = run(once.text)
    assert twice.text == once.text and not twice.changes
