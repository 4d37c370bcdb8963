"""Augmentations of sequences `(N, L)` / `(N, L, C)`, and shape-agnostic ones.

Every op is `fn(key, x, strength) -> x`; strength 0 returns `x` bitwise, and each example gets
its own random value. The values of the whole batch come from one draw (`random_offsets`,
`random_factors`: one `(N,)` array from the key) followed by one batched gather or broadcast
op, not from a key split per example and a vmap: on CPU, the per-example splitting and the
vmapped gathers cost more than the train step's convolutions. The axis helpers (`shift_axis`,
`resample_axis`) are reused by the image ops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vhjax import validation
from vhjax.augment.compose import Augmentation, check_rank, check_strength, identity_at_zero, register_augmentation
from vhjax.counter_hash import hashed_randint, hashed_uniform

SHIFT_MODES = ("zero", "edge", "roll")
RESAMPLE_MODES = ("zero", "edge")
MIN_SCALE_FACTOR = 0.1
SEQUENCE_LAYOUT = "sequences (N, L) or (N, L, C)"


def check_mode(mode: str, allowed: tuple[str, ...], op: str) -> None:
    """Raise ValueError unless `mode` is one of `allowed`."""
    validation.check_choice(f"augmentation {op!r} option 'mode'", mode, allowed)


def _axis_shape(ndim: int, axis: int, length: int) -> tuple[int, ...]:
    """Shape that broadcasts a (length,) vector along `axis` of an ndim-array."""
    return tuple(length if dim == axis else 1 for dim in range(ndim))


def _take_along(x: jax.Array, index: jax.Array, axis: int, zero_outside: bool) -> jax.Array:
    """`x` gathered at integer `index` along `axis`; out-of-range indices read the edge, or 0."""
    length = x.shape[axis]
    values = jnp.take(x, jnp.clip(index, 0, length - 1), axis=axis)
    if not zero_outside:
        return values
    inside = ((index >= 0) & (index < length)).reshape(_axis_shape(x.ndim, axis, length))
    return jnp.where(inside, values, jnp.zeros((), x.dtype))


def shift_axis(x: jax.Array, offset: jax.Array, axis: int, mode: str = "zero") -> jax.Array:
    """Move the content of `x` by integer `offset` positions along `axis`: out[t] = x[t - offset].

    `offset` may be traced. Positions that come from outside are 0 (`'zero'`), the nearest edge
    value (`'edge'`), or wrap around (`'roll'`).
    """
    length = x.shape[axis]
    source = jnp.arange(length) - offset
    if mode == "roll":
        return jnp.take(x, jnp.mod(source, length), axis=axis)
    return _take_along(x, source, axis, zero_outside=mode == "zero")


def resample_axis(x: jax.Array, factor: jax.Array, axis: int, mode: str = "zero") -> jax.Array:
    """Stretch `x` along `axis` by `factor` about the centre, with linear interpolation.

    out[t] = x(c + (t - c) / factor), c = (L - 1) / 2: factor > 1 zooms in (features move away from
    the centre), factor < 1 zooms out. Samples beyond the ends are 0 (`'zero'`) or the edge value
    (`'edge'`). `factor` may be traced; applying it to two axes gives bilinear zoom.
    """
    length = x.shape[axis]
    centre = (length - 1) / 2.0
    positions = centre + (jnp.arange(length, dtype=jnp.float32) - centre) / factor
    lower = jnp.floor(positions)
    weight = (positions - lower).reshape(_axis_shape(x.ndim, axis, length))
    lower = lower.astype(jnp.int32)
    zero_outside = mode == "zero"
    below = _take_along(x, lower, axis, zero_outside)
    above = _take_along(x, lower + 1, axis, zero_outside)
    return (below * (1.0 - weight) + above * weight).astype(x.dtype)


def max_offset(strength: jax.Array, length: int) -> jax.Array:
    """round(strength * length) as int32, at least 1 when strength > 0, at most `length`."""
    offset = jnp.round(strength * length).astype(jnp.int32)
    offset = jnp.maximum(offset, (strength > 0).astype(jnp.int32))
    return jnp.minimum(offset, length)


def random_offset(key: jax.Array, limit: jax.Array) -> jax.Array:
    """A uniform integer in [-limit, limit]; `limit` may be traced."""
    return random_offsets(key, (), limit)


def random_factor(key: jax.Array, strength: jax.Array) -> jax.Array:
    """A uniform factor in [1 - strength, 1 + strength], at least MIN_SCALE_FACTOR."""
    return random_factors(key, (), strength)


def random_offsets(key: jax.Array, count: int | tuple[int, ...], limit: jax.Array) -> jax.Array:
    """`count` uniform integers in [-limit, limit] from one counter-hash draw; `limit` may be traced."""
    return hashed_randint(key, count, -limit, limit + 1)


def random_factors(key: jax.Array, shape: tuple[int, ...] | int, strength: jax.Array) -> jax.Array:
    """Uniform factors in [1 - strength, 1 + strength] (at least MIN_SCALE_FACTOR), one draw."""
    spread = 2.0 * hashed_uniform(key, shape) - 1.0
    return jnp.maximum(1.0 + strength * spread, MIN_SCALE_FACTOR)


def _per_row(values: jax.Array, ndim: int) -> jax.Array:
    """(N,) values shaped to broadcast against an (N, ...) batch of rank `ndim`."""
    return values.reshape((-1,) + (1,) * (ndim - 1))


def gather_axis(x: jax.Array, index: jax.Array, zero_outside: bool, axis: int = 1) -> jax.Array:
    """Batched read along `axis`: out[n, ..., t, ...] = x[n, ..., index[n, t], ...], index
    (N, L') of int32. Out-of-range indices read the edge value, or 0 with `zero_outside` (one
    gather for the batch)."""
    length = x.shape[axis]
    shape = (index.shape[0],) + (1,) * (axis - 1) + (index.shape[1],) + (1,) * (x.ndim - axis - 1)
    expand = index.reshape(shape)
    values = jnp.take_along_axis(x, jnp.clip(expand, 0, length - 1), axis=axis)
    if not zero_outside:
        return values
    return jnp.where((expand >= 0) & (expand < length), values, jnp.zeros((), x.dtype))


def gather_time(x: jax.Array, index: jax.Array, zero_outside: bool) -> jax.Array:
    """`gather_axis` along time (axis 1) of sequences (N, L[, C])."""
    return gather_axis(x, index, zero_outside, axis=1)


def shift_batch(x: jax.Array, offsets: jax.Array, mode: str = "zero", axis: int = 1) -> jax.Array:
    """Every example of `x` moved by its own integer offset along `axis` (default 1, time):
    out[n, t] = x[n, t - offsets[n]], filled by `mode` as in `shift_axis`; one gather."""
    length = x.shape[axis]
    source = jnp.arange(length)[None, :] - offsets[:, None]
    if mode == "roll":
        return gather_axis(x, jnp.mod(source, length), zero_outside=False, axis=axis)
    return gather_axis(x, source, zero_outside=mode == "zero", axis=axis)


def resample_batch(x: jax.Array, factors: jax.Array, mode: str = "zero") -> jax.Array:
    """Every sequence of `x` (N, L[, C]) stretched about its centre by its own factor (as
    `resample_axis` along time, linear interpolation); two gathers for the whole batch."""
    length = x.shape[1]
    centre = (length - 1) / 2.0
    positions = centre + (jnp.arange(length, dtype=jnp.float32)[None, :] - centre) / factors[:, None]
    lower = jnp.floor(positions)
    weight = (positions - lower).reshape(positions.shape + (1,) * (x.ndim - 2))
    lower = lower.astype(jnp.int32)
    zero_outside = mode == "zero"
    below = gather_time(x, lower, zero_outside)
    above = gather_time(x, lower + 1, zero_outside)
    return (below * (1.0 - weight) + above * weight).astype(x.dtype)


@register_augmentation("gaussian_noise")
def gaussian_noise() -> Augmentation:
    """x + strength * N(0, 1), any shape. Strength is the noise standard deviation in the data's
    units; natural range [0, 0.5] for standardized inputs."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = check_strength(strength)
        noisy = x + strength * jax.random.normal(key, x.shape, jnp.float32)
        return identity_at_zero(strength, x, noisy)

    return apply


