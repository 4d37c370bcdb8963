"""Transformer building blocks (Vaswani et al. 2017) and a sequence classifier.

Layers are pre-norm (`x + drop(sublayer(LayerNorm(x)))`, as in ViT/GPT-2, which trains without
warm-up at small scale); stacks end with a LayerNorm. Every LayerNorm adds `norm_epsilon` (a field
of the encoder, decoder and models; default 1e-6, flax's) to the variance. Attention is flax's
`MultiHeadDotProductAttention` (heads split `width`, concatenated, projected); the feed-forward
sublayer is Dense(mlp_dim) -> GELU (or any named activation) -> Dense(width). Dropout (vhjax's,
rate may be a per-member array) acts on each sublayer's output and the FFN hidden layer; there is
no attention-probability dropout. Positions are added as fixed sine/cosine encodings, computed
for the input's length, so no maximum length is needed.

Masks are boolean, broadcastable to (N, heads, L_query, L_key), True where attention is allowed.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax.models.activations import check_activation, get_activation
from vhjax.models.layers import Dropout, add_channel_axis, keyword_field
from vhjax.models.utils import check_choice, check_number, check_positive, check_rate

POOLINGS = ("mean", "cls")
DEFAULT_LAYER_NORM_EPSILON = 1e-6  # flax's nn.LayerNorm default


def sinusoidal_positions(length: int, width: int) -> jax.Array:
    """(length, width) encodings: PE[p, 2i] = sin(p / 10000^(2i/width)), PE[p, 2i+1] = cos(same)."""
    positions = np.arange(length)[:, None]
    rates = 1.0 / 10000.0 ** (np.arange(0, width, 2) / width)
    table = np.zeros((length, width), np.float32)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: width // 2])
    return jnp.asarray(table)


def causal_mask(length: int) -> jax.Array:
    """(1, 1, L, L): position t may attend to positions <= t only."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
    """(N, Lq), (N, Lk) validity -> (N, 1, Lq, Lk) mask of valid query/key pairs."""
    return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def check_heads(model: str, width: Any, num_heads: Any) -> None:
    """`num_heads` must divide `width` (each head gets width / num_heads features)."""
    check_positive(model, "width", width)
    check_positive(model, "num_heads", num_heads)
    if width % num_heads:
        raise ValueError(f"{model} field 'num_heads' has value {num_heads}; allowed: a divisor of "
                         f"'width' = {width}")




class FeedForward(nn.Module):
    """Dense(mlp_dim) -> activation -> dropout -> Dense(width of the input)."""

    mlp_dim: int
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array, rate: Any, train: bool) -> jax.Array:
        h = get_activation(self.activation)(nn.Dense(self.mlp_dim, name="hidden")(x))
        h = Dropout(name="dropout")(h, rate, deterministic=not train)
        return nn.Dense(x.shape[-1], name="out")(h)


def _attention(num_heads: int, width: int, name: str) -> nn.MultiHeadDotProductAttention:
    return nn.MultiHeadDotProductAttention(num_heads=num_heads, qkv_features=width, out_features=width,
                                           deterministic=True, name=name)


class EncoderLayer(nn.Module):
    """x + drop(self-attention(LN x)); then x + drop(FFN(LN x))."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, rate: Any, train: bool) -> jax.Array:
        drop = lambda h, name: Dropout(name=name)(h, rate, deterministic=not train)
        h = nn.LayerNorm(self.norm_epsilon, name="ln_attn")(x)
        x = x + drop(_attention(self.num_heads, x.shape[-1], "attn")(h, h, mask=mask), "drop_attn")
        h = nn.LayerNorm(self.norm_epsilon, name="ln_ffn")(x)
        return x + drop(FeedForward(self.mlp_dim, self.activation, name="ffn")(h, rate, train), "drop_ffn")


class DecoderLayer(nn.Module):
    """x + drop(masked self-attention); x + drop(cross-attention to `memory`); x + drop(FFN)."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, self_mask: jax.Array | None, cross_mask: jax.Array | None,
                 rate: Any, train: bool) -> jax.Array:
        drop = lambda h, name: Dropout(name=name)(h, rate, deterministic=not train)
        width = x.shape[-1]
        h = nn.LayerNorm(self.norm_epsilon, name="ln_self")(x)
        x = x + drop(_attention(self.num_heads, width, "self_attn")(h, h, mask=self_mask), "drop_self")
        h = nn.LayerNorm(self.norm_epsilon, name="ln_cross")(x)
        x = x + drop(_attention(self.num_heads, width, "cross_attn")(h, memory, mask=cross_mask), "drop_cross")
        h = nn.LayerNorm(self.norm_epsilon, name="ln_ffn")(x)
        return x + drop(FeedForward(self.mlp_dim, self.activation, name="ffn")(h, rate, train), "drop_ffn")


class TransformerEncoder(nn.Module):
    """`num_layers` encoder layers over (N, L, width) embeddings (positions already added) + final LN."""

    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64
    activation: str = "gelu"
    norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, rate: Any = 0.0,
                 train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.activation, self.norm_epsilon,
                             name=f"layer_{i}")(x, mask, rate, train)
        return nn.LayerNorm(self.norm_epsilon, name="ln_out")(x)


