"""The one search protocol, its registry, and the work every strategy shares.

A strategy is `Strategy(init, ask, tell)` of pure functions over a state pytree, MINIMIZING:

    state = strategy.init(key)
    state, proposals = strategy.ask(state, key, n)              # n: a Python int
    state, metrics = strategy.tell(state, proposals, fitness)   # fitness (m,) or (m, M)

`proposals` is a `Proposals` pytree of m <= n rows: `u (m, D)` points in `[0, 1]^D`,
`fidelity (m,)` the training budget to reach (0: the objective's own budget), `parent (m,)`
the index of the proposal whose checkpoint to continue from (-1: from scratch) and
`index (m,)` the proposal's own index (0, 1, 2, ... over the run). A strategy that returns no
rows has nothing more to propose (a finished successive-halving schedule).

As in evosax's `algorithms/base.py`, the base (`make`) does the shared work and each strategy
writes only its own init/ask/tell: the base state `SearchState` wraps the strategy's own state
(`inner`) with the best point so far (failed trials, NaN or infinite fitness, never win), the
worst finite fitness seen, the generation counter and the number of proposals handed out;
`tell` turns failed fitness into +inf before the strategy sees it and returns metrics. Every
state is a pytree the store saves; the array strategies are jittable (`n` static).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vhjax.registry import Registry


class Proposals(NamedTuple):
    """What `ask` hands out: m candidates, each with a budget and a parent (a pytree)."""

    u: jax.Array  # (m, D) points in [0, 1]^D
    fidelity: jax.Array  # (m,) float32: budget to train to; 0 = the objective's own budget
    parent: jax.Array  # (m,) int32: index of the proposal to continue from; -1 = from scratch
    index: jax.Array  # (m,) int32: this proposal's index in the run


@struct.dataclass
class SearchState:
    """The base state: the strategy's own state plus what every strategy tracks."""

    inner: Any
    best_u: jax.Array  # (D,)
    best_fitness: jax.Array  # () +inf until a trial succeeds (first objective)
    worst_fitness: jax.Array  # () largest finite fitness told (-inf until one)
    generation: jax.Array  # () int32: tells so far
    asked: jax.Array  # () int32: proposals handed out so far


class Strategy(NamedTuple):
    """`init(key) -> state`; `ask(state, key, n) -> (state, Proposals)`;
    `tell(state, proposals, fitness) -> (state, metrics)`."""

    init: Callable[[jax.Array], Any]
    ask: Callable[[Any, jax.Array, int], tuple[Any, Proposals]]
    tell: Callable[[Any, Any, jax.Array], tuple[Any, dict]]


StrategyFactory = Callable[..., Strategy]
STRATEGIES: Registry[StrategyFactory] = Registry("strategy")


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator: register `factory(space, **kwargs) -> Strategy` under `name`."""
    return STRATEGIES.register(name)


def make_strategy(name: str, space: Any, **kwargs: Any) -> Strategy:
    """Build the strategy registered as `name` for `space` (unknown names list the known ones)."""
    if not isinstance(name, str):
        raise TypeError(f"strategy name must be a string; got {name!r}")
    factory = STRATEGIES.get(name)
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        allowed = [p for p, spec in parameters.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"strategy {name!r}: unknown setting(s) {unknown}; allowed: {allowed}")
    return factory(space, **kwargs)


def best(state: Any) -> tuple[jax.Array, jax.Array]:
    """`(best_u (D,), best_fitness)` seen so far (fitness +inf while nothing succeeded)."""
    if not (hasattr(state, "best_u") and hasattr(state, "best_fitness")):
        raise TypeError(f"{type(state).__name__} does not track a best candidate")
    return state.best_u, state.best_fitness


def inner_state(state: Any) -> Any:
    """The strategy's own state inside a base `SearchState` (any other state as it is)."""
    return state.inner if isinstance(state, SearchState) else state


def proposals_of(u: Any, first: Any = 0, fidelity: Any = None, parent: Any = None) -> Proposals:
    """`Proposals` of points `u (m, D)` numbered from `first`, fidelity 0 and no parent by default."""
    u = jnp.asarray(u, jnp.float32)
    m = u.shape[0]
    fidelity = jnp.zeros((m,), jnp.float32) if fidelity is None else jnp.asarray(fidelity, jnp.float32)
    parent = jnp.full((m,), -1, jnp.int32) if parent is None else jnp.asarray(parent, jnp.int32)
    index = jnp.asarray(first, jnp.int32) + jnp.arange(m, dtype=jnp.int32)
    return Proposals(u, fidelity, parent, index)


def as_proposals(proposals: Any) -> Proposals:
    """A `Proposals`, or bare points `u (m, D)` (numbered from 0, no fidelity, no parent)."""
    if isinstance(proposals, Proposals):
        return proposals
    return proposals_of(proposals)


