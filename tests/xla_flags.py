"""XLA flags for the test suite: compile the tiny test programs fast.

Tests run thousands of small programs once each, so compilation, not execution, is most of the
suite's time. `FAST_COMPILE` tells XLA's CPU backend to skip LLVM's optimization passes: the same
programs (same HLO passes, same results within float rounding) compile about a third faster and run
slower, which tiny shapes do not notice. conftest.py sets it for the test processes; tests that start
child processes build the child's XLA_FLAGS with `xla_flags`.
"""

from __future__ import annotations

import os

from vhjax.hardware import DEVICE_COUNT_FLAG

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None = None, inherited: str | None = None) -> str:
    """XLA_FLAGS for a test's child process: the flags this process runs with (`inherited`, default
    $XLA_FLAGS: a flag the user set for the suite reaches the children too) with `FAST_COMPILE`, and
    `devices` host CPU devices if given. An inherited device count is always dropped: a child runs
    with the devices its test asks for (JAX's default of one without `devices`)."""
    flags = (os.environ.get("XLA_FLAGS", "") if inherited is None else inherited).split()
    flags = [flag for flag in flags if not flag.startswith(DEVICE_COUNT_FLAG)]
    flags += [flag for flag in FAST_COMPILE.split() if flag not in flags]
    if devices is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    return " ".join(flags)
