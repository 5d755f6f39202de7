"""The recipe's `smoke:` section: what to build, what to call, and what counts as a pass.

A recipe says *how* to exercise the patched model in a small Python file of porter's own (the
smoke script, next to the recipe); this section names that file and holds the data: inputs,
seed, dtype, the requirements of the environment the script runs in, and the pass thresholds.

    smoke:
      script: smoke/tiny_qwen2.py        # relative to the recipe file
      requires: ["transformers==4.47.1"] # pip requirements; [] runs on the host interpreter
      requires_no_deps: []               # installed with pip --no-deps after `requires`
      seed: 0
      dtype: float32                     # target dtype; the reference is always cpu float32
      run: [forward, generate]
      inputs: {prompt_len: 8, max_new_tokens: 16}
      thresholds: {mean_rel_diff_max: 0.01, cosine_min: 0.9999}
      outputs:
        logits: {max_abs_diff_max: 0.001}  # per-output overrides of `thresholds`
      audio: {sample_rate: 24000, duration_min_s: 0.05, duration_max_s: 30}
      ops: {missing_max: 0}              # on npu/npu-sim: no op without an NPU kernel
      timeout_s: 600                     # the whole subprocess; finite
      memory_limit_gb: 16                # the subprocess's memory (RLIMIT_DATA)

The schema is validated by the lead's recipe loader (frozen models, unknown keys are errors).
`SmokeSpec.check_files(recipe_dir)` reports the file-level problems (missing script or weights)
so the loader can list them with every other recipe error before anything runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Dtype = Literal["float32", "bfloat16", "float16"]
Call = Literal["forward", "generate"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Frozen):
    """Pass thresholds for one named output, target device against the cpu float32 reference.

    Unset (null) means "report, do not check". Definitions (a = target, b = reference, both
    upcast to float64 on the CPU, flattened):
      cosine          = <a, b> / (|a| |b|)                       (seed 002: > 0.9999)
      mean_rel_diff   = mean(|a - b|) / mean(|b|)                (seed 000: < 1% in fp32)
      rel_l2          = |a - b| / |b|
      max_abs_diff    = max |a - b|                              (seed 000 reported it)
      mae             = mean |a - b|                             (seed 002 reported it)
    NaN/Inf in either output always fails, whatever the thresholds.
    """

    cosine_min: float | None = Field(default=None, ge=-1.0, le=1.0)
    mean_rel_diff_max: float | None = Field(default=None, ge=0.0)
    rel_l2_max: float | None = Field(default=None, ge=0.0)
    max_abs_diff_max: float | None = Field(default=None, ge=0.0)
    mae_max: float | None = Field(default=None, ge=0.0)

    def merged(self, override: "Thresholds | None") -> "Thresholds":
        """`override`'s set fields win over this one's."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class AudioChecks(_Frozen):
    """Checks on the waveform returned by the script's `generate` (on the target device).

    Silence: RMS below `rms_min`. Clipping: the fraction of samples with |x| >= `clip_level`.
    NaN/Inf in the waveform always fails.
    """

    sample_rate: int | None = Field(default=None, gt=0, description="expected rate; null: any")
    duration_min_s: float = Field(default=0.0, ge=0.0)
    duration_max_s: float | None = Field(default=None, gt=0.0)
    rms_min: float = Field(default=1e-4, ge=0.0, description="below this the audio counts as silent")
    rms_max: float | None = Field(default=None, gt=0.0)
    peak_max: float = Field(default=1.0, gt=0.0)
    clip_level: float = Field(default=0.999, gt=0.0)
    clip_fraction_max: float = Field(default=0.01, ge=0.0, le=1.0)
    min_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AudioChecks":
        if self.duration_max_s is not None and self.duration_max_s < self.duration_min_s:
            raise ValueError(
                f"duration_max_s ({self.duration_max_s}) is below duration_min_s ({self.duration_min_s})"
            )
        if self.rms_max is not None and self.rms_max < self.rms_min:
            raise ValueError(f"rms_max ({self.rms_max}) is below rms_min ({self.rms_min})")
        return self


class OpChecks(_Frozen):
    """The aten ops that reach the npu device (npu and npu-sim runs), against the NPU kernel list
    of the pinned torch_npu release (porter.npu). Unset maxima: listed in the report, not checked."""

    record: bool = True
    missing_max: int | None = Field(default=None, ge=0, description="ops without an NPU kernel allowed")
    dtype_hazards_max: int | None = Field(default=None, ge=0, description="float64/complex uses allowed")


