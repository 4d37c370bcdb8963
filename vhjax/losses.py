"""Per-example losses: `fn(outputs, labels) -> (N,)`.

Every loss returns one value per example (axis 0), so callers can weight, mask or average them.
Extra keyword arguments (label smoothing, Huber delta) may be traced arrays, so one compiled step
serves a population whose members use different values.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from vhjax import validation
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


# ---------------------------------------------------------------------------------------------
# More per-example losses: likelihoods, class weights, GAN critics, divergences, distillation.


def _class_targets(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Integer labels (one axis fewer than `outputs`) as one-hot; same-shape labels as given."""
    labels = jnp.asarray(labels)
    if labels.shape == outputs.shape:
        return labels.astype(outputs.dtype)
    if labels.ndim == outputs.ndim - 1 and labels.shape == outputs.shape[:-1]:
        return jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    raise ValueError(
        f"labels shape {labels.shape} fits neither integer labels {outputs.shape[:-1]} "
        f"nor one-hot labels {outputs.shape} for outputs shape {outputs.shape}"
    )


@LOSSES.register("nll")
def nll(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Negative log-likelihood of log-probabilities `outputs` (..., C): -sum_c t_c log p_c.

    `outputs` must already be log-probabilities (e.g. `jax.nn.log_softmax` of logits); labels are
    integer class ids or one-hot / soft distributions. Sequences (N, L, C) are averaged over L.
    """
    targets = _class_targets(outputs, labels)
    terms = jnp.where(targets == 0, 0.0, targets * outputs)  # 0 * log 0 = 0 for impossible classes
    return _mean_per_example(-jnp.sum(terms, axis=-1))


@LOSSES.register("weighted_cross_entropy")
def weighted_cross_entropy(
    outputs: jax.Array, labels: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy with a weight per class: -sum_c w_c t_c log softmax(outputs)_c.

    For integer labels this is `class_weights[label] * cross_entropy`. `class_weights` (C,) may
    be traced (e.g. `vhjax.data.extra.balanced_class_weights`); None means all ones.
    """
    targets = _class_targets(outputs, labels)
    log_probs = jax.nn.log_softmax(outputs, axis=-1)
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, outputs.dtype)
        if class_weights.shape != (outputs.shape[-1],):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; allowed: ({outputs.shape[-1]},), "
                "one weight per class"
            )
        targets = targets * class_weights
    return _mean_per_example(-jnp.sum(targets * log_probs, axis=-1))


