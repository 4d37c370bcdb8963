"""REINFORCE controller: an independent softmax policy per column (Williams 1992).

The NAS-Bench-201 paper's REINFORCE baseline: each column (an edge of the cell) has its own
categorical distribution, parameterised by logits and trained with Adam on
`-(reward - baseline) * log p(choice)`, the baseline being an exponential moving average of
the reward (`baseline <- m * baseline + (1 - m) * reward`, started at the first reward and
updated before the advantage is taken). Reward = -fitness (strategies minimize). Failed
trials get the worst reward of their batch. Continuous columns are discretised into `bins`
equal bins (the candidate is the bin centre).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from vhjax.search.strategies.base import (Strategy, categorical_info, check_ask_size, check_number,
                                          check_positive_int, inner_state, failed_as_worst, make, register_strategy)


@struct.dataclass
class ReinforceState:
    logits: jax.Array  # (D, K); -1e9 beyond a column's choices
    opt_state: Any
    baseline: jax.Array
    has_baseline: jax.Array
    told: jax.Array


def column_choices(cardinalities: np.ndarray, bins: int) -> np.ndarray:
    """Choices per column: the categorical cardinality, or `bins` for a continuous column."""
    return np.where(cardinalities > 0, cardinalities, bins).astype(np.int32)


def policy_probabilities(state: ReinforceState) -> jax.Array:
    """`(D, K)` choice probabilities of each column (0 beyond a column's choices)."""
    state = inner_state(state)
    return jax.nn.softmax(state.logits, axis=-1)


def choices_of(u: jax.Array, choices: np.ndarray) -> jax.Array:
    """`(n, D)` choice indices of candidates."""
    k = jnp.asarray(choices, jnp.float32)
    return jnp.clip(jnp.floor(u * k), 0, k - 1).astype(jnp.int32)


def log_probability(logits: jax.Array, u: jax.Array, choices: np.ndarray) -> jax.Array:
    """`(n,)` log-probability of each candidate under the policy."""
    log_p = jax.nn.log_softmax(logits, axis=-1)  # (D, K)
    index = choices_of(u, choices)  # (n, D)
    return jnp.take_along_axis(log_p[None], index[..., None], axis=-1)[..., 0].sum(-1)


@register_strategy("reinforce")
def reinforce(space: Any, *, learning_rate: float = 0.05, baseline_momentum: float = 0.9,
              bins: int = 10) -> Strategy:
    """REINFORCE over independent per-column categoricals, Adam(`learning_rate`), EMA baseline."""
    _, cards = categorical_info(space)
    lr = check_number("learning_rate", learning_rate, 0.0, low_open=True)
    momentum = check_number("baseline_momentum", baseline_momentum, 0.0, 1.0)
    choices = column_choices(cards, check_positive_int("bins", bins, minimum=2))
    dim, width = choices.shape[0], int(choices.max())
    padding = jnp.where(jnp.arange(width)[None, :] < jnp.asarray(choices)[:, None], 0.0, -1e9
                        ).astype(jnp.float32)
    optimizer = optax.adam(lr)

    def init(key: jax.Array) -> ReinforceState:
        del key
        logits = padding  # uniform over each column's choices
        return ReinforceState(logits=logits, opt_state=optimizer.init(logits),
                              baseline=jnp.asarray(0.0, jnp.float32),
                              has_baseline=jnp.asarray(False), told=jnp.asarray(0, jnp.int32))

    def ask(state: ReinforceState, key: jax.Array, n: int):
        n = check_ask_size(n)
        index = jax.random.categorical(key, state.logits, axis=-1, shape=(n, dim))
        return state, (index + 0.5) / jnp.asarray(choices, jnp.float32)

    def tell(state: ReinforceState, u: jax.Array, fitness: jax.Array) -> ReinforceState:
        reward = -failed_as_worst(fitness)
        any_success = jnp.any(jnp.isfinite(fitness))
        batch_reward = jnp.mean(reward)
        baseline = jnp.where(state.has_baseline,
                             momentum * state.baseline + (1 - momentum) * batch_reward, batch_reward)
        advantage = reward - baseline

        def loss(logits):
            return -jnp.mean(advantage * log_probability(logits, u, choices))

        grads = jax.grad(loss)(state.logits)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.logits)
        logits = optax.apply_updates(state.logits, updates)
        keep = lambda new, old: jnp.where(any_success, new, old)  # noqa: E731 (all failed: no step)
        return state.replace(
            logits=keep(logits, state.logits),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            baseline=keep(baseline, state.baseline),
            has_baseline=state.has_baseline | any_success,
            told=state.told + u.shape[0])

    return make(dim, init, ask, tell)
