"""A NAS-Bench-201-style cell network whose cell is data: `arch` picks each edge's operation.

Every edge computes all five NAS-Bench-201 operations and mixes them with a weight row: a one-hot
row for a discrete cell (`arch={"ops": (6,) int}`) or softmax weights for DARTS
(`arch={"weights": (6, 5) float}`). Members with different cells therefore share one compiled
program under `jax.vmap`. Sequences `(N, L)` / `(N, L, C)` use 1-D convolutions, images
`(N, H, W, C)` 2-D ones. `conv_impl` ('auto', 'patch', 'xla'; see vhjax.models.patch_conv) picks
the convolution: by default 'patch' on CPU, XLA's native one elsewhere.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax.models.layers import Dropout, add_channel_axis
from vhjax.models.patch_conv import CONV_IMPLS, make_conv
from vhjax.models.slice_pool import avg_pool
from vhjax.models.utils import check_choice, check_positive, check_rate

# Same order as vhjax.search.space (models may not import search; a test checks they agree).
NASBENCH201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NASBENCH201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node)
NUM_EDGES = len(NASBENCH201_EDGES)
NUM_OPS = len(NASBENCH201_OPS)
EDGE_NAMES = tuple(f"{to}<-{frm}" for to, frm in NASBENCH201_EDGES)


def arch_from_decoded(decoded: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A decoded `nasbench201_space` candidate (`{'1<-0': op name, ...}`) -> `{"ops": (6,) int32}`."""
    ops = []
    for name in EDGE_NAMES:
        if name not in decoded:
            raise ValueError(f"decoded cell lacks edge {name!r}; got {dict(decoded)}; edges: {list(EDGE_NAMES)}")
        op = decoded[name]
        if op not in NASBENCH201_OPS:
            raise ValueError(f"edge {name!r} has op {op!r}; allowed: {list(NASBENCH201_OPS)}")
        ops.append(NASBENCH201_OPS.index(op))
    return {"ops": np.asarray(ops, np.int32)}


def decoded_from_ops(ops: Any) -> dict[str, str]:
    """Inverse of `arch_from_decoded`: `(6,)` op indices -> `{'1<-0': op name, ...}`."""
    ops = np.asarray(ops)
    if ops.shape != (NUM_EDGES,) or np.any(ops < 0) or np.any(ops >= NUM_OPS):
        raise ValueError(f"ops = {ops.tolist()}; allowed: {NUM_EDGES} integers in 0..{NUM_OPS - 1}")
    return {name: NASBENCH201_OPS[int(i)] for name, i in zip(EDGE_NAMES, ops)}


def edge_weights(arch: Mapping[str, Any]) -> jax.Array:
    """`(6, 5)` mixing weights of an arch: one-hot rows for `"ops"`, the given rows for `"weights"`."""
    if "ops" in arch:
        return jax.nn.one_hot(jnp.asarray(arch["ops"]), NUM_OPS, dtype=jnp.float32)
    return jnp.asarray(arch["weights"], jnp.float32)


class MixedEdge(nn.Module):
    """All five operations on one edge, summed with weights `w (5,)` (none, skip, 1x1, 3x3, avg-pool)."""

    channels: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        dims = x.ndim - 2
        conv1 = make_conv(self.conv_impl, self.channels, (1,) * dims, use_bias=False, name="conv1x1")
        conv3 = make_conv(self.conv_impl, self.channels, (3,) * dims, use_bias=False, name="conv3x3")
        pool = avg_pool(self.conv_impl, x, (3,) * dims, (1,) * dims, "SAME", count_include_pad=False)
        outputs = (jnp.zeros_like(x), x, conv1(nn.relu(x)), conv3(nn.relu(x)), pool)
        return sum(w[k].astype(x.dtype) * out for k, out in enumerate(outputs))


