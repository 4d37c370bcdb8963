"""Depthwise-separable convolution and a MobileNet-v1-style classifier (Howard et al. 2017).

A depthwise conv filters each input channel on its own (`multiplier` filters per channel); a
pointwise 1x1 conv then mixes channels. For a k x k window, C in and F out channels that costs
k*k*C + C*F weights instead of k*k*C*F. `DepthwiseConv` keeps flax's grouped-conv parameter
layout (`kernel` (*window, 1, C * multiplier)), so both implementations ('xla': a grouped
`lax.conv_general_dilated`; 'patch': strided slices and a per-channel contraction, faster under
vmap on CPU) share parameters. Normalisation as in resnet.py ('batch' by default, state in
`batch_stats`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vhjax.models.initializers import get_initializer
from vhjax.models.patch_conv import extract_patches, resolve_conv_impl
from vhjax.models.resnet import ConvClassifier, ConvNormModule
from vhjax.models.utils import as_tuple, check_number, check_positive, set_normalized

# (features, stride) of MobileNet v1's 13 separable blocks
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                       (512, 1), (512, 1), (1024, 2), (1024, 1))


class DepthwiseConv(nn.Module):
    """Per-channel conv over (N, *spatial, C) -> (N, *spatial', C * multiplier), 'same'-style padding
    `((k - 1) // 2, k // 2)`. Output channel `c * multiplier + j` is filter j of input channel c."""

    kernel_size: Sequence[int] = (3, 3)
    strides: int = 1
    multiplier: int = 1
    use_bias: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = tuple(self.kernel_size)
        channels, dims = x.shape[-1], len(window)
        strides = (self.strides,) * dims
        pads = [((k - 1) // 2, k // 2) for k in window]
        kernel = self.param("kernel", get_initializer("he_normal"), (*window, 1, channels * self.multiplier))
        if resolve_conv_impl(self.impl) == "patch":
            patches = extract_patches(x, window, strides, pads)
            patches = patches.reshape(*patches.shape[:-1], -1, channels)  # (..., window taps, C)
            taps = kernel.reshape(-1, channels, self.multiplier)
            y = jnp.einsum("...kc,kcm->...cm", patches, taps).reshape(*patches.shape[:-2], -1)
        else:
            spec = "".join("DHW"[3 - dims:])  # spatial letters for 1-3 dims
            numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, (f"N{spec}C", f"{spec}IO", f"N{spec}C"))
            y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=numbers,
                                         feature_group_count=channels)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (channels * self.multiplier,))
        return y


class SeparableBlock(ConvNormModule):
    """depthwise k x k (stride) -> norm -> act -> pointwise 1x1 (features) -> norm -> act."""

    features: int
    strides: int = 1
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = DepthwiseConv((self.kernel_size,) * 2, self.strides, use_bias=self.norm == "none", impl=self.conv_impl,
                          name="depthwise")(x)
        h = self.conv(self.features, (1, 1), name="pointwise")(self.norm_act(h, train, "depthwise_norm"))
        return self.norm_act(h, train, "pointwise_norm")


class MobileNet(ConvClassifier):
    """MobileNet-v1-style classifier on images (N, H, W, C): 3x3 stem conv, separable `blocks`
    ((features, stride) pairs) with every width scaled by `width_multiplier` (at least 8 channels),
    global average pooling, dropout, Dense head. Defaults: v1's blocks with a stride-1 stem for
    32x32 images; `mobilenet_v1()` is the ImageNet layout (stride-2 stem, 1000 classes)."""

    blocks: Sequence[Sequence[int]] = MOBILENET_V1_BLOCKS
    width_multiplier: float = 1.0
    stem_features: int = 32
    stem_strides: int = 1
    kernel_size: int = 3

    kind = "mobilenet"

    def __post_init__(self):
        blocks = as_tuple(self.blocks)
        if not isinstance(blocks, tuple) or not blocks or not all(
                isinstance(b, tuple) and len(b) == 2 for b in blocks):
            raise ValueError(f"mobilenet field 'blocks' has value {self.blocks!r}; allowed: a non-empty sequence of "
                             "(features, stride) pairs")
        for i, (features, stride) in enumerate(blocks):
            check_positive("mobilenet", f"blocks[{i}].features", features)
            check_positive("mobilenet", f"blocks[{i}].stride", stride)
        set_normalized(self, "blocks", blocks)
        check_number("mobilenet", "width_multiplier", self.width_multiplier, 0.0, low_inclusive=False)
        for field in ("stem_features", "stem_strides", "kernel_size"):
            check_positive("mobilenet", field, getattr(self, field))
        super().__post_init__()

    def scaled(self, features: int) -> int:
        return max(8, int(round(features * self.width_multiplier)))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x = self.image_input(x, "kernel_size", self.kernel_size)
        h = self.conv(self.scaled(self.stem_features), (3, 3), self.stem_strides, name="stem")(x)
        h = self.norm_act(h, train, "stem_norm")
        for i, (features, stride) in enumerate(self.blocks):
            h = SeparableBlock(self.scaled(features), stride, self.kernel_size, **self.norm_config(),
                               name=f"block_{i}")(h, train)
        return self.classify(h, train, dropout_rate)


def mobilenet_v1(**overrides: Any) -> MobileNet:
    """MobileNet v1 for 224x224 ImageNet: stride-2 stem, v1's 13 blocks, 1000 classes."""
    return MobileNet(**{"blocks": MOBILENET_V1_BLOCKS, "stem_strides": 2, "num_classes": 1000, **overrides})
