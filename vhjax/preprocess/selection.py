"""Feature selection fitted with labels: keep the `k` features (of flattened x) that score
highest by chi-square, information gain or mutual information. transform -> (N, k), columns in
their original order. Scores come from scikit-learn.

- chi2: the chi-square statistic of feature counts per class (features must be >= 0).
- info_gain: H(y) - H(y | bin(x)) with `n_bins` equal-width bins fitted on the training data,
  i.e. the mutual information of the discretized feature (sklearn.metrics.mutual_info_score).
- mutual_info: mutual information of the continuous feature with y, estimated from k nearest
  neighbours (sklearn.feature_selection.mutual_info_classif; `seed` fixes its jitter).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, as_float32, check_int, flat, make_preprocessor,
                                   register_preprocessor)

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def information_gain(x: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """Information gain (nats) of each column of x (N, D) about y, after equal-width binning."""
    from sklearn.metrics import mutual_info_score  # imported when used: scikit-learn is slow to import

    scores = []
    for column in x.T:
        edges = np.linspace(column.min(), column.max(), n_bins + 1)[1:-1]
        scores.append(mutual_info_score(y, np.searchsorted(edges, column, side="right")))
    return np.asarray(scores)


def _mutual_info_classif(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.feature_selection import mutual_info_classif

    return mutual_info_classif(x, y, random_state=seed)


def _selector(name: str, k: int, options: dict, score: Scorer) -> Preprocessor:
    k = check_int(name, "k", k, 1)

    def fit_arrays(x: np.ndarray, y: np.ndarray) -> Arrays:
        data = flat(x)
        if k > data.shape[1]:
            raise ValueError(
                f"preprocessor {name!r} option 'k' has value {k}; allowed: at most the {data.shape[1]} features")
        scores = np.nan_to_num(np.asarray(score(data, y), dtype=np.float64), nan=0.0)
        chosen = np.sort(np.argsort(-scores, kind="stable")[:k])
        return {"indices": chosen.astype(np.int32), "scores": as_float32(scores)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return flat(x)[:, arrays["indices"]]

    return make_preprocessor(name, {"k": k, **options}, fit_arrays, apply, needs_labels=True)


@register_preprocessor("select_chi2")
def select_chi2(k: int = 10) -> Preprocessor:
    """Keep the k features with the highest chi-square score (non-negative features only)."""

    def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if np.any(x < 0):
            raise ValueError("preprocessor 'select_chi2' got x with negative values; allowed: x >= 0 "
                             "(counts or min-max scaled features)")
        from sklearn.feature_selection import chi2  # imported when used: scikit-learn is slow to import

        return chi2(x, y)[0]

    return _selector("select_chi2", k, {}, score)


@register_preprocessor("select_info_gain")
def select_info_gain(k: int = 10, n_bins: int = 10) -> Preprocessor:
    """Keep the k features with the highest information gain about the class (equal-width bins)."""
    n_bins = check_int("select_info_gain", "n_bins", n_bins, 2)
    return _selector("select_info_gain", k, {"n_bins": n_bins}, lambda x, y: information_gain(x, y, n_bins))


@register_preprocessor("select_mutual_info")
def select_mutual_info(k: int = 10, seed: int = 0) -> Preprocessor:
    """Keep the k features with the highest (nearest-neighbour estimated) mutual information."""
    seed = check_int("select_mutual_info", "seed", seed, 0)
    return _selector("select_mutual_info", k, {"seed": seed},
                     lambda x, y: _mutual_info_classif(x, y, seed))
