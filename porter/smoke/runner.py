"""`run_smoke`: the one entry point `porter apply` calls.

    environment (cached venv or host)  ->  subprocess (porter.smoke.child)  ->  smoke-measured.json
        ->  judge against the spec (porter.smoke.checks)  ->  picture  ->  SmokeResult (+ smoke.json)

Results travel as a JSON file, never as parsed stdout. A crash, a timeout or a failed install is
a failed smoke result with the tail of stderr, never a porter traceback. Bad input (a missing
script or weights path, a package root that is not a directory) raises `SmokeInputError` before
anything runs: the caller reports it like any other recipe error (exit 2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import porter
from porter.errors import UsageError
from porter.smoke.checks import judge_audio, judge_imports, judge_ops, judge_outputs
from porter.smoke.env import SmokeEnv, ensure_env
from porter.smoke.result import (
    DeviceInfo,
    FailedCheck,
    Perf,
    SmokeError,
    SmokeResult,
    device_label,
)
from porter.smoke.spec import SmokeSpec

MEASURED = "smoke-measured.json"  # written by the child
PHASE = "smoke-phase.txt"
REQUEST = "smoke-request.json"
RESULT = "smoke.json"
WAV = "smoke.wav"
PNG = "smoke.png"
STDOUT = "smoke.stdout.log"
STDERR = "smoke.stderr.log"
OUTPUTS = "smoke-outputs.npz"  # the target's named outputs, for porter.smoke.compare.compare_runs
_OURS = (MEASURED, PHASE, REQUEST, RESULT, WAV, PNG, STDOUT, STDERR, OUTPUTS)

_BOOT = (
    "import sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
    "sys.path.append({porter_parent!r})\n"
    "from porter.smoke.child import main\n"
    "sys.exit(main(sys.argv[1]))\n"
)


class SmokeInputError(UsageError):
    """The smoke section points at something that is not there, or the device cannot be had.

    A UsageError: the CLI exits 2. `problems`: (place, message) pairs.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {msg}" for where, msg in problems))


def resolve(device: str) -> DeviceInfo:
    """porter.npu's device choice, as the smoke result's DeviceInfo."""
    from porter.npu.device import DeviceUnavailable, resolve_device

    try:
        c = resolve_device(device)
    except DeviceUnavailable as exc:
        raise SmokeInputError([("device", str(exc))]) from None
    return DeviceInfo(
        kind=c.kind,
        torch_device=c.torch_device,
        simulated=bool(c.simulated),
        description=c.description,
        reason=getattr(c, "reason", ""),
    )


