"""`porter transforms`, `porter explain`, `--help`: the docs come from the code."""

from __future__ import annotations

import subprocess
import sys

from porter.cli import main
from porter.transforms import all_transforms


def test_transforms_lists_every_transform(capsys):
    assert main(["transforms"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(all_transforms())


def test_explain_shows_doc_params_and_examples(capsys):
    assert main(["explain", "widen-device-check"]) == 0
    out = capsys.readouterr().out
    assert "Widen comparisons" in out and "devices:" in out
    assert '- if x.device.type != "cpu"' not in out
    assert 'x.device.type in ("cuda", "npu")' in out and "left alone" in out


def test_explain_unknown_suggests(capsys):
    assert main(["explain", "mem-get-inf"]) == 2
    assert "did you mean 'mem-get-info'" in capsys.readouterr().err


def test_console_script_help_and_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "porter.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Exit codes" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "porter.cli", "apply"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Missing argument" in proc.stderr
