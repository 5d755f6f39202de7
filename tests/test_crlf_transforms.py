"""CRLF files (boson-multimodal's wheel ships only CRLF .py files) must come out of every transform
with CRLF on every line: each transform example, with its line endings turned into CRLF, must give
exactly what the transform gives for the LF text, with CRLF line endings (the examples' own
expected outputs are tests/test_transform_examples.py's business).

Known gap (reported to the lead): helpers written into a module through `Rewriter.need_helper` keep
the LF line breaks inside their multi-line docstrings, so a CRLF file gets a few LF lines (Python
and `git apply` do not mind; the file has mixed line endings). The examples that insert such a
helper are marked xfail (not strict: it passes once fixed); `pytest --runxfail` shows them failing.
"""

from __future__ import annotations

import pytest

from porter.transforms import Context, all_transforms

CASES = [
    (name, cls, ex)
    for name, cls in all_transforms().items()
    for ex in cls.examples
    if ex.after is not None and "\n" in ex.before
]

MULTILINE_DOCSTRING_HELPERS = {"attention-fallback", "compile-bypass"}


def _known_gap(name, cls, ex) -> bool:
    if name not in MULTILINE_DOCSTRING_HELPERS:
        return False
    out = cls(ex.params).apply(ex.before, Context(path=ex.path))
    return any(c.kind == "helper" and '"""' in c.after and "\n" in c.after.split('"""')[1] for c in out.changes)


@pytest.mark.parametrize(
    "name,cls,ex",
    [
        pytest.param(*case, id=f"{case[0]}:{case[2].id}",
                     marks=[pytest.mark.xfail(reason="helper docstrings keep LF line breaks in CRLF files")]
                     if _known_gap(*case) else [])
        for case in CASES
    ],
)
def test_transform_keeps_crlf(name, cls, ex):
    lf = cls(ex.params).apply(ex.before, Context(path=ex.path))
    out = cls(ex.params).apply(ex.before.replace("\n", "\r\n"), Context(path=ex.path))
    lf_lines = out.text.replace("\r\n", "").count("\n")
    assert lf_lines == 0, f"{name}:{ex.id} wrote {lf_lines} LF line breaks into a CRLF file"
    assert out.text == lf.text.replace("\n", "\r\n")
    assert [(c.line, c.end_line, c.kind) for c in out.changes] == [(c.line, c.end_line, c.kind) for c in lf.changes]


def test_guard_import_keeps_crlf_in_nested_blocks():
    src = "import torch\r\nif avail():\r\n    import deepspeed\r\n\r\nif avail():\r\n    deepspeed.x = 1\r\n"
    out = all_transforms()["guard-import"]({"modules": ["deepspeed"]}).apply(src, Context(path="x.py"))
    assert out.text == (
        "import torch\r\nif avail():\r\n    try:\r\n        import deepspeed\r\n"
        "    except (ImportError, OSError):  # installed but cannot load on this host (added by porter)\r\n"
        "        deepspeed = None\r\n\r\nif avail() and deepspeed is not None:\r\n    deepspeed.x = 1\r\n"
    )
    assert [(c.line, c.end_line) for c in out.changes] == [(3, 4), (5, 5)]
