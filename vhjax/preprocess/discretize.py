"""Discretization fitted on training data: per-feature binning (equal width or quantiles via
scikit-learn's KBinsDiscretizer, or 1-D k-means via scikit-learn's KMeans) and vector
quantization of whole examples (k-means clusters). Both transform to int32 indices.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, as_float32, check_choice, check_int, flat, make_preprocessor,
                                   register_preprocessor)

STRATEGIES = ("uniform", "quantile", "kmeans")


def kmeans_edges(column: np.ndarray, n_bins: int, seed: int) -> np.ndarray:
    """Inner bin edges of one feature: midpoints between sorted 1-D k-means centres (k-means++
    with several restarts; KBinsDiscretizer's fixed uniform start can split one cluster in two)."""
    distinct = np.unique(column).size
    from sklearn.cluster import KMeans  # imported when used: scikit-learn is slow to import

    model = KMeans(n_clusters=min(n_bins, distinct), n_init=4, random_state=seed).fit(column[:, None])
    centres = np.sort(model.cluster_centers_[:, 0])
    return (centres[1:] + centres[:-1]) / 2.0


def binning_edges(data: np.ndarray, n_bins: int, strategy: str, seed: int) -> list[np.ndarray]:
    """Inner bin edges per column of data (N, D)."""
    if strategy == "kmeans":
        return [kmeans_edges(column, n_bins, seed) for column in data.T]
    from sklearn.preprocessing import KBinsDiscretizer

    binner = KBinsDiscretizer(n_bins=n_bins, encode="ordinal", strategy=strategy, subsample=None)
    with warnings.catch_warnings():  # constant or tied features lose bins; that is expected
        warnings.simplefilter("ignore", UserWarning)
        binner.fit(data)
    return [edges[1:-1] for edges in binner.bin_edges_]


@register_preprocessor("discretize")
def discretize(n_bins: int = 5, strategy: str = "uniform", seed: int = 0) -> Preprocessor:
    """Replace every feature by its bin index in [0, n_bins): bins of equal width ('uniform'),
    equal counts ('quantile') or around 1-D k-means centres ('kmeans', seeded by `seed`), edges
    from the training data. Same shape as x, int32. Values beyond the training range go to the
    end bins."""
    n_bins = check_int("discretize", "n_bins", n_bins, 2)
    check_choice("discretize", "strategy", strategy, STRATEGIES)
    seed = check_int("discretize", "seed", seed, 0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        data = flat(x)
        inner = np.full((data.shape[1], n_bins - 1), np.inf)  # +inf pads features that lost bins
        for feature, edges in enumerate(binning_edges(data, n_bins, strategy, seed)):
            inner[feature, :len(edges)] = edges
        return {"edges": as_float32(inner).reshape(x.shape[1:] + (n_bins - 1,))}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return jnp.sum(x[..., None] >= arrays["edges"], axis=-1).astype(jnp.int32)

    return make_preprocessor("discretize", {"n_bins": n_bins, "strategy": strategy, "seed": seed}, fit_arrays, apply)


@register_preprocessor("vector_quantize")
def vector_quantize(n_clusters: int = 8, seed: int = 0) -> Preprocessor:
    """k-means on whole (flattened) training examples; transform -> (N,) int32 index of the
    nearest centre. `seed` fixes the k-means initialisation."""
    n_clusters = check_int("vector_quantize", "n_clusters", n_clusters, 1)
    seed = check_int("vector_quantize", "seed", seed, 0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        if x.shape[0] < n_clusters:
            raise ValueError(f"preprocessor 'vector_quantize' option 'n_clusters' has value {n_clusters}; "
                             f"allowed: at most the number of training examples ({x.shape[0]})")
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(flat(x))
        return {"centres": as_float32(model.cluster_centers_)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        data, centres = flat(x), arrays["centres"]
        distances = jnp.sum(data**2, axis=1, keepdims=True) - 2 * data @ centres.T + jnp.sum(centres**2, axis=1)
        return jnp.argmin(distances, axis=1).astype(jnp.int32)

    return make_preprocessor("vector_quantize", {"n_clusters": n_clusters, "seed": seed}, fit_arrays, apply)
