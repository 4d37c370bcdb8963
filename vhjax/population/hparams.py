"""Per-member hyperparameters: validation and the arrays a population is built from."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim

# Allowed ranges of the hyperparameters whose bounds are known; others (optimizer-specific) must
# only be finite.
RANGES = {
    "learning_rate": (0.0, np.inf, "> 0", False),
    "weight_decay": (0.0, np.inf, ">= 0", True),
    "l1": (0.0, np.inf, ">= 0", True),
    "l2": (0.0, np.inf, ">= 0", True),
    "elastic_net": (0.0, np.inf, ">= 0", True),
    "dropout_rate": (0.0, 1.0, "in [0, 1)", True),
    "aug_strength": (0.0, np.inf, ">= 0", True),
    "aug_prob": (0.0, 1.0, "in [0, 1]", True),
    "mixing_strength": (0.0, np.inf, ">= 0", True),
    "loss_weights": (0.0, np.inf, ">= 0", True),
}


def known_hparams(default_hparams: Mapping[str, Any], opt_state: Any) -> list[str]:
    return sorted({*default_hparams, *optim.get_hyperparams(opt_state)})


def check_range(name: str, values: np.ndarray) -> None:
    """Raise naming the first member whose value is outside the field's allowed range."""
    if not np.all(np.isfinite(values)):
        member = int(np.argmax(~np.isfinite(values).reshape(len(values), -1).all(axis=1)))
        raise ValueError(f"member {member}: hyperparameter {name!r} is not finite ({values[member]!r})")
    if name not in RANGES:
        return
    low, high, text, low_inclusive = RANGES[name]
    flat = values.reshape(len(values), -1)
    above_low = flat >= low if low_inclusive else flat > low
    inside = above_low & ((flat <= high) if name == "aug_prob" else (flat < high))
    if not inside.all():
        member = int(np.argmax(~inside.all(axis=1)))
        raise ValueError(f"member {member}: hyperparameter {name!r} = {values[member]!r}; allowed: {text}")


def check_not_static_zero(static_zero: frozenset, values: Mapping[str, Any]) -> None:
    """Refuse values for hyperparameters the task compiled as constant 0 (they would have no
    effect), naming the first member that sets one and the field."""
    for name in sorted(set(values) & set(static_zero)):
        value = values[name]
        advice = (f"{name!r} is a static zero of this task (built with no member setting it, so a value would "
                  f"have no effect); build the population from vhjax.train.task.with_member_hparams(task, [..., {name!r}])")
        if isinstance(value, jax.core.Tracer):
            raise ValueError(advice)
        flat = np.atleast_1d(np.asarray(value))
        nonzero = (flat.reshape(len(flat), -1) != 0).any(axis=1)
        if nonzero.any():
            raise ValueError(f"member {int(np.argmax(nonzero))} sets {name!r}, but {advice}")


def member_arrays(size: int, values: Mapping[str, Any], default_hparams: Mapping[str, jax.Array],
                  opt_state: Any) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Split `values` (name -> P values, or one value for all) into state and optimizer arrays.

    Returns (state_hparams, optimizer_hparams), each name -> array with leading axis `size`.
    Defaults fill the names not given. Raises before anything compiles on unknown names, wrong
    lengths or values outside the allowed range, naming the member and the field.
    """
    optimizer_defaults = optim.get_hyperparams(opt_state)
    known = known_hparams(default_hparams, opt_state)
    for name in values:
        if name not in known and name != "arch":
            raise ValueError(f"unknown hyperparameter {name!r}; known for this task: {', '.join(known)}")
    state_arrays, optimizer_arrays = {}, {}
    for name, default in {**default_hparams, **optimizer_defaults}.items():
        default = np.asarray(default)
        given = np.asarray(values[name], dtype=default.dtype) if name in values else None
        if given is None:
            array = np.broadcast_to(default, (size, *default.shape))
        elif given.shape == default.shape:
            array = np.broadcast_to(given, (size, *default.shape))
        elif given.shape == (size, *default.shape):
            array = given
        else:
            raise ValueError(
                f"hyperparameter {name!r} has shape {given.shape}; expected {(size, *default.shape)} "
                f"(one value per member of the population of {size}) or {default.shape} (shared)")
        check_range(name, array)
        target = state_arrays if name in default_hparams else optimizer_arrays
        target[name] = jnp.asarray(array)
    if "arch" in values:
        state_arrays["arch"] = jax.tree.map(jnp.asarray, values["arch"])
        for leaf in jax.tree.leaves(state_arrays["arch"]):
            if leaf.shape[:1] != (size,):
                raise ValueError(f"hyperparameter 'arch' leaves need a leading member axis of {size}; got {leaf.shape}")
    return state_arrays, optimizer_arrays
