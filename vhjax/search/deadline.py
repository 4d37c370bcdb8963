"""A wall-clock deadline for a search (`tune(..., timeout=seconds)`)."""

from __future__ import annotations

import time

from vhjax.validation import check_number


class Deadline:
    """`timeout` seconds after it is made (None: never). `passed()` says whether that time has come;
    `reached` whether any call saw it come (the search then ended early, or started nothing new)."""

    def __init__(self, timeout: float | None):
        if timeout is not None:
            check_number("timeout", timeout, low=0, low_inclusive=False)
        self.timeout = None if timeout is None else float(timeout)
        self.at = None if timeout is None else time.perf_counter() + self.timeout
        self.reached = False

    def passed(self) -> bool:
        if self.at is not None and time.perf_counter() >= self.at:
            self.reached = True
        return self.reached
