"""Augmentations: bitwise identity at strength 0, change above it, hand-checked geometry and
statistics, jit with traced strength, vmap over per-member strengths, composition and configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import augment
from vhjax.augment import chain, get_augmentation, pipeline_from_config, with_probability

KEY = jax.random.key(0)
SEQUENCE_OPS = ("gaussian_noise", "brightness", "shift", "scale", "hflip")
IMAGE_OPS = ("gaussian_noise", "brightness", "translate", "image_scale", "rotate", "hflip", "vflip")


def _with_signed_zero(x: jax.Array) -> jax.Array:
    """Random data with a -0.0 in it, so that `x + 0.0` would not pass a bitwise check."""
    return x.at[(0,) * x.ndim].set(-0.0)


SEQUENCES_3D = _with_signed_zero(jax.random.normal(jax.random.key(1), (6, 20, 2)))
SEQUENCES_2D = _with_signed_zero(jax.random.normal(jax.random.key(2), (6, 20)))
IMAGES = _with_signed_zero(jax.random.normal(jax.random.key(3), (4, 8, 8, 2)))
CASES = ([(name, "seq3d", SEQUENCES_3D) for name in SEQUENCE_OPS]
         + [(name, "seq2d", SEQUENCES_2D) for name in SEQUENCE_OPS]
         + [(name, "image", IMAGES) for name in IMAGE_OPS])
CASE_IDS = [f"{name}-{layout}" for name, layout, _ in CASES]
POSITIVE = {"hflip": 1.0, "vflip": 1.0}


def bitwise_equal(a: jax.Array, b: jax.Array) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_every_registered_op_is_covered():
    assert {*SEQUENCE_OPS, *IMAGE_OPS} <= set(augment.AUGMENTATIONS.names())  # later ops: test_augment_extra


@pytest.mark.parametrize("name, layout, x", CASES, ids=CASE_IDS)
def test_strength_zero_is_bitwise_identity_eager_and_jit(name, layout, x):
    op = get_augmentation(name)
    assert bitwise_equal(op(KEY, x, 0.0), x)
    assert bitwise_equal(jax.jit(op)(KEY, x, jnp.float32(0.0)), x)


@pytest.mark.parametrize("name, layout, x", CASES, ids=CASE_IDS)
def test_positive_strength_changes_batch_under_jit(name, layout, x):
    out = jax.jit(get_augmentation(name))(KEY, x, jnp.float32(POSITIVE.get(name, 0.3)))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not np.allclose(out, x)


@pytest.mark.parametrize("name, layout, x", CASES, ids=CASE_IDS)
def test_vmap_over_member_strengths(name, layout, x):
    top = POSITIVE.get(name, 0.3)
    strengths = jnp.array([0.0, top, top / 2], jnp.float32)
    per_member = jax.jit(jax.vmap(get_augmentation(name), in_axes=(None, None, 0)))(KEY, x, strengths)
    assert per_member.shape == (3, *x.shape)
    assert bitwise_equal(per_member[0], x)
    assert not np.allclose(per_member[1], x)
    if name not in POSITIVE:  # flips at strength 0.5 may leave a small batch untouched
        assert not np.allclose(per_member[2], x)


def test_small_strength_still_changes_shift_and_translate():
    assert not np.allclose(get_augmentation("shift")(KEY, SEQUENCES_3D, 0.01), SEQUENCES_3D)
    assert not np.allclose(get_augmentation("translate")(KEY, IMAGES, 0.01), IMAGES)


# --- statistics and geometry --------------------------------------------------------------------


def test_noise_std_matches_strength_per_member():
    zeros = jnp.zeros((64, 50))
    noisy = jax.vmap(get_augmentation("gaussian_noise"), in_axes=(None, None, 0))(KEY, zeros, jnp.array([0.1, 0.5]))
    np.testing.assert_allclose(np.std(noisy, axis=(1, 2)), [0.1, 0.5], rtol=0.05)
    assert abs(float(jnp.mean(noisy[1]))) < 0.02
    assert not np.allclose(noisy[1, 0], noisy[1, 1])  # examples get different draws


def test_brightness_gain_is_one_per_example_within_range():
    out = np.asarray(get_augmentation("brightness")(KEY, jnp.ones((200, 5, 3)), 0.5))
    gains = out[:, 0, 0]
    np.testing.assert_array_equal(out, np.broadcast_to(gains[:, None, None], out.shape))
    assert gains.min() >= 0.5 and gains.max() <= 1.5
    assert gains.min() < 0.7 and gains.max() > 1.3


@pytest.mark.parametrize("x, axis", [(SEQUENCES_2D, 1), (SEQUENCES_3D, 1), (IMAGES, 2)])
def test_hflip_at_strength_one_is_flip(x, axis):
    assert bitwise_equal(get_augmentation("hflip")(KEY, x, 1.0), jnp.flip(x, axis))


def test_vflip_at_strength_one_flips_height():
    assert bitwise_equal(get_augmentation("vflip")(KEY, IMAGES, 1.0), jnp.flip(IMAGES, 1))


def _flipped_fraction(out: jax.Array, x: jax.Array) -> float:
    flipped = np.all(np.asarray(out) == np.flip(np.asarray(x), 1), axis=1)
    kept = np.all(np.asarray(out) == np.asarray(x), axis=1)
    assert np.all(flipped ^ kept)  # every example is either flipped or untouched
    return float(flipped.mean())


def test_hflip_strength_is_flip_probability():
    ramps = jnp.tile(jnp.arange(10.0), (400, 1))
    assert 0.4 < _flipped_fraction(get_augmentation("hflip")(KEY, ramps, 0.5), ramps) < 0.6
    assert 0.15 < _flipped_fraction(get_augmentation("hflip")(KEY, ramps, 0.2), ramps) < 0.25


def test_shift_moves_spike_within_range_and_reaches_both_ends():
    length, centre, strength = 41, 20, 0.2  # max shift round(0.2 * 41) = 8
    spikes = jnp.zeros((300, length)).at[:, centre].set(1.0)
    out = np.asarray(get_augmentation("shift")(KEY, spikes, strength))
    np.testing.assert_array_equal(out.sum(axis=1), 1.0)
    np.testing.assert_array_equal(out.max(axis=1), 1.0)
    assert set(out.argmax(axis=1) - centre) == set(range(-8, 9))


def _expected_shift(row: np.ndarray, offset: int, mode: str) -> np.ndarray:
    """out[t] = row[t - offset], filled by the mode's rule (written out independently)."""
    source = np.arange(row.size) - offset
    if mode == "roll":
        return np.roll(row, offset)
    clipped = row[np.clip(source, 0, row.size - 1)]
    if mode == "edge":
        return clipped
    return np.where((source >= 0) & (source < row.size), clipped, 0.0)


