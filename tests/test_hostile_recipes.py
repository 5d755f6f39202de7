"""Recipes written by someone else: whatever the YAML holds, `porter validate` answers 0 or 2 with
file:line, never an internal error (3), a traceback, minutes of work or gigabytes of memory."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from porter.errors import UsageError
from porter.recipe import MAX_ALIAS_NODES, load_recipe

PORTER = Path(sys.executable).with_name("porter")
SHA = "a" * 40


def run_porter(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PORTER), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def validate_cli(tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "r.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run_porter("validate", "r.yaml", cwd=tmp_path)


def assert_usage_error(proc: subprocess.CompletedProcess[str], needle: str, line: int | None = None) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    if line is not None:
        assert f"r.yaml:{line}:" in proc.stderr, proc.stderr


# -- YAML aliases: billion laughs and recursive anchors -----------------------------------------
def laughs(levels: int, width: int = 9) -> str:
    out = ["porter: 1", "name: x", "source: {path: .}", "steps: []", 'l0: &l0 ["lol"]']
    for i in range(1, levels + 1):
        out.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n"


def test_billion_laughs_is_refused_quickly_with_the_alias_line(tmp_path):
    text = laughs(9)  # 9**9 = 387 million values once expanded; ~500 bytes of YAML
    assert len(text) < 600
    start = time.perf_counter()
    proc = validate_cli(tmp_path, text)
    elapsed = time.perf_counter() - start
    assert_usage_error(proc, f"more than {MAX_ALIAS_NODES} values")
    # The first alias past the budget: l4 (line 9) aliases l3, 1549 values, nine times.
    assert "r.yaml:9:" in proc.stderr and "alias *l3" in proc.stderr, proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s (cpu, x86_64, 2 cores; shared)"


def test_alias_budget_is_measured_in_process_memory_too(tmp_path):
    # In-process: the refusal must not build the expansion (peak RSS grows by well under 100 MB).
    p = tmp_path / "r.yaml"
    p.write_text(laughs(12))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UsageError, match="YAML aliases expand"):
        load_recipe(p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.parametrize("text,line", [
    ("porter: 1\nname: x\nsource: {path: .}\nsteps: &a [*a]\n", 4),
    ("porter: 1\nname: x\nsource: {path: .}\nsteps: []\nm: &m {k: [1, {deeper: *m}]}\n", 5),
])
def test_recursive_anchor_is_refused(tmp_path, text, line):
    assert_usage_error(validate_cli(tmp_path, text), "recursive anchor", line)


def test_small_alias_use_still_works(tmp_path):
    text = ("porter: 1\nname: x\nsource: {path: .}\nsteps:\n"
            "  - use: widen-device-check\n    files: &f ['a/*.py', 'b/**/*.py']\n"
            "  - use: cuda-api\n    files: *f\n")
    proc = validate_cli(tmp_path, text)
    assert proc.returncode == 0, proc.stderr


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    text = "porter: 1\nname: x\nsource: {path: .}\nsteps: " + "[" * 5000 + "]" * 5000 + "\n"
    assert_usage_error(validate_cli(tmp_path, text), "nested more than", 4)


def test_oversized_recipe_is_refused(tmp_path):
    text = "porter: 1\nname: x\nsource: {path: .}\nsteps: []\n" + "# padding\n" * 200_000
    assert_usage_error(validate_cli(tmp_path, text), "larger than 1 MiB")


# -- wrong types and odd values ----------------------------------------------------------------
BASE = "porter: 1\nname: x\nsource: {path: .}\n"


@pytest.mark.parametrize("text,needle,line", [
    (BASE + "steps: 5\n", "steps: Input should be a list", 4),
    (BASE + "steps: {use: cuda-api}\n", "steps: Input should be a list", 4),
    (BASE + "steps: hello\n", "steps: Input should be a list", 4),
    (BASE + "steps:\n  - use: widen-device-check\n    files: ['[z-a]']\n", "not a valid glob", 6),
    (BASE + "steps:\n  - use: widen-device-check\n    exclude: ['a/[b-a]/*.py']\n", "not a valid glob", 6),
    ("porter: 1\nname: x\nsource: {path: ., files: ['[9-0]']}\nsteps: []\n", "not a valid glob", 3),
    (BASE + "steps: []\nscan: {files: ['[z-a]']}\n", "not a valid glob", 5),
    # a torch_npu release that is no release: refused before a data file is looked up (a name too
    # long for the file system used to be exit 3, found by the property test below)
    (BASE + "steps:\n  - use: hardcoded-device\n    with: {torch_npu: '" + "x" * 300 + "'}\n",
     "no transfer_to_npu data for torch_npu", 6),
    (BASE + "steps:\n  - use: hardcoded-device\n    with: {torch_npu: ../../x}\n", "no transfer_to_npu data", 6),
    (BASE + "steps:\n  - use: widen-device-check\n    files: ['" + "*" * 40 + "']\n", "too long", 6),
    ("porter: 1\nname: " + "a" * 300 + "\nsource: {path: .}\nsteps: []\n", "at most 100 characters", 2),
    ("porter: 1\nname: x\nsource: {path: ., into: " + "d" * 300 + "}\nsteps: []\n", "longer than 255", 3),
    ("porter: 1\nname: x\nsource: {path: ., id: 'a=b'}\nsteps: []\n", "source.id", 3),
    (BASE + "steps: []\npackage: {dependencies: ['foo ;;']}\n", "not a PEP 508 requirement", 5),
    (BASE + "steps: []\npackage: {name: 'a\"b'}\n", "package.name", 5),
    (BASE + "steps: []\nextra: " + "1" * 5000 + "\n", "a value cannot be read", None),
    (BASE + "steps: []\nwhen: 2001-13-45\n", "a value cannot be read", None),
    ("porter: 1\nname: x\nsource: {hub: '../../etc', revision: main}\nsteps: []\n", "not a repository id", 3),
    ("porter: 1\nname: x\nsource: {hub: org/m, revision: '--output=/tmp/x'}\nsteps: []\n", "not a revision", 3),
    ("porter: 1\nname: x\nsource: {modelscope: justname, revision: master}\nsteps: []\n", "OWNER/NAME", 3),
    (b"porter: 1\nname: x\nsource: {path: \"a\\x01b\"}\nsteps: []\n", "control character", 3),
])
def test_odd_values_are_usage_errors_with_lines(tmp_path, text, needle, line):
    assert_usage_error(validate_cli(tmp_path, text), needle, line)


def test_recipe_that_is_a_directory(tmp_path):
    (tmp_path / "r.yaml").mkdir()
    assert_usage_error(run_porter("validate", "r.yaml", cwd=tmp_path), "is a directory")


# -- the whole class, by property ---------------------------------------------------------------
KEYS = ["porter", "name", "source", "steps", "use", "with", "files", "exclude", "expect", "reason", "path",
        "pypi", "git", "rev", "hub", "modelscope", "revision", "into", "id", "sha256", "archive", "package",
        "version", "dependencies", "local_version", "scan", "device", "description", "smoke", "weights",
        "devices", "note"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["cuda-api", "widen-device-check", "**/*.py", "[z-a]", "-x", "ext::sh", "a==1", "1",
                     ".", "..", "/etc/passwd", "x" * 300, SHA, "org/model", "\x00", "\u202e", "~", "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()),
                                            inner, max_size=5)),
    max_leaves=25,
)
recipes = st.fixed_dictionaries(
    {"porter": st.one_of(st.just(1), scalars)},
    optional={k: values for k in ["name", "source", "steps", "package", "scan", "device", "smoke", "weights",
                                  "description"]},
)


def mutate_valid(draw_value: object, key_path: tuple[str | int, ...]) -> dict:
    data: dict = {"porter": 1, "name": "x", "source": {"path": "."},
                  "steps": [{"use": "widen-device-check", "files": ["**/*.py"], "expect": 1}],
                  "package": {"name": "p", "dependencies": ["a>=1"]}}
    node: object = data
    for k in key_path[:-1]:
        node = node[k]  # type: ignore[index]
    node[key_path[-1]] = draw_value  # type: ignore[index]
    return data


PATHS = [("porter",), ("name",), ("source",), ("source", "path"), ("steps",), ("steps", 0), ("steps", 0, "use"),
         ("steps", 0, "with"), ("steps", 0, "files"), ("steps", 0, "expect"), ("package",),
         ("package", "dependencies"), ("package", "name"), ("scan",), ("device",), ("smoke",), ("weights",)]


def _loads_or_usage_error(tmp_path: Path, data: object) -> None:
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_recipe(p)
    except UsageError as exc:
        assert str(exc).startswith(str(p)) or "r.yaml" in str(exc), str(exc)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(recipes)
@example({"porter": 1, "name": "x", "source": {"path": "."}, "steps": 5})
@example({"porter": 1, "name": "x", "source": {"path": "."}, "steps": [{"use": "cuda-api", "with": 5}]})
@example({"porter": 1, "name": "x", "source": [5], "steps": []})
def test_any_yaml_mapping_loads_or_is_a_usage_error(tmp_path, data):
    _loads_or_usage_error(tmp_path, data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.sampled_from(PATHS), values)
def test_one_field_of_a_good_recipe_replaced_loads_or_is_a_usage_error(tmp_path, path, value):
    _loads_or_usage_error(tmp_path, mutate_valid(value, path))


yaml_text = st.lists(st.sampled_from([
    "porter: 1\n", "name: x\n", "source: {path: .}\n", "steps: []\n", "steps:\n", "  - use: cuda-api\n",
    "    with: {}\n", "    files: [\"**/*.py\"]\n", "a: &a [1, 2]\n", "b: &b [*a, *a, *a]\n", "c: [*b, *b]\n",
    "d: *d\n", "e: &e {x: *e}\n", "- x\n", "? [a]\n: 1\n", "f: !!binary 'zz'\n", "g: !!python/object:os.system x\n",
    "h: !!set {a, b}\n", "i: 2001-02-30\n", "j: !!float x\n", "<<: *a\n", "k: {<<: *a}\n", "%YAML 1.1\n---\n",
    "---\n", "...\n", "\t\n", "'\n", "l: [[[[[[[[[[[[[[[[[[[[\n", "m: \"\\uD800\"\n",
]), max_size=12).map("".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(yaml_text)
def test_any_yaml_text_loads_or_is_a_usage_error(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    try:
        load_recipe(p)
    except UsageError:
        pass


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(recipes, st.sampled_from(PATHS).flatmap(lambda p: values.map(lambda v: mutate_valid(v, p)))))
def test_installed_validate_exits_0_or_2(tmp_path, data):
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    proc = validate_cli(tmp_path, text.encode("utf-8", "surrogatepass"))
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_nan_and_inf_expect_are_usage_errors(tmp_path):
    for v in (".nan", ".inf", "-.inf", "1.5"):
        proc = validate_cli(tmp_path, BASE + f"steps:\n  - use: cuda-api\n    expect: {v}\n")
        assert_usage_error(proc, "steps[0].expect", 6)


def _fields() -> tuple[dict[str, list[str]], list[str], list[str]]:
    from porter.smoke.spec import SmokeSpec
    from porter.transforms import all_transforms
    from porter.weights import WeightsSpec

    return ({n: list(c.Params.model_fields) for n, c in all_transforms().items()},
            list(SmokeSpec.model_fields), list(WeightsSpec.model_fields))


PARAMS, SMOKE_FIELDS, WEIGHTS_FIELDS = _fields()
step_with_params = st.sampled_from(sorted(PARAMS)).flatmap(lambda use: st.fixed_dictionaries(
    {"use": st.just(use),
     "with": st.dictionaries(st.sampled_from(PARAMS[use] or ["x"]), values, max_size=3)}))
section = lambda names: st.dictionaries(st.sampled_from(names), values, max_size=4)  # noqa: E731


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.lists(step_with_params, max_size=3), st.one_of(st.none(), section(SMOKE_FIELDS)),
       st.one_of(st.none(), section(WEIGHTS_FIELDS)))
def test_every_transform_smoke_and_weights_field_with_any_value(tmp_path, steps, smoke, weights):
    data = {"porter": 1, "name": "x", "source": {"path": "."}, "steps": steps}
    if smoke is not None:
        data["smoke"] = smoke
    if weights is not None:
        data["weights"] = weights
    _loads_or_usage_error(tmp_path, data)


@pytest.mark.parametrize("pattern, path, matches", [
    ("m[!0-9].py", "ma.py", True), ("m[!0-9].py", "m1.py", False), ("m[!0-9].py", "m!.py", True),
    ("m[^a].py", "ma.py", False), ("m[abc].py", "m!.py", False), ("m[]x].py", "m].py", True),
    ("m[!]].py", "m].py", False), ("a[!x]b", "a/b", False), ("a[/]b", "a/b", False),
    ("**/m[a-c].py", "x/y/mb.py", True),
])
def test_glob_classes_match_as_fnmatch_does_and_never_span_a_folder(pattern, path, matches):
    """`[!...]` negates (it used to match "!" or the listed characters), and a class is one character
    of a file or folder name, never "/" (a step's files: must not reach into another folder)."""
    from porter.rewrite import _glob

    assert bool(_glob(pattern).match(path)) is matches
