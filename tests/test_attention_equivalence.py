"""attention-fallback's SDPA replacement computes the same function as flash-attention (device: cpu).

The reference is written from flash-attention's documentation of `flash_attn_func` /
`flash_attn_varlen_func` (flash-attn 2.x docstrings), not from its code:

* q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k, headdim); "if Q has 6 heads
  and K, V have 2 heads, head 0, 1, 2 of Q will attention to head 0 of K, V, and head 3, 4, 5 of Q
  will attention to head 1 of K, V";
* softmax_scale defaults to 1 / sqrt(headdim);
* "If causal=True, the causal mask is aligned to the bottom right corner of the attention matrix",
  e.g. seqlen_q=2, seqlen_k=5 keeps [[1 1 1 1 0], [1 1 1 1 1]], and seqlen_q=5, seqlen_k=2 keeps
  [[0 0], [0 0], [0 0], [1 0], [1 1]]; "if the row of the mask is all zero, the output will be zero";
* varlen: sequence i is q[cu_seqlens_q[i]:cu_seqlens_q[i+1]] against k/v[cu_seqlens_k[i]:...], each
  with its own mask.

The reference is a naive float64 softmax attention with explicit loops. The helpers under test are
the exact source porter writes into patched modules, executed here; the end-to-end tests apply the
transform to a module and run the patched module.
"""

from __future__ import annotations

import importlib.util
import math
import types

import pytest
import torch

from porter.transforms import Context, all_transforms
from porter.transforms import _runtime

torch.manual_seed(0)


# -- the reference, from the documentation ------------------------------------------------------
def doc_causal_mask(seqlen_q: int, seqlen_k: int) -> torch.Tensor:
    """keep[i, j]: bottom-right aligned, i.e. query i sees keys up to i + (seqlen_k - seqlen_q)."""
    keep = torch.zeros(seqlen_q, seqlen_k, dtype=torch.bool)
    for i in range(seqlen_q):
        for j in range(seqlen_k):
            keep[i, j] = j <= i + seqlen_k - seqlen_q
    return keep


def reference(q, k, v, causal=False, softmax_scale=None):
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    keep = doc_causal_mask(sq, sk) if causal else torch.ones(sq, sk, dtype=torch.bool)
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(b, sq, h, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // hk)
            scores = q[bi, :, hi] @ k[bi, :, kv].T * scale
            for i in range(sq):
                if not keep[i].any():
                    continue  # "the output will be zero"
                row = scores[i].masked_fill(~keep[i], float("-inf"))
                out[bi, i, hi] = torch.softmax(row, dim=-1) @ v[bi, :, kv]
    return out


def reference_varlen(q, k, v, cu_q, cu_k, causal=False, softmax_scale=None):
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float64)
    for i in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        if q1 > q0 and k1 > k0:
            out[q0:q1] = reference(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale)[0]
    return out


def test_reference_mask_matches_the_documented_examples():
    assert doc_causal_mask(2, 5).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert doc_causal_mask(5, 2).int().tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]


# -- the helpers porter writes ------------------------------------------------------------------
def helpers(kinds=("npu",)) -> types.SimpleNamespace:
    ns: dict = {}
    sources = [*_runtime.runs_on(), *_runtime.flash_dispatch(kinds, varlen=True)]
    sources += [(n, s) for n, s in _runtime.flash_dispatch(kinds, varlen=False) if n == _runtime.FLASH_FUNC_OR_SDPA]
    for _, source in sources:
        exec(compile(source, "<porter helper>", "exec"), ns)
    return types.SimpleNamespace(**{k: v for k, v in ns.items() if k.startswith("_porter_")})


H = helpers()

