"""`search(...)`: run a strategy against an objective, one generation at a time, persisted.

A generation is: `ask` the strategy for up to `population` proposals (unit-cube points, each
with a fidelity and a parent), check them, decode them, evaluate them all at once, `tell` the
strategy (fitness negated when maximizing: strategies minimize), and write the trials and the
new strategy state to the store in ONE transaction. Every strategy of
`vhjax.search.strategies` (grid to Hyperband, ASHA and PBT) runs through this one loop.

Objectives (the dispatch is `as_evaluator`):

- an object with `evaluate(candidates: Candidates)` (the protocol; a tabular benchmark such
  as `vhjax.search.tabular.NASBench201`, or `TrainingObjective`). It may name its fitness
  metric with a `fitness_metric` attribute, and its configuration with `fingerprint()`;
- a plain callable, vectorized over a batch: called with the list of decoded candidate dicts
  (`objective_input='params'`, the default) or with the encoded array `u (n, D)`
  (`objective_input='encoded'`); with a strategy that proposes fidelities (multi-fidelity,
  PBT) it gets the budgets `(n,)` as a second argument.

`Candidates.fidelity` holds the budgets (None when the strategy proposes none) and
`Candidates.parent_ids` the trial each candidate continues from (None: from scratch). An
objective that can restore a trial's checkpoint continues training from it; one that cannot
trains from scratch up to the budget.

An objective returns fitness `(n,)`, objectives `(n, M)` (named by `objectives`), or a dict
of `(n,)` metric arrays holding the fitness metric (`'fitness'`, the objective's
`fitness_metric`, or the names in `objectives`). Two optional entries are stored in their own
columns: `'parent_id'` and `'fidelity'` (they default to the proposal's).

Resuming: the same call with the same workdir (or storage) loads the completed trials and the
strategy state and goes on; nothing completed is recomputed, and a larger `budget` extends a
finished search. The key of generation g is `fold_in(key(seed), g)`, so a generation that was
asked but not finished is asked again identically. A store created with a different space,
strategy, population, seed, objectives or objective configuration is refused. Everything is
validated before anything is written: a call that fails on bad input leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from vhjax import diffs, distributed, faults
from vhjax.search import storage as storage_lib
from vhjax.search.deadline import Deadline, asks_stop
from vhjax.search.results import DIRECTIONS, SearchResult, TrialTable, fitness_sign, rank_trials
from vhjax.search.storage import NewTrial, Trial, TrialResult
from vhjax.search.strategies.base import Proposals, check_positive_int, pareto_shaped

OBJECTIVE_INPUTS = ("params", "encoded")
SPECIAL_METRICS = ("parent_id", "fidelity")
EXTENDABLE_KWARGS = ("n_iterations",)  # raising these extends a search: left out of the fingerprint
FINGERPRINT_KEY = "config_fingerprint"


class Candidates(NamedTuple):
    """One generation handed to an objective's `evaluate`."""

    u: np.ndarray  # (n, D) encoded candidates in [0, 1]^D
    params: list[dict[str, Any]]  # decoded candidates
    trial_ids: list[int]  # their ids in the store (checkpoint names, lineage)
    generation: int
    key: jax.Array  # for stochastic objectives (training); derived from (seed, generation)
    fidelity: np.ndarray | None = None  # (n,) budgets (training steps) when the strategy proposes them
    parent_ids: list[int | None] | None = None  # trial to continue from (its checkpoint), None: scratch


Evaluator = Callable[[Candidates], Any]


# ----------------------------------------------------------------------------- validation


def check_space(space: Any) -> None:
    """`space` must be a vhjax search space (TypeError naming what it lacks)."""
    missing = [name for name in ("dim", "decode") if not hasattr(space, name)]
    if missing:
        raise TypeError(
            f"space must be a vhjax search space (with dim, sample, decode, encode); "
            f"{type(space).__name__} lacks {missing}"
        )


def objective_name(objective: Any) -> str:
    return getattr(objective, "__qualname__", None) or type(objective).__name__


