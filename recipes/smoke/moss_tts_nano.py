"""Smoke test of the MOSS-TTS-Nano port: a tiny random-init model built from the patched code.

The model is MossTTSNanoForCausalLM from the patched `moss_tts_nano` package (the HF remote code),
built directly from a shrunk config: GPT-2 global decoder 2 layers x 64 wide, a 1-layer local
decoder, 4 codebooks of 16 codes (the real model: 12 x 768, 16 codebooks of 1024).

forward (CPU float32 reference vs the target device, compared by porter):
  * global hidden states, text and first-codebook logits of one prompt;
  * the same for a left-padded batch of two prompts (the padded-attention path);
  * voice-clone chunk batching (seed 001 change A): the batch size comes from
    `_resolve_voice_clone_chunk_batch_size`, which on npu now asks the device for its free memory
    (torch.npu.mem_get_info: on npu-sim the simulated device's free/total); four chunk prompts are
    generated in left-padded batches of that size. The CPU reference gets batch size 1, so the
    exactly-compared audio tokens prove that batching by the device's answer changes nothing.
    On an npu target the script also checks the answer against torch.npu.mem_get_info itself.
On the npu target the decoders are switched to "flash_attention_2", what the shipped config.json
asks for: with the port that request runs the SDPA path on npu tensors (change C), so the target
is compared with the CPU reference running SDPA. Change B's selector must answer "sdpa" on npu.

generate: greedy generation on the target (KV cache, and without it: both must agree), then a
waveform from porter's stand-in decoder below (the real MOSS audio tokenizer is another HF repo,
not in this recipe): it checks the plumbing and the audio checks, not audio quality.

The one test-side change, none in the patched code: `_sample_next_assistant_text_token` always
answers "continue" (with random weights generation may otherwise stop at frame 0). torchaudio is
not needed: the port imports it only in the functions that read or write wav files (lazy-import),
and PyPI has no torchaudio for the host torch 2.13 (a mismatched one fails with OSError).

Values meant to differ by device (the voice-clone batch size, the device's free/total memory, the
attention implementations in use) are reported with ctx.note, reference and target side by side.
"""

from __future__ import annotations

import math
import types

import torch
from moss_tts_nano.configuration_moss_tts_nano import MossTTSNanoConfig
from moss_tts_nano.modeling_moss_tts_nano import MossTTSNanoForCausalLM

N_VQ = 4
CODEBOOK = 16
VOCAB = 64
FIRST_TEXT_ID = 10  # ids below are the special tokens (shipped ids 3..9)
SAMPLE_RATE = 48000  # the MOSS audio tokenizer: 48 kHz stereo, 3840 samples per frame
FRAME_SAMPLES = 3840


def _config() -> MossTTSNanoConfig:
    return MossTTSNanoConfig(
        gpt2_config=dict(
            n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=VOCAB, n_positions=256, n_ctx=256,
            position_embedding_type="rope", rope_base=10000.0, activation_function="gelu_new",
            attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, layer_norm_epsilon=1e-5,
        ),
        n_vq=N_VQ, audio_vocab_size=CODEBOOK, audio_codebook_sizes=[CODEBOOK] * N_VQ,
        audio_pad_token_id=CODEBOOK, pad_token_id=3, im_start_token_id=4, im_end_token_id=5,
        audio_start_token_id=6, audio_end_token_id=7, audio_user_slot_token_id=8,
        audio_assistant_slot_token_id=9, attn_implementation="sdpa",
        local_transformer_layers=1, local_transformer_attn_implementation="sdpa",
    )


def _always_continue(self, logits, do_sample, temperature, top_k=None, top_p=None):
    return torch.full(logits.shape[:-1], self.config.audio_assistant_slot_token_id,
                      dtype=torch.long, device=logits.device)


def _on_npu(ctx) -> bool:
    return torch.device(ctx.device).type == "npu"


def build(ctx):
    model = MossTTSNanoForCausalLM(_config()).eval()
    model._sample_next_assistant_text_token = types.MethodType(_always_continue, model)
    return model


def place(model, ctx):
    model = model.to(device=ctx.device, dtype=ctx.dtype)
    model._sample_next_assistant_text_token = types.MethodType(_always_continue, model)
    if _on_npu(ctx):
        model._set_attention_implementation("flash_attention_2")
    return model


# -- inputs ------------------------------------------------------------------------------------
def _prompt(ctx, length: int) -> torch.Tensor:
    """[1, length, n_vq + 1] rows: a text id and no audio, the last row opens the audio."""
    text = ctx.randint(FIRST_TEXT_ID, VOCAB, (length,)).cpu()
    rows = torch.full((1, length, N_VQ + 1), CODEBOOK, dtype=torch.long)
    rows[0, :, 0] = text
    rows[0, -1, 0] = 6  # audio_start_token_id
    return rows


