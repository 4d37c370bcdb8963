"""Batched sequence augmentations (one draw for the whole batch, one batched gather) equal the
per-example definitions (`shift_axis`, `resample_axis`, `interpolate_at`) for the same draw, under
jit and under a vmap over population members; their draws have the intended distribution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.augment import get_augmentation, with_probability
from vhjax.augment.sequence import (max_offset, random_factors, random_offsets, resample_axis,
                                    shift_axis)
from vhjax.augment.sequence_extra import (MIN_WINDOW_FRACTION, interpolate_at, warp_positions_from_speeds,
                                          warp_speeds)
from vhjax.counter_hash import hashed_bernoulli

KEY = jax.random.key(7)
X3 = jax.random.normal(jax.random.key(1), (9, 20, 2))
X2 = jax.random.normal(jax.random.key(2), (9, 20))


def per_row(fn, x, values):
    return jnp.stack([fn(x[i], values[i]) for i in range(x.shape[0])])


@pytest.mark.parametrize("x", [X2, X3], ids=["2d", "3d"])
@pytest.mark.parametrize("mode", ["zero", "edge", "roll"])
def test_shift_equals_per_example_shift_axis(x, mode):
    strength = 0.2
    out = jax.jit(get_augmentation("shift", mode=mode))(KEY, x, jnp.float32(strength))
    offsets = random_offsets(KEY, x.shape[0], max_offset(jnp.float32(strength), x.shape[1]))
    assert len(set(np.asarray(offsets).tolist())) > 2  # the batch really gets different shifts
    expected = per_row(lambda xi, o: shift_axis(xi, o, 0, mode), x, offsets)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("x", [X2, X3], ids=["2d", "3d"])
@pytest.mark.parametrize("mode", ["zero", "edge"])
def test_scale_equals_per_example_resample_axis(x, mode):
    out = jax.jit(get_augmentation("scale", mode=mode))(KEY, x, jnp.float32(0.3))
    factors = random_factors(KEY, x.shape[0], jnp.float32(0.3))
    expected = per_row(lambda xi, f: resample_axis(xi, f, 0, mode), x, factors)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-5)  # jit may fuse differently


def test_noise_and_brightness_are_one_draw():
    strength = jnp.float32(0.25)
    noisy = get_augmentation("gaussian_noise")(KEY, X3, strength)
    np.testing.assert_array_equal(noisy, X3 + strength * jax.random.normal(KEY, X3.shape))
    bright = get_augmentation("brightness")(KEY, X3, strength)
    np.testing.assert_array_equal(bright, X3 * random_factors(KEY, X3.shape[0], strength)[:, None, None])


def test_window_slice_and_time_warp_equal_per_example_interpolation():
    strength, length = jnp.float32(0.3), X3.shape[1]
    sliced = get_augmentation("window_slice")(KEY, X3, strength)
    fraction = max(1.0 - 0.3, MIN_WINDOW_FRACTION)
    starts = (1.0 - fraction) * (length - 1) * jax.random.uniform(KEY, (X3.shape[0], 1))
    expected = per_row(lambda xi, s: interpolate_at(xi, s + fraction * jnp.arange(length, dtype=jnp.float32)),
                       X3, starts[:, 0])
    np.testing.assert_allclose(sliced, expected, rtol=1e-5, atol=1e-5)
    warped = get_augmentation("time_warp", knots=4)(KEY, X3, strength)
    speeds = warp_speeds(KEY, (X3.shape[0], 4), strength)
    expected = per_row(lambda xi, s: interpolate_at(xi, warp_positions_from_speeds(s, length)), X3, speeds)
    np.testing.assert_allclose(warped, expected, rtol=1e-5, atol=1e-5)


def test_with_probability_selects_whole_examples_with_one_draw():
    shift = with_probability(get_augmentation("shift", mode="roll"))
    out = np.asarray(shift(KEY, X2, jnp.float32(0.2), jnp.float32(0.5)))
    augment_key, mask_key = jax.random.split(KEY)
    chosen = np.asarray(hashed_bernoulli(mask_key, 0.5, X2.shape[0]))
    shifted = np.asarray(get_augmentation("shift", mode="roll")(augment_key, X2, jnp.float32(0.2)))
    np.testing.assert_array_equal(out, np.where(chosen[:, None], shifted, X2))
    assert 0 < chosen.sum() < X2.shape[0]


@pytest.mark.parametrize("name", ["shift", "scale", "gaussian_noise", "brightness", "time_warp", "window_slice"])
def test_vmap_over_members_equals_each_member_alone(name):
    op = get_augmentation(name)
    keys = jax.random.split(KEY, 3)
    strengths = jnp.array([0.0, 0.1, 0.3], jnp.float32)
    together = jax.jit(jax.vmap(op, in_axes=(0, None, 0)))(keys, X3, strengths)
    for member in range(3):
        np.testing.assert_allclose(together[member], op(keys[member], X3, strengths[member]), rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(together[0], X3)


def test_shift_offsets_are_uniform_over_the_range():
    limit = 3
    offsets = np.asarray(random_offsets(KEY, 14000, jnp.int32(limit)))
    counts = np.bincount(offsets + limit, minlength=2 * limit + 1)
    assert offsets.min() == -limit and offsets.max() == limit
    np.testing.assert_allclose(counts / offsets.size, 1 / (2 * limit + 1), atol=0.01)  # 2000 per value


def test_scale_factors_are_uniform_within_strength():
    factors = np.asarray(random_factors(KEY, 20000, jnp.float32(0.3)))
    assert factors.min() >= 0.7 and factors.max() <= 1.3
    assert abs(factors.mean() - 1.0) < 0.005 and abs(factors.std() - 0.3 / np.sqrt(3)) < 0.005


@pytest.mark.parametrize("mode", ["zero", "edge", "roll"])
def test_translate_equals_per_example_shifts_of_rows_and_columns(mode):
    images = jax.random.normal(jax.random.key(3), (7, 8, 6, 2))
    strength = jnp.float32(0.25)
    out = jax.jit(get_augmentation("translate", mode=mode))(KEY, images, strength)
    row_key, col_key = jax.random.split(KEY)
    rows = random_offsets(row_key, 7, max_offset(strength, 8))
    cols = random_offsets(col_key, 7, max_offset(strength, 6))
    expected = jnp.stack([shift_axis(shift_axis(images[i], rows[i], 0, mode), cols[i], 1, mode) for i in range(7)])
    np.testing.assert_array_equal(out, expected)
