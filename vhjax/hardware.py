"""What a result was measured on: CPU model and JAX devices, for experiment reports."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# XLA's flag that splits the host CPU into this many devices (XLA_FLAGS)
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """E.g. 'AMD EPYC ..., 2 cores; JAX cpu x1'."""
    import jax

    devices = jax.devices()
    kind = devices[0].device_kind if devices[0].platform != "cpu" else "cpu"
    return f"{cpu_name()}, {os.cpu_count()} cores; JAX {kind} x{len(devices)}"


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def user_cpu_device_count() -> int | None:
    """The CPU device count the user chose (jax_num_cpu_devices / JAX_NUM_CPU_DEVICES, else XLA_FLAGS'
    --xla_force_host_platform_device_count), or None."""
    import jax

    if jax.config.jax_num_cpu_devices > 0:
        return int(jax.config.jax_num_cpu_devices)
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith(f"{DEVICE_COUNT_FLAG}="):
            return int(flag.split("=", 1)[1])
    return None


def use_cpu_devices(count: int | str = "auto") -> int:
    """Split the host CPU into `count` JAX devices ('auto': one per core) and return the count.

    A population's members are sharded over the devices (`mesh='auto'`), so each core trains its
    own share of the members in parallel instead of all members sharing one device's intra-op
    threads: on a 2-core CPU the MNIST-1D paper CNN with dropout and augmentation trains
    1.4-1.8x more member-steps/s at 64 members, 1.0-1.3x at 16 (experiments/README.md,
    "Population speed"). A program placed on
    one device (a single model) runs on that device alone; whether it loses speed by the split is
    not measured (`vhjax train` leaves the CPU whole). It must run before JAX computes anything (JAX's
    `jax_num_cpu_devices`; the environment variable JAX_NUM_CPU_DEVICES does the same); GPU and
    TPU devices are not changed. Called later with another count, it raises instead of silently
    doing nothing. 'auto' leaves a count the user set already (JAX_NUM_CPU_DEVICES, or XLA_FLAGS
    with --xla_force_host_platform_device_count) as it is, and once JAX runs it keeps the devices
    there are.
    """
    import jax
    from jax._src import xla_bridge

    if count == "auto":
        if xla_bridge.backends_are_initialized():  # too late to split: 'auto' takes what there is
            return len(jax.devices("cpu"))
        chosen = user_cpu_device_count()
        count = cpu_cores() if chosen is None else chosen
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count has value {count!r}; allowed: a positive int or 'auto' (one device per core)")
    if xla_bridge.backends_are_initialized():
        current = len(jax.devices("cpu"))
        if current != count:
            raise RuntimeError(f"use_cpu_devices: count has value {count} but JAX already runs with {current} CPU "
                               f"device(s); call vhjax.hardware.use_cpu_devices right after `import jax`, before any "
                               f"JAX computation, or set JAX_NUM_CPU_DEVICES={count} in the environment")
        return count
    jax.config.update("jax_num_cpu_devices", count)
    return count
