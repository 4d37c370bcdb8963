"""`search_pbt(...)`: population based training as a search, with its trials and lineage stored.

The initial population is spread over a space of real-valued hyperparameters (scrambled Sobol
points, `initial_units`; each `Float` names a dynamic member field: learning_rate, weight_decay,
dropout_rate, l2, ...); training runs in one compiled program with exploit/explore every
`interval` steps (`vhjax.population.pbt`; `candidates` > 1: each copied member's new values the
best of that many explore draws by a Gaussian process of the last rounds, `vhjax.population.pbt_guide`).
Every member at every ready point becomes a trial: its hyperparameters, the validation score as
fitness, the step as fidelity and, as parent, the trial it continued from (itself one round
earlier, or the member it copied). So `result.plot()` draws the PBT lineage, and the store holds
the whole history. The last round's trials also hold the returned members' final metrics on
every split (`eval_accuracy`, `test_accuracy`, ...), so `result.best_metrics["test_accuracy"]` is
the test value of the pick. With `config.keep_best`, each member slot returns its best evaluated
parameters instead: those metrics go to the trial of the round they were evaluated at, and the
pick is the best trial of any round (the one whose parameters the search returns).
`callback(row)` receives every member's score as soon as its round is evaluated (the store gets
them when training ends). An interrupted run resumes from the training checkpoints in the workdir.

This entry runs PBT inside one compiled training program (`fit_pbt`), so its trials reach the
store when training ends, all rounds in one transaction: a run killed while training resumes from
its checkpoints, one killed while storing stores everything again (nothing lost, duplicated or
left `running`), and the rerun's trials are those of an uninterrupted run. PBT as a strategy of the search protocol (`vhjax.search(objective,
space, 'pbt', ...)`, `vhjax.search.strategies.pbt`) stores every round as it is told instead;
both use the exploit/explore primitives of `vhjax.population.exploit`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vhjax import compilation_cache as vhjax_cache
from vhjax.config import TrainConfig
from vhjax.search import storage as storage_lib
from vhjax.search.driver import (FINGERPRINT_KEY, check_fingerprint, config_fingerprint, search_lock,
                                 space_fingerprint, write_fingerprint)
from vhjax.search.deadline import Deadline, asks_stop
from vhjax.search.results import SearchResult, TrialTable
from vhjax.search.space import Float, Space
from vhjax.search.storage import NewTrial
from vhjax.search.strategies.base import check_positive_int
from vhjax.validation import check_choice, check_int

_STORED_KEY = "pbt_rounds_stored"  # written with the rounds: the store holds every round
# A PBT round is a few steps, and an orbax save of a population about 0.2 s on a CPU: saved every
# round, the checkpoints of `tune`'s MNIST-1D CNN search took 18 s of its 137 (90 saves; 125 s with
# 30 saves, 122 s without a workdir). A run saves about this many times instead (and at its end, a
# stop, SIGTERM and SIGINT).
SAVES_PER_RUN = 10
_CUT_KEY = "pbt_cut_at_step"  # written with them: the step a `stop` ended the run at ('': none did)


def check_space_names(config: TrainConfig, space: Space, interval: int) -> None:
    """Refuse space names the task lacks (e.g. `aug_strength` without `augment=`) before a store
    opens or a line prints. Builds the task `fit_pbt` trains with rounds every `interval` steps
    (`bucket_task` memoizes it, so it is built once)."""
    from vhjax.population.fit import bucket_task, split_member
    from vhjax.population.members import check_task_hparams

    names = sorted(split_member(0, space.decode(np.full(space.dim, 0.5)))[1])
    task = bucket_task(dataclasses.replace(config, eval_every=interval), {*names, *explore_ranges(space)})
    check_task_hparams(task, names)


def explore_ranges(space: Space) -> dict[str, tuple[float, float, bool]]:
    """`name -> (low, high, log)` of a space made of `Float` parameters (no step) only."""
    ranges = {}
    for name, param in space.params.items():
        if type(param) is not Float or param.condition is not None or param.step is not None:
            raise ValueError(f"search_pbt: parameter {name!r} is {param!r}; allowed: unconditional Float "
                             "parameters without a step (PBT perturbs real values)")
        ranges[name] = (float(param.low), float(param.high), bool(param.log))
    return ranges


DEFAULT_ROUNDS = 10  # interval=None: exploit/explore about every tenth of config.steps


def even_interval(steps: int, rounds: int) -> int:
    """Steps between PBT rounds for about `rounds` rounds: the divisor of `steps` nearest `steps /
    rounds` (the larger of two as near), so the rounds are evenly spaced, none of them a short last
    one (which trains in the program of a full chunk: it costs no compilation, but its members are
    compared after fewer steps). `even_interval(1500, 30)` is 50; `even_interval(500, 30)` is 20
    (25 rounds)."""
    check_int("steps", steps, 1)
    check_int("rounds", rounds, 1)
    small = [d for d in range(1, math.isqrt(steps) + 1) if steps % d == 0]
    divisors = small + [steps // d for d in small]
    return min(divisors, key=lambda d: (abs(d - steps / rounds), -d))


def default_interval(steps: int) -> int:
    """Steps between PBT rounds when none is given: about a tenth of the run (`even_interval`)."""
    return even_interval(steps, DEFAULT_ROUNDS)


INITIAL_DESIGNS = ("sobol", "random")


def initial_units(dim: int, population: int, seed: int, design: str = "sobol") -> np.ndarray:
    """The first population's points in `[0, 1)^dim` (float32, one row per member). 'sobol': the
    first `population` points of a scrambled Sobol sequence seeded by `seed`, so every parameter's
    values spread over its range (for 2**m members, one in each 1/2**m of it); 'random': uniform
    draws. A small population of random draws can leave a region empty, such as every strong
    regularizer with a usable learning rate, which PBT's short-horizon selection then never finds
    (experiments/README.md, "A space-filling first population")."""
    from vhjax.search.strategies.sobol import sobol_points

    check_choice("initial", design, INITIAL_DESIGNS)
    if design == "random":
        return np.random.default_rng(seed).random((population, dim), np.float32)
    return sobol_points(dim, population, seed).astype(np.float32)


def enqueued_members(members: list[dict[str, Any]], points: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
    """The first population with member i's values replaced by those point i gives (the others kept)."""
    return [{**member, **(points[i] if i < len(points) else {})} for i, member in enumerate(members)]