def _left_pad(prompts: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as MossTTSNanoForCausalLM.inference builds one: left padding, pad rows masked."""
    longest = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), longest, N_VQ + 1), CODEBOOK, dtype=torch.long)
    ids[:, :, 0] = 3  # pad_token_id
    mask = torch.zeros((len(prompts), longest), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, -p.shape[1]:] = p[0]
        mask[i, -p.shape[1]:] = True
    return ids.to(device), mask.to(device)


def _heads(model, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits and first-codebook logits for the last position, as generate() computes them."""
    first = hidden[:, -1:, :]
    text_logits = model.text_lm_head(model._decode_local_last_hidden_state(first))
    slot = torch.full((hidden.shape[0],), 9, dtype=torch.long, device=hidden.device)
    local = torch.cat([first, model.transformer.wte(slot).unsqueeze(1)], dim=1)
    audio_logits = model.audio_lm_heads[0](model._decode_local_last_hidden_state(local))
    return text_logits, audio_logits


# -- the calls porter makes ----------------------------------------------------------------------
def forward(model, ctx):
    out: dict[str, torch.Tensor] = {}
    ids, mask = _left_pad([_prompt(ctx, 12)], ctx.device)
    hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).global_hidden_states
    out["global_hidden_states"] = hidden
    out["text_logits"], out["audio0_logits"] = _heads(model, hidden)

    ids, mask = _left_pad([_prompt(ctx, 7), _prompt(ctx, 12)], ctx.device)
    hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).global_hidden_states
    out["padded_batch.global_hidden_states"] = hidden * mask.unsqueeze(-1)
    out["padded_batch.text_logits"], _ = _heads(model, hidden)

    out["voice_clone.audio_token_ids"] = _voice_clone_chunks(model, ctx)
    return out


def _voice_clone_chunks(model, ctx) -> torch.Tensor:
    device = torch.device(ctx.device)
    chunks = [_prompt(ctx, n) for n in ctx.inputs.get("chunk_lengths", [9, 14, 11, 16])]
    per_sample_gb = float(ctx.inputs.get("max_memory_per_sample_gb", 16.0))
    batch = model._resolve_voice_clone_chunk_batch_size(
        resolved_device=device, chunk_count=len(chunks), max_memory_per_sample_gb=per_sample_gb)
    ctx.note("voice_clone.batch_size", int(batch))
    ctx.note("attention.global", model.transformer.attn_implementation)
    ctx.note("attention.local", model.local_transformer.attn_implementation)
    if _on_npu(ctx):
        free, total = torch.npu.mem_get_info(device)
        want = max(1, min(len(chunks), int(free * 0.9) // int(per_sample_gb * 1024**3)))
        fallback = model._select_fallback_attention_implementation(device)
        ctx.note("device.free_bytes", int(free))
        ctx.note("device.total_bytes", int(total))
        ctx.note("voice_clone.expected_batch_size", want)
        ctx.note("attention.stability_fallback", fallback)
        print(f"moss_tts_nano voice clone on {device}: {len(chunks)} chunks, {per_sample_gb} GiB per sample, "
              f"{free} of {total} bytes free -> batch size {batch} (expected {want})", flush=True)
        if batch != want:
            raise AssertionError(f"voice-clone batch size {batch} on {device}, but the device reports "
                                 f"{free} of {total} bytes free, which gives {want} (change A not ported?)")
        if fallback != "sdpa":
            raise AssertionError(f"fallback attention on {device} is {fallback!r}, expected 'sdpa' (change B)")
    frames = int(ctx.inputs.get("voice_clone_frames", 3))
    tokens = []
    for start in range(0, len(chunks), batch):
        ids, mask = _left_pad(chunks[start:start + batch], ctx.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_frames=frames, do_sample=False,
                             use_kv_cache=True)
        tokens.append(gen.audio_token_ids)
    return torch.cat(tokens, dim=0)


def generate(model, ctx):
    frames = int(ctx.inputs.get("frames", 6))
    ids, mask = _left_pad([_prompt(ctx, 10)], ctx.device)
    cached = model.generate(input_ids=ids, attention_mask=mask, max_new_frames=frames, do_sample=False,
                            use_kv_cache=True).audio_token_ids
    full = model.generate(input_ids=ids, attention_mask=mask, max_new_frames=frames, do_sample=False,
                          use_kv_cache=False).audio_token_ids
    if not torch.equal(cached.cpu(), full.cpu()):
        raise AssertionError(f"generation with the KV cache differs from generation without it on {ctx.device}")
    codes = cached[0].cpu()  # [frames, n_vq]
    return ctx.Audio(_stand_in_decode(codes), SAMPLE_RATE, n_tokens=int(codes.shape[0]))


def _stand_in_decode(codes: torch.Tensor) -> torch.Tensor:
    """porter's stand-in for the audio tokenizer's decoder: each frame is a chord, one partial per
    codebook whose pitch follows the code; 48 kHz stereo, 3840 samples per frame, as the real one."""
    t = torch.arange(FRAME_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    frames = []
    for frame in codes.tolist():
        wave = torch.zeros(FRAME_SAMPLES, dtype=torch.float64)
        for k, code in enumerate(frame):
            freq = 110.0 * (2 ** k) * (1.0 + code / CODEBOOK)
            wave += 0.15 * torch.sin(2 * math.pi * freq * t)
        frames.append(wave)
    mono = torch.cat(frames) if frames else torch.zeros(0, dtype=torch.float64)
    return torch.stack([mono, 0.8 * mono]).to(torch.float32)
