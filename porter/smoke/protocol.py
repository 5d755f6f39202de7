"""What a smoke script sees: the context it is called with and the `Audio` value it returns.

A smoke script is a small Python file of porter's own, next to the recipe. It imports the
(patched) upstream by its usual name, and defines:

    def build(ctx) -> torch.nn.Module            # required; runs on the CPU in float32, seeded
    def forward(model, ctx) -> dict[str, Tensor] # teacher-forced named outputs (numerics)
    def generate(model, ctx) -> Audio            # audio, on the target device
    def place(model, ctx) -> torch.nn.Module     # optional: move to ctx.device/ctx.dtype when a
                                                 # plain `model.to(device, dtype)` is wrong (e.g.
                                                 # a VAE that must stay float32)

porter calls `build` once on the CPU (ctx.role == "build"), copies the model (same weights), runs
`forward` on the CPU float32 reference (role "reference") and on the target device (role
"target"), and `generate` on the target only. Inside `forward`, `ctx.capture(module, name)`
records a submodule's output and `ctx.record(name, tensor)` records any tensor, so components
(backbone, audio encoder, DiT head, ...) are compared separately, as seed 000 did. Values that
should differ between devices (a batch size picked from free device memory) are not outputs:
report them with `ctx.note(name, value)`, shown side by side and never compared.

Inputs made with `ctx.randint`/`ctx.randn` are drawn on the CPU from a generator seeded by the
spec's seed and the call order, then moved to `ctx.device`: both runs get identical inputs.

This module must stay importable in any smoke environment: stdlib and torch only.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch


@dataclass
class Audio:
    """Generated audio. `waveform`: [samples] or [channels, samples] (a leading batch of 1 is
    dropped), float, nominally in [-1, 1]; torch tensor or numpy array, any device."""

    waveform: Any
    sample_rate: int
    n_tokens: int | None = None  # generated tokens (frames); gives tokens/s


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SmokeContext:
    """Passed to every script function. Attributes:

    device       torch device string for this call ("cpu", "npu:0", "cuda:0")
    device_kind  "cpu" | "npu" | "npu-sim" | "cuda" (the target's kind; "cpu" for build/reference)
    dtype        torch dtype for this call (the reference and build are always float32)
    role         "build" | "reference" | "target"
    seed         the spec's seed (porter has already seeded torch with it before the call)
    inputs       the spec's `inputs` mapping (read-only)
    weights      Path to real weights from the spec, or None (random init)
    out_dir      where porter writes this run's files
    Audio        the Audio class, so scripts need not import porter
    """

    Audio = Audio

    def __init__(
        self,
        *,
        device: str,
        device_kind: str,
        dtype: str,
        role: str,
        seed: int,
        inputs: Mapping[str, Any],
        weights: str | None,
        out_dir: str,
    ) -> None:
        self.device = device
        self.device_kind = device_kind
        self.dtype = _DTYPES[dtype]
        self.role = role
        self.seed = seed
        self.inputs = types.MappingProxyType(dict(inputs))
        self.weights = Path(weights) if weights else None
        self.out_dir = Path(out_dir)
        self._draws = 0
        self.records: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self._hooks: list[Any] = []

    def __repr__(self) -> str:
        return f"SmokeContext(role={self.role!r}, device={self.device!r}, dtype={self.dtype})"

    # -- inputs that are identical on every device ------------------------------------------
    def _generator(self) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + self._draws)
        self._draws += 1
        return g

    def randint(self, low: int, high: int, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
        t = torch.randint(low, high, tuple(shape), generator=self._generator(), dtype=torch.long)
        return t.to(self.device)

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.randn(*shape, generator=self._generator(), dtype=torch.float32)
        return t.to(device=self.device, dtype=dtype or self.dtype)

    def tensor(self, data: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.as_tensor(data)
        if dtype is None and t.is_floating_point():
            dtype = self.dtype
        return t.to(device=self.device, dtype=dtype)

    # -- per-component outputs ---------------------------------------------------------------
    def record(self, name: str, value: Any) -> Any:
        """Record `value` (a tensor, or a tuple/dict/ModelOutput of tensors) under `name`."""
        if name in self.records:
            raise ValueError(f"ctx.record: output name {name!r} recorded twice")
        self.records[name] = value
        return value

    def note(self, name: str, value: Any) -> Any:
        """Report a value that is *expected* to depend on the device (a batch size chosen from
        the device's free memory, the attention backend picked, ...). Shown in the report for the
        reference and the target side by side; never compared. A number, string, bool, a small
        tensor or a list of those."""
        self.values[name] = value
        return value

    def capture(self, module: torch.nn.Module, name: str) -> None:
        """Record `module`'s forward output as `name` for the rest of this call.

        A module called more than once records `name`, `name#1`, `name#2`, ...
        """
        calls = [0]

        def hook(_mod: torch.nn.Module, _args: Any, output: Any) -> None:
            key = name if calls[0] == 0 else f"{name}#{calls[0]}"
            calls[0] += 1
            self.records[key] = output

        self._hooks.append(module.register_forward_hook(hook))

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def sync(self) -> None:
        """Wait for the device (for timings inside a script)."""
        synchronize(self.device)

    @contextmanager
    def _call(self) -> Iterator["SmokeContext"]:
        try:
            yield self
        finally:
            self._remove_hooks()


def synchronize(device: str) -> None:
    kind = torch.device(device).type
    if kind == "cpu":
        return
    mod = getattr(torch, kind, None)
    sync = getattr(mod, "synchronize", None)
    if sync is not None:
        sync()