def as_evaluator(objective: Any, objective_input: str = "params") -> Evaluator:
    """The objective as a function of a `Candidates` batch; ValueError for an unknown kind."""
    if objective_input not in OBJECTIVE_INPUTS:
        raise ValueError(f"objective_input must be one of {OBJECTIVE_INPUTS}; got {objective_input!r}")
    evaluate = getattr(objective, "evaluate", None)
    if callable(evaluate):
        return evaluate
    if callable(objective):
        def call(candidates: Candidates) -> Any:
            batch = candidates.u if objective_input == "encoded" else candidates.params
            if candidates.fidelity is None:
                return objective(batch)
            return objective(batch, candidates.fidelity)

        return call
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


def resolve_strategy(strategy: Any, space: Any, strategy_kwargs: Mapping[str, Any]):
    """(Strategy, description for the fingerprint)."""
    if isinstance(strategy, str):
        from vhjax.search.strategies import make_strategy

        return make_strategy(strategy, space, **strategy_kwargs), strategy
    if all(callable(getattr(strategy, name, None)) for name in ("init", "ask", "tell")):
        if strategy_kwargs:
            raise ValueError(f"strategy_kwargs={dict(strategy_kwargs)!r} apply to a strategy name only; "
                             "build the strategy object with them instead")
        names = [getattr(getattr(strategy, f), "__qualname__", type(getattr(strategy, f)).__name__)
                 for f in ("init", "ask", "tell")]
        return strategy, "custom:" + ",".join(names)
    raise ValueError(
        f"strategy must be a strategy name (see vhjax.search.strategies) or an object with "
        f"init/ask/tell; got {strategy!r}"
    )


def check_proposals(proposals: Any, n: int, dim: int, first: int, strategy: str) -> Proposals:
    """The strategy's proposals as host arrays; ValueError naming the strategy when malformed."""
    where = f"strategy {strategy!r} ask(state, key, {n})"
    if not isinstance(proposals, Proposals):
        raise TypeError(f"{where} must return (state, Proposals(u, fidelity, parent, index)); got "
                        f"{type(proposals).__name__} (build strategies with "
                        "vhjax.search.strategies.base.make)")
    u = np.asarray(proposals.u, np.float64)
    if u.ndim != 2 or u.shape[1] != dim or u.shape[0] > n:
        raise ValueError(f"{where} returned u of shape {u.shape}; allowed: (m, {dim}) with m <= {n}")
    m = u.shape[0]
    if not np.all(np.isfinite(u)):
        raise ValueError(f"{where} returned non-finite points (rows {np.flatnonzero(~np.isfinite(u).all(1)).tolist()}); "
                         "allowed: points in [0, 1]")
    outside = np.flatnonzero(((u < 0) | (u > 1)).any(axis=1))
    if outside.size:
        raise ValueError(f"{where} returned points outside [0, 1] (row {int(outside[0])}: {u[outside[0]].tolist()}); "
                         "allowed: points in [0, 1]")
    fidelity = np.asarray(proposals.fidelity, np.float64)
    parent = np.asarray(proposals.parent)
    index = np.asarray(proposals.index)
    for field, values in (("fidelity", fidelity), ("parent", parent), ("index", index)):
        if values.shape != (m,):
            raise ValueError(f"{where} returned {field} of shape {values.shape}; allowed: ({m},)")
    if not np.all(np.isfinite(fidelity) & (fidelity >= 0)):
        raise ValueError(f"{where} returned fidelity {fidelity.tolist()}; allowed: finite budgets >= 0")
    if not np.array_equal(index, first + np.arange(m)):
        raise ValueError(f"{where} returned index {index.tolist()}; allowed: {first}..{first + m - 1} "
                         "(proposals are numbered in the order they are asked)")
    if not np.all((parent == -1) | ((parent >= 0) & (parent < first))):
        raise ValueError(f"{where} returned parent {parent.tolist()}; allowed: -1 or the index of an "
                         f"earlier proposal (< {first})")
    return Proposals(u, fidelity, parent.astype(np.int64), index.astype(np.int64))


def validate_search(*, population: Any, budget: Any, seed: Any, space: Any) -> None:
    check_positive_int("population", population)
    check_positive_int("budget", budget)
    if budget < population:
        raise ValueError(f"budget must be >= population={population}; got budget={budget}")
    check_positive_int("seed", seed, minimum=0)
    check_space(space)


