"""The model zoo: flax.linen classifiers registered by name.

Every model is called as `model.apply(variables, x, train=False, dropout_rate=None, rngs=...)`;
`dropout_rate=None` uses the model's own `dropout_rate`, an array overrides it (per-member dropout,
'dropout' RNG stream). Models without dropout accept and ignore both keywords.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from vhjax.models.cnn import CNN1D, CNN2D, mnist1d_cnn
from vhjax.models.layers import ACTIVATIONS, Dropout
from vhjax.models.mlp import MLP, Linear, mnist1d_logistic, mnist1d_mlp
from vhjax.models.rnn import GRU, LSTM, mnist1d_gru
from vhjax.models.searchable import MaskedMLP
from vhjax.models.utils import count_params, output_shape
from vhjax.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a flax Module class (or a function returning a module) under `name`."""
    return MODELS.register(name)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as `name` with `kwargs` (its fields); unknown names/fields raise."""
    factory = MODELS.get(name)
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise TypeError(f"model {name!r} got invalid arguments {sorted(kwargs)}: {error}") from error


for _name, _factory in {
    "linear": Linear,
    "mlp": MLP,
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "gru": GRU,
    "lstm": LSTM,
    "masked_mlp": MaskedMLP,
    "mnist1d_logistic": mnist1d_logistic,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "mnist1d_gru": mnist1d_gru,
}.items():
    MODELS.add(_name, _factory)

__all__ = ["ACTIVATIONS", "CNN1D", "CNN2D", "Dropout", "GRU", "LSTM", "Linear", "MLP", "MODELS", "MaskedMLP",
           "count_params", "get_model", "mnist1d_cnn", "mnist1d_gru", "mnist1d_logistic", "mnist1d_mlp",
           "output_shape", "register_model"]
