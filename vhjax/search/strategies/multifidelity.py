"""Multi-fidelity schedulers: successive halving, Hyperband and ASHA.

A scheduler decides WHICH configuration trains to WHICH budget (steps or
epochs); a candidate generator (any strategy with `init/ask/tell`, uniform
sampling of `[0, 1]^D` by default) proposes the new configurations.

- Successive halving (Jamieson & Talwalkar 2016): start `n` configurations at
  the smallest budget, keep the best `1/eta` of each rung at `eta` times the
  budget, up to `max_budget`.
- Hyperband (Li et al. 2018): several successive-halving brackets, from
  aggressive (many configurations, small budget) to none (few, full budget).
- ASHA (Li et al. 2020): asynchronous; whenever a worker is free, promote a
  configuration in the top `1/eta` of the completed results of its rung, or
  else start a new one at the bottom rung. Never waits for a whole rung.

The driver loop is::

    state = scheduler.init(key)
    state, jobs = scheduler.ask(state, key, n_free_workers)
    # train jobs.trial_id[i] with jobs.u[i] from jobs.previous_budget[i] (its checkpoint,
    # 0 = from scratch) up to jobs.budget[i], then report the fitness (minimized)
    state = scheduler.tell(state, jobs.trial_id, jobs.budget, fitness)

`ask` may return fewer jobs than asked (even none) when successive halving
waits for a rung to complete. NaN or infinite fitness ranks last.

Schedulers are control logic over a table of trials, not array math, so this
module keeps Python bookkeeping over NumPy instead of jittable functions.
`ask` and `tell` never modify the state they are given; they return a new one.
Fitness is **minimized**, as by every vhjax strategy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

QUEUED, RUNNING, DONE = 0, 1, 2
_EPS = 1e-9


class Rung(NamedTuple):
    """One rung of a bracket: how many configurations train to which budget."""

    n_configs: int | None  # None: unbounded (ASHA)
    budget: float


class Jobs(NamedTuple):
    """Work handed out by `ask`: train each trial from `previous_budget` up to `budget`."""

    trial_id: np.ndarray  # (n,) int64
    u: np.ndarray  # (n, D) float32, candidate in the unit cube
    budget: np.ndarray  # (n,) budget to reach
    previous_budget: np.ndarray  # (n,) budget the trial already reached (0: new trial)


class Trial(NamedTuple):
    """A reported result."""

    trial_id: int
    u: np.ndarray
    budget: float
    fitness: float


class CandidateGenerator(Protocol):
    """What a scheduler needs from a strategy (the `Strategy` contract of vhjax.search)."""

    init: Callable[[jax.Array], Any]
    ask: Callable[[Any, jax.Array, int], tuple[Any, jax.Array]]
    tell: Callable[[Any, jax.Array, jax.Array], Any]


class _UniformSampler(NamedTuple):
    init: Callable
    ask: Callable
    tell: Callable


def uniform_sampler(dim: int) -> CandidateGenerator:
    """The default generator: independent uniform draws in `[0, 1]^dim`; `tell` is a no-op."""
    _check_positive_int("dim", dim)

    def init(key):
        del key
        return ()

    def ask(state, key, n):
        return state, jax.random.uniform(key, (n, dim))

    def tell(state, u, fitness):
        del u, fitness
        return state

    return _UniformSampler(init, ask, tell)


# ---------------------------------------------------------------- validation


def _check_positive_int(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive integer; got {value!r}")


def _check_budgets(min_budget, max_budget, eta, integer_budgets: bool) -> None:
    for field, value in (("min_budget", min_budget), ("max_budget", max_budget), ("eta", eta)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{field} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{field} must be finite; got {value!r}")
    if min_budget <= 0:
        raise ValueError(f"min_budget must be > 0; got {min_budget!r}")
    if integer_budgets and min_budget < 1:
        raise ValueError(f"min_budget must be >= 1 with integer_budgets; got {min_budget!r}")
    if max_budget < min_budget:
        raise ValueError(
            f"max_budget must be >= min_budget={min_budget!r} (at least one rung); "
            f"got {max_budget!r}"
        )
    if eta < 2:
        raise ValueError(f"eta (reduction_factor) must be >= 2; got {eta!r}")


# ---------------------------------------------------------------- rung geometry


def num_halvings(min_budget: float, max_budget: float, eta: float) -> int:
    """Largest s with `min_budget * eta**s <= max_budget` (rungs = s + 1)."""
    _check_budgets(min_budget, max_budget, eta, False)
    s = 0
    while min_budget * eta ** (s + 1) <= max_budget * (1 + _EPS):
        s += 1
    return s


def rung_budgets(
    min_budget: float, max_budget: float, eta: float = 3, *, integer_budgets: bool = False
) -> np.ndarray:
    """The budget ladder `max_budget * eta**-k`, k = s..0: ends at `max_budget`, starts >= `min_budget`."""
    _check_budgets(min_budget, max_budget, eta, integer_budgets)
    s = num_halvings(min_budget, max_budget, eta)
    budgets = max_budget / float(eta) ** np.arange(s, -1, -1, dtype=np.float64)
    return np.round(budgets) if integer_budgets else budgets


def _rungs(n_configs: int, budgets: np.ndarray, eta: float) -> tuple[Rung, ...]:
    counts = [int(math.floor(n_configs / float(eta) ** i + _EPS)) for i in range(len(budgets))]
    return tuple(Rung(c, _as_number(b)) for c, b in zip(counts, budgets))


def _as_number(budget: float) -> float | int:
    return int(budget) if float(budget).is_integer() else float(budget)


def successive_halving_rungs(
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    n_configs: int | None = None,
    *,
    integer_budgets: bool = False,
) -> tuple[Rung, ...]:
    """Rungs `(n_configs, budget)` of one successive-halving bracket.

    `n_configs` defaults to `eta**s` (one configuration left at `max_budget`).
    For eta=3, budgets 1..27: (27, 1), (9, 3), (3, 9), (1, 27).
    """
    budgets = rung_budgets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    s = len(budgets) - 1
    smallest = int(math.ceil(float(eta) ** s - _EPS))
    if n_configs is None:
        n_configs = smallest
    _check_positive_int("n_configs", n_configs)
    if n_configs < smallest:
        raise ValueError(
            f"n_configs must be >= eta**{s} = {smallest} so that one configuration reaches "
            f"max_budget={max_budget!r}; got {n_configs!r}"
        )
    return _rungs(n_configs, budgets, eta)


def hyperband_brackets(
    min_budget: float, max_budget: float, eta: float = 3, *, integer_budgets: bool = False
) -> tuple[tuple[Rung, ...], ...]:
    """Brackets of one Hyperband iteration, most aggressive first (Li et al. 2018, Alg. 1).

    Bracket s (s = s_max..0) starts `ceil((s_max + 1) / (s + 1) * eta**s)` configurations at
    budget `max_budget * eta**-s`. For eta=3, budgets 1..27:
    [(27,1),(9,3),(3,9),(1,27)], [(12,3),(4,9),(1,27)], [(6,9),(2,27)], [(4,27)].
    """
    budgets = rung_budgets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    s_max = len(budgets) - 1
    brackets = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * float(eta) ** s - _EPS))
        brackets.append(_rungs(n, budgets[s_max - s :], eta))
    return tuple(brackets)


def planned_budget(brackets: tuple[tuple[Rung, ...], ...], *, resume: bool = True) -> float:
    """Total budget of finite brackets; `resume`: promoted trials continue from their checkpoint."""
    total = 0.0
    for rungs in brackets:
        previous = 0.0
        for rung in rungs:
            total += rung.n_configs * (rung.budget - (previous if resume else 0.0))
            previous = rung.budget
    return total


# ---------------------------------------------------------------- state


@dataclasses.dataclass
class SchedulerState:
    """Trial table of a scheduler. Treat as read-only; `ask`/`tell` return fresh copies.

    `fitness[t, k]` is trial t's result at rung k of its bracket (NaN: not reported).
    """

    generator_state: Any
    brackets: tuple[tuple[Rung, ...], ...]
    asynchronous: bool
    eta: float
    next_bracket: int = 0
    u: np.ndarray = None
    bracket: np.ndarray = None
    rung: np.ndarray = None
    status: np.ndarray = None
    fitness: np.ndarray = None
    batch: np.ndarray = None
    num_batches: int = 0
    batches_told: int = 0
    budget_used: float = 0.0

    def copy(self) -> "SchedulerState":
        return dataclasses.replace(
            self,
            u=self.u.copy(),
            bracket=self.bracket.copy(),
            rung=self.rung.copy(),
            status=self.status.copy(),
            fitness=self.fitness.copy(),
            batch=self.batch.copy(),
        )

    @property
    def num_trials(self) -> int:
        return int(self.u.shape[0])

    def budget_of(self, trial_ids: np.ndarray, rungs: np.ndarray) -> np.ndarray:
        return np.array(
            [self.brackets[b][k].budget for b, k in zip(self.bracket[trial_ids], rungs)],
            dtype=np.float64,
        )


def _empty_state(generator_state, brackets, asynchronous, eta, dim) -> SchedulerState:
    max_rungs = max(len(rungs) for rungs in brackets)
    return SchedulerState(
        generator_state=generator_state,
        brackets=brackets,
        asynchronous=asynchronous,
        eta=float(eta),
        u=np.zeros((0, dim), np.float32),
        bracket=np.zeros((0,), np.int64),
        rung=np.zeros((0,), np.int64),
        status=np.zeros((0,), np.int8),
        fitness=np.zeros((0, max_rungs), np.float64),
        batch=np.zeros((0,), np.int64),
    )


# ---------------------------------------------------------------- shared helpers


def _new_trials(book: SchedulerState, generator, key, n: int, bracket: int) -> None:
    """Ask the generator for n configurations and queue them at rung 0 (mutates book)."""
    book.generator_state, u = generator.ask(book.generator_state, key, n)
    u = np.asarray(u, np.float32)
    if u.shape != (n, book.u.shape[1]):
        raise ValueError(
            f"generator.ask must return shape ({n}, {book.u.shape[1]}); got {u.shape}"
        )
    book.u = np.concatenate([book.u, u])
    book.bracket = np.concatenate([book.bracket, np.full((n,), bracket, np.int64)])
    book.rung = np.concatenate([book.rung, np.zeros((n,), np.int64)])
    book.status = np.concatenate([book.status, np.full((n,), QUEUED, np.int8)])
    book.fitness = np.concatenate([book.fitness, np.full((n, book.fitness.shape[1]), np.nan)])
    book.batch = np.concatenate([book.batch, np.full((n,), book.num_batches, np.int64)])
    book.num_batches += 1


def _jobs(book: SchedulerState, trial_ids: list[int]) -> Jobs:
    ids = np.asarray(trial_ids, np.int64)
    rungs = book.rung[ids]
    budget = book.budget_of(ids, rungs)
    previous = np.where(rungs > 0, book.budget_of(ids, np.maximum(rungs - 1, 0)), 0.0)
    book.budget_used += float(np.sum(budget - previous))
    return Jobs(ids, book.u[ids], budget, previous)


def _ranked(fitness: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids sorted best first (ties by trial id); non-finite fitness last."""
    values = np.where(np.isfinite(fitness), fitness, np.inf)
    return ids[np.lexsort((ids, values))]


