"""`tune`'s PBT method: a budget of N trials' worth as shrinking population based training runs.

On a space of real-valued hyperparameters only, `tune(config, space, budget=N)` trains N // 2
members (a multiple of twice the member shards, at least 4) for `config.steps` steps in one
compiled program, with exploit/explore every thirtieth of the run, each slot keeping its best
evaluated parameters, and only the best half training on after 3/10 of the rounds: the setting
that reached Optuna TPE's best validation accuracy soonest on the MNIST-1D benchmark
(experiments/README.md, "Time to quality"). One such run trains 0.65 x N/2 full trials' worth, so
the budget pays for several: the method runs as many as fit in it (three when the population is
N / 2, as for N=64; more when it is cut down or set smaller), each from its own first population
(scrambled Sobol points spread over the space, seeded per run; restarts: the later ones reuse the
first one's compiled programs), and picks the best round of any of them. Every member at every
round of every run is a trial (`search_pbt`), so the result is a `TuneResult` like the
sampler-and-pruner method's. With a workdir, run r > 0 trains in `workdir/restart_<r>` and stores
its trials as the study `<study_name>-restart-<r>` of the same `workdir/study.db`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vhjax.config import TrainConfig
from vhjax.search.deadline import Deadline
from vhjax.search.space import Float, Space

ROUNDS = 30  # about a thirtieth of the steps between rounds (`even_interval`)
SHRINK_AT = 0.3  # the best half trains on after this fraction of the rounds
MIN_POPULATION = 4
RESTART_STUDY = "{study}-restart-{run}"  # the study of run `run` > 0 in the workdir's study.db


def pbt_space(space: Space) -> bool:
    """Whether PBT can search `space`: every parameter an unconditional `Float` without a step (PBT
    perturbs reals)."""
    return bool(space.params) and all(type(p) is Float and p.condition is None and p.step is None
                                      for p in space.params.values())


def pbt_population(budget: float, shards: int) -> int:
    """Members for a budget of `budget` full trials' worth: half of it, cut to a multiple of twice
    the member shards (so the kept half fills whole member groups on every device), at least 4."""
    unit = 2 * max(1, shards)
    return max(MIN_POPULATION, int(budget // 2) // unit * unit)


def run_config(config: TrainConfig, metric: str) -> TrainConfig:
    """The configuration every PBT run of `tune` trains: each slot keeps its best parameters as
    evaluated on the validation split by `metric` (higher is better)."""
    return dataclasses.replace(config, keep_best=True, monitor_split="eval", monitor=metric, monitor_mode="max")


def pbt_schedule(steps: int, population: int) -> tuple[int, dict[int, int]]:
    """(interval, shrink): rounds about every thirtieth of `steps`, the best half kept after 3/10."""
    from vhjax.population.pbt import pbt_rounds
    from vhjax.search.pbt_search import even_interval

    interval = even_interval(steps, ROUNDS)
    return interval, halving(pbt_rounds(steps, interval), population)


def halving(rounds: int, population: int) -> dict[int, int]:
    """`search_pbt`'s `shrink` for `rounds` rounds: the best half kept after 3/10 of them (none
    when there is no round to halve at or the half would be under 2 members)."""
    shrink_round = max(0, math.floor(SHRINK_AT * rounds) - 1)
    return {shrink_round: population // 2} if rounds >= 2 and population // 2 >= 2 else {}


def trial_number(round_index: int, position: int, population: int, shrink: Mapping[int, int]) -> int:
    """The study's number of the `position`-th training member of round `round_index` (the store
    numbers the rounds' trials in order; after a shrink round only the kept members have trials)."""
    def members(r: int) -> int:
        return min((kept for at, kept in shrink.items() if at < r), default=population)

    return sum(members(r) for r in range(round_index)) + position


def run_member_steps(steps: int, interval: int, population: int, shrink: Mapping[int, int]) -> int:
    """Member-steps one shrinking run trains: each round's training members times its steps."""
    from vhjax.population.pbt import pbt_rounds

    rounds = pbt_rounds(steps, interval)
    return sum((trial_number(r + 1, 0, population, shrink) - trial_number(r, 0, population, shrink))
               * (min(steps, (r + 1) * interval) - r * interval) for r in range(rounds))


