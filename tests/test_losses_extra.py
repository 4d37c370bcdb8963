"""Likelihood, weighted, Wasserstein, KL and distillation losses; loss composition; adaptive penalties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vhjax import losses, regularizers as reg
from vhjax.losses import get_loss

LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [-1.0, 1.5, 0.2]])
LABELS = jnp.array([0, 1, 2])


def test_new_losses_are_registered():
    assert {"nll", "weighted_cross_entropy", "wasserstein", "kl_divergence", "binary_cross_entropy"} <= set(
        losses.LOSSES.names())


def test_nll_of_log_softmax_equals_cross_entropy_and_hand_value():
    log_probs = jax.nn.log_softmax(LOGITS)
    values = get_loss("nll")(log_probs, LABELS)
    assert values.shape == (3,)
    np.testing.assert_allclose(values, get_loss("cross_entropy")(LOGITS, LABELS), rtol=1e-6)
    np.testing.assert_allclose(values, [-log_probs[i, y] for i, y in enumerate([0, 1, 2])], rtol=1e-6)
    # impossible classes (log 0 = -inf) with zero target mass contribute 0, not NaN
    hard = jnp.array([[0.0, -jnp.inf]])
    assert float(get_loss("nll")(hard, jnp.array([0]))[0]) == 0.0


def test_binary_cross_entropy_matches_hand_formula():
    logits = jnp.array([1.5, -0.3, 0.0, 4.0])
    labels = jnp.array([1.0, 0.0, 1.0, 0.0])
    sigmoid = lambda z: 1.0 / (1.0 + math.exp(-z))
    expected = [-(y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z)))
                for z, y in zip(logits.tolist(), labels.tolist())]
    np.testing.assert_allclose(get_loss("binary_cross_entropy")(logits, labels), expected, rtol=1e-5)


def test_weighted_cross_entropy_unit_weights_equal_plain_and_weights_scale_per_class():
    plain = get_loss("cross_entropy")(LOGITS, LABELS)
    wce = get_loss("weighted_cross_entropy")
    np.testing.assert_allclose(wce(LOGITS, LABELS, jnp.ones(3)), plain, rtol=1e-6)
    np.testing.assert_allclose(wce(LOGITS, LABELS), plain, rtol=1e-6)
    weights = jnp.array([2.0, 0.5, 3.0])
    np.testing.assert_allclose(jax.jit(wce)(LOGITS, LABELS, weights), weights[LABELS] * plain, rtol=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        wce(LOGITS, LABELS, jnp.ones(4))


def test_wasserstein_per_example_and_critic_loss():
    scores = jnp.array([3.0, 1.0, -2.0, 0.5])
    real = jnp.array([1, 1, 0, 0])
    np.testing.assert_allclose(get_loss("wasserstein")(scores, real), [-3.0, -1.0, -2.0, 0.5])
    critic = losses.wasserstein_critic_loss(scores[:2], scores[2:])
    np.testing.assert_allclose(critic, (-2.0 + 0.5) / 2 - (3.0 + 1.0) / 2)
    np.testing.assert_allclose(get_loss("wasserstein")(scores, real).mean(), critic / 2)
    np.testing.assert_allclose(losses.wasserstein_generator_loss(scores[2:]), 0.75)


def test_categorical_kl_zero_on_itself_positive_otherwise_and_hand_value():
    kl = losses.categorical_kl
    np.testing.assert_allclose(kl(LOGITS, LOGITS), 0.0, atol=1e-6)
    np.testing.assert_allclose(kl(LOGITS, LOGITS + 5.0), 0.0, atol=1e-5)  # shift-invariant logits
    other = LOGITS[::-1]
    values = kl(LOGITS, other)
    assert values.shape == (3,) and bool(jnp.all(values[jnp.array([0, 2])] > 1e-3))
    p, q = jax.nn.softmax(LOGITS), jax.nn.softmax(other)
    np.testing.assert_allclose(values, jnp.sum(p * jnp.log(p / q), axis=-1), rtol=1e-5, atol=1e-6)


def test_kl_divergence_loss_against_target_probabilities():
    targets = jax.nn.softmax(LOGITS)
    np.testing.assert_allclose(get_loss("kl_divergence")(LOGITS, targets), 0.0, atol=1e-6)
    # equals soft-label cross-entropy minus the target entropy
    entropy = -jnp.sum(targets * jnp.log(targets), axis=-1)
    shifted = LOGITS.at[:, 0].add(1.0)
    np.testing.assert_allclose(get_loss("kl_divergence")(shifted, targets),
                               get_loss("cross_entropy")(shifted, targets) - entropy, rtol=1e-5, atol=1e-6)


def test_distillation_minimal_at_teacher_logits():
    teacher = LOGITS
    loss = lambda s: losses.distillation_loss(s, teacher, temperature=3.0).mean()
    assert float(loss(teacher)) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(teacher), 0.0, atol=1e-6)
    for seed in range(5):
        noise = jax.random.normal(jax.random.key(seed), teacher.shape)
        assert float(loss(teacher + 0.3 * noise)) > float(loss(teacher)) + 1e-5


def test_distillation_temperature_scaling_and_alpha_mixing():
    student = LOGITS[::-1]
    t = 4.0
    soft = losses.distillation_loss(student, LOGITS, temperature=t)
    np.testing.assert_allclose(soft, t**2 * losses.categorical_kl(LOGITS / t, student / t), rtol=1e-6)
    mixed = losses.distillation_loss(student, LOGITS, LABELS, temperature=t, alpha=0.25)
    hard = get_loss("cross_entropy")(student, LABELS)
    np.testing.assert_allclose(mixed, 0.75 * soft + 0.25 * hard, rtol=1e-6)
    traced = jax.jit(lambda a: losses.distillation_loss(student, LOGITS, LABELS, temperature=t, alpha=a))
    np.testing.assert_allclose(traced(jnp.float32(1.0)), hard, rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        losses.distillation_loss(student, LOGITS, temperature=t, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_loss(student, LOGITS, temperature=0.0)


def test_combine_losses_with_constant_and_scheduled_weights():
    terms = {"main": jnp.float32(2.0), "aux": jnp.array([1.0, 3.0])}
    ramp = losses.weight_schedule("linear", init_value=0.0, end_value=0.5, transition_steps=10)
    total_at = jax.jit(lambda step: losses.combine_losses(terms, {"main": 1.0, "aux": ramp}, step))
    total0, parts0 = total_at(0)
    np.testing.assert_allclose(total0, [2.0, 2.0])
    np.testing.assert_allclose(parts0["aux"], [0.0, 0.0])
    total10, _ = total_at(10)
    np.testing.assert_allclose(total10, [2.5, 3.5])
    np.testing.assert_allclose(total_at(5)[0], [2.25, 2.75])
    with pytest.raises(ValueError, match="missing"):
        losses.combine_losses(terms, {"main": 1.0})
    with pytest.raises(ValueError, match="step"):
        losses.combine_losses(terms, {"main": 1.0, "aux": ramp})
    with pytest.raises(ValueError, match="unknown weight schedule"):
        losses.weight_schedule("nope")


PARAMS = {"Dense_0": {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.2]]), "bias": jnp.array([10.0, 0.0])}}


def test_scheduled_penalty_follows_step():
    schedules = {"l2": optax.linear_schedule(0.0, 1.0, 4), "l1": 0.5}
    l1, l2 = float(reg.l1(PARAMS)), float(reg.l2(PARAMS))
    at = jax.jit(lambda step: reg.scheduled_penalty(PARAMS, step, schedules))
    np.testing.assert_allclose(at(0), 0.5 * l1, rtol=1e-6)
    np.testing.assert_allclose(at(2), 0.5 * l1 + 0.5 * l2, rtol=1e-6)
    np.testing.assert_allclose(at(8), 0.5 * l1 + l2, rtol=1e-6)


def test_max_norm_projects_columns_and_keeps_others():
    projected = reg.max_norm(PARAMS, 1.0)
    kernel = projected["Dense_0"]["kernel"]
    norms = jnp.linalg.norm(kernel, axis=0)
    np.testing.assert_allclose(norms[0], 1.0, rtol=1e-6)  # column norm 5 -> 1
    np.testing.assert_allclose(kernel[:, 0], jnp.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_array_equal(kernel[:, 1], PARAMS["Dense_0"]["kernel"][:, 1])  # within bound: untouched
    np.testing.assert_array_equal(projected["Dense_0"]["bias"], PARAMS["Dense_0"]["bias"])  # not a kernel
    everything = reg.max_norm(PARAMS, 2.0, where="all")
    np.testing.assert_allclose(jnp.linalg.norm(everything["Dense_0"]["bias"]), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="max_value"):
        reg.max_norm(PARAMS, 0.0)
