"""The smoke subprocess: build, run reference and target, measure, write JSON. Never judges.

Started by `porter.smoke.runner` as `python -c <boot> request.json` in the smoke environment
(a per-recipe venv or the host interpreter), with the patched package first on PYTHONPATH and,
for npu-sim, porter's `torch_npu` stand-in after it. Everything it found goes to
`<out_dir>/smoke-measured.json`; a Python exception in the script is recorded there with its phase
and traceback. The phase being worked on is kept in `<out_dir>/smoke-phase.txt` so that a timeout
or a hard crash can still be reported with where it happened.

Imports: stdlib, torch, numpy, soundfile and porter's own smoke/npu helpers; no pydantic, so a
smoke environment may pin whatever the model needs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import random
import resource
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

MEASURED = "smoke-measured.json"
PHASE = "smoke-phase.txt"
WAV = "smoke.wav"
OUTPUTS = "smoke-outputs.npz"  # the target's named outputs and waveform, for comparing two runs


class _Run:
    def __init__(self, req: Mapping[str, Any]) -> None:
        self.req = req
        self.out_dir = Path(req["out_dir"])
        self.device = req["device"]  # {kind, torch_device, simulated, description}
        self.kind: str = self.device["kind"]
        self.result: dict[str, Any] = {
            "format": 1,
            "device": dict(self.device),
            "dtype": req["dtype"],
            "seed": req["seed"],
            "phases": [],
            "outputs": {},
            "audio": None,
            "timings": {},
            "memory": None,
            "ops": None,
            "imports": None,
            "error": None,
            "notes": [],
            "saved_outputs": None,
            "values": {},
        }
        self.saved: dict[str, Any] = {}

    # -- bookkeeping --------------------------------------------------------------------------
    def phase(self, name: str) -> None:
        self.result["phases"].append(name)
        (self.out_dir / PHASE).write_text(name + "\n")

    def write(self) -> None:
        if self.saved:
            import numpy as np

            tmp = self.out_dir / (OUTPUTS + ".tmp.npz")
            np.savez(tmp, **self.saved)
            os.replace(tmp, self.out_dir / OUTPUTS)
            self.result["saved_outputs"] = OUTPUTS
        path = self.out_dir / MEASURED
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, allow_nan=False))
        os.replace(tmp, path)

    # -- the run ------------------------------------------------------------------------------
    def main(self) -> int:
        try:
            self._run()
        except BaseException as exc:  # the script's failure is a measurement, not a crash
            phase = self.result["phases"][-1] if self.result["phases"] else "start"
            self.result["error"] = {
                "phase": phase,
                "type": type(exc).__name__,
                "message": str(exc)[:2000],
                "traceback": traceback.format_exc()[-6000:],
            }
            self.write()
            return 3
        self.write()
        return 0

    def _run(self) -> None:
        self.phase("setup-device")
        self._setup_device()
        import torch

        from porter.smoke.protocol import SmokeContext, synchronize

        self.torch = torch
        self.result["env"] = {
            "python": sys.executable,
            "prefix": sys.prefix,
            "python_version": platform.python_version(),
            "torch": torch.__version__,
            "torch_file": torch.__file__,
        }

        self.phase("import-script")
        script = _load_script(Path(self.req["script"]))
        run = list(self.req["run"])
        for call in ["build", *run]:
            if not callable(getattr(script, call, None)):
                raise _ScriptError(
                    f"smoke script {self.req['script']} defines no {call}(…); "
                    + ("it is required" if call == "build" else f"define it or remove {call!r} from smoke.run")
                )

        def ctx(role: str) -> SmokeContext:
            on_target = role == "target"
            return SmokeContext(
                device=self.device["torch_device"] if on_target else "cpu",
                device_kind=self.kind if on_target else "cpu",
                dtype=self.req["dtype"] if on_target else "float32",
                role=role,
                seed=self.req["seed"],
                inputs=self.req["inputs"],
                weights=self.req.get("weights"),
                out_dir=str(self.out_dir),
            )

        timings = self.result["timings"]

        self.phase("build")
        self._seed()
        t0 = time.perf_counter()
        bctx = ctx("build")
        with torch.no_grad():
            reference = script.build(bctx)
        timings["build_s"] = time.perf_counter() - t0
        self._values("build", bctx)
        if not isinstance(reference, torch.nn.Module):
            raise _ScriptError(f"build() returned {type(reference).__name__}, expected a torch.nn.Module")
        reference.eval()
        self.result["parameters"] = int(sum(p.numel() for p in reference.parameters()))

        self.phase("copy-weights")
        target = self._clone(script, reference, ctx)

        if "forward" in run:  # the reference runs first, outside the op recording
            self.phase("forward-reference")
            rctx = ctx("reference")
            self._seed()
            t0 = time.perf_counter()
            with torch.no_grad(), rctx._call():
                ref_out = _named(script.forward(reference, rctx), rctx.records, "reference")
            timings["forward_reference_s"] = time.perf_counter() - t0
            self._values("reference", rctx)

        recorder = None
        if self.req.get("record_ops") and self.kind in ("npu", "npu-sim"):
            self.phase("start-op-recording")
            recorder = self._op_recorder()
        self._reset_peak()

        def recording() -> Any:  # re-entered per phase: porter's own copies are not recorded
            return recorder if recorder is not None else nullcontext()

        try:
            self.phase("place")
            t0 = time.perf_counter()
            tctx = ctx("target")
            with recording(), torch.no_grad():
                placed = script.place(target, tctx) if callable(getattr(script, "place", None)) else _default_place(target, tctx)
                target = placed if placed is not None else target
                synchronize(tctx.device)
            timings["place_s"] = time.perf_counter() - t0
            self._values("target", tctx)  # ctx.note() works in every phase, place included

            if "forward" in run:
                self.phase("forward-target")
                tctx = ctx("target")
                self._seed()
                t0 = time.perf_counter()
                with recording(), torch.no_grad(), tctx._call():
                    tgt_out = _named(script.forward(target, tctx), tctx.records, "target")
                    synchronize(tctx.device)
                timings["forward_s"] = time.perf_counter() - t0
                self._values("target", tctx)
                self.phase("compare")
                self._compare(tgt_out, ref_out)  # now, so a later failure keeps these figures

            if "generate" in run:
                self.phase("generate")
                gctx = ctx("target")
                self._seed()
                synchronize(gctx.device)
                t0 = time.perf_counter()
                with recording(), torch.no_grad(), gctx._call():
                    audio = script.generate(target, gctx)
                    synchronize(gctx.device)
                timings["generate_s"] = time.perf_counter() - t0
                self._values("target", gctx)
                self.phase("write-audio")
                self._audio(audio)
            self.result["memory"] = self._peak_memory()
        finally:  # the ops seen before a failure are the likeliest suspects: keep them
            if recorder is not None:
                try:
                    self.result["ops"] = self._op_report(recorder)
                except Exception as exc:  # noqa: BLE001 - the run's own error matters more
                    self.result["notes"].append(f"op report failed: {type(exc).__name__}: {exc}")

        self.phase("imports")
        self.result["imports"] = _patched_imports(Path(self.req["package_root"]))
        self.phase("done")

    def _values(self, role: str, context: Any) -> None:
        for name, value in context.values.items():
            self.result["values"].setdefault(name, {})[role] = _value(value)

    # -- devices ------------------------------------------------------------------------------
    def _setup_device(self) -> None:
        if self.device.get("simulated"):
            from porter.npu import sim

            sim.install()
        elif self.kind == "npu":
            import torch_npu  # noqa: F401  (the real Ascend backend registers the npu device)

    def _seed(self) -> None:
        torch = self.torch if hasattr(self, "torch") else __import__("torch")
        seed = int(self.req["seed"])
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:  # pragma: no cover
            pass
        torch.manual_seed(seed)
        for kind in ("npu", "cuda"):
            mod = getattr(torch, kind, None)
            if mod is not None and kind in self.kind and hasattr(mod, "manual_seed_all"):
                mod.manual_seed_all(seed)

    def _device_module(self) -> Any:
        if self.kind in ("npu", "npu-sim"):
            return getattr(self.torch, "npu", None)
        if self.kind == "cuda":
            return self.torch.cuda
        return None

    def _reset_peak(self) -> None:
        mod = self._device_module()
        if mod is not None and hasattr(mod, "reset_peak_memory_stats"):
            mod.reset_peak_memory_stats()

    def _peak_memory(self) -> dict[str, Any]:
        mod = self._device_module()
        if mod is not None and hasattr(mod, "max_memory_allocated"):
            name = "torch.npu.max_memory_allocated" if self.kind.startswith("npu") else "torch.cuda.max_memory_allocated"
            note = " (simulated accounting of CPU-backed npu tensors)" if self.kind == "npu-sim" else ""
            return {
                "bytes": int(mod.max_memory_allocated()),
                "source": name + note,
                "scope": "target model placement, forward and generate",
                "device": self.kind,
            }
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss if sys.platform == "darwin" else rss * 1024
        return {
            "bytes": int(rss_bytes),
            "source": "process peak RSS (getrusage)",
            "scope": "whole smoke process: interpreter, imports, reference and target",
            "device": self.kind,
        }

    def _clone(self, script: Any, reference: Any, ctx: Callable[[str], Any]) -> Any:
        """The target starts with exactly the reference's weights."""
        try:
            target = copy.deepcopy(reference)
            how = "deepcopy"
        except Exception as exc:  # some models cannot be deep-copied: build again, load weights
            self._seed()
            with self.torch.no_grad():
                target = script.build(ctx("build"))
            target.load_state_dict(reference.state_dict(), strict=True)
            how = f"second build() + load_state_dict(strict=True) (deepcopy failed: {type(exc).__name__})"
        target.eval()
        self.result["weights_copy"] = how
        return target

    # -- ops ----------------------------------------------------------------------------------
    def _op_recorder(self) -> Any:
        from porter.npu.ops import OpRecorder

        return OpRecorder()

    def _op_report(self, recorder: Any) -> Any:
        from porter.npu.kernels import load_kernels
        from porter.npu.ops import op_report

        recorded = getattr(recorder, "recorded", recorder)
        report = op_report(recorded, load_kernels())
        return _jsonable(report)

    # -- outputs ------------------------------------------------------------------------------
    def _compare(self, target: dict[str, Any], reference: dict[str, Any]) -> None:
        from porter.smoke.metrics import compare

        outputs: dict[str, Any] = {}
        for name in list(reference) + [n for n in target if n not in reference]:
            if name not in target or name not in reference:
                outputs[name] = {"missing_in": "target" if name not in target else "reference"}
                continue
            tgt = _to_numpy(target[name])
            outputs[name] = compare(tgt, _to_numpy(reference[name]))
            self.saved[name] = tgt
        self.result["outputs"] = outputs

    def _audio(self, audio: Any) -> None:
        import numpy as np
        import soundfile as sf

        from porter.smoke.metrics import audio_figures
        from porter.smoke.protocol import Audio

        if isinstance(audio, Mapping):
            audio = Audio(**audio)
        if not isinstance(audio, Audio):
            raise _ScriptError(f"generate() returned {type(audio).__name__}, expected ctx.Audio(waveform, sample_rate, n_tokens)")
        wav = _to_numpy(audio.waveform, keep_dtype=False)
        while wav.ndim > 2 and wav.shape[0] == 1:
            wav = wav[0]
        if wav.ndim == 1:
            wav = wav[None, :]
        if wav.ndim != 2:
            raise _ScriptError(f"generate(): waveform has shape {list(wav.shape)}; expected [samples] or [channels, samples]")
        self.saved["audio.waveform"] = wav.astype(np.float32)
        fig = audio_figures(wav, int(audio.sample_rate), float(self.req["clip_level"]))
        fig["n_tokens"] = None if audio.n_tokens is None else int(audio.n_tokens)
        fig["device"] = self.kind
        if wav.shape[-1] > 0 and int(audio.sample_rate) > 0:
            clean = np.clip(np.nan_to_num(wav, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            sf.write(self.out_dir / WAV, clean.T.astype(np.float32), int(audio.sample_rate), subtype="PCM_16")
            fig["wav"] = WAV
        else:
            fig["wav"] = None
        self.result["audio"] = fig


class _ScriptError(Exception):
    """The smoke script broke the protocol."""


def _load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("porter_smoke_script", path)
    if spec is None or spec.loader is None:
        raise _ScriptError(f"cannot load smoke script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.append(str(path.parent))  # helpers next to the script; after everything else
    spec.loader.exec_module(module)
    return module


def _default_place(model: Any, ctx: Any) -> Any:
    import torch

    model = model.to(ctx.device)
    if ctx.dtype != torch.float32:
        model = model.to(ctx.dtype)
    return model


def _named(value: Any, records: Mapping[str, Any], role: str) -> dict[str, Any]:
    """forward()'s return value and the ctx records, flattened to name -> tensor."""
    out: dict[str, Any] = {}
    if value is not None:
        _flatten("output", value, out, top=True)
    for name, rec in records.items():
        if name in out:
            raise _ScriptError(f"output name {name!r} both returned by forward() and recorded with ctx")
        _flatten(name, rec, out, top=False)
    if not out:
        raise _ScriptError(f"forward() on the {role} produced no tensors (return a dict of name -> tensor)")
    return out


def _flatten(name: str, value: Any, out: dict[str, Any], *, top: bool) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        out[name] = value
    elif isinstance(value, Mapping) or (hasattr(value, "items") and hasattr(value, "keys")):
        for k, v in value.items():
            _flatten(str(k) if top else f"{name}.{k}", v, out, top=False)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(f"{name}.{i}", v, out, top=False)
    # anything else (caches, ints, None) is not a numeric output


def _to_numpy(t: Any, keep_dtype: bool = True) -> Any:
    import numpy as np
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.is_floating_point() or t.is_complex() or not keep_dtype:
            t = t.to(device="cpu", dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
        else:
            t = t.to("cpu")
        return t.numpy()
    arr = np.asarray(t)
    if not keep_dtype:
        arr = arr.astype(np.float32)
    return arr


def _patched_imports(package_root: Path) -> dict[str, Any]:
    """For each top-level module the patched package provides: where it was imported from."""
    root = package_root.resolve()
    names = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name.startswith((".", "_")) or p.suffix in (".dist-info", ".egg-info"):
                continue
            if p.is_dir() and any(p.glob("*.py")):
                names.append(p.name)
            elif p.suffix == ".py":
                names.append(p.stem)
    imported: dict[str, str | None] = {}
    for name in names:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        f = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", []) or []), None)
        imported[name] = f
    return {
        "package_root": str(root),
        "provided": names,
        "imported": imported,
        "outside": sorted(n for n, f in imported.items() if f is None or not Path(f).resolve().is_relative_to(root)),
    }


def _value(v: Any) -> Any:
    """A ctx.note value as JSON: small tensors as numbers/lists, anything else as text."""
    try:
        import torch

        if isinstance(v, torch.Tensor):
            v = v.detach().to("cpu")
            return v.item() if v.numel() == 1 else (v.tolist() if v.numel() <= 64 else f"tensor{list(v.shape)}")
    except ImportError:  # pragma: no cover
        pass
    return _jsonable(v)


def _jsonable(obj: Any) -> Any:
    """Best effort: an op report object to plain JSON."""
    for attr in ("to_json", "model_dump", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return _jsonable(fn())
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def main(request_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    return _Run(req).main()
