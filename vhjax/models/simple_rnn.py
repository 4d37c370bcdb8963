"""Simple (Elman) RNN classifier: h_t = f(W_xh x_t + b + W_hh h_{t-1}), f = tanh or relu.

Same options as the GRU/LSTM classifiers of rnn.py (layers, bidirectional via flax's
nn.Bidirectional, readout 'flatten' | 'last' | 'mean', dropout, Dense head); the cell is flax's
nn.SimpleCell (input kernel LeCun-normal, recurrent kernel orthogonal).
"""

from __future__ import annotations

import flax.linen as nn

from vhjax.models.activations import FUNCTIONS
from vhjax.models.rnn import _RecurrentClassifier
from vhjax.models.utils import check_choice

SIMPLE_RNN_ACTIVATIONS = ("tanh", "relu")


class SimpleRNN(_RecurrentClassifier):
    """Elman RNN classifier over sequences (N, L) or (N, L, C)."""

    activation: str = "tanh"

    kind = "simple_rnn"

    def __post_init__(self):
        check_choice(self.kind, "activation", self.activation, SIMPLE_RNN_ACTIVATIONS)
        super().__post_init__()

    def make_cell(self) -> nn.RNNCellBase:
        return nn.SimpleCell(self.hidden_size, activation_fn=FUNCTIONS[self.activation], parent=None)