@pytest.mark.parametrize("mode", ["zero", "edge", "roll"])
def test_shift_modes_match_definition(mode):
    length = 12
    ramps = jnp.tile(jnp.arange(1.0, length + 1), (50, 1))
    out = np.asarray(get_augmentation("shift", mode=mode)(KEY, ramps, 0.25))  # max shift 3
    offsets = []
    for row in out:
        matches = [s for s in range(-3, 4) if np.array_equal(row, _expected_shift(np.asarray(ramps[0]), s, mode))]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert min(offsets) < 0 < max(offsets)


def test_shift_at_full_strength_stays_finite_and_bounded():
    spikes = jnp.zeros((100, 7)).at[:, 3].set(1.0)
    out = np.asarray(get_augmentation("shift")(KEY, spikes, 1.0))
    assert np.all(out.sum(axis=1) <= 1.0) and np.all(out >= 0.0)
    assert np.any(out.sum(axis=1) == 0.0)  # some spikes shifted out of the window, not wrapped


def test_resample_axis_matches_linear_interpolation():
    length, centre = 41, 20.0
    ramp = jnp.arange(length, dtype=jnp.float32)
    np.testing.assert_allclose(augment.resample_axis(ramp, 2.0, 0), centre + (np.arange(length) - centre) / 2, atol=1e-5)
    spike = jnp.zeros(length).at[26].set(1.0)
    stretched = augment.resample_axis(spike, 1.5, 0)  # 20 + 6 * 1.5 = 29
    assert int(jnp.argmax(stretched)) == 29 and float(stretched[29]) == pytest.approx(1.0)
    squeezed = augment.resample_axis(spike, 0.5, 0)  # 20 + 6 * 0.5 = 23
    assert int(jnp.argmax(squeezed)) == 23