# ----------------------------------------------------------------------------- fingerprint


def _number(value: Any) -> Any:
    """Numbers compared by meaning: 1, 1.0 and np.float32(1) are the same."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return value


def space_description(space: Any) -> Any:
    """A vhjax `Space` parameter by parameter, numbers normalized; other spaces their repr."""
    params = getattr(space, "params", None)
    if not isinstance(params, dict):
        text = repr(space)
        return None if " at 0x" in text else text
    described = []
    for name, param in params.items():
        entry: dict[str, Any] = {"name": name, "kind": type(param).__name__}
        for field in ("low", "high", "log"):
            if hasattr(param, field):
                entry[field] = _number(getattr(param, field))
        if getattr(param, "step", None) is not None:  # only when set: stores of spaces without it resume
            entry["step"] = _number(param.step)
        if hasattr(param, "choices"):
            entry["choices"] = storage_lib.to_json(list(param.choices))
        if param.condition is not None:
            parent, values = param.condition
            entry["condition"] = [parent, sorted(storage_lib.to_json(_number(v)) for v in values)]
        described.append(entry)
    return described


def space_fingerprint(space: Any) -> dict[str, Any]:
    """What identifies a space: its type, dimension, parameters and the decoding of fixed probes."""
    dim = int(space.dim)
    probes = [np.full(dim, v) for v in (0.01, 0.26, 0.51, 0.76, 0.99)]
    probes += list(np.random.default_rng(20240917).random((4, dim)))  # local generator, fixed
    return {
        "type": f"{type(space).__module__}.{type(space).__qualname__}",
        "dim": dim,
        "params": space_description(space),
        "probes": hashlib.sha256(
            storage_lib.to_json([space.decode(u) for u in probes]).encode()
        ).hexdigest(),
    }


def objective_fingerprint(objective: Any) -> Any:
    """The objective's `fingerprint()` (e.g. a `TrainingObjective`'s training config), else None."""
    fingerprint = getattr(objective, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def config_fingerprint(**config: Any) -> str:
    return storage_lib.to_json(config)


def check_fingerprint(store: storage_lib.TrialStore, fingerprint: str) -> None:
    """Refuse a store written by another configuration (reads only; `write_fingerprint` writes)."""
    stored = store.get_meta(FINGERPRINT_KEY)
    if stored is None or stored == fingerprint:
        return
    details = diffs.describe(diffs.differences(json.loads(stored), json.loads(fingerprint)))
    raise ValueError(
        f"the store at {store.location!r} (study {store.study!r}) was created by a different "
        f"search configuration and cannot be resumed ({details}); use a new workdir or study"
    )


def write_fingerprint(store: storage_lib.TrialStore, fingerprint: str) -> None:
    """Record the configuration once something was computed with it (then `check_fingerprint`)."""
    if store.set_meta_if_absent(FINGERPRINT_KEY, fingerprint) != fingerprint:
        check_fingerprint(store, fingerprint)


# ----------------------------------------------------------------------------- outputs

_OUTPUT_CONTRACT = ("an objective returns fitness (n,), objectives (n, M), or a dict of (n,) "
                    "numeric metric arrays")


def _numeric(name: str, values: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{where} returned {name} {values!r:.120} that is not numeric ({error}); "
                        f"{_OUTPUT_CONTRACT}") from None


def metrics_from_output(output: Any, n: int, objective_names: Sequence[str],
                        where: str = "objective") -> dict[str, np.ndarray]:
    """Normalize an objective's output to a dict of `(n, ...)` float64 arrays."""
    if isinstance(output, Mapping):
        metrics = {str(k): _numeric(f"metric {k!r}", v, where) for k, v in output.items()}
    else:
        values = _numeric("output", output, where)
        if values.shape == (n,):
            metrics = {objective_names[0]: values}
        elif values.ndim == 2 and values.shape[0] == n and values.shape[1] == len(objective_names):
            metrics = {name: values[:, i] for i, name in enumerate(objective_names)}
        else:
            raise ValueError(
                f"{where} returned shape {values.shape}; expected ({n},) or ({n}, "
                f"{len(objective_names)}) for objectives {list(objective_names)}, or a dict of "
                f"({n},) metric arrays"
            )
    for name, values in metrics.items():
        if values.ndim == 0 or values.shape[0] != n:
            raise ValueError(f"{where}: metric {name!r} has shape {values.shape}; expected ({n}, ...)")
    missing = [name for name in objective_names if name not in metrics]
    if missing:
        raise ValueError(
            f"{where} output lacks metric(s) {missing} to optimize; it returned {sorted(metrics)}. "
            "Name the fitness metric with objectives=... (or return a 'fitness' entry)"
        )
    for name in [*objective_names, *SPECIAL_METRICS]:
        if name in metrics and metrics[name].shape != (n,):
            raise ValueError(f"{where}: metric {name!r} has shape {metrics[name].shape}; allowed: ({n},), one "
                             "number per candidate")
    parent = metrics.get("parent_id")
    if parent is not None:
        given = parent[~np.isnan(parent) & (parent >= 0)]
        if np.any(~np.isfinite(given) | (given != np.round(given)) | (given >= 2.0 ** 63)):
            raise ValueError(f"{where}: 'parent_id' has value {parent.tolist()}; allowed: trial ids (integers >= 0), "
                             "or -1 / NaN for none")
    fidelity = metrics.get("fidelity")
    if fidelity is not None and np.any(np.isinf(fidelity) | (fidelity < 0)):
        raise ValueError(f"{where}: 'fidelity' has value {fidelity.tolist()}; allowed: finite budgets >= 0 "
                         "(NaN: the proposal's)")
    return metrics


