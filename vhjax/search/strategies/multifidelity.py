"""Multi-fidelity strategies: successive halving, Hyperband and ASHA, in the one protocol.

A scheduler decides WHICH configuration trains to WHICH budget (steps or epochs); a candidate
generator (any strategy, uniform sampling of `[0, 1]^D` by default) proposes the new
configurations.

- Successive halving (Jamieson & Talwalkar 2016): start `n` configurations at the smallest
  budget, keep the best `1/eta` of each rung at `eta` times the budget, up to `max_budget`.
- Hyperband (Li et al. 2018): several successive-halving brackets, from aggressive (many
  configurations, small budget) to none (few, full budget); `n_iterations` passes over them.
- ASHA (Li et al. 2020): asynchronous; whenever a worker is free, promote a configuration in
  the top `1/eta` of the completed results of its rung, or else start a new one at the bottom
  rung. Never waits for a whole rung.

They are strategies of the search protocol (`vhjax.search.strategies.base`)::

    state, proposals = scheduler.ask(state, key, n_free_workers)
    # train proposals.u[i] up to proposals.fidelity[i]; proposals.parent[i] >= 0: continue
    # from the checkpoint of that earlier proposal (the same configuration one rung lower)
    state, metrics = scheduler.tell(state, proposals, fitness)

`ask` may return fewer proposals than asked (even none): successive halving waits for a rung
to complete, and a finished schedule has nothing left. NaN or infinite fitness ranks last;
fitness is **minimized**, as by every vhjax strategy.

Schedulers are control logic over a table of trials, so the table is kept in NumPy arrays
that grow with the run (not jittable), but the state is a pytree: the store saves it after
every generation and a resumed search goes on from it. Raising a search's trial budget (or
Hyperband's `n_iterations`) therefore extends a finished search.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.search.strategies.base import (Proposals, SearchState, Strategy, check_positive_int, make,
                                          proposals_of)

QUEUED, RUNNING, DONE = 0, 1, 2
_EPS = 1e-9


class Rung(NamedTuple):
    """One rung of a bracket: how many configurations train to which budget."""

    n_configs: int | None  # None: unbounded (ASHA)
    budget: float


class Trial(NamedTuple):
    """A reported result."""

    trial_id: int
    u: np.ndarray
    budget: float
    fitness: float


def uniform_sampler(dim: int) -> Strategy:
    """The default generator: independent uniform draws in `[0, 1]^dim`; `tell` learns nothing."""
    check_positive_int("dim", dim)

    def ask(state, key, n):
        return state, jax.random.uniform(key, (n, dim))

    return make(dim, lambda key: (), ask, lambda state, u, fitness: state)


# ---------------------------------------------------------------- validation


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
    check_positive_int("n_configs", n_configs)
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

_TABLE = ("u", "bracket", "rung", "status", "fitness", "batch", "latest")
_COUNTERS = ("next_bracket", "num_batches", "batches_told", "budget_used")


class SchedulerState:
    """Trial table of a scheduler (one row per configuration); a pytree that grows.

    `fitness[t, k]` is configuration t's result at rung k of its bracket (NaN: not reported);
    `latest[t]` the proposal index of its latest job (what a promotion continues from).
    `brackets` holds ONE Hyperband iteration; bracket b of the run uses `brackets[b % len]`.
    Treat as read-only; `ask`/`tell` return fresh copies.
    """

    def __init__(self, generator_state, brackets, asynchronous, eta, n_iterations, u, bracket, rung, status,
                 fitness, batch, latest, next_bracket=0, num_batches=0, batches_told=0, budget_used=0.0):
        self.generator_state = generator_state
        self.brackets, self.asynchronous, self.eta, self.n_iterations = brackets, asynchronous, eta, n_iterations
        self.u, self.bracket, self.rung, self.status = u, bracket, rung, status
        self.fitness, self.batch, self.latest = fitness, batch, latest
        self.next_bracket, self.num_batches = int(next_bracket), int(num_batches)
        self.batches_told, self.budget_used = int(batches_told), float(budget_used)

    def _children(self):
        return ((self.generator_state,) + tuple(np.asarray(getattr(self, f)) for f in _TABLE)
                + tuple(getattr(self, f) for f in _COUNTERS))

    def copy(self) -> "SchedulerState":
        children = self._children()
        return SchedulerState(children[0], self.brackets, self.asynchronous, self.eta, self.n_iterations,
                              *(np.array(a, copy=True) for a in children[1:1 + len(_TABLE)]),
                              *children[1 + len(_TABLE):])

    @property
    def num_trials(self) -> int:
        return int(self.u.shape[0])

    @property
    def num_brackets(self) -> int:
        return len(self.brackets) * self.n_iterations

    def rungs_of(self, bracket: int) -> tuple[Rung, ...]:
        return self.brackets[int(bracket) % len(self.brackets)]

    def budget_of(self, trial_ids: np.ndarray, rungs: np.ndarray) -> np.ndarray:
        return np.array([self.rungs_of(b)[k].budget for b, k in zip(self.bracket[trial_ids], rungs)],
                        dtype=np.float64)


jax.tree_util.register_pytree_node(
    SchedulerState,
    lambda s: (s._children(), (s.brackets, s.asynchronous, s.eta, s.n_iterations)),
    lambda aux, children: SchedulerState(children[0], *aux, *children[1:]),
)


def _empty_state(generator_state, brackets, asynchronous, eta, n_iterations, dim) -> SchedulerState:
    max_rungs = max(len(rungs) for rungs in brackets)
    return SchedulerState(generator_state, brackets, asynchronous, float(eta), int(n_iterations),
                          u=np.zeros((0, dim), np.float32), bracket=np.zeros((0,), np.int64),
                          rung=np.zeros((0,), np.int64), status=np.zeros((0,), np.int8),
                          fitness=np.zeros((0, max_rungs), np.float64), batch=np.zeros((0,), np.int64),
                          latest=np.zeros((0,), np.int64))


def _book(state: Any) -> SchedulerState:
    """The scheduler table of a strategy state (the base state wraps it)."""
    return state.inner if isinstance(state, SearchState) else state


# ---------------------------------------------------------------- shared helpers


def _grow(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(array), values.astype(np.asarray(array).dtype)])


def _new_trials(book: SchedulerState, generator, key, n: int, bracket: int) -> None:
    """Ask the generator for n configurations and queue them at rung 0 (mutates book)."""
    book.generator_state, proposed = generator.ask(book.generator_state, key, n)
    u = np.asarray(proposed.u, np.float32)
    if u.shape != (n, book.u.shape[1]):
        raise ValueError(f"generator.ask must return {n} proposals of dimension {book.u.shape[1]}; "
                         f"got shape {u.shape}")
    book.u = _grow(book.u, u)
    book.bracket = _grow(book.bracket, np.full((n,), bracket))
    book.rung = _grow(book.rung, np.zeros((n,)))
    book.status = _grow(book.status, np.full((n,), QUEUED))
    book.fitness = _grow(book.fitness, np.full((n, book.fitness.shape[1]), np.nan))
    book.batch = _grow(book.batch, np.full((n,), book.num_batches))
    book.latest = _grow(book.latest, np.full((n,), -1))
    book.num_batches += 1


def _proposals(book: SchedulerState, trial_ids: list[int], first: int) -> Proposals:
    """Proposals of the picked configurations, numbered from `first`; promotions name a parent."""
    ids = np.asarray(trial_ids, np.int64)
    rungs = book.rung[ids]
    budget = book.budget_of(ids, rungs)
    previous = np.where(rungs > 0, book.budget_of(ids, np.maximum(rungs - 1, 0)), 0.0)
    book.budget_used += float(np.sum(budget - previous))
    parent = np.where(rungs > 0, book.latest[ids], -1)
    book.latest[ids] = first + np.arange(ids.size)
    return proposals_of(book.u[ids].reshape(ids.size, book.u.shape[1]), first, budget, parent)


def _ranked(fitness: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids sorted best first (ties by trial id); non-finite fitness last."""
    values = np.where(np.isfinite(fitness), fitness, np.inf)
    return ids[np.lexsort((ids, values))]


