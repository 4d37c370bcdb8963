"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (a throwaway PostgreSQL server)

# Entry points that turn JAX's persistent compilation cache on by default (vhjax.search.tune)
# leave it off in tests: each test compiles what it runs, and nothing is written to ~/.cache.
os.environ.setdefault("VHJAX_CACHE_DIR", "off")


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
