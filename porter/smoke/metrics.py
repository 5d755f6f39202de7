"""Measurements: target-vs-reference numerics and audio figures. numpy only, no judging.

Judging against the spec's thresholds happens in `porter.smoke.checks`, in porter's own process;
this module runs inside the smoke subprocess (whatever its environment pins) and only measures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _finite_float(x: float) -> float | None:
    """JSON has no NaN/Inf: they become None (the finite checks report them separately)."""
    x = float(x)
    return x if math.isfinite(x) else None


def compare(target: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Figures for one named output. Both arrays come in on the CPU; the target may be lower
    precision. Definitions are in `porter.smoke.spec.Thresholds`."""
    out: dict[str, Any] = {
        "shape": list(target.shape),
        "reference_shape": list(reference.shape),
        "dtype": str(target.dtype),
        "numel": int(target.size),
        "nan": int(np.isnan(target).sum()) if target.dtype.kind in "fc" else 0,
        "inf": int(np.isinf(target).sum()) if target.dtype.kind in "fc" else 0,
        "reference_nan": int(np.isnan(reference).sum()) if reference.dtype.kind in "fc" else 0,
        "reference_inf": int(np.isinf(reference).sum()) if reference.dtype.kind in "fc" else 0,
        "floating": bool(target.dtype.kind in "fc" or reference.dtype.kind in "fc"),
    }
    if target.shape != reference.shape:
        return out
    if not out["floating"]:
        out["mismatched"] = int((target != reference).sum())
        return out
    a = target.astype(np.float64).ravel()
    b = reference.astype(np.float64).ravel()
    with np.errstate(all="ignore"):
        d = np.abs(a - b)
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if a.size == 0:
            cos = 1.0
        elif na == 0.0 and nb == 0.0:
            cos = 1.0
        elif na == 0.0 or nb == 0.0:
            cos = 0.0
        else:
            cos = float(np.dot(a, b) / (na * nb))
        mean_ref = float(np.mean(np.abs(b))) if b.size else 0.0
        mae = float(np.mean(d)) if d.size else 0.0
        out.update(
            cosine=_finite_float(cos),
            mean_rel_diff=_finite_float(mae / mean_ref) if mean_ref > 0 else (0.0 if mae == 0 else None),
            rel_l2=_finite_float(float(np.linalg.norm(d)) / nb) if nb > 0 else (0.0 if mae == 0 else None),
            max_abs_diff=_finite_float(float(d.max())) if d.size else 0.0,
            mae=_finite_float(mae),
        )
    return out


def audio_figures(waveform: np.ndarray, sample_rate: int, clip_level: float) -> dict[str, Any]:
    """`waveform`: [channels, samples], float. Figures over all channels."""
    x = waveform.astype(np.float64)
    n = int(x.shape[-1])
    nan = int(np.isnan(x).sum())
    inf = int(np.isinf(x).sum())
    finite = x[np.isfinite(x)]
    return {
        "sample_rate": int(sample_rate),
        "channels": int(x.shape[0]),
        "samples": n,
        "duration_s": n / float(sample_rate) if sample_rate > 0 else 0.0,
        "nan": nan,
        "inf": inf,
        "rms": float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0,
        "peak": float(np.max(np.abs(finite))) if finite.size else 0.0,
        "clip_level": float(clip_level),
        "clip_fraction": float(np.mean(np.abs(finite) >= clip_level)) if finite.size else 0.0,
    }