def make(dim: int, init: Callable, ask: Callable, tell: Callable, *, proposes: bool = False,
         num_objectives: int = 1) -> Strategy:
    """A `Strategy` from a strategy's own functions; the base does the shared work.

    - `init(key) -> inner`;
    - `ask(inner, key, n) -> (inner, u (n, D))`, or with `proposes=True`
      `ask(inner, key, n, first) -> (inner, Proposals)` (m <= n rows; `first` is the index of
      the first row; the base numbers the rows);
    - `tell(inner, u, fitness) -> inner` (with `proposes=True`: `tell(inner, proposals,
      fitness)`); fitness arrives with failed trials as +inf, shape `(m,)`, or `(m, M)` when
      `num_objectives = M > 1`.
    """
    dim = int(dim)

    def base_init(key: jax.Array) -> SearchState:
        return SearchState(inner=init(key), best_u=jnp.full((dim,), 0.5, jnp.float32),
                           best_fitness=jnp.asarray(jnp.inf, jnp.float32),
                           worst_fitness=jnp.asarray(-jnp.inf, jnp.float32),
                           generation=jnp.asarray(0, jnp.int32), asked=jnp.asarray(0, jnp.int32))

    def base_ask(state: SearchState, key: jax.Array, n: int) -> tuple[SearchState, Proposals]:
        n = check_ask_size(n)
        if proposes:
            inner, proposed = ask(state.inner, key, n, state.asked)
            proposed = proposals_of(proposed.u, state.asked, proposed.fidelity, proposed.parent)
        else:
            inner, u = ask(state.inner, key, n)
            proposed = proposals_of(u, state.asked)
        return state.replace(inner=inner, asked=state.asked + proposed.u.shape[0]), proposed

    def base_tell(state: SearchState, proposals: Any, fitness: jax.Array) -> tuple[SearchState, dict]:
        proposals = as_proposals(proposals)
        m = proposals.u.shape[0]
        fitness = jnp.asarray(fitness, jnp.float32)
        expected = (m,) if num_objectives == 1 else (m, num_objectives)
        if fitness.shape != expected and not (num_objectives > 1 and fitness.shape == (m,)):
            raise ValueError(f"tell: fitness must have shape {expected} for {m} proposals; "
                             f"got {fitness.shape}")
        if fitness.ndim == 2:
            fitness = jnp.where(jnp.all(jnp.isfinite(fitness), axis=1, keepdims=True), fitness, jnp.inf)
            primary = fitness[:, 0]
        else:
            fitness = failed_as_inf(fitness)
            primary = fitness
        inner = tell(state.inner, proposals if proposes else proposals.u, fitness)
        best_u, best_fitness = update_best(state.best_u, state.best_fitness, proposals.u, primary)
        ok = jnp.isfinite(primary)
        worst = jnp.maximum(state.worst_fitness, jnp.max(jnp.where(ok, primary, -jnp.inf)))
        metrics = {"generation": state.generation, "best_fitness": best_fitness,
                   "batch_best": jnp.min(primary), "failed": jnp.sum(~ok).astype(jnp.int32),
                   "batch_mean": jnp.sum(jnp.where(ok, primary, 0.0)) / jnp.maximum(jnp.sum(ok), 1)}
        return state.replace(inner=inner, best_u=best_u, best_fitness=best_fitness, worst_fitness=worst,
                             generation=state.generation + 1), metrics

    return Strategy(base_init, base_ask, base_tell)


# ----------------------------------------------------------------------------- fitness