@register_augmentation("brightness", max_strength=1.0)
def brightness() -> Augmentation:
    """x * factor, factor uniform in [1 - strength, 1 + strength] per example, any shape
    (amplitude scaling for sequences, lighting for images), at least 0.1. Natural range [0, 0.5];
    at most 1."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = check_strength(strength)
        scaled = x * _per_row(random_factors(key, x.shape[0], strength), x.ndim)
        return identity_at_zero(strength, x, scaled)

    return apply


@register_augmentation("shift", max_strength=1.0)
def shift(mode: str = "zero") -> Augmentation:
    """Shift each sequence along time by a uniform integer in [-m, m], m = round(strength * L)
    (at least 1 when strength > 0). Strength is the maximum shift as a fraction of the length;
    natural range [0, 0.2]. `mode`: fill with 'zero', repeat the 'edge', or 'roll' around."""
    check_mode(mode, SHIFT_MODES, "shift")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3), "shift", SEQUENCE_LAYOUT)
        strength = check_strength(strength)
        limit = max_offset(strength, x.shape[1])
        shifted = shift_batch(x, random_offsets(key, x.shape[0], limit), mode)
        return identity_at_zero(strength, x, shifted)

    return apply


@register_augmentation("scale", max_strength=0.9)
def scale(mode: str = "zero") -> Augmentation:
    """Stretch each sequence in time about its centre by a factor uniform in
    [1 - strength, 1 + strength] (linear interpolation; factor > 1 stretches). Natural range
    [0, 0.3]; at most 0.9. `mode`: samples beyond the ends are 'zero' or the 'edge' value."""
    check_mode(mode, RESAMPLE_MODES, "scale")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3), "scale", SEQUENCE_LAYOUT)
        strength = check_strength(strength)
        scaled = resample_batch(x, random_factors(key, x.shape[0], strength), mode)
        return identity_at_zero(strength, x, scaled)

    return apply
