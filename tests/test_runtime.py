"""A recipe's `runtime:` settings (porter/runtime.py): validated, written into the patched package,
applied on an npu host and nowhere else.

"npu host" here is porter's npu-sim (its torch_npu stand-in on the path, as on an Ascend host where
torch_npu is installed); the CPU host is the same interpreter without it. An import hook records
the environment at the moment torch_npu is imported, which is when the real torch_npu reads its
allocator and task-queue settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.npu.sim import sim_env
from porter.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
PORTER = str(Path(sys.executable).with_name("porter"))
SETTINGS = ("PYTORCH_NPU_ALLOC_CONF", "TASK_QUEUE_ENABLE", "ASCEND_GLOBAL_LOG_LEVEL")


def porter(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PORTER, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


# -- the schema ---------------------------------------------------------------------------------
BASE = "porter: 1\nname: rt\nsource: {path: src}\nsteps:\n  - use: widen-device-check\n"


@pytest.mark.parametrize("runtime, line, message", [
    ("runtime:\n  env:\n    BAD-NAME: '1'\n", 7, "runtime.env: 'BAD-NAME' is not an environment variable name"),
    ("runtime:\n  env:\n    TASK_QUEUE_ENABLE: 1\n", 7,
     'runtime.env: TASK_QUEUE_ENABLE: environment values are text; quote it: TASK_QUEUE_ENABLE: "1"'),
    ("runtime:\n  npu_options: {jit_compil: false}\n", 7,
     "runtime.npu_options.jit_compil: unknown key 'jit_compil' (did you mean 'jit_compile'?)"),
    ("runtime:\n  enviroment: {}\n", 7, "runtime.enviroment: unknown key 'enviroment' (known keys: env, npu_options)"),
])
def test_bad_runtime_sections_are_reported_with_file_and_line(tmp_path, runtime, line, message):
    (tmp_path / "r.yaml").write_text(BASE + runtime)
    proc = porter("validate", "r.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = f"r.yaml:{line}: {message}"
    assert expected in proc.stderr, proc.stderr


def test_seed_recipes_carry_their_hand_ports_settings():
    # seed 001 (MOSS-TTS-Nano) exported four variables, seeds 002 (CSM-1B) and 004 (VoxCPM2) one
    alloc = {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"}
    assert load_recipe(ROOT / "recipes" / "moss_tts_nano.yaml").recipe.runtime.env == {
        **alloc, "TASK_QUEUE_ENABLE": "1", "ASCEND_SLOG_PRINT_TO_STDOUT": "0", "ASCEND_GLOBAL_LOG_LEVEL": "3"}
    assert load_recipe(ROOT / "recipes" / "csm_1b.yaml").recipe.runtime.env == alloc
    assert load_recipe(ROOT / "recipes" / "voxcpm2.yaml").recipe.runtime.env == alloc


# -- npu host and CPU host ----------------------------------------------------------------------
RECIPE = """\
porter: 1
name: rtpkg
source: {path: src}
runtime:
  env:
    PYTORCH_NPU_ALLOC_CONF: "expandable_segments:True"
    TASK_QUEUE_ENABLE: "1"
    ASCEND_GLOBAL_LOG_LEVEL: "3"
  npu_options: {jit_compile: false}
steps:
  - use: widen-device-check
"""

PROBE = textwrap.dedent('''\
    import importlib.abc, json, os, sys

    seen = {}

    class Watch(importlib.abc.MetaPathFinder):
        """Records the environment when torch_npu's code runs (where torch_npu reads it)."""
        def find_spec(self, name, path=None, target=None):
            if name != "torch_npu":
                return None
            spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                         for s in [f.find_spec(name, path, target)] if s is not None), None)
            if spec is None:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                seen.update({k: os.environ.get(k) for k in %r})
                run(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Watch())
    import rtpkg
    out = {"env": {k: os.environ.get(k) for k in %r}, "at_torch_npu_import": seen,
           "torch_npu_loaded": "torch_npu" in sys.modules}
    if "torch_npu" in sys.modules:
        import torch_npu
        out["jit_compile_false"] = torch_npu.npu.is_jit_compile_false()
    print(json.dumps(out))
