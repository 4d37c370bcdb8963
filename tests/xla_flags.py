"""XLA flags for the test suite: compile the tiny test programs fast.

Tests run thousands of small programs once each, so compilation, not execution, is most of the
suite's time. `FAST_COMPILE` tells XLA's CPU backend to skip LLVM's optimization passes: the same
programs (same HLO passes, same results within float rounding) compile about a third faster and run
slower, which tiny shapes do not notice. conftest.py sets it for the test processes; tests that start
child processes build the child's XLA_FLAGS with `xla_flags`.
"""

from __future__ import annotations

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test's child process: `FAST_COMPILE`, and `devices` host CPU devices if given."""
    if devices is None:
        return FAST_COMPILE
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
