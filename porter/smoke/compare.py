"""Compare two smoke runs' saved outputs: e.g. the patched package on `--device cpu` against the
unpatched upstream on `--device cpu` (issue 5: the port changes nothing for non-npu users).

Each smoke run saves its target's named outputs and float waveform in `smoke-outputs.npz` in its
out_dir. `compare_runs(a, b)` measures a against b (the reference) output by output with the
same figures as the device comparison; by default it demands bit equality (max abs diff 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from porter.smoke.checks import judge_pairs
from porter.smoke.metrics import compare
from porter.smoke.result import FailedCheck, OutputFigures, _md, _num, _pct, _fmt
from porter.smoke.runner import MEASURED, OUTPUTS
from porter.smoke.spec import Thresholds

EXACT = Thresholds(max_abs_diff_max=0.0)


@dataclass(frozen=True)
class RunComparison:
    passed: bool
    a: str
    b: str
    device: str  # the device both runs used, or "a-device/b-device"
    outputs: tuple[OutputFigures, ...]
    failures: tuple[FailedCheck, ...]

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"### Smoke outputs: {self.a} vs {self.b} on {self.device}: {'SAME' if self.passed else 'DIFFERENT'}",
            "",
            "| output | shape | cosine | mean rel diff | max abs diff | MAE | result |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in self.outputs:
            shape = "×".join(map(str, o.shape)) or "scalar"
            if o.mismatched is not None:
                lines.append(f"| {_md(o.name)} | {shape} | exact: {o.mismatched} differ | – | – | – | {'pass' if o.passed else '**FAIL**'} |")
            else:
                lines.append(
                    f"| {_md(o.name)} | {shape} | {_fmt(o.cosine, '.8f')} | {_pct(o.mean_rel_diff)} | "
                    f"{_fmt(o.max_abs_diff, '.3g')} | {_fmt(o.mae, '.3g')} | {'pass' if o.passed else '**FAIL**'} |"
                )
        for f in self.failures:
            lines.append(f"- {f.check} on {_md(f.output)}: {_md(f.message)} (measured {_num(f.measured)}, threshold {_num(f.threshold)})")
        return "\n".join(lines) + "\n"


def compare_runs(
    a: Path, b: Path, *, thresholds: Thresholds = EXACT, a_label: str = "a", b_label: str = "b"
) -> RunComparison:
    """Outputs saved by the run in out_dir `a` against those in out_dir `b` (the reference)."""
    arrays, devices = [], []
    for d in (Path(a), Path(b)):
        path = d / OUTPUTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved smoke outputs (did the smoke run reach forward/generate?)")
        with np.load(path) as z:
            arrays.append({k: z[k] for k in z.files})
        try:
            devices.append(json.loads((d / MEASURED).read_text())["device"]["kind"])
        except (OSError, ValueError, KeyError):
            devices.append("unknown")
    got, ref = arrays
    measured = {}
    for name in list(ref) + [n for n in got if n not in ref]:
        if name not in got or name not in ref:
            measured[name] = {"missing_in": "target" if name not in got else "reference"}
        else:
            measured[name] = compare(got[name], ref[name])
    device = devices[0] if devices[0] == devices[1] else "/".join(devices)
    outputs, failures = judge_pairs(
        measured, lambda _name: thresholds, target=a_label, reference=b_label, vs=f"{a_label} vs {b_label}", device=device
    )
    return RunComparison(not failures, a_label, b_label, device, outputs, tuple(failures))
