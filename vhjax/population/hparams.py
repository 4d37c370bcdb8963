"""Per-member hyperparameters: validation and the arrays a population is built from.

Which names exist, where they live and their ranges come from the one table, `vhjax.hparams`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.hparams import MODEL_SHAPED_NAMES, check_values


def known_hparams(default_hparams: Mapping[str, Any], optimizer_defaults: Mapping[str, Any]) -> list[str]:
    return sorted({*default_hparams, *optimizer_defaults})


def check_hparam_names(names: Iterable[str], known: Sequence[str]) -> None:
    """Refuse a per-member name the task does not have (e.g. `aug_strength` in a config without
    augmentations), naming it and the task's names."""
    for name in names:
        if name not in known and name not in MODEL_SHAPED_NAMES:
            hint = (" (aug_* values set the config's augmentations: give the config `augment=...`)"
                    if name.startswith("aug_") else
                    " (DP-SGD's values need the config's dp_clip_norm set: give the config `dp_clip_norm=...`)"
                    if name in ("dp_clip_norm", "noise_multiplier") else "")
            raise ValueError(f"unknown hyperparameter {name!r}; known for this task: {', '.join(known)}{hint}")


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


def check_private_members(state_hparams: Mapping[str, Any]) -> None:
    """Refuse a member with DP-SGD noise but no clip norm (the noise's std is their product, so it
    would train without noise), naming the first such member and both values."""
    if "noise_multiplier" not in state_hparams:
        return
    noise = np.asarray(state_hparams["noise_multiplier"])
    clip = np.asarray(state_hparams["dp_clip_norm"])
    silent = (noise > 0) & (clip == 0)
    if silent.any():
        member = int(np.argmax(silent))
        raise ValueError(f"member {member}: hyperparameter 'noise_multiplier' has value {float(noise[member]):g} with "
                         "'dp_clip_norm' 0 (not private: no clipping, and noise of std noise_multiplier * dp_clip_norm "
                         "= 0); allowed: dp_clip_norm > 0 for a member with noise, or noise_multiplier 0")


def per_member_values(values: Mapping[str, Any], size: int) -> dict[str, jax.Array]:
    """name -> (size, ...) float32 arrays from one shared value or one value per member; checked."""
    arrays = {}
    for name, value in values.items():
        array = np.asarray(value, np.float32)
        if array.ndim == 0:
            array = np.full((size,), array)
        elif array.shape[0] != size:
            raise ValueError(f"hyperparameter {name!r} has shape {array.shape}; allowed: ({size},) (one value per "
                             f"member) or a scalar")
        check_values(name, array)
        arrays[name] = jnp.asarray(array)
    return arrays


def broadcast_member_values(name: str, given: np.ndarray, default: np.ndarray, size: int) -> np.ndarray:
    """A (size, *default.shape) array from a shared value, one value per member, or one scalar per
    member for a vector hyperparameter (e.g. one augmentation strength for every augmentation)."""
    if given.shape == (size, *default.shape):
        return given
    if given.shape == (size,) and default.ndim >= 1:  # wins over a shared vector when size == its length
        return np.broadcast_to(given.reshape(size, *([1] * default.ndim)), (size, *default.shape))
    if given.shape == default.shape:
        return np.broadcast_to(given, (size, *default.shape))
    raise ValueError(
        f"hyperparameter {name!r} has shape {given.shape}; allowed: {(size, *default.shape)} (one value per "
        f"member of the population of {size}), {(size,)} (one scalar per member) or {default.shape} (shared)")


def member_arrays(size: int, values: Mapping[str, Any], default_hparams: Mapping[str, jax.Array],
                  optimizer_defaults: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Split `values` (name -> P values, or one value for all) into state and optimizer arrays;
    `optimizer_defaults`: the optimizer's injectable hyperparameters and their values.

    Returns (state_hparams, optimizer_hparams), each name -> array with leading axis `size`.
    Defaults fill the names not given. Raises before anything compiles on unknown names, wrong
    lengths or values outside the allowed range, naming the member and the field.
    """
    check_hparam_names(values, known_hparams(default_hparams, optimizer_defaults))
    state_arrays, optimizer_arrays = {}, {}
    for name, default in {**default_hparams, **optimizer_defaults}.items():
        default = np.asarray(default)
        if name in values and isinstance(values[name], list) and any(v is None for v in values[name]):
            values = {**values, name: [default if v is None else v for v in values[name]]}  # omitted: the default
        if name in values:
            try:
                given = np.asarray(values[name], dtype=default.dtype)
            except (TypeError, ValueError):
                raise ValueError(f"hyperparameter {name!r} has value {values[name]!r}; allowed: numbers") from None
            array = broadcast_member_values(name, given, default, size)
        else:
            array = np.broadcast_to(default, (size, *default.shape))
        check_values(name, array)
        target = state_arrays if name in default_hparams else optimizer_arrays
        target[name] = jnp.asarray(array)
    if "update_scale" in values:  # checked and completed against the model by `init_population`
        state_arrays["update_scale"] = jnp.asarray(values["update_scale"], jnp.float32)
    if "update_start" in values:  # likewise; steps, compared with the member's int32 step counter
        state_arrays["update_start"] = jnp.asarray(values["update_start"], jnp.int32)
    if "arch" in values:
        state_arrays["arch"] = jax.tree.map(jnp.asarray, values["arch"])
        for leaf in jax.tree.leaves(state_arrays["arch"]):
            if leaf.shape[:1] != (size,):
                raise ValueError(f"hyperparameter 'arch' leaves need a leading member axis of {size}; got {leaf.shape}")
    return state_arrays, optimizer_arrays