def stored_design(store: storage_lib.TrialStore) -> str:
    """The first-population design of the run stored in `store`: the one its configuration names,
    'random' where it names none (stored before the Sobol default), 'sobol' when nothing is stored."""
    stored = store.get_meta(FINGERPRINT_KEY)
    return "sobol" if stored is None else json.loads(stored).get("initial", "random")


def search_pbt(config: TrainConfig, space: Space, *, population: int, interval: int | None = None, fraction: float = 0.25,
               resample_probability: float = 0.25, metric: str = "accuracy", workdir: str | os.PathLike | None = None,
               storage: str | None = None, seed: int = 0, callback: Callable[[dict], bool | None] | None = None,
               compilation_cache: bool | str = True, verbose: bool = True,
               study: str = storage_lib.DEFAULT_STUDY, shrink: Mapping[int, int] | None = None,
               mesh: Any = "auto", initial: str | None = None, candidates: int = 1,
               enqueue: Sequence[Mapping[str, Any]] = (), stop: Callable[[], bool] | None = None) -> SearchResult:
    """Run PBT over `space` with `population` members for `config.steps` steps; see the module doc.

    `interval` (steps between exploit/explore rounds) defaults to about a tenth of `config.steps`
    (`default_interval`: a divisor, so the rounds are evenly spaced; `even_interval(steps, rounds)`
    gives such an interval for other round counts; any interval compiles one training program).
    `callback(row)` is called for every member of every round as soon as the round is evaluated,
    with `row = {"seconds", "round", "step", "member", "state", "value", "params"}` (`state`
    'COMPLETE' or 'FAIL' for a diverged member; `seconds` since the call started); returning True
    stops the run after that round as `stop` does (the round's other rows are still sent;
    `result.stopped`).
    `compilation_cache`: JAX's persistent compilation cache, as in `tune` (True: on in the default
    directory, see `vhjax.compilation_cache`; a path; False: leave it off), so a rerun loads its programs.
    `shrink` (`{round: members}`, e.g. `{2: population // 2}`): after that round's evaluation only
    the best `members` go on training (a shrinking population; see `fit_pbt`); the others' trials
    end there. `mesh` as in `fit_population` ('auto': the members sharded over every device).
    `initial`: how the first population is drawn from the space, 'sobol' (scrambled Sobol points,
    spread over every range) or 'random' (uniform draws); see `initial_units`. None (the default):
    the design of the run stored in the workdir or storage (`stored_design`: a run stored before
    the Sobol default resumes with its uniform draws), else 'sobol'.
    `candidates`: explore draws per copied member, of which the one a Gaussian process of the last
    rounds' score changes rates best is kept (`fit_pbt`, `vhjax.population.pbt_guide`); 1 (the
    default) is plain PBT.
    `enqueue`: parameter values to train first (as Optuna's `study.enqueue_trial`), one dict per
    member of the first population, at most `population`; point i sets slot i's values, and the
    parameters it omits keep that slot's drawn ones (`enqueued_members`).
    `stop() -> bool` (e.g. `tune`'s deadline) is asked after each round; once true the training ends
    there and the run is stored with the rounds it has (`fit_pbt`). Called again with the same
    workdir, such a cut run continues from its training checkpoint and is stored again whole, its
    trials then those of an uncut run (without a workdir there is no checkpoint: it stays as stored).
    """
    from vhjax.population.pbt import MAX_CANDIDATES, check_shrink, fit_pbt, pbt_rounds

    check_positive_int("population", population, minimum=2)
    interval = default_interval(config.steps) if interval is None else interval
    check_int("interval", interval, 1, config.steps)
    shrink = check_shrink(shrink, population, pbt_rounds(config.steps, interval)) or None
    check_positive_int("seed", seed, minimum=0)
    check_monitor(config, metric)
    if initial is not None:
        check_choice("initial", initial, INITIAL_DESIGNS)
    check_int("candidates", candidates, 1, MAX_CANDIDATES)
    ranges = explore_ranges(space)
    points = [{name: float(value) for name, value in point.items()}  # Floats: the stored configuration names them
              for point in space.check_points(enqueue, most=population, most_name="the population")]
    storage_lib.check_storage(workdir, storage)
    check_space_names(config, space, interval)
    vhjax_cache.use(compilation_cache)

    def fingerprint(design: str) -> str:
        return config_fingerprint(
            space=space_fingerprint(space), strategy="pbt", population=int(population), interval=int(interval),
            fraction=float(fraction), resample_probability=float(resample_probability), metric=metric,
            seed=int(seed), train_config=config.to_dict(),
            **({} if shrink is None else {"shrink": sorted(shrink.items())}),
            **({} if design == "random" else {"initial": design}),  # a store of uniform draws names no design
            **({} if candidates == 1 else {"candidates": candidates}),  # nor one of plain PBT a count
            **({"enqueue": points} if points else {}))

    def train(design: str):
        # the first members made on the host: `space.sample`'s device draw compiled a program (0.15 s on a CPU)
        members = enqueued_members([space.decode(u) for u in initial_units(space.dim, population, seed, design)], points)
        training_dir = None if workdir is None else Path(workdir) / "training"
        on_round = None if callback is None else round_reporter(space, callback, time.perf_counter(), asked.stop)
        saving = dataclasses.replace(config, checkpoint_every=pbt_checkpoint_every(config, interval))
        with vhjax_cache.count_compilations() as compiled:
            result = fit_pbt(saving, members, ranges, interval=interval, fraction=fraction,
                             resample_probability=resample_probability, metric=metric, workdir=training_dir,
                             on_round=on_round, shrink=shrink, candidates=candidates, mesh=mesh, verbose=verbose,
                             stop=None if stop is None and callback is None else stopping)
        return result, vhjax_cache.compilations_record(compiled)

    asked = Deadline(None)  # stopped once a callback returns True

    def stopping() -> bool:
        return asked.stopped or bool(stop is not None and stop())

    def opened():
        return storage_lib.open_store(workdir, storage, study=study, objectives={metric: "maximize"}, space=space)

    with search_lock(workdir, storage):
        if workdir is None and storage is None:  # nothing to resume: the in-memory store opens (about
            design = initial or "sobol"         # half a second) when the rounds are there to store
            result, compilations = train(design)
            cut_at = result.cut_at
            with opened() as store:
                trials = _store(store, space, result, compilations, fingerprint(design))
        else:
            with opened() as store:
                design = initial or stored_design(store)
                check_fingerprint(store, fingerprint(design))
                cut_at = int(store.get_meta(_CUT_KEY) or 0) or None  # a stop cut the stored run there
                if store.get_meta(_STORED_KEY) is not None and not (cut_at and workdir is not None):  # else: never
                    # stored whole (an older write a kill cut short goes), or cut: training goes on from its checkpoint
                    trials = TrialTable(store.trials())
                    compilations = json.loads(store.get_meta("compilations") or "null")  # the run's, as stored
                else:
                    result, compilations = train(design)
                    cut_at = result.cut_at
                    trials = _store(store, space, result, compilations, fingerprint(design))
    return SearchResult(trials=trials, direction="maximize", objectives={metric: "maximize"},
                        workdir=None if workdir is None else os.fspath(workdir), study=study,
                        top_fidelity_only=not keeps_best(config), compilations=compilations, cut_at=cut_at,
                        stopped=asked.stopped)