def test_sequence_scale_keeps_peak_within_factor_range():
    spikes = jnp.zeros((200, 41, 1)).at[:, 26, 0].set(1.0)  # 6 from the centre
    peaks = np.asarray(jnp.argmax(get_augmentation("scale")(KEY, spikes, 0.5)[..., 0], axis=1))
    assert peaks.min() >= 20 + 6 * 0.5 - 1 and peaks.max() <= 20 + 6 * 1.5 + 1
    assert peaks.min() < 25 and peaks.max() > 27  # both squeezed and stretched


def test_zoom_image_is_bilinear_about_centre():
    rows, cols = np.meshgrid(np.arange(9.0), np.arange(9.0), indexing="ij")
    ramp = jnp.asarray(rows + 10 * cols, jnp.float32)[..., None]
    expected = (4 + (rows - 4) / 2) + 10 * (4 + (cols - 4) / 2)
    np.testing.assert_allclose(augment.zoom_image(ramp, 2.0)[..., 0], expected, atol=1e-4)
    spike = jnp.zeros((9, 9, 1)).at[5, 6, 0].set(1.0)
    zoomed = augment.zoom_image(spike, 2.0)[..., 0]
    assert np.unravel_index(int(jnp.argmax(zoomed)), (9, 9)) == (6, 8)


def test_translate_moves_pixel_within_range():
    images = jnp.zeros((200, 9, 9, 1)).at[:, 4, 4, 0].set(1.0)
    out = np.asarray(get_augmentation("translate")(KEY, images, 0.25))[..., 0]  # max 2 pixels
    np.testing.assert_array_equal(out.reshape(200, -1).sum(axis=1), 1.0)
    rows, cols = np.unravel_index(out.reshape(200, -1).argmax(axis=1), (9, 9))
    assert set(rows - 4) == set(range(-2, 3)) and set(cols - 4) == set(range(-2, 3))


def test_rotate_image_quarter_turn_is_rot90():
    image = jax.random.normal(KEY, (5, 5, 2))
    np.testing.assert_allclose(augment.rotate_image(image, jnp.pi / 2), jnp.rot90(image), atol=1e-5)


def test_rotate_keeps_centre_radius_and_angle_range():
    images = jnp.zeros((100, 9, 9, 2)).at[:, 4, 4, 0].set(1.0).at[:, 4, 7, 1].set(1.0)
    out = np.asarray(get_augmentation("rotate")(KEY, images, 0.5))
    np.testing.assert_allclose(out[:, 4, 4, 0], 1.0, atol=1e-5)  # the centre does not move
    rows, cols = np.mgrid[:9, :9]
    radius = np.hypot(rows - 4, cols - 4)
    assert np.all(out[:, np.abs(radius - 3) >= 1.5, 1] < 1e-5)  # the off-centre spike stays near radius 3
    weights = out[..., 1]
    angles = np.arctan2(-(weights * (rows - 4)).sum(axis=(1, 2)), (weights * (cols - 4)).sum(axis=(1, 2)))
    assert np.all(np.abs(angles) <= 0.5 + 0.15)  # at most strength radians, plus interpolation blur
    assert angles.min() < -0.3 and angles.max() > 0.3


# --- composition --------------------------------------------------------------------------------


CHAINED = chain(get_augmentation("gaussian_noise"), get_augmentation("shift"), get_augmentation("hflip"))


def test_chain_with_zero_strengths_or_zero_probs_is_identity():
    strengths, probs = jnp.array([0.5, 0.3, 1.0]), jnp.array([1.0, 1.0, 1.0])
    apply = jax.jit(CHAINED)
    assert bitwise_equal(apply(KEY, SEQUENCES_3D, jnp.zeros(3), probs), SEQUENCES_3D)
    assert bitwise_equal(apply(KEY, SEQUENCES_3D, strengths, jnp.zeros(3)), SEQUENCES_3D)
    assert not np.allclose(apply(KEY, SEQUENCES_3D, strengths, probs), SEQUENCES_3D)


def test_chain_applies_in_order_with_prob_one():
    double_flip = chain(get_augmentation("hflip"), get_augmentation("hflip"))
    assert bitwise_equal(double_flip(KEY, IMAGES, jnp.ones(2), jnp.ones(2)), IMAGES)
    one_flip = double_flip(KEY, IMAGES, jnp.array([1.0, 0.0]), jnp.ones(2))
    assert bitwise_equal(one_flip, jnp.flip(IMAGES, 2))


