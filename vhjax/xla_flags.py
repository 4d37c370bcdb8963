"""XLA flags vhjax needs in every process, put in $XLA_FLAGS when vhjax is imported (XLA reads them
once, when JAX starts its first backend), each only where $XLA_FLAGS does not name it already.

`--xla_cpu_enable_concurrency_optimized_scheduler=false`: with XLA's concurrency-optimized CPU
scheduler (the default in jaxlib 0.10), a population chunk of a 2-layer LSTM or GRU with 9 or more
members never finishes: every thread of the CPU client waits (tests/test_xla_flags.py; a loop over
time inside the vmapped chunk's loop). It is read from the process's flags, not from a program's
compile options, so it cannot be set per program. Step times of the MNIST-1D paper CNN and MLP
populations were even with and without it in alternating runs (experiments/README.md, session 56).

An unknown flag in $XLA_FLAGS aborts the process when JAX starts, so the flags are added only with
a jaxlib they were checked on (0.10) or a later one whose shared libraries still name them
(`xla_knows`: a memory-mapped search, a few milliseconds when the name is there); older jaxlibs get none.
"""

from __future__ import annotations

import mmap
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterable, MutableMapping

REQUIRED = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}
# jaxlib minor versions the flags were checked on: an older one gets none (its XLA aborts on a flag it
# does not know), a later one is asked (`xla_knows`)
CHECKED = {(0, 10)}


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's (major, minor), read from its metadata (JAX is not imported); () if absent."""
    from importlib import metadata

    try:
        return tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def jaxlib_libraries() -> list[Path]:
    """jaxlib's shared libraries, largest first (XLA is in the largest), found without importing jaxlib."""
    from importlib.util import find_spec

    spec = find_spec("jaxlib")
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = [path for folder in folders for path in Path(folder).glob("*.so*") if path.is_file()]
    return sorted(found, key=lambda path: path.stat().st_size, reverse=True)


def xla_knows(names: Iterable[str], libraries: Iterable[Path] | None = None) -> bool:
    """Whether jaxlib's XLA defines every flag in `names`: each name appears in one of its shared
    libraries (an unknown flag in $XLA_FLAGS aborts the process when JAX starts). A memory-mapped
    search; False when nothing can be read."""
    wanted = {name.encode() for name in names}
    for path in jaxlib_libraries() if libraries is None else libraries:
        try:
            with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                wanted = {name for name in wanted if data.find(name) < 0}
        except (OSError, ValueError):
            continue
        if not wanted:
            return True
    return False


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
    """Put the required flags in `environ['XLA_FLAGS']` (with jaxlib 0.10, and a later jaxlib whose XLA
    still defines them: older ones were not checked); warn when JAX's backend started before (the flags
    then take effect only in new processes)."""
    version = jaxlib_version()
    if version < min(CHECKED) or (version[:2] not in CHECKED and not xla_knows(REQUIRED)):
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
