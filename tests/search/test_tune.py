"""tune: Optuna proposes, trials train as slots of one running population, ASHA prunes in program."""

from __future__ import annotations

import optuna
import pytest

from vhjax.config import TrainConfig
from vhjax.search.space import Categorical, Float, Space
from vhjax.search.tune import best_text, next_decision, spent_steps, tune

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, batch_size=32,
                     steps=36, train_split="train[:90%]", eval_split="train[90%:]", test_split="test", seed=0)
SPACE = Space({"learning_rate": Float(1e-5, 3e-2, log=True)})


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tune")
    return workdir, tune(CONFIG, SPACE, trials=10, population=4, min_steps=4, eta=3, workdir=workdir, verbose=False)


def test_finds_a_good_learning_rate_and_prunes_inside_the_program(searched):
    _, result = searched
    states = [row["state"] for row in result.timeline]
    assert len(states) == 10 and states.count("PRUNED") >= 2 and states.count("COMPLETE") >= 2
    best = result.best()
    assert best["params"]["learning_rate"] > 1e-3 and best["value"] > 0.6 and best["test"] > 0.6
    for row in result.timeline:  # pruned trials stopped at an early rung, completed ones ran all steps
        trial = result.study.trials[row["trial"]]
        last = max(trial.intermediate_values)
        assert last == (36 if row["state"] == "COMPLETE" else row["steps"]) and (row["state"] != "PRUNED" or last < 36)
    assert "| rank | trial | learning_rate |" in result.leaderboard()
    # ten trials, pruned ones refilled in place: one training program (none where an earlier test of this
    # process compiled the same one), its count stored with the study
    assert result.compilations["by_function"].get("jit(run_free)", 0) <= 1
    assert result.study.user_attrs["compilations"] == result.compilations


def test_the_study_is_a_plain_optuna_study_and_extends(searched):
    workdir, result = searched
    study = optuna.load_study(study_name="vhjax", storage=f"sqlite:///{workdir / 'study.db'}")
    assert len(study.trials) == 10
    assert isinstance(study.trials[0].distributions["learning_rate"], optuna.distributions.FloatDistribution)
    assert study.best_trial.value == pytest.approx(result.best()["value"])
    extended = tune(CONFIG, SPACE, trials=12, population=4, min_steps=4, workdir=workdir, verbose=False)
    assert len(extended.study.trials) == 12 and len(extended.timeline) == 2  # only the new trials ran


def test_a_compute_budget_tries_more_candidates_than_it_has_trials_worth(tmp_path):
    result = tune(CONFIG, SPACE, budget=4, population=4, min_steps=4, eta=3, workdir=tmp_path, verbose=False)
    steps = CONFIG.steps
    spent = spent_steps(result.study)
    # past the budget at most what the running slots trained beyond their committed rungs
    assert 4 * steps <= spent <= 4 * steps + 3 * steps
    assert len(result.timeline) > 4 and any(row["state"] == "PRUNED" for row in result.timeline)
    extended = tune(CONFIG, SPACE, budget=6, population=4, min_steps=4, eta=3, workdir=tmp_path, verbose=False)
    assert spent_steps(extended.study) >= 6 * steps and extended.timeline  # a larger budget extends it


def test_next_decision_is_the_next_rung_evaluation_or_end():
    assert [next_decision(s, "asha", 4, 3, 40) for s in (0, 4, 8, 12, 35, 36)] == [4, 12, 12, 36, 36, 40]
    assert [next_decision(s, "median", 4, 3, 40) for s in (0, 4, 38)] == [4, 8, 40]
    assert next_decision(8, "none", 4, 3, 40) == 40


@pytest.mark.parametrize("budget", [1, 2])
def test_a_budget_smaller_than_the_slots_starts_only_the_trials_it_pays_for(tmp_path, budget):
    """Without a pruner each running trial commits to its end, so a budget of 1 (2) trials' worth
    with 4 slots runs 1 (2) trials, not 4; spent equals the budget exactly."""
    result = tune(CONFIG, SPACE, budget=budget, population=4, min_steps=4, pruner="none", workdir=tmp_path,
                  verbose=False)
    assert len(result.timeline) == budget and spent_steps(result.study) == budget * CONFIG.steps