class SmokeSpec(_Frozen):
    """The `smoke:` section of a recipe."""

    script: str = Field(description="smoke script (Python, porter's own code), relative to the recipe file")
    requires: tuple[str, ...] = Field(
        default=(),
        description="pip requirement strings for the smoke environment; empty: the host interpreter",
    )
    requires_no_deps: tuple[str, ...] = Field(
        default=(),
        description="installed after `requires` with pip --no-deps (packages whose declared "
        "dependencies cannot live next to the host torch, e.g. a torchaudio pin)",
    )
    seed: int = Field(default=0, ge=0)
    dtype: Dtype = Field(default="float32", description="dtype of the model on the target device")
    run: tuple[Call, ...] = Field(default=("forward", "generate"))
    inputs: dict[str, Any] = Field(default_factory=dict, description="JSON-able values, given to the script as ctx.inputs")
    weights: str | None = Field(default=None, description="optional local path to real weights, as ctx.weights")
    timeout_s: float = Field(default=600.0, gt=0.0, le=86400.0, allow_inf_nan=False,
                             description="whole subprocess, build to last write; finite, at most a day")
    memory_limit_gb: float = Field(
        default=16.0, gt=0.0, le=4096.0, allow_inf_nan=False,
        description="memory the smoke process may use (GiB, RLIMIT_DATA); an allocation beyond it fails",
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables for the subprocess")
    thresholds: Thresholds = Field(
        default_factory=lambda: Thresholds(mean_rel_diff_max=0.01, cosine_min=0.9999),
        description="default for every output: seed 000 (mean rel diff < 1%) and seed 002 (cosine > 0.9999)",
    )
    outputs: dict[str, Thresholds] = Field(
        default_factory=dict,
        description="per-output overrides of `thresholds`; a listed output the script does not produce fails",
    )
    audio: AudioChecks = Field(default_factory=AudioChecks)
    ops: OpChecks = Field(default_factory=OpChecks)

    @field_validator("script")
    @classmethod
    def _script_is_python(cls, v: str) -> str:
        if not v.endswith(".py"):
            raise ValueError(f"smoke script must be a .py file, got {v!r}")
        return v

    @field_validator("run")
    @classmethod
    def _run_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("run must name at least one of: forward, generate")
        if len(set(v)) != len(v):
            raise ValueError(f"run lists a call twice: {list(v)}")
        return v

    @field_validator("requires", "requires_no_deps")
    @classmethod
    def _requirements_are_lines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for r in v:
            if not r.strip() or "\n" in r or r.strip().startswith("-"):
                raise ValueError(f"{r!r} is not a single requirement (no pip options, no blank entries)")
        return tuple(r.strip() for r in v)

    @field_validator("inputs")
    @classmethod
    def _inputs_json(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_jsonable(v, "inputs")
        return v

    @model_validator(mode="after")
    def _outputs_need_forward(self) -> "SmokeSpec":
        if self.outputs and "forward" not in self.run:
            raise ValueError("outputs: thresholds for named outputs need 'forward' in run")
        return self

    # -- paths --------------------------------------------------------------------------------
    def script_path(self, recipe_dir: Path) -> Path:
        return (Path(recipe_dir) / self.script).resolve()

    def weights_path(self, recipe_dir: Path) -> Path | None:
        if self.weights is None:
            return None
        return (Path(recipe_dir) / Path(self.weights).expanduser()).resolve()

    def thresholds_for(self, output: str) -> Thresholds:
        return self.thresholds.merged(self.outputs.get(output))

    def check_files(self, recipe_dir: Path) -> list[tuple[str, str]]:
        """File-level problems as (place, message) pairs, e.g. ("smoke.script", "... not found").

        The loader reports them with the other recipe errors (exit 2) before anything runs.
        """
        problems: list[tuple[str, str]] = []
        script = self.script_path(recipe_dir)
        if not script.is_file():
            problems.append(
                ("smoke.script", f"smoke script {script} not found; write it next to the recipe or fix the path")
            )
        weights = self.weights_path(recipe_dir)
        if weights is not None and not weights.exists():
            problems.append(
                ("smoke.weights", f"weights path {weights} does not exist; give a local file or directory, or remove 'weights'")
            )
        return problems


def _check_jsonable(v: Any, where: str) -> None:
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{where}: {v} is not a finite number")
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_jsonable(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            _check_jsonable(x, f"{where}.{k}")
        return
    raise ValueError(f"{where}: {type(v).__name__} is not a JSON value")
