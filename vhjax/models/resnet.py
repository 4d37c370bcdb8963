"""Residual networks: basic and bottleneck blocks, image ResNets (`resnet20` for 32x32 CIFAR-style
inputs, `resnet18`/`resnet50` ImageNet layouts) and the 1-D FCN and ResNet time-series baselines
of Wang et al. (2017) for sequences (N, L) or (N, L, C).

Normalisation is a field: `norm='batch'` (the default, as in the papers) keeps running means and
variances in the `batch_stats` collection: initialise as usual, and in training call
`model.apply(variables, x, train=True, mutable=['batch_stats'])` (vhjax.train does this through
`TrainState.model_state`); `train=False` uses the running averages. `norm='group'`, `'layer'`
or `'none'` keep no state. `norm_momentum` (default 0.7, flax convention), `norm_epsilon` (1e-5)
and `norm_running_var` ('batch' or 'total', see vhjax.models.batchnorm) configure every norm layer.
The momentum default is lower than the usual 0.9/0.99: with small data and batches the running
averages' lag behind the weights costs more than their noise (measured in docs/models_data.md);
`vhjax.models.batchnorm.recompute_batch_stats` replaces them by exact statistics ("precise BN").

By default (`zero_init_residual=True`) each residual branch ends in a zero-initialised scale (the
last norm's scale, or with `norm='none'` the last conv kernel), so every block starts as its
shortcut (Goyal et al. 2017), which lets deep un-normalised ResNets train. `shortcut` chooses the
shortcut of blocks whose shape does not change ('identity', 'norm' or 'conv'; see ResidualBlock).

The helpers here (`conv`, `Norm`, `check_kernel_fits`, ...) are shared by densenet.py,
mobilenet.py and hybrid.py; so are `ConvNormModule` (the norm / activation / conv-implementation
fields every conv block and classifier here has, keyword-only, and the layers built from them) and
`ConvClassifier` (those plus `dropout_rate` and `num_classes`, the image input check and the head).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax

from vhjax.models.activations import check_activation, get_activation
from vhjax.models.batchnorm import RUNNING_VARS, BatchNorm
from vhjax.models.initializers import get_initializer
from vhjax.models.layers import Dropout, add_channel_axis, keyword_field
from vhjax.models.patch_conv import CONV_IMPLS, make_conv
from vhjax.models.slice_pool import max_pool
from vhjax.models.utils import (as_tuple, check_choice, check_number, check_positive, check_positive_ints,
                                check_rate, set_normalized)

NORMS = ("batch", "group", "layer", "none")
SHORTCUTS = ("identity", "norm", "conv")
# Running-average decay of BatchNorm (flax convention: new = m * old + (1 - m) * batch), the variance
# epsilon and the running-variance rule; see the module docstring and docs/models_data.md.
DEFAULT_NORM_MOMENTUM = 0.7
DEFAULT_NORM_EPSILON = 1e-5
DEFAULT_RUNNING_VAR = "batch"
BLOCKS = ("basic", "bottleneck")
BOTTLENECK_EXPANSION = 4


# --- shared helpers -----------------------------------------------------------------------------

def conv(impl: str, features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1, *,
         use_bias: bool = True, zero_init: bool = False, name: str | None = None) -> nn.Module:
    """A conv padded `((k - 1) // 2, k // 2)` per axis (output length n at stride 1, torch's symmetric
    padding for odd k) with He-normal kernels; `impl='patch'` is vhjax's PatchConv (fast under vmap on CPU),
    'xla' flax's nn.Conv, 'auto' the first on CPU and the second elsewhere (`resolve_conv_impl`)."""
    kernel_size = tuple(kernel_size)
    strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
    padding = tuple(((k - 1) // 2, k // 2) for k in kernel_size)
    init = nn.initializers.zeros_init() if zero_init else get_initializer("he_normal")
    return make_conv(impl, features, kernel_size, strides, padding, use_bias=use_bias, kernel_init=init, name=name)


class Norm(nn.Module):
    """Normalisation by kind: 'batch' (state in `batch_stats`), 'group' (gcd(C, 8) groups),
    'layer' (over channels) or 'none'. `zero_init` starts the scale at 0. `momentum` is the
    running averages' decay (flax convention: new = momentum * old + (1 - momentum) * batch; only
    'batch' keeps running averages), `epsilon` is added to the variance (every kind),
    `running_var` how the running variance is averaged (`vhjax.models.batchnorm.BatchNorm`)."""

    kind: str = "batch"
    zero_init: bool = False
    momentum: float = DEFAULT_NORM_MOMENTUM
    epsilon: float = DEFAULT_NORM_EPSILON
    running_var: str = DEFAULT_RUNNING_VAR

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        scale_init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.ones_init()
        if self.kind == "batch":
            return BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                             scale_init=scale_init, running_var=self.running_var, name="bn")(x)
        if self.kind == "group":
            return nn.GroupNorm(num_groups=math.gcd(x.shape[-1], 8), epsilon=self.epsilon, scale_init=scale_init,
                                name="gn")(x)
        if self.kind == "layer":
            return nn.LayerNorm(epsilon=self.epsilon, scale_init=scale_init, name="ln")(x)
        return x


def norm_act(kind: str, activation: str, x: jax.Array, train: bool, name: str,
             momentum: float = DEFAULT_NORM_MOMENTUM, epsilon: float = DEFAULT_NORM_EPSILON,
             running_var: str = DEFAULT_RUNNING_VAR) -> jax.Array:
    """`activation(Norm(kind, momentum=, epsilon=, running_var=)(x))`; a 'none' norm adds no module."""
    if kind != "none":
        x = Norm(kind, momentum=momentum, epsilon=epsilon, running_var=running_var, name=name)(x, train)
    return get_activation(activation)(x)


def check_norm_fields(model: str, module: Any) -> None:
    """`norm_momentum` in [0, 1), `norm_epsilon` > 0 (plain numbers: static fields), `norm_running_var`."""
    check_number(model, "norm_momentum", module.norm_momentum, 0.0, 1.0, high_inclusive=False)
    check_number(model, "norm_epsilon", module.norm_epsilon, 0.0, low_inclusive=False)
    check_choice(model, "norm_running_var", module.norm_running_var, RUNNING_VARS)


def check_kernel_fits(model: str, field: str, kernel: int, spatial: Sequence[int]) -> None:
    """A kernel wider than the input's spatial extent is a config error (it would see only padding)."""
    if kernel > min(spatial):
        raise ValueError(f"{model} field {field!r} has value {kernel}, larger than the input's spatial shape "
                         f"{tuple(spatial)}; allowed: at most {min(spatial)}")


def check_common(model: str, module: Any) -> None:
    """Checks of the fields every conv classifier here has: norm, activation, dropout, classes, impl."""
    check_choice(model, "norm", module.norm, NORMS)
    check_activation(model, "activation", module.activation)
    check_rate(model, "dropout_rate", module.dropout_rate)
    check_positive(model, "num_classes", module.num_classes)
    check_choice(model, "conv_impl", module.conv_impl, CONV_IMPLS)
    check_norm_fields(model, module)


def check_int_tuple(module: nn.Module, model: str, field: str, allow_empty: bool = False) -> tuple[int, ...]:
    """Normalise a list/tuple field of positive ints in place (from `__post_init__`) and return it."""
    value = as_tuple(getattr(module, field))
    if not isinstance(value, tuple) or (not value and not allow_empty):
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: a non-empty sequence of "
                         "positive integers")
    check_positive_ints(model, field, value)
    set_normalized(module, field, value)
    return value