def pbt_runs(budget: float, steps: int, interval: int, population: int, shrink: Mapping[int, int]) -> int:
    """How many runs `budget` full trials' worth pays for (at least one)."""
    return max(1, int(budget * steps // run_member_steps(steps, interval, population, shrink)))


def run_seed(seed: int, run: int) -> int:
    """Run `run`'s seed: `seed` for the first, else one drawn from (seed, run), so the restarts of
    `seed` do not repeat the first runs of `seed + 1`, `seed + 2`, ..."""
    import numpy as np

    return seed if run == 0 else int(np.random.SeedSequence((seed, run)).generate_state(1)[0])


def restart_study(study_name: str, run: int) -> str:
    """The name of run `run`'s study in the workdir's study.db (the first run's: `study_name`)."""
    return study_name if run == 0 else RESTART_STUDY.format(study=study_name, run=run)


def restart_studies(path: Path, study_name: str) -> list[str]:
    """The restarts' studies of the PBT method's study `study_name` in the SQLite file `path`, in run order."""
    import optuna

    names = {summary.study_name for summary in optuna.get_all_study_summaries(f"sqlite:///{path.absolute()}")}
    runs = []
    while restart_study(study_name, len(runs) + 1) in names:
        runs.append(restart_study(study_name, len(runs) + 1))
    return runs


def is_restart_study(name: str) -> bool:
    """Whether `name` is a PBT method restart's study (see `RESTART_STUDY`)."""
    stem, _, run = name.rpartition("-restart-")
    return bool(stem) and run.isdigit()


def run_pbt_tune(config: TrainConfig, space: Space, *, budget: float, population: int | None, metric: str,
                 workdir: Path | None, study_name: str, seed: int, callback: Callable[[dict], bool | None] | None,
                 mesh: Any, compilation_cache: bool | str, verbose: bool,
                 enqueue: Sequence[Mapping[str, Any]] = (), deadline: Deadline | None = None) -> Any:
    """Run the PBT method (see the module doc); a `TuneResult` whose study holds every run's trials.
    `enqueue`: the first run's first members' values (`search_pbt`). `deadline`: once it has passed,
    the running run ends at its next round and no further run starts."""
    import optuna

    from vhjax import parallel
    from vhjax.compilation_cache import combined_records
    from vhjax.search.pbt_search import check_space_names, search_pbt
    from vhjax.search.tune import TuneResult, devices_line

    mesh = parallel.resolve_mesh(mesh)
    population = pbt_population(budget, parallel.member_shards(mesh)) if population is None else population
    interval, shrink = pbt_schedule(config.steps, population)
    runs = pbt_runs(budget, config.steps, interval, population, shrink)
    check_space_names(run_config(config, metric), space, interval)  # before the first line: as every run trains it
    deadline = deadline or Deadline(None)
    if verbose:
        kept = "".join(f", the best {kept} after round {at}" for at, kept in shrink.items())
        each = f"{runs} runs (restarts) of " if runs > 1 else ""
        print(f"tune | method pbt: {each}{population} members, a round every {interval} steps{kept}; "
              f"{devices_line(mesh)}", flush=True)
    config = run_config(config, metric)
    start = time.perf_counter()
    seconds: dict[int, float] = {}
    storage = None if workdir is None else str(workdir / "study.db")  # every run's study in one file
    results = []
    for run in range(runs):
        if run > 0 and deadline.passed():
            break
        if verbose and run > 0:
            best = max((t.fitness for r in results for t in r.trials if t.fitness is not None), default=math.nan)
            print(f"tune | method pbt: restart {run} of {runs - 1} (a new first population); best val "
                  f"{metric} so far {best:.4f}", flush=True)
        results.append(search_pbt(
            config, space, population=population, interval=interval, metric=metric,
            workdir=None if workdir is None else (workdir if run == 0 else workdir / f"restart_{run}"),
            storage=storage, seed=run_seed(seed, run), study=restart_study(study_name, run), shrink=shrink or None,
            callback=trial_reporter(sum(len(r.trials) for r in results), population, shrink, start, seconds, callback,
                                    run),
            compilation_cache=compilation_cache, verbose=verbose, mesh=mesh, enqueue=enqueue if run == 0 else (),
            stop=deadline.passed if deadline.at is not None else None))
        if results[-1].stopped:  # the callback asked: no further run starts
            deadline.stop()
    if verbose and deadline.ended:
        print(ended_line(deadline.reason(), results, runs, config.steps, workdir is not None), flush=True)
    record = combined_records([result.compilations for result in results])  # the training's programs
    if storage is not None and runs == 1:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(storage).absolute()}")
    else:  # in memory: every run's trials in one study (on disk each run is a study of its own)
        study = optuna_study([(run, result.trials) for run, result in enumerate(results)], space, study_name)
    study.set_user_attr("compilations", record)  # where Optuna users look (tune's other method too)
    timeline = [{"seconds": seconds.get(trial.number, math.nan), "trial": trial.number,
                 "state": "COMPLETE" if trial.state.name == "COMPLETE" else "FAIL",
                 "value": trial.value if trial.value is not None else math.nan,
                 "test": trial.user_attrs.get(f"test_{metric}"), "steps": int(trial.user_attrs.get("fidelity", 0)),
                 "restart": trial.user_attrs.get("restart", 0)}
                for trial in study.get_trials(deepcopy=False)]
    tuned = TuneResult(study, timeline, time.perf_counter() - start, metric, "maximize", method="pbt",
                       compilations=record, runs=results, timed_out=deadline.reached, stopped=deadline.stopped)
    if verbose:
        print(summary_line(tuned), flush=True)
    return tuned


def ended_line(why: str, results: Sequence[Any], runs: int, steps: int, resumable: bool) -> str:
    """The progress line of a call the timeout or a callback's stop (`why`) ended: the runs trained,
    where the last was cut, and what a rerun in the workdir does."""
    cut_at = results[-1].cut_at
    cut = "" if cut_at is None else f", the last cut at step {cut_at} of {steps} (the round it ended at)"
    left = [*([] if cut_at is None else ["continues the cut run"]),
            *([f"trains the {runs - len(results)} runs not started"] if len(results) < runs else [])]
    rerun = f"; rerunning the call in its workdir {' and '.join(left)}" if resumable and left else ""
    return f"tune | method pbt: {why}: {len(results)} of {runs} runs trained{cut}{rerun}"


def trial_reporter(offset: int, population: int, shrink: Mapping[int, int], start: float, seconds: dict[int, float],
                   callback: Callable[[dict], bool | None] | None, run: int) -> Callable[[dict], bool | None]:
    """`search_pbt`'s callback for run `run`: each row's tune trial number (the run's own numbering
    after `offset` trials of earlier runs) and time since `start`, recorded in `seconds` and passed
    to `callback`, whose answer it returns (True: stop)."""
    seen: dict[int, int] = {}

    def on_row(row: dict) -> bool | None:
        position = seen.get(row["round"], 0)
        seen[row["round"]] = position + 1
        number = offset + trial_number(row["round"], position, population, shrink)
        seconds[number] = time.perf_counter() - start
        if callback is not None:
            return callback({"seconds": seconds[number], "trial": number, "state": row["state"],
                             "value": row["value"], "test": None, "steps": row["step"], "round": row["round"],
                             "member": row["member"], "restart": run})
        return None

    return on_row


def summary_line(result: Any) -> str:
    """The PBT method's last progress line: the pick (best round of any member), its test value, the
    trials, the training's compilations, and how to retrain the pick."""
    from vhjax.compilation_cache import compilations_text

    best = result.best()
    test = "" if best["test"] is None else f", test {result.metric} {best['test']:.4f}"
    compiled = "" if result.compilations is None else " | " + compilations_text(result.compilations)
    return (f"tune | method pbt: best val {result.metric} {best['value']:.4f} (trial {best['trial']}, step "
            f"{best['steps']}){test} | {len(result.timeline)} trials (every member at every round) in "
            f"{result.seconds:.0f} s{compiled} | its values changed during training: retrain it with "
            f"vhjax.search.replay_pbt(config, result), not as constants")


def optuna_study(runs: list[tuple[int, Any]], space: Space, name: str) -> Any:
    """An in-memory Optuna study of a PBT method call's runs: `runs` are (run, finished trials)
    pairs, numbered in that order, each trial with its run as the user attribute `restart`."""
    import optuna

    from vhjax.search import optuna_study as attrs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = attrs.distributions(space)
    study = optuna.create_study(study_name=name, direction="maximize")
    offset = 0
    for run, trials in runs:
        number = {trial.trial_id: offset + i for i, trial in enumerate(trials)}  # store ids -> study numbers
        study.add_trials([optuna.trial.create_trial(
            params=trial.params, distributions=distributions,
            value=trial.fitness if trial.status == "complete" else None,
            state=optuna.trial.TrialState.COMPLETE if trial.status == "complete" else optuna.trial.TrialState.FAIL,
            user_attrs={**{k: v for k, v in trial.metrics.items() if v is not None}, "generation": trial.generation,
                        "slot": trial.slot, "fidelity": trial.fidelity, "restart": run,
                        **({} if trial.parent_id is None else {"parent_id": number[trial.parent_id]})})
            for trial in trials])
        offset += len(trials)
    return study


METHODS = ("auto", "pbt", "asha")


def choose_method(method: str, space: Space, *, budget: float | None, trials: int | None, direction: str,
                  storage: str | None, asha_only: Mapping[str, Any], private: bool = False) -> str:
    """'pbt' or 'asha' for `tune`. 'auto' is PBT when it applies: a space of unconditional Floats,
    a `budget` of at least 8 trials' worth (no `trials` cap), a maximized metric, one process (no
    shared `storage`), none of the sampler-and-pruner arguments (`asha_only`, those not None)
    given and no DP-SGD (`private`); else ASHA. 'pbt' where it does not apply is an error naming
    what does not fit."""
    from vhjax.validation import check_choice

    check_choice("method", method, METHODS)
    given = sorted(name for name, value in asha_only.items() if value is not None)
    misfits = []
    if not pbt_space(space):
        misfits.append("every parameter an unconditional Float without a step (PBT perturbs reals); the space "
                       "has " + ", ".join(f"{n}={p!r}" for n, p in space.params.items()
                                          if type(p) is not Float or p.condition is not None or p.step is not None))
    if trials is not None:
        misfits.append(f"no trials cap (trials has value {trials}; give budget=N trials' worth)")
    if budget is None or budget < 2 * MIN_POPULATION:
        misfits.append(f"budget of at least {2 * MIN_POPULATION} trials' worth (budget has value {budget})")
    if direction != "maximize":
        misfits.append(f"direction 'maximize' (has value {direction!r})")
    if storage is not None:
        misfits.append("one process (storage has a value: shared studies take the sampler-and-pruner method)")
    if given:
        misfits.append("no sampler-and-pruner arguments (given: " + ", ".join(given) + ")")
    if private:
        from vhjax.privacy import NOT_FOR_PBT

        misfits.append(f"a config without DP-SGD (dp_clip_norm is set; {NOT_FOR_PBT})")
    if method == "pbt" and misfits:
        raise ValueError("method has value 'pbt'; it needs " + "; ".join(misfits))
    if method == "auto":
        return "asha" if misfits else "pbt"
    return method


def check_study_method(workdir: Path | None, study_name: str, method: str) -> None:
    """Refuse to resume a workdir study made by the other method (their trials mean different things:
    a PBT study's trials are every member at every round)."""
    path = None if workdir is None else workdir / "study.db"
    made = None if path is None or not path.exists() else made_by_pbt(path, study_name)
    if made is not None and made != (method == "pbt"):
        made = "pbt" if made else "asha"
        raise ValueError(f"method resolves to {method!r}, but the study {study_name!r} in {path} was made by method "
                         f"{made!r}; allowed: method={made!r} to resume it, or a new workdir or study_name")


def made_by_pbt(path: Path, study_name: str) -> bool | None:
    """Whether the study `study_name` in the SQLite file `path` was written by the PBT method (a
    vhjax store: its configuration in the study's attributes); None if it holds no trials."""
    import optuna

    from vhjax.search.optuna_study import META_PREFIX

    storage = optuna.storages.RDBStorage(f"sqlite:///{path.absolute()}")
    try:
        study_id = storage.get_study_id_from_name(study_name)
        if not storage.get_n_trials(study_id):
            return None
        return any(key.startswith(META_PREFIX) for key in storage.get_study_system_attrs(study_id))
    except KeyError:
        return None
    finally:
        storage.engine.dispose()
