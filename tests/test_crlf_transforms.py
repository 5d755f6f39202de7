"""CRLF files (boson-multimodal's wheel ships only CRLF .py files) must come out of every transform
with CRLF on every line: each transform example, with its line endings turned into CRLF, must give
exactly what the transform gives for the LF text, with CRLF line endings (the examples' own
expected outputs are tests/test_transform_examples.py's business).

Helpers written into a module through `Rewriter.need_helper` are parsed in the module's own
newline, docstrings included (they used to keep LF lines inside CRLF files).
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

@pytest.mark.parametrize("name,cls,ex", [pytest.param(*case, id=f"{case[0]}:{case[2].id}") for case in CASES])
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