def trial_results(
    trial_ids: Sequence[int], metrics: Mapping[str, np.ndarray], objective_names: Sequence[str]
) -> list[TrialResult]:
    """Store rows of one evaluated generation (failed: a non-finite objective value)."""
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
            fidelity=None if fidelity is None or not np.isfinite(fidelity[i]) else float(fidelity[i]),
            parent_id=parent_id,
        ))
    return results


def minimized(trials: Sequence[Trial | TrialResult], objectives: Mapping[str, str]) -> np.ndarray:
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


def pareto_trials(trials: Sequence[Trial], objectives: Mapping[str, str]) -> list[Trial]:
    """The completed trials no other completed trial dominates."""
    done = [t for t in trials if t.status == "complete"]
    if not done:
        return []
    from vhjax.search.pareto import non_dominated

    mask = np.asarray(non_dominated(minimized(done, objectives)))
    return [trial for trial, keep in zip(done, mask) if keep]


# ----------------------------------------------------------------------------- the loop


def generation_keys(run_key: jax.Array, generation: int) -> tuple[jax.Array, jax.Array]:
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
                   failed: int, seconds: float, budgets: np.ndarray) -> str:
    best = (f"best {ranked[0].fitness:.6g} (trial {ranked[0].trial_id})" if ranked
            else "no completed trial yet")
    line = (f"[vhjax.search] generation {generation}: {done}/{budget} trials, {failed} failed, "
            f"{best}, {seconds:.2f}s")
    if np.any(budgets > 0):
        line += f", budgets {sorted(set(np.round(budgets, 6).tolist()))}"
    return line


