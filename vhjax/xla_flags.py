"""XLA flags vhjax needs in every process, put in $XLA_FLAGS when vhjax is imported (XLA reads them
once, when JAX starts its first backend), each only where $XLA_FLAGS does not name it already.

`--xla_cpu_enable_concurrency_optimized_scheduler=false`: with XLA's concurrency-optimized CPU
scheduler (the default in jaxlib 0.10), a population chunk of a 2-layer LSTM or GRU with 9 or more
members never finishes: every thread of the CPU client waits (tests/test_xla_flags.py; a loop over
time inside the vmapped chunk's loop). It is read from the process's flags, not from a program's
compile options, so it cannot be set per program. Step times of the MNIST-1D paper CNN and MLP
populations were even with and without it in alternating runs (experiments/README.md, session 56).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import MutableMapping

REQUIRED = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}
CHECKED_FROM = (0, 10)  # the jaxlib these flags were checked on: an older XLA aborts on a flag it does not know


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's (major, minor), read from its metadata (JAX is not imported); () if absent."""
    from importlib import metadata

    try:
        return tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def names_flag(flags: str, name: str) -> bool:
    """Whether the flag string names `name` (with any value)."""
    return re.search(rf"(^|\s)--{re.escape(name)}(=|\s|$)", flags) is not None


def with_required(flags: str) -> str:
    """`flags` plus every required flag it does not name."""
    missing = [f"--{name}={value}" for name, value in REQUIRED.items() if not names_flag(flags, name)]
    return " ".join([flags.strip(), *missing]).strip()


def backend_started() -> bool:
    """Whether JAX has started a backend in this process (then $XLA_FLAGS is read already)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - another JAX layout: assume not started
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put the required flags in `environ['XLA_FLAGS']` (with jaxlib 0.10 or later: older ones were not
    checked); warn when JAX's backend started before (the flags then take effect only in new processes)."""
    if jaxlib_version() < CHECKED_FROM:
        return
    flags = environ.get("XLA_FLAGS", "")
    wanted = with_required(flags)
    if wanted == flags.strip():
        return
    environ["XLA_FLAGS"] = wanted
    if environ is os.environ and backend_started():
        warnings.warn("vhjax was imported after JAX started its backend, so XLA runs without "
                      f"{wanted[len(flags.strip()):].strip()} in this process: populations of multi-layer recurrent "
                      "networks may hang on a CPU; import vhjax first, or set it in $XLA_FLAGS", RuntimeWarning,
                      stacklevel=3)
