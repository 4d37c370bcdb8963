"""Graph neural networks over padded dense adjacency: GCN and message passing.

Called as `model.apply(variables, x, adj, node_mask=None, train=False, dropout_rate=None)` with
node features `x` (N, V, F) (or (N, V), one feature per node), adjacency `adj` (N, V, V)
(`adj[n, i, j] != 0`: an edge j -> i, weighted by its value; symmetric for undirected graphs)
and `node_mask` (N, V), True for real nodes, so graphs of up to V nodes share one shape (padding
nodes get no edges and are left out of the readout; None: every node is real).

- `GCN` (Kipf & Welling 2017): H' = act(D^-1/2 (A + I) D^-1/2 H W).
- `MPNN` (Gilmer et al. 2017): messages m_ij = act(W_m [h_i; h_j] + b) along edges, aggregated
  by sum / mean / max, update h_i' = act(W_u [h_i; agg_i] + b).

Readout: 'mean', 'sum' or 'max' over real nodes -> graph logits (N, num_classes); 'node' ->
per-node logits (N, V, num_classes). Layers are permutation equivariant and readouts invariant.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.activations import check_activation, get_activation
from vhjax.models.layers import Dropout
from vhjax.models.resnet import check_int_tuple
from vhjax.models.utils import check_choice, check_positive, check_rate

READOUTS = ("mean", "sum", "max", "node")
AGGREGATIONS = ("sum", "mean", "max")


def prepare_graph(model: str, x: jax.Array, adj: jax.Array, node_mask: jax.Array | None):
    """Check shapes; return x (N, V, F), adj (N, V, V) float with padding rows/columns zeroed, mask (N, V)."""
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or adj.shape != (x.shape[0], x.shape[1], x.shape[1]):
        raise ValueError(f"{model} expects node features (batch, nodes[, features]) and adjacency (batch, nodes, "
                         f"nodes); got shapes {tuple(x.shape)} and {tuple(adj.shape)}")
    mask = jnp.ones(x.shape[:2], bool) if node_mask is None else node_mask.astype(bool)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"{model} expects node_mask of shape {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
    pair = mask[:, :, None] & mask[:, None, :]
    return x, jnp.where(pair, adj, 0).astype(x.dtype), mask


def normalized_adjacency(adj: jax.Array, mask: jax.Array) -> jax.Array:
    """D^-1/2 (A + I) D^-1/2 with self-loops on real nodes only; padding nodes get all-zero rows."""
    eye = jnp.eye(adj.shape[-1], dtype=adj.dtype)[None] * mask[:, :, None].astype(adj.dtype)
    a = adj + eye
    degree = a.sum(-1)
    inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1e-12)), 0.0)
    return inv_sqrt[:, :, None] * a * inv_sqrt[:, None, :]


class GCNLayer(nn.Module):
    """H' = Â H W + b with Â the normalised adjacency (pass it in, computed once per graph)."""

    features: int

    @nn.compact
    def __call__(self, h: jax.Array, a_hat: jax.Array) -> jax.Array:
        return a_hat @ nn.Dense(self.features, use_bias=False, name="weight")(h) + \
            self.param("bias", nn.initializers.zeros_init(), (self.features,))


class MessagePassingLayer(nn.Module):
    """m_ij = act(W_m [h_i; h_j]), agg_i = aggregation over edges j -> i of A_ij m_ij,
    h_i' = act(W_u [h_i; agg_i]). Memory is O(V^2 * features) per graph."""

    features: int
    aggregation: str = "sum"
    activation: str = "relu"

    @nn.compact
    def __call__(self, h: jax.Array, adj: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        # W_m [h_i; h_j] + b = (W_i h_i + b) + W_j h_j: computed per node, broadcast over pairs
        w_i = nn.Dense(self.features, name="message_receiver")(h)
        w_j = nn.Dense(self.features, use_bias=False, name="message_sender")(h)
        messages = act(w_i[:, :, None, :] + w_j[:, None, :, :])  # (N, V_i, V_j, F)
        edges = (adj != 0)[..., None]
        weighted = adj[..., None] * messages
        if self.aggregation == "max":
            agg = jnp.where(edges, weighted, -jnp.inf).max(axis=2)
            agg = jnp.where(edges.any(axis=2), agg, 0.0)
        else:
            agg = weighted.sum(axis=2)
            if self.aggregation == "mean":
                agg = agg / jnp.maximum(edges.sum(axis=2), 1)
        return act(nn.Dense(self.features, name="update")(jnp.concatenate([h, agg], -1)))


def pool_nodes(h: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
    """(N, V, F) node states -> (N, F) over real nodes ('node': unchanged, padding zeroed)."""
    weights = mask[..., None].astype(h.dtype)
    if kind == "node":
        return h * weights
    if kind == "sum":
        return (h * weights).sum(1)
    if kind == "mean":
        return (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    return jnp.where(mask[..., None], h, -jnp.inf).max(1)


class _GraphNet(nn.Module):
    """Shared fields, checks and head of GCN and MPNN."""

    widths: Sequence[int] = (32, 32)
    num_classes: int = 10
    activation: str = "relu"
    readout: str = "mean"
    dropout_rate: float = 0.0

    kind = "graph_net"

    def __post_init__(self):
        check_int_tuple(self, self.kind, "widths")
        check_positive(self.kind, "num_classes", self.num_classes)
        check_activation(self.kind, "activation", self.activation)
        check_choice(self.kind, "readout", self.readout, READOUTS)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def layer(self, index: int, width: int, h: jax.Array, adj: jax.Array, mask: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, adj: jax.Array, node_mask: jax.Array | None = None, *, train: bool = False,
                 dropout_rate: Any = None) -> jax.Array:
        h, adj, mask = prepare_graph(self.kind, x, adj, node_mask)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        for i, width in enumerate(self.widths):
            h = self.layer(i, width, h, adj, mask)
            h = Dropout(name=f"dropout_{i}")(h, rate, deterministic=not train)
        return nn.Dense(self.num_classes, name="head")(pool_nodes(h, mask, self.readout))


class GCN(_GraphNet):
    """Graph convolutional network: one GCN layer + activation per width, readout, Dense head."""

    kind = "gcn"

    def layer(self, index: int, width: int, h: jax.Array, adj: jax.Array, mask: jax.Array) -> jax.Array:
        a_hat = normalized_adjacency(adj, mask)
        return get_activation(self.activation)(GCNLayer(width, name=f"gcn_{index}")(h, a_hat))


class MPNN(_GraphNet):
    """Message-passing network: one message-passing layer per width, readout, Dense head."""

    aggregation: str = "sum"

    kind = "mpnn"

    def __post_init__(self):
        check_choice(self.kind, "aggregation", self.aggregation, AGGREGATIONS)
        super().__post_init__()

    def layer(self, index: int, width: int, h: jax.Array, adj: jax.Array, mask: jax.Array) -> jax.Array:
        return MessagePassingLayer(width, self.aggregation, self.activation, name=f"mp_{index}")(h, adj)