def pbt_checkpoint_every(config: TrainConfig, interval: int) -> int:
    """Rounds between a PBT search's training checkpoints: `config.checkpoint_every`, at least a
    `SAVES_PER_RUN`-th of the run's rounds (a kill -9 loses at most that much training; the rounds
    reach the store when training ends, so no trial is lost or duplicated either way)."""
    from vhjax.population.pbt import pbt_rounds

    return max(config.checkpoint_every, math.ceil(pbt_rounds(config.steps, interval) / SAVES_PER_RUN))


def keeps_best(config: TrainConfig) -> bool:
    """Whether training returns each member's best evaluated parameters (early stopping keeps them too)."""
    return bool(config.keep_best or config.patience)


def check_monitor(config: TrainConfig, metric: str) -> None:
    """Best-model keeping must rank rounds as PBT does, or the kept parameters are not the best trial's."""
    if keeps_best(config) and (config.monitor_split, config.monitor, config.monitor_mode) != ("eval", metric, "max"):
        raise ValueError(f"config fields 'monitor_split', 'monitor', 'monitor_mode' have value "
                         f"{(config.monitor_split, config.monitor, config.monitor_mode)!r}; allowed with keep_best or "
                         f"patience in search_pbt: ('eval', {metric!r}, 'max'), the score PBT ranks members by")


