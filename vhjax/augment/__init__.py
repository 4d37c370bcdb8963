"""Augmentations `fn(key, x, strength) -> x` on whole batches, and their composition.

strength is a scalar array (traced; it may differ per population member under `jax.vmap`);
strength 0 is exactly the identity. Registered names: gaussian_noise, brightness, shift, scale
(sequences), translate, image_scale, rotate, vflip (images), hflip (both).
"""

from vhjax.augment.compose import (
    AUGMENTATIONS,
    Augmentation,
    ChainedAugmentation,
    chain,
    get_augmentation,
    pipeline_from_config,
    register_augmentation,
    with_probability,
)
from vhjax.augment.image import rotate_image, zoom_image
from vhjax.augment.sequence import resample_axis, shift_axis

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "ChainedAugmentation",
    "chain",
    "get_augmentation",
    "pipeline_from_config",
    "register_augmentation",
    "resample_axis",
    "rotate_image",
    "shift_axis",
    "with_probability",
    "zoom_image",
]
