"""The smoke result: one value, rendered to Markdown and JSON for the report.

Every figure carries the device that produced it. A simulated run is labelled
"npu-sim (CPU-backed simulation, not Ascend)" wherever its figures appear.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICE_LABELS = {
    "npu": "npu (Ascend)",
    "npu-sim": "npu-sim (CPU-backed simulation, not Ascend)",
    "cuda": "cuda",
    "cpu": "cpu",
}

SIM_NOTE = (
    "npu-sim figures come from porter's CPU-backed simulation of the npu device: they show that the "
    "patched code runs on the `npu` device type and computes what the CPU computes. They are not "
    "Ascend results: speed, memory and kernel numerics on real Ascend hardware are unmeasured."
)


def device_label(kind: str) -> str:
    return DEVICE_LABELS.get(kind, kind)


Number = float | int | str | None


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # npu | npu-sim | cuda | cpu
    torch_device: str
    simulated: bool
    description: str
    reason: str = ""  # why `auto` chose this device

    @property
    def label(self) -> str:
        return device_label(self.kind)


@dataclass(frozen=True)
class FailedCheck:
    check: str  # e.g. "mean_rel_diff_max", "finite", "audio.rms_min", "timeout"
    output: str  # the named output, "audio", or "-" for the run as a whole
    measured: Number
    threshold: Number
    device: str  # the device kind the measurement came from
    message: str  # which check, on which output, by how much

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OutputFigures:
    """Target device vs the cpu float32 reference, for one named output."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    cosine: float | None = None
    mean_rel_diff: float | None = None
    rel_l2: float | None = None
    max_abs_diff: float | None = None
    mae: float | None = None
    nan: int = 0
    inf: int = 0
    reference_nan: int = 0
    reference_inf: int = 0
    mismatched: int | None = None  # integer outputs: elements that differ
    passed: bool = True


@dataclass(frozen=True)
class AudioFigures:
    wav: str | None  # file name in out_dir
    png: str | None
    sample_rate: int
    channels: int
    samples: int
    duration_s: float
    rms: float
    peak: float
    clip_fraction: float
    clip_level: float
    n_tokens: int | None
    nan: int
    inf: int
    device: str


@dataclass(frozen=True)
class Perf:
    """Timings in seconds. `device` is the target; build always runs on the cpu."""

    device: str
    build_s: float | None = None
    place_s: float | None = None
    forward_s: float | None = None
    forward_reference_s: float | None = None  # cpu float32
    generate_s: float | None = None
    rtf: float | None = None  # generate_s / audio duration (lower is faster)
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None
    peak_memory_scope: str | None = None
    env_s: float | None = None  # creating or finding the smoke environment
    wall_s: float | None = None  # whole run_smoke, subprocess included


