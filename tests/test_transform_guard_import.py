"""guard-import beyond its examples: the sites it leaves as findings, and the guarded module at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from porter.transforms import Context, all_transforms

T = all_transforms()["guard-import"]


def run(src: str, **params):
    return T(params or {"modules": ["torchaudio"]}).apply(textwrap.dedent(src), Context(path="m.py"))


def test_import_time_use_outside_an_if_is_a_finding():
    out = run("""\
        import torchaudio
        VERSION = torchaudio.__version__
    """)
    assert len(out.changes) == 1  # the import is guarded ...
    (f,) = out.findings  # ... and the use that would fail on None is reported, not rewritten
    assert f.line == 2 and "torchaudio is None" in f.reason and "outside an `if`" in f.reason


def test_if_that_reads_the_name_in_its_test_is_a_finding():
    out = run("""\
        import torchaudio
        if torchaudio.__version__ > "2":
            X = 1
    """)
    assert [c.kind for c in out.changes] == ["rewrite"]
    assert len(out.findings) == 1 and "its test or else branch" in out.findings[0].reason


def test_try_that_misses_oserror_is_a_finding_and_left_alone():
    src = "try:\n    import torchaudio\nexcept ImportError:\n    torchaudio = None\n"
    out = run(src)
    assert out.text == src and not out.changes
    (f,) = out.findings
    assert "do not catch OSError" in f.reason


def test_mixed_import_line_is_a_finding():
    out = run("import os, torchaudio\n")
    assert not out.changes
    assert "cannot be wrapped" in out.findings[0].reason


def test_several_names_and_decorator_use():
    out = run("""\
        from torchaudio.functional import resample, gain as g
        import torch


        @torch.no_grad()
        def f(x):
            return resample(x, 1, 2)
    """)
    assert "    resample = None\n    g = None\n" in out.text
    assert not out.findings  # a function body is not import time


def test_params_are_validated():
    with pytest.raises(ValidationError):
        T({"modules": []})
    with pytest.raises(ValidationError):
        T({"modules": ["torchaudio.functional"]})
    with pytest.raises(ValidationError):
        T({"modules": ["x"], "errors": ["not an error!"]})


def test_guarded_module_imports_where_the_package_raises(tmp_path):
    """A package that raises OSError at import: the original module fails, the rewritten one imports
    with the name None, and the second run of the transform changes nothing."""
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text('raise OSError("cannot load libbroken.so")\n')
    src = "import brokenpkg\n\n\ndef use():\n    return brokenpkg.x\n"
    out = T({"modules": ["brokenpkg"]}).apply(src, Context(path="m.py"))
    again = T({"modules": ["brokenpkg"]}).apply(out.text, Context(path="m.py"))
    assert again.text == out.text and not again.changes
    for text, expect in ((src, "OSError"), (out.text, "None")):
        (tmp_path / "m.py").write_text(text)
        proc = subprocess.run([sys.executable, "-c", "import m; print(m.brokenpkg)"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert expect in (proc.stdout + proc.stderr), (text, proc.stdout, proc.stderr)