def run_smoke(spec: SmokeSpec, *, recipe_dir: Path, package_root: Path, device: str, out_dir: Path) -> SmokeResult:
    """Run the recipe's smoke test against the patched package; never raises for a failed run.

    recipe_dir    the recipe file's directory (the script and weights paths are relative to it)
    package_root  the directory that contains the patched top-level package(s); first on PYTHONPATH
    device        auto | npu | npu-sim | cuda | cpu (resolved by porter.npu.device.resolve_device)
    out_dir       where smoke.wav, smoke.png, smoke.json and the logs go
    """
    t_start = time.perf_counter()
    recipe_dir, package_root, out_dir = Path(recipe_dir), Path(package_root), Path(out_dir)
    problems = spec.check_files(recipe_dir)
    if not package_root.is_dir():
        problems.append(("package_root", f"patched package directory {package_root} does not exist; run the rewrite first"))
    if problems:
        raise SmokeInputError(problems)
    dev = resolve(device)  # SmokeInputError when the device cannot be had here

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _OURS:  # never leave a previous run's figures next to this one's
        (out_dir / name).unlink(missing_ok=True)

    base = dict(device=dev, dtype=spec.dtype, seed=spec.seed, script=spec.script, out_dir=str(out_dir.resolve()))
    env = ensure_env(spec.requires, spec.requires_no_deps, timeout_s=max(900.0, spec.timeout_s))
    if env.error is not None:
        return _finish(
            out_dir,
            SmokeResult(
                passed=False,
                failures=(FailedCheck("environment", "-", None, None, "cpu",
                                      f"could not create the smoke environment: {env.error.splitlines()[0]}"),),
                error=SmokeError("environment", None, env.error, stderr_tail=env.error),
                env=env.to_json(),
                perf=Perf(device=dev.kind, env_s=env.seconds, wall_s=time.perf_counter() - t_start),
                **base,
            ),
        )

    request = {
        "script": str(spec.script_path(recipe_dir)),
        "package_root": str(package_root.resolve()),
        "device": {"kind": dev.kind, "torch_device": dev.torch_device, "simulated": dev.simulated,
                   "description": dev.description},
        "dtype": spec.dtype,
        "seed": spec.seed,
        "run": list(spec.run),
        "inputs": spec.inputs,
        "weights": str(spec.weights_path(recipe_dir)) if spec.weights else None,
        "record_ops": spec.ops.record,
        "clip_level": spec.audio.clip_level,
        "out_dir": str(out_dir.resolve()),
    }
    (out_dir / REQUEST).write_text(json.dumps(request, indent=1))

    rc, timed_out, elapsed = _spawn(env, request, dev, spec, out_dir)
    stderr_tail = _tail(out_dir / STDERR)
    phase = _read(out_dir / PHASE)
    measured = _load_measured(out_dir / MEASURED)

    failures: list[FailedCheck] = []
    notes: list[str] = []
    error: SmokeError | None = None
    kind = dev.kind
    if timed_out:
        failures.append(FailedCheck("timeout", "-", round(elapsed, 1), spec.timeout_s, kind,
                                    f"smoke subprocess did not finish within {spec.timeout_s:g} s on {kind}"
                                    + (f" (it was in phase {phase!r})" if phase else "")))
        error = SmokeError("timeout", phase, f"killed after {elapsed:.1f} s", stderr_tail=stderr_tail)
    elif measured is None:
        failures.append(FailedCheck("crash", "-", _exit_text(rc), 0, kind,
                                    f"smoke subprocess on {kind} {_exit_text(rc)} without results"
                                    + (f" in phase {phase!r}" if phase else "")))
        error = SmokeError("crash", phase, f"subprocess {_exit_text(rc)}", stderr_tail=stderr_tail)
    elif measured.get("error"):
        e = measured["error"]
        failures.append(FailedCheck("script-error", e["phase"], f"{e['type']}: {e['message'][:300]}", None, kind,
                                    f"{e['type']} in phase {e['phase']!r} on {kind}: {e['message'][:300]}"))
        error = SmokeError("script", e["phase"], f"{e['type']}: {e['message']}", stderr_tail=stderr_tail,
                           traceback=e.get("traceback", ""))

    outputs: tuple = ()
    audio = None
    perf = Perf(device=kind, env_s=env.seconds)
    env_json = env.to_json()
    imports = None
    ops = None
    values: dict = {}
    if measured is not None:
        values = measured.get("values") or {}
        env_json.update({k: v for k, v in (measured.get("env") or {}).items() if k != "python"})
        outputs, out_failures = judge_outputs(spec, measured.get("outputs") or {}, kind, spec.dtype)
        failures += out_failures
        if measured.get("audio"):
            png = _picture(out_dir, measured["audio"], dev, notes)
            audio, audio_failures = judge_audio(spec, measured["audio"], png)
            failures += audio_failures
        elif "generate" in spec.run and not measured.get("error"):
            failures.append(FailedCheck("audio", "audio", None, None, kind, f"generate ran on {kind} but no audio came back"))
        imports = measured.get("imports")
        imp_failures, imp_notes = judge_imports(imports, kind)
        failures += imp_failures
        notes += imp_notes
        ops = measured.get("ops")
        failures += judge_ops(spec, ops, kind)
        notes += [str(n) for n in measured.get("notes") or []]
        perf = _perf(measured, kind, env, audio)
        if measured.get("weights_copy", "deepcopy") != "deepcopy":
            notes.append(f"target weights: {measured['weights_copy']}")

    wall = time.perf_counter() - t_start
    perf = Perf(**{**perf.__dict__, "wall_s": wall})
    result = SmokeResult(
        passed=not failures,
        failures=tuple(failures),
        outputs=outputs,
        audio=audio,
        perf=perf,
        ops=ops,
        env=env_json,
        imports=imports,
        error=error,
        notes=tuple(notes),
        values=values,
        **base,
    )
    return _finish(out_dir, result)


