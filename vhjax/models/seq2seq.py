"""Sequence-to-sequence models over token ids, and greedy decoding.

Both models are called as `model.apply(variables, src, tgt_in, train=False, dropout_rate=None)`
with int token ids `src` (N, S), right-padded with `pad_id`, and `tgt_in` (N, T), which starts
with a BOS token (teacher forcing: the target shifted right), and return next-token logits
(N, T, tgt_vocab). Source padding is masked out of attention (and out of the encoder's recurrence).

- `RNNSeq2Seq`: bidirectional LSTM encoder; its final states initialise an LSTM decoder; Luong
  "general" attention of each decoder state over the encoder outputs; the attentional state
  `tanh(W [s_t; context_t])` feeds the output layer (Luong et al. 2015, without input feeding, so
  the decoder runs as one scan and stays causal).
- `TransformerSeq2Seq`: Transformer encoder and decoder (masked self-attention, cross-attention).

`greedy_decode` works for any model whose output at step t depends only on `tgt_in[:, :t+1]`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vhjax.models.activations import check_activation
from vhjax.models.layers import Dropout, keyword_field
from vhjax.models.transformer import TransformerDecoder, TransformerSizes, padding_mask, sinusoidal_positions
from vhjax.models.utils import check_positive, check_rate


class _Seq2Seq(nn.Module):
    """Vocabulary, padding and dropout fields (`pad_id`, `dropout_rate` keyword-only) of the seq2seq
    models, their checks, and the input check and dropout of a call."""

    src_vocab: int = 32
    tgt_vocab: int = 32
    pad_id: int = keyword_field(0)
    dropout_rate: float = keyword_field(0.0)

    kind = "seq2seq"

    def __post_init__(self):
        for field in ("src_vocab", "tgt_vocab"):
            check_positive(self.kind, field, getattr(self, field))
        pad_id = self.pad_id
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < self.src_vocab:
            raise ValueError(f"{self.kind} field 'pad_id' has value {pad_id!r}; allowed: a token id in "
                             f"[0, src_vocab = {self.src_vocab})")
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def dropout(self, src: jax.Array, tgt_in: jax.Array, train: bool, dropout_rate: Any):
        """Check the token ids; return the call's dropout rate and `drop(h, name)`, a dropout layer at it."""
        if src.ndim != 2 or tgt_in.ndim != 2 or src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"{self.kind} expects token ids src (batch, S) and tgt_in (batch, T); got shapes "
                             f"{tuple(src.shape)} and {tuple(tgt_in.shape)}")
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return rate, lambda h, name: Dropout(name=name)(h, rate, deterministic=not train)