def _progress(budget: int, done: int, verbose: bool):
    """The generation progress: a tqdm bar over trials (rate, ETA) on a terminal, else one line per
    generation with elapsed time and ETA; silent unless `verbose`, and on processes other than 0."""
    from vhjax.train.progress import Progress

    return Progress(budget, initial=done, label="[vhjax.search]", verbose=verbose, unit="trial")


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
    timeout: float | None = None,
    callback: Callable[[Trial], bool | None] | None = None,
) -> SearchResult:
    """Search `space` for the best candidates of `objective`, `population` at a time.

    Args:
      objective: see the module docstring (an `evaluate(candidates)` object or a
        vectorized callable).
      space: a vhjax search space (`dim`, `sample`, `decode`, `encode`).
      strategy: a name for `vhjax.search.strategies.make_strategy` (built with
        `strategy_kwargs`; e.g. 'hyperband' with min_budget/max_budget, or 'pbt') or a
        strategy object of the protocol (`init`, `ask`, `tell`).
      budget: total number of trials (the last generation may be smaller); raising it on a
        finished search extends the search.
      population: proposals asked per generation.
      workdir: persists the trials in `workdir/trials.sqlite`; rerunning resumes.
      seed: the run's randomness; generation g uses `fold_in(key(seed), g)`.
      direction: 'maximize' or 'minimize' the fitness (single objective).
      objectives: metric names (with `direction`) or a dict name -> direction;
        two or more make the search multi-objective (strategies are told Pareto ranks).
      storage: a database URL (SQLAlchemy) or an SQLite file path, instead of the workdir's file.
      verbose: progress over trials: a bar with rate and ETA when stderr is a terminal, else one
        line per generation with its ETA (process 0 only).
      objective_input: 'params' (list of dicts) or 'encoded' (`u (n, D)`) for a callable objective.
      study: name of this search inside the store (several studies may share a database).
      timeout: seconds of wall time from the call after which no new generation starts (as
        Optuna's `optimize(timeout=...)`; the running one finishes and is stored, and the call's
        first generation always runs); `result.timed_out` says whether it ended the search, and
        rerunning the call in its workdir goes on to the budget.
      callback: called with each finished trial (a `Trial` as `result.trials` holds it: params,
        status, fitness, metrics, fidelity, parent) once its generation is stored, in slot order
        (as Optuna's `optimize(callbacks=...)`; on process 0; trials a resumed call read back are
        not sent again). Returning True stops the search as the timeout does (the generation's
        other trials are still sent, no new generation starts, `result.stopped`, a rerun in the
        workdir goes on).
    Returns:
      A `SearchResult` (trial table, best trial, Pareto front, plots); when the strategy
      proposes fidelities, the best trial is taken among those at the largest budget reached.
    """
    validate_search(population=population, budget=budget, seed=seed, space=space)
    deadline = Deadline(timeout)
    evaluate = as_evaluator(objective, objective_input)
    objective_spec = resolve_objectives(objective, objectives, direction)
    strategy_kwargs = dict(strategy_kwargs or {})
    strategy_obj, strategy_name = resolve_strategy(strategy, space, strategy_kwargs)
    storage_lib.check_storage(workdir, storage)
    fingerprint = config_fingerprint(
        space=space_fingerprint(space), strategy=strategy_name,
        strategy_kwargs={k: v for k, v in strategy_kwargs.items() if k not in EXTENDABLE_KWARGS},
        population=int(population), seed=int(seed), objectives=objective_spec,
        objective_input=objective_input, objective=objective_fingerprint(objective),
    )
    if not distributed.is_main_process():  # the strategy and the store live on process 0
        followed, ended = _follow(evaluate, space, int(seed))
        trials = TrialTable(followed)
        deadline.reached, deadline.stopped = ended["timed_out"], ended["stopped"]
    else:
        try:
            with search_lock(workdir, storage), storage_lib.open_store(workdir, storage, study=study, objectives=objective_spec,
                                                                       space=space) as store:
                check_fingerprint(store, fingerprint)
                _run(store, fingerprint, evaluate, objective_name(objective), space, strategy_obj, strategy_name,
                     objective_spec, int(budget), int(population), int(seed), verbose, deadline, callback)
                trials = TrialTable(store.trials())
        except Exception as error:  # the others wait for process 0's next message: tell them it failed
            if not getattr(error, DURING_EVALUATION, False):  # (in an evaluation they fail in their own)
                _share({"error": f"{type(error).__name__}: {error}"})
            raise
        _share({"trials": [dataclasses.asdict(t) for t in trials], "timed_out": deadline.reached,
                "stopped": deadline.stopped})
    return SearchResult(
        trials=trials,
        direction=objective_spec[next(iter(objective_spec))],
        objectives=objective_spec,
        pareto_front=pareto_trials(trials, objective_spec) if len(objective_spec) > 1 else None,
        workdir=None if workdir is None else os.fspath(workdir),
        study=study,
        top_fidelity_only=any(t.fidelity is not None for t in trials),
        timed_out=deadline.reached,
        stopped=deadline.stopped,
    )


