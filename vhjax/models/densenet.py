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

from vhjax.models.resnet import (DEFAULT_NORM_EPSILON, DEFAULT_NORM_MOMENTUM, DEFAULT_RUNNING_VAR, check_common, check_int_tuple,
                                 check_kernel_fits, conv, norm_act, pool_and_classify)
from vhjax.models.utils import check_choice, check_positive


class DenseLayer(nn.Module):
    """One dense layer: returns `concat([x, new_features])` with `growth_rate` new channels."""

    growth_rate: int
    bottleneck: bool = True
    bn_size: int = 4
    norm: str = "batch"
    activation: str = "relu"
    conv_impl: str = "auto"
    norm_momentum: float = DEFAULT_NORM_MOMENTUM
    norm_epsilon: float = DEFAULT_NORM_EPSILON
    norm_running_var: str = DEFAULT_RUNNING_VAR

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h, bias = x, self.norm == "none"
        if self.bottleneck:
            h = norm_act(self.norm, self.activation, h, train, "norm_1x1", self.norm_momentum, self.norm_epsilon, self.norm_running_var)
            h = conv(self.conv_impl, self.bn_size * self.growth_rate, (1, 1), use_bias=bias, name="conv_1x1")(h)
        h = norm_act(self.norm, self.activation, h, train, "norm_3x3", self.norm_momentum, self.norm_epsilon, self.norm_running_var)
        h = conv(self.conv_impl, self.growth_rate, (3, 3), use_bias=bias, name="conv_3x3")(h)
        return jnp.concatenate([x, h], axis=-1)


class Transition(nn.Module):
    """norm -> act -> 1x1 conv to `features` -> 2x2 average pooling."""

    features: int
    norm: str = "batch"
    activation: str = "relu"
    conv_impl: str = "auto"
    norm_momentum: float = DEFAULT_NORM_MOMENTUM
    norm_epsilon: float = DEFAULT_NORM_EPSILON
    norm_running_var: str = DEFAULT_RUNNING_VAR

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = norm_act(self.norm, self.activation, x, train, "norm", self.norm_momentum, self.norm_epsilon, self.norm_running_var)
        h = conv(self.conv_impl, self.features, (1, 1), use_bias=self.norm == "none", name="conv")(h)
        return nn.avg_pool(h, (2, 2), (2, 2), padding="VALID") if min(h.shape[1:3]) >= 2 else h


class DenseNet(nn.Module):
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
    norm: str = "batch"
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10
    conv_impl: str = "auto"
    norm_momentum: float = DEFAULT_NORM_MOMENTUM
    norm_epsilon: float = DEFAULT_NORM_EPSILON
    norm_running_var: str = DEFAULT_RUNNING_VAR

    def __post_init__(self):
        check_int_tuple(self, "densenet", "block_sizes")
        for field in ("growth_rate", "bn_size", "stem_kernel", "stem_strides"):
            check_positive("densenet", field, getattr(self, field))
        if self.init_features is not None:
            check_positive("densenet", "init_features", self.init_features)
        if isinstance(self.compression, bool) or not isinstance(self.compression, (int, float)) \
                or not 0.0 < self.compression <= 1.0:
            raise ValueError(f"densenet field 'compression' has value {self.compression!r}; "
                             "allowed: a number in (0, 1]")
        check_choice("densenet", "bottleneck", self.bottleneck, (False, True))
        check_choice("densenet", "stem_pool", self.stem_pool, (False, True))
        check_common("densenet", self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"densenet expects images (batch, height, width, channels); got shape {tuple(x.shape)}")
        check_kernel_fits("densenet", "stem_kernel", self.stem_kernel, x.shape[1:3])
        features = self.init_features or 2 * self.growth_rate
        h = conv(self.conv_impl, features, (self.stem_kernel,) * 2, self.stem_strides,
                 use_bias=self.norm == "none", name="stem")(x)
        if self.stem_pool:  # ImageNet stem: norm, act, 3x3/2 max pool
            h = norm_act(self.norm, self.activation, h, train, "stem_norm", self.norm_momentum, self.norm_epsilon, self.norm_running_var)
            h = nn.max_pool(h, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for b, size in enumerate(self.block_sizes):
            for i in range(size):
                h = DenseLayer(self.growth_rate, self.bottleneck, self.bn_size, self.norm, self.activation,
                               self.conv_impl, self.norm_momentum, self.norm_epsilon, self.norm_running_var,
                               name=f"block{b}_layer{i}")(h, train)
            if b < len(self.block_sizes) - 1:
                h = Transition(int(h.shape[-1] * self.compression), self.norm, self.activation, self.conv_impl,
                               self.norm_momentum, self.norm_epsilon, self.norm_running_var, name=f"transition{b}")(h, train)
        h = norm_act(self.norm, self.activation, h, train, "final_norm", self.norm_momentum, self.norm_epsilon, self.norm_running_var)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return pool_and_classify(h, self.num_classes, rate, train)


def densenet121(**overrides: Any) -> DenseNet:
    """DenseNet-121 (ImageNet): 7x7/2 stem (64) with max pool, growth 32, blocks 6-12-24-16, BC."""
    return DenseNet(**{"growth_rate": 32, "block_sizes": (6, 12, 24, 16), "init_features": 64, "stem_kernel": 7,
                       "stem_strides": 2, "stem_pool": True, "num_classes": 1000, **overrides})
