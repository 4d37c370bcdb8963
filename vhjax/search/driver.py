"""`search(...)`: run a strategy against an objective, one generation at a time, persisted.

A generation is: `ask` a population of candidates in `[0, 1]^D`, decode them,
evaluate them all at once, `tell` the strategy (fitness negated when
maximizing: strategies minimize), and write the trials and the new strategy
state to the store in ONE transaction.

Objectives (the dispatch is `as_evaluator`):

- an object with `evaluate(candidates: Candidates)` (the protocol; a tabular
  benchmark such as `vhjax.search.tabular.NASBench201`, or later a training task
  run by the population engine). It may name its fitness metric with a
  `fitness_metric` attribute;
- a plain callable, vectorized over a batch: called with the list of decoded
  candidate dicts (`objective_input='params'`, the default) or with the encoded
  array `u (n, D)` (`objective_input='encoded'`).

An objective returns fitness `(n,)`, objectives `(n, M)` (named by
`objectives`), or a dict of `(n,)` metric arrays holding the fitness metric
(`'fitness'`, the objective's `fitness_metric`, or the names in `objectives`).
Two optional entries are stored in their own columns: `'parent_id'` (trial id
of the parent, -1 for none: PBT / evolution lineage) and `'fidelity'`.

Resuming: the same call with the same workdir (or storage) loads the completed
trials and the strategy state and goes on; nothing completed is recomputed. The
key of generation g is `fold_in(key(seed), g)`, so a generation that was asked
but not finished is asked again identically. A workdir created with a different
space, strategy, population, seed or objectives is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from vhjax.search import storage as storage_lib
from vhjax.search.results import DIRECTIONS, SearchResult, TrialTable, fitness_sign, rank_trials
from vhjax.search.storage import NewTrial, Trial, TrialResult

OBJECTIVE_INPUTS = ("params", "encoded")
SPECIAL_METRICS = ("parent_id", "fidelity")
_FINGERPRINT_KEY = "config_fingerprint"


class Candidates(NamedTuple):
    """One generation handed to an objective's `evaluate`."""

    u: np.ndarray  # (n, D) encoded candidates in [0, 1]^D
    params: list[dict[str, Any]]  # decoded candidates
    trial_ids: list[int]  # their ids in the store (checkpoint names, lineage)
    generation: int
    key: jax.Array  # for stochastic objectives (training); derived from (seed, generation)
    fidelity: np.ndarray | None = None  # (n,) budgets (training steps) in a multifidelity search


Evaluator = Callable[[Candidates], Any]


# ----------------------------------------------------------------------------- validation


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}; got {value!r}")


def _check_space(space: Any) -> None:
    missing = [name for name in ("dim", "decode") if not hasattr(space, name)]
    if missing:
        raise TypeError(
            f"space must be a vhjax search space (with dim, sample, decode, encode); "
            f"{type(space).__name__} lacks {missing}"
        )


def as_evaluator(objective: Any, objective_input: str = "params") -> Evaluator:
    """The objective as a function of a `Candidates` batch; ValueError for an unknown kind."""
    if objective_input not in OBJECTIVE_INPUTS:
        raise ValueError(f"objective_input must be one of {OBJECTIVE_INPUTS}; got {objective_input!r}")
    evaluate = getattr(objective, "evaluate", None)
    if callable(evaluate):
        return evaluate
    if callable(objective):
        if objective_input == "encoded":
            return lambda candidates: objective(candidates.u)
        return lambda candidates: objective(candidates.params)
    raise ValueError(
        f"objective of unknown kind {type(objective).__name__}: allowed are an object with an "
        "evaluate(candidates) method (e.g. vhjax.search.tabular.NASBench201) or a callable taking "
        "a batch (list of param dicts, or u (n, D) with objective_input='encoded')"
    )


