"""Fully connected classifiers: logistic regression and the MLP (optionally residual)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from vhjax.models.layers import ACTIVATIONS, Dropout, get_activation
from vhjax.models.utils import as_tuple, check_positive, check_positive_ints, check_rate, set_normalized


class Linear(nn.Module):
    """Logistic regression: flatten, one Dense to `num_classes` logits."""

    num_classes: int = 10

    def __post_init__(self):
        check_positive("linear", "num_classes", self.num_classes)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        del train, dropout_rate  # no dropout in a linear model
        return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """Flatten, hidden Dense layers of `widths`, a Dense head to `num_classes`.

    Hidden layer i computes `z = dropout(act(W_i h))`. With `residual=True` a hidden layer whose
    width equals the previous one's adds its input: `h = h + z`; otherwise `h = z`. So the
    MNIST-1D paper MLP, `h = relu(W1 x); h = h + relu(W2 h); out = W3 h`, is
    `MLP(widths=(100, 100), residual=True)`.
    """

    widths: Sequence[int] = (100,)
    num_classes: int = 10
    activation: str = "relu"
    residual: bool = False
    dropout_rate: float = 0.0

    def __post_init__(self):
        set_normalized(self, "widths", as_tuple(self.widths))
        if not isinstance(self.widths, tuple):
            raise ValueError(f"mlp field 'widths' has value {self.widths!r}; allowed: a sequence of positive integers")
        check_positive_ints("mlp", "widths", self.widths)
        check_positive("mlp", "num_classes", self.num_classes)
        get_activation(self.activation)
        check_rate("mlp", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = x.reshape(x.shape[0], -1)
        for index, width in enumerate(self.widths):
            z = act(nn.Dense(width, name=f"hidden_{index}")(h))
            z = Dropout(name=f"dropout_{index}")(z, rate, deterministic=not train)
            h = h + z if self.residual and index > 0 and h.shape[-1] == width else z
        return nn.Dense(self.num_classes, name="head")(h)


def mnist1d_logistic(**overrides: Any) -> Linear:
    """The MNIST-1D paper's logistic regression: 40 inputs -> 10 logits."""
    return Linear(**{"num_classes": 10, **overrides})


def mnist1d_mlp(**overrides: Any) -> MLP:
    """The MNIST-1D paper MLP: 40 -> 100 (relu) -> +100 (relu, residual) -> 10."""
    return MLP(**{"widths": (100, 100), "residual": True, "activation": "relu", "num_classes": 10, **overrides})