CASES = [
    # id, batch, seqlen_q, seqlen_k, heads, kv_heads, headdim, causal, scale
    ("self-causal", 2, 7, 7, 4, 4, 16, True, None),
    ("kv-cache-decode-one", 2, 1, 9, 4, 4, 16, True, None),
    ("kv-cache-chunk", 2, 3, 8, 4, 4, 16, True, None),
    ("more-queries-than-keys", 1, 5, 2, 2, 2, 8, True, None),
    ("cross-non-causal", 2, 4, 6, 4, 4, 16, False, None),
    ("gqa-6-to-2", 2, 5, 5, 6, 2, 16, True, None),
    ("mqa-kv-cache", 1, 2, 6, 4, 1, 32, True, None),
    ("softmax-scale", 2, 4, 4, 4, 2, 16, True, 0.3),
    ("softmax-scale-non-causal", 1, 3, 5, 2, 2, 8, False, 1.7),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_flash_attn_func_equivalent(case):
    _, b, sq, sk, h, hk, d, causal, scale = case
    q, k, v = torch.randn(b, sq, h, d), torch.randn(b, sk, hk, d), torch.randn(b, sk, hk, d)
    out = H._porter_sdpa_flash_attn(q, k, v, softmax_scale=scale, causal=causal)
    assert out.shape == (b, sq, h, d) and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(q, k, v, causal, scale), atol=1e-5, rtol=1e-5)


def test_top_left_sdpa_causal_would_be_wrong():
    """Why porter builds its own mask: SDPA's is_causal aligns top-left when seqlen_q != seqlen_k."""
    q, k, v = torch.randn(1, 3, 2, 8), torch.randn(1, 8, 2, 8), torch.randn(1, 8, 2, 8)
    naive = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    assert not torch.allclose(naive.double(), reference(q, k, v, True), atol=1e-3)
    torch.testing.assert_close(H._porter_sdpa_flash_attn(q, k, v, causal=True).double(),
                               reference(q, k, v, True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_like_flash_inputs(dtype):
    """flash-attn takes fp16/bf16 only; the replacement keeps the dtype and stays within its precision."""
    q, k, v = (torch.randn(2, 3, 4, 32).to(dtype), torch.randn(2, 9, 2, 32).to(dtype), torch.randn(2, 9, 2, 32).to(dtype))
    out = H._porter_sdpa_flash_attn(q, k, v, causal=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), reference(q, k, v, True), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flash_attn_varlen_func_equivalent(causal, kv_heads):
    """Three packed sequences (one with a KV cache: more keys than queries) plus two padding rows."""
    lens_q, lens_k = [3, 1, 4], [3, 5, 4]
    cu_q = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 8, 12], dtype=torch.int32)
    q = torch.randn(sum(lens_q) + 2, 4, 16)
    k, v = torch.randn(sum(lens_k), kv_heads, 16), torch.randn(sum(lens_k), kv_heads, 16)
    out = H._porter_sdpa_flash_attn_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                           softmax_scale=0.25)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), reference_varlen(q, k, v, cu_q, cu_k, causal, 0.25), atol=1e-5, rtol=1e-5)
    assert not out[8:].any(), "rows outside every sequence are zero"


@pytest.mark.parametrize(
    "kwargs",
    [{"dropout_p": 0.1}, {"window_size": (8, 0)}, {"softcap": 30.0}, {"alibi_slopes": torch.ones(2)},
     {"return_attn_probs": True}],
    ids=["dropout", "window", "softcap", "alibi", "probs"],
)
def test_unproven_options_raise_instead_of_computing_something_else(kwargs):
    q = torch.randn(1, 2, 2, 8)
    with pytest.raises(NotImplementedError):
        H._porter_sdpa_flash_attn(q, q, q, causal=True, **kwargs)
    with pytest.raises(NotImplementedError):
        H._porter_sdpa_flash_attn_varlen(q[0], q[0], q[0], torch.tensor([0, 2]), torch.tensor([0, 2]), 2, 2, **kwargs)


