"""CSM-1B in bfloat16, as seed 002 ran it on Ascend: the recipe's smoke test with the target in
bfloat16, against the cpu float32 reference (seed 002's metric: cosine, relative error, MAE).

    python bench/bench_recipe_csm_1b_bf16.py [--device npu-sim|npu|cpu] [--out DIR]

Needs `porter apply recipes/csm_1b.yaml` to have written patched_models/csm_1b (or --package).
Prints one line per output with the device it came from. On npu-sim, bf16 ops run as the CPU's
bf16 kernels: the figures show what bf16 costs on this model, not Ascend's bf16 numerics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from porter.recipe import load_recipe
from porter.smoke import run_smoke
from porter.smoke.spec import Thresholds

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "csm_1b.yaml"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="npu-sim")
    ap.add_argument("--package", type=Path, default=ROOT / "patched_models" / "csm_1b")
    ap.add_argument("--out", type=Path, default=Path("/tmp/porter-bench-csm-bf16"))
    a = ap.parse_args()
    spec = load_recipe(RECIPE).recipe.smoke
    # report, do not judge: bf16 against fp32 is what is being measured
    spec = spec.model_copy(update={"dtype": "bfloat16", "thresholds": Thresholds(), "outputs": {}})
    t0 = time.perf_counter()
    result = run_smoke(spec, recipe_dir=RECIPE.parent, package_root=a.package.resolve(), device=a.device, out_dir=a.out)
    wall = time.perf_counter() - t0
    dev = result.device.kind
    for o in result.outputs:
        print(f"{o.name:16s} {dev} bfloat16 vs cpu float32: cosine {o.cosine:.8f}  rel_l2 {o.rel_l2:.4%}  "
              f"mean_rel_diff {o.mean_rel_diff:.4%}  MAE {o.mae:.3g}  max_abs {o.max_abs_diff:.3g}")
    if result.audio is not None:
        scale = json.loads((a.out / "csm_1b-audio-scale.json").read_text())
        print(f"audio            {dev} bfloat16: {result.audio.duration_s:.2f} s at {result.audio.sample_rate} Hz, "
              f"raw RMS {scale['raw_rms']:.4f} raw peak {scale['raw_peak']:.3f} (scaled by {scale['scale']:.4f})")
    print(f"smoke {'passed' if result.passed else 'FAILED'} on {dev}; whole run {wall:.1f} s (this host, {dev})")
    for f in result.failures:
        print("  failure:", f.message)
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
