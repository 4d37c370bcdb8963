"""Issue-6 augmentations: photometric, geometric, sequence, text, mixing and SMOTE.

Every `(key, x, strength)` op runs jitted and vmapped over per-member strengths [0, s]: member 0
must be `x` bitwise, member 1 must differ, shapes and dtypes are kept. The behaviour tests reuse
those compiled functions (same shapes, strength traced) to keep the file fast."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import augment
from vhjax.augment import get_augmentation, get_mixing, pipeline_from_config, smote
from vhjax.augment.sequence_extra import warp_positions

KEY = jax.random.key(0)
BATCH = 64
IMAGES = jax.random.uniform(jax.random.key(1), (BATCH, 9, 9, 3))
GRAY = jax.random.uniform(jax.random.key(2), (BATCH, 9, 9, 1))
SEQUENCES = jax.random.normal(jax.random.key(3), (BATCH, 21, 2))
SEQUENCES_2D = jax.random.normal(jax.random.key(4), (BATCH, 21))
SENTENCE, FULL = [5, 6, 7, 8, 9, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]
TOKENS = jnp.array([SENTENCE, FULL] * (BATCH // 2), jnp.int32)
SYNONYMS = jnp.array([[-1, -1]] + [[-1, 10 + i] for i in range(1, 10)] + [[-1, -1]] * 10, jnp.int32)  # i -> 10 + i
STOP_WORDS = jnp.array([20, 21], jnp.int32)
OPTIONS = {"synonym_swap": {"synonyms": SYNONYMS}, "random_insertion": {"tokens": STOP_WORDS}}

CASES = ([(name, "rgb", IMAGES) for name in ("contrast", "saturation", "hue", "lighting", "salt_pepper", "shear",
                                             "random_crop", "center_crop", "elastic", "cutout")]
         + [("window_slice", "seq3d", SEQUENCES), ("time_warp", "seq2d", SEQUENCES_2D)]
         + [(name, "tokens", TOKENS)
            for name in ("synonym_swap", "random_insertion", "random_deletion", "random_swap")])
CASE_IDS = [f"{name}-{layout}" for name, layout, _ in CASES]
POSITIVE = {"elastic": 3.0, "cutout": 0.5}
NEW_OPS = {name for name, _, _ in CASES}


@functools.cache
def members(name: str):
    """The op, jitted and vmapped over a (2,) array of strengths (compiled once per shape)."""
    return jax.jit(jax.vmap(get_augmentation(name, **OPTIONS.get(name, {})), in_axes=(None, None, 0)))


def run(name: str, x: jax.Array, strength: float, key: jax.Array = KEY) -> np.ndarray:
    """The op at `strength` (traced, through the shared compiled function)."""
    return np.asarray(members(name)(key, x, jnp.array([0.0, strength], jnp.float32))[1])


def assert_bitwise(a: jax.Array, b: jax.Array) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_new_ops_are_registered_and_mixings_are_not():
    assert NEW_OPS <= set(augment.AUGMENTATIONS.names())
    assert {"mixup", "cutmix"} & set(augment.AUGMENTATIONS.names()) == set()
    assert augment.MIXINGS.names() == ["cutmix", "mixup"]


@pytest.mark.parametrize("name, layout, x", CASES, ids=CASE_IDS)
def test_jit_vmap_identity_at_zero_and_change_above(name, layout, x):
    out = members(name)(KEY, x, jnp.array([0.0, POSITIVE.get(name, 0.3)], jnp.float32))
    assert out.shape == (2, *x.shape) and out.dtype == x.dtype
    assert_bitwise(out[0], x)
    assert not np.array_equal(np.asarray(out[1]), np.asarray(x))


def test_strength_zero_is_identity_eagerly_too():
    assert_bitwise(get_augmentation("contrast")(KEY, IMAGES[:2], 0.0), IMAGES[:2])


# --- photometric ---------------------------------------------------------------------------------


def test_contrast_keeps_channel_means_and_scales_spread_within_range():
    out = run("contrast", IMAGES, 0.5)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), IMAGES.mean(axis=(1, 2)), atol=1e-5)
    ratio = np.asarray(out.std(axis=(1, 2)) / IMAGES.std(axis=(1, 2)))
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, axis=1), rtol=1e-4)  # one factor per image
    assert np.all((ratio >= 0.5 - 1e-4) & (ratio <= 1.5 + 1e-4)) and np.ptp(ratio) > 0.5


def test_saturation_and_hue_keep_gray_pixels_and_grayscale_images():
    gray_rgb = jnp.repeat(GRAY, 3, axis=-1)
    for name in ("saturation", "hue"):
        np.testing.assert_allclose(run(name, gray_rgb, 0.5), gray_rgb, atol=1e-6)
        assert_bitwise(get_augmentation(name)(KEY, GRAY, 0.5), GRAY)


def test_saturation_keeps_value_channel_and_hue_keeps_max_and_min():
    sat = run("saturation", IMAGES, 0.8)
    np.testing.assert_allclose(sat.max(axis=-1), IMAGES.max(axis=-1), atol=1e-5)  # HSV value = max channel
    assert np.abs(sat - np.asarray(IMAGES)).max() > 0.05
    hue = run("hue", IMAGES, 0.5)
    np.testing.assert_allclose(hue.max(axis=-1), IMAGES.max(axis=-1), atol=1e-5)
    np.testing.assert_allclose(hue.min(axis=-1), IMAGES.min(axis=-1), atol=1e-5)


def test_hue_of_pure_red_moves_by_at_most_strength():
    red = jnp.zeros(IMAGES.shape).at[..., 0].set(1.0)
    out = run("hue", red, 1 / 6)[:, 0, 0]
    # hue within +-1/6 of a turn from red: green or blue may rise, never both; red stays at 1.
    np.testing.assert_allclose(out[:, 0], 1.0, atol=1e-5)
    assert np.all(np.minimum(out[:, 1], out[:, 2]) < 1e-5)
    assert out[:, 1].max() > 0.7 and out[:, 2].max() > 0.7


def test_lighting_adds_one_shift_per_image_along_given_axes():
    fn = get_augmentation("lighting", eigenvalues=[4.0, 1.0, 0.0], eigenvectors=np.eye(3))
    shift = np.asarray(jax.jit(fn)(KEY, jnp.zeros((400, 1, 1, 3)), jnp.float32(0.5)))[:, 0, 0]
    np.testing.assert_allclose(shift.std(axis=0), [1.0, 0.5, 0.0], rtol=0.12, atol=1e-6)  # s * sqrt(lambda)
    assert_bitwise(fn(KEY, GRAY, 0.5), GRAY)
    delta = run("lighting", IMAGES, 0.5) - np.asarray(IMAGES)  # axes estimated from the batch
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1, :1], delta.shape), atol=1e-5)
    assert np.abs(delta).max() > 0.01


def test_salt_pepper_hits_about_strength_of_pixels_with_extremes():
    images = jnp.full(IMAGES.shape, 0.5).at[:, 0, 0].set(0.0).at[:, 0, 1].set(1.0)  # example min 0, max 1
    out = run("salt_pepper", images, 0.2)[:, 1:]
    changed = np.any(out != 0.5, axis=-1)
    assert 0.16 < changed.mean() < 0.24
    hit = out[changed]
    assert np.all((hit == 0.0).all(axis=-1) | (hit == 1.0).all(axis=-1))  # whole pixels, salt or pepper
    assert 0.4 < (hit[:, 0] == 1.0).mean() < 0.6
    fixed = np.asarray(jax.jit(get_augmentation("salt_pepper", low=-2.0, high=3.0))(KEY, SEQUENCES_2D[:4], 0.5))
    assert set(np.unique(fixed[fixed != np.asarray(SEQUENCES_2D[:4])])) == {-2.0, 3.0}


# --- geometric -----------------------------------------------------------------------------------


def test_shear_image_slides_rows_by_factor_times_distance_from_centre():
    line = jnp.zeros((9, 9, 1)).at[:, 4, 0].set(1.0)  # a vertical line through the centre column
    out = np.asarray(jax.jit(augment.shear_image)(line, 1.0, 0.0))[..., 0]
    expected = np.fliplr(np.eye(9))  # out[r, c] = in[r, c + (r - 4)]: the line leans to c = 8 - r
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_shear_keeps_centre_and_stays_within_factor():
    spots = jnp.zeros(IMAGES.shape).at[:, 4, 4].set(1.0).at[:, 2, 4].set(1.0)
    out = run("shear", spots, 0.5)[..., 0]
    np.testing.assert_allclose(out[:, 4, 4], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, 8]], 0.0, atol=1e-5)
    # The spot 2 rows above the centre maps to row 2, column 4 + 2h with |h| <= 0.5.
    assert np.all(out[:, 2].sum(axis=1) > 0.7)
    slide = (out[:, 2] * (np.arange(9) - 4)).sum(axis=1) / out[:, 2].sum(axis=1)
    assert np.all(np.abs(slide) <= 1.0 + 1e-5) and slide.min() < -0.6 and slide.max() > 0.6


RAMPS = jnp.broadcast_to(jnp.arange(9, dtype=jnp.float32)[None, None, :, None], IMAGES.shape)  # value = column


def test_center_crop_zooms_about_the_centre():
    out = run("center_crop", RAMPS, 0.5)[:, :, :, 0]
    np.testing.assert_allclose(out, np.broadcast_to(4.0 + (np.arange(9) - 4.0) * 0.5, out.shape), atol=1e-4)


def test_random_crop_has_fixed_zoom_and_random_position_inside_image():
    out = run("random_crop", RAMPS, 1 / 3)[:, 4, :, 0]
    np.testing.assert_allclose(np.diff(out[:, 1:-1], axis=1), 2 / 3, atol=1e-4)  # zoom by 1.5
    left = out[:, 4] - 4.5 * (2 / 3) + 0.5  # the window's left edge, in pixels
    assert left.min() >= -1e-4 and left.max() <= 3 + 1e-4 and np.ptp(left) > 2


def test_crops_and_elastic_keep_integer_dtype_with_rounding():
    pixels = jnp.round(IMAGES * 255)
    for name, strength in (("random_crop", 0.3), ("center_crop", 0.3), ("elastic", 3.0)):
        out = run(name, pixels.astype(jnp.uint8), strength)
        assert out.dtype == np.uint8 and out.shape == IMAGES.shape
        assert not np.array_equal(out, np.asarray(pixels))
        np.testing.assert_array_equal(out, np.clip(np.round(run(name, pixels, strength)), 0, 255))


def test_elastic_accepts_traced_alpha_and_sigma_per_member():
    image = IMAGES[0]
    deform = jax.jit(jax.vmap(lambda a, s: augment.elastic_deform(KEY, image, a, s, max_sigma=4.0)))
    out = deform(jnp.array([0.0, 2.0, 8.0, 8.0, 10.0]), jnp.array([2.0, 2.0, 2.0, 4.0, 2.0]))
    np.testing.assert_array_equal(out[0], image)  # no displacement
    change = np.abs(np.asarray(out - image)).mean(axis=(1, 2, 3))
    assert 0 < change[1] < change[2]  # more alpha, more change
    assert change[3] < change[2]  # smoother field, smaller displacement
    flat = jnp.full(IMAGES.shape, 0.25)
    np.testing.assert_allclose(run("elastic", flat, 10.0), flat, atol=1e-6)  # nothing to move


def test_cutout_blanks_one_clipped_box():
    out = run("cutout", jnp.ones(IMAGES.shape), 0.5)
    holes = out[..., 0] == 0
    np.testing.assert_array_equal(holes, out[..., 2] == 0)
    rows, cols = holes.sum(axis=2).max(axis=1), holes.sum(axis=1).max(axis=1)
    np.testing.assert_array_equal(holes.sum(axis=(1, 2)), rows * cols)  # a rectangle
    assert rows.max() == 5 and cols.max() == 5 and rows.min() >= 2 and np.any(rows < 5)  # side 4.5 -> 5 (|d| < 2.25)


# --- sequences -----------------------------------------------------------------------------------


def test_time_warp_keeps_ends_and_order():
    positions = jax.jit(jax.vmap(lambda k: warp_positions(k, jnp.float32(0.8), 30, 4)))(jax.random.split(KEY, 50))
    np.testing.assert_allclose(positions[:, 0], 0.0)
    np.testing.assert_allclose(positions[:, -1], 29.0, rtol=1e-5)
    assert np.all(np.diff(positions, axis=1) > 0)
    ramps = jnp.broadcast_to(jnp.arange(21.0), SEQUENCES_2D.shape)
    out = run("time_warp", ramps, 0.8)
    np.testing.assert_allclose(out[:, [0, -1]], [[0.0, 20.0]] * BATCH, atol=1e-4)
    assert np.all(np.diff(out, axis=1) > 0) and np.abs(out - np.asarray(ramps)).max() > 1.0


def test_window_slice_stretches_a_window_inside_the_sequence():
    ramps = jnp.broadcast_to(jnp.arange(21.0)[:, None], SEQUENCES.shape)
    out = run("window_slice", ramps, 0.5)[..., 0]
    np.testing.assert_allclose(np.diff(out, axis=1), 0.5, atol=1e-5)
    assert out[:, 0].min() >= 0 and out[:, -1].max() <= 20 + 1e-5 and np.ptp(out[:, 0]) > 5


# --- text ----------------------------------------------------------------------------------------


def test_synonym_swap_uses_only_table_synonyms():
    tokens = jnp.tile(jnp.array([[1, 2, 3, 15, 0, 0, 0, 0]], jnp.int32), (BATCH, 1))  # 15 has no synonyms
    original = np.asarray(tokens)
    out = run("synonym_swap", tokens, 0.5)
    changed = out != original
    np.testing.assert_array_equal(out[changed], original[changed] + 10)
    assert not changed[:, 3:].any()
    assert 0.35 < changed[:, :3].mean() < 0.65
    np.testing.assert_array_equal(run("synonym_swap", tokens, 1.0)[:, :3], original[:, :3] + 10)


def test_random_insertion_adds_stop_words_and_keeps_order():
    out = run("random_insertion", TOKENS, 0.3)
    for row, source in zip(out, np.asarray(TOKENS)):
        words = [t for t in row if t not in (20, 21, 0)]
        assert words == [t for t in source if t][:len(words)]
        assert 0 not in list(row[: np.flatnonzero(row)[-1] + 1])  # padding stays at the end
    inserted = np.isin(out, [20, 21])
    assert 0.15 < inserted[0::2, :6].mean() < 0.45 and inserted[1::2, 0].mean() > 0.15


def test_random_deletion_keeps_a_subsequence_padded_at_end():
    full = jnp.tile(jnp.array([FULL], jnp.int32), (BATCH, 1))
    out = run("random_deletion", full, 0.25)
    for row in out:
        kept = row[row != 0]
        assert list(kept) == sorted(kept) and len(kept) >= 1  # a subsequence of 1..8
        np.testing.assert_array_equal(row[len(kept):], 0)
    assert 0.17 < (out == 0).mean() < 0.33
    np.testing.assert_array_equal((run("random_deletion", full, 1.0) != 0).sum(axis=1), 1)


def test_random_swap_permutes_tokens_and_leaves_padding():
    out = run("random_swap", TOKENS, 0.2)[0::2]
    np.testing.assert_array_equal(np.sort(out[:, :5], axis=1), np.tile([5, 6, 7, 8, 9], (BATCH // 2, 1)))
    np.testing.assert_array_equal(out[:, 5:], 0)
    assert np.all((out[:, :5] != [5, 6, 7, 8, 9]).sum(axis=1) >= 2)  # one swap of two distinct tokens


def test_text_ops_reject_float_tokens_and_missing_tables():
    with pytest.raises(ValueError, match="integer"):
        get_augmentation("random_swap")(KEY, SEQUENCES_2D, 0.1)
    with pytest.raises(ValueError, match="'synonyms'.*integer array"):
        get_augmentation("synonym_swap")
    with pytest.raises(ValueError, match="'tokens'"):
        get_augmentation("random_insertion", tokens=[0.5])


# --- mixing --------------------------------------------------------------------------------------


LABELS = jnp.eye(BATCH)  # every example its own class, so mixed labels reveal partners and weights


@functools.cache
def mixing_members(name: str):
    return jax.jit(jax.vmap(get_mixing(name), in_axes=(None, None, None, 0)))


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_identity_at_zero_and_labels_stay_distributions(name):
    xs, ys = mixing_members(name)(KEY, IMAGES, LABELS, jnp.array([0.0, 1.0]))
    assert xs.shape == (2, *IMAGES.shape) and ys.shape == (2, BATCH, BATCH)
    assert_bitwise(xs[0], IMAGES)
    assert_bitwise(ys[0], LABELS)
    np.testing.assert_allclose(ys[1].sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(ys[1], LABELS) and not np.allclose(xs[1], IMAGES)


def test_mixup_mixes_inputs_with_the_label_weights():
    xs, ys = mixing_members("mixup")(KEY, IMAGES, LABELS, jnp.array([0.0, 1.0]))
    expected = jnp.einsum("ij,jhwc->ihwc", ys[1], IMAGES)  # y = lam e_i + (1 - lam) e_partner
    np.testing.assert_allclose(xs[1], expected, atol=1e-5)


def test_cutmix_labels_match_pasted_area():
    constant = jnp.broadcast_to(jnp.arange(float(BATCH))[:, None, None, None], IMAGES.shape)
    xs, ys = mixing_members("cutmix")(KEY, constant, LABELS, jnp.array([0.0, 1.0]))
    shares = (np.asarray(xs[1])[..., 0].reshape(BATCH, 1, -1) == np.arange(BATCH)[None, :, None]).mean(axis=2)
    np.testing.assert_allclose(shares, ys[1], atol=1e-6)
    assert 0.1 < np.mean(1 - np.diag(np.asarray(ys[1]))) < 0.9
    sequences = jnp.arange(4.0)[:, None] * jnp.ones((4, 10))
    seq_x, seq_y = jax.jit(get_mixing("cutmix"))(KEY, sequences, jnp.eye(4), 1.0)
    np.testing.assert_allclose(np.stack([(np.asarray(seq_x) == j).mean(axis=1) for j in range(4)], axis=1), seq_y)


def test_mixing_rejects_integer_labels():
    with pytest.raises(ValueError, match="y_onehot"):
        get_mixing("mixup")(KEY, IMAGES, jnp.arange(BATCH), 0.5)


# --- SMOTE ---------------------------------------------------------------------------------------


def _on_a_segment(point: np.ndarray, members: np.ndarray) -> bool:
    """Is `point` = a + u (b - a), u in [0, 1], for two members a, b?"""
    for a in members:
        for b in members:
            direction, offset = b - a, point - a
            u = offset @ direction / max(direction @ direction, 1e-12)
            if -1e-6 <= u <= 1 + 1e-6 and np.allclose(a + u * direction, point, atol=1e-5):
                return True
    return False


def test_smote_balances_classes_with_points_on_same_class_segments():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(5, 1, (8, 3)), rng.normal(-5, 1, (4, 3))])
    x = x.astype(np.float32)
    y = np.array([0] * 30 + [1] * 8 + [2] * 4, np.int32)
    new_x, new_y = smote(x, y, k=3, seed=1)
    np.testing.assert_array_equal(np.bincount(new_y), [30, 30, 30])
    np.testing.assert_array_equal(new_x[:42], x)
    assert new_x.dtype == np.float32 and new_y.dtype == np.int32
    for point, label in zip(new_x[42:], new_y[42:]):
        assert _on_a_segment(point.astype(np.float64), x[y == label].astype(np.float64))
    assert len({tuple(p) for p in new_x[42:].round(5)}) > 40  # new points, not copies
    again, _ = smote(x, y, k=3, seed=1)
    np.testing.assert_array_equal(again, new_x)
    other, _ = smote(x, y, k=3, seed=jax.random.key(2))
    assert not np.array_equal(other, new_x)


def test_smote_keeps_example_shape_and_checks_fields():
    x = np.random.default_rng(1).normal(size=(12, 2, 2))
    y = np.array([0] * 9 + [1] * 3)
    new_x, new_y = smote(x, y, k=2, target_count=10)
    assert new_x.shape == (20, 2, 2) and np.bincount(new_y).tolist() == [10, 10]
    with pytest.raises(ValueError, match="'k' has value 0"):
        smote(x, y, k=0)
    with pytest.raises(ValueError, match="'y' has dtype float"):
        smote(x, y.astype(float))


# --- composition and configs -------------------------------------------------------------------


def test_pipeline_from_config_runs_new_ops_with_options():
    fn, strengths, probs = pipeline_from_config([("contrast", 0.3), ("random_crop", 0.2, 0.5), ("hue", 0.1),
                                                 {"name": "cutout", "strength": 0.3, "fill": 0.5}])
    jitted = jax.jit(fn)
    assert_bitwise(jitted(KEY, IMAGES, jnp.zeros(4), probs), IMAGES)
    assert not np.allclose(jitted(KEY, IMAGES, strengths, probs), IMAGES)
    text_fn, text_strengths, text_probs = pipeline_from_config(
        [{"name": "synonym_swap", "strength": 0.5, "synonyms": SYNONYMS}, ("random_deletion", 0.2)])
    out = np.asarray(jax.jit(text_fn)(KEY, TOKENS, text_strengths, text_probs))
    assert out.shape == TOKENS.shape and out.dtype == np.int32
    assert np.isin(out, [0, *range(1, 10), *range(11, 20)]).all() and not np.array_equal(out, np.asarray(TOKENS))


@pytest.mark.parametrize("spec, pattern", [
    ([("hue", 0.6)], r"'strength' has value 0\.6.*>= 0\.0 and <= 0\.5"),
    ([{"name": "shear", "strength": 0.1, "mode": "wrap"}], r"'mode' has value 'wrap'"),
    ([{"name": "elastic", "strength": 1.0, "sigma": -1}], r"'sigma' has value -1"),
    ([{"name": "time_warp", "strength": 0.1, "knots": 1}], r"'knots' has value 1"),
    ([{"name": "lighting", "strength": 0.1, "eigenvalues": [1.0, 2.0]}], r"given together"),
])
def test_bad_options_raise_value_error(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        pipeline_from_config(spec)


def test_colour_ops_reject_wrong_channel_counts():
    with pytest.raises(ValueError, match=r"'saturation' got 2 channels"):
        get_augmentation("saturation")(KEY, jnp.zeros((2, 4, 4, 2)), 0.1)
    with pytest.raises(ValueError, match=r"'random_crop'.*\(N, H, W, C\)"):
        get_augmentation("random_crop")(KEY, SEQUENCES, 0.1)
