"""Standard optimization test functions in JAX (vectorized over leading axes), with their optima.

Each takes points `x (..., d)` in its natural domain; `to_domain(u, bounds)` maps unit-cube
candidates there. Minima: Branin 0.397887 (three minimizers), Hartmann-6 -3.32237,
sphere 0, Rastrigin 0 (at the origin).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

BRANIN_BOUNDS = ((-5.0, 10.0), (0.0, 15.0))
BRANIN_MINIMUM = 0.397887
BRANIN_MINIMIZERS = ((-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475))
HARTMANN6_BOUNDS = ((0.0, 1.0),) * 6
HARTMANN6_MINIMUM = -3.32237
HARTMANN6_MINIMIZER = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
RASTRIGIN_HALF_WIDTH = 5.12

_HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_HARTMANN_A = np.array([
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
])
_HARTMANN_P = 1e-4 * np.array([
    [1312, 1696, 5569, 124, 8283, 5886],
    [2329, 4135, 8307, 3736, 1004, 9991],
    [2348, 1451, 3522, 2883, 3047, 6650],
    [4047, 8828, 8732, 5743, 1091, 381],
])


def to_domain(u, bounds) -> jnp.ndarray:
    """Unit-cube points `u (..., d)` -> the box `bounds ((low, high),) * d`."""
    bounds = jnp.asarray(bounds, jnp.float32)
    return bounds[:, 0] + jnp.asarray(u) * (bounds[:, 1] - bounds[:, 0])


def branin(x) -> jnp.ndarray:
    """Branin-Hoo on `x1 in [-5, 10], x2 in [0, 15]`."""
    x = jnp.asarray(x)
    x1, x2 = x[..., 0], x[..., 1]
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    r, s, t = 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * jnp.cos(x1) + s


def hartmann6(x) -> jnp.ndarray:
    """Hartmann 6-D on `[0, 1]^6`."""
    x = jnp.asarray(x)
    inner = jnp.sum(_HARTMANN_A * (x[..., None, :] - _HARTMANN_P) ** 2, axis=-1)
    return -jnp.sum(_HARTMANN_ALPHA * jnp.exp(-inner), axis=-1)


def sphere(x, centre=0.0) -> jnp.ndarray:
    """`sum((x - centre)^2)`."""
    return jnp.sum((jnp.asarray(x) - centre) ** 2, axis=-1)


def rastrigin(x) -> jnp.ndarray:
    """`10 d + sum(x^2 - 10 cos(2 pi x))` on `[-5.12, 5.12]^d`."""
    x = jnp.asarray(x)
    return 10.0 * x.shape[-1] + jnp.sum(x**2 - 10.0 * jnp.cos(2 * math.pi * x), axis=-1)
