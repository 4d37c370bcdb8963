"""Preprocessors: fitted on the data given only, known statistics after transforming, exact
reconstructions, class separation, filters on known signals, serialization round trips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import preprocess
from vhjax.preprocess import PREPROCESSORS, from_json, get_preprocessor, load, save, to_json, transform

RNG = np.random.default_rng(0)
TRAIN = (RNG.normal(size=(200, 4)) * [1.0, 2.0, 3.0, 0.5] + [1.0, -2.0, 3.0, 10.0]).astype(np.float32)
TEST = (RNG.normal(size=(100, 4)) * 2.0 + 5.0).astype(np.float32)
MIXED = (RNG.normal(size=(300, 4)) @ RNG.normal(size=(4, 4))).astype(np.float32)  # correlated features


def covariance(z: jax.Array) -> np.ndarray:
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    return np.cov(z, rowvar=False)


# --- scaling -------------------------------------------------------------------------------------


def test_standardize_uses_train_statistics_only():
    pre = get_preprocessor("standardize")
    fitted = pre.fit(TRAIN)
    train = np.asarray(pre.transform(fitted, TRAIN))
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    test = np.asarray(pre.transform(fitted, TEST))
    expected = (TEST - TRAIN.mean(axis=0)) / TRAIN.std(axis=0)
    np.testing.assert_allclose(test, expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(test.mean(axis=0)) > 0.5)  # the test set is not re-centred on itself
    np.testing.assert_allclose(pre.inverse_transform(fitted, train), TRAIN, atol=1e-4)


def test_standardize_per_channel_and_constant_features():
    images = RNG.uniform(size=(20, 3, 3, 2)).astype(np.float32) * [1.0, 10.0]
    fitted = get_preprocessor("standardize", per="channel").fit(images)
    assert fitted.arrays["mean"].shape == (2,)
    out = np.asarray(transform(fitted, images))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    constant = np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(get_preprocessor("standardize").fit_transform(constant)[1], 0.0)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.0, 1.0)])
def test_minmax_maps_train_range_exactly(low, high):
    pre = get_preprocessor("minmax", feature_range=(low, high))
    fitted, train = pre.fit_transform(TRAIN)
    np.testing.assert_allclose(np.asarray(train).min(axis=0), low, atol=1e-6)
    np.testing.assert_allclose(np.asarray(train).max(axis=0), high, atol=1e-6)
    test = np.asarray(pre.transform(fitted, TEST))
    assert test.max() > high  # fitted on train: new data may leave the range
    np.testing.assert_allclose(pre.inverse_transform(fitted, test), TEST, atol=1e-4)


def test_mean_subtract_mean_image_and_mean_value():
    images = RNG.uniform(size=(10, 4, 4, 3)).astype(np.float32)
    image_mean = get_preprocessor("mean_subtract").fit(images)
    assert image_mean.arrays["mean"].shape == (4, 4, 3)
    np.testing.assert_allclose(np.asarray(transform(image_mean, images)).mean(axis=0), 0.0, atol=1e-6)
    value_mean = get_preprocessor("mean_subtract", per="channel").fit(images)
    np.testing.assert_allclose(value_mean.arrays["mean"], images.mean(axis=(0, 1, 2)), rtol=1e-6)
    global_mean = get_preprocessor("mean_subtract", per="global").fit(images)
    assert global_mean.arrays["mean"].shape == ()


def test_per_example_standardize_normalises_each_series_on_its_own():
    series = RNG.normal(size=(6, 30, 2)) * RNG.uniform(0.5, 5.0, size=(6, 1, 2)) + RNG.normal(size=(6, 1, 2)) * 10
    series = series.astype(np.float32)
    pre = get_preprocessor("per_example_standardize")
    fitted = pre.fit(series[:3])
    assert fitted.arrays == {} and pre.inverse_transform is None  # stateless: nothing learned from train
    out = np.asarray(pre.transform(fitted, series))  # the unseen series 3..5 are normalised alike
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-5)
    flat = series.reshape(6, -1)
    np.testing.assert_allclose(out.reshape(6, -1), (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True),
                               rtol=1e-4, atol=1e-4)
    by_channel = np.asarray(get_preprocessor("per_example_standardize", per="channel").fit_transform(series)[1])
    np.testing.assert_allclose(by_channel.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(by_channel.std(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out, by_channel)
    # (N, L) input: one channel, both modes agree; a constant series is only centred
    plain = np.stack([np.arange(8.0), np.full(8, 3.0)]).astype(np.float32)
    for per in ("example", "channel"):
        got = np.asarray(get_preprocessor("per_example_standardize", per=per).fit_transform(plain)[1])
        np.testing.assert_allclose(got[0], (plain[0] - 3.5) / plain[0].std(), rtol=1e-5)
        np.testing.assert_array_equal(got[1], 0.0)
    with pytest.raises(ValueError, match="'per' has value 'feature'.*'example', 'channel'"):
        get_preprocessor("per_example_standardize", per="feature")


# --- projections ---------------------------------------------------------------------------------


def test_pca_with_all_components_reconstructs_exactly():
    pre = get_preprocessor("pca")
    fitted, z = pre.fit_transform(MIXED)
    assert z.shape == (300, 4)
    np.testing.assert_allclose(pre.inverse_transform(fitted, z), MIXED, atol=1e-4)
    variances = np.asarray(fitted.arrays["variances"])
    assert np.all(np.diff(variances) <= 0)
    np.testing.assert_allclose(np.diag(covariance(z)), variances, rtol=1e-3)
    np.testing.assert_allclose(covariance(z) - np.diag(np.diag(covariance(z))), 0.0, atol=1e-3)  # decorrelated


def test_pca_truncated_loses_only_the_dropped_variance():
    line = RNG.normal(size=(100, 1)) * [[1.0, 2.0, -1.0]] + RNG.normal(size=(100, 3)) * 0.01
    pre = get_preprocessor("pca", n_components=1)
    fitted, z = pre.fit_transform(line)
    assert z.shape == (100, 1)
    error = np.asarray(pre.inverse_transform(fitted, z)) - line
    assert np.abs(error).max() < 0.05 < np.abs(line - line.mean(axis=0)).max()


def test_zca_and_pca_whitening_give_identity_covariance():
    images = MIXED.reshape(300, 2, 2, 1)
    zca = get_preprocessor("zca_whiten", eps=1e-6)
    fitted, white = zca.fit_transform(images)
    assert white.shape == images.shape
    np.testing.assert_allclose(covariance(white), np.eye(4), atol=1e-2)
    np.testing.assert_allclose(zca.inverse_transform(fitted, white), images, atol=1e-3)
    _, pca_white = get_preprocessor("pca_whiten", eps=1e-6).fit_transform(MIXED)
    np.testing.assert_allclose(covariance(pca_white), np.eye(4), atol=1e-2)
    # ZCA is the whitening closest to the input: it correlates more with it than PCA whitening.
    assert np.trace(np.asarray(white).reshape(300, 4).T @ MIXED) > np.trace(np.asarray(pca_white).T @ MIXED)


def test_truncated_svd_keeps_norms_of_rank_two_data():
    data = (RNG.normal(size=(50, 2)) @ RNG.normal(size=(2, 6))).astype(np.float32)
    fitted, z = get_preprocessor("truncated_svd", n_components=2).fit_transform(data)
    assert z.shape == (50, 2)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linalg.norm(data, axis=1), rtol=1e-4)
    components = np.asarray(fitted.arrays["components"])
    np.testing.assert_allclose(components.T @ components, np.eye(2), atol=1e-5)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along feature 0 (by 3), with much larger noise along feature 1."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2).astype(np.int32)
    x = rng.normal(size=(n, 3)) * [0.5, 5.0, 1.0] + np.outer(y, [3.0, 0.0, 0.0])
    return x.astype(np.float32), y


def _threshold_accuracy(train_z: np.ndarray, train_y: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
    means = [train_z[train_y == c, 0].mean() for c in (0, 1)]
    predicted = (np.abs(z[:, 0] - means[1]) < np.abs(z[:, 0] - means[0])).astype(int)
    return float((predicted == y).mean())


def test_lda_separates_two_blobs_where_pca_does_not():
    x, y = _blobs(200, 1)
    x_test, y_test = _blobs(200, 2)
    accuracies = {}
    for name in ("lda", "pca"):
        pre = get_preprocessor(name, n_components=1)
        fitted = pre.fit(x, y)
        train_z, test_z = np.asarray(pre.transform(fitted, x)), np.asarray(pre.transform(fitted, x_test))
        assert test_z.shape == (200, 1)
        accuracies[name] = _threshold_accuracy(train_z, y, test_z, y_test)
    assert accuracies["lda"] > 0.95 and accuracies["pca"] < 0.7


def test_supervised_preprocessors_need_labels():
    with pytest.raises(ValueError, match="'lda' needs labels"):
        get_preprocessor("lda").fit(TRAIN)
    with pytest.raises(ValueError, match=r"'lda' got y of shape \(3,\)"):
        get_preprocessor("lda").fit(TRAIN, np.arange(3))


# --- sequence filters ----------------------------------------------------------------------------

TIME = np.arange(64)
SLOW = np.sin(2 * np.pi * 2 * TIME / 64)  # 2 cycles: 1/16 of the Nyquist frequency
FAST = 0.5 * np.sin(2 * np.pi * 24 * TIME / 64)  # 24 cycles: 3/4 of Nyquist
SIGNAL = np.stack([SLOW + FAST + 3.0] * 2).astype(np.float32)  # (2, 64)


def test_fft_lowpass_and_highpass_split_the_signal():
    low = get_preprocessor("lowpass", cutoff=0.5).fit_transform(SIGNAL)[1]
    high = get_preprocessor("highpass", cutoff=0.5).fit_transform(SIGNAL)[1]
    np.testing.assert_allclose(low, np.broadcast_to(SLOW + 3.0, SIGNAL.shape), atol=1e-4)
    np.testing.assert_allclose(high, np.broadcast_to(FAST, SIGNAL.shape), atol=1e-4)
    channels = get_preprocessor("lowpass", cutoff=0.5).fit_transform(SIGNAL.T[None])[1]  # (1, 64, 2)
    np.testing.assert_allclose(channels[0, :, 0], SLOW + 3.0, atol=1e-4)


def test_moving_average_filters_and_denoisers():
    smooth = np.asarray(get_preprocessor("lowpass", method="moving_average", window=5).fit_transform(SIGNAL)[1])
    rough = np.asarray(get_preprocessor("highpass", method="moving_average", window=5).fit_transform(SIGNAL)[1])
    np.testing.assert_allclose(smooth + rough, SIGNAL, atol=1e-5)
    assert np.abs(smooth - SLOW - 3.0)[:, 4:-4].max() < np.abs(FAST).max() / 2  # the fast wave mostly gone
    spikes = np.full((1, 30), 1.0, np.float32)
    spikes[0, [5, 17]] = 50.0
    np.testing.assert_allclose(get_preprocessor("denoise", method="median", window=3).fit_transform(spikes)[1], 1.0)
    quadratic = (0.1 * (TIME[:30] - 10.0) ** 2)[None].astype(np.float32)
    savgol = np.asarray(get_preprocessor("denoise", method="savgol", window=7, polyorder=2).fit_transform(quadratic)[1])
    np.testing.assert_allclose(savgol[:, 3:-3], quadratic[:, 3:-3], atol=1e-3)  # polynomials pass unchanged


def test_filters_reject_bad_options_and_layouts():
    with pytest.raises(ValueError, match="'window' has value 4.*odd"):
        get_preprocessor("denoise", window=4)
    with pytest.raises(ValueError, match="'cutoff' has value 2"):
        get_preprocessor("lowpass", cutoff=2)
    with pytest.raises(ValueError, match="'polyorder' has value 5"):
        get_preprocessor("denoise", method="savgol", window=5, polyorder=5)
    with pytest.raises(ValueError, match=r"sequences \(N, L\)"):
        get_preprocessor("lowpass").fit(np.zeros((2, 3, 4, 5)))


# --- cleaning and discretization -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_outlier_mask_uses_train_limits(method):
    pre = get_preprocessor("outliers", method=method)
    fitted = pre.fit(TRAIN)
    data = np.concatenate([TRAIN[:10], TRAIN[:1] + [0.0, 0.0, 50.0, 0.0]])
    mask = np.asarray(pre.transform(fitted, data))
    assert mask.dtype == bool and mask.shape == (11,)
    assert not mask[-1] and mask[:10].sum() >= 9
    assert np.asarray(pre.transform(fitted, TEST)).mean() < 0.5  # shifted test data falls outside train limits


def test_discretize_uniform_quantile_and_kmeans_bins():
    values = np.arange(100, dtype=np.float32)[:, None]
    uniform = get_preprocessor("discretize", n_bins=4).fit_transform(values)[1]
    np.testing.assert_array_equal(np.asarray(uniform)[:, 0], np.minimum(np.arange(100) // 24.75, 3).astype(int))
    skewed = np.exp(RNG.normal(size=(400, 2))).astype(np.float32)
    quantile = np.asarray(get_preprocessor("discretize", n_bins=4, strategy="quantile").fit_transform(skewed)[1])
    assert quantile.dtype == np.int32 and quantile.shape == (400, 2)
    np.testing.assert_array_equal(np.bincount(quantile[:, 0]), [100] * 4)
    clusters = np.concatenate([RNG.normal(c, 0.1, 30) for c in (0.0, 5.0, 6.0)])[:, None].astype(np.float32)
    kmeans = np.asarray(get_preprocessor("discretize", n_bins=3, strategy="kmeans").fit_transform(clusters)[1])[:, 0]
    np.testing.assert_array_equal(kmeans, np.repeat([0, 1, 2], 30))  # equal-width bins would merge 5 and 6
    outside = get_preprocessor("discretize", n_bins=4).fit(values)
    np.testing.assert_array_equal(transform(outside, np.array([[-5.0], [500.0]]))[:, 0], [0, 3])


def test_vector_quantize_finds_the_blobs():
    centres = np.array([[0, 0], [5, 5], [0, 5]], np.float32)
    labels = np.repeat([0, 1, 2], 20)
    points = centres[labels] + RNG.normal(0, 0.3, (60, 2)).astype(np.float32)
    clusters = np.asarray(get_preprocessor("vector_quantize", n_clusters=3).fit_transform(points)[1])
    assert clusters.shape == (60,) and clusters.dtype == np.int32
    assert all(len(set(clusters[labels == c])) == 1 for c in range(3)) and len(set(clusters)) == 3


# --- feature selection ---------------------------------------------------------------------------


def _informative(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Five non-negative features; only feature 3 depends on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300).astype(np.int32)
    x = rng.uniform(0, 1, (300, 5))
    x[:, 3] = y * 2.0 + rng.uniform(0, 1, 300)
    return x.astype(np.float32), y


@pytest.mark.parametrize("name", ["select_chi2", "select_info_gain", "select_mutual_info"])
def test_selectors_pick_the_informative_feature(name):
    x, y = _informative(3)
    pre = get_preprocessor(name, k=1)
    fitted = pre.fit(x, y)
    np.testing.assert_array_equal(fitted.arrays["indices"], [3])
    np.testing.assert_array_equal(pre.transform(fitted, x), x[:, 3:4])
    two = get_preprocessor(name, k=2).fit(x, y)
    assert 3 in two.arrays["indices"] and np.all(np.diff(two.arrays["indices"]) > 0)  # original column order


def test_selector_checks():
    x, y = _informative(4)
    with pytest.raises(ValueError, match="negative values"):
        get_preprocessor("select_chi2", k=1).fit(x - 1.0, y)
    with pytest.raises(ValueError, match="'k' has value 9"):
        get_preprocessor("select_chi2", k=9).fit(x, y)
    assert preprocess.information_gain(x, y, 10).argmax() == 3


# --- registry and serialization ------------------------------------------------------------------


def _example(name: str) -> tuple[dict, np.ndarray, np.ndarray | None]:
    x, y = _informative(5)
    options = {"vector_quantize": {"n_clusters": 3}, "truncated_svd": {"n_components": 2}}.get(name, {})
    if name.startswith("select_"):
        options = {"k": 2}
    return options, x, y


@pytest.mark.parametrize("name", PREPROCESSORS.names())
def test_every_preprocessor_round_trips_through_json_and_npz_and_jits(name, tmp_path):
    options, x, y = _example(name)
    pre = get_preprocessor(name, **options)
    fitted = pre.fit(x, y)
    expected = np.asarray(pre.transform(fitted, x))
    np.testing.assert_allclose(jax.jit(pre.transform)(fitted, x), expected, rtol=1e-5, atol=1e-5)
    restored = from_json(to_json(fitted))
    np.testing.assert_array_equal(transform(restored, x), expected)
    loaded = load(save(fitted, tmp_path / f"{name}.npz"))
    assert loaded.name == name and loaded.option_dict == fitted.option_dict
    np.testing.assert_array_equal(transform(loaded, x), expected)
    leaves = jax.tree_util.tree_leaves(fitted)
    assert all(isinstance(leaf, (np.ndarray, jnp.ndarray)) for leaf in leaves)


def test_registry_and_option_errors():
    with pytest.raises(ValueError, match="unknown preprocessor 'whitening'.*zca_whiten"):
        get_preprocessor("whitening")
    with pytest.raises(ValueError, match="no option 'axis'.*per"):
        get_preprocessor("standardize", axis=0)
    with pytest.raises(ValueError, match="'per' has value 'row'.*'feature', 'channel', 'global'"):
        get_preprocessor("minmax", per="row")
    with pytest.raises(ValueError, match="'feature_range'"):
        get_preprocessor("minmax", feature_range=(1, 0))
    with pytest.raises(ValueError, match="'n_components' has value 9"):
        get_preprocessor("pca", n_components=9).fit(TRAIN)
    with pytest.raises(ValueError, match="got fitted 'pca'"):
        get_preprocessor("standardize").transform(get_preprocessor("pca").fit(TRAIN), TRAIN)
    with pytest.raises(ValueError, match="NaN"):
        get_preprocessor("standardize").fit(np.array([[np.nan, 1.0]]))
