"""The progress bar: silent for short runs and off a terminal, then a bar fed by the rewrite loop."""

from __future__ import annotations

import io

from rich.console import Console

from porter.progress import FileProgress
from porter.rewrite import StepPlan, rewrite_tree
from porter.transforms import all_transforms


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100), out


def test_nothing_for_two_seconds_then_a_bar_on_a_terminal():
    console, out = terminal()
    clock = Clock()
    with FileProgress("rewrite", console=console, clock=clock) as bar:
        bar(1, 10)
        clock.now = 1.9
        bar(2, 10)
        assert not bar.shown and out.getvalue() == ""
        clock.now = 2.1
        bar(3, 10)
        assert bar.shown
        bar(10, 10)
    assert "porter: rewrite" in out.getvalue()


def test_never_drawn_off_a_terminal():
    out = io.StringIO()
    clock = Clock()
    with FileProgress("rewrite", console=Console(file=out, force_terminal=False), clock=clock) as bar:
        clock.now = 60.0
        bar(5, 10)
        assert not bar.shown
    assert out.getvalue() == ""


def test_the_rewrite_loop_reports_every_file_it_was_asked_to_do(tmp_path):
    files = {}
    for i in range(5):
        p = tmp_path / f"m{i}.py"
        p.write_text(f'import torch\nif x.device.type == "cuda":\n    y = {i}\n', encoding="utf-8")
        files[p.name] = p
    (tmp_path / "notes.txt").write_text("cuda\n", encoding="utf-8")
    files["notes.txt"] = tmp_path / "notes.txt"
    step = StepPlan(index=1, transform=all_transforms()["widen-device-check"](), files=("**/*.py",))
    calls: list[tuple[int, int]] = []
    for jobs in (1, 2):
        calls.clear()
        result = rewrite_tree(files, (step,), jobs=jobs, progress=lambda d, t: calls.append((d, t)))
        assert len(result.by_status("changed")) == 5
        assert calls == [(i, 5) for i in range(1, 6)]  # notes.txt is not a file the step wants
