"""`tune`: the recommended search for "I have N trials worth of compute".

Two methods behind one call (`method='auto'` picks, see `vhjax.search.tune_pbt.choose_method`): on
a space of real numbers with a budget, shrinking PBT runs (`vhjax.search.tune_pbt`); otherwise
the sampler-and-pruner method this module implements:

An Optuna study proposes the trials (TPE by default) and keeps them (a plain Optuna study:
`optuna.load_study`, optuna-dashboard and `optuna.importance` work on it). `population` trials
train at once as the slots of ONE running population (one compiled program, fixed shape, so it
compiles once). Every `min_steps` the population is evaluated and each trial's validation value
reaches the study as an intermediate value at once; Optuna's pruner (successive halving / ASHA by
default, or the median rule) decides at its rungs, inside the running program; a pruned, finished
or diverged trial's slot is refilled at once with a new trial from the sampler, initialised in
place. The first result arrives after the first evaluation, not after a whole generation.

The budget is either a number of trials (`trials`) or training compute in full trials' worth
(`budget`: budget x config.steps member-steps, pruned trials counting the steps they trained),
the answer to "I have N trials worth of compute": with pruning, N trials' compute tries many more
than N candidates and completes the promising ones. Both may be given: the first reached ends it.

Only per-member fields may be searched (learning rate, weight decay, dropout, regularizer
coefficients, augmentation strengths and probabilities, loss weights, optimizer numbers, `arch`
masks): they are arrays of the one program. A killed search resumes from its workdir: finished
trials are kept; trials that were running are recorded as failed and asked again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import compilation_cache as vhjax_cache
from vhjax import parallel
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig, validate
from vhjax.population.engine import default_member_group
from vhjax.population.fit import bucket_task, compiled_programs, split_member
from vhjax.population.loop import Hook, Report, run_loop
from vhjax.population.members import check_task_hparams, init_population
from vhjax.population.state import PopulationState, training_mask
from vhjax.search.deadline import Deadline, asks_stop
from vhjax.search.results import rank_order
from vhjax.search.space import Categorical, Space
from vhjax.search.storage import sqlalchemy_url
from vhjax.search.training import candidate_to_member, complete_arch
from vhjax.search.tune_pbt import MIN_POPULATION, check_study_method, choose_method, run_pbt_tune
from vhjax.train.metrics_log import print_progress
from vhjax.train.workdir import workdir_lock
from vhjax.validation import check_choice, check_int, check_number

PRUNERS = ("asha", "median", "none")
SAMPLERS = ("tpe", "random")
INTERRUPTED = "interrupted"  # user attribute of trials that were running when a search was killed


@dataclasses.dataclass
class TuneResult:
    """The Optuna study, the finished trials in the order they finished, and the wall time."""

    study: Any
    timeline: list[dict]  # {"seconds", "trial", "state", "value", "test", "steps"}
    seconds: float
    metric: str
    direction: str
    method: str = "asha"  # 'asha' or 'pbt' (see `tune`'s method)
    compilations: dict | None = None  # XLA programs (`compilations_record`): asha this call's, pbt its training's
    runs: list = dataclasses.field(default_factory=list)  # pbt: each run's `SearchResult` (lineage; `replay_pbt`)
    timed_out: bool = False  # the `timeout` passed: the search ended at the evaluation after it
    stopped: bool = False  # the callback returned True: the search ended at the evaluation after it

    def top(self, k: int) -> list[dict]:
        """The k best completed trials' timeline rows, best first: by value, among equal values those
        with a test value first (PBT: the rounds whose parameters were returned), then the lower
        trial number; the order `SearchResult.top` gives the same trials read back from the workdir."""
        done = [row for row in self.timeline if row["state"] == "COMPLETE" and np.isfinite(row["value"])]
        return sorted(done, key=lambda row: (*rank_order(row["value"], row["test"] is not None, self.direction),
                                             row["trial"]))[:k]

    def best(self) -> dict:
        """The best completed trial (`top(1)`): params, validation value, test value, steps."""
        ranked = self.top(1)
        if not ranked:
            pruned = sum(row["state"] == "PRUNED" for row in self.timeline)
            cut = (" (the timeout ended the search)" if self.timed_out
                   else " (the callback stopped the search)" if self.stopped else "")
            raise ValueError(f"no trial completed, so there is no best trial{cut}: {len(self.timeline)} trials ended, "
                             f"{pruned} of them pruned (their last evaluations are in result.timeline and "
                             "result.study); a longer timeout or a larger budget lets trials complete")
        return {**ranked[0], "params": self.study.trials[ranked[0]["trial"]].params}

    def leaderboard(self, top: int = 10) -> str:
        """Markdown: the best completed trials first (`top`)."""
        rows = self.top(top)
        names = sorted({k for r in rows for k in self.study.trials[r["trial"]].params})
        header = ["rank", "trial", *names, f"val {self.metric}", f"test {self.metric}", "finished at"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(rows, 1):
            params = self.study.trials[row["trial"]].params
            cells = [str(rank), str(row["trial"]), *(f"{params[n]:.3g}" if isinstance(params.get(n), float)
                                                     else str(params.get(n, "")) for n in names),
                     f"{row['value']:.4f}", "" if row["test"] is None else f"{row['test']:.4f}",
                     f"{row['seconds']:.1f} s"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def optuna_distributions(space: Space) -> dict[str, Any]:
    """Optuna distributions of a vhjax space (Float, Int, Categorical; conditions not supported): those
    of `optuna_study.distributions`, a categorical of other choices than plain values included."""
    import optuna.distributions as od

    from vhjax.search.optuna_study import distributions

    for name, param in space.params.items():
        if param.condition is not None:
            raise ValueError(f"space parameter {name!r} has a condition; allowed in tune: unconditional parameters")
    plain = distributions(space)
    out = {}
    for name, param in space.params.items():
        if name in plain:
            out[name] = plain[name]
        elif isinstance(param, Categorical):
            out[name] = od.CategoricalDistribution(list(param.choices))
    return out


def member_maker(model: Any) -> Callable[[Mapping[str, Any]], dict]:
    """Decoded params -> member dict; `arch.*` fields completed with a searchable model's full size."""
    full = model.full_arch() if hasattr(model, "full_arch") else None

    def to_member(params: Mapping[str, Any]) -> dict:
        member = candidate_to_member(params)
        if full is not None and "arch" in member:
            member["arch"] = complete_arch(member["arch"], full)
        return member

    return to_member


