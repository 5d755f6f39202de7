"""Smoke script for recipes/voxcpm2.yaml: a tiny random-initialised VoxCPM2, loaded the real way.

porter's own code (no upstream code here). It imports the package under test by its usual name
(`voxcpm`): the patched package in `porter apply`, or any other voxcpm tree put first on
PYTHONPATH (tests/test_recipe_voxcpm2.py runs it against the unpatched wheel on the CPU too).

build      writes a tiny checkpoint like the Hugging Face repo (config.json, tokenizer files,
           model.safetensors, audiovae.safetensors; a shrunk config that keeps the real audio
           rates: 16 kHz in, 48 kHz out) and loads it with `VoxCPM2Model.from_local(device="cpu")`
           in float32: the CPU reference.
place      loads the same checkpoint on the target through the public API the seed used,
           `VoxCPM.from_pretrained(dir, load_denoiser=False, optimize=False, device=<target>)`,
           with config dtype = the smoke dtype, then calls `optimize()` as `optimize=True` would.
           Checks: the device resolver accepts the target ("npu:0", and "npu" / "auto" -> "npu" on
           npu), every checkpoint tensor landed (weights load with strict=False, so a renamed
           parameter would silently stay random), the AudioVAE stayed float32, and optimize()
           compiled nothing.
forward    deterministic, teacher-forced intermediate outputs (VoxCPM2Model.forward without the
           diffusion noise): base LM and residual LM hidden states, stop logits, the LocDiT
           velocity at a fixed point, and an AudioVAE decode of a fixed latent.
generate   `VoxCPM.generate` of exactly `patches` patches (min_len = max_len: the random stop head
           would stop anywhere), 48 kHz audio. The CFM samples noise on the device, so audio is
           not compared across devices; it is checked for format, length, level.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import string
import sys
import tempfile

import torch

# The package under test must import although this environment's torchaudio cannot load.
import voxcpm  # noqa: F401
from voxcpm.core import VoxCPM
from voxcpm.model.utils import resolve_runtime_device
from voxcpm.model.voxcpm2 import VoxCPM2Model, VoxCPMConfig
from voxcpm.modules.audiovae import AudioVAEV2

print(f"voxcpm from {os.path.dirname(voxcpm.__file__)}; torchaudio imported by it: {'torchaudio' in sys.modules}")

HEAD_DIM = 16  # hidden_size // num_attention_heads in every MiniCPM stack below
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def tiny_config(dtype: str) -> dict:
    half = HEAD_DIM // 2  # longrope factors have head_dim / 2 entries
    lm = dict(
        bos_token_id=1, eos_token_id=2,
        hidden_size=64, intermediate_size=128,
        max_position_embeddings=512, num_attention_heads=4, num_hidden_layers=2,
        num_key_value_heads=2,  # grouped-query attention (SDPA enable_gqa) is exercised
        rms_norm_eps=1e-5,
        rope_scaling=dict(type="longrope", long_factor=[1.0] * half, short_factor=[1.0] * half,
                          original_max_position_embeddings=512),
        vocab_size=128,  # > 104: token ids 101-104 (audio start/end, ref audio start/end) are fixed
        use_mup=True, scale_emb=12, dim_model_base=64, scale_depth=1.4, rope_theta=10000.0,
    )
    return dict(
        architecture="voxcpm2",  # read by voxcpm.core.VoxCPM
        lm_config=lm,
        patch_size=4, feat_dim=16,  # feat_dim = audio VAE latent_dim
        residual_lm_num_layers=1, residual_lm_no_rope=False,
        scalar_quantization_latent_dim=32, scalar_quantization_scale=9,
        encoder_config=dict(hidden_dim=64, ffn_dim=128, num_heads=4, num_layers=1),
        dit_config=dict(hidden_dim=64, ffn_dim=128, num_heads=4, num_layers=1,
                        cfm_config=dict(sigma_min=1e-6, solver="euler", t_scheduler="log-norm",
                                        inference_cfg_rate=1.0)),
        # the real rates: 16 kHz in (640 samples per latent frame), 48 kHz out (1920 per frame)
        audio_vae_config=dict(encoder_dim=8, encoder_rates=[2, 5, 8, 8], latent_dim=16,
                              decoder_dim=64, decoder_rates=[8, 6, 5, 2, 2, 2], depthwise=True,
                              sample_rate=16000, out_sample_rate=48000, use_noise_block=False,
                              sr_bin_boundaries=[20000, 30000, 40000], cond_type="scale_bias"),
        max_length=256,  # the static KV cache length, allocated on the resolved device
        device="cpu", dtype=dtype,
    )


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaTokenizerFast

    chars = ["<unk>", "<s>", "</s>"] + list(string.ascii_letters + string.digits + " .,!?'") + ["\u2581"]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _scratch() -> str:
    path = tempfile.mkdtemp(prefix="porter-voxcpm2-")
    atexit.register(shutil.rmtree, path, True)
    return path


def write_checkpoint(path: str) -> None:
    """A random-initialised tiny VoxCPM2 saved the way the Hugging Face repo ships it."""
    from safetensors.torch import save_file

    cfg = tiny_config("float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    tok = tiny_tokenizer()
    tok.save_pretrained(path)
    config = VoxCPMConfig.model_validate(cfg)
    vae = AudioVAEV2(config=config.audio_vae_config)
    model = VoxCPM2Model(config, tok, vae, device="cpu")
    lm = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("audio_vae.")}
    save_file(lm, os.path.join(path, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(path, "audiovae.safetensors"))


def check_loaded(model: VoxCPM2Model, ckpt: str) -> None:
    """Every checkpoint tensor is in the model with its value (strict=False hides renamed keys)."""
    from safetensors.torch import load_file

    saved = load_file(os.path.join(ckpt, "model.safetensors"))
    saved.update({f"audio_vae.{k}": v for k, v in load_file(os.path.join(ckpt, "audiovae.safetensors")).items()})
    have = model.state_dict()
    missing = sorted(set(saved) - set(have))
    unexpected = sorted(set(have) - set(saved))
    assert not missing and not unexpected, (
        f"checkpoint keys did not land: {len(missing)} missing in the model (e.g. {missing[:3]}), "
        f"{len(unexpected)} model keys not in the checkpoint (e.g. {unexpected[:3]})"
    )
    differ = [k for k, v in saved.items() if not torch.equal(have[k].detach().cpu(), v.to(have[k].dtype))]
    assert not differ, f"{len(differ)} tensors differ from the checkpoint after loading, e.g. {differ[:3]}"


def check_vae_float32(model: VoxCPM2Model) -> None:
    bad = sorted({str(p.dtype) for p in model.audio_vae.parameters() if p.dtype != torch.float32})
    assert not bad, f"AudioVAE parameters are {bad}; the port keeps the VAE in float32"


def build(ctx):
    ckpt = _scratch()
    write_checkpoint(ckpt)
    model = VoxCPM2Model.from_local(ckpt, optimize=False, device="cpu")
    check_loaded(model, ckpt)
    check_vae_float32(model)
    model._porter_ckpt = ckpt  # place() loads the same files on the target
    return model


def place(model, ctx):
    kind = ctx.device_kind
    if kind in ("npu", "npu-sim"):
        # the port's point: npu is a device voxcpm accepts, explicitly and under "auto"
        for asked, want in ((ctx.device, ctx.device), ("npu", "npu"), ("auto", "npu"), (None, "npu")):
            got = resolve_runtime_device(asked, "cuda")
            assert got == want, f"resolve_runtime_device({asked!r}) gave {got!r} on {kind}, expected {want!r}"
    src = model._porter_ckpt
    ckpt = _scratch()
    for name in os.listdir(src):
        if name != "config.json":
            os.symlink(os.path.join(src, name), os.path.join(ckpt, name))
    cfg = tiny_config(_DTYPE_NAMES[ctx.dtype])
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg, f)

    pipe = VoxCPM.from_pretrained(ckpt, load_denoiser=False, optimize=False, device=ctx.device)
    target = pipe.tts_model
    assert str(target.device) == ctx.device, f"model resolved device {target.device!r}, asked for {ctx.device!r}"
    check_loaded(target, src)
    check_vae_float32(target)
    lm_dtype = target.base_lm.embed_tokens.weight.dtype
    assert lm_dtype == ctx.dtype, f"LM dtype {lm_dtype}, expected {ctx.dtype}"

    target.optimize()  # what VoxCPM(optimize=True), the default, does: must compile nothing here
    compiled = [name for name, obj in (("base_lm.forward_step", target.base_lm.__dict__.get("forward_step")),
                                       ("residual_lm.forward_step", target.residual_lm.__dict__.get("forward_step")),
                                       ("feat_encoder", target.feat_encoder),
                                       ("feat_decoder.estimator", target.feat_decoder.estimator))
                if obj is not None and (hasattr(obj, "_torchdynamo_orig_callable") or type(obj).__name__ == "OptimizedModule")]
    assert not compiled, f"optimize() compiled {compiled} on {kind}"
    assert not hasattr(target, "_feat_encoder_raw"), f"optimize() passed its CUDA-only gate on {kind}"
    target._porter_pipe = pipe
    return target


def forward(model, ctx):
    """VoxCPM2Model.forward's deterministic part (no CFM noise), inputs identical on both devices."""
    T, P, D = 12, model.patch_size, model.feat_dim
    text = ctx.randint(3, 72, (1, T))
    text_mask = ctx.tensor([[1.0] * 6 + [0.0] * (T - 6)])
    audio_mask = 1 - text_mask
    feats = ctx.randn(1, T, P, D) * audio_mask[..., None, None]

    feat_embed = model.enc_to_lm_proj(model.feat_encoder(feats))
    scale_emb = model.config.lm_config.scale_emb if model.config.lm_config.use_mup else 1.0
    combined = text_mask[..., None] * model.base_lm.embed_tokens(text) * scale_emb + audio_mask[..., None] * feat_embed
    enc, _ = model.base_lm(inputs_embeds=combined, is_causal=True)
    enc = model.fsq_layer(enc) * audio_mask[..., None] + enc * text_mask[..., None]
    res_in = model.fusion_concat_proj(torch.cat((enc, audio_mask[..., None] * feat_embed), -1))
    res, _ = model.residual_lm(inputs_embeds=res_in, is_causal=True)
    stop_logits = model.stop_head(model.stop_actn(model.stop_proj(enc)))

    dit_hidden = torch.cat((model.lm_to_dit_proj(enc), model.res_to_dit_proj(res)), -1)[0]
    x = ctx.randn(T, D, P)
    cond = ctx.randn(T, D, P)
    t = ctx.tensor([0.5] * T)
    velocity = model.feat_decoder.estimator(x, dit_hidden, t, cond, torch.zeros_like(t))

    z = ctx.randn(1, model.audio_vae.latent_dim, 8, dtype=torch.float32)  # decode runs in float32
    wav = model.audio_vae.decode(z)
    return {
        "base_lm_hidden": enc,
        "residual_hidden": res,
        "stop_logits": stop_logits,
        "dit_velocity": velocity,
        "vae_wav": wav,
    }


def generate(model, ctx):
    n = int(ctx.inputs.get("patches", 8))
    pipe = model._porter_pipe
    wav = pipe.generate(
        text=ctx.inputs.get("text", "Hello world."),
        min_len=n, max_len=n,
        inference_timesteps=int(ctx.inputs.get("inference_timesteps", 4)),
        cfg_value=float(ctx.inputs.get("cfg_value", 2.0)),
        retry_badcase=False,
    )
    want = n * model.patch_size * model._decode_chunk_size
    assert wav.shape == (want,), f"generated {wav.shape} samples, expected ({want},)"
    return ctx.Audio(wav, model.sample_rate, n_tokens=n)
