"""The smoke subprocess runs code the recipe brings: it is contained (README: Smoke inference).

Memory limit, finite timeout, the whole process group killed on timeout, on Ctrl-C, when porter
dies and after a normal end, capped logs, and the certified package unchanged. Each test runs a
real smoke script in a real subprocess; the scripts are written here, next to a tiny package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from porter.smoke import SmokeSpec, run_smoke
from porter.smoke.runner import LOG_LIMIT, STDERR, STDOUT

from support import installed_porter

FIXTURES = Path(__file__).parent / "fixtures"

SPAWN = '''
import json, os, subprocess, sys, time
import torch

def _spawn(ctx):
    child = subprocess.Popen(["sleep", "300"])  # a grandchild of porter, in the smoke's group
    (ctx.out_dir / "pids.json").write_text(json.dumps([os.getpid(), child.pid]))
'''


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_dead(pids: list[int], within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(map(alive, pids)):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A recipe dir with a tiny package to certify."""
    pkg = tmp_path / "pkg" / "tinypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    return tmp_path


def smoke(lab: Path, body: str, **spec) -> tuple:
    (lab / "script.py").write_text(body)
    spec.setdefault("run", ["forward"])
    result = run_smoke(SmokeSpec(script="script.py", **spec), recipe_dir=lab, package_root=lab / "pkg",
                       device="cpu", out_dir=lab / "out")
    return result, lab / "out"


LINEAR = '''
def forward(model, ctx):
    return {"y": model(ctx.randn(2, 4))}
'''


def test_timeout_kills_the_whole_process_group(lab: Path):
    body = SPAWN + '''
def build(ctx):
    _spawn(ctx)
    time.sleep(120)
''' + LINEAR
    t0 = time.monotonic()
    result, out = smoke(lab, body, timeout_s=4)
    assert time.monotonic() - t0 < 60
    assert not result.passed and [f.check for f in result.failures] == ["timeout"]
    assert "in phase 'build'" in result.failures[0].message
    assert wait_dead(json.loads((out / "pids.json").read_text()), within=5) == []


def test_a_normal_end_leaves_no_children_behind(lab: Path):
    body = SPAWN + '''
def build(ctx):
    _spawn(ctx)
    return torch.nn.Linear(4, 4)
''' + LINEAR
    result, out = smoke(lab, body)
    assert result.passed, result.summary()
    assert wait_dead(json.loads((out / "pids.json").read_text()), within=5) == []


def test_memory_limit_stops_a_runaway_allocation(lab: Path):
    body = '''
import torch

def build(ctx):
    torch.empty(3 * 2**30, dtype=torch.uint8)  # 3 GiB, more than the recipe allows
    return torch.nn.Linear(4, 4)
''' + LINEAR
    result, _ = smoke(lab, body, memory_limit_gb=1)
    assert not result.passed
    [f] = result.failures
    assert f.check == "script-error" and "memory_limit_gb" in f.message and "1 GiB" in f.message


def test_captured_logs_are_capped_keeping_start_and_end(lab: Path):
    body = '''
import sys, torch

def build(ctx):
    sys.stdout.write("FIRST-OUT\\n" + "o" * (3 << 20) + "\\nLAST-OUT\\n")
    sys.stderr.write("FIRST-ERR\\n" + "e" * (3 << 20) + "\\nLAST-ERR\\n")
    return torch.nn.Linear(4, 4)
''' + LINEAR
    result, out = smoke(lab, body)
    assert result.passed, result.summary()
    for name, tag in ((STDOUT, "OUT"), (STDERR, "ERR")):
        data = (out / name).read_bytes()
        assert len(data) <= LOG_LIMIT + 200, (name, len(data))
        assert f"FIRST-{tag}".encode() in data and data.rstrip().endswith(f"LAST-{tag}".encode())
        assert b"bytes of output dropped here" in data


def test_a_script_that_changes_the_certified_package_fails(lab: Path):
    body = '''
import pathlib, torch, tinypkg

def build(ctx):
    here = pathlib.Path(tinypkg.__file__).parent
    (here / "__init__.py").write_text("VALUE = 2\\n")
    (here / "planted.py").write_text("x = 1\\n")
    return torch.nn.Linear(4, 4)
''' + LINEAR
    result, _ = smoke(lab, body)
    assert not result.passed
    [f] = result.failures
    assert f.check == "package-unchanged" and f.measured == 2
    assert "tinypkg/__init__.py modified" in f.message and "tinypkg/planted.py added" in f.message


@pytest.mark.parametrize("field", ["timeout_s", "memory_limit_gb"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0])
def test_limits_must_be_finite_and_positive(field: str, value: float):
    with pytest.raises(ValidationError):
        SmokeSpec(script="s.py", **{field: value})


