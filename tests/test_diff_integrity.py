"""port.diff is a real patch: `git apply` and `patch -p1` turn the pristine upstream into the patched
package byte for byte, and the rewrite keeps every byte outside the nodes it changed.

Legal Python may hold characters `str.splitlines` breaks at but git does not (form feed, \\x1c-\\x1e,
\\x85, \\u2028, \\u2029, \\x0b), a UTF-8 BOM, CRLF or old-Mac CR line ends, and no final newline; libcst
itself drops a BOM and a form feed that starts a statement. Hypothesis builds such files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from porter.emit import git_lines, unified_diff
from porter.rewrite import StepPlan, rewrite_file
from porter.transforms import all_transforms

FIXTURES = Path(__file__).parent / "fixtures"
PORTER = str(Path(sys.executable).with_name("porter"))
STEPS = (StepPlan(1, all_transforms()["widen-device-check"](), ("**/*.py",)),)
ODD = ["\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("patch") is None,
                                reason="needs git and patch")


def apply_with(tool: list[str], name: str, before: bytes, diff: str, tmp: Path) -> bytes | str:
    """Apply `diff` to a pristine `name` with `tool`; the file's bytes after, or the tool's error."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / name).write_bytes(before)
    (tmp / "p.diff").write_bytes(diff.encode("utf-8"))
    proc = subprocess.run(tool + ["p.diff"], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stdout + proc.stderr
    return (tmp / name).read_bytes()


GIT = ["git", "apply", "--whitespace=nowarn"]
PATCH = ["patch", "-s", "-p1", "--binary", "-i"]


def check_roundtrip(src: str, tmp: Path) -> None:
    data = src.encode("utf-8")
    res = rewrite_file("m.py", data, STEPS)
    assert res.status in ("changed", "unchanged", "skipped"), res.reason
    if res.status != "changed":
        return
    after = res.text.encode("utf-8")
    diff = unified_diff("m.py", src, res.text)
    for tool in (GIT, PATCH):
        got = apply_with(tool, "m.py", data, diff, tmp / tool[0])
        assert got == after, (tool[0], got if isinstance(got, str) else "different bytes", diff)
    # Bytes outside the rewritten nodes are kept: every original line the transform had no reason to
    # touch (no "cuda" in it) is in the output, verbatim, as often as before.
    kept = [line for line in git_lines(src) if "cuda" not in line]
    out = git_lines(res.text)
    for line in set(kept):
        assert out.count(line) >= kept.count(line), (line, res.text)
    assert res.text.startswith("\ufeff") == src.startswith("\ufeff")


CASES = {
    "bom": '\ufeffimport torch\nif d.type == "cuda":\n    pass\n',
    "bom-on-the-changed-line": '\ufeffif d.type == "cuda":\n    pass\n',
    "form-feed-line": 'import torch\n\x0c\nif d.type == "cuda":\n    pass\n',
    "form-feed-before-def": 'x = 1\n\x0cdef f():\n    if d.type == "cuda":\n        pass\n',
    "form-feed-before-changed-if": 'x = 1\n\x0cif d.type == "cuda":\n    pass\n',
    "x1c-in-string": 'x = "a\x1cb"\nif d.type == "cuda":\n    pass\n',
    "u2028-in-comment": '# a\u2028b\nif d.type == "cuda":\n    pass\n',
    "x85-in-string": 'x = "a\x85b"\nif d.type == "cuda":\n    pass\n',
    "crlf": 'x = 1\r\nif d.type == "cuda":\r\n    pass\r\n',
    "cr-only": 'x = 1\rif d.type == "cuda":\r    pass\r',
    "no-final-newline": 'x = 1\nif d.type == "cuda":\n    pass',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_case(tmp_path: Path, name: str):
    res = rewrite_file("m.py", CASES[name].encode(), STEPS)
    assert res.status == "changed", res.reason  # each case is rewritten, not skipped
    check_roundtrip(CASES[name], tmp_path)


# -- the class ----------------------------------------------------------------------------------
statements = st.sampled_from([
    'if d.type == "cuda":\n    pass',
    'y = x.device.type != "cuda"',
    "import torch",
    "x = 1",
    "def f(a):\n    return a",
    "class C:\n    z = 2",
    "# a comment {odd}",
    'S = "a{odd}b"',
    "T = '''doc {odd}\nmore'''",
    "",
])


@st.composite
def sources(draw) -> str:
    lines = []
    for stmt in draw(st.lists(statements, min_size=1, max_size=8)):
        odd = draw(st.sampled_from(ODD))
        stmt = stmt.replace("{odd}", odd)
        if draw(st.booleans()) and stmt and not stmt.startswith(" "):
            stmt = "\x0c" + stmt  # a form feed starting a top-level line
        lines.extend(stmt.split("\n"))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = end.join(lines)
    if draw(st.booleans()):
        text += end
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src=sources())
def test_any_source_rewrites_to_a_diff_that_applies_exactly(tmp_path: Path, src: str):
    check_roundtrip(src, tmp_path)


def test_port_diff_reproduces_the_package_through_porter_apply(tmp_path: Path):
    """End to end: the installed porter writes port.diff; applied to a pristine copy of the source it
    gives the patched package (code and generated pyproject.toml) byte for byte."""
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "tinytts")
    shutil.copy(FIXTURES / "tinytts.yaml", tmp_path / "tinytts.yaml")
    model = tmp_path / "tinytts/tinytts/model.py"
    text = model.read_text()
    odd = ("\ufeff" + text.replace("\nimport", "\n\x0cimport", 1).replace("\n", "\r\n")
           + '# tail \u2028 \x1c \x85\r\nS = "\x0c"')  # BOM, form feed, CRLF, no final newline
    model.write_bytes(odd.encode("utf-8"))
    out = tmp_path / "out"
    proc = subprocess.run([PORTER, "apply", str(tmp_path / "tinytts.yaml"), "--no-smoke", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PORTER_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "tinytts/report.json").read_text())
    assert "tinytts/model.py" in report["files"]["changed"]
    patched = (out / "tinytts/tinytts/model.py").read_bytes()
    assert patched.startswith("\ufeff".encode()) and patched.count(b"\x0c") == odd.count("\x0c")
    for tool in (GIT, PATCH):
        pristine = tmp_path / f"pristine-{tool[0]}"
        shutil.copytree(tmp_path / "tinytts", pristine)
        shutil.copy(out / "tinytts/port.diff", pristine / "p.diff")
        res = subprocess.run(tool + ["p.diff"], cwd=pristine, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        (pristine / "p.diff").unlink()
        for p in (pristine / "p.diff.orig", ):
            if p.exists():
                p.unlink()
        want = {q.relative_to(out / "tinytts").as_posix(): q.read_bytes() for q in (out / "tinytts").rglob("*")
                if q.is_file() and q.name not in ("port.diff", "report.md", "report.json")}
        got = {q.relative_to(pristine).as_posix(): q.read_bytes() for q in pristine.rglob("*") if q.is_file()}
        assert {k: got.get(k) for k in want} == want, tool[0]


# -- applying a recipe to its own output is a fixpoint --------------------------------------------
METADATA = """Metadata-Version: 2.1
Name: tinytts
Version: 0.1
Requires-Python: >=3.9
Requires-Dist: numpy>=1.20
Requires-Dist: soundfile; extra == "audio"
"""


def package_bytes(root: Path) -> dict[str, bytes]:
    return {q.relative_to(root).as_posix(): q.read_bytes() for q in root.rglob("*")
            if q.is_file() and q.name not in ("port.diff", "report.md", "report.json")}


def test_applying_a_recipe_to_its_own_output_changes_nothing(tmp_path: Path):
    """A wheel-shaped source (a .dist-info, no packaging file): the output's generated pyproject.toml
    comes from the wheel's METADATA, which the output does not carry; applying the same recipe to the
    output (by --source or by a path: recipe) must give the same package and no drift."""
    shutil.copytree(FIXTURES / "tinytts", tmp_path / "wheel")
    info = tmp_path / "wheel/tinytts-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(METADATA)
    (info / "entry_points.txt").write_text("[console_scripts]\ntinytts-say = tinytts.model:main\n")
    recipe = (FIXTURES / "tinytts.yaml").read_text().replace("path: tinytts", "path: wheel")
    recipe = recipe.replace('package:\n  name: tinytts\n  version: "0.1"\n', "")
    (tmp_path / "r.yaml").write_text(recipe)
    env = {**os.environ, "PORTER_CACHE": str(tmp_path / "c")}

    def apply(*args: str, recipe: str = "r.yaml") -> None:
        proc = subprocess.run([PORTER, "apply", str(tmp_path / recipe), "--no-smoke", *args],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]

    apply("--out", str(tmp_path / "o1"))
    first = package_bytes(tmp_path / "o1/tinytts")
    pyproject = first["pyproject.toml"].decode()
    assert 'version = "0.1+npu"' in pyproject and '"numpy>=1.20"' in pyproject and "tinytts-say" in pyproject

    apply("--out", str(tmp_path / "o2"), "--source", str(tmp_path / "o1/tinytts"))
    assert package_bytes(tmp_path / "o2/tinytts") == first
    report = json.loads((tmp_path / "o2/tinytts/report.json").read_text())
    assert report["changes"] == [] and not any(s["drift"] for s in report["steps"])
    assert [s["matched_earlier"] for s in report["steps"]] == [3, 1]

    (tmp_path / "again.yaml").write_text(recipe.replace("path: wheel", "path: o2/tinytts"))
    apply("--out", str(tmp_path / "o3"), recipe="again.yaml")  # a third generation, by a path: recipe
    assert package_bytes(tmp_path / "o3/tinytts") == first


def test_file_names_with_spaces_tabs_quotes_and_non_ascii_apply(tmp_path: Path):
    """A bare space or tab ends a name in a ---/+++ line: such names are C-quoted as git does."""
    names = ["my file.py", "tab\tx.py", "\u00e9t\u00e9.py", 'q"uote.py', "back\\slash.py", "new\nline.py"]
    for n in names:
        (tmp_path / "src/pkg").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src/pkg" / n).write_text('if d.type == "cuda":\n    pass\n')
    (tmp_path / "r.yaml").write_text("porter: 1\nname: nm\nsource:\n  path: src\nsteps:\n"
                                     "  - use: widen-device-check\n")
    out = tmp_path / "out"
    proc = subprocess.run([PORTER, "apply", str(tmp_path / "r.yaml"), "--no-smoke", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PORTER_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    want = {q.relative_to(out / "nm").as_posix(): q.read_bytes() for q in (out / "nm").rglob("*")
            if q.is_file() and q.name not in ("port.diff", "report.md", "report.json")}
    # (a source walk may refuse names with control characters; every name porter copied must apply)
    assert {"pkg/my file.py", "pkg/\u00e9t\u00e9.py", 'pkg/q"uote.py', "pkg/back\\slash.py"} <= set(want)
    for tool in (GIT, PATCH):
        pristine = tmp_path / f"pristine-{tool[0]}"
        shutil.copytree(tmp_path / "src", pristine)
        shutil.copy(out / "nm/port.diff", tmp_path / f"{tool[0]}.diff")
        res = subprocess.run(tool + [str(tmp_path / f"{tool[0]}.diff")], cwd=pristine, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        got = {q.relative_to(pristine).as_posix(): q.read_bytes() for q in pristine.rglob("*") if q.is_file()}
        assert {k: got.get(k) for k in want} == want, tool[0]


# -- the generated pyproject.toml, whatever the wheel's METADATA holds -----------------------------

from packaging.requirements import InvalidRequirement, Requirement  # noqa: E402

from porter.emit import pyproject_for, split_requires  # noqa: E402
from porter.recipe import load_recipe  # noqa: E402
from porter.source import DistMetadata, FetchedSource, SourceTree  # noqa: E402

names = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,8}", fullmatch=True)
markers = st.sampled_from(["", 'python_version < "3.10"', 'extra == "x"', "extra=='y'",
                           'python_version >= "3" and extra == "gpu"', 'extra == "a" or extra == "b"',
                           '(extra == "z")', 'sys_platform == "linux"', "extra == \"x\" and (os_name == 'nt')"])
requirement_lines = st.one_of(
    st.builds(lambda n, spec, m, sep: f"{n}{spec}{sep}{m}" if m or sep else f"{n}{spec}",
              names, st.sampled_from(["", ">=1.0", "==2.*", " (>=1)", "[extra1]>=3"]), markers,
              st.sampled_from(["; ", ";", " ; ", ""])),
    st.text(max_size=30),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=12), version=st.text(min_size=1, max_size=10),
       requires=st.lists(requirement_lines, max_size=6), python=st.one_of(st.none(), st.text(max_size=10)),
       entry_points=st.text(max_size=60))
def test_generated_pyproject_is_valid_toml_for_any_metadata(tmp_path: Path, name, version, requires, python,
                                                             entry_points):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    recipe = tmp_path / "r.yaml"
    recipe.write_text("porter: 1\nname: w\nsource:\n  path: src\nsteps:\n  - use: widen-device-check\n")
    (tmp_path / "src/pkg").mkdir(parents=True, exist_ok=True)
    (tmp_path / "src/pkg/__init__.py").write_text("")
    loaded = load_recipe(recipe)
    dist = DistMetadata(name=name, version=version, requires_python=python, requires=tuple(requires),
                        entry_points="[console_scripts]\n" + entry_points)
    tree = SourceTree(files={"pkg/__init__.py": tmp_path / "src/pkg/__init__.py"},
                      sources=[FetchedSource(loaded.recipe.sources[0], tmp_path / "src", {}, dist)])
    doc = tomllib.loads(pyproject_for(loaded, tree))
    assert doc["project"]["name"] == name
    plain, extras = split_requires(requires)
    assert doc["project"]["dependencies"] == plain
    for line in requires:  # a line pip reads gives requirements pip reads
        try:
            Requirement(line)
        except InvalidRequirement:
            continue
        for dep in [*plain, *(d for ds in extras.values() for d in ds)]:
            if dep.split(";")[0].strip() == line.split(";")[0].strip():
                Requirement(dep)


def test_empty_marker_and_compact_extra_markers():
    plain, extras = split_requires(["foo ;", 'bar; extra=="x"', 'baz; extra == "a" or extra == "b"',
                                    'q; python_version < "3.10" and extra == "gpu"', 'n ; os_name == "nt"',
                                    "r; 'cpu' == extra", 'never; extra == ""', "s; extra != 'x'"])
    assert plain == ["foo", 'n ; os_name == "nt"', "s; extra != 'x'"]
    assert extras == {"x": ["bar"], "a": ["baz"], "b": ["baz"], "gpu": ['q; python_version < "3.10"'],
                      "cpu": ["r"]}
