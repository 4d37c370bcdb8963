"""Metrics against hand counts and sklearn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from vhjax.metrics import accuracy, confusion_matrix, precision_recall_f1


def test_accuracy_integer_and_one_hot_labels():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    labels = jnp.array([0, 1, 1, 0])
    assert float(accuracy(logits, labels)) == 0.5
    assert float(jax.jit(accuracy)(logits, jax.nn.one_hot(labels, 2))) == 0.5


def test_confusion_matrix_by_hand_from_preds_and_logits():
    preds = jnp.array([0, 2, 2, 1, 0])
    labels = jnp.array([0, 2, 1, 1, 2])
    expected = [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 3), expected)
    logits = jax.nn.one_hot(preds, 3) * 4.0
    np.testing.assert_array_equal(confusion_matrix(logits, jax.nn.one_hot(labels, 3), 3), expected)


def test_confusion_matrix_ignores_out_of_range_ids():
    counts = confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, -1, 5]), 2)
    np.testing.assert_array_equal(counts, [[1, 0], [0, 0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = 5
    labels = rng.integers(0, num_classes, size=60)
    logits = rng.normal(size=(60, num_classes)).astype(np.float32)
    logits[:, 4] -= 100.0  # class 4 is never predicted: precision must be 0, not NaN
    preds = logits.argmax(-1)
    got = jax.jit(precision_recall_f1, static_argnums=2)(jnp.array(logits), jnp.array(labels), num_classes)
    kwargs = dict(labels=list(range(num_classes)), average=None, zero_division=0)
    np.testing.assert_allclose(got["precision"], skm.precision_score(labels, preds, **kwargs), atol=1e-6)
    np.testing.assert_allclose(got["recall"], skm.recall_score(labels, preds, **kwargs), atol=1e-6)
    np.testing.assert_allclose(got["f1"], skm.f1_score(labels, preds, **kwargs), atol=1e-6)
    macro = skm.f1_score(labels, preds, labels=list(range(num_classes)), average="macro", zero_division=0)
    np.testing.assert_allclose(got["macro_f1"], macro, atol=1e-6)
    assert float(got["precision"][4]) == 0.0


def test_absent_class_gives_zeros_not_nan():
    result = precision_recall_f1(jnp.array([0, 0, 1]), jnp.array([0, 1, 1]), 3)
    assert not any(bool(jnp.isnan(v).any()) for v in result.values())
    assert float(result["f1"][2]) == 0.0
    np.testing.assert_allclose(result["precision"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(result["recall"], [1.0, 0.5, 0.0])


def test_bad_num_classes_and_label_shape():
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(jnp.array([0]), jnp.array([0]), 0)
    with pytest.raises(ValueError, match="labels shape"):
        accuracy(jnp.zeros((4, 3)), jnp.zeros((3,), jnp.int32))
