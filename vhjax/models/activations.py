"""Activation functions by name: sigmoid, tanh, relu, leaky_relu, prelu, swish, gelu, softmax.

All but `prelu` are parameter-free functions. `prelu` (He et al. 2015) learns its negative slope,
so `get_activation('prelu')` returns a new `flax.linen.PReLU` module: call it inside a module's
`@nn.compact` method (or `setup`) so that it binds there and owns its parameter.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax import validation

PRELU_SLOPE_INIT = 0.25  # He et al.'s initial negative slope

FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01
    "swish": nn.swish,            # x * sigmoid(x), a.k.a. SiLU
    "gelu": nn.gelu,              # tanh approximation, as in BERT/GPT
    "softmax": nn.softmax,        # over the last axis
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(sorted([*FUNCTIONS, "prelu"]))


def check_activation(model: str, field: str, name: Any, allowed: tuple[str, ...] = ACTIVATION_NAMES) -> None:
    """Raise ValueError naming `model`, `field` and the known names if `name` is not one of them."""
    validation.require(isinstance(name, str) and name in allowed, f"{model} field {field!r}", name,
                       "one of the activations " + ", ".join(allowed))


def get_activation(name: str, field: str = "activation", model: str = "model") -> Callable[[jax.Array], jax.Array]:
    """The activation called `name`; for 'prelu' a new `nn.PReLU` module (bind it in a compact method)."""
    check_activation(model, field, name)
    if name == "prelu":
        return nn.PReLU(negative_slope_init=PRELU_SLOPE_INIT)
    return FUNCTIONS[name]


class Activation(nn.Module):
    """An activation chosen by name as a module, for `setup`-style code: `Activation('prelu')(x)`."""

    kind: str = "relu"

    def __post_init__(self):
        check_activation("activation", "kind", self.kind)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "prelu":
            return nn.PReLU(negative_slope_init=PRELU_SLOPE_INIT, name="prelu")(x)
        return FUNCTIONS[self.kind](x)
