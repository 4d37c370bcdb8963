"""When a search ends early: a wall-clock deadline (`timeout=seconds`) or a callback's stop."""

from __future__ import annotations

import time

import numpy as np

from vhjax.validation import check_number


class Deadline:
    """`timeout` seconds after it is made (None: never), or sooner once `stop()` is called (a
    callback returned True). `passed()` says whether the search should start nothing new; `reached`
    whether the timeout came (seen by a `passed()` call), `stopped` whether a callback asked."""

    def __init__(self, timeout: float | None):
        if timeout is not None:
            check_number("timeout", timeout, low=0, low_inclusive=False)
        self.timeout = None if timeout is None else float(timeout)
        self.at = None if timeout is None else time.perf_counter() + self.timeout
        self.reached = False
        self.stopped = False

    def stop(self) -> None:
        """End the search as the timeout would, now (a callback asked)."""
        self.stopped = True

    def passed(self) -> bool:
        if self.at is not None and time.perf_counter() >= self.at:
            self.reached = True
        return self.reached or self.stopped

    def reason(self) -> str:
        """What ended the search, for a progress line: the timeout (when it came) or the callback."""
        return f"timeout ({self.timeout:g} s)" if self.reached else "stopped by the callback"

    @property
    def ended(self) -> bool:
        """Whether the timeout or a stop ended the search early."""
        return self.reached or self.stopped


def asks_stop(answer: object) -> bool:
    """Whether a callback's return value asks the search to stop: True (or NumPy's True); None, the
    return of a function without one, and every other value go on."""
    return isinstance(answer, (bool, np.bool_)) and bool(answer)
