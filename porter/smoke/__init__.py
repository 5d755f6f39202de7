"""Smoke inference: prove that the patched model runs on the target device and computes what the
CPU computes, and that it makes plausible audio.

    from porter.smoke import SmokeSpec, run_smoke
    result = run_smoke(spec, recipe_dir=..., package_root=..., device="npu-sim", out_dir=...)
    result.passed, result.failures, result.to_markdown(), result.to_json()

Exports are loaded lazily: the smoke subprocess imports `porter.smoke.child` and
`porter.smoke.protocol` in environments that may pin other versions of porter's own
dependencies (pydantic), so importing this package must not pull them in.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "SmokeSpec": "porter.smoke.spec",
    "Thresholds": "porter.smoke.spec",
    "AudioChecks": "porter.smoke.spec",
    "OpChecks": "porter.smoke.spec",
    "run_smoke": "porter.smoke.runner",
    "SmokeInputError": "porter.smoke.runner",
    "SmokeResult": "porter.smoke.result",
    "FailedCheck": "porter.smoke.result",
    "Audio": "porter.smoke.protocol",
    "SmokeContext": "porter.smoke.protocol",
    "compare_runs": "porter.smoke.compare",
    "RunComparison": "porter.smoke.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'porter.smoke' has no attribute {name!r}")