def _record(book: SchedulerState, proposals: Proposals, fitness) -> np.ndarray:
    """Validate a report and store it (mutates book); returns the configuration ids."""
    index = np.asarray(proposals.index, np.int64)
    budgets = np.asarray(proposals.fidelity, np.float64)
    fitness = np.asarray(fitness, np.float64)
    if len(set(index.tolist())) != index.size:
        raise ValueError(f"tell: proposals must not repeat; got indices {index.tolist()}")
    ids = []
    for proposal, budget in zip(index.tolist(), budgets.tolist()):
        match = np.flatnonzero((book.latest == proposal) & (book.status == RUNNING))
        if match.size != 1:
            running = book.latest[book.status == RUNNING].tolist()
            raise ValueError(f"tell: proposal {proposal} is not running; running proposals: {running}")
        trial = int(match[0])
        expected = book.budget_of(np.array([trial]), book.rung[[trial]])[0]
        if not np.isclose(budget, expected):
            raise ValueError(f"tell: proposal {proposal} was asked to train to budget {expected}; "
                             f"got fidelity {budget}")
        ids.append(trial)
    ids = np.asarray(ids, np.int64)
    book.fitness[ids, book.rung[ids]] = np.where(np.isnan(fitness), np.inf, fitness)
    book.status[ids] = DONE
    return ids


