"""Geometric augmentations of images `(N, H, W, C)`: shear, random and center crop, elastic
deformation, cutout.

Every op is `fn(key, x, strength) -> x`; strength 0 returns `x` bitwise, shapes never change
(crops are resized back to the input size) and the dtype is kept (integer images are rounded and
clipped back to their range). Resampling uses dm-pix and `jax.image`.
"""

from __future__ import annotations

import math

import dm_pix as pix
import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from vhjax import validation
from vhjax.augment.compose import (Augmentation, check_rank, check_strength, identity_at_zero, per_example,
                                   register_augmentation)
from vhjax.augment.sequence import RESAMPLE_MODES, check_mode

IMAGE_LAYOUT = "images (N, H, W, C)"
PIX_MODES = {"zero": "constant", "edge": "nearest"}
MIN_CROP_FRACTION = 0.1


def cast_like(values: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """`values` as `dtype`; integer dtypes are rounded and clipped to their range first."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        values = jnp.clip(jnp.round(values), info.min, info.max)
    return values.astype(dtype)


def _checked_images(x: jax.Array, op: str, strength: jax.Array) -> jax.Array:
    check_rank(x, (4,), op, IMAGE_LAYOUT)
    return check_strength(strength)


# --- shear ---------------------------------------------------------------------------------------


def shear_image(image: jax.Array, horizontal: jax.Array, vertical: jax.Array, mode: str = "zero") -> jax.Array:
    """Shear one image (H, W, C) about its centre, bilinear: each row slides sideways by
    `horizontal` x its distance from the centre row (out[r, c] = in[r, c + h (r - rc)]), then
    each column slides by `vertical` x its distance from the centre column. The product of two
    shears has determinant 1, so nothing collapses."""
    centre = jnp.array([(image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0, 0.0])
    along_rows = jnp.array([[1.0, 0.0, 0.0], [horizontal, 1.0, 0.0], [0.0, 0.0, 1.0]])
    along_cols = jnp.array([[1.0, vertical, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    matrix = along_cols @ along_rows  # output coordinates -> input coordinates
    offset = centre - matrix @ centre
    warped = pix.affine_transform(image.astype(jnp.float32), matrix, offset=offset, order=1, mode=PIX_MODES[mode])
    return cast_like(warped, image.dtype)


@register_augmentation("shear", max_strength=1.0)
def shear(mode: str = "zero") -> Augmentation:
    """Shear each image by factors uniform in [-strength, strength] along both axes (a factor of
    0.2 moves the top row 0.2 * H/2 pixels sideways). Natural range [0, 0.3]; at most 1. `mode`:
    pixels from beyond the border are 'zero' or the 'edge' value."""
    check_mode(mode, RESAMPLE_MODES, "shear")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_images(x, "shear", strength)

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            factors = strength * jax.random.uniform(k, (2,), minval=-1.0, maxval=1.0)
            return shear_image(image, factors[0], factors[1], mode)

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply


# --- crops ---------------------------------------------------------------------------------------


def crop_and_resize(image: jax.Array, top: jax.Array, left: jax.Array, fraction: jax.Array) -> jax.Array:
    """The window of side `fraction * (H, W)` whose top-left corner is at (`top`, `left`) pixels
    (continuous, pixel-edge coordinates), resized bilinearly back to (H, W)."""
    scale = jnp.broadcast_to(1.0 / fraction, (2,)).astype(jnp.float32)
    translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
    resized = jax.image.scale_and_translate(image.astype(jnp.float32), image.shape, (0, 1), scale, translation,
                                            "linear", antialias=False)
    return cast_like(resized, image.dtype)


def crop_fraction(strength: jax.Array) -> jax.Array:
    """The kept side fraction 1 - strength, at least MIN_CROP_FRACTION."""
    return jnp.maximum(1.0 - strength, MIN_CROP_FRACTION)


@register_augmentation("random_crop", max_strength=0.9)
def random_crop() -> Augmentation:
    """Crop each image to a window of side (1 - strength) * (H, W) at a uniform random position
    and resize it back to (H, W), bilinear. Natural range [0, 0.25]; at most 0.9."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_images(x, "random_crop", strength)
        fraction = crop_fraction(strength)
        slack = (1.0 - fraction) * jnp.array([x.shape[1], x.shape[2]], jnp.float32)

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            corner = slack * jax.random.uniform(k, (2,))
            return crop_and_resize(image, corner[0], corner[1], fraction)

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply


@register_augmentation("center_crop", max_strength=0.9)
def center_crop() -> Augmentation:
    """Crop every image to its central window of side (1 - strength) * (H, W) and resize it back
    to (H, W), bilinear (deterministic; the key is unused). Natural range [0, 0.25]."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_images(x, "center_crop", strength)
        fraction = crop_fraction(strength)
        top, left = (1.0 - fraction) * x.shape[1] / 2.0, (1.0 - fraction) * x.shape[2] / 2.0
        cropped = jax.vmap(lambda image: crop_and_resize(image, top, left, fraction))(x)
        return identity_at_zero(strength, x, cropped)

    return apply


# --- elastic deformation -------------------------------------------------------------------------


def elastic_deform(key: jax.Array, image: jax.Array, alpha: jax.Array, sigma: jax.Array, *,
                   max_sigma: float = 4.0, mode: str = "edge") -> jax.Array:
    """Elastic deformation of one image (H, W, C) (Simard et al., 2003).

    Two fields of uniform noise in [-1, 1] are smoothed by a Gaussian of standard deviation
    `sigma` pixels and scaled by `alpha` pixels; each output pixel reads the input at its
    position plus that displacement, bilinear. `alpha` and `sigma` may be traced arrays (e.g.
    per population member); `max_sigma` (static) sets the kernel radius ceil(3 * max_sigma), so
    larger sigmas are truncated. Keeps shape and dtype.
    """
    check_mode(mode, RESAMPLE_MODES, "elastic")
    height, width = image.shape[0], image.shape[1]
    kernel_size = 2 * math.ceil(3 * max_sigma) + 1
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
    noise = jax.random.uniform(key, (height, width, 2), minval=-1.0, maxval=1.0)
    field = pix.gaussian_blur(noise, sigma, kernel_size) * jnp.asarray(alpha, jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
    coordinates = [rows + field[..., 0], cols + field[..., 1]]

    def sample(channel: jax.Array) -> jax.Array:
        return map_coordinates(channel.astype(jnp.float32), coordinates, order=1, mode=PIX_MODES[mode])

    return cast_like(jax.vmap(sample, in_axes=2, out_axes=2)(image), image.dtype)


@register_augmentation("elastic")
def elastic(sigma: float = 4.0, mode: str = "edge") -> Augmentation:
    """Elastic deformation with alpha = strength pixels and smoothing `sigma` pixels (Simard et
    al. used alpha 34, sigma 4 on 28x28 digits). Natural range [0, 40]. For per-member sigma,
    vmap `elastic_deform` directly. `mode`: 'zero' or 'edge' beyond the border."""
    check_mode(mode, RESAMPLE_MODES, "elastic")
    validation.check_number("augmentation 'elastic' option 'sigma'", sigma, 0.0, low_inclusive=False)

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_images(x, "elastic", strength)
        deformed = per_example(key, x, lambda k, image: elastic_deform(
            k, image, strength, sigma, max_sigma=float(sigma), mode=mode))
        return identity_at_zero(strength, x, deformed)

    return apply


# --- cutout --------------------------------------------------------------------------------------


def box_mask(centre: jax.Array, half_sizes: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask of `shape`, True where -half_size <= index - centre < half_size on every axis
    (a box of side 2 * half_size about integer `centre`); boxes past the border are clipped."""
    mask = jnp.ones(shape, bool)
    for axis, length in enumerate(shape):
        offset = jnp.arange(length) - centre[axis]
        inside = (offset >= -half_sizes[axis]) & (offset < half_sizes[axis])
        mask = mask & inside.reshape(tuple(length if d == axis else 1 for d in range(len(shape))))
    return mask


@register_augmentation("cutout", max_strength=1.0)
def cutout(fill: float = 0.0) -> Augmentation:
    """Set a box of side strength * (H, W) (at least one pixel when strength > 0), centred at a
    uniform random pixel and clipped at the border, to `fill` in every channel. Natural range
    [0, 0.5]; at most 1."""
    validation.require(validation.is_number(fill), "augmentation 'cutout' option 'fill'", fill, "a number")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_images(x, "cutout", strength)
        sizes = jnp.array([x.shape[1], x.shape[2]], jnp.float32)
        half = jnp.maximum(strength * sizes / 2.0, 0.5)

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            centre = jax.random.randint(k, (2,), 0, jnp.array(image.shape[:2]))
            mask = box_mask(centre, half, image.shape[:2])[..., None]
            return jnp.where(mask, jnp.asarray(fill).astype(image.dtype), image)

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply
