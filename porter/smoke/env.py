"""Smoke environments: one virtual environment per set of requirements, cached by their hash.

Models pin different transformers versions, so a recipe's smoke test runs in a venv of its own
that sees the host's packages: every site directory on the sys.path of the interpreter that runs
porter (a venv, a virtualenv, a conda or uv environment, or the system Python) is added after the
venv's own site-packages by a `.pth` file (`HOST_PTH`). So the host's torch (CPU torch + torch_npu
on Ascend, the CUDA build elsewhere) is importable, and the recipe's requirements, installed into
the venv, shadow the host's copies. (`python -m venv --system-site-packages` is not used: run
from a venv it links the *base* interpreter's site-packages, not the venv that holds torch.)
pip is told, by a constraints file, to keep the host's torch and torch_npu exactly: a
requirement that would replace them fails the install with pip's own message instead of pulling a
multi-gigabyte wheel of the wrong build. The installer is the host's pip driving the venv's
interpreter (`pip --python`); without pip on the host, `uv pip` when uv is on PATH, else a pip
bootstrapped into the venv with ensurepip.

The cache lives in `$PORTER_CACHE/smoke-envs/<key>/` (default `~/.cache/porter`); the key hashes
the normalised requirements, the host interpreter, its site directories and the host torch
version, so a host upgrade or another host environment makes a fresh environment. A marker file written last (`porter-env.json`) makes an environment
count as ready; a half-built one (interrupted install) is removed and built again. An exclusive
file lock per key lets parallel runs share one build.

`no_deps` requirements are installed after the others with `pip --no-deps`: for packages whose
declared dependencies cannot be installed next to the host torch (e.g. a PyPI torchaudio pin
that cannot load beside a CPU or Ascend torch); the recipe lists what they really need.

No requirements: the host interpreter itself, no venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

FORMAT = 2  # 2: host site directories through HOST_PTH (1 used --system-site-packages)
MARKER = "porter-env.json"
HOST_PTH = "zzz_porter_host_site.pth"  # sorted last: the venv's own .pth files run first


@dataclass(frozen=True)
class SmokeEnv:
    """The interpreter a smoke test runs with, and how it came to be."""

    python: str
    venv: str | None  # None: the host interpreter
    key: str | None
    requires: tuple[str, ...]
    created: bool  # False: reused from the cache (or the host interpreter)
    seconds: float
    error: str | None = None  # pip's complaint, tail only
    no_deps: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "python": self.python,
            "venv": self.venv,
            "key": self.key,
            "requires": list(self.requires),
            "requires_no_deps": list(self.no_deps),
            "created": self.created,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def cache_dir() -> Path:
    return Path(os.environ.get("PORTER_CACHE") or Path.home() / ".cache" / "porter").expanduser()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_pins() -> dict[str, str]:
    """Packages the smoke environment must take from the host, exactly."""
    pins = {}
    for dist in ("torch", "torch_npu"):
        v = _version(dist)
        if v:
            pins[dist] = v
    return pins


def host_site_dirs() -> list[str]:
    """The site directories on this interpreter's sys.path, in path order.

    A site directory is one Python's `site` module would process (`site.getsitepackages()`, the
    user site), or any `site-packages`/`dist-packages` directory on the path (conda, Debian,
    directories a .pth file added). The standard library is not one: the smoke venv has its own.
    """
    known = set()
    try:
        known.update(os.path.abspath(p) for p in site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's patched site module
        pass
    if site.ENABLE_USER_SITE:
        known.add(os.path.abspath(site.getusersitepackages()))
    stdlib = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    out: list[str] = []
    for p in sys.path:
        if not p:
            continue
        p = os.path.abspath(p)
        if p in out or p in stdlib or not os.path.isdir(p):
            continue
        if p in known or os.path.basename(p) in ("site-packages", "dist-packages"):
            out.append(p)
    return out


def env_key(requires: tuple[str, ...] | list[str], no_deps: tuple[str, ...] | list[str] = ()) -> str:
    blob = json.dumps(
        {
            "format": FORMAT,
            "requires": sorted(" ".join(r.split()) for r in requires),
            "no_deps": sorted(" ".join(r.split()) for r in no_deps),
            "python": sys.version,
            "executable": os.path.realpath(sys.executable),
            "pins": host_pins(),
            "host_site": host_site_dirs(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env(
    requires: tuple[str, ...] | list[str],
    no_deps: tuple[str, ...] | list[str] = (),
    *,
    timeout_s: float = 1800.0,
    root: Path | None = None,
) -> SmokeEnv:
    """The environment for `requires` (+ `no_deps`, installed with --no-deps): cached, or built
    now. Never raises for a failed install: the result carries pip's error and the smoke run
    reports it as a failed check."""
    requires, no_deps = tuple(requires), tuple(no_deps)
    t0 = time.perf_counter()
    if not requires and not no_deps:
        return SmokeEnv(sys.executable, None, None, (), False, 0.0)
    key = env_key(requires, no_deps)
    base = (root or cache_dir()) / "smoke-envs"
    base.mkdir(parents=True, exist_ok=True)
    venv = base / key
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (venv / MARKER).is_file() and _venv_python(venv).exists():
                return SmokeEnv(str(_venv_python(venv)), str(venv), key, requires, False,
                                time.perf_counter() - t0, no_deps=no_deps)
            error = _build(venv, requires, no_deps, timeout_s)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    seconds = time.perf_counter() - t0
    if error is not None:
        return SmokeEnv(sys.executable, None, key, requires, True, seconds, error, no_deps)
    return SmokeEnv(str(_venv_python(venv)), str(venv), key, requires, True, seconds, no_deps=no_deps)


def _installer(venv_python: Path) -> list[str] | None:
    """The command that installs into the venv, or None: bootstrap pip into the venv itself."""
    if importlib.util.find_spec("pip") is not None:
        # The host's pip drives the venv's interpreter (pip >= 22.3): the venv needs no pip.
        return [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-input",
                "--disable-pip-version-check"]
    uv = shutil.which("uv")
    if uv:  # a uv environment has no pip
        return [uv, "pip", "install", "--python", str(venv_python)]
    return None


def _write_host_pth(venv: Path, dirs: list[str]) -> Path:
    """The host's site directories after the venv's own: `site.addsitedir` also runs their .pth
    files (editable installs, conda's and virtualenv's hooks), as the host's interpreter does."""
    proc = subprocess.run(
        [str(_venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    own = Path(proc.stdout.strip())
    own.mkdir(parents=True, exist_ok=True)
    pth = own / HOST_PTH
    pth.write_text(
        "# written by porter: the packages of the interpreter that runs porter, after this venv's own\n"
        + "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    )
    return pth


def _build(venv: Path, requires: tuple[str, ...], no_deps: tuple[str, ...], timeout_s: float) -> str | None:
    if venv.exists():
        shutil.rmtree(venv)  # half-built: no marker
    pins = host_pins()
    dirs = host_site_dirs()
    log: list[str] = []
    try:
        installer = _installer(_venv_python(venv))
        cmd = [sys.executable, "-m", "venv", str(venv)]
        if installer is not None:
            cmd.insert(3, "--without-pip")
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        _write_host_pth(venv, dirs)
        if installer is None:
            installer = [str(_venv_python(venv)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
        (venv / "constraints.txt").write_text("".join(f"{d}=={v}\n" for d, v in pins.items()))
        for name, reqs, extra in (("requirements", requires, []), ("requirements-no-deps", no_deps, ["--no-deps"])):
            if not reqs:
                continue
            (venv / f"{name}.txt").write_text("\n".join(reqs) + "\n")
            cmd = [*installer, *extra, "-r", str(venv / f"{name}.txt"), "-c", str(venv / "constraints.txt")]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            log.append(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
            (venv / "pip-install.log").write_text("\n".join(log))
            if proc.returncode != 0:
                tail = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
                shutil.rmtree(venv, ignore_errors=True)
                how = " --no-deps" if extra else ""
                return f"pip install{how} {' '.join(reqs)} failed (exit {proc.returncode}):\n{tail}"
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(venv, ignore_errors=True)
        return f"creating the smoke environment timed out after {exc.timeout:.0f} s ({' '.join(map(str, exc.cmd[:6]))} ...)"
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or ""
        return f"creating the smoke environment failed: {exc} {detail[-2000:]}"
    except BaseException:  # Ctrl-C mid-install: no half-built venv is left to look ready
        shutil.rmtree(venv, ignore_errors=True)
        raise
    marker = {
        "format": FORMAT,
        "requires": list(requires),
        "requires_no_deps": list(no_deps),
        "pins": pins,
        "host_python": sys.executable,
        "host_site": dirs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = venv / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, venv / MARKER)
    return None