@dataclass(frozen=True)
class SmokeError:
    """The run did not finish normally: script exception, crash, timeout, environment."""

    stage: str  # "environment" | "timeout" | "crash" | "script"
    phase: str | None  # the child's phase when it stopped (build, forward-target, generate, ...)
    message: str
    stderr_tail: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    device: DeviceInfo
    dtype: str
    seed: int
    script: str
    out_dir: str
    failures: tuple[FailedCheck, ...] = ()
    outputs: tuple[OutputFigures, ...] = ()
    audio: AudioFigures | None = None
    perf: Perf | None = None
    ops: Any = None  # porter.npu.ops op report, as JSON (npu / npu-sim only)
    env: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, Any] | None = None
    error: SmokeError | None = None
    notes: tuple[str, ...] = ()
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # ctx.note: name -> {role: value}

    @property
    def device_label(self) -> str:
        return self.device.label

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = _plain(dataclasses.asdict(self))
        d["device"]["label"] = self.device.label
        d["schema"] = "porter.smoke/1"
        if self.device.simulated:
            d["simulation_note"] = SIM_NOTE
        return d

    # -- Markdown -----------------------------------------------------------------------------
    def to_markdown(self, relative_to: Path | None = None) -> str:
        """`relative_to`: the directory of the Markdown file, for the picture and WAV links
        (default: out_dir)."""
        dev = self.device.label
        kind = self.device.kind
        lines = [f"### Smoke test: {'PASSED' if self.passed else 'FAILED'} on {dev}", ""]
        lines.append(
            f"Script `{self.script}`, seed {self.seed}, target dtype {self.dtype}, "
            f"reference cpu float32; device: {self.device.description or dev}"
            + (f" ({self.device.reason})" if self.device.reason else "")
            + "."
        )
        lines.append("")
        if self.device.simulated:
            lines += [f"> {SIM_NOTE}", ""]

        if self.failures:
            lines += ["#### Failed checks", "", "| check | output | measured | threshold | device | what |", "|---|---|---|---|---|---|"]
            for f in self.failures:
                lines.append(
                    f"| {f.check} | {_md(f.output)} | {_num(f.measured)} | {_num(f.threshold)} | {device_label(f.device)} | {_md(f.message)} |"
                )
            lines.append("")

        if self.error is not None:
            e = self.error
            where = f" during `{e.phase}`" if e.phase else ""
            lines += [f"#### Run stopped: {e.stage}{where}", "", _md(e.message), ""]
            tail = (e.traceback or e.stderr_tail).strip()
            if tail:
                lines += ["```", tail[-3000:], "```", ""]

        if self.outputs:
            lines += [
                f"#### Numerics: {kind} {self.dtype} vs cpu float32 reference (same weights, same inputs)",
                "",
                "| output | shape | cosine | mean rel diff | rel L2 | max abs diff | MAE | NaN/Inf | device | result |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for o in self.outputs:
                shape = "×".join(map(str, o.shape)) or "scalar"
                bad = f"{o.nan}/{o.inf}" + (f" (ref {o.reference_nan}/{o.reference_inf})" if o.reference_nan or o.reference_inf else "")
                if o.mismatched is not None:
                    figures = f"exact: {o.mismatched} differ | – | – | – | –"
                else:
                    figures = (
                        f"{_fmt(o.cosine, '.8f')} | {_pct(o.mean_rel_diff)} | {_pct(o.rel_l2)} | "
                        f"{_fmt(o.max_abs_diff, '.3g')} | {_fmt(o.mae, '.3g')}"
                    )
                lines.append(
                    f"| {_md(o.name)} | {shape} | {figures} | {bad} | {kind} vs cpu | {'pass' if o.passed else '**FAIL**'} |"
                )
            lines.append("")

        if self.values:
            lines += [
                "#### Values reported by the script (expected to depend on the device; not compared)",
                "",
                f"| value | build (cpu) | cpu reference | {kind} |",
                "|---|---|---|---|",
            ]
            for name, by_role in self.values.items():
                cells = [_md(json.dumps(by_role[r])) if r in by_role else "–" for r in ("build", "reference", "target")]
                lines.append(f"| {_md(name)} | " + " | ".join(cells) + " |")
            lines.append("")

        if self.audio is not None:
            a = self.audio
            base = Path(relative_to) if relative_to is not None else Path(self.out_dir)
            lines += [
                f"#### Audio generated on {dev}",
                "",
                "| sample rate | channels | duration | RMS | peak | clipped | tokens | NaN/Inf | file |",
                "|---|---|---|---|---|---|---|---|---|",
                f"| {a.sample_rate} Hz | {a.channels} | {a.duration_s:.3f} s | {a.rms:.4g} | {a.peak:.4g} | "
                f"{a.clip_fraction:.2%} (\\|x\\| ≥ {a.clip_level}) | {a.n_tokens if a.n_tokens is not None else '–'} | "
                f"{a.nan}/{a.inf} | {self._link(a.wav, base)} |",
                "",
            ]
            if a.png:
                lines += [f"![waveform and spectrogram, generated on {kind}]({self._rel(a.png, base)})", ""]

        if self.perf is not None:
            p = self.perf
            rows = [
                ("model build (random init or load)", p.build_s, "s", "cpu"),
                ("move to device", p.place_s, "s", kind),
                ("forward (reference)", p.forward_reference_s, "s", "cpu"),
                ("forward", p.forward_s, "s", kind),
                ("generate (first call, incl. warm-up)", p.generate_s, "s", kind),
                ("real-time factor (generate time / audio duration)", p.rtf, "", kind),
                ("tokens/s", p.tokens_per_s, "", kind),
            ]
            lines += [f"#### Performance on {dev}", "", "| figure | value | device |", "|---|---|---|"]
            for label, value, unit, d in rows:
                if value is not None:
                    lines.append(f"| {label} | {_fmt(value, '.3f')}{(' ' + unit) if unit else ''} | {d} |")
            if p.peak_memory_bytes is not None:
                lines.append(
                    f"| peak memory: {p.peak_memory_source}; {p.peak_memory_scope} | {p.peak_memory_bytes / 2**20:.1f} MiB | {kind} |"
                )
            if p.env_s is not None:
                created = "created" if self.env.get("created") else "reused"
                lines.append(f"| smoke environment ({created}) | {p.env_s:.3f} s | host |")
            if p.wall_s is not None:
                lines.append(f"| whole smoke run (subprocess included) | {p.wall_s:.3f} s | {kind} |")
            lines.append("")

        if self.ops is not None:
            lines += [f"#### Ops that reached the npu device on {dev}", ""]
            lines += [_ops_markdown(self.ops, kind), ""]

        env = self.env
        if env:
            where = f"venv `{env.get('venv')}`" if env.get("venv") else "host interpreter"
            req = ", ".join(
                [f"`{r}`" for r in env.get("requires", [])] + [f"`{r}` (--no-deps)" for r in env.get("requires_no_deps", [])]
            ) or "none"
            lines += ["#### Environment", "", f"- {where} (`{env.get('python')}`); requirements: {req}"]
            if env.get("torch"):
                lines.append(f"- torch {env['torch']}, Python {env.get('python_version', '?')}")
            if self.imports and self.imports.get("imported"):
                for name, path in self.imports["imported"].items():
                    lines.append(f"- `{name}` imported from `{path}`")
            lines.append("")
        for n in self.notes:
            lines.append(f"- note: {n}")
        return "\n".join(lines).rstrip() + "\n"

    def summary(self) -> str:
        """One line for the terminal."""
        head = f"smoke {'passed' if self.passed else 'FAILED'} on {self.device.label}"
        if self.failures:
            return head + ": " + "; ".join(f.message for f in self.failures[:3]) + (
                f" (+{len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
            )
        return head

    def _rel(self, name: str, base: Path) -> str:
        return Path(os.path.relpath(Path(self.out_dir) / name, base)).as_posix()

    def _link(self, name: str | None, base: Path) -> str:
        return f"[{name}]({self._rel(name, base)})" if name else "–"


def _ops_markdown(ops: Any, dev: str) -> str:
    """porter.npu.ops.OpReport.to_dict(), as tables."""
    if not isinstance(ops, dict) or "ops" not in ops:
        return _md(str(ops))
    missing, hazards, every = ops.get("missing", []), ops.get("dtype_hazards", []), ops.get("ops", [])
    lines = [
        f"{ops.get('calls', '?')} op calls, {ops.get('distinct_ops', len(every))} distinct ops reached the npu device "
        f"on {dev}, checked against the NPU kernels of torch_npu {ops.get('torch_npu', '?')}: "
        f"**{len(missing)} without an NPU kernel**, **{len(hazards)} dtype hazards**.",
        "",
    ]
    if missing:
        lines += [
            "Ops without an NPU kernel (on Ascend they fail, or fall back to the CPU and are silently slow):",
            "",
            "| op | calls | input dtypes | model code | why |",
            "|---|---|---|---|---|",
        ]
        for u in missing:
            lines.append(f"| `{u['op']}` | {u['count']} | {_dtypes(u['dtypes'])} | {_where(u['locations'])} | {_md(u['detail'])} |")
        lines.append("")
    if hazards:
        lines += ["Dtype hazards:", "", "| op | dtype | calls | model code | why |", "|---|---|---|---|---|"]
        for h in hazards:
            lines.append(f"| `{h['op']}` | {h['dtype']} | {h['count']} | {_where(h['locations'])} | {_md(h['reason'])} |")
        lines.append("")
    if every:
        lines += [
            f"<details><summary>All {len(every)} ops on {dev}</summary>",
            "",
            "| op | status | calls | input dtypes | model code |",
            "|---|---|---|---|---|",
        ]
        for u in sorted(every, key=lambda u: -u["count"]):
            lines.append(f"| `{u['op']}` | {u['status']} | {u['count']} | {_dtypes(u['dtypes'])} | {_where(u['locations'])} |")
        lines += ["", "</details>"]
    return "\n".join(lines)


def _dtypes(groups: list[list[str]]) -> str:
    shown = ["(" + ", ".join(g) + ")" for g in groups[:3]]
    return _md(" ".join(shown) + (f" +{len(groups) - 3}" if len(groups) > 3 else "")) or "–"


def _where(locations: list[str]) -> str:
    if not locations:
        return "–"
    return _md("; ".join(f"`{x}`" for x in locations[:2]) + (f" (+{len(locations) - 2})" if len(locations) > 2 else ""))


def _plain(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.4%}"


def _num(x: Number) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return format(x, ".6g")
    return str(x)
