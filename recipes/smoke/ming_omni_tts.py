"""Smoke test of the Ming-omni-tts port: a tiny random-init BailingMM built from the patched code.

The model is `BailingMMNativeForConditionalGeneration` (modeling_bailingmm.py, dense variant) built
from a shrunk `BailingMMConfig` with the shipped config's structure: a Qwen2 backbone (2 layers x
64 wide, vocab 256; the real one is Qwen2.5-0.5B, 24 x 896), the AudioVAE (Qwen2 encoder 4 layers,
its 4-layer aggregator, Qwen2 decoder 1 layer, all 32 wide, ISTFT head with n_fft 64), the DiT
flow-matching head and the Aggregator (1 block x 32 wide each; the real ones 8 x 1024).

Like the shipped config.json, the AudioVAE backbones ask for `flash_attention_2`
(`inputs.vae_attn`): the port turns that into SDPA when the model is built where the npu is the
accelerator, and leaves it alone on CUDA (and on a CPU-only host, which fails as upstream does).

forward, per component as seed 000 compared them (CPU float32 reference vs the target), each fed
its own seeded inputs so that one component's error does not flow into the next:
  * backbone       Qwen2ForCausalLM: logits and the last hidden state of a token prompt;
  * audio_encoder  AudioVAE encoder (Qwen2 encoder + aggregator with CLS tokens): the posterior
                   parameters [mean | scale] of a waveform (encode_latent() would sample from them);
  * dit_head       the flow-matching DiT (flowloss.cfm.model) at one timestep, with latent history
                   and an LLM condition;
  * aggregator     linear_proj_audio: latent patches -> LLM input embeddings;
  * audio_decoder  AudioVAE decoder (fc1, upsampling, Qwen2 decoder, ISTFT head with complex
                   tensors, irfft and fold) -> waveform, non-streaming.
The audio decoder is called as generate() calls it, through the `@torch.inference_mode()` method
`AudioVAE.decode` (here in one piece, without the streaming state).

generate: `model.generate()` (autoregressive backbone inside the bf16 autocast region + CFM
sampling + streaming VAE decode) with a tiny stand-in tokenizer, a few decode steps; the waveform is
random-weight noise, so only its validity is checked (see the recipe's `smoke.audio`). The recipe
runs it with a float32 model, where the autocast regions still run the backbone in bfloat16;
tests/test_recipe_ming_omni_tts.py also runs it with a bfloat16 model, which upstream cannot do
off CUDA.

`ctx.weights` (smoke.weights): a directory with the real checkpoint (config.json +
model.safetensors) is loaded with from_pretrained instead, and every checkpoint key must load:
no missing and no unexpected keys.
"""

from __future__ import annotations

import torch

from configuration_bailingmm import BailingMMConfig
from modeling_bailingmm import BailingMMNativeForConditionalGeneration

VOCAB = 256
HOP = 16  # samples per VAE frame (input_dim == hop_size; the real model: 882 at 44.1 kHz)
PATCH = 4  # VAE frames per latent patch (as shipped)
LATENT = 8
HISTORY = 8
SAMPLE_RATE = 800  # HOP * 50 frames/s, the shipped frame rate (44100 / 882)


def _backbone(layers: int, attn: str) -> dict:
    # the keys of the shipped enc_kwargs/dec_kwargs["backbone"], shrunk
    return dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=1, max_position_embeddings=256,
        rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=True, sliding_window=64,
        max_window_layers=0, is_causal=True, use_cache=False, tie_word_embeddings=True,
        attn_implementation=None, _attn_implementation=attn,
    )


