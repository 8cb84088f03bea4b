"""Live progress for the lab's long steps: rich progress bars on stderr, or nothing.

`live(enabled)` yields a `Progress`; the lab opens one `step` per phase (starting the fleet,
collecting reports, group sums and regrouping, playing out the day) and updates its count.
Quiet (a no-op) under --json, --no-progress, or when stderr is not a terminal; the lab's
log lines still go to stderr, through the same console while the bars are live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Step:
    """One phase: a bar with a count (total known) or a spinner with a note (total None)."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task
        self.t0 = time.monotonic()

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        if self._bar is not None:
            kw: dict[str, Any] = {"completed": done}
            if total is not None:
                kw["total"] = total
            if note is not None:
                kw["note"] = note
            self._bar.update(self._task, **kw)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Progress:
    """The quiet kind; `live(True)` gives the rich one."""

    @contextmanager
    def step(self, label: str, total: int | None = None) -> Iterator[Step]:
        yield Step()


class _RichProgress(Progress):
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    @contextmanager
    def step(self, label: str, total: int | None = None) -> Iterator[Step]:
        task = self.bar.add_task(label, total=total, note="")
        s = Step(self.bar, task)
        try:
            yield s
        finally:
            if next(t for t in self.bar.tasks if t.id == task).total is None:  # a spinner
                self.bar.update(task, total=1, completed=1)
            self.bar.stop_task(task)


@contextmanager
def live(enabled: bool) -> Iterator[Progress]:
    """Progress bars on stderr while the block runs (and the root logger through the same
    console, so log lines print above the bars); the quiet Progress when not enabled."""
    if not enabled:
        yield Progress()
        return
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as Bar

    console = Console(stderr=True)
    bar = Bar(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description:<26}"),
              BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
              TextColumn("[dim]{task.fields[note]}"), console=console, transient=False)
    root = logging.getLogger()
    old = root.handlers[:]
    handler = RichHandler(console=console, show_path=False, log_time_format="%H:%M:%S")
    root.handlers = [handler]
    try:
        with bar:
            yield _RichProgress(bar)
    finally:
        root.handlers = old
