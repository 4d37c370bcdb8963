"""Uncertainty and calibration of classifiers: pure functions of (probabilities, labels).

Inputs are class probabilities `(N, C)` (rows sum to one) and integer labels `(N,)`; functions
that also take a member axis expect `(M, N, C)`. Everything is jit-able except the plotting
helper. `fit_temperature` fits one scalar T on held-out logits by minimising the NLL
(Guo et al. 2017, "On Calibration of Modern Neural Networks").
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import validation

EPS = 1e-12


def check_probabilities(name: str, probs: Any, ndim: int | tuple[int, ...] = 2) -> np.ndarray:
    """Raise ValueError naming `name` unless `probs` has `ndim` axes of non-negative rows summing to 1."""
    array = np.asarray(probs)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in allowed:
        raise ValueError(f"{name} has shape {array.shape}; allowed: {' or '.join(f'{d} axes' for d in allowed)} "
                         "with classes last")
    if array.size and (np.any(array < -1e-6) or not np.allclose(array.sum(-1), 1.0, atol=1e-3)):
        raise ValueError(f"{name} rows sum to {float(array.sum(-1).min()):.4g}..{float(array.sum(-1).max()):.4g} "
                         "(or hold negative values); allowed: probabilities (apply softmax to logits first)")
    return array


def nll(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood -log p(y|x) of the true class (natural log)."""
    picked = jnp.take_along_axis(probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.mean(jnp.log(jnp.clip(picked, EPS, 1.0)))


def brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Multi-class Brier score: mean over examples of sum_c (p_c - 1[y = c])^2 (0 is perfect, 2 worst)."""
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    return jnp.mean(jnp.sum((probs - onehot) ** 2, axis=-1))


def reliability_bins(probs: jax.Array, labels: jax.Array, num_bins: int = 15) -> dict[str, jax.Array]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy.

    Confidence is the top-class probability; bin b holds confidences in (b/B, (b+1)/B], the first
    bin also 0.
    """
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    count = jnp.zeros(num_bins).at[index].add(1.0)
    conf_sum = jnp.zeros(num_bins).at[index].add(confidence)
    acc_sum = jnp.zeros(num_bins).at[index].add(correct)
    safe = jnp.maximum(count, 1.0)
    return {"count": count, "confidence": conf_sum / safe, "accuracy": acc_sum / safe}


def ece(probs: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
    """Expected calibration error: sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width bins."""
    bins = reliability_bins(probs, labels, num_bins)
    weights = bins["count"] / jnp.maximum(bins["count"].sum(), 1.0)
    return jnp.sum(weights * jnp.abs(bins["accuracy"] - bins["confidence"]))


def predictive_entropy(probs: jax.Array) -> jax.Array:
    """Entropy H[p] per example (nats); for member probabilities (M, N, C) pass their mean."""
    return -jnp.sum(probs * jnp.log(jnp.clip(probs, EPS, 1.0)), axis=-1)


def mutual_information(member_probs: jax.Array) -> jax.Array:
    """Epistemic uncertainty per example: H[mean_m p_m] - mean_m H[p_m] for (M, N, C) probabilities.

    Zero when all members agree; the BALD score of Houlsby et al. 2011 for ensembles or MC dropout.
    """
    return predictive_entropy(member_probs.mean(0)) - predictive_entropy(member_probs).mean(0)


@functools.partial(jax.jit, static_argnames="num_bins")
def _metrics(probs: jax.Array, labels: jax.Array, num_bins: int) -> dict[str, jax.Array]:
    return {"accuracy": jnp.mean(jnp.argmax(probs, -1) == labels), "nll": nll(probs, labels),
            "brier": brier(probs, labels), "ece": ece(probs, labels, num_bins)}


def calibration_metrics(probs: Any, labels: Any, num_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece of (N, C) probabilities, as Python floats (one compiled program
    per shape)."""
    probs = jnp.asarray(check_probabilities("probs", probs))
    labels = jnp.asarray(labels)
    return {name: float(value) for name, value in _metrics(probs, labels, int(num_bins)).items()}


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _fitted_log_temperature(logits: jax.Array, labels: jax.Array, steps: int, learning_rate: float) -> jax.Array:
    """log T after `steps` full-batch Adam steps on the NLL of softmax(logits / T), from T = 1."""
    optimizer = optax.adam(learning_rate)

    def loss(log_t):
        return optax.softmax_cross_entropy_with_integer_labels(logits / jnp.exp(log_t), labels).mean()

    def step(carry, _):
        log_t, state = carry
        updates, state = optimizer.update(jax.grad(loss)(log_t), state)
        return (optax.apply_updates(log_t, updates), state), None

    start = jnp.float32(0.0)
    (log_t, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
    return log_t


def fit_temperature(logits: Any, labels: Any, *, steps: int = 300, learning_rate: float = 0.05) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on held-out data.

    Optimises log T with Adam (full batch); T > 1 softens an overconfident model. Fit on a
    validation split, never on the split you report. One compiled program per shape and settings.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits has shape {logits.shape} and labels {labels.shape}; allowed: (N, C) and (N,)")
    return float(jnp.exp(_fitted_log_temperature(logits, labels, int(steps), float(learning_rate))))


def apply_temperature(logits: Any, temperature: float) -> jax.Array:
    """softmax(logits / temperature)."""
    validation.check_number("temperature", temperature, 0.0, low_inclusive=False)
    return jax.nn.softmax(jnp.asarray(logits) / temperature, axis=-1)


def reliability_diagram(probs: Any, labels: Any, path: str | Path, *, num_bins: int = 15,
                        title: str = "", others: dict[str, Any] | None = None) -> Path:
    """Save a reliability diagram PNG (accuracy vs confidence per bin, with the diagonal).

    `others` maps a label to more probabilities on the same labels (e.g. after temperature
    scaling) drawn on the same axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {"model": probs, **(others or {})}
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, p in curves.items():
        p = jnp.asarray(check_probabilities(f"probs[{name!r}]", p))
        bins = jax.tree.map(np.asarray, reliability_bins(p, jnp.asarray(labels), num_bins))
        used = bins["count"] > 0
        value = float(ece(p, jnp.asarray(labels), num_bins))
        ax.plot(bins["confidence"][used], bins["accuracy"][used], "o-", ms=3, label=f"{name} (ECE {value:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability diagram")
    ax.legend(fontsize=7, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
