"""Magnitude pruning as structure optimization: masks, masked fine-tuning, prune-then-fine-tune.

`magnitude_masks` keeps the largest-|w| fraction `1 - sparsity` of the selected weights, either
over all of them at once (`scope='global'`) or in each layer separately (`'layerwise'`). Pruned
weights are set to zero and `masked_updates` keeps them at zero during fine-tuning.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

SCOPES = ("global", "layerwise")


def _is_kernel(path: tuple, leaf: jax.Array) -> bool:
    name = getattr(path[-1], "key", str(path[-1]))
    return name == "kernel" and leaf.ndim >= 2


def magnitude_masks(params: Any, sparsity: float, *, scope: str = "global",
                    where: Callable[[tuple, jax.Array], bool] = _is_kernel) -> Any:
    """0/1 masks (same tree as params): prune the `sparsity` fraction of smallest |w| among `where` leaves.

    Leaves not selected by `where` (biases, norms by default) get all-ones masks.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity!r}; allowed: a fraction in [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}; allowed: {', '.join(SCOPES)}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    selected = [leaf for path, leaf in flat if where(path, leaf)]
    if not selected:
        raise ValueError("no parameter is selected for pruning (the default selects 'kernel' leaves)")
    if scope == "global":
        magnitudes = jnp.concatenate([jnp.abs(leaf).ravel() for leaf in selected])
        threshold = jnp.quantile(magnitudes, sparsity) if sparsity > 0 else -jnp.inf
    masks = []
    for path, leaf in flat:
        if not where(path, leaf):
            masks.append(jnp.ones_like(leaf))
            continue
        cut = threshold if scope == "global" else (jnp.quantile(jnp.abs(leaf), sparsity) if sparsity > 0 else -jnp.inf)
        masks.append((jnp.abs(leaf) > cut).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params: Any, masks: Any) -> Any:
    """Zero the pruned weights."""
    return jax.tree.map(lambda p, m: p * m, params, masks)


def masked_updates(optimizer: optax.GradientTransformation, masks: Any) -> optax.GradientTransformation:
    """`optimizer` whose updates are zero on pruned weights, so they stay at zero while fine-tuning."""
    return optax.chain(optimizer, optax.stateless(lambda updates, params=None: jax.tree.map(
        lambda u, m: u * m, updates, masks)))


def sparsity_of(params: Any, masks: Any) -> float:
    """Fraction of masked-out entries among the leaves that have zeros in their mask."""
    total = pruned = 0
    for mask in jax.tree.leaves(masks):
        if bool(jnp.all(mask == 1)):
            continue
        total += mask.size
        pruned += int(jnp.sum(mask == 0))
    return pruned / total if total else 0.0