def round_reporter(space: Space, callback: Callable[[dict], bool | None], start: float,
                   on_stop: Callable[[], None]) -> Callable[[dict], None]:
    """`on_round` for `fit_pbt`: one callback row per training member of an evaluated round (the
    members a shrinking population stopped have none); `on_stop()` once a row's call returns True."""

    def on_round(entry: dict) -> None:
        seconds = time.perf_counter() - start
        for i in active_slots(entry):
            score = entry["score"][i]
            ok = score is not None and np.isfinite(score)
            answer = callback({"seconds": seconds, "round": entry["round"], "step": int(entry["step"]), "member": i,
                               "state": "COMPLETE" if ok else "FAIL", "value": float(score) if ok else None,
                               "params": member_params(space, entry, i)})
            if asks_stop(answer):
                on_stop()

    return on_round


def active_slots(entry: dict) -> list[int]:
    """The member slots still training at a history round (all but those a shrink stopped)."""
    stopped = entry.get("stopped") or [False] * len(entry["score"])
    return [i for i, off in enumerate(stopped) if not off]


def _store(store: storage_lib.TrialStore, space: Space, result: Any, compilations: dict,
           fingerprint: str) -> TrialTable:
    """Write a finished run's fingerprint and rounds (with the training's compilations, meta
    `compilations`); the store's trials."""
    write_fingerprint(store, fingerprint)
    _store_rounds(store, space, result, {"compilations": json.dumps(compilations)})
    return TrialTable(store.trials())


