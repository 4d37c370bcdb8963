"""Convolutional classifiers: `CNN1D` for sequences (N, L[, C]) and `CNN2D` for images (N, H, W, C).

Each conv layer is `(features, kernel_size, stride, padding)` (stride and padding optional, or a
dict with those keys); padding is 'SAME', 'VALID', an int (both sides), or per spatial axis an int
or a `(low, high)` pair — for 1-D a bare pair `(low, high)` also works. Torch's `Conv1d(padding=1)`
is padding `1` (= `[(1, 1)]`). After each conv: activation, optional pooling, dropout. Then
flatten, hidden Dense layers `head_widths` (activation, dropout) and a Dense to `num_classes`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax

from vhjax.models.layers import ACTIVATIONS, Dropout, add_channel_axis, get_activation
from vhjax.models.patch_conv import CONV_IMPLS, PatchConv, resolve_conv_impl, resolve_padding
from vhjax.models.slice_pool import avg_pool, max_pool
from vhjax.models.utils import (as_tuple, check_choice, check_positive, check_positive_ints, check_rate,
                                set_normalized)

POOLINGS = (None, "max", "avg")


class ConvLayer(NamedTuple):
    """One parsed conv layer: per-axis kernel and stride; padding a string or per-axis pairs."""

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]


def _per_axis(model: str, field: str, value: Any, dims: int) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else as_tuple(value)
    if not isinstance(values, tuple) or len(values) != dims:
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: a positive int or {dims} of them")
    check_positive_ints(model, field, values)
    return values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_padding(model: str, field: str, value: Any, dims: int) -> str | tuple[tuple[int, int], ...]:
    allowed = f"'SAME', 'VALID', an int >= 0, or {dims} entries of int / (low, high)"
    if value in ("SAME", "VALID"):
        return value
    value = as_tuple(value)
    if _is_int(value):
        entries = (value,) * dims
    elif dims == 1 and isinstance(value, tuple) and len(value) == 2 and all(map(_is_int, value)):
        entries = (value,)
    else:
        entries = value
    if not isinstance(entries, tuple) or len(entries) != dims:
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: {allowed}")
    pairs = []
    for entry in entries:
        pair = (entry, entry) if _is_int(entry) else entry
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_int(p) and p >= 0 for p in pair)):
            raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: {allowed}")
        pairs.append(pair)
    return tuple(pairs)


def parse_conv_layer(model: str, index: int, entry: Any, dims: int) -> ConvLayer:
    """`(features, kernel_size[, stride[, padding]])` or a dict with those keys -> `ConvLayer`."""
    field = f"conv_layers[{index}]"
    keys = ("features", "kernel_size", "stride", "padding")
    if isinstance(entry, Mapping):
        unknown = set(entry) - set(keys)
        if unknown or not {"features", "kernel_size"} <= set(entry):
            raise ValueError(f"{model} field {field!r} has value {dict(entry)!r}; allowed keys: {', '.join(keys)} "
                             "(features and kernel_size required)")
        entry = tuple(entry.get(k, d) for k, d in zip(keys, (None, None, 1, "SAME")))
    entry = as_tuple(entry)
    if not isinstance(entry, tuple) or not 2 <= len(entry) <= 4:
        raise ValueError(f"{model} field {field!r} has value {entry!r}; allowed: "
                         "(features, kernel_size[, stride[, padding]]) or a dict with those keys")
    features, kernel, stride, padding = entry + (1, "SAME")[len(entry) - 2:]
    check_positive(model, f"{field}.features", features)
    return ConvLayer(features, _per_axis(model, f"{field}.kernel_size", kernel, dims),
                     _per_axis(model, f"{field}.stride", stride, dims),
                     _parse_padding(model, f"{field}.padding", padding, dims))


class _ConvNet(nn.Module):
    """Shared body of CNN1D and CNN2D; `spatial_dims` fixes the input rank."""

    # the training program compiles faster on a CPU with XLA's older fusion emitters and trains as
    # fast (`vhjax.compile_options.training_options`; measured for CNN1D and CNN2D)
    older_cpu_emitters = True
    conv_layers: Sequence[Any] = ()
    pooling: str | None = None
    pool_window: int = 2
    pool_stride: int | None = None
    head_widths: Sequence[int] = ()
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10
    conv_impl: str = "auto"

    spatial_dims = 1
    kind = "cnn"

    def __post_init__(self):
        set_normalized(self, "conv_layers", as_tuple(self.conv_layers))
        set_normalized(self, "head_widths", as_tuple(self.head_widths))
        if not isinstance(self.conv_layers, tuple) or not self.conv_layers:
            raise ValueError(f"{self.kind} field 'conv_layers' has value {self.conv_layers!r}; "
                             "allowed: a non-empty sequence of conv layers")
        self.parsed_layers()
        check_choice(self.kind, "pooling", self.pooling, POOLINGS)
        check_positive(self.kind, "pool_window", self.pool_window)
        if self.pool_stride is not None:
            check_positive(self.kind, "pool_stride", self.pool_stride)
        if not isinstance(self.head_widths, tuple):
            raise ValueError(f"{self.kind} field 'head_widths' has value {self.head_widths!r}; "
                             "allowed: a sequence of positive integers")
        check_positive_ints(self.kind, "head_widths", self.head_widths)
        get_activation(self.activation)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        check_positive(self.kind, "num_classes", self.num_classes)
        check_choice(self.kind, "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    def parsed_layers(self) -> list[ConvLayer]:
        return [parse_conv_layer(self.kind, i, entry, self.spatial_dims) for i, entry in enumerate(self.conv_layers)]

    def prepare_input(self, x: jax.Array) -> jax.Array:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"{self.kind} expects inputs of rank {self.spatial_dims + 2} (batch, spatial..., "
                             f"channels); got shape {tuple(x.shape)}")
        return x

    def conv(self, layer: ConvLayer, index: int, x: jax.Array) -> jax.Array:
        spatial = x.shape[1:-1]
        pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.strides)
        for n, k, (low, high) in zip(spatial, layer.kernel_size, pads):
            if n + low + high < k:
                raise ValueError(
                    f"{self.kind} field 'conv_layers[{index}].kernel_size' has value {k}, larger than the padded "
                    f"input length {n + low + high} (length {n} + padding {low}+{high}) at conv layer {index}")
        if resolve_conv_impl(self.conv_impl) == "patch":
            return PatchConv(layer.features, layer.kernel_size, layer.strides, pads, name=f"conv_{index}")(x)
        return nn.Conv(layer.features, layer.kernel_size, layer.strides, pads, name=f"conv_{index}")(x)

    def pool(self, index: int, x: jax.Array) -> jax.Array:
        if self.pooling is None:
            return x
        window = (self.pool_window,) * self.spatial_dims
        strides = (self.pool_stride or self.pool_window,) * self.spatial_dims
        if min(x.shape[1:-1]) < self.pool_window:
            raise ValueError(f"{self.kind} field 'pool_window' has value {self.pool_window}, larger than the "
                             f"spatial shape {tuple(x.shape[1:-1])} after conv layer {index}")
        pool = max_pool if self.pooling == "max" else avg_pool
        return pool(self.conv_impl, x, window, strides)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = self.prepare_input(x)
        for index, layer in enumerate(self.parsed_layers()):
            h = self.pool(index, act(self.conv(layer, index, h)))
            h = Dropout(name=f"conv_dropout_{index}")(h, rate, deterministic=not train)
        h = h.reshape(h.shape[0], -1)
        for index, width in enumerate(self.head_widths):
            h = act(nn.Dense(width, name=f"hidden_{index}")(h))
            h = Dropout(name=f"dropout_{index}")(h, rate, deterministic=not train)
        return nn.Dense(self.num_classes, name="head")(h)


class CNN1D(_ConvNet):
    """1-D CNN over sequences (N, L) or (N, L, C); a 2-D input gets a channel axis added.

    The MNIST-1D paper CNN is the default: Conv(25, k=5, s=2, p=1), Conv(25, 3, 2, 1),
    Conv(25, 3, 2, 1), relu after each, flatten (25 * 5 = 125 for L = 40), Dense(10).
    """

    conv_layers: Sequence[Any] = ((25, 5, 2, 1), (25, 3, 2, 1), (25, 3, 2, 1))

    spatial_dims = 1
    kind = "cnn1d"

    def prepare_input(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (2, 3):
            raise ValueError(f"cnn1d expects sequences (batch, length) or (batch, length, channels); "
                             f"got shape {tuple(x.shape)}")
        return add_channel_axis(x)


class CNN2D(_ConvNet):
    """2-D CNN over images (N, H, W, C): by default two 3x3 'SAME' convs (32, 64), 2x2 max pooling,
    a 128-unit hidden layer and a Dense head."""

    conv_layers: Sequence[Any] = ((32, 3, 1, "SAME"), (64, 3, 1, "SAME"))
    pooling: str | None = "max"
    head_widths: Sequence[int] = (128,)

    spatial_dims = 2
    kind = "cnn2d"


def mnist1d_cnn(**overrides: Any) -> CNN1D:
    """The MNIST-1D paper CNN (see `CNN1D`), 10 classes unless overridden."""
    defaults = {"conv_layers": ((25, 5, 2, 1), (25, 3, 2, 1), (25, 3, 2, 1)), "pooling": None,
                "head_widths": (), "activation": "relu", "num_classes": 10}
    return CNN1D(**{**defaults, **overrides})
