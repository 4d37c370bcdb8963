"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (a throwaway PostgreSQL server)
from tests.xla_flags import FAST_COMPILE

# Compile the tiny test programs without LLVM's optimization passes (tests/xla_flags.py); set before
# any test starts JAX's backend, kept beside flags the user set, and inherited by child processes.
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# Entry points that turn JAX's persistent compilation cache on by default (vhjax.search.tune)
# leave it off in tests: each test compiles what it runs, and nothing is written to ~/.cache.
os.environ.setdefault("VHJAX_CACHE_DIR", "off")

# JAX's persistent compilation cache, in this session's temporary directory (never ~/.cache):
# - in each test process (its own directory per pytest-xdist worker): tests build fresh jitted
#   functions for the same small configurations, so most programs are identical to one compiled by
#   an earlier test and are loaded instead of compiled; results are those of the same program.
# - in the child processes tests start (killed-and-resumed runs, multi-process runs, CLI runs), one
#   directory for the whole session, through JAX's environment variables: a child loads what an
#   earlier child compiled.
# Tests of the cache itself (tests/test_compilation_cache.py) switch it to their own directory or
# off; `_persistent_compilation_cache` puts it back before the next test.
CHILD_CACHE_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def _use_cache(path: str | None) -> None:
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_enable_compilation_cache", path is not None)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the small programs of tests too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit
    compilation_cache.reset_cache()  # JAX decides once whether the cache is used: decide again


@pytest.fixture(scope="session")
def session_compilation_cache(tmp_path_factory):
    """(this process's cache directory, the children's cache directory)."""
    import jax

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <root>/popen-gwN
    own, children = base / "jax_cache", root / "child_jax_cache"
    saved = {name: os.environ.get(name) for name in CHILD_CACHE_VARIABLES}
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": str(children), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})
    before = jax.config.jax_compilation_cache_dir
    _use_cache(str(own))
    yield own, children
    _use_cache(before)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _persistent_compilation_cache(session_compilation_cache):
    import jax

    own = str(session_compilation_cache[0])
    if jax.config.jax_compilation_cache_dir != own or not jax.config.jax_enable_compilation_cache:
        _use_cache(own)


@pytest.fixture
def child_compilation_cache(session_compilation_cache):
    """The persistent compilation cache directory this session's child processes share."""
    return session_compilation_cache[1]


@pytest.fixture
def run_interrupted(monkeypatch):
    """`run_interrupted(fn, at_step=None)`: call `fn()` with checkpoint saving that raises
    KeyboardInterrupt right after saving step `at_step` (None: the first save), as a killed run."""
    from vhjax.train import checkpoint

    real_save = checkpoint.Checkpointer.save

    def run(fn, at_step: int | None = None) -> None:
        def save_then_die(self, step, state, record):
            real_save(self, step, state, record)
            if at_step is None or step == at_step:
                raise KeyboardInterrupt

        monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                fn()
        finally:
            monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)

    return run