def _record(book: SchedulerState, trial_ids, budgets, fitness) -> np.ndarray:
    """Validate a report and store it (mutates book); returns the trial ids."""
    ids = np.asarray(trial_ids)
    budgets = np.asarray(budgets, np.float64)
    fitness = np.asarray(fitness, np.float64)
    if ids.ndim != 1 or budgets.shape != ids.shape or fitness.shape != ids.shape:
        raise ValueError(
            "trial_ids, budgets and fitness must be 1-D arrays of one length; got shapes "
            f"{ids.shape}, {budgets.shape}, {fitness.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"trial_ids must be integers; got dtype {ids.dtype}")
    if len(set(ids.tolist())) != ids.size:
        raise ValueError(f"trial_ids must not repeat; got {ids.tolist()}")
    for trial, budget in zip(ids.tolist(), budgets.tolist()):
        if not 0 <= trial < book.num_trials or book.status[trial] != RUNNING:
            running = np.flatnonzero(book.status == RUNNING).tolist()
            raise ValueError(
                f"trial_ids: trial {trial} is not running; running trials: {running}"
            )
        expected = book.budget_of(np.array([trial]), book.rung[[trial]])[0]
        if not np.isclose(budget, expected):
            raise ValueError(
                f"budgets: trial {trial} was asked to train to budget {expected}; got {budget}"
            )
    book.fitness[ids, book.rung[ids]] = np.where(np.isnan(fitness), np.inf, fitness)
    book.status[ids] = DONE
    return ids


def _feed_generator(book: SchedulerState, generator) -> None:
    """Tell the generator each batch it proposed, in order, once all have a rung-0 result.

    The generator sees the lowest-budget fitness of its own proposals (a plain
    strategy cannot compare fitness across budgets); non-finite values are
    replaced by the worst finite value of the batch.
    """
    while book.batches_told < book.num_batches:
        ids = np.flatnonzero(book.batch == book.batches_told)
        first = book.fitness[ids, 0]
        if np.isnan(first).any():
            return
        finite = np.isfinite(first)
        worst = first[finite].max() if finite.any() else 0.0
        first = np.where(finite, first, worst)
        book.generator_state = generator.tell(
            book.generator_state, jnp.asarray(book.u[ids]), jnp.asarray(first, jnp.float32)
        )
        book.batches_told += 1


# ---------------------------------------------------------------- synchronous (SH, Hyperband)


def _take_queued(book: SchedulerState, n: int) -> list[int]:
    queued = np.flatnonzero(book.status == QUEUED)
    queued = queued[np.lexsort((queued, book.bracket[queued]))][:n]
    book.status[queued] = RUNNING
    return queued.tolist()


def _ask_sync(book: SchedulerState, generator, key, n: int) -> list[int]:
    picked: list[int] = []
    while len(picked) < n:
        taken = _take_queued(book, n - len(picked))
        picked += taken
        if taken:
            continue
        if book.next_bracket >= len(book.brackets):
            break
        key, sub = jax.random.split(key)
        first = book.brackets[book.next_bracket][0]
        _new_trials(book, generator, sub, first.n_configs, book.next_bracket)
        book.next_bracket += 1
    return picked


def _promote_sync(book: SchedulerState, bracket: int) -> None:
    """Queue the top `n_{k+1}` of rung k once all `n_k` results of rung k are in."""
    rungs = book.brackets[bracket]
    members = np.flatnonzero(book.bracket == bracket)
    for k in range(len(rungs) - 1):
        reported = members[~np.isnan(book.fitness[members, k])]
        started_next = np.any(book.rung[members] > k)
        if reported.size == rungs[k].n_configs and not started_next:
            winners = _ranked(book.fitness[reported, k], reported)[: rungs[k + 1].n_configs]
            book.rung[winners] = k + 1
            book.status[winners] = QUEUED


# ---------------------------------------------------------------- asynchronous (ASHA)


def _asha_promotion(book: SchedulerState) -> int | None:
    """The best trial that is in the top 1/eta of its rung's completed results and not promoted."""
    num_rungs = len(book.brackets[0])
    for k in range(num_rungs - 2, -1, -1):
        reported = np.flatnonzero(~np.isnan(book.fitness[:, k]))
        n_top = int(math.floor(reported.size / book.eta + _EPS))
        if n_top == 0:
            continue
        top = _ranked(book.fitness[reported, k], reported)[:n_top]
        promotable = (book.rung[top] == k) & (book.status[top] == DONE)
        waiting = top[promotable & np.isfinite(book.fitness[top, k])]
        if waiting.size:
            trial = int(waiting[0])
            book.rung[trial] = k + 1
            book.status[trial] = RUNNING
            return trial
    return None


def _ask_async(book: SchedulerState, generator, key, n: int, batch_size: int) -> list[int]:
    picked: list[int] = []
    for _ in range(n):
        trial = _asha_promotion(book)
        if trial is None:
            if not np.any(book.status == QUEUED):
                key, sub = jax.random.split(key)
                _new_trials(book, generator, sub, batch_size, 0)
            trial = _take_queued(book, 1)[0]
        picked.append(trial)
    return picked


# ---------------------------------------------------------------- public schedulers


class Scheduler(NamedTuple):
    """`init(key) -> state`; `ask(state, key, n) -> (state, Jobs)`;
    `tell(state, trial_ids, budgets, fitness) -> state`; `brackets`: the rung plan."""

    init: Callable[[jax.Array], SchedulerState]
    ask: Callable[[SchedulerState, jax.Array, int], tuple[SchedulerState, Jobs]]
    tell: Callable[[SchedulerState, Any, Any, Any], SchedulerState]
    brackets: tuple[tuple[Rung, ...], ...]


def _scheduler(dim, brackets, eta, generator, asynchronous, batch_size=1) -> Scheduler:
    generator = uniform_sampler(dim) if generator is None else generator

    def init(key: jax.Array) -> SchedulerState:
        return _empty_state(generator.init(key), brackets, asynchronous, eta, dim)

    def ask(state: SchedulerState, key: jax.Array, n: int) -> tuple[SchedulerState, Jobs]:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer; got {n!r}")
        book = state.copy()
        if asynchronous:
            picked = _ask_async(book, generator, key, n, batch_size)
        else:
            picked = _ask_sync(book, generator, key, n)
        return book, _jobs(book, picked)

    def tell(state: SchedulerState, trial_ids, budgets, fitness) -> SchedulerState:
        book = state.copy()
        ids = _record(book, trial_ids, budgets, fitness)
        if not asynchronous:
            for bracket in np.unique(book.bracket[ids]).tolist():
                _promote_sync(book, bracket)
        _feed_generator(book, generator)
        return book

    return Scheduler(init, ask, tell, brackets)


def successive_halving(
    dim: int,
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    n_configs: int | None = None,
    generator: CandidateGenerator | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """One successive-halving bracket over `n_configs` (default `eta**s`) configurations."""
    _check_positive_int("dim", dim)
    rungs = successive_halving_rungs(
        min_budget, max_budget, eta, n_configs, integer_budgets=integer_budgets
    )
    return _scheduler(dim, (rungs,), eta, generator, asynchronous=False)


def hyperband(
    dim: int,
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    n_iterations: int = 1,
    generator: CandidateGenerator | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """Hyperband: `n_iterations` passes over its successive-halving brackets.

    Brackets are independent; a bracket starts as soon as the earlier ones have
    nothing to hand out (waiting for a rung), so free workers never idle.
    """
    _check_positive_int("dim", dim)
    _check_positive_int("n_iterations", n_iterations)
    brackets = hyperband_brackets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    return _scheduler(dim, brackets * n_iterations, eta, generator, asynchronous=False)


def asha(
    dim: int,
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    generator: CandidateGenerator | None = None,
    batch_size: int | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """Asynchronous successive halving; runs until the driver stops asking.

    New configurations come from the generator `batch_size` at a time (default
    `eta**s`, the size of a successive-halving bracket).
    """
    _check_positive_int("dim", dim)
    budgets = rung_budgets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    if batch_size is None:
        batch_size = int(math.ceil(float(eta) ** (len(budgets) - 1) - _EPS))
    _check_positive_int("batch_size", batch_size)
    ladder = (tuple(Rung(None, _as_number(b)) for b in budgets),)
    return _scheduler(dim, ladder, eta, generator, asynchronous=True, batch_size=batch_size)


# ---------------------------------------------------------------- queries


def is_done(state: SchedulerState) -> bool:
    """True when a finite schedule (SH, Hyperband) has every result in; ASHA never ends."""
    if state.asynchronous:
        return False
    return state.next_bracket >= len(state.brackets) and bool(np.all(state.status == DONE))


def budget_spent(state: SchedulerState) -> float:
    """Budget handed out so far, counting only increments (promoted trials resume)."""
    return state.budget_used


def best_trial(state: SchedulerState) -> Trial:
    """Best reported result at the largest budget any trial has reached."""
    trials, rungs = np.nonzero(~np.isnan(state.fitness))
    if trials.size == 0:
        raise ValueError("best_trial: no result has been reported yet")
    budgets = state.budget_of(trials, rungs)
    at_top = np.isclose(budgets, budgets.max())
    trials, rungs = trials[at_top], rungs[at_top]
    values = state.fitness[trials, rungs]
    best = int(np.lexsort((trials, values))[0])
    trial = int(trials[best])
    return Trial(trial, state.u[trial].copy(), float(budgets.max()), float(values[best]))
