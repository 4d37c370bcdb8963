"""Max and average pooling as elementwise reductions over strided slices: cheap to differentiate.

XLA differentiates `reduce_window` max pooling with `select_and_scatter`, which the CPU backend
runs slowly, and more slowly still under `vmap` over population members (measured: a 2x2 max pool
of a (16 members, 100, 8, 8, 16) batch, forward and backward, 28.7 ms against 5.3 ms as slices;
a 3x3 / 2 padded one 25.3 ms against 5.2 ms; 3x3 / 1 average pooling 6.7 ms against 3.5 ms).
Here a pool of window k is the elementwise maximum (or sum) of the k^d strided slices of the padded
input: forward results equal flax's `nn.max_pool` / `nn.avg_pool`; gradients too, except that
where several inputs of a window tie for the maximum the slices share the gradient equally where
`select_and_scatter` gives it to one.

`impl` follows the models' `conv_impl` field: 'patch' pools by slices, 'xla' calls flax (XLA's
`reduce_window`), 'auto' picks 'patch' on CPU and 'xla' on GPU/TPU (`resolve_conv_impl`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax.models.patch_conv import resolve_conv_impl, resolve_padding, window_slices

Padding = str | Sequence[tuple[int, int]]


def max_pool(impl: str, x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID") -> jax.Array:
    """Max pooling of `x` (N, *spatial, C) as flax's `nn.max_pool`; padded positions never win."""
    strides = tuple(strides or (1,) * len(window))
    if resolve_conv_impl(impl) == "xla":
        return nn.max_pool(x, tuple(window), strides, padding=padding)
    padded = _pad(x, window, strides, padding, -jnp.inf)
    return _reduce_slices(padded, window, strides, jnp.maximum)


def avg_pool(impl: str, x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True) -> jax.Array:
    """Average pooling of `x` (N, *spatial, C) as flax's `nn.avg_pool`: the window's sum over its
    size, or with `count_include_pad=False` over the number of real (not padded) inputs in it."""
    strides = tuple(strides or (1,) * len(window))
    if resolve_conv_impl(impl) == "xla":
        return nn.avg_pool(x, tuple(window), strides, padding=padding, count_include_pad=count_include_pad)
    total = _reduce_slices(_pad(x, window, strides, padding, 0.0), window, strides, jnp.add)
    if count_include_pad:
        return total / int(np.prod(window))
    ones = np.ones((1,) + x.shape[1:-1] + (1,), np.float32)
    counts = _reduce_slices(_pad(ones, window, strides, padding, 0.0), window, strides, np.add)
    return total / jnp.asarray(counts, x.dtype)


def _pad(x, window: Sequence[int], strides: Sequence[int], padding: Padding, value: float):
    spatial = x.shape[1:-1]
    if len(window) != len(spatial):
        raise ValueError(f"pooling window {tuple(window)} has {len(window)} dimensions; the input "
                         f"{tuple(x.shape)} has {len(spatial)} spatial ones")
    pads = resolve_padding(padding, spatial, window, strides)
    if not any(low or high for low, high in pads):
        return x
    widths = [(0, 0), *pads, (0, 0)]
    return (np.pad if isinstance(x, np.ndarray) else jnp.pad)(x, widths, constant_values=value)


def _reduce_slices(x, window: Sequence[int], strides: Sequence[int], combine):
    """combine(...) over the window's strided slices of the padded `x` (`window_slices`)."""
    return functools.reduce(combine, window_slices(x, window, strides))