''') % (SETTINGS, SETTINGS)


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("runtime")
    pkg = work / "src" / "rtpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""rtpkg."""\nfrom __future__ import annotations\n\nimport torch\n\nVALUE = 1\n')
    (work / "src" / "pyproject.toml").write_text('[project]\nname = "rtpkg"\nversion = "0"\n')
    (work / "recipe.yaml").write_text(RECIPE)
    proc = porter("apply", "recipe.yaml", "--no-smoke", "--out", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work / "out" / "rtpkg"


def _run(root: Path, env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(root)) if p)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    return env


def test_the_hook_is_at_the_top_of_the_package_init(patched):
    init = (patched / "rtpkg" / "__init__.py").read_text()
    assert init.startswith('"""rtpkg."""\nfrom __future__ import annotations\n'
                           "from ._porter_npu import _porter_npu_runtime\n_porter_npu_runtime()\n\nimport torch\n")
    helper = (patched / "rtpkg" / "_porter_npu.py").read_text()
    assert 'os.environ.setdefault("TASK_QUEUE_ENABLE", "1")' in helper
    assert "torch_npu.npu.set_compile_mode(jit_compile=False)" in helper


def test_settings_take_effect_on_an_npu_host_before_torch_npu_is_imported(patched):
    got = _run(patched, sim_env(_clean_env()))
    want = {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "TASK_QUEUE_ENABLE": "1",
            "ASCEND_GLOBAL_LOG_LEVEL": "3"}
    assert got["env"] == want
    assert got["at_torch_npu_import"] == want  # set before torch_npu was imported
    assert got["jit_compile_false"] is True


def test_a_value_the_user_set_is_kept(patched):
    env = sim_env(_clean_env())
    env["PYTORCH_NPU_ALLOC_CONF"] = "garbage_collection_threshold:0.6"
    got = _run(patched, env)
    assert got["env"]["PYTORCH_NPU_ALLOC_CONF"] == "garbage_collection_threshold:0.6"
    assert got["env"]["TASK_QUEUE_ENABLE"] == "1"


def test_nothing_happens_on_a_cpu_host(patched):
    got = _run(patched, _clean_env())
    assert got["env"] == {k: None for k in SETTINGS}
    assert got["torch_npu_loaded"] is False and got["at_torch_npu_import"] == {}


def test_the_report_lists_each_setting_and_where_it_is_applied(patched):
    report = json.loads((patched / "report.json").read_text())["runtime"]
    assert [s["name"] for s in report["settings"]] == [*SETTINGS, "jit_compile"]
    assert report["applied_in"] == [{"package": "rtpkg", "hook": "rtpkg/__init__.py:3",
                                     "function": "rtpkg/_porter_npu.py:9"}]
    md = (patched / "report.md").read_text()
    assert "| `TASK_QUEUE_ENABLE` | `1` | os.environ.setdefault | `rtpkg/__init__.py:3` -> `rtpkg/_porter_npu.py:9` |" in md
    assert "`torch_npu.npu.set_compile_mode(jit_compile=False)`" in md


def test_a_tree_without_a_package_gets_no_hook_and_the_report_says_what_to_export(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "infer.py").write_text("import torch\n")
    (tmp_path / "r.yaml").write_text(RECIPE.replace("name: rtpkg", "name: loose"))
    proc = porter("apply", "r.yaml", "--no-smoke", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "loose" / "report.json").read_text())["runtime"]
    assert report["applied_in"] == []
    assert "PYTORCH_NPU_ALLOC_CONF=expandable_segments:True TASK_QUEUE_ENABLE=1" in report["not_applied"]
    assert not list((tmp_path / "out" / "loose").rglob("_porter_npu.py"))