def _store_rounds(store: storage_lib.TrialStore, space: Space, result: Any,
                  meta: Mapping[str, str] | None = None) -> None:
    """One generation of finished trials per ready point, parents linking each member to what it
    continued (itself one round earlier, or the member it copied); all rounds in ONE transaction,
    with the marker that they are stored, so a kill at any point leaves all of them or none. The last
    round's trials (with keep_best: the rounds of the kept parameters) carry the returned members'
    metrics per split as well (`test_accuracy`, ...)."""
    generations, parent_positions, positions = [], [], {}
    steps = [int(entry["step"]) for entry in result.history]
    last_active = {i: r for r, entry in enumerate(result.history) for i in active_slots(entry)}
    returned = [returned_round(member, steps, last_active[i]) for i, member in enumerate(result.members)]
    for round_index, entry in enumerate(result.history):
        copied_from = result.lineage[round_index - 1]["parent"] if round_index else None
        rows, parents, current = [], [], {}
        for i in active_slots(entry):
            params = member_params(space, entry, i)
            score = entry["score"][i]
            ok = score is not None and np.isfinite(score)
            metrics = {"score": float(score) if ok else None}
            if returned[i] == round_index:
                metrics.update(final_metrics(result.members[i]))
            current[i] = len(rows)
            rows.append(NewTrial(generation=round_index, slot=i, params=params, u=space.encode(params),
                                 status="complete" if ok else "failed", fitness=float(score) if ok else None,
                                 metrics=metrics, fidelity=float(entry["step"])))
            parents.append(None if copied_from is None else positions[copied_from[i] if copied_from[i] >= 0 else i])
        generations.append(rows)
        parent_positions.append(parents)
        positions = current
    store.replace_trials(generations, parent_positions, meta={
        **(meta or {}), _STORED_KEY: str(len(generations)), _CUT_KEY: "" if result.cut_at is None else str(result.cut_at)})


def returned_round(member: dict, steps: list[int], last_active: int) -> int:
    """The round whose parameters a returned member holds: its kept best round, else the last round
    its slot trained (`last_active`; the last round unless a shrink stopped it)."""
    best_step = member.get("best_step")
    return last_active if best_step is None else steps.index(best_step)


def member_params(space: Space, entry: dict, member: int) -> dict[str, float]:
    """Member `member`'s hyperparameters in one history round, as the space's values. Training
    holds them in float32, where a bound such as 1e-5 rounds to just outside the range; they are
    clipped back to the parameter's [low, high]."""
    return {name: min(max(float(np.ravel(entry[name][member])[0]), float(param.low)), float(param.high))
            for name, param in space.params.items()}


def final_metrics(member: dict) -> dict[str, float | None]:
    """A returned member's metrics as `<split>_<name>` (`eval_accuracy`, `test_loss`, ...); None
    where not finite."""
    return {f"{split}_{name}": (float(value) if np.isfinite(value) else None)
            for split in ("eval", "test") if split in member for name, value in member[split].items()}
