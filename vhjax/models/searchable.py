"""Searchable models built at maximum size: per-member architecture arrays mask the unused parts.

Members of one population can then differ in architecture inside one compiled program: the
architecture is data (`arch`, passed through TrainState.hparams), not a static shape.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax.models.layers import Dropout, get_activation


class MaskedMLP(nn.Module):
    """An MLP of `max_depth` hidden layers of `max_width` units; `arch` picks the active sub-network.

    `arch = {"width": (max_depth,) int, "depth": () int, "skip": (max_depth,) 0/1}`: layer i keeps
    its first `width[i]` units; layers at index >= depth are skipped (identity); `skip[i]` adds a
    residual connection around hidden layer i (i >= 1). Without `arch` the full network is used.
    A member's function equals that of the plain MLP with its active widths (the masked units
    contribute exactly zero), so gradients of inactive weights are zero too.
    """

    max_width: int = 64
    max_depth: int = 3
    num_classes: int = 10
    activation: str = "relu"
    dropout_rate: float = 0.0

    def full_arch(self) -> dict[str, np.ndarray]:
        return {"width": np.full(self.max_depth, self.max_width, np.int32), "depth": np.int32(self.max_depth),
                "skip": np.zeros(self.max_depth, np.int32)}

    def check_arch(self, arch: Mapping[str, Any], member: int | None = None) -> None:
        """Raise ValueError naming the member and field if `arch` does not fit the maximum shape."""
        who = "" if member is None else f"member {member}: "
        if set(arch) != {"width", "depth", "skip"}:
            raise ValueError(f"{who}arch has fields {sorted(arch)}; expected ['depth', 'skip', 'width']")
        width, depth, skip = (np.asarray(arch[k]) for k in ("width", "depth", "skip"))
        if width.shape != (self.max_depth,) or skip.shape != (self.max_depth,):
            raise ValueError(f"{who}arch 'width' and 'skip' need shape ({self.max_depth},); got "
                             f"{width.shape} and {skip.shape}")
        if np.any(width < 1) or np.any(width > self.max_width):
            raise ValueError(f"{who}arch 'width' = {width.tolist()}; allowed: 1..{self.max_width} per layer")
        if not 1 <= int(depth) <= self.max_depth:
            raise ValueError(f"{who}arch 'depth' = {int(depth)}; allowed: 1..{self.max_depth}")
        if not np.isin(skip, (0, 1)).all():
            raise ValueError(f"{who}arch 'skip' = {skip.tolist()}; allowed: 0 or 1 per layer")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate=None, arch=None) -> jax.Array:
        act = get_activation(self.activation)
        arch = self.full_arch() if arch is None else arch
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = x.reshape(x.shape[0], -1)
        units = jnp.arange(self.max_width)
        for layer in range(self.max_depth):
            z = act(nn.Dense(self.max_width, name=f"hidden_{layer}")(h))
            z = z * (units < arch["width"][layer]).astype(z.dtype)
            z = Dropout()(z, rate, deterministic=not train)
            if layer == 0:
                h = z
                continue
            z = z + arch["skip"][layer].astype(z.dtype) * h
            h = jnp.where(layer < arch["depth"], z, h)
        return nn.Dense(self.num_classes, name="head")(h)
