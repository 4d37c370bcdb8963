"""Photometric augmentations: contrast, saturation, hue, PCA lighting, salt-and-pepper noise.

Every op is `fn(key, x, strength) -> x`; strength 0 returns `x` bitwise, and each example gets
its own random draw. Colour ops expect images `(N, H, W, C)` with values in [0, 1] (what
`vhjax.data` loads); saturation and hue need RGB (C = 3) and are the identity on grayscale
(C = 1), where neither exists. Colour space conversions come from dm-pix.
"""

from __future__ import annotations

from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import validation
from vhjax.augment.compose import (Augmentation, check_rank, check_strength, identity_at_zero, per_example,
                                   register_augmentation)
from vhjax.augment.sequence import random_factor

IMAGE_LAYOUT = "images (N, H, W, C)"


def _colour_channels(x: jax.Array, op: str) -> int:
    """The channel count of an image batch; ValueError unless it is 1 (gray) or 3 (RGB)."""
    check_rank(x, (4,), op, IMAGE_LAYOUT)
    channels = x.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"augmentation {op!r} got {channels} channels (shape {x.shape}); allowed: 1 (gray) or 3 (RGB)")
    return channels


@register_augmentation("contrast", max_strength=1.0)
def contrast() -> Augmentation:
    """Scale each image's deviation from its per-channel mean by a factor uniform in
    [1 - strength, 1 + strength] (at least 0.1), any channel count. Natural range [0, 0.4]."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "contrast", IMAGE_LAYOUT)
        strength = check_strength(strength)
        out = per_example(key, x, lambda k, image: pix.adjust_contrast(image, random_factor(k, strength)))
        return identity_at_zero(strength, x, out)

    return apply


@register_augmentation("saturation", max_strength=1.0)
def saturation() -> Augmentation:
    """Multiply each RGB image's HSV saturation by a factor uniform in [1 - strength,
    1 + strength] (at least 0.1; saturation clipped to [0, 1]). Identity on grayscale. Natural
    range [0, 0.4]."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        channels = _colour_channels(x, "saturation")
        strength = check_strength(strength)
        if channels == 1:
            return x
        out = per_example(key, x, lambda k, image: pix.adjust_saturation(image, random_factor(k, strength)))
        return identity_at_zero(strength, x, out)

    return apply


@register_augmentation("hue", max_strength=0.5)
def hue() -> Augmentation:
    """Rotate each RGB image's hue by a uniform delta in [-strength, strength] turns of the
    colour circle (0.5 = half a turn). Identity on grayscale. Natural range [0, 0.1]."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        channels = _colour_channels(x, "hue")
        strength = check_strength(strength)
        if channels == 1:
            return x

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            return pix.adjust_hue(image, strength * jax.random.uniform(k, (), minval=-1.0, maxval=1.0))

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply


def pixel_principal_axes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(eigenvalues (C,), eigenvectors (C, C) as columns) of the covariance of the pixel values
    of an image batch `(N, H, W, C)`, treating every pixel as one sample."""
    pixels = jnp.reshape(x, (-1, x.shape[-1])).astype(jnp.float32)
    centred = pixels - jnp.mean(pixels, axis=0)
    covariance = centred.T @ centred / pixels.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    return jnp.maximum(eigenvalues, 0.0), eigenvectors


def _checked_axes(values: Any, field: str, shape_text: str) -> np.ndarray | None:
    """An optional user-given eigen-array as float32 with the rank (and squareness) `field` needs."""
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float32)
    expected = {"eigenvalues": 1, "eigenvectors": 2}[field]
    if array.ndim != expected or (expected == 2 and array.shape[0] != array.shape[1]):
        raise ValueError(f"augmentation 'lighting' option {field!r} has shape {array.shape}; allowed: {shape_text}")
    return array


@register_augmentation("lighting", max_strength=1.0)
def lighting(eigenvalues: Any = None, eigenvectors: Any = None) -> Augmentation:
    """AlexNet-style PCA lighting: add `P @ (alpha * sqrt(lambda))` to every pixel of an image,
    alpha ~ N(0, strength^2) per image and principal axis (AlexNet used 0.1).

    `P` (columns) and `lambda` are the eigenvectors and eigenvalues of the pixel covariance; give
    them from the training set (e.g. `pixel_principal_axes(x_train)`), or leave them None to
    estimate them from each batch. The square root makes the shift a standard deviation in the
    data's units. Any channel count except 1, where the op is the identity (a shift along the one
    axis would be plain brightness)."""
    values = _checked_axes(eigenvalues, "eigenvalues", "(C,)")
    vectors = _checked_axes(eigenvectors, "eigenvectors", "(C, C)")
    if (values is None) != (vectors is None):
        raise ValueError("augmentation 'lighting' options 'eigenvalues' and 'eigenvectors' must be given "
                         "together or not at all")
    if values is not None and values.shape[0] != vectors.shape[0]:
        raise ValueError(
            f"augmentation 'lighting' option 'eigenvalues' has shape {values.shape}; allowed: "
            f"({vectors.shape[0]},) to match 'eigenvectors' {vectors.shape}")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (4,), "lighting", IMAGE_LAYOUT)
        strength = check_strength(strength)
        channels = x.shape[-1]
        if channels == 1:
            return x
        if values is None:
            lam, axes = pixel_principal_axes(x)
        elif values.shape[0] != channels:
            raise ValueError(
                f"augmentation 'lighting' got {channels} channels but its eigenvectors are {vectors.shape}; "
                f"allowed: images with {values.shape[0]} channels")
        else:
            lam, axes = jnp.asarray(values), jnp.asarray(vectors)
        scale = jnp.sqrt(jnp.maximum(lam, 0.0))

        def one(k: jax.Array, image: jax.Array) -> jax.Array:
            alpha = strength * jax.random.normal(k, (channels,), jnp.float32)
            return image + axes @ (alpha * scale)

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply


def _optional_level(value: Any, field: str) -> float | None:
    """None or a float; anything else raises ValueError naming the field."""
    if value is None:
        return None
    validation.require(validation.is_number(value), f"augmentation 'salt_pepper' option {field!r}", value,
                       "a number or None")
    return float(value)


@register_augmentation("salt_pepper", max_strength=1.0)
def salt_pepper(low: float | None = None, high: float | None = None) -> Augmentation:
    """Set a fraction `strength` of positions to `low` (pepper) or `high` (salt), half each.

    A position is a pixel (all channels together) of an image `(N, H, W, C)`, a time step of a
    sequence `(N, L, C)`, or an entry of `(N, L)` / `(N, D)`. `low`/`high` default to each
    example's own minimum/maximum. Natural range [0, 0.05]; at most 1."""
    low_value, high_value = _optional_level(low, "low"), _optional_level(high, "high")

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        check_rank(x, (2, 3, 4), "salt_pepper", "batches (N, D), (N, L, C) or (N, H, W, C)")
        strength = check_strength(strength)
        mask_shape = x.shape[1:-1] + (1,) if x.ndim >= 3 else x.shape[1:]

        def one(k: jax.Array, xi: jax.Array) -> jax.Array:
            hit_key, salt_key = jax.random.split(k)
            hit = jax.random.bernoulli(hit_key, strength, mask_shape)
            salt = jax.random.bernoulli(salt_key, 0.5, mask_shape)
            bottom = jnp.min(xi) if low_value is None else jnp.asarray(low_value, xi.dtype)
            top = jnp.max(xi) if high_value is None else jnp.asarray(high_value, xi.dtype)
            return jnp.where(hit, jnp.where(salt, top, bottom), xi)

        return identity_at_zero(strength, x, per_example(key, x, one))

    return apply
