"""Outlier detection fitted on training data; `transform` returns a keep-mask, not new data.

`mask = pre.transform(fitted, x)` is a boolean `(N,)` array, True for examples whose every
feature lies inside the fitted limits; keep rows with `x[mask]`, `y[mask]` (host side).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, as_float32, check_choice, check_float, flat,
                                   make_preprocessor, register_preprocessor)

DEFAULT_THRESHOLD = {"zscore": 3.0, "iqr": 1.5}


@register_preprocessor("outliers")
def outliers(method: str = "zscore", threshold: float | None = None) -> Preprocessor:
    """Per-feature limits from the training data: 'zscore' keeps |x - mean| <= threshold * std
    (default 3), 'iqr' keeps [Q1 - threshold * IQR, Q3 + threshold * IQR] (default 1.5,
    Tukey's fences). transform -> bool (N,) mask of examples inside all limits."""
    check_choice("outliers", "method", method, tuple(DEFAULT_THRESHOLD))
    threshold = DEFAULT_THRESHOLD[method] if threshold is None else check_float(
        "outliers", "threshold", threshold, 0.0, open_low=True)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        data = flat(x)
        if method == "zscore":
            mean, std = data.mean(axis=0), data.std(axis=0)
            low, high = mean - threshold * std, mean + threshold * std
        else:
            first, third = np.percentile(data, [25.0, 75.0], axis=0)
            spread = third - first
            low, high = first - threshold * spread, third + threshold * spread
        return {"low": as_float32(low), "high": as_float32(high)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        data = flat(x)
        return jnp.all((data >= arrays["low"]) & (data <= arrays["high"]), axis=1)

    return make_preprocessor("outliers", {"method": method, "threshold": threshold}, fit_arrays, apply)