class RNNSeq2Seq(_Seq2Seq):
    """BiLSTM encoder, LSTM decoder with attention; `(src, tgt_in) -> (N, T, tgt_vocab)` logits."""

    embed_dim: int = 32
    hidden_size: int = 32

    kind = "rnn_seq2seq"

    def __post_init__(self):
        check_positive("rnn_seq2seq", "embed_dim", self.embed_dim)
        check_positive("rnn_seq2seq", "hidden_size", self.hidden_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, src: jax.Array, tgt_in: jax.Array, *, train: bool = False,
                 dropout_rate: Any = None) -> jax.Array:
        _, drop = self.dropout(src, tgt_in, train, dropout_rate)
        hidden = self.hidden_size
        src_valid = src != self.pad_id
        lengths = jnp.maximum(src_valid.sum(axis=1), 1)
        source = drop(nn.Embed(self.src_vocab, self.embed_dim, name="src_embed")(src), "src_dropout")
        encoder = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(hidden, parent=None), parent=None),
                                   nn.RNN(nn.OptimizedLSTMCell(hidden, parent=None), parent=None),
                                   return_carry=True, name="encoder")
        ((c_fwd, h_fwd), (c_bwd, h_bwd)), memory = encoder(source, seq_lengths=lengths)  # memory (N, S, 2H)
        c0 = jnp.tanh(nn.Dense(hidden, name="init_c")(jnp.concatenate([c_fwd, c_bwd], -1)))
        h0 = jnp.tanh(nn.Dense(hidden, name="init_h")(jnp.concatenate([h_fwd, h_bwd], -1)))
        target = drop(nn.Embed(self.tgt_vocab, self.embed_dim, name="tgt_embed")(tgt_in), "tgt_dropout")
        states = nn.RNN(nn.OptimizedLSTMCell(hidden, parent=None), name="decoder")(target, initial_carry=(c0, h0))
        scores = jnp.einsum("ntd,nsd->nts", nn.Dense(2 * hidden, use_bias=False, name="attn")(states), memory)
        scores = jnp.where(src_valid[:, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = nn.softmax(scores, axis=-1)
        self.sow("intermediates", "attention", weights)
        context = jnp.einsum("nts,nsd->ntd", weights, memory)
        attentional = jnp.tanh(nn.Dense(hidden, name="combine")(jnp.concatenate([states, context], -1)))
        return nn.Dense(self.tgt_vocab, name="out")(drop(attentional, "out_dropout"))


class TransformerSeq2Seq(_Seq2Seq, TransformerSizes):
    """Transformer encoder-decoder; `(src, tgt_in) -> (N, T, tgt_vocab)` logits."""

    activation: str = "gelu"

    kind = "transformer_seq2seq"

    def __post_init__(self):
        check_activation(self.kind, "activation", self.activation)
        super().__post_init__()

    def embed(self, tokens: jax.Array, vocab: int, name: str) -> jax.Array:
        h = nn.Embed(vocab, self.width, name=name)(tokens) * jnp.sqrt(float(self.width))
        return h + sinusoidal_positions(tokens.shape[1], self.width)

    @nn.compact
    def __call__(self, src: jax.Array, tgt_in: jax.Array, *, train: bool = False,
                 dropout_rate: Any = None) -> jax.Array:
        rate, drop = self.dropout(src, tgt_in, train, dropout_rate)
        mlp_dim = self.mlp_dim or 2 * self.width
        src_valid, tgt_valid = src != self.pad_id, tgt_in != self.pad_id
        memory = self.encoder(self.activation)(
            drop(self.embed(src, self.src_vocab, "src_embed"), "src_dropout"), padding_mask(src_valid, src_valid),
            rate, train)
        decoded = TransformerDecoder(self.num_layers, self.num_heads, mlp_dim, self.activation, self.norm_epsilon,
                                     name="decoder")(
            drop(self.embed(tgt_in, self.tgt_vocab, "tgt_embed"), "tgt_dropout"), memory,
            target_mask=tgt_valid[:, None, None, :], memory_mask=src_valid[:, None, None, :], rate=rate, train=train)
        return nn.Dense(self.tgt_vocab, name="out")(decoded)


def greedy_decode(model: nn.Module, variables: Any, src: jax.Array, *, bos_id: int, max_len: int,
                  pad_id: int = 0) -> jax.Array:
    """Greedy decoding: (N, max_len) tokens, token t = argmax of the model's logits at step t given
    BOS and tokens < t. Re-runs the teacher-forced model per step (O(max_len^2) work, no cache),
    which is exact for any causal decoder and keeps one code path for training and decoding."""
    check_positive("greedy_decode", "max_len", max_len)
    batch = src.shape[0]
    tgt_in = jnp.full((batch, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)

    def step(t, carry):
        tgt_in, out = carry
        logits = model.apply(variables, src, tgt_in)
        token = jnp.argmax(lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), axis=-1).astype(jnp.int32)
        out = lax.dynamic_update_index_in_dim(out, token, t, axis=1)
        following = jnp.minimum(t + 1, max_len - 1)  # the last token feeds nothing
        updated = lax.dynamic_update_index_in_dim(tgt_in, token, following, axis=1)
        return jnp.where(t + 1 < max_len, updated, tgt_in), out

    _, out = lax.fori_loop(0, max_len, step, (tgt_in, jnp.zeros((batch, max_len), jnp.int32)))
    return out