# -- subprocess ----------------------------------------------------------------------------------
def _child_env(dev: DeviceInfo, spec: SmokeSpec, package_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    if dev.simulated:
        from porter.npu.sim import sim_env

        env = sim_env(env)  # `import torch_npu` is porter's stand-in; no backend autoload
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CUDA host must behave like an Ascend host
    # the patched package first, so its import names resolve to the patched code
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(package_root.resolve()), env.get("PYTHONPATH", "")] if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ inside the emitted package
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    env.setdefault("HF_HUB_OFFLINE", "1")  # a smoke test never downloads
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.update(spec.env)
    return env


def _spawn(env: SmokeEnv, request: dict[str, Any], dev: DeviceInfo, spec: SmokeSpec, out_dir: Path) -> tuple[int | None, bool, float]:
    boot = _BOOT.format(porter_parent=str(Path(porter.__file__).resolve().parent.parent))
    cmd = [env.python, "-c", boot, str((out_dir / REQUEST).resolve())]
    t0 = time.perf_counter()
    with open(out_dir / STDOUT, "wb") as out, open(out_dir / STDERR, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=str(out_dir),
            env=_child_env(dev, spec, Path(request["package_root"])),
            start_new_session=True,  # its own process group: a timeout kills the whole tree
        )
        try:
            rc = proc.wait(timeout=spec.timeout_s)
            return rc, False, time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return None, True, time.perf_counter() - t0


def _exit_text(rc: int | None) -> str:
    if rc is None:
        return "was killed"
    if rc < 0:
        try:
            return f"died of signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"died of signal {-rc}"
    return f"exited with code {rc}"


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _load_measured(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == 1 else None


# -- figures -------------------------------------------------------------------------------------
def _perf(measured: dict[str, Any], kind: str, env: SmokeEnv, audio: Any) -> Perf:
    t = measured.get("timings") or {}
    mem = measured.get("memory") or {}
    gen = t.get("generate_s")
    rtf = gen / audio.duration_s if gen and audio is not None and audio.duration_s > 0 else None
    tps = audio.n_tokens / gen if gen and audio is not None and audio.n_tokens else None
    return Perf(
        device=kind,
        build_s=t.get("build_s"),
        place_s=t.get("place_s"),
        forward_s=t.get("forward_s"),
        forward_reference_s=t.get("forward_reference_s"),
        generate_s=gen,
        rtf=rtf,
        tokens_per_s=tps,
        peak_memory_bytes=mem.get("bytes"),
        peak_memory_source=mem.get("source"),
        peak_memory_scope=mem.get("scope"),
        env_s=env.seconds,
    )


def _picture(out_dir: Path, audio: dict[str, Any], dev: DeviceInfo, notes: list[str]) -> str | None:
    if not audio.get("wav"):
        return None
    try:
        from porter.smoke.plot import plot_audio

        plot_audio(out_dir / audio["wav"], out_dir / PNG,
                   f"generated on {device_label(dev.kind)}: {audio['duration_s']:.2f} s at {audio['sample_rate']} Hz")
        return PNG
    except Exception as exc:  # a missing matplotlib must not hide the smoke figures
        notes.append(f"no waveform picture: {type(exc).__name__}: {exc}")
        return None


def _finish(out_dir: Path, result: SmokeResult) -> SmokeResult:
    tmp = out_dir / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1, allow_nan=False))
    os.replace(tmp, out_dir / RESULT)
    return result
