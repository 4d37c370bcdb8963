"""`replay_pbt(...)`: train a PBT pick's hyperparameter schedule again, from scratch, over seeds.

A PBT pick is one trained model whose hyperparameters changed during training: its ancestry (the
trial it continued from at every round, `SearchResult.ancestry`) is a schedule, piecewise constant
between rounds. Whether that schedule or the luck of one run made the pick good, and what it gives
on other seeds, is answered by replaying it (Jaderberg et al. 2017; Ray Tune's
`PopulationBasedTrainingReplay`): each member starts from a fresh initialisation and trains with
the pick's round-0 values, takes each later round's values at that round's step, and stops at the
pick's last round. Several picks times several seeds are one population, one compiled program
(`fit_population` with a schedule hook); a member whose schedule ends earlier stops there.

    replay = replay_pbt(config, result, top=3, seeds=3)   # result: search_pbt's, or tune's PBT method's
    print(replay.table())                                  # per pick: PBT's value, the replays' mean ± std
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from vhjax.config import TrainConfig
from vhjax.search.results import rank_key, rank_trials, trial_ancestry
from vhjax.search.storage import Trial
from vhjax.validation import check_int


@dataclasses.dataclass(frozen=True)
class ScheduleRound:
    """Steps `start` (exclusive) to `end` (inclusive) of a schedule train with `params`."""

    start: int
    end: int
    params: dict[str, float]


def pbt_schedule(trials: Sequence[Trial], trial: Trial) -> list[ScheduleRound]:
    """The hyperparameter schedule that produced `trial`: its ancestry among `trials`, one round per
    trial, each round ending at its trial's step (fidelity) and starting at its parent's."""
    chain = trial_ancestry(trials, trial)
    rounds, start = [], 0
    for t in chain:
        end = None if t.fidelity is None else int(t.fidelity)
        if end is None or end <= start:
            raise ValueError(f"trial {trial.trial_id}: its ancestry holds trial {t.trial_id} at step {t.fidelity!r} "
                             f"after step {start}; allowed: a PBT trial whose rounds start at step 0 and "
                             "end at increasing steps (a trial of search_pbt or of tune's PBT method)")
        rounds.append(ScheduleRound(start, end, {k: float(v) for k, v in t.params.items()}))
        start = end
    if chain[0].generation != 0:
        raise ValueError(f"trial {trial.trial_id}: its ancestry begins at trial {chain[0].trial_id} of round "
                         f"{chain[0].generation}; allowed: an ancestry back to the first round (all of the run's trials)")
    return rounds


def schedule_boundaries(schedules: Sequence[Sequence[ScheduleRound]]) -> tuple[int, int]:
    """`(interval, last step)` shared by `schedules`; raises unless every round of every schedule is
    one interval long (schedules of one PBT run)."""
    interval = schedules[0][0].end
    for number, schedule in enumerate(schedules):
        lengths = sorted({r.end - r.start for r in schedule})
        if lengths != [interval]:
            raise ValueError(f"schedule {number} has rounds of {lengths} steps; allowed: rounds of {interval} steps "
                             "each, as in one PBT run (replay picks of one run together)")
    return interval, max(schedule[-1].end for schedule in schedules)


def member_values(schedules: Sequence[Sequence[ScheduleRound]], step: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each member's values for the round that starts at `step` (its last round's once it has ended)."""
    def at(schedule: Sequence[ScheduleRound]) -> dict[str, float]:
        return next((r.params for r in schedule if r.start <= step < r.end), schedule[-1].params)

    rows = [at(schedule) for schedule in schedules]
    return {name: np.asarray([row[name] for row in rows], np.float64) for name in names}


def schedule_hook(schedules: Sequence[Sequence[ScheduleRound]], ends: Sequence[int] | None = None) -> Any:
    """A loop hook: member i follows `schedules[i]` and stops at step `ends[i]` (default: its
    schedule's last step; later, it keeps the last round's values). After each evaluation, the
    members that end there stop; the others take the values of the round that starts there. It keeps
    no state, so a run resumed from a checkpoint continues the same schedule."""
    import jax

    from vhjax.compile_options import light_jit
    from vhjax.population.loop import Hook
    from vhjax.population.pbt import apply_values, placed_as

    ends = np.asarray([schedule[-1].end for schedule in schedules] if ends is None else ends)
    names = list(schedules[0][0].params)
    apply = light_jit(apply_values, run_once=True)

    def init(population: Any) -> dict:
        return {}

    def update(state: dict, population: Any, report: Any):
        from vhjax.population.exploit import get_member_hparams

        current = get_member_hparams(population)
        values = member_values(schedules, report.step, names)
        shaped = {name: np.broadcast_to(values[name].reshape((-1,) + (1,) * (np.ndim(current[name]) - 1)),
                                        np.shape(current[name])).astype(current[name].dtype) for name in names}
        stopped = np.asarray(population.stopped) | ((ends <= report.step) & (report.step < report.total_steps))
        decision = jax.tree.map(placed_as, (stopped, shaped), (population.stopped, {n: current[n] for n in names}))
        return state, apply(population, *decision)

    return Hook("pbt_replay", init, update)


