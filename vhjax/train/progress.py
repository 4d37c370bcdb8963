"""Progress of the training loop: a tqdm bar with rate and ETA when stderr is a terminal, plain lines
(one per chunk, with the step count and ETA) otherwise, nothing with `verbose=False`.

The same object serves `fit`, `fit_population`, PBT, k-fold and the CLI (`--quiet` is
`verbose=False`), so Python and the command line print the same.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from vhjax.train.metrics_log import is_main_process, print_progress


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def terminal_size(stream: Any, default: tuple[int, int] = (100, 24)) -> tuple[int, int]:
    """(columns, lines) of the terminal, each `default` where it reports 0 (a pseudo-terminal with
    no size, on which tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return default
    return size.columns or default[0], size.lines or default[1]


class Progress:
    """`update(steps_done_in_chunk, line)` after each chunk; `close()` at the end.

    `bar`: None picks a tqdm bar when stderr is a terminal, plain lines otherwise.
    The ETA extrapolates the steps per second measured since the loop started (the first chunk,
    which compiles, is included: early estimates are pessimistic)."""

    def __init__(self, total: int, initial: int = 0, label: str = "", verbose: bool = True, bar: bool | None = None,
                 unit: str = "step"):
        verbose = verbose and is_main_process()  # in a multi-process run, process 0 reports
        self.total, self.step, self.label, self.verbose = total, initial, label, verbose
        self.start_step, self.start_time = initial, time.perf_counter()
        self._bar = None
        if verbose and (is_terminal(sys.stderr) if bar is None else bar):
            from tqdm.auto import tqdm

            columns, lines = terminal_size(sys.stderr)

            self._bar = tqdm(total=total, initial=initial, desc=label.rstrip(" |") or None, unit=unit,
                             file=sys.stderr, ncols=columns, nrows=lines, leave=True)

    def eta(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (self.total - self.step) * (time.perf_counter() - self.start_time) / done

    def update(self, length: int, line: str) -> None:
        self.step += length
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.update(length)
            self._bar.write(line, file=sys.stdout)
            return
        eta = self.eta()
        elapsed = time.perf_counter() - self.start_time
        timing = f"elapsed {format_duration(elapsed)}" + (f" eta {format_duration(eta)}" if eta is not None else "")
        print_progress(f"{line} | {timing}")

    def message(self, line: str) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print_progress(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