def test_prob_half_applies_to_about_half_the_examples():
    ramps = jnp.tile(jnp.arange(10.0), (400, 1))
    flipped = with_probability(get_augmentation("hflip"))(KEY, ramps, 1.0, 0.5)
    assert 0.4 < _flipped_fraction(flipped, ramps) < 0.6
    assert bitwise_equal(with_probability(get_augmentation("hflip"))(KEY, ramps, 1.0, 0.0), ramps)


def test_chain_under_vmap_over_members():
    strengths = jnp.array([[0.0, 0.0, 0.0], [0.2, 0.1, 0.5], [0.0, 0.2, 0.0]])
    probs = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0], [0.0, 1.0, 0.0]])
    out = jax.jit(jax.vmap(CHAINED, in_axes=(None, None, 0, 0)))(KEY, SEQUENCES_3D, strengths, probs)
    assert bitwise_equal(out[0], SEQUENCES_3D)
    assert not np.allclose(out[1], SEQUENCES_3D) and not np.allclose(out[2], SEQUENCES_3D)


def test_chain_rejects_wrong_number_of_strengths():
    with pytest.raises(ValueError, match=r"strengths has shape \(2,\).*\(3,\)"):
        CHAINED(KEY, SEQUENCES_3D, jnp.zeros(2), jnp.zeros(3))


def test_ops_reject_wrong_layouts_and_non_scalar_strength():
    with pytest.raises(ValueError, match=r"translate.*\(N, H, W, C\)"):
        get_augmentation("translate")(KEY, SEQUENCES_3D, 0.1)
    with pytest.raises(ValueError, match=r"shift.*\(N, L\)"):
        get_augmentation("shift")(KEY, IMAGES, 0.1)
    with pytest.raises(ValueError, match="scalar"):
        get_augmentation("gaussian_noise")(KEY, SEQUENCES_3D, jnp.ones(2))


# --- configuration ------------------------------------------------------------------------------


def test_pipeline_from_config_builds_arrays_and_runs():
    fn, strengths, probs = pipeline_from_config(
        [{"name": "gaussian_noise", "strength": 0.1, "prob": 1.0}, ("shift", 0.2, 0.5), ("hflip", 0.5),
         {"name": "shift", "strength": 0.1, "mode": "roll"}])
    np.testing.assert_allclose(strengths, [0.1, 0.2, 0.5, 0.1])
    np.testing.assert_allclose(probs, [1.0, 0.5, 1.0, 1.0])
    assert bitwise_equal(fn(KEY, SEQUENCES_3D, jnp.zeros(4), probs), SEQUENCES_3D)
    assert not np.allclose(jax.jit(fn)(KEY, SEQUENCES_3D, strengths, probs), SEQUENCES_3D)


def test_config_roll_mode_wraps_instead_of_filling():
    spikes = jnp.zeros((100, 7)).at[:, 3].set(1.0)
    fn, strengths, probs = pipeline_from_config([{"name": "shift", "strength": 1.0, "mode": "roll"}])
    np.testing.assert_array_equal(np.asarray(fn(KEY, spikes, strengths, probs)).sum(axis=1), 1.0)


@pytest.mark.parametrize("spec, pattern", [
    ([{"name": "no_such_aug", "strength": 0.1}], r"no_such_aug.*gaussian_noise"),
    ([{"name": "gaussian_noise", "strength": -0.1}], r"'strength' has value -0\.1; allowed: a finite number >= 0\.0$"),
    ([{"name": "hflip", "strength": 2.0}], r"'strength' has value 2\.0.*>= 0\.0 and <= 1\.0"),
    ([{"name": "shift", "strength": 0.1, "prob": 1.5}], r"'prob' has value 1\.5.*>= 0\.0 and <= 1\.0"),
    ([("shift", 0.1, -0.2)], r"'prob' has value -0\.2"),
    ([{"name": "shift"}], r"missing field 'strength'"),
    ([{"name": "shift", "strength": "big"}], r"'strength' has value 'big'"),
    ([{"name": "shift", "strength": True}], r"'strength' has value True"),
    ([{"name": "shift", "strength": 0.1, "mode": "mirror"}], r"'mode' has value 'mirror'.*'zero', 'edge', 'roll'"),
    ([{"name": "shift", "strength": 0.1, "fill": 0}], r"no option 'fill'.*mode"),
    ([{"strength": 0.1}], r"field 'name'"),
    (["shift"], r"entry 0"),
    ({"name": "shift", "strength": 0.1}, r"list of entries"),
])
def test_bad_configs_raise_value_error_naming_the_field(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        pipeline_from_config(spec)
