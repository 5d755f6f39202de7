"""`run_smoke`: the one entry point `porter apply` calls.

    environment (cached venv or host)  ->  subprocess (porter.smoke.child)  ->  smoke-measured.json
        ->  judge against the spec (porter.smoke.checks)  ->  picture  ->  SmokeResult (+ smoke.json)

Results travel as a JSON file, never as parsed stdout. A crash, a timeout or a failed install is
a failed smoke result with the tail of stderr, never a porter traceback. A run that breaks before
the model runs (the environment, `import torch`, the script's imports) is one failure saying what
broke, why and the fix; the checks it never reached are not listed as failures of their own.

The script is code the recipe brings, so the subprocess is contained: a memory limit
(`smoke.memory_limit_gb`, RLIMIT_DATA), a finite timeout, its own process group, killed whole on
timeout, on Ctrl-C, when porter exits or dies (a watchdog in the child), and after a normal exit
(no children left behind); its stdout/stderr logs keep at most `LOG_LIMIT` bytes each (the start
and the end); and the patched package it imports is hashed before and after: a run that changed
it fails the `package-unchanged` check. Bad input (a missing
script or weights path, a package root that is not a directory) raises `SmokeInputError` before
anything runs: the caller reports it like any other recipe error (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
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

LOG_LIMIT = 1 << 20  # bytes kept per captured stream: the first quarter and the last three
EARLY_PHASES = ("start", "setup-device", "import-script")  # before the model is built

# The child's first lines: the memory limit, then a watchdog that takes the whole process group
# down when porter goes away (even by SIGKILL), then porter's child code.
_BOOT = (
    "import os, resource, sys, threading, time\n"
    "_soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)\n"
    "_lim = {memory_limit}\n"
    "if _hard != resource.RLIM_INFINITY: _lim = min(_lim, _hard)\n"
    "resource.setrlimit(resource.RLIMIT_DATA, (_lim, _lim))\n"
    "def _watch(parent=os.getppid()):\n"
    "    while os.getppid() == parent:\n"
    "        time.sleep(0.5)\n"
    "    os.killpg(0, 9)\n"
    "threading.Thread(target=_watch, name='porter-watchdog', daemon=True).start()\n"
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
                                      f"could not create the smoke environment: {env.error.splitlines()[0]}. "
                                      + _ENV_FIX.format(pins=_pins_text())),),
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

    before = package_hashes(package_root, skip=out_dir)
    rc, timed_out, elapsed = _spawn(env, request, dev, spec, out_dir)
    changed = _changed(before, package_hashes(package_root, skip=out_dir))
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
        early = e["phase"] in EARLY_PHASES
        what = (_early_failure(e, env, kind, spec) if early else
                f"{e['type']} in phase {e['phase']!r} on {kind}: {e['message'][:300]}")
        if e["type"] in ("MemoryError",) or "can't allocate memory" in e["message"]:
            what += (f" (the smoke process may use at most {spec.memory_limit_gb:g} GiB of memory: raise"
                     " smoke.memory_limit_gb in the recipe if the model needs more)")
        failures.append(FailedCheck("environment" if early else "script-error", e["phase"],
                                    f"{e['type']}: {e['message'][:300]}", None, kind, what))
        error = SmokeError("script", e["phase"], f"{e['type']}: {e['message']}", stderr_tail=stderr_tail,
                           traceback=e.get("traceback", ""))
    if changed:
        shown = ", ".join(f"{p} {how}" for p, how in changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        failures.append(FailedCheck("package-unchanged", "-", len(changed), 0, kind,
                                    f"the smoke run changed the certified patched package {package_root}: {shown};"
                                    " the smoke script and the code it runs must not write into the package"))

    outputs: tuple = ()
    audio = None
    perf = Perf(device=kind, env_s=env.seconds)
    env_json = env.to_json()
    imports = None
    ops = None
    values: dict = {}
    if measured is not None and not (measured.get("error") and measured["error"]["phase"] in EARLY_PHASES):
        values = measured.get("values") or {}
        env_json.update({k: v for k, v in (measured.get("env") or {}).items() if k != "python"})
        # after a script error, outputs it never reached are not failures of their own
        judged = spec if not measured.get("error") else spec.model_copy(update={"outputs": {}})
        outputs, out_failures = judge_outputs(judged, measured.get("outputs") or {}, kind, spec.dtype)
        failures += out_failures
        if measured.get("audio"):
            png = _picture(out_dir, measured["audio"], dev, notes)
            audio, audio_failures = judge_audio(spec, measured["audio"], png)
            failures += audio_failures
        elif "generate" in spec.run and not measured.get("error"):
            failures.append(FailedCheck("audio", "audio", None, None, kind, f"generate ran on {kind} but no audio came back"))
        imports = measured.get("imports")
        imp_failures, imp_notes = judge_imports(imports, kind) if imports is not None else ([], [])
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
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the certified package must stay byte for byte as written
    return env


def _spawn(env: SmokeEnv, request: dict[str, Any], dev: DeviceInfo, spec: SmokeSpec, out_dir: Path) -> tuple[int | None, bool, float]:
    boot = _BOOT.format(porter_parent=str(Path(porter.__file__).resolve().parent.parent),
                        memory_limit=int(spec.memory_limit_gb * (1 << 30)))
    cmd = [env.python, "-c", boot, str((out_dir / REQUEST).resolve())]
    t0 = time.perf_counter()
    logs = [_CappedLog(out_dir / STDOUT), _CappedLog(out_dir / STDERR)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(out_dir),
        env=_child_env(dev, spec, Path(request["package_root"])),
        start_new_session=True,  # its own process group: killed whole, whatever happens
    )
    pumps = [threading.Thread(target=log.pump, args=(pipe,), daemon=True)
             for log, pipe in zip(logs, (proc.stdout, proc.stderr))]
    for t in pumps:
        t.start()
    try:
        rc = proc.wait(timeout=spec.timeout_s)
        return rc, False, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return None, True, time.perf_counter() - t0
    finally:  # timeout, Ctrl-C, porter exiting, or a normal end: nothing of the run survives it
        kill_group(proc)
        for t in pumps:
            t.join(timeout=10)
        for log in logs:
            log.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (its children included) and reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


class _CappedLog:
    """A child's output stream to a file, at most `limit` bytes: the start as it arrives, the
    end kept in memory and written at close, with the number of bytes dropped between them."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.limit = LOG_LIMIT if limit is None else limit
        self.head_room = self.limit // 4
        self.file = open(path, "wb")
        self.tail = bytearray()
        self.dropped = 0
        self.lock = threading.Lock()

    def pump(self, pipe: Any) -> None:
        try:
            while True:
                chunk = pipe.read1(1 << 16) if hasattr(pipe, "read1") else pipe.read(1 << 16)
                if not chunk:
                    break
                with self.lock:
                    self._take(chunk)
        except (OSError, ValueError):
            pass
        finally:
            pipe.close()

    def _take(self, chunk: bytes) -> None:
        if self.head_room > 0:
            n = min(self.head_room, len(chunk))
            self.file.write(chunk[:n])
            self.file.flush()
            self.head_room -= n
            chunk = chunk[n:]
        self.tail += chunk
        excess = len(self.tail) - (self.limit - self.limit // 4)
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def close(self) -> None:
        with self.lock:
            if self.file.closed:
                return
            if self.dropped:
                self.file.write(f"\n[porter: {self.dropped} bytes of output dropped here; the log keeps"
                                f" the first and last bytes, {self.limit} in all]\n".encode())
            self.file.write(bytes(self.tail))
            self.file.close()


def package_hashes(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `root` (symbolic links by their target), `skip` left out."""
    root = Path(root)
    skip_s = str(skip.resolve()) if skip is not None else None
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            p = d / name
            if skip_s is not None and str(p.resolve()) == skip_s:
                continue
            if p.is_symlink():
                out[p.relative_to(root).as_posix()] = "link:" + os.readlink(p)
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            p = d / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
                continue
            h = hashlib.sha256()
            try:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                out[rel] = f"unreadable: {exc.strerror}"
                continue
            out[rel] = h.hexdigest()
    return out


def _changed(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str]]:
    changes = [(p, "removed") for p in before if p not in after]
    changes += [(p, "added") for p in after if p not in before]
    changes += [(p, "modified") for p in before if p in after and before[p] != after[p]]
    return sorted(changes)


_ENV_FIX = ("Fix: make smoke.requires installable next to the host's {pins} (the pins porter keeps),"
            " or move a package whose declared dependencies cannot be installed there to"
            " smoke.requires_no_deps; pip's own words are in the report's smoke error")


def _pins_text() -> str:
    from porter.smoke.env import host_pins

    pins = host_pins()
    return " and ".join(f"{d}=={v}" for d, v in pins.items()) or "packages"


def _early_failure(e: dict[str, Any], env: SmokeEnv, kind: str, spec: SmokeSpec) -> str:
    """What broke before the model ran, why, and the fix: one message."""
    where = f"the smoke environment ({env.venv or env.python})"
    head = f"{e['type']}: {e['message'][:300]}"
    missing = re.match(r"No module named '([^']+)'", e["message"])
    if e["type"] in ("ModuleNotFoundError", "ImportError") and missing:
        top = missing.group(1).split(".")[0]
        if top in ("torch", "torch_npu"):
            from porter.smoke.env import host_pins

            have = host_pins().get(top)
            why = (f"{where} takes {top} from the interpreter that runs porter ({sys.executable}), "
                   + (f"where {top} {have} is installed but was not visible" if have else f"which has no {top}"))
            fix = ("install the host's torch build in the environment that runs porter (README: Set-up;"
                   " CPU torch + torch_npu on an Ascend host), or run with --no-smoke")
            if have:
                fix = f"delete the cached environment {env.venv} and run again (it is rebuilt)" if env.venv else fix
            return f"smoke test could not start on {kind}: {head}; {why}. Fix: {fix}"
        return (f"smoke test could not start on {kind}: {head} (in phase {e['phase']!r}); {where} has no module "
                f"{top!r}, which the smoke script or the patched package imports. Fix: add the distribution that"
                f" provides {top!r}, pinned, to the recipe's smoke.requires (or smoke.requires_no_deps when its"
                " dependencies cannot be installed next to the host torch)")
    if e["phase"] == "import-script":
        return (f"smoke test could not start on {kind}: importing the smoke script {spec.script} raised {head}."
                " Fix: correct the script (or the patched code it imports)")
    return (f"smoke test could not start on {kind}: setting up the {kind} device raised {head}."
            " Fix: check the host's torch (and torch_npu) installation")


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
