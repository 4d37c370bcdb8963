"""More augmentations of sequences `(N, L)` / `(N, L, C)`: smooth time warping and window slicing.

Jitter (additive Gaussian noise) already exists as `gaussian_noise`, magnitude scaling as
`brightness`, stretching about the centre as `scale` (vhjax/augment/sequence.py). Every op is
`fn(key, x, strength) -> x`; strength 0 returns `x` bitwise and the shape never changes. As in
sequence.py, the random values of a batch come from one draw and are applied by batched
gathers (no key split per example).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vhjax import validation
from vhjax.augment.compose import Augmentation, check_rank, check_strength, identity_at_zero, register_augmentation
from vhjax.augment.sequence import MIN_SCALE_FACTOR, SEQUENCE_LAYOUT, gather_time

MIN_WINDOW_FRACTION = 0.1


def interpolate_at(x: jax.Array, positions: jax.Array) -> jax.Array:
    """`x` (L, ...) read at float `positions` (L',) along axis 0, linearly; positions are clipped
    to [0, L - 1]."""
    length = x.shape[0]
    positions = jnp.clip(positions, 0.0, length - 1.0)
    lower = jnp.clip(jnp.floor(positions).astype(jnp.int32), 0, max(length - 2, 0))
    weight = (positions - lower).reshape((-1,) + (1,) * (x.ndim - 1))
    upper = jnp.minimum(lower + 1, length - 1)
    return (x[lower] * (1.0 - weight) + x[upper] * weight).astype(x.dtype)


def interpolate_batch(x: jax.Array, positions: jax.Array) -> jax.Array:
    """`interpolate_at` for a batch: x (N, L, ...) read at its own float positions (N, L') along
    axis 1 (clipped to [0, L - 1]); two gathers for the whole batch."""
    length = x.shape[1]
    positions = jnp.clip(positions, 0.0, length - 1.0)
    lower = jnp.clip(jnp.floor(positions).astype(jnp.int32), 0, max(length - 2, 0))
    weight = (positions - lower).reshape(positions.shape + (1,) * (x.ndim - 2))
    upper = jnp.minimum(lower + 1, length - 1)
    below = gather_time(x, lower, zero_outside=False)
    above = gather_time(x, upper, zero_outside=False)
    return (below * (1.0 - weight) + above * weight).astype(x.dtype)


def warp_positions_from_speeds(speeds: jax.Array, length: int) -> jax.Array:
    """Monotone positions (length,) from 0 to length - 1 for knot speeds (knots,) (see
    `warp_positions`)."""
    knots = speeds.shape[-1]
    steps = jnp.interp(jnp.linspace(0.0, 1.0, length - 1), jnp.linspace(0.0, 1.0, knots), speeds)
    positions = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(steps)])
    return positions * (length - 1) / positions[-1]


def warp_speeds(key: jax.Array, shape: tuple[int, ...], strength: jax.Array) -> jax.Array:
    """Knot speeds uniform in [1 - strength, 1 + strength], at least MIN_SCALE_FACTOR."""
    return jnp.maximum(1.0 + strength * jax.random.uniform(key, shape, minval=-1.0, maxval=1.0), MIN_SCALE_FACTOR)


def warp_positions(key: jax.Array, strength: jax.Array, length: int, knots: int) -> jax.Array:
    """Monotone sampling positions (length,) from 0 to length - 1: the local speed is
    interpolated between `knots` values uniform in [1 - strength, 1 + strength] (at least
    MIN_SCALE_FACTOR), integrated, and rescaled to keep both ends fixed."""
    return warp_positions_from_speeds(warp_speeds(key, (knots,), strength), length)


@register_augmentation("time_warp", max_strength=0.9)
def time_warp(knots: int = 4) -> Augmentation:
    """Warp each sequence's time axis smoothly: the playback speed varies between `knots` random
    values in [1 - strength, 1 + strength]; start and end stay in place, linear interpolation.
    Natural range [0, 0.4]; at most 0.9."""
    validation.check_int("augmentation 'time_warp' option 'knots'", knots, minimum=2)

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3), "time_warp", SEQUENCE_LAYOUT)
        strength = check_strength(strength)
        length = x.shape[1]
        if length < 2:
            return x
        speeds = warp_speeds(key, (x.shape[0], knots), strength)  # one draw for the batch
        positions = jax.vmap(warp_positions_from_speeds, in_axes=(0, None))(speeds, length)
        warped = interpolate_batch(x, positions)
        return identity_at_zero(strength, x, warped)

    return apply


@register_augmentation("window_slice", max_strength=0.9)
def window_slice() -> Augmentation:
    """Cut a window of (1 - strength) of each sequence's length at a uniform random start and
    stretch it back to the full length, linear interpolation. Natural range [0, 0.2]; at most
    0.9."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3), "window_slice", SEQUENCE_LAYOUT)
        strength = check_strength(strength)
        length = x.shape[1]
        fraction = jnp.maximum(1.0 - strength, MIN_WINDOW_FRACTION)
        start = (1.0 - fraction) * (length - 1) * jax.random.uniform(key, (x.shape[0], 1))
        positions = start + fraction * jnp.arange(length, dtype=jnp.float32)[None, :]
        return identity_at_zero(strength, x, interpolate_batch(x, positions))

    return apply
