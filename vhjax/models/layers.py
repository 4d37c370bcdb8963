"""Layers shared by the model zoo."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import kw_only_dataclasses

from vhjax.models import activations


class Dropout(nn.Module):
    """Inverted dropout whose rate may be a traced array (one value per population member).

    flax's nn.Dropout takes the rate as a static Python float, so every distinct rate would
    compile a new program; here the rate is data, and `rate == 0` is exactly the identity.
    Uses the 'dropout' RNG stream.
    """

    @nn.compact
    def __call__(self, x: jax.Array, rate: float | jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(rate, (int, float)) and rate == 0):
            return x  # a static zero rate draws no random bits
        rate = jnp.asarray(rate, x.dtype)
        keep = 1.0 - rate
        mask = jax.random.uniform(self.make_rng("dropout"), x.shape) < keep
        return jnp.where(mask, x / jnp.maximum(keep, 1e-6), jnp.zeros_like(x))


# The parameter-free activations of vhjax.models.activations (the one table of names).
ACTIVATIONS = activations.FUNCTIONS


def get_activation(name: str, field: str = "activation"):
    """The parameter-free activation called `name`; ValueError naming `field` and the known names."""
    activations.check_activation("model", field, name, tuple(sorted(ACTIVATIONS)))
    return ACTIVATIONS[name]


def add_channel_axis(x: jax.Array) -> jax.Array:
    """(N, L) sequences -> (N, L, 1); (N, L, C) is returned unchanged."""
    return x[..., None] if x.ndim == 2 else x


def keyword_field(default: Any) -> Any:
    """A module field with a default, passed by keyword only: a base class can hold it while its
    subclasses still declare (positional) fields without defaults."""
    return kw_only_dataclasses.field(default=default, kw_only=True)
