"""Small helpers the recipe and transform tests share (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path

from porter.recipe import Recipe, load_recipe


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines a rewrite removed and the lines it added, in order."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def assert_every_step_explained(recipe: Recipe) -> None:
    """Every step pins its match count (upstream drift is caught) and says why it is there."""
    for i, step in enumerate(recipe.steps, start=1):
        assert step.expect is not None, f"step {i} ({step.use}) has no expect: count"
        assert step.reason or step.with_.get("reason"), f"step {i} ({step.use}) says not why"


def smoke_python(recipe_path: Path) -> str:
    """The python of the recipe's smoke environment (built once, cached like `porter apply` does)."""
    from porter.smoke.env import ensure_env

    spec = load_recipe(recipe_path).recipe.smoke
    env = ensure_env(spec.requires, spec.requires_no_deps)
    assert env.error is None, env.error
    return env.python


def run_json(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: int = 300) -> dict:
    """Run a child that prints one JSON line last; fail the test with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def import_probe(body: str) -> str:
    """A child script: `body` (indented by 4) fills the dict `out`; whatever it raises, an import
    that cannot load included, is reported as out["import_error"]. Prints `out` as JSON."""
    return ("import json, sys\nout = {}\ntry:\n" + body
            + "except BaseException as exc:\n    out[\"import_error\"] = f\"{type(exc).__name__}: {exc}\"\n"
            + "print(json.dumps(out))\n")


def probe(python: str, script: str, *roots: Path) -> dict:
    """Run `script` with `roots` first on the path, offline, outside any activated venv."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, roots)), HF_HUB_OFFLINE="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    return run_json([python, "-c", script], env=env)


def installed_porter() -> Path:
    """The `porter` executable pip installed for this interpreter (the console script users run)."""
    import sys
    import sysconfig

    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        exe = Path(scripts) / ("porter.exe" if os.name == "nt" else "porter")
        if exe.is_file():
            return exe
    raise AssertionError(f"no installed `porter` next to {sys.executable}: run `pip install -e .` first")


def host_like_venv(dest: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A real venv (`python -m venv --without-pip`) whose own site-packages holds, as symbolic
    links, every entry of this interpreter's site directories, except entries whose lower-cased
    name contains one of `without` (e.g. "porter": an environment where porter is not installed).
    The base interpreter's packages are not visible in it. Returns its python."""
    import sys

    from porter.smoke.env import host_site_dirs

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    python = dest / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    own.mkdir(parents=True, exist_ok=True)
    for site_dir in host_site_dirs():
        for entry in sorted(Path(site_dir).iterdir()):
            name = entry.name.lower()
            if entry.name == "__pycache__" or any(w in name for w in without) or (own / entry.name).exists():
                continue
            (own / entry.name).symlink_to(entry)
    return python
