"""Layers shared by the model zoo."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import kw_only_dataclasses

from vhjax.counter_hash import hashed_bits
from vhjax.models import activations


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A Bernoulli(`keep`) mask of `shape` from 8 random bits per unit, and the matching scale.

    One 32-bit word of `hashed_bits` gives four units (a quarter of a float draw per unit, and a
    counter hash instead of threefry: about 4x cheaper again; random bits dominated a small
    network's population step). `keep` is rounded to a multiple of 1/256; the scale is 1 / that
    rounded value, so the layer stays unbiased, and `keep == 1` keeps all.
    """
    size = math.prod(shape)
    words = hashed_bits(key, -(-size // 4))
    units = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size].reshape(shape)
    threshold = jnp.round(jnp.clip(keep, 0.0, 1.0) * 256.0)
    mask = units.astype(jnp.int32) < threshold.astype(jnp.int32)
    return mask, 256.0 / jnp.maximum(threshold, 1.0)


class Dropout(nn.Module):
    """Inverted dropout whose rate may be a traced array (one value per population member).

    flax's nn.Dropout takes the rate as a static Python float, so every distinct rate would
    compile a new program; here the rate is data, and `rate == 0` is exactly the identity.
    Masks come from `keep_mask` (8 random bits per unit: the rate is rounded to 1/256).
    Uses the 'dropout' RNG stream.
    """

    @nn.compact
    def __call__(self, x: jax.Array, rate: float | jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(rate, (int, float)) and rate == 0):
            return x  # a static zero rate draws no random bits
        mask, scale = keep_mask(self.make_rng("dropout"), x.shape, 1.0 - jnp.asarray(rate, jnp.float32))
        return jnp.where(mask, x * scale.astype(x.dtype), jnp.zeros_like(x))


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
