"""Augmentations of images `(N, H, W, C)`, and flips for images and sequences.

Every op is `fn(key, x, strength) -> x`; strength 0 returns `x` bitwise, and each example gets
its own random values (translate and the flips draw them for the whole batch at once and apply
them with batched gathers; the others split the key per example).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from vhjax.augment.compose import (Augmentation, check_rank, check_strength, identity_at_zero, per_example,
                                   register_augmentation, select_examples)
from vhjax.augment.sequence import (RESAMPLE_MODES, SHIFT_MODES, check_mode, max_offset, random_factor,
                                    random_offsets, resample_axis, shift_batch)

IMAGE_LAYOUT = "images (N, H, W, C)"
FILL_MODES = {"zero": "constant", "edge": "nearest"}


def zoom_image(image: jax.Array, factor: jax.Array, mode: str = "zero") -> jax.Array:
    """Zoom one image (H, W, C) by `factor` about its centre, bilinear; factor > 1 zooms in."""
    return resample_axis(resample_axis(image, factor, 0, mode), factor, 1, mode)


def rotate_image(image: jax.Array, angle: jax.Array, mode: str = "zero") -> jax.Array:
    """Rotate one image (H, W, C) by `angle` radians counter-clockwise (as displayed, row 0 at
    the top) about its centre, bilinear. An angle of pi/2 matches `jnp.rot90(image)`."""
    height, width = image.shape[0], image.shape[1]
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
    row_centre, col_centre = (height - 1) / 2.0, (width - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    source_rows = row_centre + sin * (cols - col_centre) + cos * (rows - row_centre)
    source_cols = col_centre + cos * (cols - col_centre) - sin * (rows - row_centre)

    def sample(channel: jax.Array) -> jax.Array:
        return map_coordinates(channel, [source_rows, source_cols], order=1, mode=FILL_MODES[mode])

    return jax.vmap(sample, in_axes=2, out_axes=2)(image).astype(image.dtype)


@register_augmentation("translate", max_strength=1.0)
def translate(mode: str = "zero") -> Augmentation:
    """Translate each image by uniform integers in [-round(strength * H), +...] rows and
    [-round(strength * W), +...] columns (at least 1 when strength > 0). Strength is the maximum
    translation as a fraction of the size; natural range [0, 0.2]. `mode`: 'zero' fill, 'edge'
    repeat, or 'roll' around."""
    check_mode(mode, SHIFT_MODES, "translate")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "translate", IMAGE_LAYOUT)
        strength = check_strength(strength)
        row_limit, col_limit = max_offset(strength, x.shape[1]), max_offset(strength, x.shape[2])
        row_key, col_key = jax.random.split(key)
        moved = shift_batch(x, random_offsets(row_key, x.shape[0], row_limit), mode, axis=1)
        moved = shift_batch(moved, random_offsets(col_key, x.shape[0], col_limit), mode, axis=2)
        return identity_at_zero(strength, x, moved)

    return apply


@register_augmentation("image_scale", max_strength=0.9)
def image_scale(mode: str = "zero") -> Augmentation:
    """Zoom each image about its centre by a factor uniform in [1 - strength, 1 + strength],
    bilinear (factor > 1 zooms in). Natural range [0, 0.2] (0.8-1.2); at most 0.9. `mode`: pixels
    from beyond the border are 'zero' or the 'edge' value."""
    check_mode(mode, RESAMPLE_MODES, "image_scale")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "image_scale", IMAGE_LAYOUT)
        strength = check_strength(strength)
        zoomed = per_example(key, x, lambda k, image: zoom_image(image, random_factor(k, strength), mode))
        return identity_at_zero(strength, x, zoomed)

    return apply


@register_augmentation("rotate", max_strength=math.pi)
def rotate(mode: str = "zero") -> Augmentation:
    """Rotate each image about its centre by an angle uniform in [-strength, strength] radians,
    bilinear. Natural range [0, 0.175] (10 degrees); at most pi. `mode`: 'zero' or 'edge' fill."""
    check_mode(mode, RESAMPLE_MODES, "rotate")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "rotate", IMAGE_LAYOUT)
        strength = check_strength(strength)

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            return rotate_image(image, strength * jax.random.uniform(k, (), minval=-1.0, maxval=1.0), mode)

        rotated = per_example(key, x, one)
        return identity_at_zero(strength, x, rotated)

    return apply


def _random_flip(key: jax.Array, x: jax.Array, strength: jax.Array, axis: int) -> jax.Array:
    """Flip each example along batch axis `axis` with probability `strength`."""
    strength = check_strength(strength)
    flip = jax.random.bernoulli(key, strength, (x.shape[0],))  # one draw for the batch
    return identity_at_zero(strength, x, select_examples(flip, jnp.flip(x, axis), x))


@register_augmentation("hflip", max_strength=1.0)
def hflip() -> Augmentation:
    """Flip each example left-right with probability = strength (range [0, 1]; 0.5 is usual):
    images (N, H, W, C) along the width, sequences (N, L) / (N, L, C) in time."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3, 4), "hflip", f"{IMAGE_LAYOUT}, or sequences (N, L) or (N, L, C)")
        return _random_flip(key, x, strength, 2 if x.ndim == 4 else 1)

    return apply


@register_augmentation("vflip", max_strength=1.0)
def vflip() -> Augmentation:
    """Flip each image upside down (along the height) with probability = strength (range [0, 1])."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "vflip", IMAGE_LAYOUT)
        return _random_flip(key, x, strength, 1)

    return apply
