"""Compilation counter and persistent compilation cache (vhjax.compilation_cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from vhjax import compilation_cache

ROOT = Path(__file__).resolve().parents[1]


def test_counter_counts_a_new_function_once_and_reuse_not_at_all():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x = jnp.arange(5.0)
    with compilation_cache.count_compilations() as first:
        f(x).block_until_ready()
    assert first.count == 1 and first.seconds > 0 and list(first.by_function.values()) == [1]
    with compilation_cache.count_compilations() as again:
        f(x).block_until_ready()
    count, seconds = again
    assert (count, seconds) == (0, 0.0)
    y = jnp.arange(6.0)  # made outside the block: creating it may compile too
    with compilation_cache.count_compilations() as new_shape:
        f(y).block_until_ready()
    assert new_shape.count == 1


def test_listeners_are_removed_after_the_block():
    x = jnp.ones(3)
    with compilation_cache.count_compilations() as seen:
        pass
    jax.jit(lambda x: x * 7.0 - 2.0)(x).block_until_ready()
    assert seen.count == 0


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
    assert compilation_cache.default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv(compilation_cache.ENV_VAR)
    assert compilation_cache.default_cache_dir().endswith(os.path.join(".cache", "vhjax", "jax"))


CHILD = """
import json, sys
import jax, jax.numpy as jnp
from vhjax import compilation_cache
assert compilation_cache.enable(sys.argv[1]) == compilation_cache.enable(sys.argv[1])  # idempotent
x = jnp.ones((4, 3))
with compilation_cache.count_compilations() as seen:
    jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(x).block_until_ready()
print(json.dumps({"count": seen.count, "hits": seen.cache_hits, "compiled": seen.compiled}))
"""


def _child(cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop(compilation_cache.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_second_process_loads_the_program_from_the_cache(tmp_path):
    first = _child(tmp_path)
    assert first == {"count": 1, "hits": 0, "compiled": 1}
    assert any(tmp_path.iterdir())  # an entry was written
    second = _child(tmp_path)
    assert second == {"count": 1, "hits": 1, "compiled": 0}


def test_enable_then_disable_in_process(tmp_path):
    try:
        path = compilation_cache.enable(tmp_path)
        assert compilation_cache.enabled_dir() == path
        x = jnp.ones(7)
        with compilation_cache.count_compilations() as seen:
            jax.jit(lambda x: jnp.cos(x) * 5.0 - 0.5)(x).block_until_ready()
        assert seen.count == 1 and seen.cache_misses == 1 and any(tmp_path.iterdir())
    finally:
        compilation_cache.disable()
    assert compilation_cache.enabled_dir() is None
    x = jnp.ones(7)
    with compilation_cache.count_compilations() as seen:
        jax.jit(lambda x: jnp.cos(x) * 9.0 - 0.25)(x).block_until_ready()
    assert seen.count == 1 and seen.cache_misses == 0


def test_use_follows_the_entry_points_argument(monkeypatch, tmp_path):
    try:
        monkeypatch.setenv("VHJAX_CACHE_DIR", "off")
        assert compilation_cache.use(True) is None  # 'off' in the environment wins over the default
        assert compilation_cache.use(False) is None
        path = compilation_cache.use(tmp_path / "cache")
        assert path == str((tmp_path / "cache").resolve()) and compilation_cache.enabled_dir() == path
        monkeypatch.setenv("VHJAX_CACHE_DIR", str(tmp_path / "other"))
        assert compilation_cache.use(True) == path  # one already on is kept
    finally:
        compilation_cache.disable()
