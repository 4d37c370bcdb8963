"""Augmentations that mix pairs of examples and their labels: mixup and CutMix.

These change the labels too, so their signature differs from the other augmentations:

    fn(key, x, y_onehot, strength) -> (x, y)

`y_onehot` is `(N, K)` float (one-hot or already soft labels); the result's labels are soft.
Each example is mixed with a partner from a random permutation of the batch, with its own mixing
weight lam ~ Beta(strength, strength). strength is a scalar array (may be traced, per member
under `jax.vmap`); strength 0 returns `(x, y)` bitwise. They live in their own registry,
MIXINGS (`get_mixing(name)`), because `chain` composes only `(key, x, strength) -> x` ops.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vhjax.augment.compose import check_rank, check_strength
from vhjax.augment.geometric import box_mask
from vhjax.registry import Registry

Mixing = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

MIXINGS: Registry[Callable[[], Mixing]] = Registry("mixing")
MIN_ALPHA = 1e-3


def get_mixing(name: str) -> Mixing:
    """The mixing augmentation registered under `name` ('mixup' or 'cutmix')."""
    return MIXINGS.get(name)()


def _checked(x: jax.Array, y: jax.Array, strength: jax.Array, op: str, ranks: tuple[int, ...],
             layout: str) -> jax.Array:
    check_rank(x, ranks, op, layout)
    if jnp.ndim(y) != 2 or y.shape[0] != x.shape[0] or not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(
            f"mixing {op!r} got y_onehot of shape {jnp.shape(y)} and dtype {jnp.asarray(y).dtype}; "
            f"allowed: float labels ({x.shape[0]}, num_classes), e.g. jax.nn.one_hot(labels, num_classes)")
    return check_strength(strength)


def _mixing_weights(key: jax.Array, strength: jax.Array, count: int) -> jax.Array:
    """lam ~ Beta(strength, strength) per example (strength floored at MIN_ALPHA to stay finite)."""
    alpha = jnp.maximum(strength, MIN_ALPHA)
    return jax.random.beta(key, alpha, alpha, (count,))


def _keep_at_zero(strength: jax.Array, original: jax.Array, mixed: jax.Array) -> jax.Array:
    return jnp.where(strength == 0, original, mixed.astype(original.dtype))


def _broadcast(weights: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(weights, (-1,) + (1,) * (ndim - 1))


@MIXINGS.register("mixup")
def mixup() -> Mixing:
    """mixup (Zhang et al., 2018): x = lam * x + (1 - lam) * x[partner], same for y, any input
    layout. strength is the Beta parameter alpha; natural range [0.1, 0.4]."""

    def apply(key: jax.Array, x: jax.Array, y: jax.Array, strength: jax.Array) -> tuple[jax.Array, jax.Array]:
        strength = _checked(x, y, strength, "mixup", (2, 3, 4), "batches (N, D), (N, L, C) or (N, H, W, C)")
        weight_key, partner_key = jax.random.split(key)
        lam = _mixing_weights(weight_key, strength, x.shape[0])
        partner = jax.random.permutation(partner_key, x.shape[0])
        lam_x = _broadcast(lam, x.ndim)
        mixed_x = lam_x * x + (1.0 - lam_x) * x[partner]
        mixed_y = lam[:, None] * y + (1.0 - lam[:, None]) * y[partner]
        return _keep_at_zero(strength, x, mixed_x), _keep_at_zero(strength, y, mixed_y)

    return apply


def _spatial_shape(x: jax.Array) -> tuple[int, ...]:
    """Images (N, H, W, C) -> (H, W); sequences (N, L) or (N, L, C) -> (L,)."""
    return x.shape[1:3] if x.ndim == 4 else x.shape[1:2]


@MIXINGS.register("cutmix")
def cutmix() -> Mixing:
    """CutMix (Yun et al., 2019): paste a box of the partner into each example (a box of area
    fraction about 1 - lam for images (N, H, W, C), a segment of length fraction 1 - lam for
    sequences (N, L) / (N, L, C)), centred uniformly and clipped at the border; labels are mixed
    by the pasted area actually kept. strength is the Beta parameter alpha; natural range [0.5, 1]."""

    def apply(key: jax.Array, x: jax.Array, y: jax.Array, strength: jax.Array) -> tuple[jax.Array, jax.Array]:
        strength = _checked(x, y, strength, "cutmix", (2, 3, 4), "images (N, H, W, C) or sequences (N, L), (N, L, C)")
        weight_key, partner_key, box_key = jax.random.split(key, 3)
        spatial = _spatial_shape(x)
        lam = _mixing_weights(weight_key, strength, x.shape[0])
        partner = jax.random.permutation(partner_key, x.shape[0])
        sizes = jnp.array(spatial, jnp.float32)

        def mask_for(k: jax.Array, weight: jax.Array) -> jax.Array:
            side = (1.0 - weight) ** (1.0 / len(spatial))
            centre = jax.random.randint(k, (len(spatial),), 0, jnp.array(spatial))
            return box_mask(centre, side * sizes / 2.0, spatial)

        masks = jax.vmap(mask_for)(jax.random.split(box_key, x.shape[0]), lam)
        pasted = jnp.mean(masks.reshape(x.shape[0], -1).astype(jnp.float32), axis=1)
        masks = masks.reshape(masks.shape + (1,) * (x.ndim - 1 - len(spatial)))
        mixed_x = jnp.where(masks, x[partner], x)
        mixed_y = (1.0 - pasted[:, None]) * y + pasted[:, None] * y[partner]
        return _keep_at_zero(strength, x, mixed_x), _keep_at_zero(strength, y, mixed_y)

    return apply