@dataclasses.dataclass(frozen=True)
class Pick:
    """A replayed PBT trial: which run of the search it came from, its schedule, and what PBT measured."""

    run: int
    trial: Trial
    schedule: list[ScheduleRound]


@dataclasses.dataclass
class ReplayResult:
    """The replayed picks and one record per (pick, seed): metrics per split, divergence."""

    picks: list[Pick]
    seeds: list[int]
    members: list[dict]  # {"pick", "seed", "steps", "eval": {...}, "test": {...}, "diverged_step"}
    metric: str = "accuracy"

    def summary(self) -> list[dict]:
        """Per pick: PBT's validation and test value, and the replays' mean and standard deviation
        on each split (diverged replays count as failures, not as values)."""
        rows = []
        for number, pick in enumerate(self.picks):
            mine = [m for m in self.members if m["pick"] == number]
            ok = [m for m in mine if m["diverged_step"] is None]
            row = {"pick": number, "run": pick.run, "trial_id": pick.trial.trial_id, "rounds": len(pick.schedule),
                   "steps": pick.schedule[-1].end, "pbt_eval": pick.trial.fitness,
                   "pbt_test": pick.trial.metrics.get(f"test_{self.metric}"), "replays": len(mine),
                   "diverged": len(mine) - len(ok)}
            for split in ("eval", "test"):
                values = [m[split][self.metric] for m in ok if split in m]
                row[f"{split}_mean"] = float(np.mean(values)) if values else math.nan
                row[f"{split}_std"] = float(np.std(values)) if values else math.nan
            rows.append(row)
        return rows

    def table(self) -> str:
        """Markdown: per pick, PBT's values beside the replays' mean ± std over seeds. A pick is named
        by its run and its trial id in that run's store (`Trial.trial_id`), not by the Optuna trial
        number `tune`'s leaderboard and `best()["trial"]` show."""
        def cell(value: Any) -> str:
            return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

        lines = [f"| pick | run | trial id | rounds (steps) | PBT val {self.metric} | PBT test {self.metric} | "
                 f"replay val {self.metric} | replay test {self.metric} | replays (diverged) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in self.summary():
            lines.append(f"| {row['pick']} | {row['run']} | {row['trial_id']} | {row['rounds']} ({row['steps']}) | "
                         f"{cell(row['pbt_eval'])} | {cell(row['pbt_test'])} | "
                         f"{cell(row['eval_mean'])} ± {cell(row['eval_std'])} | "
                         f"{cell(row['test_mean'])} ± {cell(row['test_std'])} | {row['replays']} ({row['diverged']}) |")
        return "\n".join(lines)


def is_tune_result(result: Any) -> bool:
    from vhjax.search.tune import TuneResult

    return isinstance(result, TuneResult)


def search_runs(result: Any) -> list[Any]:
    """The `SearchResult`s of a PBT search: `search_pbt`'s result itself (or `load_result(workdir)`'s),
    or each run of `tune`'s PBT method (`TuneResult.runs`)."""
    runs = getattr(result, "runs", None)
    if is_tune_result(result):
        if result.method != "pbt" or not runs:
            raise ValueError(f"result has method {result.method!r}; allowed: a PBT search (search_pbt's result, "
                             "or tune's with method 'pbt'): other trials train constant values, retrain them as they are")
        return list(runs)
    if not hasattr(result, "trials"):
        raise ValueError(f"result has type {type(result).__name__}; allowed: the result of search_pbt or of tune "
                         "(PBT method)")
    return [result]


def ranked_picks(runs: Sequence[Any], top: int) -> list[tuple[int, Trial]]:
    """The `top` best completed trials over every run, as (run, trial), best first: the order of
    `results.rank_key`, then the earlier run and the lower trial id, as `TuneResult.top` ranks the
    same trials (numbered run by run) and `SearchResult.top` ranks them read back from a workdir."""
    done = [(run, t) for run, result in enumerate(runs) for t in rank_trials(result.trials, "maximize")]
    done.sort(key=lambda pair: (*rank_key(pair[1], "maximize"), pair[0], pair[1].trial_id))
    return done[:top]


def replay_seeds(seeds: int | Sequence[int], base: int) -> list[int]:
    """`seeds` as a list: a count n means base, base + 1, ..., base + n - 1."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        check_int("seeds", int(seeds), 1)
        return [base + i for i in range(int(seeds))]
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has value {seeds!r}; allowed: a count >= 1 or distinct integer seeds")
    return seeds


def replay_config(config: TrainConfig, interval: int, steps: int) -> TrainConfig:
    """The config a replay trains with: the search's (so a learning-rate schedule spans the same
    `config.steps`, whatever step a member stops at), evaluations at the rounds, no early stopping or
    best-model keeping (the schedule says how long each member trains)."""
    if steps > config.steps:
        raise ValueError(f"config field 'steps' has value {config.steps}; allowed: at least the schedule's last "
                         f"step, {steps} (the config the PBT search ran with)")
    return dataclasses.replace(config, eval_every=interval, keep_best=False, patience=None)


def replay_pbt(config: TrainConfig, result: Any, *, top: int = 1, trials: Sequence[Trial] | None = None,
               seeds: int | Sequence[int] = 3, until: int | None = None, metric: str = "accuracy",
               workdir: str | os.PathLike | None = None,
               mesh: Any = "auto", verbose: bool = True) -> ReplayResult:
    """Train the schedules of PBT picks again from scratch, each over `seeds`, in one population.

    `result`: what `search_pbt` or `tune` (its PBT method) returned; `config`: the config that search
    ran with; `vhjax.search.report.load_result(workdir)` of either works too. The picks are the
    `top` best trials (over every run of a `tune` call; of a `SearchResult`, its `top(k)`) or, for a
    `SearchResult`, the given `trials`. `seeds`: a count n (seeds config.seed .. config.seed + n - 1)
    or the seeds themselves; member i of a replay has its own
    initialisation and data order. `until`: train every replay to that step (at least each pick's
    last round, at most `config.steps`), the last round's values held after it; default: each pick
    stops at its last round. Evaluations run at the schedule's rounds; `keep_best` and
    `patience` are off. `metric`: the one the search ranked by (the summary shows each pick's stored
    `test_<metric>`). `workdir`: checkpoints, so an interrupted replay resumes. Returns a
    `ReplayResult` (`.table()`: PBT's values beside the replays' mean ± std).
    """
    from vhjax.population.fit import BucketProgram, fit_population

    check_int("top", top, 1)
    runs = search_runs(result)
    if trials is not None:
        if len(runs) != 1:
            raise ValueError("trials is given for a tune result of several runs; allowed: top=k there (trial ids "
                             "repeat across runs), or the trials of one search_pbt result")
        known = {t.trial_id for t in runs[0].trials}
        missing = [t.trial_id for t in trials if t.trial_id not in known]
        if missing or not trials:
            raise ValueError(f"trials has value {[t.trial_id for t in trials]!r}; allowed: trials of this result "
                             f"(not found: {missing})")
        chosen = [(0, t) for t in trials]
    else:  # a search_pbt result ranks its own trials (without keep_best: the last round's)
        chosen = ranked_picks(runs, top) if is_tune_result(result) else [(0, t) for t in result.top(top)]
        if not chosen:
            raise ValueError("result has no completed trial; there is nothing to replay")
    picks = [Pick(run, t, pbt_schedule(runs[run].trials, t)) for run, t in chosen]
    interval, steps = schedule_boundaries([p.schedule for p in picks])
    config = replay_config(config, interval, steps)
    if until is not None:
        check_int("until", until, steps, config.steps)
    seeds = replay_seeds(seeds, config.seed)
    pairs = [(number, seed) for number in range(len(picks)) for seed in seeds]
    members = [{**picks[number].schedule[0].params, "seed": seed} for number, seed in pairs]
    hook = schedule_hook([picks[number].schedule for number, _ in pairs], None if until is None else [until] * len(pairs))
    trained = fit_population(config, members, workdir=workdir, same_batches=False, mesh=mesh, verbose=verbose,
                             program=lambda task, population, indices: BucketProgram(population, hooks=[hook]),
                             label="replay | ")
    steps_trained = [np.asarray(state.members.step) for state in trained.states]
    records = [{"pick": number, "seed": seed, "diverged_step": record["diverged_step"],
                "steps": int(steps_trained[record["bucket"]][record["position"]]),
                **{split: record[split] for split in ("eval", "test") if split in record}}
               for (number, seed), record in zip(pairs, trained.members)]
    replay = ReplayResult(picks, seeds, records, metric)
    if verbose:
        print(replay.table(), flush=True)
    return replay
