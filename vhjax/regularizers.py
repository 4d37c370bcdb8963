"""Weight penalties: `(params, ...) -> scalar`, and their weighted sum for an objective.

An objective is `loss + penalty(params, coefficients)`. Coefficients are arrays (traced), so a
population whose members use different L1/L2 strengths shares one compiled step.

Conventions: `l1` is the plain sum of absolute values and `l2` the plain sum of squares (no 0.5
factor), so the gradient of `c * l2` is `2 c w`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

PathPredicate = Callable[[tuple[str, ...], jax.Array], bool]
Where = str | PathPredicate

KERNEL_NAMES = frozenset({"kernel", "embedding"})
WHERE_NAMES = ("kernels", "all")
PENALTY_NAMES = ("l1", "l2", "elastic_net")


def _key_name(key: Any) -> str:
    """The readable name of one pytree path entry (dict key, attribute or index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _is_kernel(path: tuple[str, ...], leaf: jax.Array) -> bool:
    del leaf
    return bool(path) and path[-1] in KERNEL_NAMES


def _predicate(where: Where) -> PathPredicate:
    if callable(where):
        return where
    if where == "kernels":
        return _is_kernel
    if where == "all":
        return lambda path, leaf: True
    raise ValueError(
        f"where={where!r} is not allowed; use one of {WHERE_NAMES} or a callable(path, leaf) -> bool"
    )


def selected_leaves(params: Any, where: Where = "kernels") -> list[jax.Array]:
    """The leaves of `params` chosen by `where`.

    `where` is 'kernels' (leaves named 'kernel' or 'embedding': weights, not biases or norm
    scales), 'all', or a predicate `(path: tuple[str, ...], leaf) -> bool`.
    """
    keep = _predicate(where)
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
    return [
        leaf
        for key_path, leaf in leaves_with_paths
        if keep(tuple(_key_name(key) for key in key_path), leaf)
    ]


def _sum_over(leaves: list[jax.Array], fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for leaf in leaves:
        total = total + jnp.sum(fn(leaf)).astype(jnp.float32)
    return total


def l1(params: Any, where: Where = "kernels") -> jax.Array:
    """Sum of absolute values of the selected leaves."""
    return _sum_over(selected_leaves(params, where), jnp.abs)


def l2(params: Any, where: Where = "kernels") -> jax.Array:
    """Sum of squares of the selected leaves (no 0.5 factor)."""
    return _sum_over(selected_leaves(params, where), jnp.square)


def elastic_net(params: Any, l1_ratio: float | jax.Array, where: Where = "kernels") -> jax.Array:
    """`l1_ratio * l1 + (1 - l1_ratio) * l2`; `l1_ratio` may be a traced array."""
    return l1_ratio * l1(params, where) + (1.0 - l1_ratio) * l2(params, where)


def penalty(
    params: Any,
    coefficients: Mapping[str, jax.Array | float],
    where: Where = "kernels",
    l1_ratio: float | jax.Array = 0.5,
) -> jax.Array:
    """`sum(coefficient * regularizer)` over the keys of `coefficients` ('l1', 'l2', 'elastic_net').

    Coefficients may be traced arrays, so this works under jit and under vmap over coefficients.
    """
    unknown = sorted(set(coefficients) - set(PENALTY_NAMES))
    if unknown:
        raise ValueError(f"unknown penalty coefficients {unknown}; allowed: {list(PENALTY_NAMES)}")
    _predicate(where)  # validate before tracing
    total = jnp.zeros((), jnp.float32)
    if "l1" in coefficients:
        total = total + coefficients["l1"] * l1(params, where)
    if "l2" in coefficients:
        total = total + coefficients["l2"] * l2(params, where)
    if "elastic_net" in coefficients:
        total = total + coefficients["elastic_net"] * elastic_net(params, l1_ratio, where)
    return total