def search_lock(workdir: Any, storage: Any):
    """Hold the search workdir's lock (`workdir/.lock`) while a search writes its store there, so a
    second process on the same workdir fails at once with `WorkdirInUse`. A `storage=` database is
    not locked: several processes may share one on purpose."""
    from pathlib import Path

    from vhjax.train.workdir import workdir_lock

    return workdir_lock(Path(workdir) if workdir is not None and storage is None else None)


def _restore(store, strategy, init_key):
    """(strategy state, generations told) from the store, or a fresh state."""
    state = strategy.init(init_key)
    saved = store.load_state()
    if saved is None:
        return state, 0
    generation, blob = saved
    try:
        return storage_lib.state_from_bytes(blob, state), generation
    except storage_lib.StoreDamaged:
        raise
    except Exception as error:  # msgpack's errors for damaged bytes are of many kinds
        detail = f"{type(error).__name__}: {str(error)[:200]}" if str(error) else type(error).__name__
        raise storage_lib.damaged(store.location, f"the saved strategy state cannot be read ({detail})") from None


def _run(store, fingerprint, evaluate, evaluator_name, space, strategy, strategy_name, objective_spec,
         budget, population, seed, verbose, deadline: Deadline, callback: Callable[[Trial], bool | None] | None = None):
    """The generation loop; everything it learns goes to the store. Once `deadline` has passed no
    generation starts after the call's first; `callback` gets each generation's trials once stored."""
    objective_names = list(objective_spec)
    primary = objective_spec[objective_names[0]]
    init_key, run_key = jax.random.split(jax.random.key(seed))
    state, generation = _restore(store, strategy, init_key)
    told = sorted((t for t in store.trials() if t.generation < generation),
                  key=lambda t: (t.generation, t.slot))
    trial_of = [t.trial_id for t in told]  # proposal index -> trial id
    history = minimized(told, objective_spec)
    leader = rank_trials(told, primary)[:1]  # running best, for the progress line
    failed = sum(t.status == "failed" for t in told)
    dim = int(space.dim)
    progress = _progress(budget, len(trial_of), verbose)
    first = len(trial_of)
    while len(trial_of) < budget:
        if len(trial_of) > first and deadline.passed():
            progress.message(f"[vhjax.search] {deadline.reason()}: {len(trial_of)} of {budget} trials done; rerunning the call "
                             "in its workdir goes on")
            break
        started = time.perf_counter()
        n = min(population, budget - len(trial_of))
        ask_key, eval_key = generation_keys(run_key, generation)
        asked_state, raw = strategy.ask(state, ask_key, n)
        proposals = check_proposals(raw, n, dim, len(trial_of), strategy_name)
        m = proposals.u.shape[0]
        if m == 0:
            progress.message(f"[vhjax.search] strategy {strategy_name!r} has nothing more to propose")
            break
        params = [space.decode(row) for row in proposals.u]
        trial_ids = _start_generation(store, generation, proposals.u, params)
        parent_ids = [trial_of[p] if p >= 0 else None for p in proposals.parent.tolist()]
        has_fidelity = bool(np.any(proposals.fidelity > 0))
        candidates = Candidates(proposals.u, params, trial_ids, generation, eval_key,
                                fidelity=proposals.fidelity.copy() if has_fidelity else None, parent_ids=parent_ids)
        _share({"candidates": _candidates_message(candidates)})
        output = _evaluate_agreed(evaluate, candidates)
        metrics = metrics_from_output(output, m, objective_names, f"objective {evaluator_name!r}")
        if has_fidelity:
            metrics.setdefault("fidelity", proposals.fidelity)
        metrics.setdefault("parent_id", np.array([-1 if p is None else p for p in parent_ids], np.float64))
        results = trial_results(trial_ids, metrics, objective_names)
        faults.point("search.evaluated")
        current = minimized(results, objective_spec)
        fitness = current[:, 0] if current.shape[1] == 1 else pareto_shaped(history, current)
        state, _ = strategy.tell(asked_state, raw, jax.numpy.asarray(fitness, jax.numpy.float32))
        write_fingerprint(store, fingerprint)
        store.finish_trials(results, state=storage_lib.state_to_bytes(state), generation=generation + 1)
        if callback is not None:
            for trial in sorted(store.trials(ids=trial_ids), key=lambda t: t.slot):  # this generation's rows only
                if asks_stop(callback(trial)):
                    deadline.stop()
        history = np.concatenate([history, current])
        trial_of += trial_ids
        leader = rank_trials(leader + [_as_trial(r, generation) for r in results], primary)[:1]
        failed += sum(r.status == "failed" for r in results)
        progress.update(len(trial_ids), _progress_line(generation, len(trial_of), budget, leader, failed,
                                                       time.perf_counter() - started, proposals.fidelity))
        generation += 1
    progress.close()


