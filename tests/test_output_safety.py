"""Writing the patched package reaches nothing but porter's own output.

Through the installed `porter` executable: a symbolic link at or below the output directory, an
output that overlaps a source tree or holds the recipe, a directory porter did not write, and an
unwritable or impossible path are refused with exit 2 and nothing is touched. A writer killed in
the middle of the swap leaves a state the next run recovers; concurrent writers of one target are
serialised (no exit 3).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_apply import smoke_recipe  # the tinytts recipe with its smoke section

FIXTURES = Path(__file__).parent / "fixtures"
PORTER = str(Path(sys.executable).with_name("porter"))


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    shutil.copy(FIXTURES / "tinytts.yaml", tmp_path / "tinytts.yaml")
    return tmp_path


def porter(work: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTER_CACHE": str(work / "cache"), **(env or {})}
    return subprocess.run([PORTER, *args], capture_output=True, text=True, env=env, cwd=cwd or work,
                          timeout=300)


def apply(work: Path, *args: str, recipe: str = "tinytts.yaml", **kw) -> subprocess.CompletedProcess:
    return porter(work, "apply", str(work / recipe), "--no-smoke", *args, **kw)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def victim(work: Path) -> tuple[Path, dict[str, bytes]]:
    """A directory of the user's own that a link points at."""
    v = work / "precious"
    (v / "sub").mkdir(parents=True)
    (v / "notes.txt").write_text("keep me\n")
    (v / "sub/data.bin").write_bytes(b"\x00\x01")
    return v, tree_bytes(v)


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


# -- symbolic links -----------------------------------------------------------------------------
def test_target_that_is_a_symlink_is_refused(work: Path):
    v, before = victim(work)
    (work / "out").mkdir()
    os.symlink(v, work / "out/tinytts")
    refused(apply(work, "--out", str(work / "out")), "symbolic link", "out/tinytts")
    assert tree_bytes(v) == before and (work / "out/tinytts").is_symlink()


def test_default_patched_models_symlink_is_refused(work: Path):
    """A cloned repository ships `patched_models -> somewhere`: the default output is refused too."""
    v, before = victim(work)
    os.symlink(v, work / "patched_models")
    (v / "tinytts").mkdir()
    (v / "tinytts/mine.txt").write_text("mine\n")
    before = tree_bytes(v)
    refused(apply(work), "symbolic link", "patched_models")
    assert tree_bytes(v) == before


def test_out_dir_that_is_a_symlink_is_refused(work: Path):
    v, before = victim(work)
    os.symlink(v, work / "out")
    refused(apply(work, "--out", str(work / "out")), "symbolic link")
    assert tree_bytes(v) == before and sorted(p.name for p in v.iterdir()) == ["notes.txt", "sub"]


def test_symlink_inside_an_existing_target_is_refused(work: Path):
    out = work / "out"
    assert apply(work, "--out", str(out)).returncode == 0
    v, before = victim(work)
    os.symlink(v, out / "tinytts/tinytts/extra")
    refused(apply(work, "--out", str(out)), "symbolic link", "extra")
    assert tree_bytes(v) == before


def test_check_does_not_read_through_a_symlinked_target(work: Path):
    out = work / "out"
    assert apply(work, "--out", str(out / "real")).returncode == 0
    out.mkdir(exist_ok=True)
    os.symlink(out / "real/tinytts", out / "tinytts")
    refused(porter(work, "apply", str(work / "tinytts.yaml"), "--out", str(out), "--check"), "symbolic link")


