"""`search_multifidelity(...)`: successive halving, Hyperband or ASHA through the persisted driver.

A generation asks the scheduler for up to `population` jobs (a candidate and the budget to train
it to), evaluates them in one call (`Candidates.fidelity` holds the budgets; a
`TrainingObjective` trains each budget group as one population for that many steps) and tells the
scheduler. Every job is a trial row with its budget in the `fidelity` column; a promoted
configuration's row names the row it was promoted from as its parent.

Resuming: the scheduler is control logic over a table, so instead of serializing it the search
replays the stored generations (the same asks, with the stored results told back), then goes on.
Nothing completed is evaluated again. Promoted configurations are trained again from scratch to
their new budget (no warm start), so the budget a rung costs is the full budget of its trials.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from vhjax.search import storage as storage_lib
from vhjax.search.driver import (Candidates, _as_trial, _check_fingerprint, _check_int, _check_space,
                                 _generation_keys, _minimized, _progress_line, _start_generation, _trial_results,
                                 as_evaluator, config_fingerprint, metrics_from_output, resolve_objectives,
                                 space_fingerprint)
from vhjax.search.results import SearchResult, TrialTable, rank_trials
from vhjax.search.strategies.multifidelity import asha, hyperband, is_done, successive_halving

SCHEDULERS = ("successive_halving", "hyperband", "asha")


def make_scheduler(name: str, dim: int, *, min_budget: int, max_budget: int, eta: float, generator: Any,
                   n_iterations: int = 1):
    """The multifidelity scheduler `name` with integer budgets (training steps)."""
    common = dict(min_budget=min_budget, max_budget=max_budget, eta=eta, generator=generator,
                  integer_budgets=True)
    if name == "successive_halving":
        return successive_halving(dim, **common)
    if name == "hyperband":
        return hyperband(dim, n_iterations=n_iterations, **common)
    if name == "asha":
        return asha(dim, **common)
    raise ValueError(f"scheduler {name!r} is unknown; allowed: {', '.join(SCHEDULERS)}")


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
) -> SearchResult:
    """Search with a multifidelity scheduler; budgets are training steps (integers).

    Args:
      objective: an `evaluate(candidates)` object that reads `candidates.fidelity` (the budget of
        each candidate), e.g. `TrainingObjective`, or a callable `f(params_list, budgets)`.
      scheduler: 'successive_halving', 'hyperband' or 'asha'.
      min_budget, max_budget, eta: the rung ladder (budgets min_budget * eta^k up to max_budget).
      max_trials: the most jobs (trial rows) to run; Hyperband and successive halving also stop
        when their schedule is complete.
      population: jobs asked and evaluated per generation.
      generator: a strategy name proposing new configurations (default uniform random; e.g.
        'tpe' or 'bayesopt' for a BOHB-like search), built with `generator_kwargs`.
    Returns:
      A `SearchResult`; `fidelity` holds each trial's budget; `result.best` is the best trial
      at the largest budget reached.
    """
    _check_space(space)
    _check_int("population", population, 1)
    _check_int("max_trials", max_trials, 1)
    _check_int("seed", seed, 0)
    for field, value in (("min_budget", min_budget), ("max_budget", max_budget)):
        _check_int(field, value, 1)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    generator_obj = None
    if generator is not None:
        from vhjax.search.strategies import make_strategy

        generator_obj = make_strategy(generator, space, **dict(generator_kwargs or {}))
    plan = make_scheduler(scheduler, int(space.dim), min_budget=min_budget, max_budget=max_budget, eta=eta,
                          generator=generator_obj, n_iterations=n_iterations)
    rung = first_rung_size(plan, scheduler, eta)
    if max_trials < rung:
        raise ValueError(f"max_trials={max_trials} is smaller than one rung of {scheduler} "
                         f"({rung} configurations at budget {min_budget}); allowed: max_trials >= {rung}")
    evaluate = _fidelity_evaluator(objective)
    spec = resolve_objectives(objective, None, direction)
    store = storage_lib.open_store(workdir, storage, study=study)
    try:
        _check_fingerprint(store, config_fingerprint(
            space=space_fingerprint(space), scheduler=scheduler, min_budget=int(min_budget),
            max_budget=int(max_budget), eta=float(eta), n_iterations=int(n_iterations), generator=generator,
            generator_kwargs=dict(generator_kwargs or {}), population=int(population), seed=int(seed),
            objectives=spec))
        _run(store, plan, evaluate, space, spec, int(max_trials), int(population), int(seed), verbose)
        trials = TrialTable(store.trials())
    finally:
        store.close()
    return SearchResult(trials=trials, direction=spec[next(iter(spec))], objectives=spec,
                        workdir=None if workdir is None else os.fspath(workdir), study=study,
                        top_fidelity_only=True)


def _fidelity_evaluator(objective: Any):
    if callable(getattr(objective, "evaluate", None)):
        return objective.evaluate
    if callable(objective):
        return lambda candidates: objective(candidates.params, candidates.fidelity)
    return as_evaluator(objective)  # raises the driver's error for an unknown kind


def _run(store, plan, evaluate, space, spec, max_trials, population, seed, verbose):
    init_key, run_key = jax.random.split(jax.random.key(seed))
    state = plan.init(init_key)
    latest_row: dict[int, int] = {}  # scheduler trial id -> store trial id of its latest rung
    saved = store.load_state()
    finished = 0 if saved is None else saved[0]
    done, generation, failed = 0, 0, 0
    leader: list = []
    primary = spec[next(iter(spec))]
    for generation in range(finished):  # replay what is stored
        ask_key, _ = _generation_keys(run_key, generation)
        state, jobs = plan.ask(state, ask_key, min(population, max_trials - done))
        rows = sorted(store.trials(generation=generation), key=lambda t: t.slot)
        if len(rows) != len(jobs.trial_id):
            raise ValueError(f"the store's generation {generation} holds {len(rows)} trials but the scheduler "
                             f"replays {len(jobs.trial_id)}; was it written by another version?")
        fitness = _minimized(rows, spec)[:, 0]
        state = plan.tell(state, jobs.trial_id, jobs.budget, np.where(np.isfinite(fitness), fitness, np.inf))
        latest_row.update(zip(jobs.trial_id.tolist(), (t.trial_id for t in rows)))
        done += len(rows)
        failed += sum(t.status == "failed" for t in rows)
        leader = rank_trials(leader + rows, primary)[:1]
    generation = finished
    while done < max_trials and not is_done(state):
        started = time.perf_counter()
        ask_key, eval_key = _generation_keys(run_key, generation)
        asked, jobs = plan.ask(state, ask_key, min(population, max_trials - done))
        if len(jobs.trial_id) == 0:
            break
        u = np.asarray(jobs.u, np.float64)
        params = [space.decode(row) for row in u]
        trial_ids = _start_generation(store, generation, u, params)
        budgets = np.asarray(jobs.budget, np.float64)
        output = evaluate(Candidates(u, params, trial_ids, generation, eval_key, fidelity=budgets))
        metrics = metrics_from_output(output, len(trial_ids), list(spec))
        metrics["fidelity"] = budgets
        metrics["parent_id"] = np.array([latest_row.get(t, -1) for t in jobs.trial_id.tolist()], np.float64)
        results = _trial_results(trial_ids, metrics, list(spec))
        fitness = _minimized(results, spec)[:, 0]
        state = plan.tell(asked, jobs.trial_id, jobs.budget, np.where(np.isfinite(fitness), fitness, np.inf))
        store.finish_trials(results, state=b"replay", generation=generation + 1)
        latest_row.update(zip(jobs.trial_id.tolist(), trial_ids))
        done += len(results)
        failed += sum(r.status == "failed" for r in results)
        leader = rank_trials(leader + [_as_trial(r, generation) for r in results], primary)[:1]
        if verbose:
            print(_progress_line(generation, done, max_trials, leader, failed, time.perf_counter() - started)
                  + f", budgets {sorted(set(budgets.astype(int).tolist()))}", flush=True)
        generation += 1