class TransformerDecoder(nn.Module):
    """`num_layers` decoder layers: causal self-attention (and `target_mask`), cross-attention to
    `memory` (under `memory_mask`), FFN; final LN. (N, T, width) -> (N, T, width)."""

    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64
    activation: str = "gelu"
    norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, target_mask: jax.Array | None = None,
                 memory_mask: jax.Array | None = None, rate: Any = 0.0, train: bool = False) -> jax.Array:
        self_mask = causal_mask(x.shape[1])
        if target_mask is not None:
            self_mask = self_mask & target_mask
        for i in range(self.num_layers):
            x = DecoderLayer(self.num_heads, self.mlp_dim, self.activation, self.norm_epsilon, name=f"layer_{i}")(
                x, memory, self_mask, memory_mask, rate, train)
        return nn.LayerNorm(self.norm_epsilon, name="ln_out")(x)


class TransformerSizes(nn.Module):
    """The encoder sizes shared by the Transformer models (keyword-only fields), checked after the
    subclass's own checks, and the encoder they build. `kind` names the model in error messages."""

    width: int = keyword_field(32)
    num_heads: int = keyword_field(4)
    num_layers: int = keyword_field(2)
    mlp_dim: int | None = keyword_field(None)  # None: 2 * width
    norm_epsilon: float = keyword_field(DEFAULT_LAYER_NORM_EPSILON)  # every LayerNorm's variance epsilon

    kind = "transformer"

    def __post_init__(self):
        check_heads(self.kind, self.width, self.num_heads)
        check_positive(self.kind, "num_layers", self.num_layers)
        if self.mlp_dim is not None:
            check_positive(self.kind, "mlp_dim", self.mlp_dim)
        check_number(self.kind, "norm_epsilon", self.norm_epsilon, 0.0, low_inclusive=False)
        super().__post_init__()

    def encoder(self, activation: str, name: str = "encoder") -> TransformerEncoder:
        """A `TransformerEncoder` of these sizes (and `norm_epsilon`) whose feed-forward layers use `activation`."""
        return TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim or 2 * self.width, activation,
                                  self.norm_epsilon, name=name)


def embed_sequence(x: jax.Array, width: int, vocab_size: int | None, model: str) -> jax.Array:
    """Tokens (N, L) -> Embed * sqrt(width), or values (N, L[, C]) -> Dense(width); plus positions.

    Call from a compact method: the embedding binds to the calling module as 'embed'.
    """
    if vocab_size is not None:
        if x.ndim != 2:
            raise ValueError(f"{model} with 'vocab_size' expects token ids (batch, length); got shape {tuple(x.shape)}")
        h = nn.Embed(vocab_size, width, name="embed")(x.astype(jnp.int32)) * jnp.sqrt(float(width))
    else:
        if x.ndim not in (2, 3):
            raise ValueError(f"{model} expects sequences (batch, length) or (batch, length, channels); "
                             f"got shape {tuple(x.shape)}")
        h = nn.Dense(width, name="embed")(add_channel_axis(x))
    return h + sinusoidal_positions(h.shape[1], width)


class TransformerClassifier(TransformerSizes):
    """Transformer-encoder classifier for sequences -> (N, num_classes).

    Inputs are values (N, L) or (N, L, C) (projected by a Dense) or, with `vocab_size`, token ids
    (N, L) (embedded; tokens equal to `pad_id` are masked out of attention and pooling). Readout:
    'mean' over valid positions, or 'cls' (a learned token prepended to the sequence).
    """

    num_classes: int = 10
    activation: str = "gelu"
    pooling: str = "mean"
    vocab_size: int | None = None
    pad_id: int | None = None
    dropout_rate: float = 0.0

    def __post_init__(self):
        check_activation("transformer", "activation", self.activation)
        check_rate("transformer", "dropout_rate", self.dropout_rate)
        check_positive("transformer", "num_classes", self.num_classes)
        check_choice("transformer", "pooling", self.pooling, POOLINGS)
        if self.vocab_size is not None:
            check_positive("transformer", "vocab_size", self.vocab_size)
        if self.pad_id is not None and self.vocab_size is None:
            raise ValueError(f"transformer field 'pad_id' has value {self.pad_id!r}; allowed: None unless "
                             "'vocab_size' is set (token inputs)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = embed_sequence(x, self.width, self.vocab_size, "transformer")
        valid = jnp.ones(h.shape[:2], bool) if self.pad_id is None else x != self.pad_id
        if self.pooling == "cls":
            cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.width))
            h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, self.width)), h], axis=1)
            valid = jnp.concatenate([jnp.ones((h.shape[0], 1), bool), valid], axis=1)
        h = Dropout(name="embed_dropout")(h, rate, deterministic=not train)
        mask = None if self.pad_id is None else padding_mask(valid, valid)
        h = self.encoder(self.activation)(h, mask, rate, train)
        if self.pooling == "cls":
            h = h[:, 0]
        else:
            weights = valid[..., None].astype(h.dtype)
            h = (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return nn.Dense(self.num_classes, name="head")(h)
