"""JAX's persistent compilation cache, and a counter of compilations.

`enable()` makes every later compilation of this process read and write an on-disk cache, so a
second process (a resumed search, the next trial script, the next benchmark run) loads its
programs instead of compiling them. `count_compilations()` counts and times the XLA compilations
inside a `with` block, from JAX's monitoring events:

    from vhjax import compilation_cache

    compilation_cache.enable()                   # ~/.cache/vhjax/jax, or $VHJAX_CACHE_DIR
    with compilation_cache.count_compilations() as compiled:
        run_search()
    print(compiled.count, compiled.seconds, compiled.cache_hits)

`vhjax.search.tune` and `vhjax.search.search_pbt` turn it on by default (`compilation_cache=True`:
the default directory; `VHJAX_CACHE_DIR=off` or `compilation_cache=False` keeps it off), so
rerunning or resuming a search loads its programs.

Thresholds: JAX caches only programs that took at least 1 s to compile by default; `enable` sets
the minimum compile time to 0 and lifts the entry size limit, so the small programs of a CPU run
are cached too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

ENV_VAR = "VHJAX_CACHE_DIR"
# Event names of jax._src (JAX 0.10): the backend-compile event times every XLA program JAX
# obtains (compiled, or loaded from the persistent cache: a load also records a cache-hit event).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"

_lock = threading.Lock()
_enabled_dir: str | None = None


def default_cache_dir() -> str:
    """$VHJAX_CACHE_DIR (unless 'off'), else ~/.cache/vhjax/jax."""
    value = os.environ.get(ENV_VAR, "")
    return value if value and value.lower() != "off" else str(Path.home() / ".cache" / "vhjax" / "jax")


def enable(cache_dir: str | os.PathLike | None = None) -> str:
    """Turn on the persistent compilation cache in `cache_dir` (default `default_cache_dir()`).

    Idempotent: enabling the same directory again does nothing; another directory switches to it.
    Returns the directory in use.
    """
    global _enabled_dir
    path = str(Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve())
    with _lock:
        if _enabled_dir == path:
            return path
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit
        # JAX decides once per process whether the cache is used; forget that decision so a
        # process that already compiled something picks up the new directory.
        _jax_cache.reset_cache()
        _enabled_dir = path
    return path


def use(setting: bool | str | os.PathLike | None) -> str | None:
    """An entry point's `compilation_cache=` argument: True turns the cache on in the default
    directory unless one is on already (or $VHJAX_CACHE_DIR is 'off'); a path turns it on there;
    False or None leaves the process as it is. Returns the directory in use, or None."""
    if setting is True:
        if _enabled_dir is not None or os.environ.get(ENV_VAR, "").lower() == "off":
            return _enabled_dir
        return enable()
    if setting is False or setting is None:
        return _enabled_dir
    return enable(setting)


def disable() -> None:
    """Turn the persistent compilation cache off for the rest of this process (idempotent)."""
    global _enabled_dir
    with _lock:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        _jax_cache.reset_cache()
        _enabled_dir = None


def enabled_dir() -> str | None:
    """The directory `enable` turned on, or None."""
    return _enabled_dir


@dataclasses.dataclass
class Compilations:
    """What `count_compilations` saw: XLA programs obtained (count, seconds; loads from the
    persistent cache included) and how many of them were persistent-cache hits and misses."""

    count: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    by_function: Counter = dataclasses.field(default_factory=Counter)  # jitted function name -> count
    seconds_by_function: Counter = dataclasses.field(default_factory=Counter)  # name -> seconds

    @property
    def compiled(self) -> int:
        """Programs really compiled (not loaded from the persistent cache)."""
        return self.count - self.cache_hits

    def __iter__(self):  # `count, seconds = compiled` also works
        return iter((self.count, self.seconds))


@contextlib.contextmanager
def count_compilations() -> Iterator[Compilations]:
    """Count and time the XLA programs JAX obtains inside the block, and persistent-cache hits.

    Counts every program of the process while the block runs (all threads); a function that was
    already compiled in this process (jit's in-memory cache) counts nothing. `count` includes
    programs loaded from the persistent cache (`cache_hits` of them; `compiled` is the rest).
    """
    seen = Compilations()

    def on_duration(event: str, duration: float, **kwargs: object) -> None:
        if event == BACKEND_COMPILE_EVENT:
            seen.count += 1
            seen.seconds += float(duration)
            seen.by_function[str(kwargs.get("fun_name", "?"))] += 1
            seen.seconds_by_function[str(kwargs.get("fun_name", "?"))] += float(duration)

    def on_event(event: str, **_: object) -> None:
        if event == CACHE_HIT_EVENT:
            seen.cache_hits += 1
        elif event == CACHE_MISS_EVENT:
            seen.cache_misses += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(on_duration)
        monitoring.unregister_event_listener(on_event)


def compilations_text(compiled: Compilations | dict) -> str:
    """'compiled 3 (2.1 s)' for a progress line, from a `Compilations` or its `compilations_record`;
    loads from the persistent cache named: '(2.1 s; 2 from the cache)'."""
    record = compilations_record(compiled) if isinstance(compiled, Compilations) else compiled
    loaded = f"; {record['from_cache']} from the cache" if record["from_cache"] else ""
    return f"compiled {record['count']} ({record['seconds']:.1f} s{loaded})"


def combined_records(records: list[dict | None]) -> dict | None:
    """One `compilations_record` for several (counts, seconds and per-function counts added up);
    None if there is none."""
    records = [record for record in records if record is not None]
    if not records:
        return None
    functions: dict[str, int] = {}
    for record in records:
        for name, count in record["by_function"].items():
            functions[name] = functions.get(name, 0) + count
    return {"count": sum(r["count"] for r in records), "seconds": round(sum(r["seconds"] for r in records), 3),
            "from_cache": sum(r["from_cache"] for r in records), "by_function": functions}


def compilations_record(compiled: Compilations) -> dict:
    """What a search stores about its compilations: count, seconds, persistent-cache loads, and the
    count per jitted function."""
    return {"count": compiled.count, "seconds": round(compiled.seconds, 3), "from_cache": compiled.cache_hits,
            "by_function": dict(compiled.by_function)}
