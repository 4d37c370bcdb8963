"""Population based training (Jaderberg et al. 2017) as a strategy of the search protocol.

A population of `population_size` members trains in rounds of `interval` steps. Round r asks
every member once: a proposal with the member's hyperparameters (unit-cube row), fidelity
`(r + 1) * interval` (train up to that step) and, from round 1 on, a parent: the proposal of
round r - 1 whose checkpoint the member continues from (its own, or the one of the better
member it copied). When the whole round is told, PBT exploits and explores with the one set of
primitives in `vhjax.population.exploit` (the same rules as `vhjax.population.fit_pbt`):
ranked in the bottom `fraction`, a member copies a member of the top `fraction`; the copied
hyperparameters are perturbed by `factors` as real values in their range (a log-scale `Float`
multiplies its value, not its cube coordinate), clipped, and resampled from the range with
`resample_probability`.

Fitness is minimized (the driver negates a maximized metric). The bookkeeping needs concrete
counters, so `ask`/`tell` run outside jit (the array work inside is jax); the state is a pytree
the store saves after every round's tell, so each round's trials are stored as they finish.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vhjax.population.exploit import UNIT_RANGE, Range, check_fraction, exploit_explore
from vhjax.search.strategies.base import (Proposals, Strategy, check_number, check_positive_int, make,
                                          proposals_of, register_strategy, space_dim)


@struct.dataclass
class PBTState:
    hparams: jax.Array  # (P, D) hyperparameters of the current round
    parent: jax.Array  # (P,) int32: proposal each member continues from this round (-1: none)
    latest: jax.Array  # (P,) int32: proposal index handed to each member this round
    scores: jax.Array  # (P,) fitness told this round (+inf until told)
    told: jax.Array  # (P,) bool
    handed: jax.Array  # () int32: members handed out this round
    round: jax.Array  # () int32
    key: jax.Array


def unit_ranges(space: Any) -> list[Range]:
    """`(low, high, log)` of each column's real value (`Float`/`Int`); the unit interval otherwise."""
    params = getattr(space, "params", None)
    if not isinstance(params, dict):
        return [UNIT_RANGE] * space_dim(space)
    ranges = []
    for param in params.values():
        if getattr(param, "cardinality", 1) == 0 and hasattr(param, "low"):
            ranges.append((float(param.low), float(param.high), bool(param.log)))
        else:
            ranges.append(UNIT_RANGE)
    return ranges


@register_strategy("pbt")
def population_based_training(space: Any, *, population_size: int = 8, interval: int = 100,
                              fraction: float = 0.25, factors: Sequence[float] = (0.8, 1.2),
                              resample_probability: float = 0.25, noise_scale: float = 0.0) -> Strategy:
    """PBT over `space`: `population_size` members, exploit/explore every `interval` steps."""
    dim = space_dim(space)
    size = check_positive_int("population_size", population_size, minimum=2)
    steps = check_positive_int("interval", interval)
    check_number("fraction", fraction, 0.0, 0.5, low_open=True)
    check_fraction(fraction)
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise ValueError(f"factors must be a non-empty list of positive numbers; got {factors!r}")
    factors = tuple(check_number(f"factors[{i}]", f, 0.0, low_open=True) for i, f in enumerate(factors))
    probability = check_number("resample_probability", resample_probability, 0.0, 1.0)
    noise = check_number("noise_scale", noise_scale, 0.0)
    ranges = unit_ranges(space)

    def init(key: jax.Array) -> PBTState:
        draw_key, key = jax.random.split(key)
        return PBTState(hparams=jax.random.uniform(draw_key, (size, dim)),
                        parent=jnp.full((size,), -1, jnp.int32), latest=jnp.full((size,), -1, jnp.int32),
                        scores=jnp.full((size,), jnp.inf, jnp.float32), told=jnp.zeros((size,), bool),
                        handed=jnp.asarray(0, jnp.int32), round=jnp.asarray(0, jnp.int32), key=key)

    def ask(state: PBTState, key: jax.Array, n: int, first) -> tuple[PBTState, Proposals]:
        del key  # the population is drawn at init; exploration uses the state's key
        handed = int(state.handed)
        members = np.arange(handed, min(size, handed + n))
        index = int(first) + np.arange(members.size)
        budget = np.full((members.size,), (int(state.round) + 1) * steps, np.float32)
        proposed = proposals_of(state.hparams[members], int(first), budget, state.parent[members])
        return state.replace(latest=state.latest.at[members].set(index),
                             handed=jnp.asarray(handed + members.size, jnp.int32)), proposed

    def tell(state: PBTState, proposals: Proposals, fitness: jax.Array) -> PBTState:
        latest = np.asarray(state.latest)
        members = []
        for proposal in np.asarray(proposals.index).tolist():
            match = np.flatnonzero(latest == proposal)
            if match.size != 1 or bool(state.told[match[0]]):
                raise ValueError(f"tell: proposal {proposal} is not a pending member of PBT round "
                                 f"{int(state.round)}; pending: {latest[~np.asarray(state.told)].tolist()}")
            members.append(int(match[0]))
        state = state.replace(scores=state.scores.at[np.asarray(members)].set(fitness),
                              told=state.told.at[np.asarray(members)].set(True))
        if not bool(jnp.all(state.told)):
            return state
        key, round_key = jax.random.split(state.key)
        result = exploit_explore(round_key, state.scores, state.hparams, fraction=fraction, factors=factors,
                                 noise_scale=noise, resample_probability=probability, ranges=ranges)
        return state.replace(hparams=result.hparams_u, parent=state.latest[result.src_index],
                             scores=jnp.full((size,), jnp.inf, jnp.float32), told=jnp.zeros((size,), bool),
                             handed=jnp.asarray(0, jnp.int32), round=state.round + 1, key=key)

    return make(dim, init, ask, tell, proposes=True)


__all__ = ["PBTState", "population_based_training", "unit_ranges"]
