"""Weight initializers by name, after Caffe's list (constant, gaussian, uniform, xavier, msra, bilinear).

`get_initializer(name, **kwargs)` returns a `jax.nn.initializers.Initializer`
(`init(key, shape, dtype) -> array`) for any flax layer's `kernel_init`/`bias_init`. Fan-in and
fan-out follow flax's kernel layout: the last axis is the output, the one before it the input,
the leading axes are the receptive field (conv kernels `(*window, in, out)`).

  constant        value=0.0                         every entry `value`
  normal          mean=0.0, stddev=0.01             Gaussian (alias 'gaussian')
  uniform         minval=-0.05, maxval=0.05         U[minval, maxval)
  xavier_uniform  gain=1.0                          Var = gain^2 * 2 / (fan_in + fan_out) (alias 'glorot_uniform')
  xavier_normal   gain=1.0                          same variance, truncated normal (alias 'glorot_normal')
  he_uniform      gain=1.0                          Var = gain^2 * 2 / fan_in (alias 'kaiming_uniform')
  he_normal       gain=1.0                          same, truncated normal (aliases 'kaiming_normal', 'msra')
  orthogonal      scale=1.0                         scaled (semi-)orthogonal matrix over (fan, out)
  bilinear        (none)                            bilinear-interpolation kernel for transposed-conv upsampling
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers as jinit

from vhjax import validation

Initializer = Callable[..., jax.Array]


def _constant(value: float) -> Initializer:
    return jinit.constant(value)


def _normal(mean: float, stddev: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)
    return init


def _uniform(minval: float, maxval: float) -> Initializer:
    if not maxval > minval:
        raise ValueError(f"initializer 'uniform' field 'maxval' has value {maxval!r}; allowed: a number > "
                         f"minval = {minval!r}")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    return init


def _scaled(scale: float, mode: str, distribution: str) -> Callable[[float], Initializer]:
    return lambda gain: jinit.variance_scaling(scale * gain ** 2, mode, distribution)


def bilinear_kernel(shape: tuple[int, ...]) -> np.ndarray:
    """`(*window, in, out)` kernel: channel i -> channel i gets the separable bilinear filter
    `prod_axes (1 - |x - c| / f)`, f = ceil(k / 2), c = (k - 1) / 2; other channel pairs are 0.

    Used as the kernel of a stride-f transposed convolution with window 2f (or 2f - 1), it
    upsamples each channel by linear interpolation (FCN, Long et al. 2015; Caffe 'bilinear').
    """
    if len(shape) < 3:
        raise ValueError(f"initializer 'bilinear' needs a conv kernel shape (*window, in, out); got {shape}")
    window, (fan_in, fan_out) = shape[:-2], shape[-2:]
    filt = np.ones((), np.float64)
    for k in window:
        factor, center = math.ceil(k / 2), (k - 1) / 2
        filt = np.multiply.outer(filt, 1.0 - np.abs(np.arange(k) - center) / factor)
    kernel = np.zeros(shape, np.float64)
    for channel in range(min(fan_in, fan_out)):
        kernel[..., channel, channel] = filt
    return kernel


def _bilinear() -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.asarray(bilinear_kernel(tuple(shape)), dtype)
    return init


# name -> (builder, default keyword arguments)
_TABLE: dict[str, tuple[Callable[..., Initializer], dict[str, Any]]] = {
    "constant": (_constant, {"value": 0.0}),
    "normal": (_normal, {"mean": 0.0, "stddev": 0.01}),
    "uniform": (_uniform, {"minval": -0.05, "maxval": 0.05}),
    "xavier_uniform": (_scaled(1.0, "fan_avg", "uniform"), {"gain": 1.0}),
    "xavier_normal": (_scaled(1.0, "fan_avg", "truncated_normal"), {"gain": 1.0}),
    "he_uniform": (_scaled(2.0, "fan_in", "uniform"), {"gain": 1.0}),
    "he_normal": (_scaled(2.0, "fan_in", "truncated_normal"), {"gain": 1.0}),
    "orthogonal": (lambda scale: jinit.orthogonal(scale), {"scale": 1.0}),
    "bilinear": (_bilinear, {}),
}
ALIASES = {"gaussian": "normal", "glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal",
           "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal", "msra": "he_normal"}
INITIALIZER_NAMES: tuple[str, ...] = tuple(sorted([*_TABLE, *ALIASES]))


def get_initializer(name: str, **kwargs: Any) -> Initializer:
    """The initializer called `name`, configured by `kwargs` (see the module docstring).

    Unknown names and unknown or non-numeric keyword arguments raise ValueError naming them.
    """
    if name not in INITIALIZER_NAMES:
        raise validation.unknown_name("initializer", name, INITIALIZER_NAMES)
    builder, defaults = _TABLE[ALIASES.get(name, name)]
    for field, value in kwargs.items():
        if field not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"initializer {name!r} got unknown field {field!r} = {value!r}; allowed fields: {allowed}")
        validation.check_number(f"initializer {name!r} field {field!r}", value)
    return builder(**{**defaults, **kwargs})
