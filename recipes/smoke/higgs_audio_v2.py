"""Smoke script for recipes/higgs_audio_v2.yaml: a tiny random-initialised HiggsAudioModel
(boson-multimodal 0.1.1, transformers 4.46.3) built from its own HiggsAudioConfig, audio tower
skipped, run through the patched package.

Codes, not audio. Decoding codes to a waveform needs boson's HiggsAudioTokenizer, which cannot be
built honestly offline here: its module (and its dependencies `dac` and `audiotools`) import
torchaudio, whose PyPI wheel cannot load next to this torch, and its constructor always downloads a
HuBERT/WavLM semantic teacher from the hub. Faking both (a torchaudio module planted in
sys.modules, a random HuBERT planted in a private hub cache under a real repo id) would test
stand-ins, not the port. So this smoke test runs only `forward`, and `forward` checks codes:

* `text_logits` / `audio_logits`: a teacher-forced pass over text + 6 audio-out frames. With
  use_cache=False boson right-pads the merged sequence to a multiple of 8, so the causal mask has
  padding and the SDPA "unmask unattended" site the port widens to npu runs on npu (not on the
  CPU reference). That workaround only changes rows of padded queries, so only the positions the
  model's returned attention mask marks valid are compared (the padded rows are left out).
* `generated_codes`: greedy `generate()` with a left-padded attention mask, ending in
  <|audio_out_bos|> so the model generates audio. The codes are compared exactly between the
  device and the CPU, and the delay pattern is checked here on both: column 0 is the stream bos
  for every codebook, codebook k starts with k+1 bos tokens, every code is in [0, 1025].
"""

import torch
from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel
from boson_multimodal.model.higgs_audio.utils import revert_delay_pattern

N_CODEBOOKS = 8  # as released: 8 codebooks of 1024 codes (+ stream bos 1024, eos 1025)
CODEBOOK_SIZE = 1024
VOCAB = 256  # real: 128256; the special ids below must fit in it
AUDIO_IN, AUDIO_OUT, AUDIO_OUT_BOS, AUDIO_EOS, PAD = 250, 251, 252, 253, 0


def tiny_config(ctx):
    text_config = dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=500000.0, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
    )
    cfg = HiggsAudioConfig(
        text_config=text_config,
        audio_adapter_type="dual_ffn_fast_forward",  # as the released 3B model: dual-FFN layer 1, others fast-forward
        audio_dual_ffn_layers=[1],
        use_delay_pattern=True,
        audio_num_codebooks=N_CODEBOOKS, audio_codebook_size=CODEBOOK_SIZE,
        audio_stream_bos_id=CODEBOOK_SIZE, audio_stream_eos_id=CODEBOOK_SIZE + 1,
        skip_audio_tower=True, encode_whisper_embed=False, encode_audio_in_tokens=True,
        audio_in_token_idx=AUDIO_IN, audio_out_token_idx=AUDIO_OUT,
        audio_out_bos_token_id=AUDIO_OUT_BOS, audio_eos_token_id=AUDIO_EOS, pad_token_id=PAD,
    )
    cfg._attn_implementation = ctx.inputs.get("attn_implementation", "sdpa")
    return cfg


def build(ctx):
    return HiggsAudioModel(tiny_config(ctx)).eval()


def _teacher_forced(model, ctx):
    n_audio = ctx.inputs.get("audio_frames", 6)
    text = ctx.randint(3, 200, (ctx.inputs.get("text_len", 8),)).cpu().tolist()
    ids = torch.tensor([[1] + text + [AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS]], device=ctx.device)
    audio_out_ids = ctx.randint(0, CODEBOOK_SIZE, (N_CODEBOOKS, n_audio))
    out = model(
        input_ids=ids, attention_mask=torch.ones_like(ids), audio_out_ids=audio_out_ids,
        audio_out_ids_start=torch.tensor([0], device=ctx.device), use_cache=False, return_dict=True,
    )
    valid = out.attention_mask.bool()
    padded = int((~valid).sum())
    if padded == 0:  # the widened SDPA site would not run: the check would prove nothing
        raise RuntimeError("teacher-forced pass has no padded positions; the SDPA unmask site is not exercised")
    return out.logits[valid], out.audio_logits


def _check_delay_pattern(codes):
    c = codes.cpu()
    if c.shape[0] != N_CODEBOOKS or c.shape[1] < N_CODEBOOKS + 1:
        raise RuntimeError(f"audio codes have shape {tuple(c.shape)}; expected ({N_CODEBOOKS}, > {N_CODEBOOKS})")
    for k in range(N_CODEBOOKS):
        if not bool((c[k, : k + 1] == CODEBOOK_SIZE).all()):
            raise RuntimeError(f"delay pattern broken: codebook {k} starts {c[k, : k + 2].tolist()}")
    if not bool(((c >= 0) & (c <= CODEBOOK_SIZE + 1)).all()):
        raise RuntimeError("audio codes outside [0, 1025]")
    vq = revert_delay_pattern(c).clip(0, CODEBOOK_SIZE - 1)[:, 1:-1]  # as serve_engine.py does before decoding
    if vq.shape != (N_CODEBOOKS, c.shape[1] - N_CODEBOOKS - 1):
        raise RuntimeError(f"revert_delay_pattern gave {tuple(vq.shape)}")
    return vq


def _generate_codes(model, ctx):
    n_pad = ctx.inputs.get("left_pad", 3)
    prompt = [1, 17, 33, 45, 60, 71, 88, AUDIO_OUT_BOS]  # ends in <|audio_out_bos|>: audio generation
    ids = torch.tensor([[PAD] * n_pad + prompt], device=ctx.device)
    mask = torch.tensor([[0] * n_pad + [1] * len(prompt)], device=ctx.device)
    generate = model.generate  # upstream's own, @torch.inference_mode() included, on every device
    _text_ids, audio_sequences = generate(
        input_ids=ids, attention_mask=mask,
        audio_out_bos_token_id=AUDIO_OUT_BOS, audio_eos_token_id=AUDIO_EOS,
        max_new_tokens=ctx.inputs.get("max_new_tokens", 24), do_sample=False, use_cache=True,
    )
    codes = audio_sequences[0]  # [codebooks, 1 + steps], delay pattern
    vq = _check_delay_pattern(codes)
    return codes, vq


def forward(model, ctx):
    text_logits, audio_logits = _teacher_forced(model, ctx)
    codes, vq = _generate_codes(model, ctx)
    return {
        "text_logits": text_logits,
        "audio_logits": audio_logits,
        "generated_codes": codes,
        "reverted_codes": vq,
    }
