"""The model zoo: flax.linen classifiers registered by name.

Every model is called as `model.apply(variables, x, train=False, dropout_rate=None, rngs=...)`;
`dropout_rate=None` uses the model's own `dropout_rate`, an array overrides it (per-member dropout,
'dropout' RNG stream). Models without dropout accept and ignore both keywords.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from vhjax.models.batchnorm import BatchNorm, recompute_batch_stats
from vhjax.models.capsule import CapsNet, margin_loss
from vhjax.models.cnn import CNN1D, CNN2D, mnist1d_cnn
from vhjax.models.cost import flops_per_example
from vhjax.models.densenet import DenseNet, densenet121
from vhjax.models.generative import VAE, Autoencoder, ConvAutoencoder, Discriminator, Generator, elbo
from vhjax.models.gnn import GCN, MPNN
from vhjax.models.hybrid import CNNRNN, Cascade, CNNSelfAttention, CNNTransformer, Parallel, cascade, parallel
from vhjax.models.initializers import get_initializer
from vhjax.models.layers import ACTIVATIONS, Dropout
from vhjax.models.mlp import MLP, Linear, mnist1d_logistic, mnist1d_mlp
from vhjax.models.mobilenet import MobileNet, mobilenet_v1
from vhjax.models.resnet import FCN1D, ResNet, ResNet1D, resnet18, resnet20, resnet50
from vhjax.models.rnn import GRU, LSTM, mnist1d_gru
from vhjax.models.cell import NB201CellNet
from vhjax.models.searchable import MaskedMLP
from vhjax.models.seq2seq import RNNSeq2Seq, TransformerSeq2Seq, greedy_decode
from vhjax.models.simple_rnn import SimpleRNN
from vhjax.models.transformer import TransformerClassifier
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
    "nb201_cell_net": NB201CellNet,
    "mnist1d_logistic": mnist1d_logistic,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "mnist1d_gru": mnist1d_gru,
    # zoo extension: deep CNNs, time series, attention, seq2seq, generative, graph, capsule, hybrid
    "resnet": ResNet,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "fcn1d": FCN1D,
    "resnet1d": ResNet1D,
    "densenet": DenseNet,
    "densenet121": densenet121,
    "mobilenet": MobileNet,
    "mobilenet_v1": mobilenet_v1,
    "simple_rnn": SimpleRNN,
    "transformer": TransformerClassifier,
    "rnn_seq2seq": RNNSeq2Seq,
    "transformer_seq2seq": TransformerSeq2Seq,
    "autoencoder": Autoencoder,
    "conv_autoencoder": ConvAutoencoder,
    "vae": VAE,
    "gan_generator": Generator,
    "gan_discriminator": Discriminator,
    "gcn": GCN,
    "mpnn": MPNN,
    "capsnet": CapsNet,
    "cnn_rnn": CNNRNN,
    "cnn_transformer": CNNTransformer,
    "cnn_self_attention": CNNSelfAttention,
    "parallel": parallel,
    "cascade": cascade,
}.items():
    MODELS.add(_name, _factory)

__all__ = ["ACTIVATIONS", "CNN1D", "CNN2D", "Dropout", "GRU", "LSTM", "Linear", "MLP", "MODELS", "MaskedMLP", "NB201CellNet",
           "count_params", "get_model", "mnist1d_cnn", "mnist1d_gru", "mnist1d_logistic", "mnist1d_mlp",
           "output_shape", "register_model",
           # batch norm for small batches
           "BatchNorm", "recompute_batch_stats",
           # zoo extension
           "Autoencoder", "CNNRNN", "CNNSelfAttention", "CNNTransformer", "CapsNet", "Cascade", "ConvAutoencoder",
           "DenseNet", "Discriminator", "FCN1D", "GCN", "Generator", "MPNN", "MobileNet", "Parallel", "RNNSeq2Seq",
           "ResNet", "ResNet1D", "SimpleRNN", "TransformerClassifier", "TransformerSeq2Seq", "VAE", "cascade",
           "densenet121", "elbo", "flops_per_example", "get_initializer", "greedy_decode", "margin_loss",
           "mobilenet_v1", "parallel", "resnet18", "resnet20", "resnet50"]