def _feed_generator(book: SchedulerState, generator) -> None:
    """Tell the generator each batch it proposed, in order, once all have a rung-0 result.

    The generator sees the lowest-budget fitness of its own proposals (a plain strategy cannot
    compare fitness across budgets).
    """
    while book.batches_told < book.num_batches:
        ids = np.flatnonzero(book.batch == book.batches_told)
        first = book.fitness[ids, 0]
        if np.isnan(first).any():
            return
        book.generator_state, _ = generator.tell(book.generator_state, jnp.asarray(book.u[ids]),
                                                 jnp.asarray(first, jnp.float32))
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
        if book.next_bracket >= book.num_brackets:
            break
        key, sub = jax.random.split(key)
        first = book.rungs_of(book.next_bracket)[0]
        _new_trials(book, generator, sub, first.n_configs, book.next_bracket)
        book.next_bracket += 1
    return picked


def _promote_sync(book: SchedulerState, bracket: int) -> None:
    """Queue the top `n_{k+1}` of rung k once all `n_k` results of rung k are in."""
    rungs = book.rungs_of(bracket)
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
    """A multi-fidelity strategy: `init`, `ask`, `tell` of the search protocol, and its plan.

    `brackets`: the rung plan of the whole run (Hyperband: one iteration times `n_iterations`).
    """

    init: Any
    ask: Any
    tell: Any
    brackets: tuple[tuple[Rung, ...], ...]


def _scheduler(dim, brackets, eta, generator, asynchronous, batch_size=1, n_iterations=1) -> Scheduler:
    generator = uniform_sampler(dim) if generator is None else generator

    def init(key: jax.Array) -> SchedulerState:
        return _empty_state(generator.init(key), brackets, asynchronous, eta, n_iterations, dim)

    def ask(state: SchedulerState, key: jax.Array, n: int, first) -> tuple[SchedulerState, Proposals]:
        book = state.copy()
        if asynchronous:
            picked = _ask_async(book, generator, key, n, batch_size)
        else:
            picked = _ask_sync(book, generator, key, n)
        return book, _proposals(book, picked, int(first))

    def tell(state: SchedulerState, proposals: Proposals, fitness) -> SchedulerState:
        book = state.copy()
        ids = _record(book, proposals, fitness)
        if not asynchronous:
            for bracket in np.unique(book.bracket[ids]).tolist():
                _promote_sync(book, bracket)
        _feed_generator(book, generator)
        return book

    strategy = make(dim, init, ask, tell, proposes=True)
    return Scheduler(strategy.init, strategy.ask, strategy.tell, tuple(brackets) * n_iterations)


