"""Grid, random and quasi-random (scrambled Sobol) search: model-free, jittable."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vhjax.search.strategies.base import (Strategy, check_ask_size, check_positive_int, make, register_strategy,
                                          space_dim)
from vhjax.search.strategies.sobol import sobol_points


@struct.dataclass
class IndexedState:
    """A position in a fixed table of points (grid or Sobol)."""

    index: jax.Array  # next row to hand out
    shift: jax.Array  # (D,) random shift of the table (zeros for the grid)


def _tell_nothing(state, u, fitness):
    del u, fitness
    return state


def _table_strategy(table: np.ndarray, random_shift: bool) -> Strategy:
    """Hand out the rows of `table` in order (wrapping around), optionally shifted mod 1."""
    rows = jnp.asarray(table, jnp.float32)
    size, dim = rows.shape

    def init(key: jax.Array) -> IndexedState:
        shift = jax.random.uniform(key, (dim,)) if random_shift else jnp.zeros((dim,), jnp.float32)
        return IndexedState(jnp.asarray(0, jnp.int32), shift)

    def ask(state: IndexedState, key: jax.Array, n: int):
        del key
        n = check_ask_size(n)
        picked = rows[(state.index + jnp.arange(n)) % size]
        u = jnp.mod(picked + state.shift, 1.0) if random_shift else picked
        return state.replace(index=state.index + n), u

    return make(dim, init, ask, _tell_nothing)


@register_strategy("grid")
def grid_search(space: Any, *, points_per_float: int = 5) -> Strategy:
    """Walk `space.grid(points_per_float)` in order; wraps around once the grid is exhausted."""
    check_positive_int("points_per_float", points_per_float)
    if not hasattr(space, "grid"):
        raise TypeError(f"grid search needs a space with `grid`; got {space!r}")
    return _table_strategy(np.asarray(space.grid(points_per_float)), random_shift=False)


@register_strategy("random")
def random_search(space: Any) -> Strategy:
    """Independent uniform candidates in the unit cube."""
    dim = space_dim(space)

    def init(key: jax.Array) -> tuple:
        del key
        return ()

    def ask(state: tuple, key: jax.Array, n: int):
        return state, jax.random.uniform(key, (n, dim))

    return make(dim, init, ask, _tell_nothing)


def sobol_table(dim: int, log2_points: int, seed: int) -> np.ndarray:
    """`2**log2_points` scrambled Sobol points in `[0, 1)^dim` (`sobol.sobol_points`)."""
    return sobol_points(dim, 2 ** log2_points, np.random.default_rng(seed))


@register_strategy("quasi_random")
def quasi_random_search(space: Any, *, log2_points: int = 12, seed: int = 0) -> Strategy:
    """Scrambled Sobol points (seeded by `seed`), randomly shifted mod 1 by the `init` key.

    The table of `2**log2_points` points is made once, outside jit; `ask` hands out its rows
    in order, so the first `2**m` candidates of a run are a balanced Sobol net.
    """
    check_positive_int("log2_points", log2_points)
    if log2_points > 20:
        raise ValueError(f"log2_points must be <= 20 (a table of 2**20 rows); got {log2_points}")
    check_positive_int("seed", seed, minimum=0)
    return _table_strategy(sobol_table(space_dim(space), log2_points, seed), random_shift=True)