def test_trials_left_running_by_a_killed_search_are_asked_again(tmp_path):
    study = optuna.create_study(study_name="vhjax", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                direction="maximize")
    orphan = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 3e-2, log=True)})
    result = tune(CONFIG, SPACE, trials=2, population=2, min_steps=12, workdir=tmp_path, verbose=False)
    trials = result.study.trials
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert trials[orphan.number].user_attrs["interrupted"] is True
    retried = [t for t in trials if t.number != orphan.number and t.params == orphan.params]
    assert len(retried) == 1 and retried[0].state.is_finished()


def test_enqueued_points_are_the_first_trials_and_a_resumed_search_does_not_queue_them_again(tmp_path):
    space = Space({"learning_rate": Float(1e-5, 3e-2, log=True), "weight_decay": Float(1e-6, 1e-2, log=True)})
    points = [{"learning_rate": 3e-3, "weight_decay": 1e-4}, {"learning_rate": 1e-2}]  # the second: wd drawn
    result = tune(CONFIG, space, trials=3, population=2, min_steps=12, sampler="random", workdir=tmp_path,
                  enqueue=points, verbose=False)
    first, second, third = result.study.trials
    assert first.params == points[0] and second.params["learning_rate"] == points[1]["learning_rate"]
    assert 1e-6 <= second.params["weight_decay"] <= 1e-2 and third.params["learning_rate"] not in (3e-3, 1e-2)
    assert all(t.state.is_finished() for t in result.study.trials)
    extended = tune(CONFIG, space, trials=4, population=2, min_steps=12, sampler="random", workdir=tmp_path,
                    enqueue=points[:1], verbose=False)
    assert len(extended.study.trials) == 4 and len(extended.timeline) == 1  # one new trial: point 0 ran already
    assert extended.study.trials[3].params != points[0]


def test_a_timeout_prunes_the_running_trials_at_the_next_evaluation_and_a_rerun_goes_on(tmp_path):
    result = tune(CONFIG, SPACE, trials=6, population=2, min_steps=12, pruner="none", workdir=tmp_path, timeout=1e-3,
                  verbose=False)  # the first population starts; its first evaluation comes after the deadline
    assert result.timed_out and [row["state"] for row in result.timeline] == ["PRUNED", "PRUNED"]
    assert [row["steps"] for row in result.timeline] == [12, 12]
    assert all(t.user_attrs["timed_out"] and max(t.intermediate_values) == 12 for t in result.study.trials)
    rerun = tune(CONFIG, SPACE, trials=4, population=2, min_steps=12, pruner="none", workdir=tmp_path, verbose=False)
    assert not rerun.timed_out and [row["state"] for row in rerun.timeline] == ["COMPLETE", "COMPLETE"]
    assert len(rerun.study.trials) == 4 and rerun.best()["trial"] in (2, 3)


def test_a_callback_returning_true_refills_no_slot_and_prunes_the_running_trials_at_their_next_evaluation(tmp_path):
    kwargs = dict(trials=6, population=3, min_steps=4, eta=2, workdir=tmp_path, verbose=False)
    result = tune(CONFIG, SPACE, callback=lambda row: True, **kwargs)  # stop at the first trial that ends
    first, *others = result.timeline
    assert result.stopped and not result.timed_out and len(result.study.trials) == 3  # no slot was refilled
    assert first["steps"] < CONFIG.steps and "stopped" not in result.study.trials[first["trial"]].user_attrs
    assert len(others) == 2 and all(row["state"] == "PRUNED" and row["steps"] == first["steps"] + 4 for row in others)
    assert all(result.study.trials[row["trial"]].user_attrs == {"stopped": True} for row in others)
    rerun = tune(CONFIG, SPACE, **kwargs)
    assert not rerun.stopped and len(rerun.study.trials) == 6 and len(rerun.timeline) == 3


