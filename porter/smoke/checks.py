"""Judging: the child's measurements against the spec's thresholds. One place, porter's process."""

from __future__ import annotations

from typing import Any, Callable

from porter.smoke.result import AudioFigures, FailedCheck, OutputFigures, device_label
from porter.smoke.spec import SmokeSpec, Thresholds

# (measured key, threshold field, "min"/"max", how to print a value)
_NUMERIC = (
    ("cosine", "cosine_min", "min", lambda v: f"{v:.8f}"),
    ("mean_rel_diff", "mean_rel_diff_max", "max", lambda v: f"{v:.4%}"),
    ("rel_l2", "rel_l2_max", "max", lambda v: f"{v:.4%}"),
    ("max_abs_diff", "max_abs_diff_max", "max", lambda v: f"{v:.4g}"),
    ("mae", "mae_max", "max", lambda v: f"{v:.4g}"),
)


def judge_outputs(
    spec: SmokeSpec, measured: dict[str, Any], kind: str, dtype: str
) -> tuple[tuple[OutputFigures, ...], list[FailedCheck]]:
    """Target device against the cpu float32 reference, with the spec's thresholds."""
    return judge_pairs(
        measured,
        spec.thresholds_for,
        required=tuple(spec.outputs),
        target=kind,
        reference="the cpu float32 reference",
        vs=f"{kind} {dtype} vs cpu float32",
        device=kind,
    )


def judge_pairs(
    measured: dict[str, Any],
    thresholds_for: Callable[[str], Thresholds],
    *,
    required: tuple[str, ...] = (),
    target: str,
    reference: str,
    vs: str,
    device: str,
) -> tuple[tuple[OutputFigures, ...], list[FailedCheck]]:
    """Measured pairs (porter.smoke.metrics.compare) against thresholds. `target`/`reference`
    name the two sides in messages; `device` is the device the target figures came from."""
    figures: list[OutputFigures] = []
    failures: list[FailedCheck] = []

    def fail(check: str, output: str, value: Any, threshold: Any, message: str, dev: str = device) -> None:
        failures.append(FailedCheck(check, output, value, threshold, dev, message))

    for name, m in measured.items():
        before = len(failures)
        if "missing_in" in m:
            missing, present = (target, reference) if m["missing_in"] == "target" else (reference, target)
            fail("missing-output", name, None, None, f"output {name!r} exists on {present} but not on {missing}")
            continue
        if m["shape"] != m["reference_shape"]:
            fail("shape", name, "×".join(map(str, m["shape"])), "×".join(map(str, m["reference_shape"])),
                 f"output {name!r} has shape {m['shape']} on {target} but {m['reference_shape']} on {reference}")
        n = m["numel"]
        if m["nan"] or m["inf"]:
            fail("finite", name, m["nan"] + m["inf"], 0,
                 f"output {name!r} on {target} contains {m['nan']} NaN and {m['inf']} Inf of {n} values")
        if m["reference_nan"] or m["reference_inf"]:
            fail("finite-reference", name, m["reference_nan"] + m["reference_inf"], 0,
                 f"output {name!r} on {reference} contains {m['reference_nan']} NaN and "
                 f"{m['reference_inf']} Inf of {n} values (the model itself, not the port)", dev="cpu")
        if m.get("mismatched") is not None and m["mismatched"]:
            fail("exact", name, m["mismatched"], 0,
                 f"integer output {name!r}: {m['mismatched']} of {n} values differ between {target} and {reference}")
        finite = not (m["nan"] or m["inf"] or m["reference_nan"] or m["reference_inf"])
        if m.get("floating") and finite and "cosine" in m:
            th = thresholds_for(name)
            for key, field, sense, show in _NUMERIC:
                limit = getattr(th, field)
                value = m.get(key)
                if limit is None:
                    continue
                if value is None:
                    fail(field, name, None, limit, f"{key} on {name!r} ({vs}) could not be computed")
                    continue
                bad = value < limit if sense == "min" else value > limit
                if bad:
                    op = "<" if sense == "min" else ">"
                    by = abs(value - limit)
                    fail(field, name, value, limit,
                         f"{key} on {name!r} ({vs}): {show(value)} {op} {sense} {show(limit)} (off by {by:.3g})")
        figures.append(
            OutputFigures(
                name=name,
                shape=tuple(m["shape"]),
                dtype=m["dtype"],
                cosine=m.get("cosine"),
                mean_rel_diff=m.get("mean_rel_diff"),
                rel_l2=m.get("rel_l2"),
                max_abs_diff=m.get("max_abs_diff"),
                mae=m.get("mae"),
                nan=m["nan"],
                inf=m["inf"],
                reference_nan=m["reference_nan"],
                reference_inf=m["reference_inf"],
                mismatched=m.get("mismatched"),
                passed=len(failures) == before,
            )
        )
    for name in required:
        if name not in measured:
            have = ", ".join(sorted(measured)) or "none"
            fail("missing-output", name, None, None,
                 f"smoke.outputs names {name!r} but forward() produced no such output (produced: {have})")
    return tuple(figures), failures