def test_dispatch_keeps_the_original_call_off_the_fallback_devices():
    """On a device outside `on` (CUDA, and CPU by default) the flash function gets exactly the call."""
    seen = []

    def flash(*args, **kwargs):
        seen.append((args, kwargs))
        return "flash result"

    q = torch.randn(1, 2, 2, 8)
    assert H._porter_flash_attn_func_or_sdpa(flash, q, q, q, 0.0, causal=True) == "flash result"
    assert seen[0][0][3] == 0.0 and seen[0][1] == {"causal": True} and seen[0][0][0] is q
    cu = torch.tensor([0, 2])
    assert H._porter_flash_attn_varlen_func_or_sdpa(flash, q[0], q[0], q[0], cu, cu, 2, 2) == "flash result"


def test_dispatch_on_a_fallback_device_never_calls_flash():
    on_cpu = helpers(("cpu",))

    def flash(*args, **kwargs):
        raise AssertionError("flash_attn must not run on a fallback device")

    q, k, v = torch.randn(2, 3, 4, 16), torch.randn(2, 6, 2, 16), torch.randn(2, 6, 2, 16)
    out = on_cpu._porter_flash_attn_func_or_sdpa(flash, q, k, v, causal=True)
    torch.testing.assert_close(out.double(), reference(q, k, v, True), atol=1e-5, rtol=1e-5)
    out = on_cpu._porter_flash_attn_func_or_sdpa(None, q=q, k=k, v=v, softmax_scale=0.5)
    torch.testing.assert_close(out.double(), reference(q, k, v, False, 0.5), atol=1e-5, rtol=1e-5)


# -- end to end: the patched module runs ---------------------------------------------------------
MODULE = '''
import torch
from flash_attn import flash_attn_func, flash_attn_varlen_func


def attend(q, k, v):
    # Ming-omni-tts audio encoder shape: (batch, heads, seq, dim) tensors permuted for flash-attn
    a = flash_attn_func(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), causal=True)
    return a


def checked(q, k, v, scale):
    if q.device.type != "cuda":
        raise ValueError("flash_attention_2 requires CUDA tensors.")
    return flash_attn_func(q, k, v, softmax_scale=scale, causal=True)


def packed(q, k, v, cu_q, cu_k, max_q, max_k):
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_q,  # queries
        cu_k,  # keys (with a cache)
        max_q,
        max_k,
        causal=True,
    )
'''


@pytest.fixture
def no_flash_attn():
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here; these tests need a host without it")


def patched(params: dict) -> dict:
    transform = all_transforms()["attention-fallback"](params)
    out = transform.apply(MODULE, Context(path="attn.py"))
    ns: dict = {"__name__": "patched_attn"}
    exec(compile(out.text, "attn.py", "exec"), ns)
    return ns


def test_patched_module_imports_and_runs_without_flash_attn(no_flash_attn):
    ns = patched({"on": ["cpu"]})  # CPU stands in for npu: the fallback device of this host
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)
    expected = reference(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), True)
    torch.testing.assert_close(ns["attend"](q, k, v).double(), expected, atol=1e-5, rtol=1e-5)

    # the device check was widened because the call after it now has an SDPA path on "cpu"
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    torch.testing.assert_close(ns["checked"](q, k, v, 0.4).double(), reference(q, k, v, True, 0.4),
                               atol=1e-5, rtol=1e-5)

    cu_q, cu_k = torch.tensor([0, 2, 5]), torch.tensor([0, 4, 7])
    q, k, v = torch.randn(5, 2, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    torch.testing.assert_close(ns["packed"](q, k, v, cu_q, cu_k, 3, 4).double(),
                               reference_varlen(q, k, v, cu_q, cu_k, True), atol=1e-5, rtol=1e-5)


def test_default_params_keep_cpu_behaviour(no_flash_attn):
    """With on: [npu] a CPU host still refuses CPU tensors at the flash-attention check, as upstream did."""
    ns = patched({})
    q = torch.randn(1, 2, 2, 8)
    with pytest.raises(ValueError, match="requires CUDA tensors"):
        ns["checked"](q, q, q, None)
