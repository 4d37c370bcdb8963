"""Hand-computed checks of the per-example losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.losses import LOSSES, get_loss


def _log_softmax(row):
    top = max(row)
    log_norm = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_norm for v in row]


def test_registry_names_and_unknown_name():
    assert {"cross_entropy", "mse", "mae", "huber"} <= set(LOSSES.names())
    with pytest.raises(ValueError, match="nope"):
        get_loss("nope")


def test_cross_entropy_integer_labels_by_hand():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    labels = [0, 1]
    expected = [-_log_softmax(row)[y] for row, y in zip(logits, labels)]
    values = get_loss("cross_entropy")(jnp.array(logits), jnp.array(labels))
    assert values.shape == (2,)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_cross_entropy_one_hot_agrees_with_integer_and_soft_labels_by_hand():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = jnp.array([2, 0])
    ce = get_loss("cross_entropy")
    np.testing.assert_allclose(ce(logits, jax.nn.one_hot(labels, 3)), ce(logits, labels), rtol=1e-6)
    soft = [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    expected = [-sum(p * lp for p, lp in zip(q, _log_softmax(row))) for q, row in zip(soft, logits.tolist())]
    np.testing.assert_allclose(ce(logits, jnp.array(soft)), expected, rtol=1e-6)


def test_cross_entropy_label_smoothing_by_hand_and_traced():
    logits = [[1.0, 0.0, -2.0]]
    alpha = 0.3
    target = [1 - alpha + alpha / 3, alpha / 3, alpha / 3]
    expected = -sum(t * lp for t, lp in zip(target, _log_softmax(logits[0])))
    ce = get_loss("cross_entropy")
    smoothed = jax.jit(ce)(jnp.array(logits), jnp.array([0]), jnp.float32(alpha))
    np.testing.assert_allclose(smoothed, [expected], rtol=1e-6)
    unsmoothed = jax.jit(ce)(jnp.array(logits), jnp.array([0]), jnp.float32(0.0))
    np.testing.assert_allclose(unsmoothed, ce(jnp.array(logits), jnp.array([0])), rtol=1e-6)


def test_cross_entropy_bad_label_shape():
    with pytest.raises(ValueError, match="labels shape"):
        get_loss("cross_entropy")(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))


def test_mse_and_mae_mean_over_trailing_axes_by_hand():
    outputs = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    targets = jnp.array([[0.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(get_loss("mse")(outputs, targets), [(1 + 4) / 2, (0 + 9) / 2])
    np.testing.assert_allclose(get_loss("mae")(outputs, targets), [(1 + 2) / 2, (0 + 3) / 2])


def test_regression_accepts_flat_targets_for_single_output():
    np.testing.assert_allclose(get_loss("mse")(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])), [1.0, 4.0])
    with pytest.raises(ValueError, match="shape"):
        get_loss("mae")(jnp.zeros((2, 3)), jnp.zeros((2, 2)))


def test_huber_both_branches_by_hand():
    delta = 1.5
    outputs = jnp.array([[0.5], [4.0], [-3.0]])
    targets = jnp.zeros((3, 1))
    expected = [0.5 * 0.5**2, delta * (4.0 - 0.5 * delta), delta * (3.0 - 0.5 * delta)]
    np.testing.assert_allclose(get_loss("huber")(outputs, targets, delta=delta), expected, rtol=1e-6)
    # default delta = 1: the quadratic branch at |x| = 1 meets the linear one
    np.testing.assert_allclose(get_loss("huber")(jnp.array([[1.0], [2.0]]), jnp.zeros((2, 1))), [0.5, 1.5])


def test_binary_cross_entropy_by_hand():
    logits = jnp.array([[0.0], [2.0]])
    labels = jnp.array([[1.0], [0.0]])
    sigmoid = 1 / (1 + math.exp(-2.0))
    expected = [math.log(2.0), -math.log(1 - sigmoid)]
    np.testing.assert_allclose(get_loss("binary_cross_entropy")(logits, labels), expected, rtol=1e-6)


def test_sequence_cross_entropy_is_mean_over_positions():
    logits = jnp.array([[[1.0, 0.0], [0.0, 3.0]]])
    labels = jnp.array([[0, 0]])
    per_position = [-_log_softmax([1.0, 0.0])[0], -_log_softmax([0.0, 3.0])[0]]
    np.testing.assert_allclose(get_loss("cross_entropy")(logits, labels), [sum(per_position) / 2], rtol=1e-6)
