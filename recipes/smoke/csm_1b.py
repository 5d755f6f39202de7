"""Smoke script for recipes/csm_1b.yaml: a tiny random-initialised CSM (backbone + depth decoder +
Mimi codec) built from transformers' own CsmConfig, run through the patched transformers.

Import order (seed 002: `torch_npu.contrib.transfer_to_npu` changed sys.path and broke
transformers, so the seed imported transformers first): nothing here uses transfer_to_npu.
porter's runner imports plain `torch_npu` (or the npu-sim stand-in) before this script, which is
what transformers does itself through `is_torch_npu_available()`; the script imports transformers
before torch, as a user's entry point should.

forward: the seed's accuracy metric, backbone logits for a text prompt (teacher forced), plus the
Mimi decoder on fixed codes, so the codec is compared separately.
generate: `model.generate(..., output_audio=True)`, greedy, 24 kHz. Random weights make Mimi's
output exceed +-1 (RMS ~1.3), so the waveform is scaled by 0.9 / peak before it is returned: the
shape of the signal is kept, nothing is clipped, and the raw RMS/peak and the scale are written
to `csm_1b-audio-scale.json` next to the WAV (the report shows the scaled figures). generate also
asks upstream whether the backbone would be auto-compiled with a static cache on this device, and
fails if it would on npu.
"""

import json
import tempfile

import transformers  # noqa: F401  (first: seed 002's import order)
from transformers import CsmConfig, CsmForConditionalGeneration, StaticCache

import torch

N_CB = 4  # codebooks (real: 32, = Mimi num_quantizers)
CB_SIZE = 64  # CSM audio vocab = Mimi codebook size (real: 2051 vs 2048); ids >= Mimi's size would not decode
TEXT_VOCAB = 512  # real: 128256
BOS, AUDIO_TOK, AUDIO_EOS = 1, 3, 4


def tiny_config(ctx):
    codec = dict(
        model_type="mimi", sampling_rate=24000, hidden_size=32, num_filters=8, num_residual_layers=1,
        upsampling_ratios=[8, 6, 5, 4],  # as released: 1,920 samples per frame at 24 kHz = 12.5 Hz
        codebook_size=CB_SIZE, codebook_dim=32, vector_quantization_hidden_dimension=32,
        num_quantizers=N_CB, num_semantic_quantizers=1, upsample_groups=32,
        num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
        sliding_window=250, max_position_embeddings=8000,
    )
    depth = dict(
        num_codebooks=N_CB, backbone_hidden_size=64, vocab_size=CB_SIZE, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=N_CB + 1,
    )
    return CsmConfig(
        num_codebooks=N_CB, vocab_size=CB_SIZE, text_vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=BOS, pad_token_id=AUDIO_TOK, audio_token_id=AUDIO_TOK, audio_eos_token_id=AUDIO_EOS,
        codebook_pad_token_id=CB_SIZE - 1, codebook_eos_token_id=0,
        depth_decoder_config=depth, codec_config=codec,
    )


def build(ctx):
    model = CsmForConditionalGeneration(tiny_config(ctx))
    # The save/load round trip is what users run: CSM's from_pretrained moves the depth_decoder_*
    # generation settings into model.depth_decoder.generation_config.
    with tempfile.TemporaryDirectory(prefix="csm_tiny_") as d:
        model.save_pretrained(d)
        model = CsmForConditionalGeneration.from_pretrained(
            d, dtype=torch.float32, attn_implementation=ctx.inputs.get("attn_implementation", "sdpa")
        )
    return model.eval()


def _prompt(ctx, n):
    ids = torch.cat([torch.tensor([[BOS]]), ctx.randint(5, TEXT_VOCAB, (1, n)).cpu()], dim=1)
    return ids.to(ctx.device)


def forward(model, ctx):
    ids = _prompt(ctx, ctx.inputs.get("prompt_len", 15))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    codes = ctx.randint(0, CB_SIZE, (1, N_CB, ctx.inputs.get("codec_frames", 8)))
    audio = model.codec_model.decode(codes).audio_values
    return {"backbone_logits": out.logits, "mimi_decode": audio}


def generate(model, ctx):
    ids = torch.tensor([[BOS, 10, 20, 30, 40, 50]], device=ctx.device)
    frames = ctx.inputs.get("frames", 25)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=frames,
        do_sample=False, output_audio=True, return_dict_in_generate=True,
    )
    # The backbone's auto-compile (generation_csm.py `_sample`) is decided by upstream's
    # `_valid_auto_compile_criteria`: a compilable (static) cache on a device in its list (cuda, xpu,
    # neuron, tpu). npu is not in that list, and the default CompileConfig is mode="reduce-overhead"
    # (CUDA graphs), so it must stay off there: asked here, on the device the model runs on.
    auto_compile = bool(model._valid_auto_compile_criteria(
        {"past_key_values": StaticCache(config=model.config, max_cache_len=64)}, model.generation_config
    ))
    if auto_compile and ctx.device_kind in ("npu", "npu-sim"):
        raise RuntimeError("generate() would auto-compile the CSM backbone on npu (static cache)")
    wav = out.audio[0].float().cpu().flatten()
    peak = float(wav.abs().max())
    raw = {
        "device": ctx.device_kind,
        "frames": int(out.sequences.shape[1]),
        "raw_rms": float(wav.pow(2).mean().sqrt()),
        "raw_peak": peak,
        "raw_fraction_beyond_1": float((wav.abs() >= 1.0).float().mean()),
        "scale": 0.9 / peak if peak > 0 else 1.0,
        "auto_compile_with_static_cache": auto_compile,
        "note": "random weights: the waveform was scaled by `scale` (0.9 / raw peak) before the checks and the WAV",
    }
    (ctx.out_dir / "csm_1b-audio-scale.json").write_text(json.dumps(raw, indent=1) + "\n")
    return ctx.Audio(wav * raw["scale"], model.codec_model.config.sampling_rate, n_tokens=raw["frames"])