def resolve_objectives(
    objective: Any, objectives: Mapping[str, str] | Sequence[str] | str | None, direction: str
) -> dict[str, str]:
    """Objective metric names -> directions (one entry: single objective)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if objectives is None:
        name = getattr(objective, "fitness_metric", None) or "fitness"
        return {name: direction}
    if isinstance(objectives, str):
        objectives = [objectives]
    if isinstance(objectives, Mapping):
        resolved = {str(name): value for name, value in objectives.items()}
    else:
        resolved = {str(name): direction for name in objectives}
    if not resolved:
        raise ValueError("objectives must name at least one metric; got an empty collection")
    for name, value in resolved.items():
        if value not in DIRECTIONS:
            raise ValueError(f"objectives[{name!r}] must be one of {DIRECTIONS}; got {value!r}")
        if name in SPECIAL_METRICS:
            raise ValueError(f"objectives may not use the reserved metric name {name!r}")
    return resolved


def _resolve_strategy(strategy: Any, space: Any, strategy_kwargs: Mapping[str, Any]):
    """(Strategy, description for the fingerprint)."""
    if isinstance(strategy, str):
        from vhjax.search.strategies import make_strategy

        return make_strategy(strategy, space, **strategy_kwargs), strategy
    if all(callable(getattr(strategy, name, None)) for name in ("init", "ask", "tell")):
        names = [getattr(getattr(strategy, f), "__qualname__", type(getattr(strategy, f)).__name__)
                 for f in ("init", "ask", "tell")]
        return strategy, "custom:" + ",".join(names)
    raise ValueError(
        f"strategy must be a strategy name (see vhjax.search.strategies) or an object with "
        f"init/ask/tell; got {strategy!r}"
    )


# ----------------------------------------------------------------------------- fingerprint


def space_fingerprint(space: Any) -> dict[str, Any]:
    """What identifies a space: its type, dimension and the decoding of fixed probe points."""
    dim = int(space.dim)
    probes = [np.full(dim, v) for v in (0.01, 0.26, 0.51, 0.76, 0.99)]
    probes += list(np.random.default_rng(20240917).random((4, dim)))  # local generator, fixed
    text = repr(space)
    return {
        "type": f"{type(space).__module__}.{type(space).__qualname__}",
        "dim": dim,
        "repr": None if " at 0x" in text else text,
        "probes": hashlib.sha256(
            storage_lib.to_json([space.decode(u) for u in probes]).encode()
        ).hexdigest(),
    }


def config_fingerprint(**config: Any) -> str:
    return storage_lib.to_json(config)


def _check_fingerprint(store: storage_lib.TrialStore, fingerprint: str) -> None:
    stored = store.set_meta_if_absent(_FINGERPRINT_KEY, fingerprint)
    if stored == fingerprint:
        return
    old, new = json.loads(stored), json.loads(fingerprint)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    details = "; ".join(f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in differing)
    raise ValueError(
        f"the store at {store.location!r} (study {store.study!r}) was created by a different "
        f"search configuration and cannot be resumed ({details}); use a new workdir or study"
    )


# ----------------------------------------------------------------------------- outputs


def metrics_from_output(output: Any, n: int, objective_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Normalize an objective's output to a dict of `(n, ...)` float64 arrays."""
    if isinstance(output, Mapping):
        metrics = {str(k): np.asarray(v, dtype=np.float64) for k, v in output.items()}
    else:
        values = np.asarray(output, dtype=np.float64)
        if values.shape == (n,):
            metrics = {objective_names[0]: values}
        elif values.ndim == 2 and values.shape[0] == n and values.shape[1] == len(objective_names):
            metrics = {name: values[:, i] for i, name in enumerate(objective_names)}
        else:
            raise ValueError(
                f"objective returned shape {values.shape}; expected ({n},) or ({n}, "
                f"{len(objective_names)}) for objectives {list(objective_names)}, or a dict of "
                f"({n},) metric arrays"
            )
    for name, values in metrics.items():
        if values.ndim == 0 or values.shape[0] != n:
            raise ValueError(f"metric {name!r} has shape {values.shape}; expected ({n}, ...)")
    missing = [name for name in objective_names if name not in metrics]
    if missing:
        raise ValueError(
            f"objective output lacks metric(s) {missing} to optimize; it returned {sorted(metrics)}. "
            "Name the fitness metric with objectives=... (or return a 'fitness' entry)"
        )
    return metrics


def _trial_results(
    trial_ids: Sequence[int], metrics: Mapping[str, np.ndarray], objective_names: Sequence[str]
) -> list[TrialResult]:
    results = []
    for i, trial_id in enumerate(trial_ids):
        row = {name: values[i].tolist() for name, values in metrics.items()
               if name not in SPECIAL_METRICS}
        objective_values = [float(metrics[name][i]) for name in objective_names]
        ok = all(math.isfinite(v) for v in objective_values)
        parent = metrics.get("parent_id")
        parent_id = int(parent[i]) if parent is not None and parent[i] >= 0 else None
        fidelity = metrics.get("fidelity")
        results.append(TrialResult(
            trial_id=int(trial_id),
            status="complete" if ok else "failed",
            fitness=objective_values[0] if ok else None,
            metrics=row,
            fidelity=None if fidelity is None else float(fidelity[i]),
            parent_id=parent_id,
        ))
    return results


