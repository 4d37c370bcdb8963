"""Bring your own model, data and loss: the README example, and errors that name the contract."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from vhjax import TrainConfig, fit
from vhjax.population import fit_population


class MyNet(nn.Module):  # no train= or dropout_rate= keywords: vhjax passes only what __call__ takes
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


def my_loss(logits, labels):  # (outputs, labels) -> one loss per example
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def test_readme_example_own_module_arrays_and_loss():
    x, y = load_digits(return_X_y=True)
    config = TrainConfig(model=MyNet(), dataset={"train": (x[:1500] / 16, y[:1500]), "test": (x[1500:] / 16, y[1500:])},
                         loss=my_loss, learning_rate=3e-3, batch_size=64, steps=300, eval_every=100)
    result = fit(config, verbose=False)
    assert result.metrics["eval"]["accuracy"] > 0.85
    population = fit_population(config, [{"learning_rate": lr} for lr in (1e-4, 3e-3)], verbose=False)
    assert population.members[1]["eval"]["accuracy"] > population.members[0]["eval"]["accuracy"] + 0.2


def test_arrays_with_a_held_out_slice():
    x, y = load_digits(return_X_y=True)
    config = TrainConfig(model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, dataset=(x / 16, y),
                         train_split="train[:80%]", eval_split="train[80%:]", steps=60, eval_every=60, batch_size=32)
    result = fit(config, verbose=False)
    assert 0.2 < result.metrics["eval"]["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="base split 'test' is unknown; available splits: train"):
        fit(TrainConfig(model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, dataset=(x, y)),
            verbose=False)


def test_a_module_that_does_not_fit_names_the_contract():
    class Wrong(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    x, y = load_digits(return_X_y=True)
    with pytest.raises(ValueError, match=r"outputs shape \(batch, 3\) but dataset .* has 10 classes"):
        fit(TrainConfig(model=Wrong(), dataset={"train": (x, y), "test": (x, y)}), verbose=False)
    with pytest.raises(TypeError, match="a registered model name .* or a flax.linen.Module"):
        fit(TrainConfig(model=object(), dataset={"train": (x, y), "test": (x, y)}), verbose=False)
