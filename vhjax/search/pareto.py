"""Pareto dominance for multi-objective search (every objective is minimized).

`F` is always an `(n, M)` array: n candidates, M objectives, lower is better
(the driver negates objectives that are maximized, as it does for scalar
fitness). The array functions are pure and jittable; `pareto_front` returns a
data-dependent number of rows, so it runs on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _check_objectives(F, name: str = "F", num_objectives: int | None = None) -> None:
    shape = np.shape(F)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (n, M); got shape {shape}")
    if num_objectives is not None and shape[1] != num_objectives:
        raise ValueError(
            f"{name} must have {num_objectives} objective columns; got shape {shape}"
        )


def domination_matrix(F: Array) -> Array:
    """`D[i, j]` is True when point i dominates point j.

    i dominates j when it is no worse in every objective and strictly better in
    at least one. Equal points do not dominate each other.
    """
    _check_objectives(F)
    F = jnp.asarray(F)
    no_worse = jnp.all(F[:, None, :] <= F[None, :, :], axis=-1)
    better = jnp.any(F[:, None, :] < F[None, :, :], axis=-1)
    return no_worse & better


def non_dominated(F: Array) -> Array:
    """Boolean mask `(n,)` of the points that no other point dominates."""
    return ~jnp.any(domination_matrix(F), axis=0)


def pareto_front(F) -> np.ndarray:
    """The non-dominated rows of `F`, sorted by the first objective (host side)."""
    _check_objectives(F)
    F = np.asarray(F)
    front = F[np.asarray(non_dominated(F))]
    return front[np.lexsort(front.T[::-1])]


def pareto_ranks(F: Array) -> Array:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front of the rest, ...

    Returns an int32 array `(n,)`. Jittable (n peeling rounds in a fori_loop).
    """
    dominates = domination_matrix(F)
    n = dominates.shape[0]

    def peel(k, carry):
        ranks, remaining = carry
        dominated = jnp.any(dominates & remaining[:, None], axis=0)
        front = remaining & ~dominated
        return jnp.where(front, k, ranks), remaining & ~front

    init = (jnp.full((n,), n, jnp.int32), jnp.ones((n,), bool))
    ranks, _ = jax.lax.fori_loop(0, n, peel, init)
    return ranks


def hypervolume_2d(F: Array, ref: Array) -> Array:
    """Area dominated by the points of `F (n, 2)` and bounded by the reference point.

    Dominated points, duplicates and points that do not dominate `ref` add
    nothing. Jittable: sort by the first objective, the running minimum of the
    second gives the staircase, and the area is a sum of rectangles.
    """
    _check_objectives(F, num_objectives=2)
    if np.shape(ref) != (2,):
        raise ValueError(f"ref must have shape (2,); got shape {np.shape(ref)}")
    F = jnp.asarray(F, jnp.float32)
    ref = jnp.asarray(ref, jnp.float32)
    order = jnp.lexsort((F[:, 1], F[:, 0]))
    x = jnp.minimum(F[order, 0], ref[0])
    y = jnp.minimum(jax.lax.cummin(F[order, 1]), ref[1])
    next_x = jnp.append(x[1:], ref[0])
    return jnp.sum((next_x - x) * (ref[1] - y))


def crowding_distance(F: Array) -> Array:
    """NSGA-II crowding distance `(n,)` of the points of one front.

    Per objective, the extreme points get infinity and every other point the
    gap between its two neighbours divided by the objective's range; the
    distances add up over objectives. Larger means less crowded.
    """
    _check_objectives(F)
    F = jnp.asarray(F, jnp.float32)
    n = F.shape[0]
    if n <= 2:
        return jnp.full((n,), jnp.inf)

    def one_objective(f):
        order = jnp.argsort(f)
        sorted_f = f[order]
        span = sorted_f[-1] - sorted_f[0]
        gaps = (sorted_f[2:] - sorted_f[:-2]) / jnp.where(span > 0, span, 1.0)
        sorted_distance = jnp.concatenate([jnp.array([jnp.inf]), gaps, jnp.array([jnp.inf])])
        return jnp.zeros((n,)).at[order].set(sorted_distance)

    return jnp.sum(jax.vmap(one_objective, in_axes=1)(F), axis=0)