def successive_halving(
    dim: int,
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    n_configs: int | None = None,
    generator: Strategy | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """One successive-halving bracket over `n_configs` (default `eta**s`) configurations."""
    check_positive_int("dim", dim)
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
    generator: Strategy | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """Hyperband: `n_iterations` passes over its successive-halving brackets.

    Brackets are independent; a bracket starts as soon as the earlier ones have nothing to
    hand out (waiting for a rung), so free workers never idle. A resumed search with a larger
    `n_iterations` goes on with the next pass.
    """
    check_positive_int("dim", dim)
    check_positive_int("n_iterations", n_iterations)
    brackets = hyperband_brackets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    return _scheduler(dim, brackets, eta, generator, asynchronous=False, n_iterations=n_iterations)


def asha(
    dim: int,
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    generator: Strategy | None = None,
    batch_size: int | None = None,
    integer_budgets: bool = False,
) -> Scheduler:
    """Asynchronous successive halving; runs until the driver stops asking.

    New configurations come from the generator `batch_size` at a time (default `eta**s`, the
    size of a successive-halving bracket).
    """
    check_positive_int("dim", dim)
    budgets = rung_budgets(min_budget, max_budget, eta, integer_budgets=integer_budgets)
    if batch_size is None:
        batch_size = int(math.ceil(float(eta) ** (len(budgets) - 1) - _EPS))
    check_positive_int("batch_size", batch_size)
    ladder = (tuple(Rung(None, _as_number(b)) for b in budgets),)
    return _scheduler(dim, ladder, eta, generator, asynchronous=True, batch_size=batch_size)


# ---------------------------------------------------------------- queries


def is_done(state: Any) -> bool:
    """True when a finite schedule (SH, Hyperband) has every result in; ASHA never ends."""
    book = _book(state)
    if book.asynchronous:
        return False
    return book.next_bracket >= book.num_brackets and bool(np.all(book.status == DONE))


def budget_spent(state: Any) -> float:
    """Budget handed out so far, counting only increments (promoted trials resume)."""
    return _book(state).budget_used


def best_trial(state: Any) -> Trial:
    """Best reported result at the largest budget any configuration has reached."""
    book = _book(state)
    trials, rungs = np.nonzero(~np.isnan(book.fitness))
    if trials.size == 0:
        raise ValueError("best_trial: no result has been reported yet")
    budgets = book.budget_of(trials, rungs)
    at_top = np.isclose(budgets, budgets.max())
    trials, rungs = trials[at_top], rungs[at_top]
    values = book.fitness[trials, rungs]
    best = int(np.lexsort((trials, values))[0])
    trial = int(trials[best])
    return Trial(trial, book.u[trial].copy(), float(budgets.max()), float(values[best]))


# ---------------------------------------------------------------- registered by name


def _generator(space: Any, generator: Any, generator_kwargs: Any) -> Strategy | None:
    """None (uniform), a strategy name (built for `space` with `generator_kwargs`) or a strategy."""
    if generator is None or isinstance(generator, str):
        if generator is None:
            if generator_kwargs:
                raise ValueError(f"generator_kwargs={generator_kwargs!r} needs a generator name")
            return None
        from vhjax.search.strategies.base import make_strategy

        return make_strategy(generator, space, **dict(generator_kwargs or {}))
    if all(callable(getattr(generator, f, None)) for f in ("init", "ask", "tell")):
        return generator
    raise ValueError(f"generator must be None, a strategy name or a strategy; got {generator!r}")


def _register(name: str, build):
    from vhjax.search.strategies.base import register_strategy, space_dim

    own = [p for p in inspect.signature(build).parameters
           if p not in ("dim", "min_budget", "max_budget", "eta", "generator", "integer_budgets")]

    @register_strategy(name)
    def factory(space: Any, *, min_budget: float, max_budget: float, eta: float = 3, generator: Any = None,
                generator_kwargs: Any = None, integer_budgets: bool = True, **kwargs: Any) -> Scheduler:
        unknown = sorted(set(kwargs) - set(own))
        if unknown:
            raise ValueError(f"strategy {name!r}: unknown setting(s) {unknown}; allowed: min_budget, max_budget, "
                             f"eta, generator, generator_kwargs, integer_budgets{''.join(', ' + p for p in own)}")
        return build(space_dim(space), min_budget=min_budget, max_budget=max_budget, eta=eta,
                     generator=_generator(space, generator, generator_kwargs),
                     integer_budgets=integer_budgets, **kwargs)

    factory.__doc__ = f"`{build.__name__}` as a registered strategy (budgets: integer training steps)."
    return factory


for _name, _build in (("successive_halving", successive_halving), ("hyperband", hyperband), ("asha", asha)):
    _register(_name, _build)