def _minimized(trials: Sequence[Trial | TrialResult], objectives: Mapping[str, str]) -> np.ndarray:
    """`(n, M)` objective values turned to 'lower is better'; NaN for failed trials."""
    signs = np.asarray([fitness_sign(d) for d in objectives.values()])
    rows = []
    for trial in trials:
        if trial.status != "complete":
            rows.append([math.nan] * len(objectives))
        else:
            rows.append([float(trial.metrics.get(name, trial.fitness)) if len(objectives) > 1
                         else float(trial.fitness) for name in objectives])
    return -signs * np.asarray(rows, dtype=np.float64).reshape(len(rows), len(objectives))


def strategy_fitness(history: np.ndarray, current: np.ndarray) -> np.ndarray:
    """What the strategy is told for the current generation (minimized, finite).

    Single objective: the minimized fitness, a failed trial counting as the worst
    finite value seen so far (0 if none). Several objectives: the Pareto rank of
    each candidate among all completed trials so far (0 = non-dominated),
    failed trials ranking one below the worst.
    """
    if current.shape[1] == 1:
        values = current[:, 0]
        seen = np.concatenate([history[:, 0], values])
        finite = seen[np.isfinite(seen)]
        worst = float(finite.max()) if finite.size else 0.0
        return np.where(np.isfinite(values), values, worst)
    from vhjax.search.pareto import pareto_ranks

    everything = np.concatenate([history, current])
    ok = np.all(np.isfinite(everything), axis=1)
    ranks = np.full(len(everything), np.nan)
    if ok.any():
        ranks[ok] = np.asarray(pareto_ranks(everything[ok]))
    worst = np.nanmax(ranks) + 1 if ok.any() else 0.0
    ranks = np.where(np.isnan(ranks), worst, ranks)
    return ranks[len(history):]


def pareto_trials(trials: Sequence[Trial], objectives: Mapping[str, str]) -> list[Trial]:
    """The completed trials no other completed trial dominates."""
    done = [t for t in trials if t.status == "complete"]
    if not done:
        return []
    from vhjax.search.pareto import non_dominated

    mask = np.asarray(non_dominated(_minimized(done, objectives)))
    return [trial for trial, keep in zip(done, mask) if keep]


# ----------------------------------------------------------------------------- the loop


def _generation_keys(run_key: jax.Array, generation: int) -> tuple[jax.Array, jax.Array]:
    ask_key, eval_key = jax.random.split(jax.random.fold_in(run_key, generation))
    return ask_key, eval_key


def _start_generation(
    store: storage_lib.TrialStore, generation: int, u: np.ndarray, params: list[dict]
) -> list[int]:
    """Trial ids of a generation about to be evaluated (reusing rows of an interrupted run)."""
    stale = store.trials(generation=generation)
    same = len(stale) == len(u) and all(
        trial.status == "running" and np.array_equal(np.asarray(trial.u, np.float64), row)
        for trial, row in zip(stale, np.asarray(u, np.float64))
    )
    if same:
        return [trial.trial_id for trial in stale]
    if stale:
        store.delete_trials([trial.trial_id for trial in stale])
    return store.add_trials([
        NewTrial(generation=generation, slot=slot, params=p, u=row)
        for slot, (p, row) in enumerate(zip(params, np.asarray(u, np.float64)))
    ])


def _progress_line(generation: int, done: int, budget: int, ranked: Sequence[Trial],
                   failed: int, seconds: float) -> str:
    best = (f"best {ranked[0].fitness:.6g} (trial {ranked[0].trial_id})" if ranked
            else "no completed trial yet")
    return (f"[vhjax.search] generation {generation}: {done}/{budget} trials, {failed} failed, "
            f"{best}, {seconds:.2f}s")


