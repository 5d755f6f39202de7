"""Source text of the helpers attention-fallback and compile-bypass write into patched modules
(patched code never imports porter). Each is a self-contained module-level `def _porter_*`;
`Rewriter.need_helper` inserts it once after the imports.

A helper decides for a tensor's device (`q.device.type`, flash-attention calls) or, where no tensor
exists yet (an implementation name, a compile call, an SDPA context), for the process:
`_porter_runs_on(kinds)` makes the same test as porter's shared `_porter_npu_available()` (from
`_npu_runtime`: no CUDA, `torch.npu` reports a device; every rewrite agrees on what an npu host
is), written out so that it needs no second helper, and adds one case: torch_npu installed but
not imported yet, because implementation defaults and compile decorators are
evaluated at import time, possibly before the user's `import torch_npu`. "cpu" in `kinds` means a
host with neither CUDA nor npu. "cuda" is never a kind (params reject it), so a CUDA host always
runs the upstream code.

If two steps insert the same helper with different device lists, the first one written wins
(helpers are found by name); use one `on:` list per recipe.
"""

from __future__ import annotations

from typing import Iterable

RUNS_ON = "_porter_runs_on"
_RUNS_ON = '''
def _porter_runs_on(kinds):
    """Whether this process computes on one of `kinds`: "npu" (an Ascend host; also when torch_npu is
    installed but not imported yet, for code that runs at import time) or "cpu" (no CUDA, no npu)."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return False
    if hasattr(torch, "npu"):
        npu = torch.npu.is_available()
    else:
        npu = importlib.util.find_spec("torch_npu") is not None
    return ("npu" if npu else "cpu") in kinds
'''


def kinds_text(kinds: Iterable[str]) -> str:
    """`npu` or `npu/cpu`, for docstrings."""
    return "/".join(kinds)


def kinds_literal(kinds: Iterable[str]) -> str:
    """`("npu",)` for the helper texts."""
    items = tuple(kinds)
    return "(" + ", ".join(f'"{k}"' for k in items) + ("," if len(items) == 1 else "") + ")"


def runs_on() -> list[tuple[str, str]]:
    """`_porter_runs_on` (a list, like the other helper sets)."""
    return [(RUNS_ON, _RUNS_ON)]


def need_runs_on(rewriter) -> str:
    for name, source in runs_on():
        rewriter.need_helper(name, source)
    return RUNS_ON


def with_helpers(imports: str, helpers: list[tuple[str, str]], rest: str) -> str:
    """What a module looks like once `helpers` are written after its imports (for examples)."""
    body = "\n\n\n".join(source.strip() for _, source in helpers)
    return f"{imports}\n\n{body}\n\n\n{rest}"


# -- attention-fallback -------------------------------------------------------------------------
FLASH_OR_FALLBACK = "_porter_flash_attention_or_fallback"


def flash_or_fallback(kinds: Iterable[str], fallback: str, flash: Iterable[str]) -> tuple[str, str]:
    k, t, f = kinds_literal(kinds), kinds_text(kinds), kinds_literal(flash)
    return FLASH_OR_FALLBACK, f'''
def _porter_flash_attention_or_fallback(requested):
    """The attention implementation to use: flash-attention has no kernels on {t}, so "{fallback}" there."""
    return "{fallback}" if requested in {f} and _porter_runs_on({k}) else requested
'''


SDP_CONTEXT = "_porter_sdp_context"


def sdp_context(kinds: Iterable[str]) -> tuple[str, str]:
    k, t = kinds_literal(kinds), kinds_text(kinds)
    return SDP_CONTEXT, f'''
def _porter_sdp_context(context):
    """`context` limits SDPA to CUDA-only kernels; on {t} let the device choose its own kernel instead."""
    import contextlib

    return contextlib.nullcontext() if _porter_runs_on({k}) else context
'''