def _share(message: dict) -> None:
    """Send a message to the other processes of a multi-process run (nothing with one process)."""
    if distributed.process_count() > 1:
        distributed.broadcast_bytes(storage_lib.to_json(message).encode())


def _candidates_message(candidates: Candidates) -> dict:
    return {"u": np.asarray(candidates.u, np.float64).tolist(), "trial_ids": list(candidates.trial_ids),
            "generation": int(candidates.generation), "parent_ids": candidates.parent_ids,
            "fidelity": None if candidates.fidelity is None else np.asarray(candidates.fidelity).tolist()}


class SearchAborted(RuntimeError):
    """Another process of a multi-process search failed; raised on the others (process 0 outside an
    evaluation, or any process inside one: see `_evaluate_agreed`)."""


def _evaluate_agreed(evaluate: Evaluator, candidates: Candidates) -> Any:
    """The objective on this process. With several processes they agree after it (and the loop
    before each training chunk) that none failed: an error in one process's evaluation is raised
    there, as one process's search raises it, and every other process raises `SearchAborted`
    naming that process and its error, instead of waiting in a collective until a timeout."""
    try:
        output = evaluate(candidates)
    except distributed.PeerFailed as error:
        raise _aborted(error, candidates) from error
    except Exception as error:
        distributed.report_failure(error)
        setattr(error, DURING_EVALUATION, True)
        raise
    try:
        distributed.agree("search evaluation")
    except distributed.PeerFailed as error:
        raise _aborted(error, candidates) from error
    return output


def _aborted(error: distributed.PeerFailed, candidates: Candidates) -> SearchAborted:
    aborted = SearchAborted(f"process {error.process} of this search failed while evaluating generation "
                            f"{candidates.generation} (trials {list(candidates.trial_ids)}), so this process "
                            f"stops too: {error.error}")
    setattr(aborted, DURING_EVALUATION, True)  # the failed process listens to no message
    return aborted


# set on an exception raised by the objective: every process was evaluating, each fails in its own
DURING_EVALUATION = "_vhjax_search_during_evaluation"


def _follow(evaluate: Evaluator, space: Any, seed: int) -> tuple[list[Trial], dict]:
    """A process other than 0: evaluate each generation process 0 asks (every process takes part in
    a population that spans processes), until process 0 sends the finished trials (returned with
    whether the timeout or a callback ended the search: {'timed_out', 'stopped'}), or its error."""
    _, run_key = jax.random.split(jax.random.key(seed))
    while True:
        message = json.loads(distributed.broadcast_bytes(None))
        if "error" in message:
            raise SearchAborted(f"process 0 of this search failed, so this process stops too: {message['error']}")
        if "trials" in message:
            return ([Trial(**{**t, "u": tuple(t["u"])}) for t in message["trials"]],
                    {"timed_out": message["timed_out"], "stopped": message["stopped"]})
        asked = message["candidates"]
        u = np.asarray(asked["u"], np.float64).reshape(len(asked["trial_ids"]), -1)
        fidelity = None if asked["fidelity"] is None else np.asarray(asked["fidelity"])
        _, eval_key = generation_keys(run_key, asked["generation"])
        _evaluate_agreed(evaluate, Candidates(u, [space.decode(row) for row in u], asked["trial_ids"],
                                              asked["generation"], eval_key, fidelity=fidelity,
                                              parent_ids=asked["parent_ids"]))


def _as_trial(result: TrialResult, generation: int) -> Trial:
    return Trial(trial_id=result.trial_id, generation=generation, slot=0, params={}, u=(),
                 status=result.status, fitness=result.fitness, metrics=dict(result.metrics))
