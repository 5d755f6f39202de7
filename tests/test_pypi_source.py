"""The pypi: source on a real package (voxcpm==2.0.3, small), fetched once into the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from porter.cli import main
from porter.recipe import load_recipe
from porter.source import fetch_tree

pytestmark = pytest.mark.network
RECIPES = Path(__file__).parents[1] / "recipes"


def test_pypi_source_is_pinned_and_recorded(tmp_path):
    recipe = tmp_path / "v.yaml"
    recipe.write_text(
        "porter: 1\nname: vox\nsource: {pypi: voxcpm==2.0.3}\nsteps:\n"
        "  - use: widen-device-check\n    files: ['voxcpm/**/*.py']\n"
    )
    loaded = load_recipe(recipe)
    tree = fetch_tree(loaded.recipe.sources, tmp_path, {})
    assert "voxcpm/model/utils.py" in tree.files
    assert not any(p.endswith(".dist-info/METADATA") for p in tree.files)  # wheel metadata is dropped
    prov = tree.sources[0].provenance
    assert prov["archive"] == "voxcpm-2.0.3-py3-none-any.whl" and len(prov["sha256"]) == 64
    assert tree.sources[0].dist is not None and tree.sources[0].dist.version == "2.0.3"

    # A wrong pinned hash is refused with both hashes named.
    recipe.write_text(recipe.read_text().replace("voxcpm==2.0.3}", "voxcpm==2.0.3, sha256: '" + "0" * 64 + "'}"))
    assert main(["apply", str(recipe), "--out", str(tmp_path / "o"), "--no-smoke"]) == 1
    assert not (tmp_path / "o").exists()


def test_voxcpm2_recipe_applies(tmp_path):
    assert main(["apply", str(RECIPES / "voxcpm2.yaml"), "--out", str(tmp_path), "--no-smoke"]) == 0
    report = json.loads((tmp_path / "voxcpm2/report.json").read_text())
    assert report["sources"][0]["requirement"] == "voxcpm==2.0.3"
    assert all(not s["drift"] for s in report["steps"])
    pyproject = (tmp_path / "voxcpm2/pyproject.toml").read_text()
    assert 'name = "voxcpm"' in pyproject and 'version = "2.0.3+npu"' in pyproject
    assert main(["apply", str(RECIPES / "voxcpm2.yaml"), "--out", str(tmp_path), "--check"]) == 0


def test_unknown_package_says_what_to_do(tmp_path, capsys):
    recipe = tmp_path / "v.yaml"
    recipe.write_text("porter: 1\nname: nope\nsource: {pypi: porter-no-such-package-xyz==0.0.1}\nsteps: []\n")
    assert main(["apply", str(recipe), "--out", str(tmp_path / "o"), "--no-smoke"]) == 2
    err = capsys.readouterr().err
    assert "cannot download porter-no-such-package-xyz==0.0.1" in err and "--source" in err
