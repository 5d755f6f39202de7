"""recipes/smoke/voxcpm2.py for a CUDA target (bench/bench_cuda_equivalence.py).

The recipe's smoke asserts that `optimize()` compiles nothing, which is the port's promise on npu
and what upstream does on the CPU. On CUDA upstream compiles, and the port must keep that: this
place() runs the recipe's own, records which modules `optimize()` compiled (as the value
`compiled_by_optimize`, reported by the target's forward), then puts the eager modules back so that the outputs of both trees are
compared on the same (eager) code and the recipe's remaining checks apply unchanged.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "recipes" / "smoke" / "voxcpm2.py"
_spec = importlib.util.spec_from_file_location("porter_voxcpm2_smoke", _PATH)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

build, generate = _base.build, _base.generate


def forward(model, ctx):
    # values noted in place() are not kept by the smoke child; the target's forward reports it
    ctx.note("compiled_by_optimize", getattr(model, "_bench_compiled_by_optimize", "(reference: not optimized)"))
    return _base.forward(model, ctx)


def _compiled(model) -> list[str]:
    parts = (("base_lm.forward_step", model.base_lm.__dict__.get("forward_step")),
             ("residual_lm.forward_step", model.residual_lm.__dict__.get("forward_step")),
             ("feat_encoder", model.feat_encoder),
             ("feat_decoder.estimator", model.feat_decoder.estimator))
    return [name for name, obj in parts
            if obj is not None and (hasattr(obj, "_torchdynamo_orig_callable") or type(obj).__name__ == "OptimizedModule")]


def place(model, ctx):
    cls = _base.VoxCPM2Model
    original = cls.optimize
    seen: dict[str, list[str]] = {}

    def optimize(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen["compiled"] = _compiled(self)
        # back to eager: both trees are then compared on the same code
        self.base_lm.__dict__.pop("forward_step", None)
        self.residual_lm.__dict__.pop("forward_step", None)
        if hasattr(self, "_feat_encoder_raw"):
            self.feat_encoder = self._feat_encoder_raw
            del self._feat_encoder_raw
        self.feat_decoder.estimator = getattr(self.feat_decoder.estimator, "_orig_mod", self.feat_decoder.estimator)
        return result

    cls.optimize = optimize
    try:
        placed = _base.place(model, ctx)
    finally:
        cls.optimize = original
    target = placed if placed is not None else model
    target._bench_compiled_by_optimize = ", ".join(seen.get("compiled", [])) or "nothing"
    return placed
