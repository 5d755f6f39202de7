"""On a CUDA machine: the port changes nothing for CUDA users.

For each seed recipe whose upstream comes from PyPI (voxcpm2, csm_1b, higgs_audio_v2) this applies
the recipe (no smoke), unpacks the unpatched upstream beside it, and runs the recipe's own smoke
script with `--device cuda` against both trees (same seed, same tiny random model, same inputs):

* outputs identical: every saved output of the patched run equals the upstream run's, bit for bit
  (porter.smoke.compare_runs with exact thresholds);
* compile still on where upstream compiles: voxcpm2's `optimize()` compiles the same modules in
  both trees (its smoke script asserts that nothing is compiled, which holds on npu and cpu only,
  so the CUDA run uses a place() that records what was compiled instead: bench/cuda_smoke/); CSM's
  `generate()` would auto-compile the backbone with a static cache in both trees
  (`auto_compile_with_static_cache`); higgs keeps its CUDA-graph capture gate byte-identical
  (checked in the source) and runs its smoke unchanged.

Run it where `torch.cuda.is_available()` is true, with porter installed (`pip install -e .[smoke]`
or porter's wheel). Without CUDA it exits 2 and says so; nothing is measured. Figures are printed
with the device they came from. Not run in this project so far: no GPU was lent to its sessions.

    python bench/bench_cuda_equivalence.py [--recipes voxcpm2 csm_1b higgs_audio_v2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("voxcpm2", "csm_1b", "higgs_audio_v2")
CUDA_SMOKE = Path(__file__).resolve().parent / "cuda_smoke"

# voxcpm2's upstream imports torchaudio at import time; where the smoke environment's torchaudio
# cannot load next to the host torch, upstream needs this stand-in to run at all (VoxCPM2 never
# calls torchaudio; the tests use the same stand-in).
TORCHAUDIO_STAND_IN = '''def __getattr__(name):
    raise RuntimeError(f"torchaudio.{name} used: bench stand-in without audio I/O")
'''


def cuda_or_exit() -> str:
    try:
        import torch
    except ImportError:
        sys.exit("bench_cuda_equivalence: torch is not installed; install the host's CUDA build of torch")
    if not torch.cuda.is_available():
        print("bench_cuda_equivalence: no CUDA device here (torch.cuda.is_available() is False); this benchmark"
              " proves CUDA behaviour is unchanged and needs an NVIDIA GPU. Nothing was measured.", file=sys.stderr)
        sys.exit(2)
    return f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def upstream_tree(build, dest: Path, recipe: str) -> Path:
    for rel, src in build.tree.files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    if recipe == "voxcpm2":
        (dest / "torchaudio").mkdir(exist_ok=True)
        (dest / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STAND_IN)
    return dest


def smoke_spec(recipe: str, spec):
    """The recipe's smoke spec, as the recipe's tests run it against the unpatched upstream;
    voxcpm2's place() is swapped for one that records compilation."""
    if recipe == "voxcpm2":
        return spec.model_copy(update={"script": str(CUDA_SMOKE / "voxcpm2.py")})
    # Both trees without the torchaudio wheel that cannot load next to the host torch, where the
    # unpatched transformers / boson_multimodal import at all (as the recipes' tests compare on cpu).
    return spec.model_copy(update={"requires_no_deps": ()})


def compile_state(recipe: str, out: Path) -> object:
    if recipe == "voxcpm2":
        values = json.loads((out / "smoke-measured.json").read_text()).get("values", {})
        return values.get("compiled_by_optimize", {}).get("target")
    if recipe == "csm_1b":
        path = out / "csm_1b-audio-scale.json"
        return json.loads(path.read_text()).get("auto_compile_with_static_cache") if path.is_file() else None
    return None


def run(recipe: str, work: Path, device: str = "cuda") -> dict:
    from porter import port
    from porter.recipe import load_recipe
    from porter.smoke import run_smoke
    from porter.smoke.compare import compare_runs

    path = ROOT / "recipes" / f"{recipe}.yaml"
    loaded = load_recipe(path)
    t0 = time.perf_counter()
    applied = port.apply(path, out=work / "patched", smoke=False)
    if applied.exit_code != 0:
        return {"recipe": recipe, "error": "; ".join(applied.messages)}
    upstream = upstream_tree(applied.build, work / "upstream" / recipe, recipe)
    spec = smoke_spec(recipe, loaded.recipe.smoke)
    runs, states, passed = {}, {}, {}
    for label, root in (("patched", applied.target), ("upstream", upstream)):
        out = work / "smoke" / recipe / label
        result = run_smoke(spec, recipe_dir=path.parent, package_root=root, device=device, out_dir=out)
        passed[label] = result.passed
        runs[label] = out
        states[label] = compile_state(recipe, out)
    try:
        cmp = compare_runs(runs["patched"], runs["upstream"], a_label="patched", b_label="upstream")
        identical, detail = cmp.passed, cmp.to_markdown()
    except FileNotFoundError as exc:
        identical, detail = False, str(exc)
    return {
        "recipe": recipe,
        "smoke_passed": passed,
        "outputs_identical": identical,
        "compile": states,
        "compile_same": states["patched"] == states["upstream"],
        "seconds": round(time.perf_counter() - t0, 1),
        "detail": detail,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--out", type=Path, default=None, help="keep the trees and smoke outputs here")
    ap.add_argument("--plumbing-check-on-cpu", action="store_true",
                    help="run the same steps with --device cpu to check this script itself (proves nothing about CUDA)")
    args = ap.parse_args(argv)
    if args.plumbing_check_on_cpu:
        kind, device = "cpu", "cpu (plumbing check of this script: not the CUDA proof)"
    else:
        kind, device = "cuda", cuda_or_exit()
    work = args.out or Path(tempfile.mkdtemp(prefix="porter-cuda-eq-"))
    print(f"device: {device}; host: {platform.machine()}, {platform.system()}")
    results = [run(r, work / r, kind) for r in args.recipes]
    ok = True
    for r in results:
        if "error" in r:
            ok = False
            print(f"{r['recipe']}: apply failed: {r['error']}")
            continue
        good = r["outputs_identical"] and r["compile_same"] and all(r["smoke_passed"].values())
        ok &= good
        print(f"{r['recipe']}: outputs identical patched vs upstream on {kind}: {r['outputs_identical']};"
              f" compile patched={r['compile']['patched']!r} upstream={r['compile']['upstream']!r};"
              f" smoke passed {r['smoke_passed']}; {r['seconds']} s")
        if not good:
            print(r["detail"])
    (work / "bench_cuda_equivalence.json").write_text(json.dumps({"device": device, "results": results}, indent=1))
    print(f"results: {work / 'bench_cuda_equivalence.json'} ({'all equivalent' if ok else 'DIFFERENCES'}, device: {kind})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