def judge_audio(spec: SmokeSpec, a: dict[str, Any], png: str | None) -> tuple[AudioFigures, list[FailedCheck]]:
    c = spec.audio
    kind = a["device"]
    failures: list[FailedCheck] = []
    where = f"audio generated on {kind}"

    def fail(check: str, value: Any, threshold: Any, message: str) -> None:
        failures.append(FailedCheck(f"audio.{check}", "audio", value, threshold, kind, message))

    if a["nan"] or a["inf"]:
        total = a["samples"] * a["channels"]
        fail("finite", a["nan"] + a["inf"], 0, f"{where} contains {a['nan']} NaN and {a['inf']} Inf of {total} samples")
    if c.sample_rate is not None and a["sample_rate"] != c.sample_rate:
        fail("sample_rate", a["sample_rate"], c.sample_rate, f"{where} is {a['sample_rate']} Hz, expected {c.sample_rate} Hz")
    d = a["duration_s"]
    if d <= 0:
        fail("duration", d, ">0", f"{where} is empty (0 samples)")
    elif d < c.duration_min_s:
        fail("duration_min_s", d, c.duration_min_s, f"{where} lasts {d:.3f} s < min {c.duration_min_s} s (truncated?)")
    if c.duration_max_s is not None and d > c.duration_max_s:
        fail("duration_max_s", d, c.duration_max_s, f"{where} lasts {d:.3f} s > max {c.duration_max_s} s (no stop?)")
    if d > 0 and a["rms"] < c.rms_min:
        fail("rms_min", a["rms"], c.rms_min, f"{where} is silent: RMS {a['rms']:.3g} < min {c.rms_min:.3g}")
    if c.rms_max is not None and a["rms"] > c.rms_max:
        fail("rms_max", a["rms"], c.rms_max, f"{where} is too loud: RMS {a['rms']:.3g} > max {c.rms_max:.3g}")
    if a["peak"] > c.peak_max:
        fail("peak_max", a["peak"], c.peak_max, f"{where} peaks at {a['peak']:.4g} > max {c.peak_max:.4g}")
    if a["clip_fraction"] > c.clip_fraction_max:
        fail("clip_fraction_max", a["clip_fraction"], c.clip_fraction_max,
             f"{where}: {a['clip_fraction']:.2%} of samples at |x| >= {a['clip_level']} > max {c.clip_fraction_max:.2%}")
    if c.min_tokens is not None and (a.get("n_tokens") is None or a["n_tokens"] < c.min_tokens):
        fail("min_tokens", a.get("n_tokens"), c.min_tokens,
             f"generate on {kind} reported {a.get('n_tokens')} tokens < min {c.min_tokens}")
    figures = AudioFigures(
        wav=a.get("wav"),
        png=png,
        sample_rate=a["sample_rate"],
        channels=a["channels"],
        samples=a["samples"],
        duration_s=d,
        rms=a["rms"],
        peak=a["peak"],
        clip_fraction=a["clip_fraction"],
        clip_level=a["clip_level"],
        n_tokens=a.get("n_tokens"),
        nan=a["nan"],
        inf=a["inf"],
        device=kind,
    )
    return figures, failures


def judge_imports(imports: dict[str, Any] | None, kind: str) -> tuple[list[FailedCheck], list[str]]:
    """The patched package must be what the script imported."""
    failures: list[FailedCheck] = []
    notes: list[str] = []
    if not imports:
        return failures, notes
    for name in imports.get("outside", []):
        path = imports["imported"].get(name)
        failures.append(
            FailedCheck("patched-import", name, path, imports["package_root"], kind,
                        f"module {name!r} was imported from {path}, not from the patched package "
                        f"{imports['package_root']}: the smoke test did not run the patched code")
        )
    if imports.get("provided") and not imports.get("imported"):
        notes.append(
            f"the smoke script imported none of the patched package's modules "
            f"({', '.join(imports['provided'])}) on {device_label(kind)}"
        )
    return failures, notes


def judge_ops(spec: SmokeSpec, ops: dict[str, Any] | None, kind: str) -> list[FailedCheck]:
    """The op report (porter.npu.ops.OpReport.to_dict()) against the spec's op maxima."""
    c = spec.ops
    if not ops or kind not in ("npu", "npu-sim"):
        return []
    failures: list[FailedCheck] = []
    missing, hazards = ops.get("missing", []), ops.get("dtype_hazards", [])
    version = ops.get("torch_npu", "?")
    if c.missing_max is not None and len(missing) > c.missing_max:
        names = ", ".join(u["op"] for u in missing)
        first = next((u["locations"][0] for u in missing if u.get("locations")), None)
        failures.append(FailedCheck(
            "ops.missing_max", names, len(missing), c.missing_max, kind,
            f"{len(missing)} ops reached the npu device on {kind} that torch_npu {version} has no NPU kernel for "
            f"(max {c.missing_max}): {names}" + (f"; first at {first}" if first else ""),
        ))
    if c.dtype_hazards_max is not None and len(hazards) > c.dtype_hazards_max:
        names = ", ".join(f"{h['op']} ({h['dtype']})" for h in hazards)
        failures.append(FailedCheck(
            "ops.dtype_hazards_max", names, len(hazards), c.dtype_hazards_max, kind,
            f"{len(hazards)} float64/complex op uses on {kind} (max {c.dtype_hazards_max}): {names}",
        ))
    return failures
