"""Progress that suits where it goes: a live bar on a terminal, a few whole lines in a log file.

A redirected run (`make demo > log 2>&1`, a batch job, CI) gets no carriage-return redraws: one line per
`LOG_EVERY_PERCENT` of the work (and at the end), each with the position, the rate and the latest values.
"""

from __future__ import annotations

import math
import sys
import time

LOG_EVERY_PERCENT = 5


def progress(total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True):
    """A progress counter with tqdm's `update`, `set_postfix` and `close`. The postfix values are formatted when the
    progress is shown, not when they are set: a training step's loss is then read from the GPU (which waits for the
    step's kernels) only as often as it is shown."""
    if enabled and sys.stderr.isatty():
        return _terminal_bar(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    return LogProgress(total, initial, desc, unit, enabled)


def _postfix(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _terminal_bar(**settings):
    from tqdm.auto import tqdm

    class TerminalBar(tqdm):
        """tqdm, its postfix values formatted when the bar is drawn."""

        values: dict = {}

        def set_postfix(self, ordered_dict=None, refresh=True, **values) -> None:
            self.values = {**(ordered_dict or {}), **values}

        @property
        def format_dict(self) -> dict:
            return {**super().format_dict, "postfix": _postfix(self.values) or None}

    return TerminalBar(**settings)


class LogProgress:
    """Whole lines on stderr at every LOG_EVERY_PERCENT of `total` and at its end: at most 100 / LOG_EVERY_PERCENT + 1."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True):
        self.total, self.n, self.desc, self.unit, self.enabled = total, initial, desc, unit, enabled
        self.start, self.start_n = time.monotonic(), initial
        self.every = max(1, math.ceil(total * LOG_EVERY_PERCENT / 100))
        self.values: dict = {}

    def set_postfix(self, **values) -> None:
        self.values = values

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.enabled and (self.n // self.every > before // self.every or self.n >= self.total > before):
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        left = f", {_clock((self.total - self.n) / rate)} left" if rate and self.n < self.total else ""
        postfix = f", {_postfix(self.values)}" if self.values else ""
        return (f"{self.desc}: {self.unit} {self.n}/{self.total} ({100 * self.n // max(1, self.total)}%), "
                f"{_clock(elapsed)} elapsed{left}, {rate:.2f} {self.unit}/s{postfix}")

    def close(self) -> None:
        """Nothing to release: the last line was printed when `total` was reached (tqdm's interface)."""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
