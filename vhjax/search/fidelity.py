"""`search_multifidelity(...)`: successive halving, Hyperband or ASHA through the one driver.

The schedulers are strategies of the search protocol (`vhjax.search.strategies.multifidelity`),
so this is `vhjax.search(...)` with a scheduler: each generation asks for up to `population`
proposals (a configuration, the budget to train it to and, for a promotion, the trial it
continues from), evaluates them in one call (`Candidates.fidelity` holds the budgets,
`Candidates.parent_ids` the trials whose checkpoints a promotion may continue from) and tells
the scheduler. Every job is a trial row with its budget in the `fidelity` column and, for a
promotion, the row it was promoted from as its parent.

Resuming: the scheduler state is saved after every generation like any strategy state, so a
resumed search goes on where it stopped, and one resumed with a larger `max_trials` (or, for
Hyperband, a larger `n_iterations`) extends the finished search.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from vhjax.search import storage as storage_lib
from vhjax.search.driver import search
from vhjax.search.results import SearchResult
from vhjax.search.storage import Trial
from vhjax.search.strategies.base import check_positive_int, space_dim

SCHEDULERS = ("successive_halving", "hyperband", "asha")


def first_rung_size(scheduler: Any, name: str, eta: float) -> int:
    """Configurations the first rung needs before anything can be promoted."""
    if name == "asha":
        return int(np.ceil(eta))
    return int(scheduler.brackets[0][0].n_configs)


def search_multifidelity(
    objective: Any,
    space: Any,
    scheduler: str = "hyperband",
    *,
    min_budget: int,
    max_budget: int,
    max_trials: int,
    population: int,
    eta: float = 3,
    n_iterations: int = 1,
    generator: str | None = None,
    generator_kwargs: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike | None = None,
    storage: str | os.PathLike | None = None,
    seed: int = 0,
    direction: str = "maximize",
    verbose: bool = True,
    study: str = storage_lib.DEFAULT_STUDY,
    timeout: float | None = None,
    callback: Callable[[Trial], bool | None] | None = None,
) -> SearchResult:
    """Search with a multifidelity scheduler; budgets are training steps (integers).

    Args:
      objective: an `evaluate(candidates)` object that reads `candidates.fidelity` (the budget of
        each candidate), e.g. `TrainingObjective`, or a callable `f(params_list, budgets)`.
      scheduler: 'successive_halving', 'hyperband' or 'asha'.
      min_budget, max_budget, eta: the rung ladder (budgets min_budget * eta^k up to max_budget).
      max_trials: the most jobs (trial rows) to run; Hyperband and successive halving also stop
        when their schedule is complete. Raise it (or `n_iterations`) to extend a finished search.
      population: jobs asked and evaluated per generation.
      generator: a strategy name proposing new configurations (default uniform random; e.g.
        'tpe' or 'bayesopt' for a BOHB-like search), built with `generator_kwargs`.
      timeout: seconds after which no new generation starts (`vhjax.search.search`'s `timeout`).
      callback: called with each finished trial (`vhjax.search.search`'s `callback`).
    Returns:
      A `SearchResult`; `fidelity` holds each trial's budget; `result.best` is the best trial
      at the largest budget reached.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    for field, value in (("min_budget", min_budget), ("max_budget", max_budget), ("max_trials", max_trials),
                         ("population", population)):
        check_positive_int(field, value)
    kwargs: dict[str, Any] = dict(min_budget=min_budget, max_budget=max_budget, eta=eta, generator=generator,
                                  generator_kwargs=dict(generator_kwargs or {}))
    if scheduler == "hyperband":
        kwargs["n_iterations"] = n_iterations
    from vhjax.search.strategies import make_strategy

    space_dim(space)
    plan = make_strategy(scheduler, space, **kwargs)
    rung = first_rung_size(plan, scheduler, eta)
    if max_trials < rung:
        raise ValueError(f"max_trials={max_trials} is smaller than one rung of {scheduler} "
                         f"({rung} configurations at budget {min_budget}); allowed: max_trials >= {rung}")
    return search(objective, space, scheduler, budget=max_trials, population=population, workdir=workdir,
                  seed=seed, direction=direction, strategy_kwargs=kwargs, storage=storage, verbose=verbose,
                  study=study, timeout=timeout, callback=callback)