def test_an_infinite_timeout_in_a_recipe_is_a_usage_error(tmp_path: Path):
    text = (FIXTURES / "tinytts.yaml").read_text() + "smoke:\n  script: s.py\n  timeout_s: .inf\n"
    (tmp_path / "r.yaml").write_text(text)
    (tmp_path / "s.py").write_text("")
    proc = subprocess.run([str(installed_porter()), "validate", str(tmp_path / "r.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "timeout_s" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failure_before_the_model_runs_is_one_failure_with_its_fix(lab: Path):
    body = '''
import porter_fixture_module_nobody_has
''' + LINEAR
    result, _ = smoke(lab, body, run=["forward", "generate"], outputs={"y": {"cosine_min": 0.9}})
    assert not result.passed
    [f] = result.failures  # not also "smoke.outputs names 'y' but forward() produced no such output"
    assert f.check == "environment" and f.output == "import-script"
    assert "No module named 'porter_fixture_module_nobody_has'" in f.message
    assert "Fix: add the distribution" in f.message and "smoke.requires" in f.message


def test_a_failure_after_the_start_does_not_list_unreached_outputs(lab: Path):
    body = '''
import torch

def build(ctx):
    return torch.nn.Linear(4, 4)

def forward(model, ctx):
    raise RuntimeError("boom in forward")
'''
    result, _ = smoke(lab, body, outputs={"y": {"cosine_min": 0.9}})
    [f] = result.failures
    assert f.check == "script-error" and "boom in forward" in f.message


NOTES = '''
import torch

def build(ctx):
    ctx.note("in build", ctx.role)
    return torch.nn.Linear(4, 4)

def place(model, ctx):
    ctx.note("in place", ctx.device_kind)
    return model.to(ctx.device)

def forward(model, ctx):
    ctx.note("in forward", ctx.role)
    return {"y": model(ctx.randn(2, 4))}

def generate(model, ctx):
    ctx.note("in generate", 7)
    return ctx.Audio(torch.sin(torch.arange(2400) / 10.0) * 0.5, 24000, n_tokens=3)
'''


def test_ctx_note_works_in_every_phase(lab: Path):
    result, _ = smoke(lab, NOTES, run=["forward", "generate"])
    assert result.passed, result.summary()
    assert result.values == {
        "in build": {"build": "build"},
        "in place": {"target": "cpu"},
        "in forward": {"reference": "reference", "target": "target"},
        "in generate": {"target": 7},
    }
    assert "in place" in result.to_markdown()


def _sleeping_apply(work: Path) -> subprocess.Popen:
    """`porter apply` (the installed executable) whose smoke script spawns a child and sleeps."""
    import shutil

    shutil.copytree(FIXTURES / "tinytts", work / "tinytts")
    (work / "sleepy.py").write_text(SPAWN + '''
def build(ctx):
    _spawn(ctx)
    time.sleep(300)
''' + LINEAR)
    (work / "r.yaml").write_text((FIXTURES / "tinytts.yaml").read_text()
                                 + "smoke:\n  script: sleepy.py\n  run: [forward]\n")
    return subprocess.Popen([str(installed_porter()), "apply", str(work / "r.yaml"), "--out", str(work / "out"),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pids(work: Path, proc: subprocess.Popen) -> list[int]:
    pidfile = work / "out" / "tinytts" / "smoke" / "pids.json"
    deadline = time.monotonic() + 120
    while not pidfile.is_file() or not pidfile.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the smoke script never started"
        time.sleep(0.2)
    return json.loads(pidfile.read_text())


def test_ctrl_c_during_the_smoke_exits_130_and_kills_its_processes(tmp_path: Path):
    proc = _sleeping_apply(tmp_path)
    pids = _pids(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert wait_dead(pids, within=5) == []


def test_porter_killed_outright_takes_the_smoke_processes_with_it(tmp_path: Path):
    proc = _sleeping_apply(tmp_path)
    pids = _pids(tmp_path, proc)
    proc.kill()  # SIGKILL: no handler runs in porter; the child's watchdog notices
    proc.communicate(timeout=60)
    assert wait_dead(pids, within=10) == []


def test_the_readme_smoke_script_example_runs_as_documented(tmp_path: Path):
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"<!-- smoke-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "example.py").write_text(example)
    spec = SmokeSpec(script="example.py", run=["forward", "generate"], outputs={"out": {"cosine_min": 0.9999}},
                     audio={"sample_rate": 24000, "duration_min_s": 0.1})
    from porter.cli import main

    assert main(["apply", str(FIXTURES / "tinytts.yaml"), "--out", str(tmp_path / "patched"), "--no-smoke"]) == 0
    result = run_smoke(spec, recipe_dir=tmp_path, package_root=tmp_path / "patched" / "tinytts",
                       device="npu-sim", out_dir=tmp_path / "out")
    assert result.passed, result.summary()
    assert {o.name for o in result.outputs} == {"out", "proj"}
    assert result.values["batch"] == {"reference": 1, "target": 8}
    assert result.values["built on"] == {"build": "cpu"}
