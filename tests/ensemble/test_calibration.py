"""Calibration and uncertainty metrics, cross-checked with sklearn where it has them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from vhjax import calibration, metrics


def calibrated_data(seed: int, n: int = 4000, c: int = 4, scale: float = 1.0):
    """Labels drawn from softmax(logits): softmax(logits) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, c)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = np.array([rng.choice(c, p=p) for p in probs])
    return logits, labels


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_nll_brier_match_references():
    logits, labels = calibrated_data(0, n=500)
    probs = softmax(logits)
    assert float(calibration.nll(probs, labels)) == pytest.approx(log_loss(labels, probs), rel=1e-4)
    onehot = np.eye(4)[labels]
    assert float(calibration.brier(probs, labels)) == pytest.approx(np.mean(((probs - onehot) ** 2).sum(-1)), rel=1e-5)


def test_ece_small_when_calibrated_large_when_overconfident():
    logits, labels = calibrated_data(1)
    assert float(calibration.ece(softmax(logits), labels)) < 0.03
    assert float(calibration.ece(softmax(4 * logits), labels)) > 0.1
    bins = calibration.reliability_bins(softmax(logits), labels, 10)
    assert float(bins["count"].sum()) == len(labels)


def test_temperature_scaling_undoes_overconfidence():
    logits, labels = calibrated_data(2)
    sharp = 3.0 * logits  # an overconfident model: the calibrated logits times 3
    fit, held_out = slice(0, 2000), slice(2000, None)
    temperature = calibration.fit_temperature(sharp[fit], labels[fit])
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = float(calibration.nll(softmax(sharp[held_out]), labels[held_out]))
    after = float(calibration.nll(calibration.apply_temperature(sharp[held_out], temperature), labels[held_out]))
    assert after < before - 0.1
    assert float(calibration.ece(calibration.apply_temperature(sharp[held_out], temperature), labels[held_out])) < \
        float(calibration.ece(softmax(sharp[held_out]), labels[held_out]))
    with pytest.raises(ValueError, match="temperature has value -1"):
        calibration.apply_temperature(sharp, -1)


def test_entropy_and_mutual_information():
    uniform = np.full((3, 4), 0.25, np.float32)
    np.testing.assert_allclose(calibration.predictive_entropy(uniform), np.log(4), rtol=1e-5)
    agree = np.tile(softmax(np.random.default_rng(0).normal(size=(1, 5, 4))), (3, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(calibration.mutual_information(agree), 0.0, atol=1e-5)
    disagree = np.stack([np.eye(4)[[0] * 5], np.eye(4)[[1] * 5]]).astype(np.float32) * 0.97 + 0.01
    assert np.all(np.asarray(calibration.mutual_information(disagree)) > 0.5)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    negative = np.round(rng.normal(0, 1, 300), 1)
    positive = np.round(rng.normal(0.8, 1, 200), 1)
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[negative, positive])
    assert float(metrics.auroc(negative, positive)) == pytest.approx(expected, abs=1e-6)
    assert float(metrics.auroc([0.0, 0.1], [0.5, 0.9])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        metrics.auroc([], [1.0])


def test_reliability_diagram_png(tmp_path):
    logits, labels = calibrated_data(4, n=500)
    path = calibration.reliability_diagram(softmax(3 * logits), labels, tmp_path / "rel.png",
                                           others={"scaled": softmax(logits)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="probabilities"):
        calibration.calibration_metrics(logits, labels)
