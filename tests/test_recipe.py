"""Recipe validation: every error at once, with file:line, the path and a did-you-mean; exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from porter.cli import main
from porter.errors import UsageError
from porter.recipe import load_recipe

GOOD = """\
porter: 1
name: demo
source:
  path: src
steps:
  - use: widen-device-check
    expect: 2
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(UsageError) as exc:
        load_recipe(write(tmp_path, text))
    return str(exc.value).splitlines()


def test_good_recipe_loads(tmp_path):
    loaded = load_recipe(write(tmp_path, GOOD))
    assert loaded.recipe.name == "demo"
    assert [t.name for t in loaded.transforms] == ["widen-device-check"]
    assert loaded.recipe.steps[0].expect == 2


def test_all_errors_reported_together_with_lines_and_suggestions(tmp_path):
    text = """\
porter: 1
name: Demo Model
source:
  pypi: voxcpm
steps:
  - use: widen-device-chek
  - use: mem-get-info
    with: {devcies: [npu]}
  - use: widen-device-check
    with:
      devcies: [npu]
    expct: 3
"""
    errs = errors_of(tmp_path, text)
    shown = str(tmp_path / "r.yaml")
    assert any(e.startswith(f"{shown}:2: name:") for e in errs), errs
    assert any(e.startswith(f"{shown}:4: source.pypi:") and "name==version" in e for e in errs), errs
    assert f"{shown}:6: steps[0].use: unknown transform 'widen-device-chek' (did you mean 'widen-device-check'?)" in errs
    assert any(e.startswith(f"{shown}:8: steps[1].with.devcies:") and "takes: none" in e for e in errs), errs
    assert any(e.startswith(f"{shown}:11: steps[2].with.devcies:") and "did you mean 'devices'" in e for e in errs), errs
    assert any(e.startswith(f"{shown}:12: steps[2].expct:") and "did you mean 'expect'" in e for e in errs), errs
    assert len(errs) == 6


@pytest.mark.parametrize(
    "text,needle",
    [
        ("porter: 2\nname: x\nsource: {path: .}\nsteps: []\n", "porter: 1"),
        ("porter: 1\nname: x\nsource: {path: ., pypi: a==1}\nsteps: []\n", "exactly one of"),
        ("porter: 1\nname: x\nsource: {git: https://example.invalid/x.git, rev: main}\nsteps: []\n", "full 40-character"),
        ("porter: 1\nname: x\nsource: {path: ., into: ../up}\nsteps: []\n", "without '..'"),
        ("porter: 1\nname: x\nsource: {path: .}\nsteps:\n  - use: widen-device-check\n    files: [/etc/*]\n", "relative path"),
        ("porter: 1\nname: x\nsource: {path: .}\nsteps:\n  - use: widen-device-check\n    expect: -1\n", "greater than or equal"),
        ("porter: 1\nname: x\nsource: {path: .}\n", "steps: Field required"),
        ("porter: 1\nname: x\nsource: {path: .}\nsteps: [\n", "not valid YAML"),
        ("- just\n- a list\n", "a recipe is a YAML mapping"),
    ],
)
def test_bad_recipes(tmp_path, text, needle):
    message = "\n".join(errors_of(tmp_path, text))
    assert needle in message


def test_cli_exit_2_without_traceback(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace("widen-device-check", "widen-device-chek"))
    assert main(["apply", str(p)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'widen-device-check'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "patched_models").exists()


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_missing_path_source_names_the_fix(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert main(["apply", str(p), "--no-smoke"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_every_shipped_recipe_validates():
    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        assert main(["validate", str(r)]) == 0, r


ORDER = """\
porter: 1
name: demo
source:
  path: src
steps:
  - use: import-order
  - use: cuda-api
  - use: hardcoded-device
"""


def test_step_order_that_leaves_work_undone_is_a_note_with_its_line(tmp_path, capsys):
    p = write(tmp_path, ORDER)
    notes = load_recipe(p).notes
    assert len(notes) == 2, notes
    assert notes[0].startswith(f"{p}:6: step 1 (import-order) runs before step 2 (cuda-api)")
    assert notes[1].startswith(f"{p}:7: step 2 (cuda-api) runs before step 3 (hardcoded-device)")
    assert main(["validate", str(p)]) == 0  # a note, not an error: the port is still correct
    err = capsys.readouterr().err
    assert "note:" in err and "put hardcoded-device first" in err and "put import-order last" in err
    reordered = ORDER.replace("  - use: import-order\n", "") + "  - use: import-order\n"
    reordered = reordered.replace("  - use: cuda-api\n  - use: hardcoded-device\n",
                                  "  - use: hardcoded-device\n  - use: cuda-api\n")
    assert load_recipe(write(tmp_path, reordered)).notes == ()


def test_shipped_recipes_have_no_order_notes():
    for r in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        assert load_recipe(r).notes == (), r