def check_per_member(space: Space, to_member: Callable) -> list[str]:
    """The per-member names the space sets; refuse parameters that would change the program."""
    middle = to_member(space.decode(np.full(space.dim, 0.5)))
    static, dynamic = split_member(0, middle)
    if static:
        raise ValueError(f"space parameters {sorted(static)} change the compiled program; allowed in tune: "
                         "per-member fields (see vhjax.hparams), e.g. learning_rate, weight_decay, dropout_rate, "
                         "aug_strength, loss_weights.<loss>, optimizer_kwargs.<name>, arch.<field>")
    return sorted(dynamic)


def default_min_steps(steps: int, eta: int) -> int:
    """The largest divisor of `steps` that is at most steps / eta^2 (three rungs by default)."""
    target = max(1, steps // (eta * eta))
    return max(d for d in range(1, target + 1) if steps % d == 0)


def make_pruner(name: str, min_steps: int, eta: int) -> Any:
    import optuna

    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor=eta)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=eta, n_warmup_steps=min_steps)
    return optuna.pruners.NopPruner()


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def shared_storage(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    """An Optuna RDB storage several workers share: a worker's running trials that miss their
    heartbeat for `grace_period` seconds (it died) are failed and asked again by the others."""
    import optuna

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(sqlalchemy_url(url), heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                          heartbeat_stale_trial_callback=retry)


def open_study(workdir: Path | None, name: str, direction: str, sampler: Any, pruner: Any,
               storage: Any = None) -> Any:
    """The study in `storage` (shared by workers) or `workdir/study.db` (one worker), created or
    resumed. In a workdir study, trials left running by a killed process are marked failed
    ('interrupted') and asked again first; in a shared one, stale trials (no heartbeat) are."""
    import optuna

    shared = storage is not None
    if storage is None and workdir is not None:
        storage = f"sqlite:///{(workdir / 'study.db').absolute()}"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if shared:
        fail_stale(study)
        return study
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a finished trial's attributes are read-only: mark it while it is still running
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    return study


def fail_stale(study: Any) -> None:
    """Fail the running trials of a shared study whose heartbeat is older than the grace period
    (their worker died), and those that never beat although they started longer ago than that
    (their worker died between the ask and its first heartbeat, which Optuna's check skips); the
    storage's retry callback queues each again."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        fail_never_beaten(study)


def fail_never_beaten(study: Any) -> None:
    """See `fail_stale`: running trials with no heartbeat row, started more than the grace period ago."""
    import datetime

    import optuna

    try:  # Optuna has no public query for a trial's heartbeat row; pyproject pins optuna < 6 for this
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # a later Optuna moved them: leave never-beaten trials to the user, say so once
        warnings.warn("this Optuna version has no optuna.storages._rdb models: trials killed before their first "
                      "heartbeat stay RUNNING (fail them with optuna's API, or pin optuna<6)", RuntimeWarning,
                      stacklevel=2)
        return

    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.heartbeat_interval is None:
        return
    grace = storage.grace_period if storage.grace_period is not None else 2 * storage.heartbeat_interval
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.datetime_start is None or (now - trial.datetime_start).total_seconds() <= grace:
            continue
        with _create_scoped_session(storage.scoped_session) as session:
            if models.TrialHeartbeatModel.where_trial_id(trial._trial_id, session) is not None:
                continue  # it beats: Optuna's own check decides
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed (or finished) it first
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, storage.get_trial(trial._trial_id))


def counted_trials(study: Any) -> int:
    """Trials that count against the budget: all but those a kill or a dead worker interrupted
    (they are asked again, and their new copy counts instead)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(1 for t in trials if not t.user_attrs.get(INTERRUPTED) and t.number not in retried)


def has_waiting(study: Any) -> bool:
    """Trials queued to be asked again (after an interruption): asked before the budget is checked."""
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def record_heartbeats(storage: Any, trials: list) -> None:
    """Tell a shared storage that this worker's running trials are alive."""
    for trial in list(trials):
        if trial is not None:
            storage.record_heartbeat(trial._trial_id)


@contextlib.contextmanager
def heartbeats(storage: Any, running: list, interval: float):
    """A background thread that records the running trials' heartbeats every `interval` seconds
    (as Optuna's own `optimize` does), so long compilations never make a live trial look stale."""
    if storage is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            record_heartbeats(storage, running)

    thread = threading.Thread(target=beat, name="vhjax-tune-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _replace_slot(population: PopulationState, slot: jax.Array, fresh: PopulationState) -> PopulationState:
    """Member `slot` becomes the (one-member) `fresh` population's member: alive, not stopped."""
    put = lambda leaf, new: leaf.at[slot].set(new[0])
    members = jax.tree.map(put, population.members, fresh.members)
    return population.replace(members=members, alive=population.alive.at[slot].set(True),
                              diverged_step=population.diverged_step.at[slot].set(-1),
                              stopped=population.stopped.at[slot].set(False))


replace_slot = light_jit(_replace_slot)


@light_jit
def concat_slots(parts: list[PopulationState]) -> PopulationState:
    """One population whose slot i is the one-member population `parts[i]`."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


def spent_steps(study: Any) -> int:
    """Member-steps the study's trials trained (each its last reported step; interrupted trials'
    work is lost and does not count)."""
    return trained_steps(study.get_trials(deepcopy=False))


def trained_steps(trials: list) -> int:
    """`spent_steps` of these trials (one read of the storage serves several sums)."""
    return sum(max(trial.intermediate_values) for trial in trials
               if not trial.user_attrs.get(INTERRUPTED) and trial.intermediate_values)


def next_decision(step: int, pruner: str, min_steps: int, eta: int, steps: int) -> int:
    """The step a trial at `step` trains to at the least before `pruner` can stop it: ASHA's next
    rung (min_steps x eta^k), the median rule's next evaluation, the end without a pruner."""
    if pruner == "asha":
        rung = min_steps
        while rung <= step:
            rung *= eta
        return min(rung, steps)
    if pruner == "median":
        return min(step + min_steps, steps)
    return steps


def committed_steps(trials: list, pruner: str, min_steps: int, eta: int, steps: int) -> int:
    """Member-steps the running ones of `trials` (of every worker of the study) will still train at
    the least: each from its last reported step to its next decision (`next_decision`)."""
    import optuna

    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    return sum(next_decision(step, pruner, min_steps, eta, steps) - step
               for step in (max(t.intermediate_values, default=0) for t in running))


def tune(config: TrainConfig, space: Space, *, trials: int | None = None, budget: float | None = None,
         population: int | None = None, min_steps: int | None = None,
         eta: int | None = None, metric: str = "accuracy", direction: str = "maximize", sampler: str | None = None,
         pruner: str | None = None, workdir: str | Path | None = None, study_name: str = "vhjax", seed: int = 0,
         callback: Callable[[dict], bool | None] | None = None, mesh: Any = "auto", storage: str | None = None,
         heartbeat_interval: int = 60, grace_period: int = 180, compilation_cache: bool | str = True,
         verbose: bool = True, method: str = "auto", enqueue: Sequence[Mapping[str, Any]] = (),
         timeout: float | None = None) -> TuneResult:
    """Search `space` with at most `trials` trials and/or `budget` full trials' worth of training
    (trials of at most `config.steps` steps each); see the module docstring.

    `method`: 'asha' (an Optuna sampler proposes, the pruner stops trials inside the running
    population), 'pbt' (`vhjax.search.tune_pbt`: shrinking population based training runs of
    budget // 2 members, as many as the budget pays for, the fastest to a good model on the
    benchmarks; a space of Floats only) or
    'auto' (the default: 'pbt' where it applies, see `tune_pbt.choose_method`: Floats only, a
    budget, no trials cap, maximized, one process, no sampler/pruner/min_steps/eta given; else 'asha').
    `sampler` ('tpe', the default, or 'random'), `pruner` ('asha', the default, 'median' or 'none'),
    `min_steps` and `eta` (default 3) belong to 'asha'. With 'pbt', `callback` receives every
    member's row as soon as its round is evaluated (with `round`, `member`, `restart`; `test` None) and
    `population` overrides budget // 2.

    `config` gives everything fixed (data, model, optimizer, steps, eval_split for selection,
    test_split for reporting the pick); `min_steps` is the first rung and the evaluation interval
    (default: about steps / eta^2, a divisor of steps); `callback(row)` is called for every
    finished trial with its timeline row; `mesh` as in `fit_population` ('auto': every device).
    `population`: slots trained at once (default `default_population`: 4 per CPU device, e.g. 8 on
    a 2-core CPU split by `vhjax.hardware.use_cpu_devices`; 16 on a GPU or TPU).
    `storage`: an SQL URL shared by several worker processes or machines running the same call
    (each trains its own population; nothing is asked twice; a dead worker's trials are retried
    after `grace_period` seconds without a heartbeat); default: `workdir/study.db`, one worker.
    `compilation_cache`: JAX's persistent compilation cache (True: the default directory, see
    `vhjax.compilation_cache`; a path; False: leave it off), so a rerun loads its programs.
    `enqueue`: parameter values to try first (Optuna's `study.enqueue_trial`, Ray Tune's
    `points_to_evaluate`), a list of dicts of some or all of the space's parameters, each checked
    against its range before anything compiles. 'asha': the first trials, a parameter a point omits
    drawn by the sampler; a point the study holds already (a resumed search) is not queued again;
    queued points are asked before the budget is checked, so all of them run. 'pbt': the first run's
    first members (at most its population), a parameter a point omits taken from that member's
    Sobol point.
    `timeout`: seconds of wall time from the call after which the search starts nothing new and ends
    at its next evaluation (Optuna's `optimize(timeout=...)`, Ray Tune's `time_budget_s`): 'asha'
    refills no slot, and the trials running then end as pruned (user attribute `timed_out`); 'pbt'
    ends the running run at its next round (each slot returning its best evaluated parameters) and
    starts no further run. The first population always starts. `result.timed_out` says whether the
    timeout ended it; rerunning the call in its workdir goes on ('asha': new trials; 'pbt': the cut run
    continues from its checkpoint and the runs not started train, as in a call without a timeout).
    A `callback` that returns True stops the search the same way, at once ('asha': no slot is
    refilled, the running trials end at their next evaluation, user attribute `stopped`; 'pbt': the
    run ends after that round, the round's other rows still sent); `result.stopped` says so.
    """
    import optuna

    deadline = Deadline(timeout)
    validate(config)
    if trials is None and budget is None:
        raise ValueError("trials and budget both have value None; allowed: a number of trials (trials=64) and/or "
                         "training compute in full trials' worth (budget=64)")
    if trials is not None:
        check_int("trials", trials, 1)
    if budget is not None:
        check_number("budget", budget, low=0, low_inclusive=False)
    if population is not None:
        check_int("population", population, 1)
    check_choice("direction", direction, ("maximize", "minimize"))
    check_choice("metric", metric, tuple(config.eval_metrics))
    if not isinstance(space, Space):
        raise TypeError(f"space has value {space!r}; allowed: a vhjax.search.Space")
    method = choose_method(method, space, budget=budget, trials=trials, direction=direction, storage=storage,
                           asha_only={"sampler": sampler, "pruner": pruner, "min_steps": min_steps, "eta": eta},
                           private=config.dp_clip_norm is not None)
    points = space.check_points(enqueue, most=trials, most_name="trials")
    root = None if workdir is None else Path(workdir)
    if method == "pbt":
        check_study_method(root, study_name, method)
        if population is not None:
            check_int("population", population, MIN_POPULATION)
        return run_pbt_tune(config, space, budget=budget, population=population, metric=metric, workdir=root,
                            study_name=study_name, seed=seed, callback=callback, mesh=mesh,
                            compilation_cache=compilation_cache, verbose=verbose, enqueue=points, deadline=deadline)
    sampler = "tpe" if sampler is None else sampler
    pruner = "asha" if pruner is None else pruner
    eta = 3 if eta is None else eta
    check_int("eta", eta, 2)
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("pruner", pruner, PRUNERS)
    min_steps = default_min_steps(config.steps, eta) if min_steps is None else check_int("min_steps", min_steps, 1)
    if config.steps % min_steps:
        raise ValueError(f"min_steps has value {min_steps}; allowed: a divisor of config.steps ({config.steps})")
    distributions = optuna_distributions(space)
    from vhjax.train.task import resolve_model

    to_member = member_maker(resolve_model(config))
    names = check_per_member(space, to_member)
    config = dataclasses.replace(config, eval_every=min_steps)
    task = bucket_task(config, names)
    check_task_hparams(task, names)  # before the study opens: no trial is asked for a space the task lacks
    vhjax_cache.use(compilation_cache)
    check_study_method(root, study_name, method)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    with workdir_lock(root if storage is None else None), vhjax_cache.count_compilations() as compiled:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rdb = None if storage is None else shared_storage(storage, heartbeat_interval, grace_period)
        study = open_study(root, study_name, direction, make_sampler(sampler, seed), make_pruner(pruner, min_steps, eta),
                           rdb)
        for point in points:  # asked first; one the study holds already (a resumed search) is not queued again
            study.enqueue_trial(point, skip_if_exists=True)
        mesh = parallel.resolve_mesh(mesh)
        population = default_population(mesh) if population is None else population
        if verbose:
            print(f"tune | {population} slots on {devices_line(mesh)}", flush=True)
        run_chunk, evaluate = compiled_programs(task, default_member_group(population, parallel.member_shards(mesh)),
                                                mesh=mesh)
        eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
        test_data = None if task.test is None else (jnp.asarray(task.test.x), jnp.asarray(task.test.y))
        start = time.perf_counter()
        timeline: list[dict] = []
        running: list[Any] = []  # the Optuna trial of each slot (None: empty)

        budget_steps = None if budget is None else budget * config.steps

        def exhausted() -> bool:
            if trials is not None and counted_trials(study) >= trials:
                return True
            if budget_steps is None:
                return False
            # what the running trials will train at the least counts already: the last asks do not
            # start trials the budget cannot pay for (a budget of 1 with 8 slots runs one trial)
            now = study.get_trials(deepcopy=False)
            return trained_steps(now) + committed_steps(now, pruner, min_steps, eta, config.steps) >= budget_steps

        def ask() -> tuple[Any, dict] | None:
            if rdb is not None:  # a dead worker's trials, stale for grace_period: failed and queued again
                fail_stale(study)
            if exhausted() and not has_waiting(study):  # retries of interrupted trials are asked first
                return None
            trial = study.ask(distributions)
            if rdb is not None:  # alive from the ask on: a kill before the first beat still goes stale
                record_heartbeats(rdb, [trial])
            return trial, split_member(trial.number, to_member(trial.params))[1]

        def fresh_member(trial: Any, hparams: dict) -> PopulationState:
            return init_population(task, 1, {k: stack([v]) for k, v in hparams.items()},
                                   seeds=[config.seed + trial.number], same_batches=False)

        def finish(slot: int, state: Any, value: float, steps: int, test: float | None) -> None:
            trial = running[slot]
            if state == "COMPLETE":
                trial.set_user_attr("test_" + metric, test)
                study.tell(trial, value)
            elif state == "PRUNED":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row = {"seconds": time.perf_counter() - start, "trial": trial.number, "state": state, "value": value,
                   "test": test, "steps": steps}
            timeline.append(row)
            if callback is not None and asks_stop(callback(row)):
                deadline.stop()

        with heartbeats(rdb, running, heartbeat_interval):  # from the first ask on
            first = [ask() for _ in range(population)]
            if first[0] is None:
                raise ValueError(f"trials has value {trials} and budget {budget}; the study in {root} already holds "
                                 f"{counted_trials(study)} trials ({spent_steps(study)} member-steps): raise trials or "
                                 "budget to extend it")
            slots = [pair for pair in first if pair is not None]
            running.extend(pair[0] for pair in slots)
            running.extend([None] * (population - len(slots)))
            # every slot from the one-member program the refills use (one init program, not two)
            fresh = [fresh_member(*pair) for pair in slots]
            members = concat_slots(fresh + fresh[:1] * (population - len(slots)))
            if len(slots) < population:  # fewer trials left than slots: the copies stay stopped
                members = members.replace(stopped=members.stopped.at[len(slots):].set(True))

            def update(state: dict, current: PopulationState, report: Report):
                if rdb is not None:
                    record_heartbeats(rdb, running)
                values = report.metric("eval", metric)
                alive = np.asarray(current.alive)
                steps = np.asarray(current.members.step)
                training = training_mask(current)
                finished: dict[int, str] = {}
                for slot in np.flatnonzero(training | ~alive):
                    trial = running[slot]
                    if trial is None:
                        continue
                    if not alive[slot] or not np.isfinite(values[slot]):
                        finished[slot] = "FAIL"
                        continue
                    trial.report(float(values[slot]), int(steps[slot]))
                    if steps[slot] >= config.steps:
                        finished[slot] = "COMPLETE"
                    elif trial.should_prune():
                        finished[slot] = "PRUNED"
                if deadline.passed():  # the running trials end here, pruned by the timeout or the stop
                    for slot, trial in enumerate(running):
                        if trial is not None and slot not in finished:
                            trial.set_user_attr("timed_out" if deadline.reached else "stopped", True)
                            finished[slot] = "PRUNED"
                if not finished:
                    return state, current
                tests = evaluate(current, *test_data)[metric] if test_data is not None and "COMPLETE" in finished.values() \
                    else None
                stopped = np.asarray(current.stopped).copy()
                for slot, outcome in finished.items():
                    test = None if tests is None or outcome != "COMPLETE" else float(tests[slot])
                    finish(slot, outcome, float(values[slot]), int(steps[slot]), test)
                    pair = None if deadline.passed() else ask()  # (a callback may have asked to stop)
                    if pair is None:
                        running[slot] = None
                        stopped[slot] = True
                        continue
                    running[slot] = pair[0]
                    current = replace_slot(current, jnp.int32(slot), fresh_member(*pair))
                    stopped[slot] = False
                current = current.replace(stopped=jnp.asarray(stopped))
                if verbose:
                    print_progress(progress(timeline, trials, budget, spent_steps(study) / config.steps, running, start,
                                            direction, metric) + " | " + vhjax_cache.compilations_text(compiled))
                return state, current

            most = trials if trials is not None else int(np.ceil(budget * config.steps / min_steps))
            bound = (most // population + 2) * config.steps * 2  # the loop ends when no slot trains
            run_loop(members, run_chunk, (jnp.asarray(task.train.x), jnp.asarray(task.train.y)), steps=bound,
                     eval_every=min_steps, evaluate=lambda p: {"eval": evaluate(p, *eval_data)},
                     hooks=[Hook("tune", lambda p: {}, update)], mesh=mesh, verbose=False)
        record = vhjax_cache.compilations_record(compiled)
        study.set_user_attr("compilations", record)  # stored with the study (this call's programs)
        if verbose and deadline.ended:
            attribute = "timed_out" if deadline.reached else "stopped"
            print(f"tune | {deadline.reason()}: {len(timeline)} trials ended in this call, those still running pruned at the "
                  f"next evaluation (user attribute {attribute}); rerun the call to go on", flush=True)
        return TuneResult(study, timeline, time.perf_counter() - start, metric, direction, compilations=record,
                          timed_out=deadline.reached, stopped=deadline.stopped)


def default_population(mesh: Any) -> int:
    """Slots when the caller gives none: on CPU devices 4 per device (8 on a 2-core CPU split by
    `vhjax.hardware.use_cpu_devices`: there 8 slots spent a 64-trial MNIST-1D budget in 71 s
    against 87 s for 16, at the same quality; each trial reaches its rungs sooner), on
    accelerators 16 (on one H200, 16 slots reached Optuna TPE's best of a 64-trial MNIST-1D
    budget in 20.5 s, 64 slots in only 1 of 2 seeds: experiments/README.md, "On a GPU")."""
    return 4 * parallel.member_shards(mesh) if mesh_platform(mesh) == "cpu" else 16


def mesh_platform(mesh: Any) -> str:
    """'cpu', 'gpu' or 'tpu': the mesh's devices' platform (the default device's without a mesh)."""
    return (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform


def devices_line(mesh: Any) -> str:
    """E.g. '2 cpu devices (members sharded over them)' or '1 cpu device'."""
    shards = parallel.member_shards(mesh)
    if mesh is None:
        return f"1 {mesh_platform(mesh)} device"
    return f"{mesh.devices.size} {mesh_platform(mesh)} devices (members sharded over {shards} of them)"


def stack(values: list) -> Any:
    """Per-member values stacked on a leading axis (dicts of arrays, e.g. `arch`, leaf by leaf)."""
    if isinstance(values[0], Mapping):
        return jax.tree.map(lambda *leaves: np.stack(leaves), *values)
    return np.asarray(values)


def progress(timeline: list[dict], trials: int | None, budget: float | None, spent: float, running: list,
             start: float, direction: str, metric: str) -> str:
    """One line: trials finished (of `trials`), compute spent in full trials' worth (of `budget`),
    states, best so far, elapsed, ETA (from whichever limit is nearer)."""
    done = [r for r in timeline if r["state"] == "COMPLETE"]
    pruned = sum(r["state"] == "PRUNED" for r in timeline)
    failed = sum(r["state"] == "FAIL" for r in timeline)
    elapsed = time.perf_counter() - start
    fraction = max(len(timeline) / trials if trials else 0.0, spent / budget if budget else 0.0)
    eta = elapsed * (1 - fraction) / fraction if 0 < fraction <= 1 else (0.0 if fraction > 1 else float("nan"))
    count = f"trials {len(timeline)}" + (f"/{trials}" if trials else "")
    compute = f" | compute {spent:.1f}" + (f"/{budget:g}" if budget else "") + " trials' worth"
    return (f"tune | {count} (complete {len(done)}, pruned {pruned}, failed {failed}, "
            f"running {sum(t is not None for t in running)}){compute} | {best_text(timeline, direction, metric)} | "
            f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s")


def best_text(timeline: list[dict], direction: str, metric: str) -> str:
    """The progress line's best so far: the best completed trial's value; before any completes, the
    best value a pruned trial had at its last rung (said as such), or that there is none yet."""
    pick = max if direction == "maximize" else min
    done = [r["value"] for r in timeline if r["state"] == "COMPLETE"]
    if done:
        return f"best val {metric} {pick(done):.4f}"
    pruned = [r["value"] for r in timeline if r["state"] == "PRUNED" and np.isfinite(r["value"])]
    rung = f"; best pruned trial {pick(pruned):.4f} at its last rung" if pruned else ""
    return f"best val {metric} - (no trial completed yet{rung})"
