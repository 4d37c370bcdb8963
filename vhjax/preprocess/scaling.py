"""Per-feature scaling fitted on training data: min-max, standardization, mean subtraction; and the
stateless per-example (per-series) z-normalisation `per_example_standardize`.

`per` chooses what one statistic covers: 'feature' (every entry of `x.shape[1:]`, e.g. Caffe's
mean image), 'channel' (the last axis, e.g. a mean colour) or 'global' (one number).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, as_float32, check_choice, check_float, make_preprocessor,
                                   register_preprocessor)

PER = ("feature", "channel", "global")


def reduce_axes(x: np.ndarray, per: str) -> tuple[int, ...]:
    """The axes a statistic is taken over for `per`."""
    if per == "feature":
        return (0,)
    if per == "channel":
        return tuple(range(x.ndim - 1))
    return tuple(range(x.ndim))


def _stat(values: np.ndarray, per: str) -> np.ndarray:
    """A statistic reduced with keepdims as float32 of shape x.shape[1:] ('feature'), (C,)
    ('channel') or () ('global'), which broadcasts against x."""
    shaped = {"feature": lambda v: v[0], "channel": lambda v: v.reshape(-1), "global": lambda v: v.reshape(())}[per]
    return as_float32(shaped(values))


@register_preprocessor("minmax")
def minmax(feature_range: Sequence[float] = (0.0, 1.0), per: str = "feature") -> Preprocessor:
    """Map the training minimum and maximum to `feature_range` ((0, 1) or (-1, 1) for pixels);
    constant features map to the lower end. New data may fall outside the range."""
    check_choice("minmax", "per", per, PER)
    bounds = tuple(feature_range) if isinstance(feature_range, (tuple, list)) else ()
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) \
            or not bounds[0] < bounds[1]:
        raise ValueError(f"preprocessor 'minmax' option 'feature_range' has value {feature_range!r}; "
                         "allowed: (low, high) with low < high, e.g. (0, 1) or (-1, 1)")
    low, high = float(bounds[0]), float(bounds[1])

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        axes = reduce_axes(x, per)
        minimum, maximum = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        span = np.where(maximum > minimum, maximum - minimum, 1.0)
        return {"minimum": _stat(minimum, per), "scale": _stat((high - low) / span, per)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return (x - arrays["minimum"]) * arrays["scale"] + low

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return (z - low) / arrays["scale"] + arrays["minimum"]

    return make_preprocessor("minmax", {"feature_range": [low, high], "per": per}, fit_arrays, apply, inverse=inverse)


@register_preprocessor("standardize")
def standardize(per: str = "feature", eps: float = 1e-8) -> Preprocessor:
    """(x - mean) / std with the training mean and standard deviation (features with std <= eps
    are only centred)."""
    check_choice("standardize", "per", per, PER)
    eps = check_float("standardize", "eps", eps, 0.0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        axes = reduce_axes(x, per)
        mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
        return {"mean": _stat(mean, per), "std": _stat(np.where(std > eps, std, 1.0), per)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return (x - arrays["mean"]) / arrays["std"]

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return z * arrays["std"] + arrays["mean"]

    return make_preprocessor("standardize", {"per": per, "eps": eps}, fit_arrays, apply, inverse=inverse)


@register_preprocessor("mean_subtract")
def mean_subtract(per: str = "feature") -> Preprocessor:
    """x - training mean: per='feature' subtracts the mean image, per='channel' the mean value per
    channel (both Caffe styles), per='global' one number."""
    check_choice("mean_subtract", "per", per, PER)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        return {"mean": _stat(x.mean(axis=reduce_axes(x, per), keepdims=True), per)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return x - arrays["mean"]

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return z + arrays["mean"]

    return make_preprocessor("mean_subtract", {"per": per}, fit_arrays, apply, inverse=inverse)


PER_EXAMPLE = ("example", "channel")


def example_axes(ndim: int, per: str) -> tuple[int, ...]:
    """Axes of one example's statistics: all but the batch axis ('example'), or all but the batch and
    the last (channel) axis ('channel'; an (N, L) input is one channel, so the same as 'example')."""
    if per == "channel" and ndim > 2:
        return tuple(range(1, ndim - 1))
    return tuple(range(1, ndim))


@register_preprocessor("per_example_standardize")
def per_example_standardize(per: str = "example", eps: float = 1e-8) -> Preprocessor:
    """Z-normalise every example by its own mean and standard deviation (the UCR/UEA convention for
    time series: each series has mean 0 and std 1). Stateless: `fit` learns nothing, so train and
    test are treated alike. per='example' uses one mean/std per example over all its entries;
    per='channel' one per example and channel (over the time/spatial axes), for (N, L, C) series.
    A constant example (std <= eps) is only centred. Not invertible (the statistics are not kept)."""
    check_choice("per_example_standardize", "per", per, PER_EXAMPLE)
    eps = check_float("per_example_standardize", "eps", eps, 0.0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        return {}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        axes = example_axes(x.ndim, per)
        mean = x.mean(axis=axes, keepdims=True)
        std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True))
        return (x - mean) / jnp.where(std > eps, std, 1.0)

    return make_preprocessor("per_example_standardize", {"per": per, "eps": eps}, fit_arrays, apply)
