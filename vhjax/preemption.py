"""Preemption: SIGTERM or SIGINT during training writes a checkpoint and exits 0; rerunning resumes.

TPU VMs (spot / queued resources with preemption), Slurm (`--signal`, `scancel`) and Kubernetes
send SIGTERM some seconds before they kill a job. While the one training loop (`fit`,
`fit_population`, PBT, k-fold) runs with a workdir, `watch()` turns SIGTERM and the first
SIGINT (Ctrl-C) into a request: the loop finishes its current chunk, saves a checkpoint, prints
a message and raises `Preempted` (a `SystemExit` with code 0). A second SIGINT interrupts at
once (KeyboardInterrupt), as without the handler.

With several JAX processes (`vhjax.distributed`), `requested()` agrees across them: if any
process received the signal, every process stops after the same chunk, so their collective
programs and their checkpoint stay in step.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_flag = threading.Event()
_received: list[str] = []
_depth = 0


class Preempted(SystemExit):
    """Raised by the loop after it saved a checkpoint because a SIGTERM/SIGINT arrived; exit code 0."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and _flag.is_set():
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    _received.append(name)
    _flag.set()
    print(f"vhjax: {name} received; a checkpoint is written after the current chunk, then the run exits "
          "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def watch(enabled: bool = True) -> Iterator[None]:
    """Catch SIGTERM/SIGINT as preemption requests inside the block (main thread only; nested
    blocks share the outer handlers). On exit, the previous handlers are restored and the request
    is cleared."""
    global _depth
    if not enabled or threading.current_thread() is not threading.main_thread() or _depth:
        yield  # an outer block (or nobody) handles the signals
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear()


def request(reason: str = "request") -> None:
    """Ask the running loop to checkpoint and stop after its current chunk (as a SIGTERM would)."""
    _received.append(reason)
    _flag.set()


def clear() -> None:
    _flag.clear()
    _received.clear()


def local_request() -> bool:
    """Whether this process received a preemption signal."""
    return _flag.is_set()


def requested() -> bool:
    """Whether any process received a preemption signal. With several JAX processes this is a
    collective: every process must call it at the same point (the loop calls it once per chunk)."""
    local = _flag.is_set()
    import jax

    if jax.process_count() == 1:
        return local
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([local], np.int32))
    return bool(np.any(flags))


def message(step: int, total: int, workdir) -> str:
    reason = _received[0] if _received else "a signal"
    return (f"preempted ({reason}) at step {step}/{total}: checkpoint saved in {workdir}; "
            "run the same command again to resume")
