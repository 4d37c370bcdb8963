"""Population based training (Jaderberg et al. 2017) as pure, jittable array functions.

A population of P members trains side by side. When members are *ready*
(enough steps since their last exploit), PBT

- **exploits**: a ready member ranked in the bottom `fraction` copies the
  parameters, optimizer state and hyperparameters of a member drawn uniformly
  from the top `fraction` (truncation selection), then
- **explores**: the copied hyperparameters are perturbed (multiplied by a
  random factor such as 0.8 or 1.2, or moved by Gaussian noise) and, with some
  probability, resampled.

Scores are **minimized**, like every vhjax strategy (pass `-accuracy`).
Non-finite scores rank last, so a diverged member is always replaced.
Hyperparameters are handled in the unit cube `[0, 1]^D` of a search space;
`perturb` and `add_noise` also work on real-valued arrays (`clip=None`).

The functions return the index of the member to copy from (`src_index`); the
population engine gathers any pytree with `gather_members(tree, src_index)`.
Every parameter that may vary is an array, so one compiled step serves all.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class ExploitExplore(NamedTuple):
    """Result of one PBT round for a population of P members."""

    src_index: Array  # (P,) int32: member to copy params/opt state from (itself if not copied)
    hparams_u: Array  # (P, D): hyperparameters after exploit and explore
    copied: Array  # (P,) bool: True where the member was replaced by another one


class LineageEvent(NamedTuple):
    """One exploit round, as arrays a driver can stack over rounds (e.g. scan outputs)."""

    step: Array  # () int32: training step of the round
    parent: Array  # (P,) int32: member copied from, -1 where nothing was copied


def _check_fraction(fraction) -> None:
    if isinstance(fraction, (int, float)) and not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5]; got {fraction!r}")


def _check_scores_hparams(scores, hparams_u) -> None:
    if np.ndim(scores) != 1:
        raise ValueError(f"scores must have shape (P,); got shape {np.shape(scores)}")
    if np.ndim(hparams_u) != 2 or np.shape(hparams_u)[0] != np.shape(scores)[0]:
        raise ValueError(
            f"hparams_u must have shape (P, D) with P={np.shape(scores)[0]} (scores); "
            f"got shape {np.shape(hparams_u)}"
        )


def is_ready(steps_since_exploit: Array, interval: Array) -> Array:
    """`(P,)` bool: members that trained at least `interval` steps since their last exploit."""
    return jnp.asarray(steps_since_exploit) >= interval


def truncation_count(population_size: int, fraction) -> Array:
    """Members in the top (and bottom) slice: `ceil(fraction * P)`, at most `P // 2`, at least 1."""
    count = jnp.ceil(jnp.asarray(fraction, jnp.float32) * population_size).astype(jnp.int32)
    return jnp.clip(count, 1, max(population_size // 2, 1))


def truncation_select(
    key: Array, scores: Array, fraction=0.2, ready: Array | None = None
) -> tuple[Array, Array]:
    """Truncation exploit: `(src_index (P,), copied (P,))`.

    Ready members ranked in the bottom `fraction` copy a member drawn uniformly
    from the top `fraction`; everyone else keeps its own index. Any member may
    be a donor, ready or not. Lower scores are better; NaN ranks last.
    """
    _check_fraction(fraction)
    scores = jnp.asarray(scores, jnp.float32)
    size = scores.shape[0]
    if size < 2:
        return jnp.zeros((size,), jnp.int32), jnp.zeros((size,), bool)
    ready = jnp.ones((size,), bool) if ready is None else jnp.asarray(ready, bool)
    safe = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
    order = jnp.argsort(safe, stable=True)  # order[r] = member with rank r (0 = best)
    rank = jnp.zeros((size,), jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
    count = truncation_count(size, fraction)
    donor_rank = jax.random.randint(key, (size,), 0, count)
    copied = ready & (rank >= size - count)
    src_index = jnp.where(copied, order[donor_rank], jnp.arange(size, dtype=jnp.int32))
    return src_index.astype(jnp.int32), copied


def perturb(
    key: Array, x: Array, factors: Sequence[float] | Array = (0.8, 1.2), clip=(0.0, 1.0)
) -> Array:
    """Multiply every entry by a factor drawn uniformly from `factors`; clip to `clip` (or None)."""
    factors = jnp.asarray(factors, jnp.float32)
    chosen = jax.random.choice(key, factors, shape=jnp.shape(x))
    out = jnp.asarray(x) * chosen
    return out if clip is None else jnp.clip(out, clip[0], clip[1])


def add_noise(key: Array, x: Array, scale, clip=(0.0, 1.0)) -> Array:
    """Add Gaussian noise of standard deviation `scale`; clip to `clip` (or None)."""
    out = jnp.asarray(x) + scale * jax.random.normal(key, jnp.shape(x))
    return out if clip is None else jnp.clip(out, clip[0], clip[1])


def resample(key: Array, hparams_u: Array, probability) -> Array:
    """Replace each entry by a fresh uniform draw in [0, 1] with `probability`."""
    key_mask, key_value = jax.random.split(key)
    shape = jnp.shape(hparams_u)
    replace = jax.random.uniform(key_mask, shape) < probability
    return jnp.where(replace, jax.random.uniform(key_value, shape), hparams_u)


def explore(
    key: Array,
    hparams_u: Array,
    mask: Array,
    *,
    factors: Sequence[float] | Array = (0.8, 1.2),
    noise_scale=0.0,
    resample_probability=0.0,
) -> Array:
    """Explore the rows where `mask` is True: perturb by `factors`, add noise, maybe resample.

    `factors=(1.0,)`, `noise_scale=0` and `resample_probability=0` make this the identity.
    """
    key_perturb, key_noise, key_resample = jax.random.split(key, 3)
    explored = perturb(key_perturb, hparams_u, factors)
    explored = add_noise(key_noise, explored, noise_scale)
    explored = resample(key_resample, explored, resample_probability)
    return jnp.where(jnp.asarray(mask, bool)[:, None], explored, hparams_u)


def exploit_explore(
    key: Array,
    scores: Array,
    hparams_u: Array,
    *,
    fraction=0.2,
    ready: Array | None = None,
    factors: Sequence[float] | Array = (0.8, 1.2),
    noise_scale=0.0,
    resample_probability=0.0,
) -> ExploitExplore:
    """One PBT round: truncation exploit, then explore the copied members' hyperparameters.

    scores: `(P,)`, lower is better. hparams_u: `(P, D)` in the unit cube.
    ready: optional `(P,)` bool; members not ready are never replaced.
    Returns `ExploitExplore(src_index, hparams_u, copied)`; the caller copies
    parameters and optimizer state with `gather_members(tree, src_index)`.
    """
    _check_scores_hparams(scores, hparams_u)
    key_exploit, key_explore = jax.random.split(key)
    src_index, copied = truncation_select(key_exploit, scores, fraction, ready)
    inherited = jnp.asarray(hparams_u)[src_index]
    new_hparams = explore(
        key_explore,
        inherited,
        copied,
        factors=factors,
        noise_scale=noise_scale,
        resample_probability=resample_probability,
    )
    return ExploitExplore(src_index, new_hparams, copied)


def gather_members(tree, src_index: Array):
    """Copy members along the leading axis of every leaf: `leaf[src_index]`."""
    return jax.tree_util.tree_map(lambda leaf: leaf[src_index], tree)


def reset_ready(steps_since_exploit: Array, ready: Array) -> Array:
    """Restart the step counter of the members that were ready this round."""
    return jnp.where(ready, 0, steps_since_exploit)


def lineage_event(step, src_index: Array, copied: Array) -> LineageEvent:
    """Record one round: the parent of each copied member, -1 for the others."""
    parent = jnp.where(copied, src_index, -1).astype(jnp.int32)
    return LineageEvent(jnp.asarray(step, jnp.int32), parent)


def ancestry(parents, member: int) -> list[tuple[int, int]]:
    """Trace one final member back through stacked lineage events (host side).

    parents: `(E, P)` stacked `LineageEvent.parent` (rounds in time order).
    Returns `[(round, member_before_copy), ...]` newest first: at each listed
    round the lineage jumped from the given member to the one that copied it.
    """
    parents = np.asarray(parents)
    path = []
    current = member
    for event in range(parents.shape[0] - 1, -1, -1):
        parent = int(parents[event, current])
        if parent >= 0:
            path.append((event, parent))
            current = parent
    return path