def tiny_config(vae_attn: str = "flash_attention_2") -> BailingMMConfig:
    return BailingMMConfig(
        model_type="dense",
        llm_config=dict(
            model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
            max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
            use_sliding_window=False, sliding_window=512, max_window_layers=2, use_cache=True,
        ),
        audio_tokenizer_config=dict(
            sample_rate=SAMPLE_RATE, patch_size=PATCH, init_method="kaiming", semantic_module_kwargs=None,
            # >= 4 encoder layers: vae_modules.py reuses the encoder config for its 4-layer aggregator
            # (num_hidden_layers = 4) without recomputing transformers' per-layer layer_types
            enc_kwargs=dict(backbone=_backbone(4, vae_attn), input_dim=HOP, hop_size=HOP, latent_dim=LATENT),
            dec_kwargs=dict(backbone=_backbone(1, vae_attn), latent_dim=LATENT, output_dim=HOP),
        ),
        # head dim 8: x_transformers' RotaryEmbedding needs an even head dim other than 2
        ditar_config=dict(patch_size=PATCH, history_patch_size=HISTORY, hidden_size=32, depth=1, num_heads=4,
                          mlp_ratio=2, dropout=0.0, attn_backend="torch", attn_mask_enabled=False),
        aggregator_config=dict(hidden_size=32, depth=1, num_heads=4, mlp_ratio=2, dropout=0.0,
                               attn_mask_enabled=False),
    )


def build(ctx):
    if ctx.weights is not None:
        model, info = BailingMMNativeForConditionalGeneration.from_pretrained(
            str(ctx.weights), torch_dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if bad:
            raise RuntimeError(f"checkpoint {ctx.weights} does not load cleanly into the ported model: {bad}")
        return model
    return BailingMMNativeForConditionalGeneration(tiny_config(ctx.inputs.get("vae_attn", "flash_attention_2")))


def forward(model, ctx):
    cfg = model.config
    latent = cfg.audio_tokenizer_config.enc_kwargs["latent_dim"]
    hop = cfg.audio_tokenizer_config.enc_kwargs["hop_size"]
    patch = cfg.ditar_config["patch_size"]
    history = cfg.ditar_config.get("history_patch_size", patch)
    llm_hidden = model.model.config.hidden_size
    vocab = model.model.config.vocab_size
    frames = ctx.inputs.get("frames", 12)  # VAE frames; <= 64 keeps inside the sliding window

    ids = ctx.randint(0, vocab, (1, ctx.inputs.get("prompt_len", 12)))
    out = model.model(input_ids=ids, output_hidden_states=True, return_dict=True, use_cache=False)

    wav = ctx.randn(1, hop * frames)
    h, _ = model.audio.encoder(wav)

    x = ctx.randn(1, patch, latent)
    t = ctx.tensor([0.3])
    cond = ctx.randn(1, 1, llm_hidden)
    hist = ctx.randn(1, history, latent)
    v = model.flowloss.cfm.model(x, t, cond, hist)

    agg = model.linear_proj_audio(ctx.randn(3, patch, latent))

    z = ctx.randn(1, frames // patch, latent)
    audio, _, _ = model.audio.decode(z, use_cache=False)

    note = getattr(ctx, "note", lambda name, value: value)  # shown in the report, never compared
    note("vae_attention", model.audio.encoder.encoder.config._attn_implementation)
    note("dit_rms_norm", "F.rms_norm" if model.flowloss.cfm.model.blocks[0].norm1.native_rms_norm else "hand-written")

    return {
        "backbone.logits": out.logits,
        "backbone.hidden": out.hidden_states[-1],
        "audio_encoder": h,
        "dit_head": v,
        "aggregator": agg,
        "audio_decoder": audio,
    }


class _TinyTokenizer:
    """What generate() needs from the tokenizer the cookbook attaches (`model.tokenizer`), with ids
    inside the tiny vocabulary: a deterministic stand-in, not the Qwen2 tokenizer."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return [10 + (sum(map(ord, text)) * 7 + i) % (self.vocab - 10) for i in range(max(1, min(len(text), 6)))]

    def convert_tokens_to_ids(self, token: str) -> int:
        return 7

    def decode(self, ids) -> str:
        return f"<{len(ids)} token ids>"


def generate(model, ctx):
    model.tokenizer = _TinyTokenizer(model.model.config.vocab_size)
    steps = ctx.inputs.get("decode_steps", 4)
    speech = model.generate(prompt="Please generate speech based on the following description.\n",
                            text="hello", max_decode_steps=steps, cfg=2.0)
    return ctx.Audio(speech, model.config.audio_tokenizer_config.sample_rate, n_tokens=steps)
