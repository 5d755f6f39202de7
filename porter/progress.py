"""A progress bar on stderr for runs that last: nothing for two seconds, then a rich bar.

Short runs (a recipe over a small package) print nothing extra; a run over a large tree shows
files done out of files to do, and the bar goes away when the run ends. It draws only on a
terminal, so piped output, logs and tests see exactly what they saw before.

    with FileProgress("rewrite") as bar:
        rewrite_tree(files, steps, progress=bar)
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DELAY_S = 2.0


class FileProgress:
    """Call it with (done, total) as files finish; the bar appears once `delay` seconds passed."""

    def __init__(self, label: str, console: Console | None = None, delay: float = DELAY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.console = console or Console(stderr=True)
        self.delay = delay
        self.clock = clock
        self.started = clock()
        self._bar: Progress | None = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if not self.console.is_terminal or self.clock() - self.started < self.delay:
                return
            self._bar = Progress(TextColumn(f"porter: {self.label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("files"), TimeElapsedColumn(), console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        self._bar.update(self._task, completed=done, total=total)  # type: ignore[arg-type]

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "FileProgress":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
