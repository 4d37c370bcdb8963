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

from vhjax import validation

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
    raise validation.invalid("where", where,
                             f"one of {', '.join(map(repr, WHERE_NAMES))} or a callable(path, leaf) -> bool")


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
        raise validation.unknown_name("penalty coefficient", unknown[0], PENALTY_NAMES)
    _predicate(where)  # validate before tracing
    total = jnp.zeros((), jnp.float32)
    if "l1" in coefficients:
        total = total + coefficients["l1"] * l1(params, where)
    if "l2" in coefficients:
        total = total + coefficients["l2"] * l2(params, where)
    if "elastic_net" in coefficients:
        total = total + coefficients["elastic_net"] * elastic_net(params, l1_ratio, where)
    return total


# ---------------------------------------------------------------------------------------------
# Adaptive coefficients and norm constraints.

Schedule = Callable[[jax.Array], jax.Array]


def scheduled_coefficients(
    schedules: Mapping[str, Schedule | float | jax.Array], step: jax.Array | int
) -> dict[str, jax.Array]:
    """`{name: schedule(step)}`; plain numbers or arrays are taken as constant coefficients."""
    return {
        name: jnp.asarray(value(step) if callable(value) else value, jnp.float32)
        for name, value in schedules.items()
    }


def scheduled_penalty(
    params: Any,
    step: jax.Array | int,
    schedules: Mapping[str, Schedule | float | jax.Array],
    where: Where = "kernels",
    l1_ratio: float | jax.Array = 0.5,
) -> jax.Array:
    """`penalty` whose coefficients follow schedules of the step (adaptive L1 / L2 / elastic net).

    `schedules` maps 'l1', 'l2', 'elastic_net' to an optax schedule (e.g.
    `optax.linear_schedule(0.0, 1e-4, 1000)` to ramp L2 in) or a constant. Works under jit
    with a traced `step`.
    """
    return penalty(params, scheduled_coefficients(schedules, step), where=where, l1_ratio=l1_ratio)


def _project_max_norm(leaf: jax.Array, max_value: jax.Array, axis: int | tuple[int, ...] | None) -> jax.Array:
    if leaf.ndim < 2 and axis is None:
        axes: tuple[int, ...] = tuple(range(leaf.ndim))
    else:
        axes = tuple(range(leaf.ndim - 1)) if axis is None else axis
    norms = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=axes, keepdims=True))
    factor = jnp.where(norms > max_value, max_value / jnp.maximum(norms, 1e-12), 1.0)
    return (leaf * factor).astype(leaf.dtype)


def max_norm(
    params: Any,
    max_value: float | jax.Array,
    where: Where = "kernels",
    axis: int | tuple[int, ...] | None = None,
) -> Any:
    """Project params onto the max-norm constraint: rescale each unit's incoming weights to norm <= max_value.

    Apply after each optimizer update (`params = max_norm(params, 3.0)`). For a selected leaf the
    norm is taken over `axis`; None means every axis but the last, i.e. per output unit of a
    Dense (in, out) or Conv (h, w, in, out) kernel. Weights already within the bound are left
    exactly as they are; unselected leaves are returned unchanged. `max_value` may be traced.
    """
    if isinstance(max_value, (int, float)):  # traced arrays are not checked
        validation.check_number("max_value", max_value, 0.0, low_inclusive=False)
    keep = _predicate(where)

    def project(key_path, leaf):
        path = tuple(_key_name(key) for key in key_path)
        return _project_max_norm(leaf, max_value, axis) if keep(path, leaf) else leaf

    return jax.tree_util.tree_map_with_path(project, params)