def test_read_only_cache_falls_back_to_a_lock_beside_the_target(work: Path):
    (work / "cache").write_text("not a directory\n")  # PORTER_CACHE unusable
    proc = apply(work, "--out", str(work / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == [".tinytts.lock", "tinytts"]


# -- overlap with the source or the recipe ------------------------------------------------------
def test_out_at_the_source_is_refused(work: Path):
    """--out at the source tree: the target tinytts/tinytts is the source's own package."""
    before = tree_bytes(work / "tinytts")
    refused(apply(work, "--out", str(work / "tinytts")), "source tree")
    assert tree_bytes(work / "tinytts") == before


def test_out_above_the_source_with_name_of_the_source_is_refused(work: Path):
    """--out . next to a source directory named like the recipe: the target IS the source."""
    before = tree_bytes(work / "tinytts")
    refused(apply(work, "--out", str(work)), "source tree")
    assert tree_bytes(work / "tinytts") == before


def test_source_override_at_the_target_is_refused(work: Path):
    out = work / "out"
    assert apply(work, "--out", str(out)).returncode == 0
    before = tree_bytes(out / "tinytts")
    refused(apply(work, "--out", str(out), "--source", str(out / "tinytts")), "source tree")
    assert tree_bytes(out / "tinytts") == before


def test_target_containing_the_recipe_is_refused(work: Path):
    proj = work / "proj"
    proj.mkdir()
    text = (work / "tinytts.yaml").read_text().replace("name: tinytts", "name: proj").replace(
        "path: tinytts", "path: ../tinytts")
    (proj / "r.yaml").write_text(text)
    (proj / "README").write_text("my project\n")
    refused(apply(work, "--out", str(work), recipe="proj/r.yaml"), "recipe")
    assert (proj / "r.yaml").read_text() == text and (proj / "README").exists()


def test_existing_directory_porter_did_not_write_is_refused(work: Path):
    mine = work / "out/tinytts"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work\n")
    refused(apply(work, "--out", str(work / "out")), "porter did not write")
    assert (mine / "thesis.tex").read_text() == "years of work\n"


def test_target_that_is_a_file_is_refused(work: Path):
    (work / "out").mkdir()
    (work / "out/tinytts").write_text("a file\n")
    refused(apply(work, "--out", str(work / "out")), "is a file")
    assert (work / "out/tinytts").read_text() == "a file\n"


def test_default_layout_and_check_still_work(work: Path):
    """recipes/ and patched_models/ side by side, the source beside the recipe: all allowed."""
    (work / "recipes").mkdir()
    shutil.move(str(work / "tinytts.yaml"), work / "recipes/tinytts.yaml")
    shutil.move(str(work / "tinytts"), work / "recipes/tinytts")
    assert apply(work, recipe="recipes/tinytts.yaml").returncode == 0
    assert (work / "patched_models/tinytts/port.diff").is_file()
    assert apply(work, recipe="recipes/tinytts.yaml").returncode == 0  # rewriting its own output
    proc = porter(work, "apply", str(work / "recipes/tinytts.yaml"), "--check")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (work / "patched_models").iterdir()) == ["tinytts"]


# -- unwritable and impossible paths ------------------------------------------------------------
def test_out_under_a_file_is_a_usage_error(work: Path):
    (work / "afile").write_text("x\n")
    refused(apply(work, "--out", str(work / "afile/sub")), "cannot write")


def test_out_in_proc_is_a_usage_error(work: Path):
    refused(apply(work, "--out", "/proc/1/porter-out"), "cannot write")


def test_overlong_name_is_a_usage_error(work: Path):
    """A component longer than any file system allows (recipe names are capped; --out is not)."""
    refused(apply(work, "--out", str(work / ("o" * 300))), "cannot write")


def test_overlong_path_is_a_usage_error(work: Path):
    refused(apply(work, "--out", str(work / "/".join(["d" * 200] * 25))), "cannot write")  # > PATH_MAX


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_is_a_usage_error(work: Path):
    out = work / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        refused(apply(work, "--out", str(out)), "cannot write")
    finally:
        out.chmod(0o755)


# -- interruption and concurrency ---------------------------------------------------------------
def test_kill_between_the_two_renames_is_recovered_by_the_next_run(work: Path):
    out = work / "out"
    assert apply(work, "--out", str(out)).returncode == 0
    first = tree_bytes(out / "tinytts")
    proc = apply(work, "--out", str(out), env={"_PORTER_TEST_KILL_MID_SWAP": "1"})
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "tinytts").exists()  # the state the kill leaves: the package set aside
    left = sorted(p.name.split("-")[0] for p in out.iterdir())
    assert left == [".tinytts.old", ".tinytts.tmp"]  # the package set aside, the new one built

    # The next run of anything that writes the target puts the old package back first ...
    from porter import emit

    with emit.locked(out / "tinytts"):
        done = emit.recover(out / "tinytts")
    assert any("restored" in d for d in done)
    assert tree_bytes(out / "tinytts") == first and [p.name for p in out.iterdir()] == ["tinytts"]

    # ... and `porter apply` itself recovers and leaves nothing behind.
    assert apply(work, "--out", str(out), env={"_PORTER_TEST_KILL_MID_SWAP": "1"}).returncode == -signal.SIGKILL
    (out / ".tinytts.tmp-leftover").mkdir()  # a half-built package from a kill while writing
    proc = apply(work, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "restored" in proc.stderr
    assert tree_bytes(out / "tinytts") == first
    assert [p.name for p in out.iterdir()] == ["tinytts"]


def test_concurrent_applies_of_one_recipe_all_succeed(work: Path):
    """Three applies with smoke, started 1.5 s apart: each smoke runs inside the package, so without
    the lock a later writer swaps the package away under an earlier one's smoke run (exit 1 or 3)."""
    smoke_recipe(work)
    out = work / "out"
    env = {**os.environ, "PORTER_CACHE": str(work / "cache")}
    cmd = [PORTER, "apply", str(work / "tinytts.yaml"), "--device", "cpu", "--out", str(out)]
    procs = []
    for _ in range(3):
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
        time.sleep(1.5)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [rc for rc, _ in results] == [0] * 3, [e[-1500:] for _, e in results]
    assert [p.name for p in out.iterdir()] == ["tinytts"]
    report = json.loads((out / "tinytts/report.json").read_text())
    assert report["smoke"]["passed"] is True and list((out / "tinytts/smoke").glob("*.wav"))
