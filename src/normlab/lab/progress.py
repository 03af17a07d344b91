"""One progress display for a batch of runs: runs done / total, elapsed time and an ETA.

The ETA weighs each run by its cost (its training steps, roughly), not by
count: a sweep's batch-2 run takes thirty times as long as its batch-64 run.
It is ``elapsed / cost done * cost left``, so it already counts however many
processes share the work. In a terminal the display is a rich bar with each
finished run printed above it; elsewhere (a log file, a CI job) it is plain
lines: one per finished run, and one every ``every`` seconds without one.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

MODES = ("auto", "rich", "plain", "none")


def format_duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunsProgress:
    """Track ``len(costs)`` runs; call :meth:`done` as each finishes, :meth:`tick` while waiting, then :meth:`close`.

    mode: "auto" (rich when ``stream`` is a terminal, else plain), "rich", "plain" or "none".
    log: where plain lines go (``print`` by default). every: seconds of silence between plain lines.
    """

    def __init__(self, title: str, costs: Sequence[float], *, mode: str = "auto", log: Callable[[str], None] = print,
                 every: float = 30.0, stream=None, clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
        stream = sys.stdout if stream is None else stream
        if mode == "auto":
            mode = "rich" if getattr(stream, "isatty", lambda: False)() else "plain"
        self.mode, self.log, self.every, self.clock = mode, log, float(every), clock
        self.total, self.total_cost = len(costs), float(sum(costs)) or 1.0
        self.costs = list(costs)
        self.finished, self.cost_done = 0, 0.0
        self.started = self.last_line = clock()
        self.title = title
        self.bar = _Bar(title, self.total, stream) if mode == "rich" else None

    def status(self) -> str:
        """'12/72 runs, 2 min 10 s elapsed, about 4 min 05 s left'."""
        elapsed = self.clock() - self.started
        text = f"{self.finished}/{self.total} runs, {format_duration(elapsed)} elapsed"
        if self.finished == self.total:
            return text
        if self.cost_done <= 0:
            return text + ", time left not known until a run finishes"
        left = elapsed / self.cost_done * (self.total_cost - self.cost_done)
        return text + f", about {format_duration(left)} left"

    def done(self, index: int, note: str = "") -> None:
        """Run ``index`` finished; ``note`` says what it gave (shown with it)."""
        self.finished += 1
        self.cost_done += self.costs[index]
        if self.mode == "plain":
            self._line(f"{self.status()}" + (f" | {note}" if note else ""))
        elif self.bar is not None:
            self.bar.update(self.finished, self.status(), note)

    def tick(self) -> None:
        """Called while waiting: a plain line after ``every`` seconds without one; the bar's clock moves."""
        if self.mode == "plain" and self.clock() - self.last_line >= self.every:
            self._line(self.status())
        elif self.bar is not None:
            self.bar.update(self.finished, self.status(), "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _line(self, text: str) -> None:
        self.last_line = self.clock()
        self.log(text)


class _Bar:
    """The rich bar: a description, the bar, and the status text; finished runs are printed above it."""

    def __init__(self, title: str, total: int, stream):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(TextColumn(title), BarColumn(), TextColumn("{task.fields[status]}"),
                                 console=Console(file=stream), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(title, total=total, status="")

    def update(self, finished: int, status: str, note: str) -> None:
        if note:
            self.progress.console.print(note, markup=False, highlight=False)
        self.progress.update(self.task, completed=finished, status=status)

    def close(self) -> None:
        self.progress.stop()
