"""Hybrid and composite classifiers.

- `CNNRNN`: conv features, then a recurrent net over them. Sequences (N, L[, C]): 1-D convs, the
  RNN runs over the pooled positions. Images (N, H, W, C): 2-D convs, the RNN reads the feature
  map column by column (CRNN). Videos / image sequences (N, T, H, W, C): each frame is encoded by
  the same 2-D convs and global average pooling, the RNN runs over frames.
- `CNNTransformer`: conv features, the positions of the feature map become tokens for a
  Transformer encoder (sinusoidal positions in raster order), mean pooling.
- `CNNSelfAttention`: conv features, then a SAGAN-style self-attention block over all positions
  (x + gamma * attention(x), gamma starts at 0), global average pooling.
- `Parallel`: branches run side by side on the same input, outputs merged ('concat', 'sum',
  'mean'), activation, dropout, Dense head.
- `Cascade`: stages applied one after another, an activation between them.

Branches and stages are zoo models (their `num_classes` output is the feature width); build them
with the `parallel(branches=...)` / `cascade(stages=...)` factories from specs
`("cnn1d", {...kwargs})` or `{"model": "cnn1d", **kwargs}`, or pass modules. Every child is
called with the same `train` and `dropout_rate` keywords.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.activations import check_activation, get_activation
from vhjax.models.layers import Dropout, add_channel_axis, keyword_field
from vhjax.models.resnet import CONV_IMPLS, check_int_tuple, check_kernel_fits, conv
from vhjax.models.rnn import readout_features
from vhjax.models.transformer import TransformerSizes, sinusoidal_positions
from vhjax.models.slice_pool import max_pool
from vhjax.models.utils import check_choice, check_positive, check_rate

RNN_CELLS = ("lstm", "gru", "simple")
RNN_READOUTS = ("last", "mean", "flatten")
MERGES = ("concat", "sum", "mean")


class ConvStack(nn.Module):
    """Per entry of `features`: 'same' conv, activation, 2x max pooling (while the map allows it)."""

    features: Sequence[int]
    kernel_size: int = 3
    activation: str = "relu"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = x.ndim - 2
        for i, f in enumerate(self.features):
            x = get_activation(self.activation)(conv(self.conv_impl, f, (self.kernel_size,) * dims,
                                                     name=f"conv_{i}")(x))
            if min(x.shape[1:-1]) >= 2:
                x = max_pool(self.conv_impl, x, (2,) * dims, (2,) * dims)
        return x


def _spatial_input(model: str, x: jax.Array, kernel: int, allowed: tuple[int, ...]) -> jax.Array:
    """Add a channel axis to (N, L); check the rank is allowed and the kernel fits."""
    x = add_channel_axis(x)
    if x.ndim not in allowed:
        raise ValueError(f"{model} expects sequences (N, L[, C]) or images (N, H, W, C)"
                         f"{' or videos (N, T, H, W, C)' if 5 in allowed else ''}; got shape {tuple(x.shape)}")
    check_kernel_fits(model, "kernel_size", kernel, x.shape[-3:-1] if x.ndim == 5 else x.shape[1:-1])
    return x


def _head(h: jax.Array, num_classes: int, rate: Any, train: bool) -> jax.Array:
    h = Dropout(name="dropout")(h, rate, deterministic=not train)
    return nn.Dense(num_classes, name="head")(h)


class _ConvFeatureNet(nn.Module):
    """Fields (`activation`, `dropout_rate`, `num_classes`, `conv_impl` keyword-only) and checks of the
    conv-then-sequence classifiers, their input check, conv stack and head. `kind` names the model."""

    conv_features: Sequence[int] = (16, 32)
    kernel_size: int = 3
    activation: str = keyword_field("relu")
    dropout_rate: float = keyword_field(0.0)
    num_classes: int = keyword_field(10)
    conv_impl: str = keyword_field("auto")

    kind = "conv_feature_net"

    def __post_init__(self):
        check_int_tuple(self, self.kind, "conv_features")
        check_positive(self.kind, "kernel_size", self.kernel_size)
        check_activation(self.kind, "activation", self.activation)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        check_positive(self.kind, "num_classes", self.num_classes)
        check_choice(self.kind, "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    def features(self, x: jax.Array, allowed: tuple[int, ...] = (3, 4)) -> tuple[jax.Array, ConvStack]:
        """The checked input (a channel axis added to (N, L)) and the conv stack 'cnn'."""
        x = _spatial_input(self.kind, x, self.kernel_size, allowed)
        return x, ConvStack(self.conv_features, self.kernel_size, self.activation, self.conv_impl, name="cnn")

    def head(self, h: jax.Array, train: bool, dropout_rate: Any) -> jax.Array:
        """Dropout at `dropout_rate` (None: the field) and the Dense head."""
        return _head(h, self.num_classes, self.dropout_rate if dropout_rate is None else dropout_rate, train)


class CNNRNN(_ConvFeatureNet):
    """Conv features -> RNN ('lstm' | 'gru' | 'simple', optionally bidirectional) -> readout -> head."""

    rnn: str = "lstm"
    hidden_size: int = 32
    bidirectional: bool = False
    readout: str = "last"

    kind = "cnn_rnn"

    def __post_init__(self):
        check_choice("cnn_rnn", "rnn", self.rnn, RNN_CELLS)
        check_positive("cnn_rnn", "hidden_size", self.hidden_size)
        check_choice("cnn_rnn", "bidirectional", self.bidirectional, (False, True))
        check_choice("cnn_rnn", "readout", self.readout, RNN_READOUTS)
        super().__post_init__()

    def cell(self) -> nn.RNNCellBase:
        if self.rnn == "gru":
            return nn.GRUCell(self.hidden_size, parent=None)
        if self.rnn == "simple":
            return nn.SimpleCell(self.hidden_size, parent=None)
        return nn.OptimizedLSTMCell(self.hidden_size, parent=None)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x, stack = self.features(x, (3, 4, 5))
        if x.ndim == 5:  # videos: the same CNN on every frame, pooled to one vector per frame
            frames = stack(x.reshape(-1, *x.shape[2:]))
            seq = frames.mean(axis=(1, 2)).reshape(x.shape[0], x.shape[1], -1)
        elif x.ndim == 4:  # images: columns of the feature map, left to right
            h = stack(x)
            seq = h.transpose(0, 2, 1, 3).reshape(h.shape[0], h.shape[2], -1)
        else:
            seq = stack(x)
        if self.bidirectional:
            rnn = nn.Bidirectional(nn.RNN(self.cell(), parent=None), nn.RNN(self.cell(), parent=None), name="rnn")
        else:
            rnn = nn.RNN(self.cell(), name="rnn")
        return self.head(readout_features(rnn(seq), self.readout, self.hidden_size, self.bidirectional), train,
                         dropout_rate)


class CNNTransformer(_ConvFeatureNet, TransformerSizes):
    """Conv features -> tokens (one per feature-map position) -> Transformer encoder -> mean -> head."""

    ffn_activation: str = "gelu"

    kind = "cnn_transformer"

    def __post_init__(self):
        check_activation(self.kind, "ffn_activation", self.ffn_activation)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x, stack = self.features(x)
        h = stack(x)
        tokens = nn.Dense(self.width, name="project")(h.reshape(h.shape[0], -1, h.shape[-1]))
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.width)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        tokens = self.encoder(self.ffn_activation)(tokens, None, rate, train)
        return self.head(tokens.mean(axis=1), train, dropout_rate)


class SelfAttention(nn.Module):
    """SAGAN self-attention over all positions of (N, *spatial, C): query/key 1x1 projections to
    max(C // 8, 1) channels, value to C; returns x + gamma * attended, gamma initialised to 0."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        flat = x.reshape(x.shape[0], -1, channels)
        reduced = max(channels // 8, 1)
        q = nn.Dense(reduced, name="query")(flat)
        k = nn.Dense(reduced, name="key")(flat)
        v = nn.Dense(channels, name="value")(flat)
        weights = nn.softmax(jnp.einsum("npc,nqc->npq", q, k), axis=-1)
        self.sow("intermediates", "attention", weights)
        gamma = self.param("gamma", nn.initializers.zeros_init(), ())
        return x + gamma * jnp.einsum("npq,nqc->npc", weights, v).reshape(x.shape)


class CNNSelfAttention(_ConvFeatureNet):
    """Conv features -> self-attention block -> global average pooling -> head (sequences or images)."""

    kind = "cnn_self_attention"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        x, stack = self.features(x)
        h = SelfAttention(name="attention")(stack(x))
        return self.head(h.mean(axis=tuple(range(1, h.ndim - 1))), train, dropout_rate)


# --- composites of zoo models ---------------------------------------------------------------------

def _build(model: str, field: str, specs: Any) -> tuple[nn.Module, ...]:
    """Module instances from modules, `(name, kwargs)` pairs or `{'model': name, **kwargs}` dicts."""
    from vhjax.models import get_model  # the registry imports this module, so import it lazily

    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"{model} field {field!r} has value {specs!r}; allowed: a non-empty sequence of models, "
                         "(name, kwargs) pairs or {'model': name, ...} dicts")
    modules = []
    for i, spec in enumerate(specs):
        if isinstance(spec, nn.Module):
            modules.append(spec)
        elif isinstance(spec, Mapping) and "model" in spec:
            modules.append(get_model(spec["model"], **{k: v for k, v in spec.items() if k != "model"}))
        elif isinstance(spec, (list, tuple)) and len(spec) == 2 and isinstance(spec[0], str) \
                and isinstance(spec[1], Mapping):
            modules.append(get_model(spec[0], **spec[1]))
        else:
            raise ValueError(f"{model} field '{field}[{i}]' has value {spec!r}; allowed: a model, a (name, kwargs) "
                             "pair or a {'model': name, ...} dict")
    return tuple(modules)


class Parallel(nn.Module):
    """Branches on the same input, outputs (N, F_b) merged by 'concat' | 'sum' | 'mean' ('sum' and
    'mean' need equal widths), activation, dropout, Dense head."""

    branches: Sequence[nn.Module] = ()
    merge: str = "concat"
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10

    def __post_init__(self):
        if not isinstance(self.branches, tuple) or not self.branches or \
                not all(isinstance(b, nn.Module) for b in self.branches):
            raise ValueError(f"parallel field 'branches' has value {self.branches!r}; allowed: a non-empty tuple of "
                             "modules (use the `parallel(branches=...)` factory for specs)")
        check_choice("parallel", "merge", self.merge, MERGES)
        check_activation("parallel", "activation", self.activation)
        check_rate("parallel", "dropout_rate", self.dropout_rate)
        check_positive("parallel", "num_classes", self.num_classes)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        outputs = [b(x, train=train, dropout_rate=dropout_rate).reshape(x.shape[0], -1) for b in self.branches]
        if self.merge == "concat":
            h = jnp.concatenate(outputs, axis=-1)
        else:
            widths = [o.shape[-1] for o in outputs]
            if len(set(widths)) != 1:
                raise ValueError(f"parallel field 'merge' has value {self.merge!r} but the branches output widths "
                                 f"{widths}; allowed: 'concat', or equal widths")
            h = sum(outputs) / (len(outputs) if self.merge == "mean" else 1)
        h = get_activation(self.activation)(h)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return _head(h, self.num_classes, rate, train)


class Cascade(nn.Module):
    """Stages applied in turn, `activation` between consecutive stages; the last stage's output is
    the model's (so its `num_classes` is the model's)."""

    stages: Sequence[nn.Module] = ()
    activation: str = "relu"
    dropout_rate: float | None = None  # given to every stage when the caller passes none; None: their own

    def __post_init__(self):
        if not isinstance(self.stages, tuple) or not self.stages or \
                not all(isinstance(s, nn.Module) for s in self.stages):
            raise ValueError(f"cascade field 'stages' has value {self.stages!r}; allowed: a non-empty tuple of "
                             "modules (use the `cascade(stages=...)` factory for specs)")
        check_activation("cascade", "activation", self.activation)
        check_rate("cascade", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = x
        for i, stage in enumerate(self.stages):
            if i:
                h = get_activation(self.activation)(h)
            h = stage(h, train=train, dropout_rate=rate)
        return h


def parallel(branches: Sequence[Any], **fields: Any) -> Parallel:
    """`Parallel` from branch specs (modules, `(name, kwargs)` or `{'model': name, ...}`)."""
    return Parallel(branches=_build("parallel", "branches", branches), **fields)


def cascade(stages: Sequence[Any], **fields: Any) -> Cascade:
    """`Cascade` from stage specs (modules, `(name, kwargs)` or `{'model': name, ...}`)."""
    return Cascade(stages=_build("cascade", "stages", stages), **fields)
