"""Smoke environments: a venv per requirement set, cached by hash, reusing the host's torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from porter.smoke import SmokeSpec, run_smoke
from porter.smoke.env import MARKER, ensure_env, env_key

FIXTURES = Path(__file__).parent / "fixtures" / "smoke"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(monkeypatch):
    """pip may only use what is installed: no index, no find-links."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")


def test_no_requirements_is_the_host_interpreter(cache):
    env = ensure_env(())
    assert env.python == sys.executable and env.venv is None and not env.created
    assert not cache.exists()


def test_key_is_the_requirement_set():
    assert env_key(["a==1", "b"]) == env_key(["b", "a==1"]) == env_key(["a==1 ", "b"])
    assert env_key(["a==1"]) != env_key(["a==2"])
    assert env_key(["a==1"]) != env_key([], ["a==1"])  # --no-deps is a different environment


def test_venv_is_built_once_then_reused(cache, offline):
    # `click` is on the host (porter needs it): pip finds it through the host site directories, nothing is downloaded
    first = ensure_env(["click"])
    assert first.error is None and first.created
    venv = Path(first.venv)
    assert venv.parent == cache / "smoke-envs" and (venv / MARKER).is_file()
    stamp = (venv / MARKER).stat().st_mtime_ns, (venv / "pip-install.log").stat().st_mtime_ns
    second = ensure_env(["click"])
    assert not second.created and second.venv == first.venv and second.python == first.python
    assert ((venv / MARKER).stat().st_mtime_ns, (venv / "pip-install.log").stat().st_mtime_ns) == stamp
    # the venv reuses the host's torch
    out = subprocess.run([second.python, "-c", "import sys, torch; print(sys.prefix); print(torch.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(out[0]) == venv and not out[1].startswith(str(venv))

    # and run_smoke runs the script in it, reporting the reuse
    spec = SmokeSpec(script="plain.py", requires=["click"], run=["forward"])
    result = run_smoke(spec, recipe_dir=FIXTURES, package_root=FIXTURES / "pkg", device="cpu", out_dir=cache / "out")
    assert result.passed, result.summary()
    assert result.env["created"] is False and Path(result.env["prefix"]) == venv
    assert "reused" in result.to_markdown()


def test_half_built_venv_is_rebuilt(cache, offline):
    venv = cache / "smoke-envs" / env_key(["click"])
    venv.mkdir(parents=True)
    (venv / "junk").write_text("interrupted install")
    env = ensure_env(["click"])
    assert env.created and env.error is None and not (venv / "junk").exists()


def test_failed_install_is_a_failed_smoke_not_a_traceback(cache, offline):
    spec = SmokeSpec(script="plain.py", requires=["porter-fixture-not-installed==1.0"], run=["forward"])
    result = run_smoke(spec, recipe_dir=FIXTURES, package_root=FIXTURES / "pkg", device="cpu", out_dir=cache / "out")
    assert not result.passed
    [f] = result.failures
    assert f.check == "environment" and "porter-fixture-not-installed" in f.message
    assert result.error.stage == "environment" and "No matching distribution" in result.error.message
    assert not any((cache / "smoke-envs").glob(f"*/{MARKER}"))  # nothing half-made is kept
    assert (cache / "out" / "smoke.json").is_file()


@pytest.mark.network
def test_pinned_requirement_from_pypi_is_installed_in_the_venv(cache):
    # toml: 16 kB, pure Python, not on the host; the script refuses a toml from outside the venv
    pytest.importorskip("pip")
    if subprocess.run([sys.executable, "-c", "import toml"], capture_output=True).returncode == 0:
        pytest.skip("toml is installed on the host; the test needs a requirement the host lacks")
    spec = SmokeSpec(script="needs_toml.py", requires_no_deps=["toml==0.10.2"], run=["forward"])
    result = run_smoke(spec, recipe_dir=FIXTURES, package_root=FIXTURES / "pkg", device="cpu", out_dir=cache / "a")
    assert result.passed, result.to_markdown()
    assert result.env["created"] is True and result.env["requires_no_deps"] == ["toml==0.10.2"]
    assert "`toml==0.10.2` (--no-deps)" in result.to_markdown()
    again = run_smoke(spec, recipe_dir=FIXTURES, package_root=FIXTURES / "pkg", device="cpu", out_dir=cache / "b")
    assert again.passed and again.env["created"] is False and again.env["venv"] == result.env["venv"]


SMOKE_RECIPE = """
smoke:
  script: tinytts_smoke.py
  requires: ["click"]
  run: [forward, generate]
  audio: {sample_rate: 24000, duration_min_s: 0.1, duration_max_s: 1.0}
"""


def test_smoke_from_a_venv_holding_torch_the_base_interpreter_lacks(tmp_path):
    """The README's set-up: porter and torch in a venv. The smoke environment must take torch
    (and every other package) from that venv, not from the base interpreter behind it; a site
    directory that a .pth file adds (conda, Debian's dist-packages) counts too."""
    import shutil

    from support import host_like_venv

    host = tmp_path / "host"
    python = host_like_venv(host)
    extra = tmp_path / "extra" / "dist-packages"
    extra.mkdir(parents=True)
    (extra / "porter_probe_extra.py").write_text("WHERE = 'extra'\n")
    own = next(host.glob("lib/python*/site-packages"))
    (own / "extra-site.pth").write_text(f"import site; site.addsitedir({str(extra)!r})\n")

    shutil.copytree(FIXTURES.parent / "tinytts", tmp_path / "tinytts")
    shutil.copy(FIXTURES.parent / "tinytts_smoke.py", tmp_path / "tinytts_smoke.py")
    (tmp_path / "r.yaml").write_text((FIXTURES.parent / "tinytts.yaml").read_text() + SMOKE_RECIPE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PORTER_CACHE=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    proc = subprocess.run([str(python), "-m", "porter", "apply", "r.yaml", "--out", "out", "--device", "npu-sim"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    smoke = json.loads((tmp_path / "out/tinytts/report.json").read_text())["smoke"]
    assert smoke["passed"] and smoke["env"]["created"]
    venv = Path(smoke["env"]["venv"])
    assert venv.parent == tmp_path / "cache" / "smoke-envs"
    assert Path(smoke["env"]["torch_file"]).is_relative_to(own)  # the host venv's torch, not the base's
    probe = subprocess.run([str(venv / "bin/python"), "-c",
                            "import sys, porter_probe_extra; print(porter_probe_extra.WHERE); print('\\n'.join(sys.path))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == "extra"
    path = lines[1:]
    mine = next(i for i, p in enumerate(path) if p.startswith(str(venv)))
    assert mine < path.index(str(own)) < path.index(str(extra))  # the environment's own packages first


def test_a_host_without_torch_gets_one_failure_naming_the_fix(tmp_path):
    from support import host_like_venv, run_json

    python = host_like_venv(tmp_path / "host", without=("torch",))
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from porter.smoke import SmokeSpec, run_smoke\n"
        f"r = run_smoke(SmokeSpec(script='plain.py', run=['forward'], outputs={{'head': {{'cosine_min': 0.9}}}}),"
        f" recipe_dir=Path({str(FIXTURES)!r}), package_root=Path({str(FIXTURES / 'pkg')!r}), device='cpu',"
        f" out_dir=Path({str(tmp_path / 'out')!r}))\n"
        "print(json.dumps([[f.check, f.message] for f in r.failures]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    failures = run_json([str(python), "-c", code], env=env, cwd=tmp_path)
    assert len(failures) == 1, failures  # not also "smoke.outputs names 'head' but forward() produced ..."
    [[check, message]] = failures
    assert check == "environment" and "No module named 'torch'" in message
    assert "which has no torch" in message and "Fix: install the host's torch build" in message