class Cell(nn.Module):
    """Four nodes: node j sums its mixed edges from every earlier node; node 3 is the output."""

    channels: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        nodes = [x]
        for to_node in (1, 2, 3):
            total = 0.0
            for edge, (target, source) in enumerate(NASBENCH201_EDGES):
                if target == to_node:
                    total = total + MixedEdge(self.channels, self.conv_impl, name=f"edge_{target}_{source}")(nodes[source],
                                                                                           weights[edge])
            nodes.append(total)
        return nodes[3]


class NB201CellNet(nn.Module):
    """Stem conv -> `num_cells` copies of one searchable cell -> global average pool -> Dense head.

    `arch = {"ops": (6,) int in 0..4}` (edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; ops in
    `NASBENCH201_OPS` order) or `{"weights": (6, 5) float}` (DARTS mixing). Without `arch` the full
    default cell (every edge `nor_conv_3x3`) is used. Cells share the architecture, not weights.
    """

    channels: int = 16
    num_cells: int = 1
    num_classes: int = 10
    dropout_rate: float = 0.0
    conv_impl: str = "auto"

    def __post_init__(self):
        for field in ("channels", "num_cells", "num_classes"):
            check_positive("NB201CellNet", field, getattr(self, field))
        check_rate("NB201CellNet", "dropout_rate", self.dropout_rate)
        check_choice("NB201CellNet", "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    def full_arch(self) -> dict[str, np.ndarray]:
        return {"ops": np.full(NUM_EDGES, NASBENCH201_OPS.index("nor_conv_3x3"), np.int32)}

    def check_arch(self, arch: Mapping[str, Any], member: int | None = None) -> None:
        """Raise ValueError naming the member and field if `arch` is not a valid cell."""
        who = "" if member is None else f"member {member}: "
        if not isinstance(arch, Mapping) or set(arch) not in ({"ops"}, {"weights"}):
            fields = sorted(arch) if isinstance(arch, Mapping) else arch
            raise ValueError(f"{who}arch has fields {fields!r}; expected ['ops'] or ['weights']")
        if "ops" in arch:
            ops = np.asarray(arch["ops"])
            if ops.shape != (NUM_EDGES,) or not np.issubdtype(ops.dtype, np.integer):
                raise ValueError(f"{who}arch 'ops' has shape {ops.shape} and dtype {ops.dtype}; "
                                 f"allowed: ({NUM_EDGES},) integers")
            if np.any(ops < 0) or np.any(ops >= NUM_OPS):
                raise ValueError(f"{who}arch 'ops' = {ops.tolist()}; allowed: 0..{NUM_OPS - 1} per edge "
                                 f"({', '.join(NASBENCH201_OPS)})")
        else:
            weights = np.asarray(arch["weights"])
            if weights.shape != (NUM_EDGES, NUM_OPS):
                raise ValueError(f"{who}arch 'weights' has shape {weights.shape}; allowed: ({NUM_EDGES}, {NUM_OPS})")
            if not np.all(np.isfinite(weights)):
                raise ValueError(f"{who}arch 'weights' has non-finite values; allowed: finite floats")

    def _prepare(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"NB201CellNet input has shape {tuple(x.shape)}; allowed: sequences (N, L) or "
                             "(N, L, C), images (N, H, W, C)")
        return add_channel_axis(x)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate=None, arch=None) -> jax.Array:
        x = self._prepare(x)
        dims = x.ndim - 2
        weights = edge_weights(self.full_arch() if arch is None else arch)
        if weights.shape != (NUM_EDGES, NUM_OPS):
            raise ValueError(f"arch gives edge weights of shape {weights.shape}; allowed: ({NUM_EDGES}, {NUM_OPS})")
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = make_conv(self.conv_impl, self.channels, (3,) * dims, name="stem")(x)
        for index in range(self.num_cells):
            h = Cell(self.channels, self.conv_impl, name=f"cell_{index}")(h, weights)
        h = h.mean(axis=tuple(range(1, 1 + dims)))
        h = Dropout()(h, rate, deterministic=not train)
        return nn.Dense(self.num_classes, name="head")(h)
