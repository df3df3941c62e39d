"""Progress of long work (training, the fit, evaluation, detection), shown the same way everywhere.

On an interactive console (a terminal, a notebook) `ProgressReport` draws a rich progress bar. Anywhere else (a
pipe, a log file, CI) a bar is invisible until it ends, so it prints a plain line instead, at most every
``interval`` seconds, plus one at the end::

    polishing: 3/40 steps, 12.3 s, ETA 2.5 min, 1,234 tok/s  KL bits/byte: L0 1.234
    detect: 40/120 prompts, 41 s, ETA 1.4 min

The interval is `DEFAULT_INTERVAL` seconds, or ``$LENS_HUB_PROGRESS_INTERVAL`` (0: a line at every update).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

INTERVAL_ENV = "LENS_HUB_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0

Progress = Callable[[int, int], None]
"""A progress callback: called with (units done, units in all)."""


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$LENS_HUB_PROGRESS_INTERVAL`` if it is a number >= 0, else
    `DEFAULT_INTERVAL`."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def format_seconds(seconds: float) -> str:
    """``12.3 s``, ``2.5 min`` or ``1.2 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def is_interactive(console: Any) -> bool:
    """Whether ``console`` (a rich console) redraws a progress bar in place: a terminal or a notebook."""
    return bool(console.is_interactive or console.is_jupyter)


class ProgressReport:
    """The progress of one long task on a rich console: a bar where it can be redrawn, plain lines elsewhere.

    Use it as a context manager (or call `close`), and call `update` as units of work complete.

    Args:
        label: What is running (``"training"``, ``"detect"``); starts every plain line.
        console: A rich console; None: rich's default console (stdout).
        total: Units in all (None: unknown until an `update` gives it).
        unit: The units' name, plural (``"steps"``, ``"prompts"``).
        done: Units already done (a resumed run); the ETA counts only the units done since.
        info: Text shown after the counts (throughput, losses); `update` may replace it.
        interval: Seconds between plain lines (default: `progress_interval`).
    """

    def __init__(
        self,
        label: str,
        console: Any = None,
        *,
        total: int | None = None,
        unit: str = "",
        done: int = 0,
        info: str = "",
        interval: float | None = None,
    ) -> None:
        if console is None:
            from rich import get_console

            console = get_console()
        self.label, self.console, self.unit = label, console, unit
        self.total, self.done, self.info = total, done, info
        self.interval = progress_interval() if interval is None else interval
        self._first, self._start = done, time.perf_counter()
        self._last_line: float | None = None  # when the last plain line was printed
        self._printed = True  # the current state has been printed (nothing to add at the end)
        self._bar: Any = None
        if is_interactive(console):
            self._bar = _rich_bar(label, unit, console)
            self._task = self._bar.add_task(label, total=total, completed=done, info=info)

    def __enter__(self) -> ProgressReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, total: int | None = None, info: str | None = None) -> None:
        """Record ``done`` units complete (of ``total``, if it is now known), with new ``info`` text."""
        self.done = done
        self.total = total if total is not None else self.total
        self.info = info if info is not None else self.info
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, info=self.info)
            return
        now = time.perf_counter()
        self._printed = False
        if self._last_line is None or now - self._last_line >= self.interval:
            self._print_line(now)

    def __call__(self, done: int, total: int) -> None:
        """`update` as a `Progress` callback."""
        self.update(done, total)

    def line(self, now: float | None = None) -> str:
        """The plain progress line for the current state."""
        elapsed = (time.perf_counter() if now is None else now) - self._start
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        parts = [f"{self.label}: {count}{' ' + self.unit if self.unit else ''}", format_seconds(elapsed)]
        progressed = self.done - self._first
        if self.total is not None and progressed > 0 and self.done < self.total:
            parts.append(f"ETA {format_seconds(elapsed / progressed * (self.total - self.done))}")
        text = ", ".join(parts)
        return f"{text}, {self.info}" if self.info else text

    def _print_line(self, now: float) -> None:
        self.console.print(self.line(now), markup=False, highlight=False, soft_wrap=True)
        self._last_line, self._printed = now, True

    def close(self) -> None:
        """Stop the bar, or print the final state if the last plain line did not show it."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not self._printed:
            self._print_line(time.perf_counter())


def _rich_bar(label: str, unit: str, console: Any) -> Any:
    """A started rich progress bar: label, bar, done/total units, elapsed, ETA, and the free ``info`` field."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"[bold]{escape(label)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(escape(unit)),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    bar.start()
    return bar
