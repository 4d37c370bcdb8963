"""Sanity checks for attributions (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Model randomization: re-initialise the network's layers one by one from the output toward the
input (cascading); a method whose maps do not change is insensitive to the weights it explains.
Data randomization: compare the maps of a model trained on true labels with one trained on
permuted labels (train both, e.g. with `vhjax.ensemble.train.train_members`).
Similarity is the Spearman rank correlation of absolute attributions, per example.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.inspect.attributions import rank_correlation


def cascading_randomization(params: dict, fresh_params: dict, order: Sequence[str] | None = None
                            ) -> list[tuple[str, dict]]:
    """[(layer, params with that layer and every layer after it re-initialised), ...].

    `fresh_params` is a second initialisation of the same model (e.g. `model.init(other_key, x)['params']`).
    `order` lists top-level parameter names from the output toward the input; by default the
    reverse of `fresh_params`' creation order (flax's `init` keeps it).
    """
    names = list(order) if order is not None else list(fresh_params)[::-1]
    unknown = [n for n in names if n not in params or n not in fresh_params]
    if unknown:
        raise ValueError(f"order names {unknown} not in params; allowed: {', '.join(params)}")
    current = dict(params)
    steps = []
    for name in names:
        current = {**current, name: fresh_params[name]}
        steps.append((name, dict(current)))
    return steps


def model_randomization_check(method: Callable, apply_fn: Callable, params: dict, fresh_params: dict, x: Any,
                              target: Any, order: Sequence[str] | None = None, **options: Any) -> dict[str, float]:
    """Mean rank correlation between the trained model's maps and each cascading randomization's."""
    reference = method(apply_fn, params, x, target, **options)
    out = {}
    for name, randomized in cascading_randomization(params, fresh_params, order):
        out[name] = float(jnp.mean(rank_correlation(reference, method(apply_fn, randomized, x, target, **options))))
    return out


def permuted_labels(key: jax.Array, labels: Any) -> np.ndarray:
    """Labels shuffled across examples (the data-randomization test's training labels)."""
    labels = np.asarray(labels)
    return labels[np.asarray(jax.random.permutation(key, labels.shape[0]))]