def test_the_progress_lines_best_names_pruned_values_as_such_until_a_trial_completes():
    pruned = [{"state": "PRUNED", "value": 0.62}, {"state": "PRUNED", "value": 0.55}, {"state": "FAIL", "value": 0.9}]
    assert best_text([], "maximize", "accuracy") == "best val accuracy - (no trial completed yet)"
    assert best_text(pruned, "maximize", "accuracy") == (
        "best val accuracy - (no trial completed yet; best pruned trial 0.6200 at its last rung)")
    assert best_text(pruned, "minimize", "loss").endswith("best pruned trial 0.5500 at its last rung)")
    done = pruned + [{"state": "COMPLETE", "value": 0.58}, {"state": "COMPLETE", "value": 0.57}]
    assert best_text(done, "maximize", "accuracy") == "best val accuracy 0.5800"  # completed trials only
    assert best_text(done, "minimize", "loss") == "best val loss 0.5700"


@pytest.mark.parametrize("space,kwargs,match", [
    (Space({"model_kwargs.widths": Categorical([(8,), (16,)])}), {}, r"change the compiled program"),
    (SPACE, {"min_steps": 5}, r"min_steps has value 5; allowed: a divisor"),
    (SPACE, {"pruner": "hyper"}, r"pruner has value 'hyper'"),
    (SPACE, {"trials": 0}, r"trials has value 0"),
    (SPACE, {"trials": None, "budget": 0}, r"budget has value 0; allowed: a finite number > 0"),
    (SPACE, {"trials": None}, r"trials and budget both have value None"),
    (SPACE, {"enqueue": [{"lr": 1e-3}]}, r"enqueue\[0\]: unknown parameter\(s\) \['lr'\]; allowed: \['learning_rate'\]"),
    (SPACE, {"enqueue": [{}, {"learning_rate": 0.5}]},
     r"enqueue\[1\]: parameter 'learning_rate': value 0.5 is outside \[1e-05, 0.03\]"),
    (SPACE, {"enqueue": [{}] * 5}, r"enqueue has 5 points; allowed: at most trials \(4\)"),
    (SPACE, {"timeout": 0}, r"timeout has value 0; allowed: a finite number > 0"),
])
def test_bad_input_fails_before_compiling(space, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tune(CONFIG, space, **{"trials": 4, **kwargs}, verbose=False)


def test_a_space_the_config_lacks_is_refused_before_the_study_holds_a_trial(tmp_path):
    space = Space({"learning_rate": Float(1e-4, 3e-2, log=True), "aug_strength": Float(0.0, 1.0)})  # no augment=
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'aug_strength'; known for this task: .*learning_rate"
                                         r".* \(aug_\* values set the config's augmentations: give the config `augment"):
        tune(CONFIG, space, trials=4, population=2, workdir=tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []  # no study was opened, so no trial was left running in one


def test_enqueue_must_be_a_list_of_dicts():
    with pytest.raises(TypeError, match=r"enqueue has value \{'learning_rate': 0.001\}; allowed: a list of dicts"):
        tune(CONFIG, SPACE, trials=4, enqueue={"learning_rate": 1e-3}, verbose=False)
    with pytest.raises(TypeError, match=r"enqueue\[0\] has value 0.001; allowed: a dict"):
        tune(CONFIG, SPACE, trials=4, enqueue=[1e-3], verbose=False)


def _worker(url: str, trials: int, grace_period: int) -> None:
    """A worker process: tune on the shared study at `url` (forked from the fork server of
    `forkserver_context`, which imported JAX, vhjax and this module once and never started JAX)."""
    import dataclasses

    from tests.datasets import tiny_classification

    config = dataclasses.replace(CONFIG, dataset=tiny_classification())  # not the digits: no second loading them
    tune(config, SPACE, trials=trials, population=2, min_steps=12, storage=url, mesh=None, heartbeat_interval=1,
         grace_period=grace_period, verbose=False)


def worker(url: str, trials: int, grace_period: int):
    """A started worker process."""
    from tests.forking import forkserver_context

    process = forkserver_context(__name__).Process(target=_worker, args=(url, trials, grace_period))
    process.start()
    return process


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_worker_processes_share_one_study(tmp_path, request, database):
    """3 workers on one SQLite file or one PostgreSQL server: 8 trials (up to 2 more when the last
    asks race), none asked twice, every one finished."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:  # a study of its own on the session's server
        url = request.getfixturevalue("postgres_url")
    optuna.create_study(study_name="vhjax", storage=url, direction="maximize")  # created once, up front
    # a grace period no live worker's heartbeat misses on a loaded machine (tracing holds the GIL for
    # seconds): here no trial may go stale; the killed-worker test below uses 3 s
    workers = [worker(url, 8, 60) for _ in range(3)]
    for w in workers:
        w.join(timeout=900)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    study = optuna.load_study(study_name="vhjax", storage=url)
    # the budget check and the ask of two workers can race (as with Optuna's MaxTrialsCallback):
    # at most one trial more per other worker
    assert 8 <= len(study.trials) <= 8 + 2 and all(t.state.is_finished() for t in study.trials)
    assert len({t.number for t in study.trials}) == len(study.trials)


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_asked_again(tmp_path):
    """Optuna's stale check skips running trials without a heartbeat row; a worker killed between
    the ask and its first heartbeat left such a trial running forever. After the grace period it
    is failed and queued again; a young trial without a beat and a beating one are left alone."""
    import time

    from vhjax.search.tune import fail_stale, record_heartbeats, shared_storage

    storage = shared_storage(f"sqlite:///{tmp_path / 'shared.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="vhjax", storage=storage, direction="maximize")
    orphan, beating = study.ask(), study.ask()
    fail_stale(study)  # young: not failed yet
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.RUNNING}
    time.sleep(2.5)
    record_heartbeats(storage, [beating])
    young = study.ask()
    fail_stale(study)
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert states[beating.number] == states[young.number] == optuna.trial.TrialState.RUNNING
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert [t.state for t in retried] == [optuna.trial.TrialState.WAITING]


def test_a_killed_workers_running_trial_is_retried_by_another_worker(tmp_path):
    """kill -9 of a worker mid-trial: after the grace period without its heartbeat, another worker
    fails that trial and asks it again; nothing is left running and the budget is still met."""
    import time

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="vhjax", storage=url, direction="maximize")
    doomed = worker(url, 4, 3)
    deadline = time.monotonic() + 300
    running = []
    while not running and time.monotonic() < deadline and doomed.exitcode is None:
        time.sleep(0.5)
        study = optuna.load_study(study_name="vhjax", storage=url)
        running = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
    assert running, "the worker never started a trial"
    doomed.kill()  # SIGKILL
    doomed.join(timeout=60)
    # past the grace period (3 s), so the survivor's first ask finds the orphans stale: a survivor that
    # started up and met its budget sooner would leave them running for a later worker
    time.sleep(3.5)
    survivor = worker(url, 4, 3)
    survivor.join(timeout=900)
    assert survivor.exitcode == 0
    study = optuna.load_study(study_name="vhjax", storage=url)
    states = {t.number: t.state for t in study.trials}
    assert all(states[n] == optuna.trial.TrialState.FAIL for n in running), (running, states)  # by the heartbeat check
    retried = {t.system_attrs.get("failed_trial") for t in study.trials} - {None}
    assert set(running) <= retried  # and asked again
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # ASHA prunes some
    assert len(study.get_trials(states=done)) >= 4


def test_a_sampler_and_pruner_study_refuses_the_pbt_method(searched):
    workdir, _ = searched
    with pytest.raises(ValueError, match="made by method 'asha'"):
        tune(CONFIG, SPACE, budget=8, workdir=workdir, verbose=False)  # 'auto' resolves to PBT here
