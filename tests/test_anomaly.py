"""Anomaly detection with autoencoders; PSNR and SSIM."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from vhjax import metrics
from vhjax.anomaly import average_precision, detection_report, fit_autoencoders, pca_errors, reconstruction_errors
from vhjax.models import Autoencoder


def plane_data(seed: int = 0):
    """Normal points on a 2-D plane in 10-D (with a little noise); anomalies off it, at the same scale."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0].T  # (2, 10), orthonormal rows

    def normal(n):
        return (rng.normal(size=(n, 2)) @ basis + 0.02 * rng.normal(size=(n, 10))).astype(np.float32)

    anomalous = rng.normal(size=(100, 10)).astype(np.float32) * np.sqrt(2 / 10)  # same mean square norm
    return normal(600), normal(200), normal(200), anomalous


MODEL = Autoencoder(data_shape=(10,), latent_dim=2, widths=(32,))


@pytest.fixture(scope="module")
def detectors():
    train, _, _, _ = plane_data()
    return fit_autoencoders(MODEL, train, learning_rate=[3e-3, 3e-3, 1e-6], noise=[0.0, 0.1, 0.0],
                            seeds=[0, 1, 0], steps=800, batch_size=64)


def test_autoencoders_trained_on_normal_data_flag_off_plane_points(detectors):
    _, validation, normal, anomalous = plane_data()
    report = detection_report(reconstruction_errors(detectors, normal), reconstruction_errors(detectors, anomalous),
                              validation=reconstruction_errors(detectors, validation))
    assert report["auroc"][0] > 0.95 and report["auroc"][1] > 0.95
    assert report["auroc"][2] < report["auroc"][0] - 0.1  # the member that barely trained (rate 1e-6)
    assert report["chosen"] in (0, 1)  # the lowest error on normal validation data, no anomalies needed
    assert report["detection_rate"][0] > 0.8 and report["false_alarm_rate"][0] < 0.15
    assert detectors.losses[-1, 0] < detectors.losses[0, 0] / 5
    assert detectors.members[1] == {"learning_rate": 3e-3, "noise": 0.1, "seed": 1}


def test_pca_baseline_separates_the_plane_and_is_exact_with_all_components():
    train, _, normal, anomalous = plane_data()
    assert float(metrics.auroc(pca_errors(train, normal, 2), pca_errors(train, anomalous, 2))) > 0.99
    np.testing.assert_allclose(pca_errors(train, anomalous, 10), 0.0, atol=1e-8)


def test_average_precision_equals_scikit_learns():
    rng = np.random.default_rng(3)
    negative, positive = rng.normal(size=50), rng.normal(0.8, 1.0, size=20)
    labels = np.r_[np.zeros(50), np.ones(20)]
    assert average_precision(negative, positive) == pytest.approx(
        average_precision_score(labels, np.r_[negative, positive]), abs=1e-12)


def test_threshold_is_set_on_normal_validation_scores():
    rng = np.random.default_rng(4)
    validation = rng.normal(size=(1, 2000))
    normal, anomalous = rng.normal(size=(1, 2000)), rng.normal(3.0, 1.0, size=(1, 500))
    report = detection_report(normal, anomalous, validation=validation, quantile=0.9)
    assert report["false_alarm_rate"][0] == pytest.approx(0.1, abs=0.025)
    assert report["detection_rate"][0] > 0.9


@pytest.mark.parametrize("call, message", [
    (lambda x: fit_autoencoders(MODEL, x[:, :8]), r"x_normal has value 'inputs of shape \(600, 8\)'"),
    (lambda x: fit_autoencoders(MODEL, x, noise=-0.1), "member 0: noise has value -0.1"),
    (lambda x: fit_autoencoders(MODEL, x, learning_rate=[1e-3, 1e-2], noise=[0.0, 0.1, 0.2]),
     "sequences of lengths"),
    (lambda x: fit_autoencoders(MODEL, x, batch_size=1000), "batch_size has value 1000"),
    (lambda x: fit_autoencoders(MODEL, np.where(np.arange(10) == 3, np.nan, x)), "finite inputs"),
    (lambda x: detection_report(np.zeros((2, 5)), np.ones((3, 5)), validation=np.zeros((2, 5))), "same members"),
    (lambda x: pca_errors(x, x, 11), "components has value 11"),
])
def test_bad_input_raises_before_training(call, message):
    train, _, _, _ = plane_data()
    with pytest.raises(ValueError, match=message):
        call(train)


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 8, 8)).astype(np.float32)
    noisy = np.clip(images + rng.normal(0, 0.1, images.shape), 0, 1).astype(np.float32)
    mse = ((noisy - images) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(metrics.psnr(noisy, images), 10 * np.log10(1 / mse), rtol=1e-4)
    np.testing.assert_allclose(metrics.psnr(noisy * 255, images * 255, max_value=255.0),
                               metrics.psnr(noisy, images), rtol=1e-4)
    np.testing.assert_allclose(metrics.ssim(images, images, filter_size=7), 1.0, atol=1e-5)
    more = np.clip(images + rng.normal(0, 0.3, images.shape), 0, 1).astype(np.float32)
    assert np.all(metrics.ssim(more, images, filter_size=7) < metrics.ssim(noisy, images, filter_size=7))
    with pytest.raises(ValueError, match="filter_size has value 11"):
        metrics.ssim(images, images)
    with pytest.raises(ValueError, match="the references' shape"):
        metrics.psnr(images[:2], images)


def test_interrupted_training_resumes_from_its_workdir(tmp_path, run_interrupted, monkeypatch):
    import jax

    from vhjax.population.engine import PopulationRunner

    train, _, normal, _ = plane_data()
    run = lambda workdir, noise=0.1: fit_autoencoders(MODEL, train, learning_rate=[3e-3, 1e-3],  # noqa: E731
                                                      noise=noise, steps=60, batch_size=64, workdir=workdir)
    full = run(tmp_path / "full")
    run_interrupted(lambda: run(tmp_path / "cut"), at_step=30)  # killed after the checkpoint at step 30 of 60
    resumed = run(tmp_path / "cut")
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(PopulationRunner, "__call__", lambda *a: pytest.fail("a finished workdir trained again"))
    restored = run(tmp_path / "cut")
    np.testing.assert_array_equal(reconstruction_errors(restored, normal), reconstruction_errors(full, normal))
    with pytest.raises(ValueError, match=r"other autoencoders inputs \(noise"):
        run(tmp_path / "cut", noise=0.2)
