"""Augmentations `fn(key, x, strength) -> x` on whole batches, and their composition.

strength is a scalar array (traced; it may differ per population member under `jax.vmap`);
strength 0 is exactly the identity. Registered names: gaussian_noise, brightness, shift, scale
(sequences), translate, image_scale, rotate, vflip (images), hflip (both).
"""

from vhjax.augment.compose import (AUGMENTATIONS, Augmentation, ChainedAugmentation, chain, get_augmentation,
                                   pipeline_from_config, register_augmentation, with_probability)
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

# Issue 6: more augmentations (importing the modules registers their ops), mixing, SMOTE.
from vhjax.augment import geometric, photometric, sequence_extra, text  # noqa: E402,F401  (registration)
from vhjax.augment.geometric import crop_and_resize, elastic_deform, shear_image  # noqa: E402
from vhjax.augment.mixing import MIXINGS, Mixing, get_mixing  # noqa: E402
from vhjax.augment.photometric import pixel_principal_axes  # noqa: E402
from vhjax.augment.sequence_extra import interpolate_at  # noqa: E402
from vhjax.augment.smote import smote  # noqa: E402

__all__ += [
    "MIXINGS",
    "Mixing",
    "crop_and_resize",
    "elastic_deform",
    "get_mixing",
    "interpolate_at",
    "pixel_principal_axes",
    "shear_image",
    "smote",
]
