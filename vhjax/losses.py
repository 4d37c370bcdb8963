"""Per-example losses: `fn(outputs, labels) -> (N,)`.

Every loss returns one value per example (axis 0), so callers can weight, mask or average them.
Extra keyword arguments (label smoothing, Huber delta) may be traced arrays, so one compiled step
serves a population whose members use different values.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vhjax.registry import Registry

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

LOSSES: Registry[LossFn] = Registry("loss")


def get_loss(name: str) -> LossFn:
    """The loss registered under `name`; unknown names raise ValueError listing known ones."""
    return LOSSES.get(name)


def _mean_per_example(values: jax.Array) -> jax.Array:
    """Average every axis but the first, giving shape (N,)."""
    if values.ndim <= 1:
        return values
    return jnp.mean(values, axis=tuple(range(1, values.ndim)))


def _matching_targets(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Labels shaped like `outputs`; (N,) targets are accepted for (N, 1) outputs."""
    labels = jnp.asarray(labels)
    if labels.shape == outputs.shape:
        return labels.astype(outputs.dtype)
    if labels.ndim == outputs.ndim - 1 and outputs.shape[-1] == 1 and labels.shape == outputs.shape[:-1]:
        return labels[..., None].astype(outputs.dtype)
    raise ValueError(
        f"labels shape {labels.shape} does not match outputs shape {outputs.shape}; "
        "regression losses need equal shapes (or (N,) labels for (N, 1) outputs)"
    )


@LOSSES.register("cross_entropy")
def cross_entropy(
    outputs: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array = 0.0
) -> jax.Array:
    """Softmax cross-entropy of logits `outputs` (..., C).

    Labels are integer class ids (one axis fewer than `outputs`) or one-hot / soft
    distributions (same rank as `outputs`). `label_smoothing` mixes the target with the uniform
    distribution; it may be a traced array. Sequence outputs (N, L, C) are averaged over L.
    """
    labels = jnp.asarray(labels)
    num_classes = outputs.shape[-1]
    if labels.ndim == outputs.ndim:
        if labels.shape != outputs.shape:
            raise ValueError(f"one-hot labels shape {labels.shape} != outputs shape {outputs.shape}")
        targets = labels.astype(outputs.dtype)
    elif labels.ndim == outputs.ndim - 1 and labels.shape == outputs.shape[:-1]:
        if isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0:
            per_position = optax.losses.softmax_cross_entropy_with_integer_labels(outputs, labels)
            return _mean_per_example(per_position)
        targets = jax.nn.one_hot(labels, num_classes, dtype=outputs.dtype)
    else:
        raise ValueError(
            f"labels shape {labels.shape} fits neither integer labels {outputs.shape[:-1]} "
            f"nor one-hot labels {outputs.shape} for outputs shape {outputs.shape}"
        )
    targets = optax.losses.smooth_labels(targets, label_smoothing)
    return _mean_per_example(optax.losses.softmax_cross_entropy(outputs, targets))


@LOSSES.register("binary_cross_entropy")
def binary_cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy -[y log p + (1-y) log(1-p)] of logits against 0/1 labels."""
    targets = _matching_targets(outputs, labels)
    return _mean_per_example(optax.losses.sigmoid_binary_cross_entropy(outputs, targets))


@LOSSES.register("mse")
def mse(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error per example, averaged over trailing axes."""
    targets = _matching_targets(outputs, labels)
    return _mean_per_example(optax.losses.squared_error(outputs, targets))


@LOSSES.register("mae")
def mae(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean absolute error per example (written by hand: optax has no absolute-error loss)."""
    targets = _matching_targets(outputs, labels)
    return _mean_per_example(jnp.abs(outputs - targets))


@LOSSES.register("huber")
def huber(outputs: jax.Array, labels: jax.Array, delta: float | jax.Array = 1.0) -> jax.Array:
    """Huber loss: 0.5 x^2 if |x| <= delta else delta (|x| - 0.5 delta), averaged per example."""
    targets = _matching_targets(outputs, labels)
    return _mean_per_example(optax.losses.huber_loss(outputs, targets, delta=delta))