SDPA_FLASH = "_porter_sdpa_flash_attn"
_SDPA_FLASH = '''
def _porter_sdpa_flash_attn(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
    alibi_slopes=None, deterministic=False, return_attn_probs=False,
):
    """flash_attn_func computed with scaled_dot_product_attention: the same function, forward only.

    q is (batch, seqlen_q, heads, dim), k and v (batch, seqlen_k, kv_heads, dim); query head h uses
    kv head h // (heads // kv_heads); the causal mask is aligned to the bottom-right corner, as
    flash-attn does when seqlen_q != seqlen_k (a KV cache), and a query row that sees no key is 0.
    """
    import torch
    import torch.nn.functional as F

    if dropout_p or softcap or alibi_slopes is not None or return_attn_probs or tuple(window_size) != (-1, -1):
        raise NotImplementedError(
            "flash-attention dropout, softcap, alibi_slopes, window_size or return_attn_probs "
            "have no proven SDPA equivalent on this device"
        )
    heads, kv_heads = q.shape[2], k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    if not causal or seqlen_q == seqlen_k:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=softmax_scale)
    else:
        mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device).tril(seqlen_k - seqlen_q)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)
        out = out.masked_fill(~mask.any(-1)[:, None], 0.0)
    return out.transpose(1, 2).contiguous()
'''

SDPA_FLASH_VARLEN = "_porter_sdpa_flash_attn_varlen"
_SDPA_FLASH_VARLEN = '''
def _porter_sdpa_flash_attn_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
    causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
    return_attn_probs=False, block_table=None,
):
    """flash_attn_varlen_func computed with SDPA, one packed sequence at a time: the same function.

    q is (total_q, heads, dim), k and v (total_k, kv_heads, dim); sequence i is
    q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]] against k/v[cu_seqlens_k[i]:cu_seqlens_k[i + 1]], each
    with its own bottom-right causal mask; rows outside every sequence are 0.
    """
    if block_table is not None or dropout_p or softcap or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError(
            "flash-attention block_table, dropout, softcap, alibi_slopes or return_attn_probs "
            "have no proven SDPA equivalent on this device"
        )
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[i], starts_q[i + 1], starts_k[i], starts_k[i + 1]
        if q1 > q0 and k1 > k0:
            out[q0:q1] = _porter_sdpa_flash_attn(
                q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], dropout_p, softmax_scale, causal,
                window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
            )[0]
    return out
'''

FLASH_FUNC_OR_SDPA = "_porter_flash_attn_func_or_sdpa"
FLASH_VARLEN_OR_SDPA = "_porter_flash_attn_varlen_func_or_sdpa"


def flash_dispatch(kinds: Iterable[str], varlen: bool) -> list[tuple[str, str]]:
    """The dispatcher for one flash-attention entry point and the helpers it needs."""
    k, t = kinds_literal(kinds), kinds_text(kinds)
    impl = SDPA_FLASH_VARLEN if varlen else SDPA_FLASH
    name = FLASH_VARLEN_OR_SDPA if varlen else FLASH_FUNC_OR_SDPA
    api = "flash_attn_varlen_func" if varlen else "flash_attn_func"
    dispatcher = f'''
def {name}(flash_fn, *args, **kwargs):
    """{api} as called (`flash_fn(*args, **kwargs)`), except on {t} tensors: the same function with SDPA."""
    q = args[0] if args else kwargs["q"]
    if q.device.type in {k}:
        return {impl}(*args, **kwargs)
    return flash_fn(*args, **kwargs)
'''
    helpers = [(name, dispatcher), (SDPA_FLASH, _SDPA_FLASH)]
    if varlen:
        helpers.append((SDPA_FLASH_VARLEN, _SDPA_FLASH_VARLEN))
    return helpers


# -- compile-bypass -----------------------------------------------------------------------------
COMPILE_WHERE_SUPPORTED = "_porter_compile_where_supported"


def compile_where_supported(kinds: Iterable[str]) -> tuple[str, str]:
    k, t = kinds_literal(kinds), kinds_text(kinds)
    return COMPILE_WHERE_SUPPORTED, f'''
def _porter_compile_where_supported(api):
    """`api` (torch.compile, make_graphed_callables) where it is supported; on {t} a stand-in that
    returns the model (or callables) unchanged, so that code runs eagerly there."""
    if not _porter_runs_on({k}):
        return api

    def bypass(model=None, *args, **kwargs):
        if model is None:
            model = kwargs.get("callables")
        return model if model is not None else (lambda fn: fn)

    return bypass
'''
