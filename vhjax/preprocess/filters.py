"""Filters for sequences `(N, L)` / `(N, L, C)` along time (axis 1): low-pass, high-pass and
denoising. They learn nothing (fit only checks the layout), but share the preprocessor interface
so a pipeline can hold them next to fitted steps.

Low/high-pass: method 'fft' keeps the frequency bins below/above `cutoff` (a fraction of the
Nyquist frequency); method 'moving_average' smooths with a centred window (high-pass = x minus
the smoothed x). Denoising: a running median, a Savitzky-Golay filter (coefficients from SciPy),
or a moving average. Window edges repeat the first/last sample.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, check_choice, check_float, check_int, make_preprocessor,
                                   register_preprocessor)

PASS_METHODS = ("fft", "moving_average")
DENOISE_METHODS = ("median", "savgol", "moving_average")


def _check_sequences(name: str, x: np.ndarray) -> None:
    if x.ndim not in (2, 3):
        raise ValueError(f"preprocessor {name!r} got x of shape {x.shape}; allowed: sequences (N, L) or (N, L, C)")


def _no_arrays(name: str) -> Callable[[np.ndarray, None], Arrays]:
    """A fit that only checks the sequence layout and learns nothing."""
    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        _check_sequences(name, x)
        return {}

    return fit_arrays


def windows(x: jax.Array, window: int) -> jax.Array:
    """(window, N, L, ...) views of x shifted by -w//2 .. +w//2 along time, edges repeated."""
    half = window // 2
    padded = jnp.pad(x, [(0, 0), (half, half)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    length = x.shape[1]
    return jnp.stack([padded[:, offset:offset + length] for offset in range(window)])


def weighted_window(x: jax.Array, weights: np.ndarray) -> jax.Array:
    """sum_j weights[j] * x[t - w//2 + j] along time (a centred correlation)."""
    stacked = windows(x, len(weights))
    return jnp.tensordot(jnp.asarray(weights, x.dtype), stacked, axes=1)


def moving_average(x: jax.Array, window: int) -> jax.Array:
    return weighted_window(x, np.full(window, 1.0 / window))


def fft_filter(x: jax.Array, cutoff: float, keep_low: bool) -> jax.Array:
    """Zero the rFFT bins above (keep_low) or at and below (not keep_low) cutoff * Nyquist."""
    length = x.shape[1]
    frequencies = np.fft.rfftfreq(length) / 0.5  # as a fraction of the Nyquist frequency
    keep = frequencies <= cutoff if keep_low else frequencies > cutoff
    spectrum = jnp.fft.rfft(x, axis=1)
    spectrum = spectrum * jnp.asarray(keep).reshape((1, -1) + (1,) * (x.ndim - 2))
    return jnp.fft.irfft(spectrum, n=length, axis=1).astype(x.dtype)


def _pass_filter(name: str, cutoff: float, method: str, window: int, keep_low: bool) -> Preprocessor:
    cutoff = check_float(name, "cutoff", cutoff, 0.0, 1.0)
    check_choice(name, "method", method, PASS_METHODS)
    window = check_int(name, "window", window, 1, odd=True)

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if method == "fft":
            return fft_filter(x, cutoff, keep_low)
        smooth = moving_average(x, window)
        return smooth if keep_low else x - smooth

    return make_preprocessor(name, {"cutoff": cutoff, "method": method, "window": window}, _no_arrays(name), apply)


@register_preprocessor("lowpass")
def lowpass(cutoff: float = 0.2, method: str = "fft", window: int = 5) -> Preprocessor:
    """Keep slow variation: frequencies up to `cutoff` x Nyquist ('fft'), or a centred moving
    average of odd `window` samples ('moving_average')."""
    return _pass_filter("lowpass", cutoff, method, window, keep_low=True)


@register_preprocessor("highpass")
def highpass(cutoff: float = 0.2, method: str = "fft", window: int = 5) -> Preprocessor:
    """Keep fast variation (removes offsets and drift): frequencies above `cutoff` x Nyquist
    ('fft'; the mean goes), or x minus its moving average ('moving_average')."""
    return _pass_filter("highpass", cutoff, method, window, keep_low=False)


@register_preprocessor("denoise")
def denoise(method: str = "median", window: int = 5, polyorder: int = 2) -> Preprocessor:
    """Smooth noise away with a centred odd `window`: 'median' (robust to spikes), 'savgol'
    (a local polynomial of degree `polyorder`, keeps peaks better), or 'moving_average'."""
    check_choice("denoise", "method", method, DENOISE_METHODS)
    window = check_int("denoise", "window", window, 1, odd=True)
    polyorder = check_int("denoise", "polyorder", polyorder, 0)
    if method == "savgol" and polyorder >= window:
        raise ValueError(
            f"preprocessor 'denoise' option 'polyorder' has value {polyorder}; allowed: less than window ({window})")
    weights = None
    if method == "savgol":
        from scipy.signal import savgol_coeffs  # imported when used: scipy.signal is slow to import

        weights = savgol_coeffs(window, polyorder, use="dot")

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if method == "median":
            return jnp.median(windows(x, window), axis=0)
        if method == "savgol":
            return weighted_window(x, weights)
        return moving_average(x, window)

    return make_preprocessor("denoise", {"method": method, "window": window, "polyorder": polyorder},
                             _no_arrays("denoise"), apply)
