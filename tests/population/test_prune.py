"""Magnitude pruning (global and layer-wise) and fine-tuning with pruned weights held at zero."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.models.pruning import apply_masks, magnitude_masks
from vhjax.population.prune import prune_and_finetune

PARAMS = {"a": {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]), "bias": jnp.array([0.1, 0.2])},
          "b": {"kernel": jnp.array([[10.0, 20.0], [30.0, 40.0]])}}


def test_global_pruning_removes_the_smallest_weights_overall():
    masks = magnitude_masks(PARAMS, 0.5, scope="global")
    assert masks["a"]["kernel"].sum() == 0 and masks["b"]["kernel"].sum() == 4  # all small ones are in 'a'
    assert masks["a"]["bias"].tolist() == [1.0, 1.0]  # biases are not pruned


def test_layerwise_pruning_removes_the_same_fraction_in_every_layer():
    masks = magnitude_masks(PARAMS, 0.5, scope="layerwise")
    assert masks["a"]["kernel"].tolist() == [[0, 0], [1, 1]] and masks["b"]["kernel"].tolist() == [[0, 0], [1, 1]]
    pruned = apply_masks(PARAMS, masks)
    assert pruned["b"]["kernel"].tolist() == [[0, 0], [30, 40]]


@pytest.mark.parametrize("kwargs,match", [({"sparsity": 1.0}, "sparsity 1.0"), ({"scope": "row"}, "scope 'row'")])
def test_bad_pruning_arguments(kwargs, match):
    arguments = {"sparsity": 0.5, "scope": "global", **kwargs}
    with pytest.raises(ValueError, match=match):
        magnitude_masks(PARAMS, arguments["sparsity"], scope=arguments["scope"])


def test_fine_tuning_recovers_accuracy_and_keeps_pruned_weights_at_zero():
    config = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (64,), "num_classes": 10},
                         learning_rate=1e-2, batch_size=32, steps=200, eval_every=200, seed=0)
    result = prune_and_finetune(config, 0.95, scope="layerwise", finetune_steps=100)
    assert result.dense["accuracy"] > 0.9
    assert result.pruned["accuracy"] < result.dense["accuracy"] - 0.1  # heavy pruning hurts...
    assert result.finetuned["accuracy"] > result.pruned["accuracy"] + 0.1  # ...fine-tuning recovers
    assert abs(result.sparsity - 0.95) < 0.01
    for layer in ("hidden_0", "head"):
        kernel, mask = np.asarray(result.state.params[layer]["kernel"]), np.asarray(result.masks[layer]["kernel"])
        assert np.all(kernel[mask == 0] == 0)