def search(
    objective: Any,
    space: Any,
    strategy: Any = "random",
    *,
    budget: int,
    population: int = 1,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    direction: str = "maximize",
    strategy_kwargs: Mapping[str, Any] | None = None,
    objectives: Mapping[str, str] | Sequence[str] | str | None = None,
    storage: str | os.PathLike | None = None,
    verbose: bool = True,
    objective_input: str = "params",
    study: str = storage_lib.DEFAULT_STUDY,
) -> SearchResult:
    """Search `space` for the best candidates of `objective`, `population` at a time.

    Args:
      objective: see the module docstring (an `evaluate(candidates)` object or a
        vectorized callable).
      space: a vhjax search space (`dim`, `sample`, `decode`, `encode`).
      strategy: a name for `vhjax.search.strategies.make_strategy` (built with
        `strategy_kwargs`) or a `Strategy(init, ask, tell)`.
      budget: total number of trials (the last generation may be smaller).
      population: candidates asked per generation.
      workdir: persists the trials in `workdir/trials.sqlite`; rerunning resumes.
      seed: the run's randomness; generation g uses `fold_in(key(seed), g)`.
      direction: 'maximize' or 'minimize' the fitness (single objective).
      objectives: metric names (with `direction`) or a dict name -> direction;
        two or more make the search multi-objective (strategies are told Pareto ranks).
      storage: a database URL (SQLAlchemy) or an SQLite path, instead of the workdir's file.
      verbose: print progress after every generation.
      objective_input: 'params' (list of dicts) or 'encoded' (`u (n, D)`) for a callable objective.
      study: name of this search inside the store (several studies may share a database).
    Returns:
      A `SearchResult` (trial table, best trial, Pareto front, plots).
    """
    _check_int("population", population, 1)
    _check_int("budget", budget, 1)
    if budget < population:
        raise ValueError(f"budget must be >= population={population}; got budget={budget}")
    _check_int("seed", seed, 0)
    _check_space(space)
    evaluate = as_evaluator(objective, objective_input)
    objective_spec = resolve_objectives(objective, objectives, direction)
    objective_names = list(objective_spec)
    primary_direction = objective_spec[objective_names[0]]
    strategy_kwargs = dict(strategy_kwargs or {})
    strategy_obj, strategy_name = _resolve_strategy(strategy, space, strategy_kwargs)

    store = storage_lib.open_store(workdir, storage, study=study)
    try:
        _check_fingerprint(store, config_fingerprint(
            space=space_fingerprint(space), strategy=strategy_name,
            strategy_kwargs=strategy_kwargs, population=int(population), seed=int(seed),
            objectives=objective_spec, objective_input=objective_input,
        ))
        _run(store, evaluate, space, strategy_obj, objective_spec, int(budget), int(population),
             int(seed), verbose)
        trials = TrialTable(store.trials())
    finally:
        store.close()
    return SearchResult(
        trials=trials,
        direction=primary_direction,
        objectives=objective_spec,
        pareto_front=pareto_trials(trials, objective_spec) if len(objective_spec) > 1 else None,
        workdir=None if workdir is None else os.fspath(workdir),
        study=study,
    )


def _restore(store, strategy, init_key):
    """(strategy state, generations told) from the store, or a fresh state."""
    state = strategy.init(init_key)
    saved = store.load_state()
    if saved is None:
        return state, 0
    generation, blob = saved
    return storage_lib.state_from_bytes(blob, state), generation


def _run(store, evaluate, space, strategy, objective_spec, budget, population, seed, verbose):
    """The generation loop; everything it learns goes to the store."""
    objective_names = list(objective_spec)
    primary = objective_spec[objective_names[0]]
    init_key, run_key = jax.random.split(jax.random.key(seed))
    state, generation = _restore(store, strategy, init_key)
    told = [t for t in store.trials() if t.generation < generation]
    history = _minimized(told, objective_spec)
    leader = rank_trials(told, primary)[:1]  # running best, for the progress line
    failed = sum(t.status == "failed" for t in told)
    done = len(told)
    while done < budget:
        started = time.perf_counter()
        n = min(population, budget - done)
        ask_key, eval_key = _generation_keys(run_key, generation)
        asked_state, u = strategy.ask(state, ask_key, n)
        u_host = np.asarray(u)
        params = [space.decode(row) for row in u_host]
        trial_ids = _start_generation(store, generation, u_host, params)
        output = evaluate(Candidates(u_host, params, trial_ids, generation, eval_key))
        results = _trial_results(trial_ids, metrics_from_output(output, n, objective_names),
                                 objective_names)
        current = _minimized(results, objective_spec)
        fitness = strategy_fitness(history, current).astype(np.float32)
        state = strategy.tell(asked_state, u, jax.numpy.asarray(fitness))
        store.finish_trials(results, state=storage_lib.state_to_bytes(state),
                            generation=generation + 1)
        history = np.concatenate([history, current])
        done += n
        leader = rank_trials(leader + [_as_trial(r, generation) for r in results], primary)[:1]
        failed += sum(r.status == "failed" for r in results)
        if verbose:
            print(_progress_line(generation, done, budget, leader, failed,
                                 time.perf_counter() - started), flush=True)
        generation += 1


def _as_trial(result: TrialResult, generation: int) -> Trial:
    return Trial(trial_id=result.trial_id, generation=generation, slot=0, params={}, u=(),
                 status=result.status, fitness=result.fitness, metrics=dict(result.metrics))