def check_images(model: str, x: jax.Array) -> None:
    """Image models take (N, H, W, C) inputs."""
    if x.ndim != 4:
        raise ValueError(f"{model} expects images (batch, height, width, channels); got shape {tuple(x.shape)}")


def pool_and_classify(h: jax.Array, num_classes: int, rate: Any, train: bool) -> jax.Array:
    """Global average pooling over the spatial axes, dropout, Dense head -> (N, num_classes)."""
    h = h.mean(axis=tuple(range(1, h.ndim - 1)))
    h = Dropout(name="dropout")(h, rate, deterministic=not train)
    return nn.Dense(num_classes, name="head")(h)


NORM_CONFIG_FIELDS = ("norm", "activation", "conv_impl", "norm_momentum", "norm_epsilon", "norm_running_var")


class ConvNormModule(nn.Module):
    """The normalisation, activation and conv-implementation fields (keyword-only) shared by the conv
    blocks and classifiers of resnet.py, densenet.py and mobilenet.py, and the layers built from them."""

    norm: str = keyword_field("batch")
    activation: str = keyword_field("relu")
    conv_impl: str = keyword_field("auto")
    norm_momentum: float = keyword_field(DEFAULT_NORM_MOMENTUM)
    norm_epsilon: float = keyword_field(DEFAULT_NORM_EPSILON)
    norm_running_var: str = keyword_field(DEFAULT_RUNNING_VAR)

    def norm_config(self) -> dict[str, Any]:
        """These fields, as keywords for a child block."""
        return {field: getattr(self, field) for field in NORM_CONFIG_FIELDS}

    def conv(self, features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1, *,
             zero_init: bool = False, name: str | None = None) -> nn.Module:
        """`conv` with this module's implementation, biased only when no norm follows (`norm='none'`)."""
        return conv(self.conv_impl, features, kernel_size, strides, use_bias=self.norm == "none", zero_init=zero_init,
                    name=name)

    def norm_layer(self, name: str, zero_init: bool = False) -> Norm:
        return Norm(self.norm, zero_init=zero_init, momentum=self.norm_momentum, epsilon=self.norm_epsilon,
                    running_var=self.norm_running_var, name=name)

    def norm_act(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        """`norm_act` with this module's norm and activation fields."""
        return norm_act(self.norm, self.activation, x, train, name, self.norm_momentum, self.norm_epsilon,
                        self.norm_running_var)


class ConvClassifier(ConvNormModule):
    """A `ConvNormModule` classifier: adds `dropout_rate` and `num_classes` (keyword-only), checks the
    shared fields after the subclass's own checks, and ends in `pool_and_classify`. `kind` names the
    model in error messages."""

    dropout_rate: float = keyword_field(0.0)
    num_classes: int = keyword_field(10)

    kind = "conv_classifier"

    def __post_init__(self):
        check_common(self.kind, self)
        super().__post_init__()

    def image_input(self, x: jax.Array, field: str, kernel: int) -> jax.Array:
        """Check that `x` is a batch of images that the `field` kernel fits."""
        check_images(self.kind, x)
        check_kernel_fits(self.kind, field, kernel, x.shape[1:3])
        return x

    def classify(self, h: jax.Array, train: bool, dropout_rate: Any) -> jax.Array:
        """`pool_and_classify` at `dropout_rate` (None: the `dropout_rate` field)."""
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return pool_and_classify(h, self.num_classes, rate, train)


# --- blocks -------------------------------------------------------------------------------------

class ResidualBlock(ConvNormModule):
    """`act(branch(x) + shortcut(x))`; the branch is one conv per entry of `kernel_sizes` (the first
    strided), each normalised, activated except the last. Two 3x3 convs = ResNet's basic block.

    The shortcut: when the stride or the width changes, a 1x1 strided conv + norm (He et al.'s
    projection, as in Wang et al. 2017's 1-D ResNet); otherwise, by `shortcut`, the identity
    ('identity'), a norm of the input ('norm', Wang et al.'s published code for equal widths) or
    the 1x1 conv + norm anyway ('conv'). `zero_init_residual` starts the branch's last norm scale
    (with `norm='none'` its last conv kernel) at 0, so the block starts as its shortcut."""

    features: int
    kernel_sizes: Sequence[int] = (3, 3)
    strides: int = 1
    spatial_dims: int = 2
    shortcut: str = "identity"
    zero_init_residual: bool = True

    def branch(self) -> tuple[int, list[tuple[int, tuple[int, ...], int]]]:
        """The block's output width and its branch's convs as (features, kernel, stride)."""
        return self.features, [(self.features, (k,) * self.spatial_dims, self.strides if i == 0 else 1)
                               for i, k in enumerate(self.kernel_sizes)]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out, layers = self.branch()
        h, last = x, len(layers) - 1
        for i, (features, kernel, stride) in enumerate(layers):
            zero = self.zero_init_residual and i == last
            h = self.conv(features, kernel, stride, zero_init=self.norm == "none" and zero, name=f"conv_{i}")(h)
            if self.norm != "none":
                h = self.norm_layer(f"norm_{i}", zero)(h, train)
            if i < last:
                h = get_activation(self.activation)(h)
        return get_activation(self.activation)(h + self.shortcut_to(out, x, train))

    def shortcut_to(self, out: int, x: jax.Array, train: bool) -> jax.Array:
        same = self.strides == 1 and x.shape[-1] == out
        if same and (self.shortcut == "identity" or (self.shortcut == "norm" and self.norm == "none")):
            return x
        if not (same and self.shortcut == "norm"):
            x = self.conv(out, (1,) * self.spatial_dims, self.strides, name="proj")(x)
        return self.norm_layer("proj_norm")(x, train) if self.norm != "none" else x


class BottleneckBlock(ResidualBlock):
    """ResNet-50's block: 1x1 (features) -> 3x3 strided (features) -> 1x1 (4 * features), plus shortcut."""

    def branch(self) -> tuple[int, list[tuple[int, tuple[int, ...], int]]]:
        out = self.features * BOTTLENECK_EXPANSION
        one, three = (1,) * self.spatial_dims, (3,) * self.spatial_dims
        return out, [(self.features, one, 1), (self.features, three, self.strides), (out, one, 1)]


def check_residual_fields(model: str, module: Any) -> None:
    check_choice(model, "shortcut", module.shortcut, SHORTCUTS)
    check_choice(model, "zero_init_residual", module.zero_init_residual, (False, True))


# --- image ResNet -------------------------------------------------------------------------------

class ResNet(ConvClassifier):
    """Image ResNet on (N, H, W, C): stem conv (+ norm, act, optional 3x3/2 max pool), stages of
    `stage_sizes[i]` blocks of width `widths[i]` (the first block of stages i > 0 has stride 2),
    global average pooling, dropout, Dense head. Defaults are ResNet-20 (He et al. 2016, CIFAR)."""

    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    block: str = "basic"
    stem_features: int = 16
    stem_kernel: int = 3
    stem_strides: int = 1
    stem_pool: bool = False
    shortcut: str = "identity"
    zero_init_residual: bool = True

    kind = "resnet"

    def __post_init__(self):
        sizes = check_int_tuple(self, "resnet", "stage_sizes")
        widths = check_int_tuple(self, "resnet", "widths")
        if len(sizes) != len(widths):
            raise ValueError(f"resnet field 'widths' has value {widths!r}; allowed: one width per stage "
                             f"({len(sizes)} stages in 'stage_sizes')")
        check_choice("resnet", "block", self.block, BLOCKS)
        for field in ("stem_features", "stem_kernel", "stem_strides"):
            check_positive("resnet", field, getattr(self, field))
        check_choice("resnet", "stem_pool", self.stem_pool, (False, True))
        check_residual_fields("resnet", self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x = self.image_input(x, "stem_kernel", self.stem_kernel)
        h = self.conv(self.stem_features, (self.stem_kernel,) * 2, self.stem_strides, name="stem")(x)
        h = self.norm_act(h, train, "stem_norm")
        if self.stem_pool:
            h = max_pool(self.conv_impl, h, (3, 3), (2, 2), ((1, 1), (1, 1)))
        block_cls = BottleneckBlock if self.block == "bottleneck" else ResidualBlock
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for index in range(size):
                strides = 2 if stage > 0 and index == 0 else 1
                h = block_cls(width, (3, 3), strides, 2, self.shortcut, self.zero_init_residual,
                              **self.norm_config(), name=f"stage{stage}_block{index}")(h, train)
        return self.classify(h, train, dropout_rate)


def resnet20(**overrides: Any) -> ResNet:
    """ResNet-20 for 32x32 images: 3x3 stem (16), three stages of 3 basic blocks (16, 32, 64)."""
    return ResNet(**{"stage_sizes": (3, 3, 3), "widths": (16, 32, 64), "block": "basic", "stem_features": 16,
                     "stem_kernel": 3, "stem_strides": 1, "stem_pool": False, **overrides})


def resnet18(**overrides: Any) -> ResNet:
    """ResNet-18 (ImageNet layout): 7x7/2 stem (64), 3x3/2 max pool, basic blocks (2, 2, 2, 2)."""
    return ResNet(**{"stage_sizes": (2, 2, 2, 2), "widths": (64, 128, 256, 512), "block": "basic",
                     "stem_features": 64, "stem_kernel": 7, "stem_strides": 2, "stem_pool": True,
                     "num_classes": 1000, **overrides})


def resnet50(**overrides: Any) -> ResNet:
    """ResNet-50 (ImageNet layout, stride on the 3x3 conv): bottleneck blocks (3, 4, 6, 3)."""
    return resnet18(**{"stage_sizes": (3, 4, 6, 3), "block": "bottleneck", **overrides})


# --- time series (Wang, Yan & Oates 2017) -------------------------------------------------------

class _SequenceNet(ConvClassifier):
    """Shared fields and input handling of FCN1D and ResNet1D."""

    widths: Sequence[int] = (128, 256, 128)
    kernel_sizes: Sequence[int] = (8, 5, 3)

    kind = "sequence_net"

    def __post_init__(self):
        check_int_tuple(self, self.kind, "widths")
        check_int_tuple(self, self.kind, "kernel_sizes")
        super().__post_init__()

    def prepare(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (2, 3):
            raise ValueError(f"{self.kind} expects sequences (batch, length) or (batch, length, channels); "
                             f"got shape {tuple(x.shape)}")
        x = add_channel_axis(x)
        for i, k in enumerate(self.kernel_sizes):
            check_kernel_fits(self.kind, f"kernel_sizes[{i}]", k, x.shape[1:2])
        return x


class FCN1D(_SequenceNet):
    """Fully convolutional time-series classifier: one conv (+ norm, act) per (width, kernel) pair,
    global average pooling, Dense head. Defaults: 128/8, 256/5, 128/3 (Wang et al. 2017)."""

    kind = "fcn1d"

    def __post_init__(self):
        super().__post_init__()
        if len(self.widths) != len(self.kernel_sizes):
            raise ValueError(f"fcn1d field 'kernel_sizes' has value {self.kernel_sizes!r}; allowed: one kernel "
                             f"size per entry of 'widths' ({len(self.widths)})")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        h = self.prepare(x)
        for i, (width, k) in enumerate(zip(self.widths, self.kernel_sizes)):
            h = self.conv(width, (k,), name=f"conv_{i}")(h)
            h = self.norm_act(h, train, f"norm_{i}")
        return self.classify(h, train, dropout_rate)


class ResNet1D(_SequenceNet):
    """Time-series ResNet: one residual block per entry of `widths` (each block: one conv per
    `kernel_sizes` entry), global average pooling, Dense head. Defaults: blocks 64, 128, 128 with
    kernels 8, 5, 3 and, as in Wang et al.'s published code, a 1x1 conv + BN shortcut where the
    width changes and a BN shortcut where it does not (`shortcut='norm'`; see `ResidualBlock`)."""

    widths: Sequence[int] = (64, 128, 128)
    shortcut: str = "norm"
    zero_init_residual: bool = True
    kind = "resnet1d"

    def __post_init__(self):
        check_residual_fields(self.kind, self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        h = self.prepare(x)
        for i, width in enumerate(self.widths):
            h = ResidualBlock(width, self.kernel_sizes, 1, 1, self.shortcut, self.zero_init_residual,
                              **self.norm_config(), name=f"block_{i}")(h, train)
        return self.classify(h, train, dropout_rate)
