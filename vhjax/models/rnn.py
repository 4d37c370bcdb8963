"""Recurrent classifiers (GRU, LSTM) over sequences (N, L) or (N, L, C), on flax's nn.RNN.

`num_layers` recurrent layers of `hidden_size` units (each optionally bidirectional: a forward and
a backward nn.RNN whose outputs are concatenated per time step, backward outputs kept in input
order), then a readout of the last layer's outputs:
  'flatten': all time steps' outputs, flattened (N, L * H * directions) — the MNIST-1D paper GRU;
  'last':    the final state of each direction (forward at step L-1, backward at step 0);
  'mean':    the mean over time steps;
then dropout and a Dense to `num_classes`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.layers import Dropout, add_channel_axis
from vhjax.models.utils import check_choice, check_positive, check_rate

READOUTS = ("flatten", "last", "mean")


def readout_features(outputs: jax.Array, readout: str, hidden_size: int, bidirectional: bool) -> jax.Array:
    """(N, L, H * directions) recurrent outputs -> (N, features) by `readout`."""
    if readout == "flatten":
        return outputs.reshape(outputs.shape[0], -1)
    if readout == "mean":
        return outputs.mean(axis=1)
    if not bidirectional:
        return outputs[:, -1]
    return jnp.concatenate([outputs[:, -1, :hidden_size], outputs[:, 0, hidden_size:]], axis=-1)


class _RecurrentClassifier(nn.Module):
    """Shared body of GRU and LSTM; subclasses say which cell."""

    hidden_size: int = 6
    num_layers: int = 1
    bidirectional: bool = False
    readout: str = "flatten"
    dropout_rate: float = 0.0
    num_classes: int = 10

    kind = "rnn"

    def __post_init__(self):
        check_positive(self.kind, "hidden_size", self.hidden_size)
        check_positive(self.kind, "num_layers", self.num_layers)
        check_choice(self.kind, "bidirectional", self.bidirectional, (False, True))
        check_choice(self.kind, "readout", self.readout, READOUTS)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        check_positive(self.kind, "num_classes", self.num_classes)
        super().__post_init__()

    def make_cell(self) -> nn.RNNCellBase:
        raise NotImplementedError

    def recurrent_layer(self, index: int) -> nn.Module:
        if not self.bidirectional:
            return nn.RNN(self.make_cell(), name=f"rnn_{index}")
        forward, backward = nn.RNN(self.make_cell(), parent=None), nn.RNN(self.make_cell(), parent=None)
        return nn.Bidirectional(forward, backward, name=f"rnn_{index}")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        h = add_channel_axis(x)
        if h.ndim != 3:
            raise ValueError(f"{self.kind} expects sequences (batch, length) or (batch, length, channels); "
                             f"got shape {tuple(x.shape)}")
        for index in range(self.num_layers):
            h = self.recurrent_layer(index)(h)
        h = readout_features(h, self.readout, self.hidden_size, self.bidirectional)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = Dropout(name="dropout")(h, rate, deterministic=not train)
        return nn.Dense(self.num_classes, name="head")(h)


class GRU(_RecurrentClassifier):
    """GRU classifier (flax nn.GRUCell: r, z, n gates; input Dense with bias, recurrent without,
    except the candidate's recurrent Dense `hn`, which has one)."""

    kind = "gru"

    def make_cell(self) -> nn.RNNCellBase:
        return nn.GRUCell(self.hidden_size, parent=None)


class LSTM(_RecurrentClassifier):
    """LSTM classifier (flax nn.OptimizedLSTMCell)."""

    kind = "lstm"

    def make_cell(self) -> nn.RNNCellBase:
        return nn.OptimizedLSTMCell(self.hidden_size, parent=None)


def mnist1d_gru(**overrides: Any) -> GRU:
    """The MNIST-1D paper GRU: bidirectional, hidden 6, all 40 steps' outputs flattened (480) -> 10."""
    return GRU(**{"hidden_size": 6, "bidirectional": True, "readout": "flatten", "num_classes": 10, **overrides})
