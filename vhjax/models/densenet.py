"""DenseNet (Huang et al. 2017): every layer of a dense block sees the concatenated outputs of all
earlier layers of the block (feature reuse); transitions between blocks compress and downsample.

Layers are pre-activation (norm -> act -> conv). With `bottleneck=True` (DenseNet-BC) a layer is
norm-act-conv1x1(bn_size * growth) then norm-act-conv3x3(growth), else a single norm-act-conv3x3.
A transition is norm-act-conv1x1(floor(compression * C)) and 2x2 average pooling. The default
`densenet` is a small CIFAR-style DenseNet-BC (growth 12, blocks 4-4-4, about 0.1M parameters);
`densenet121` is the ImageNet layout. Normalisation as in resnet.py: 'batch' (default, state in
`batch_stats`, use `train=True, mutable=['batch_stats']` in training), 'group', 'layer' or 'none'.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.resnet import ConvClassifier, ConvNormModule, check_int_tuple
from vhjax.models.slice_pool import avg_pool, max_pool
from vhjax.models.utils import check_choice, check_number, check_positive


class DenseLayer(ConvNormModule):
    """One dense layer: returns `concat([x, new_features])` with `growth_rate` new channels."""

    growth_rate: int
    bottleneck: bool = True
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = x
        if self.bottleneck:
            h = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv_1x1")(self.norm_act(h, train, "norm_1x1"))
        h = self.conv(self.growth_rate, (3, 3), name="conv_3x3")(self.norm_act(h, train, "norm_3x3"))
        return jnp.concatenate([x, h], axis=-1)


class Transition(ConvNormModule):
    """norm -> act -> 1x1 conv to `features` -> 2x2 average pooling."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = self.conv(self.features, (1, 1), name="conv")(self.norm_act(x, train, "norm"))
        return avg_pool(self.conv_impl, h, (2, 2), (2, 2)) if min(h.shape[1:3]) >= 2 else h


class DenseNet(ConvClassifier):
    """DenseNet classifier on images (N, H, W, C) -> (N, num_classes)."""

    growth_rate: int = 12
    block_sizes: Sequence[int] = (4, 4, 4)
    init_features: int | None = None  # None: 2 * growth_rate
    bottleneck: bool = True
    bn_size: int = 4
    compression: float = 0.5
    stem_kernel: int = 3
    stem_strides: int = 1
    stem_pool: bool = False

    kind = "densenet"

    def __post_init__(self):
        check_int_tuple(self, "densenet", "block_sizes")
        for field in ("growth_rate", "bn_size", "stem_kernel", "stem_strides"):
            check_positive("densenet", field, getattr(self, field))
        if self.init_features is not None:
            check_positive("densenet", "init_features", self.init_features)
        check_number("densenet", "compression", self.compression, 0.0, 1.0, low_inclusive=False)
        check_choice("densenet", "bottleneck", self.bottleneck, (False, True))
        check_choice("densenet", "stem_pool", self.stem_pool, (False, True))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x = self.image_input(x, "stem_kernel", self.stem_kernel)
        features = self.init_features or 2 * self.growth_rate
        h = self.conv(features, (self.stem_kernel,) * 2, self.stem_strides, name="stem")(x)
        if self.stem_pool:  # ImageNet stem: norm, act, 3x3/2 max pool
            h = max_pool(self.conv_impl, self.norm_act(h, train, "stem_norm"), (3, 3), (2, 2), ((1, 1), (1, 1)))
        for b, size in enumerate(self.block_sizes):
            for i in range(size):
                h = DenseLayer(self.growth_rate, self.bottleneck, self.bn_size, **self.norm_config(),
                               name=f"block{b}_layer{i}")(h, train)
            if b < len(self.block_sizes) - 1:
                h = Transition(int(h.shape[-1] * self.compression), **self.norm_config(),
                               name=f"transition{b}")(h, train)
        return self.classify(self.norm_act(h, train, "final_norm"), train, dropout_rate)


def densenet121(**overrides: Any) -> DenseNet:
    """DenseNet-121 (ImageNet): 7x7/2 stem (64) with max pool, growth 32, blocks 6-12-24-16, BC."""
    return DenseNet(**{"growth_rate": 32, "block_sizes": (6, 12, 24, 16), "init_features": 64, "stem_kernel": 7,
                       "stem_strides": 2, "stem_pool": True, "num_classes": 1000, **overrides})