def failed_as_inf(fitness: jax.Array) -> jax.Array:
    """NaN and +-inf (failed trials) -> +inf, so they rank last."""
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def failed_as_worst(fitness: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """NaN and +-inf -> a finite value just above the worst finite one (of `reference`, else `fitness`).

    For strategies whose arithmetic needs finite numbers (baselines, roulette, GP regression).
    All failed -> 0.
    """
    fitness = jnp.asarray(fitness, jnp.float32)
    pool = fitness if reference is None else jnp.asarray(reference, jnp.float32)
    finite = jnp.isfinite(pool)
    worst = jnp.max(jnp.where(finite, pool, -jnp.inf))
    lowest = jnp.min(jnp.where(finite, pool, jnp.inf))
    spread = jnp.where(jnp.any(finite), worst - lowest, 0.0)
    substitute = jnp.where(jnp.any(finite), worst + 0.1 * spread + 1e-6, 0.0)
    return jnp.where(jnp.isfinite(fitness), fitness, substitute)


def pareto_shaped(history: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Fitness shaping for several objectives: each current row's Pareto rank (0 = non-dominated).

    `history (H, M)` and `current (n, M)` are minimized objective values (NaN: failed). Ranks are
    taken among every successful row so far; failed rows rank one below the worst.
    """
    from vhjax.search.pareto import pareto_ranks

    everything = np.concatenate([history, current])
    ok = np.all(np.isfinite(everything), axis=1)
    ranks = np.full(len(everything), np.nan)
    if ok.any():
        ranks[ok] = np.asarray(pareto_ranks(everything[ok]))
    worst = np.nanmax(ranks) + 1 if ok.any() else 0.0
    return np.where(np.isnan(ranks), worst, ranks)[len(history):]


def update_best(best_u: jax.Array, best_fitness: jax.Array, u: jax.Array, fitness: jax.Array):
    """Running best over a told batch; failed trials never win."""
    fitness = failed_as_inf(fitness)
    i = jnp.argmin(fitness)
    better = fitness[i] < best_fitness
    return jnp.where(better, u[i], best_u), jnp.where(better, fitness[i], best_fitness)



# ----------------------------------------------------------------------------- validation


def check_ask_size(n: Any, maximum: int | None = None, what: str = "") -> int:
    """`n` must be a positive Python int (static under jit), at most `maximum` when given."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"ask: n must be a positive Python integer (static under jit); got {n!r}")
    if maximum is not None and n > maximum:
        raise ValueError(f"ask: n={n} exceeds {what} ({maximum})")
    return int(n)


def check_positive_int(field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{field} must be a number; got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{field} must be finite; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{field} must be {'>' if low_open else '>='} {low}; got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{field} must be <= {high}; got {value!r}")
    return value


def check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}; got {value!r}")
    return value


def space_dim(space: Any) -> int:
    """The space's dimension, checked."""
    dim = getattr(space, "dim", None)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise TypeError(f"space must have a positive integer `dim`; got {space!r}")
    return int(dim)


def categorical_info(space: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(is_categorical (D,) bool, cardinalities (D,) int)`; all-continuous when the space says nothing."""
    dim = space_dim(space)
    cards = getattr(space, "cardinalities", None)
    cards = np.zeros((dim,), np.int32) if cards is None else np.asarray(cards, np.int32)
    return cards > 0, cards


# ----------------------------------------------------------------------------- shared moves


def snap_categorical(u: jax.Array, cardinalities: np.ndarray) -> jax.Array:
    """Categorical columns to the centre of their category; every column clipped to [0, 1]."""
    k = jnp.asarray(np.maximum(cardinalities, 1), jnp.float32)
    centre = (jnp.clip(jnp.floor(u * k), 0, k - 1) + 0.5) / k
    return jnp.where(jnp.asarray(cardinalities > 0), centre, jnp.clip(u, 0.0, 1.0))


def mutate(key: jax.Array, u: jax.Array, cardinalities: np.ndarray, rate: jax.Array,
           sigma: jax.Array) -> jax.Array:
    """Per gene with probability `rate`: Gaussian step `sigma` (continuous) or a resample (categorical)."""
    k_mask, k_gauss, k_cat = jax.random.split(key, 3)
    chosen = jax.random.uniform(k_mask, u.shape) < rate
    stepped = jnp.clip(u + sigma * jax.random.normal(k_gauss, u.shape), 0.0, 1.0)
    resampled = snap_categorical(jax.random.uniform(k_cat, u.shape), cardinalities)
    moved = jnp.where(jnp.asarray(cardinalities > 0), resampled, stepped)
    return jnp.where(chosen, moved, u)


def flip_categorical(key: jax.Array, u: jax.Array, cardinalities: np.ndarray, rate: jax.Array,
                     sigma: jax.Array) -> jax.Array:
    """Per gene with probability `rate`: a DIFFERENT category (categorical; for a Boolean, a bit
    flip) or a Gaussian step `sigma` (continuous). `mutate` resamples, which keeps the old
    category with probability 1/k."""
    k_mask, k_shift, k_gauss = jax.random.split(key, 3)
    chosen = jax.random.uniform(k_mask, u.shape) < rate
    cards = jnp.asarray(np.maximum(cardinalities, 1), jnp.int32)
    old = jnp.clip(jnp.floor(u * cards), 0, cards - 1).astype(jnp.int32)
    shift = jax.random.randint(k_shift, u.shape, 1, jnp.maximum(cards, 2))  # 1..k-1
    other = ((old + shift) % cards + 0.5) / cards
    stepped = jnp.clip(u + sigma * jax.random.normal(k_gauss, u.shape), 0.0, 1.0)
    categorical = jnp.asarray(cardinalities > 1)
    moved = jnp.where(categorical, other, jnp.where(jnp.asarray(cardinalities == 1), u, stepped))
    return jnp.where(chosen, moved, u)


def mutate_one_column(key: jax.Array, u: jax.Array, cardinalities: np.ndarray,
                      sigma: jax.Array) -> jax.Array:
    """Change ONE column of each row `u (n, D)`: a different category, or a Gaussian step."""
    n, dim = u.shape
    k_col, k_shift, k_gauss = jax.random.split(key, 3)
    column = jax.random.randint(k_col, (n,), 0, dim)
    cards = jnp.asarray(cardinalities, jnp.int32)[column]
    old = jnp.take_along_axis(u, column[:, None], axis=1)[:, 0]
    safe_k = jnp.maximum(cards, 1)
    old_index = jnp.clip(jnp.floor(old * safe_k), 0, safe_k - 1).astype(jnp.int32)
    shift = jax.random.randint(k_shift, (n,), 1, jnp.maximum(safe_k, 2))  # 1..k-1: a different op
    new_category = ((old_index + shift) % safe_k + 0.5) / safe_k
    new_continuous = jnp.clip(old + sigma * jax.random.normal(k_gauss, (n,)), 0.0, 1.0)
    new = jnp.where(cards > 1, new_category, jnp.where(cards == 1, old, new_continuous))
    return u.at[jnp.arange(n), column].set(new)
