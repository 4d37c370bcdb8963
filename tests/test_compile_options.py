"""vhjax.compile_options: light programs compile with options this jaxlib knows, built lazily."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import compile_options
from vhjax.compile_options import light_jit

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_options_are_dropped_and_known_ones_kept():
    assert not compile_options.known_option("xla_no_such_option_anywhere", True)
    assert compile_options.known_option("xla_backend_optimization_level", 0)
    light, once = compile_options.light_options(), compile_options.light_options(run_once=True)
    assert set(light) <= set(compile_options.OLDER_CPU_EMITTERS) and once["xla_backend_optimization_level"] == 0
    assert set(once) == set(light) | {"xla_backend_optimization_level"}


def test_a_light_program_computes_what_jax_jit_computes():
    def step(x, scale):
        return jnp.tanh(x * scale).sum(axis=0), jnp.cumsum(x, axis=0)

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    light = light_jit(step, static_argnums=1)
    for got, want in zip(light(x, 2.0), jax.jit(step, static_argnums=1)(x, 2.0)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert light.__name__ == "step" and light.lower(x, 2.0).compile() is not None

    @light_jit(run_once=True)
    def once(x):
        return x * 2 + 1

    np.testing.assert_allclose(once(x), x * 2 + 1)


def test_importing_vhjax_does_not_start_jax():
    """The options are probed at a light program's first call: importing vhjax (whose modules
    define light programs) leaves JAX unstarted, so `use_cpu_devices` may still split the CPU."""
    child = subprocess.run([sys.executable, "-c", (
        "import vhjax, vhjax.population, vhjax.population.hooks, vhjax.search, vhjax.search.tune\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized()\n"
        "from vhjax.hardware import use_cpu_devices\n"
        "assert use_cpu_devices(3) == 3\n"
        "import jax; assert len(jax.devices()) == 3\n")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")})
    assert child.returncode == 0, child.stderr[-2000:]
