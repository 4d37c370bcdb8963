"""Fairness across groups: how a classifier's errors and decisions differ between the groups of a
sensitive attribute (CATALOG 1.15/1.16, "fairness metrics across groups").

Every function takes integer `predictions` and `labels` of shape (N,) and `groups` (N,) with values
in [0, num_groups), is a pure JAX function, and maps over a population's members with `jax.vmap`
(predictions (M, N) -> one value per member; see `member_report`). Definitions follow Fairlearn's
(`fairlearn.metrics`), against which the tests check them:

- selection rate: the share of a group predicted `positive`;
- demographic parity difference / ratio: the largest minus / smallest over largest selection rate;
- true / false positive rate per group; equal opportunity difference: the spread of the true
  positive rates; equalized odds difference: the larger of the true and false positive rate spreads;
- accuracy difference and worst-group accuracy.

A group with no examples (or no examples of the class a rate needs) is left out of the spread.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.validation import check_int


def _per_group(values: jax.Array, mask: jax.Array, groups: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """(mean of `values` over the examples of each group where `mask`, whether the group had any)."""
    weight = mask.astype(jnp.float32)
    total = jax.ops.segment_sum(values.astype(jnp.float32) * weight, groups, num_segments=num_groups)
    count = jax.ops.segment_sum(weight, groups, num_segments=num_groups)
    return total / jnp.maximum(count, 1.0), count > 0


def _spread(rates: jax.Array, present: jax.Array) -> jax.Array:
    """Largest minus smallest rate over the groups present (0 when fewer than one is)."""
    high = jnp.max(jnp.where(present, rates, -jnp.inf))
    low = jnp.min(jnp.where(present, rates, jnp.inf))
    return jnp.where(present.any(), high - low, 0.0)


def group_metrics(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int,
                  positive: int = 1) -> dict[str, jax.Array]:
    """Per group (arrays of length `num_groups`): `count`, `accuracy`, `selection_rate`,
    `true_positive_rate`, `false_positive_rate` (NaN where a group has no example to rate)."""
    everyone = jnp.ones_like(labels, dtype=bool)
    chosen = predictions == positive
    accuracy, present = _per_group(predictions == labels, everyone, groups, num_groups)
    selection, _ = _per_group(chosen, everyone, groups, num_groups)
    tpr, has_positive = _per_group(chosen, labels == positive, groups, num_groups)
    fpr, has_negative = _per_group(chosen, labels != positive, groups, num_groups)
    count = jax.ops.segment_sum(jnp.ones_like(groups, jnp.float32), groups, num_segments=num_groups)
    return {"count": count,
            "accuracy": jnp.where(present, accuracy, jnp.nan),
            "selection_rate": jnp.where(present, selection, jnp.nan),
            "true_positive_rate": jnp.where(has_positive, tpr, jnp.nan),
            "false_positive_rate": jnp.where(has_negative, fpr, jnp.nan)}


def demographic_parity_difference(predictions: jax.Array, groups: jax.Array, num_groups: int,
                                  positive: int = 1) -> jax.Array:
    """Largest minus smallest share of a group predicted `positive` (0: equal selection rates)."""
    rates, present = _per_group(predictions == positive, jnp.ones_like(groups, dtype=bool), groups, num_groups)
    return _spread(rates, present)


def demographic_parity_ratio(predictions: jax.Array, groups: jax.Array, num_groups: int,
                             positive: int = 1) -> jax.Array:
    """Smallest over largest selection rate (1: equal; the "four-fifths rule" asks for >= 0.8)."""
    rates, present = _per_group(predictions == positive, jnp.ones_like(groups, dtype=bool), groups, num_groups)
    high = jnp.max(jnp.where(present, rates, -jnp.inf))
    low = jnp.min(jnp.where(present, rates, jnp.inf))
    return jnp.where(high > 0, low / jnp.where(high > 0, high, 1.0), 1.0)


def equal_opportunity_difference(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int,
                                 positive: int = 1) -> jax.Array:
    """Spread of the true positive rates over the groups (Hardt et al. 2016's equal opportunity)."""
    rates, present = _per_group(predictions == positive, labels == positive, groups, num_groups)
    return _spread(rates, present)


def equalized_odds_difference(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int,
                              positive: int = 1) -> jax.Array:
    """The larger of the spreads of the true and the false positive rates over the groups."""
    chosen = predictions == positive
    tpr, has_positive = _per_group(chosen, labels == positive, groups, num_groups)
    fpr, has_negative = _per_group(chosen, labels != positive, groups, num_groups)
    return jnp.maximum(_spread(tpr, has_positive), _spread(fpr, has_negative))


def accuracy_difference(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """Best minus worst group accuracy (any number of classes)."""
    accuracy, present = _per_group(predictions == labels, jnp.ones_like(labels, dtype=bool), groups, num_groups)
    return _spread(accuracy, present)


def worst_group_accuracy(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """The lowest accuracy of any group with examples."""
    accuracy, present = _per_group(predictions == labels, jnp.ones_like(labels, dtype=bool), groups, num_groups)
    return jnp.min(jnp.where(present, accuracy, jnp.inf))


def summary(predictions: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int,
            positive: int = 1) -> dict[str, jax.Array]:
    """Every spread above and the overall accuracy for one classifier (vmap it for members)."""
    return {"accuracy": jnp.mean(predictions == labels),
            "worst_group_accuracy": worst_group_accuracy(predictions, labels, groups, num_groups),
            "accuracy_difference": accuracy_difference(predictions, labels, groups, num_groups),
            "demographic_parity_difference": demographic_parity_difference(predictions, groups, num_groups, positive),
            "demographic_parity_ratio": demographic_parity_ratio(predictions, groups, num_groups, positive),
            "equal_opportunity_difference": equal_opportunity_difference(predictions, labels, groups, num_groups,
                                                                         positive),
            "equalized_odds_difference": equalized_odds_difference(predictions, labels, groups, num_groups, positive)}


def check_groups(groups: Any, size: int, num_groups: int | None = None) -> tuple[np.ndarray, int]:
    """`groups` as int32 (N,) and the number of groups, refused with a clear message when it is not
    one non-negative integer per example (below `num_groups` when given)."""
    array = np.asarray(groups)
    if array.shape != (size,) or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"groups has shape {array.shape} and dtype {array.dtype}; allowed: ({size},) integers, "
                         "one group index per example")
    array = array.astype(np.int32)
    if size and array.min() < 0:
        raise ValueError(f"groups has value {int(array.min())}; allowed: group indices >= 0")
    found = int(array.max()) + 1 if size else 0
    if num_groups is None:
        return array, max(found, 1)
    check_int("num_groups", num_groups, 1)
    if found > num_groups:
        raise ValueError(f"groups has value {found - 1}; allowed: indices below num_groups={num_groups}")
    return array, num_groups


# `summary` vmapped over members, compiled once per shape and (num_groups, positive)
_MEMBER_SUMMARIES = jax.jit(jax.vmap(summary, in_axes=(0, None, None, None, None)), static_argnums=(3, 4))


def member_report(predictions: Any, labels: Any, groups: Any, *, num_groups: int | None = None,
                  positive: int = 1) -> list[dict[str, float]]:
    """`summary` for each member of a population: `predictions` (M, N) integer classes (e.g.
    `Ensemble.member_logits(x).argmax(-1)`), `labels` and `groups` (N,). One vmapped program."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions has shape {predictions.shape}; allowed: (members, examples)")
    labels = np.asarray(labels, np.int32)
    if labels.shape != predictions.shape[1:]:
        raise ValueError(f"labels has shape {labels.shape}; allowed: ({predictions.shape[1]},), one per example")
    groups, num_groups = check_groups(groups, predictions.shape[1], num_groups)
    values = _MEMBER_SUMMARIES(
        jnp.asarray(predictions, jnp.int32), jnp.asarray(labels), jnp.asarray(groups), num_groups, int(positive))
    values = {name: np.asarray(array) for name, array in values.items()}
    return [{name: float(array[member]) for name, array in values.items()} for member in range(len(predictions))]
