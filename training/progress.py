"""fit.py's progress bar: steps against --steps, or, under --max-minutes, the nearer of the two ends.

A run with a time budget usually stops on the clock long before --steps (20000 by default), so a
bar over steps would sit near 0% with an ETA of hours. Under a budget the bar is in seconds and
its end is whichever comes first: the budget, or --steps at the step rate so far; it shows the
steps done, the time left and the rate beside it.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

TIME_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {status}"


class _StatusBar(tqdm):
    """tqdm with a `{status}` field for bar_format (its postfix always starts with ', ')."""

    status = ""

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "status": self.status}


class Progress:
    """One training run's bar; `step(done)` after every optimiser step, `note(...)` for loss / val."""

    def __init__(self, desc: str, start: int, steps: int, max_minutes: float = 0.0,
                 disable: bool = False, file: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter, mininterval: float = 1.0):
        self.start, self.steps, self.budget = start, steps, 60.0 * max_minutes
        self.clock, self.t0, self.done = clock, clock(), start
        self.notes: dict[str, str] = {}
        common = dict(desc=desc, dynamic_ncols=True, mininterval=mininterval, disable=disable,
                      file=file or sys.stderr)
        if self.budget:
            self.bar = _StatusBar(total=self.budget, bar_format=TIME_FORMAT, **common)
        else:
            self.bar = tqdm(total=steps, initial=start, unit="step", **common)

    def seconds_left(self) -> float:
        """Until the nearer end: the budget, or the steps left at the rate so far."""
        elapsed = self.clock() - self.t0
        left = self.budget - elapsed if self.budget else float("inf")
        ran = self.done - self.start
        if ran > 0 and elapsed > 0:
            left = min(left, (self.steps - self.done) * elapsed / ran)
        return max(0.0, left)

    def step(self, done: int) -> None:
        """Record that `done` steps (resume included) are complete and redraw when due."""
        moved, self.done = done - self.done, done
        if not self.budget:
            self.bar.update(moved)
            return
        elapsed = self.clock() - self.t0
        self.bar.total = elapsed + self.seconds_left()
        self.bar.status = self._status(elapsed)
        self.bar.update(elapsed - self.bar.n)

    def note(self, **values: str) -> None:
        """Values shown beside the bar (loss, val), kept until replaced."""
        self.notes.update(values)
        if self.budget:
            self.bar.status = self._status(self.clock() - self.t0)
        else:
            self.bar.set_postfix(self.notes, refresh=False)

    def _status(self, elapsed: float) -> str:
        ran = self.done - self.start
        rate = f", {ran / elapsed:.2f} step/s" if ran > 0 and elapsed > 0 else ""
        parts = [f"step {self.done}/{self.steps}",
                 f"{tqdm.format_interval(elapsed)} elapsed, {tqdm.format_interval(self.seconds_left())} left "
                 f"(budget {tqdm.format_interval(self.budget)}){rate}"]
        parts += [f"{k}={v}" for k, v in self.notes.items()]
        return ", ".join(parts)

    def close(self) -> None:
        self.bar.close()
