"""Smoke environments: a venv per requirement set, cached by hash, reusing the host's torch."""

from __future__ import annotations

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