@LOSSES.register("wasserstein")
def wasserstein(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example Wasserstein critic loss: `-score` for real (label 1), `+score` for fake (label 0).

    `outputs` are critic scores (N,) or (N, 1). On a batch with as many real as fake examples the
    mean is half of `wasserstein_critic_loss(real, fake)`.
    """
    targets = _matching_targets(outputs, labels)
    return _mean_per_example((1.0 - 2.0 * targets) * outputs)


def wasserstein_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
    """WGAN critic objective to minimize: mean(D(fake)) - mean(D(real)) (a scalar)."""
    return jnp.mean(fake_scores) - jnp.mean(real_scores)


def wasserstein_generator_loss(fake_scores: jax.Array) -> jax.Array:
    """WGAN generator objective to minimize: -mean(D(fake)) (a scalar)."""
    return -jnp.mean(fake_scores)


def categorical_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(p || q) = sum_c p_c (log p_c - log q_c) between softmax(p_logits) and softmax(q_logits).

    Both are (..., C) logits (unnormalized log-probabilities); the result is per example (N,),
    averaged over any sequence axes. Zero iff the two distributions are equal.
    """
    log_p = jax.nn.log_softmax(p_logits, axis=-1)
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return _mean_per_example(optax.losses.kl_divergence_with_log_targets(log_q, log_p))


@LOSSES.register("kl_divergence")
def kl_divergence(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """KL(labels || softmax(outputs)): target probabilities `labels` (..., C) against logits.

    Differs from soft-label cross-entropy by the target's entropy, so it is 0 at a perfect fit.
    """
    targets = _class_targets(outputs, labels)
    log_q = jax.nn.log_softmax(outputs, axis=-1)
    return _mean_per_example(optax.losses.kl_divergence(log_q, targets))


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array | None = None,
    *,
    temperature: float | jax.Array = 1.0,
    alpha: float | jax.Array = 0.0,
) -> jax.Array:
    """Knowledge distillation (Hinton et al. 2015), per example:

        (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha * CE(student, labels)

    The soft term is 0 exactly when the student's logits equal the teacher's (up to a shift);
    T^2 keeps its gradient scale independent of T. `alpha` weights the hard labels; with
    `labels=None` it must be 0. `temperature` and `alpha` may be traced arrays.
    """
    if student_logits.shape != jnp.shape(teacher_logits):
        raise ValueError(
            f"teacher_logits shape {jnp.shape(teacher_logits)} != student_logits shape {student_logits.shape}"
        )
    if isinstance(temperature, (int, float)):  # traced arrays are not checked
        validation.check_number("temperature", temperature, 0.0, low_inclusive=False)
    if isinstance(alpha, (int, float)):
        validation.check_number("alpha", alpha, 0.0, 1.0)
    soft = temperature**2 * categorical_kl(teacher_logits / temperature, student_logits / temperature)
    if labels is None:
        if not (isinstance(alpha, (int, float)) and alpha == 0.0):
            raise ValueError(f"alpha={alpha!r} needs labels (got labels=None); allowed with no labels: alpha=0")
        return soft
    return (1.0 - alpha) * soft + alpha * cross_entropy(student_logits, labels)


# ---------------------------------------------------------------------------------------------
# Composing losses: weighted sums of named terms, with weights that may follow a schedule.

Weight = float | jax.Array | Callable[[jax.Array], jax.Array]

WEIGHT_SCHEDULES: Registry[Callable[..., Callable[[jax.Array], jax.Array]]] = Registry("weight schedule")
WEIGHT_SCHEDULES.add("constant", optax.constant_schedule)
WEIGHT_SCHEDULES.add("linear", optax.linear_schedule)
WEIGHT_SCHEDULES.add("cosine", optax.cosine_decay_schedule)
WEIGHT_SCHEDULES.add("exponential", optax.exponential_decay)
WEIGHT_SCHEDULES.add("piecewise", optax.piecewise_constant_schedule)
WEIGHT_SCHEDULES.add("warmup_cosine", optax.warmup_cosine_decay_schedule)


def weight_schedule(name: str, **kwargs) -> Callable[[jax.Array], jax.Array]:
    """A loss weight as a function of step, built by the optax schedule `name` with `kwargs`.

    Names: constant (value), linear (init_value, end_value, transition_steps, transition_begin),
    cosine (init_value, decay_steps, alpha), exponential (init_value, transition_steps,
    decay_rate, ...), piecewise (init_value, boundaries_and_scales), warmup_cosine (init_value,
    peak_value, warmup_steps, decay_steps, end_value). E.g. ramp an auxiliary loss in with
    `weight_schedule('linear', init_value=0.0, end_value=0.3, transition_steps=1000)`.
    """
    builder = WEIGHT_SCHEDULES.get(name)
    try:
        return builder(**kwargs)
    except TypeError as error:
        raise ValueError(f"weight schedule {name!r}: {error}") from None


def combine_losses(
    losses: Mapping[str, jax.Array],
    weights: Mapping[str, Weight],
    step: jax.Array | int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(sum_k weight_k * loss_k, {k: weight_k * loss_k})` for a main loss and auxiliary terms.

    Every key of `losses` needs a weight (a number, an array, or a schedule `step -> weight`,
    which requires `step`). Terms may be scalars or per-example (N,) arrays that broadcast.
    """
    missing, extra = sorted(set(losses) - set(weights)), sorted(set(weights) - set(losses))
    if missing or extra:
        raise ValueError(
            f"weights keys {sorted(weights)} must equal losses keys {sorted(losses)} "
            f"(missing {missing}, unused {extra})"
        )
    parts = {}
    for name, value in losses.items():
        weight = weights[name]
        if callable(weight):
            if step is None:
                raise ValueError(f"weight of loss {name!r} is a schedule; pass step (got step=None)")
            weight = weight(step)
        parts[name] = weight * value
    total = sum(parts.values(), jnp.zeros((), jnp.float32))
    return total, parts
