"""XLA flags for the test suite: compile the tiny test programs fast.

Tests run thousands of small programs once each, so compilation, not execution, is most of the
suite's time. `FAST_COMPILE` tells XLA's CPU backend to skip LLVM's optimization passes: the same
programs (same HLO passes, same results within float rounding) compile about a third faster and run
slower, which tiny shapes do not notice; and to emit fusions with its older emitters (those vhjax's
light programs use, `vhjax.compile_options`), which compile the tests' programs faster still:
tests/models/test_zoo.py took 29-34 s instead of 45-52 s with `-n 2`, four other heavy files 92 s
instead of 122 s (2026-12-06, 2-core AVX-512 EPYC). conftest.py sets it for the test processes; tests that start
child processes build the child's XLA_FLAGS with `xla_flags`.
"""

from __future__ import annotations

import os

from vhjax.hardware import DEVICE_COUNT_FLAG

FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
# Several host devices share the machine's cores with the other tests' processes: a device thread of
# an in-process collective can wait behind that work longer than XLA's 40 s, after which XLA aborts
# the process ("Termination timeout for `all gather` ... exceeded"); the children wait longer.
COLLECTIVE_PATIENCE = "--xla_cpu_collective_call_terminate_timeout_seconds=600"


def xla_flags(devices: int | None = None, inherited: str | None = None) -> str:
    """XLA_FLAGS for a test's child process: the flags this process runs with (`inherited`, default
    $XLA_FLAGS: a flag the user set for the suite reaches the children too) with `FAST_COMPILE`, and
    `devices` host CPU devices if given (with `COLLECTIVE_PATIENCE` for more than one). An inherited
    device count is always dropped: a child runs with the devices its test asks for (JAX's default
    of one without `devices`)."""
    flags = (os.environ.get("XLA_FLAGS", "") if inherited is None else inherited).split()
    flags = [flag for flag in flags if not flag.startswith(DEVICE_COUNT_FLAG)]
    flags += [flag for flag in FAST_COMPILE.split() if flag not in flags]
    if devices is not None and devices > 1 and COLLECTIVE_PATIENCE not in flags:
        flags.append(COLLECTIVE_PATIENCE)
    if devices is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    return " ".join(flags)
