"""tune's PBT method: a budget as one shrinking PBT run, chosen by 'auto' where it applies."""

from __future__ import annotations

import json

import optuna
import pytest

from vhjax.config import TrainConfig
from vhjax.search.pbt_search import initial_units
from vhjax.search.space import Float, Int, Space
from vhjax.search.storage import open_store
from vhjax.search.tune import tune
from vhjax.search.tune_pbt import (choose_method, pbt_population, pbt_runs, pbt_schedule, run_member_steps,
                                   run_seed, trial_number)

# a checkpoint every 10 rounds (30 a run, each one an orbax save of most of a round's time), not every round:
# a stopped or cut run still resumes from its last one, past round 0
CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, batch_size=32,
                     steps=60, train_split="train[:90%]", eval_split="train[90%:]", test_split="test", seed=0,
                     checkpoint_every=10)
SPACE = Space({"learning_rate": Float(1e-5, 3e-2, log=True), "weight_decay": Float(1e-6, 1e-2, log=True)})


def test_a_budget_maps_to_half_as_many_members_and_the_benchmarked_schedule():
    assert [pbt_population(b, 2) for b in (64, 20, 16, 8, 3)] == [32, 8, 8, 4, 4]
    assert pbt_population(64, 1) == 32 and pbt_population(22, 1) == 10
    assert pbt_schedule(1500, 32) == (50, {8: 16})  # 30 rounds, the best half after round 8
    assert pbt_schedule(60, 4) == (2, {8: 2})
    # trial numbers: rounds 0-8 hold 4 trials each, later rounds the 2 kept members
    assert [trial_number(r, p, 4, {8: 2}) for r, p in ((0, 0), (1, 3), (8, 3), (9, 0), (10, 1))] == [0, 7, 35, 36, 39]


def test_the_budget_pays_for_as_many_runs_as_fit_in_it():
    # one run of 32 members: 9 rounds of 32, 21 of 16, 50 steps each = 20.8 trials' worth of 1500 steps
    assert run_member_steps(1500, 50, 32, {8: 16}) == (9 * 32 + 21 * 16) * 50 == 31_200
    assert [pbt_runs(b, 1500, 50, 32, {8: 16}) for b in (64, 62.4, 62.3, 41.6, 20, 1)] == [3, 3, 2, 2, 1, 1]
    assert run_member_steps(61, 2, 4, {8: 2}) == (9 * 4 + 21 * 2) * 2 + 2 * 1  # a last round of one step
    assert run_seed(5, 0) == 5 and len({run_seed(s, r) for s in range(4) for r in range(3)}) == 12


def test_auto_takes_pbt_only_where_it_applies_and_pbt_names_what_does_not_fit():
    def chosen(space=SPACE, **kwargs):
        args = {"budget": 64, "trials": None, "direction": "maximize", "storage": None, "asha_only": {}, **kwargs}
        return choose_method(args.pop("method", "auto"), space, **args)

    assert chosen() == "pbt"
    with_int = Space({"learning_rate": Float(1e-4, 1e-1, log=True), "arch.width": Int(8, 64)})
    assert chosen(with_int) == "asha"
    assert chosen(trials=64) == "asha" and chosen(budget=None, trials=64) == "asha"
    assert chosen(budget=4) == "asha" and chosen(direction="minimize") == "asha"
    assert chosen(storage="postgresql://db") == "asha" and chosen(asha_only={"pruner": "median"}) == "asha"
    assert chosen(asha_only={"pruner": None, "sampler": None}) == "pbt"
    with pytest.raises(ValueError, match="arch.width"):
        chosen(with_int, method="pbt")
    with pytest.raises(ValueError, match="given: min_steps, sampler"):
        chosen(method="pbt", asha_only={"sampler": "tpe", "min_steps": 10})
    with pytest.raises(ValueError, match="method has value 'hyperband'"):
        chosen(method="hyperband")


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tune_pbt")
    rows = []
    return workdir, rows, tune(CONFIG, SPACE, budget=8, workdir=workdir, callback=rows.append, verbose=False)


def test_a_float_space_with_a_budget_runs_the_shrinking_pbt(pbt_run):
    workdir, rows, result = pbt_run
    assert result.method == "pbt"
    # 4 members for rounds 0-8, then the best 2 for rounds 9-29: every member at every round a trial;
    # one run trains 156 of the budget's 480 member-steps, so three runs (two restarts)
    assert len(result.timeline) == len(rows) == 3 * (9 * 4 + 21 * 2)
    assert [row["restart"] for row in rows] == [0] * 78 + [1] * 78 + [2] * 78
    for run, name in enumerate(("vhjax", "vhjax-restart-1", "vhjax-restart-2")):  # each run a study in study.db
        stored = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'study.db'}")
        assert [t.value for t in stored.trials] == [r["value"] for r in rows[78 * run:78 * (run + 1)]]
        assert (workdir / ("training" if run == 0 else f"restart_{run}/training")).is_dir()
    trials = result.study.trials  # read once: each read deep-copies all 234 trials
    firsts = [{tuple(sorted(t.params.items())) for t in trials[78 * run:78 * run + 4]} for run in range(3)]
    assert not firsts[0] & firsts[1] and not firsts[1] & firsts[2]  # each run its own Sobol scramble
    for row in rows:  # the callback's trial numbers are the study's
        trial = trials[row["trial"]]
        assert (trial.user_attrs["generation"], trial.user_attrs["slot"]) == (row["round"], row["member"])
        assert trial.value == pytest.approx(row["value"]) and trial.user_attrs["fidelity"] == row["steps"]
        assert trial.user_attrs["restart"] == row["restart"]
    best = result.best()
    first_round = max(row["value"] for row in rows if row["round"] == 0)
    assert best["value"] == max(row["value"] for row in rows) and best["value"] > max(first_round, 0.6)
    assert best["test"] is not None and best["test"] > 0.6  # the pick is returned parameters, tested
    assert "| rank | trial | learning_rate | weight_decay |" in result.leaderboard()
    # one training program for 3 x 30 rounds and the shrinks: the restarts compile nothing
    assert result.compilations["by_function"]["jit(run_free)"] == 1
    assert result.study.user_attrs["compilations"] == result.compilations
    for name, programs in (("vhjax", 1), ("vhjax-restart-1", 0)):  # search_pbt's record of each run's training
        with open_store(storage=workdir / "study.db", study=name) as store:
            assert json.loads(store.get_meta("compilations"))["by_function"].get("jit(run_free)", 0) == programs


def test_a_pbt_study_resumes_whole_and_refuses_the_other_method(pbt_run):
    workdir, _, result = pbt_run
    rows = []
    again = tune(CONFIG, SPACE, budget=8, workdir=workdir, callback=rows.append, verbose=False)
    assert not rows and again.best()["trial"] == result.best()["trial"]  # stored: nothing trains again
    assert again.compilations == result.compilations  # the run's count, read back from the store
    with pytest.raises(ValueError, match="made by method 'pbt'"):
        tune(CONFIG, SPACE, trials=2, population=2, workdir=workdir, verbose=False)


def test_runs_stored_with_uniform_first_members_resume_as_they_were_made(tmp_path, monkeypatch):
    from vhjax.search import pbt_search

    made = {}
    search_pbt = pbt_search.search_pbt

    def as_before(*args, **kwargs):  # the first populations of uniform draws, as before the Sobol default
        made[kwargs["study"]] = "random"
        return search_pbt(*args, **kwargs, initial="random")

    monkeypatch.setattr(pbt_search, "search_pbt", as_before)
    before = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, verbose=False)
    assert made == {"vhjax": "random", "vhjax-restart-1": "random", "vhjax-restart-2": "random"}
    monkeypatch.undo()
    designs = []
    for study in (*made, "absent"):  # read from each run's stored configuration; a new run: Sobol
        with open_store(storage=tmp_path / "study.db", study=study) as store:
            designs.append(pbt_search.stored_design(store))
    assert designs == ["random", "random", "random", "sobol"]
    rows = []
    again = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, callback=rows.append, verbose=False)
    assert not rows and [r["value"] for r in again.timeline] == [r["value"] for r in before.timeline]  # nothing retrained
    fresh = tune(CONFIG, SPACE, budget=8, verbose=False)  # today's default draws other first members
    assert [r["value"] for r in fresh.timeline][:4] != [r["value"] for r in before.timeline][:4]


def test_load_result_reads_the_pbt_study_with_its_lineage_and_pick(pbt_run):
    from vhjax.search import load_result

    workdir, _, result = pbt_run
    loaded = load_result(workdir)
    best = result.best()
    assert len(loaded.trials) == 3 * 78 and not loaded.top_fidelity_only  # kept best: every round can be the pick
    assert loaded.best.fitness == pytest.approx(best["value"])  # the restarts' trials read along
    assert loaded.best_metrics["test_accuracy"] == pytest.approx(best["test"])
    assert sum(t.parent_id is not None for t in loaded.trials) == 3 * (78 - 4)  # all but each run's first round


def test_without_a_workdir_the_study_is_built_in_memory(capsys):
    result = tune(CONFIG, Space({"learning_rate": Float(1e-3, 3e-2, log=True)}), budget=8, verbose=True)
    best = result.best()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tune | method pbt: 3 runs (restarts) of 4 members, a round every 2 steps, the best 2 "
                               "after round 8")
    assert f"best val accuracy {best['value']:.4f} (trial {best['trial']}" in lines[-1] and "234 trials" in lines[-1]
    restarts = [line for line in lines if line.startswith("tune | method pbt: restart")]
    assert [line[:33] for line in restarts] == ["tune | method pbt: restart 1 of 2", "tune | method pbt: restart 2 of 2"]
    assert all("| compiled " in line for line in lines[1:] if line not in restarts)  # rounds' lines, the summary
    assert result.method == "pbt" and len(result.study.trials) == 234
    assert result.study.best_trial.value == pytest.approx(best["value"])
    assert result.study.trials[best["trial"]].user_attrs["test_accuracy"] == pytest.approx(best["test"])


def test_a_call_stopped_in_a_restart_resumes_it_and_ends_as_an_unstopped_one(pbt_run, tmp_path):
    _, _, result = pbt_run

    def stop_in_restart_1(row):
        if row["restart"] == 1 and row["round"] == 12:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the second run

    with pytest.raises(KeyboardInterrupt):
        tune(CONFIG, SPACE, budget=8, workdir=tmp_path, callback=stop_in_restart_1, verbose=False)
    rows = []
    resumed = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, callback=rows.append, verbose=False)
    assert {row["restart"] for row in rows} == {1, 2}  # the first run is read back, not trained again
    assert min(row["round"] for row in rows if row["restart"] == 1) > 0  # the second resumes from its checkpoint
    assert [row["value"] for row in resumed.timeline] == pytest.approx([row["value"] for row in result.timeline])


def test_a_budget_for_one_run_trains_one_and_returns_the_stored_study(tmp_path):
    # 8 members train 0.65 x 8 = 5.2 trials' worth: a budget of 8 pays for one run, no restart
    result = tune(CONFIG, SPACE, budget=8, population=8, workdir=tmp_path, verbose=False)
    assert len(result.timeline) == 9 * 8 + 21 * 4 and {row["restart"] for row in result.timeline} == {0}
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")] == ["vhjax"]
    stored = optuna.load_study(study_name="vhjax", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert stored.user_attrs["compilations"] == result.compilations  # the returned study is the stored one


def test_enqueued_points_are_the_first_members_and_belong_to_the_stored_run(tmp_path):
    points = [{"learning_rate": 3e-3, "weight_decay": 1e-4}, {"learning_rate": 1e-2}]  # the second: wd drawn
    result = tune(CONFIG, SPACE, budget=8, population=8, workdir=tmp_path, enqueue=points, verbose=False)
    first = {t.user_attrs["slot"]: t.params for t in result.study.trials if t.user_attrs["generation"] == 0}
    sobol = [SPACE.decode(u) for u in initial_units(SPACE.dim, 8, 0, "sobol")]  # the run's seed is tune's, 0
    assert first[0] == pytest.approx(points[0], rel=1e-6)
    assert first[1] == pytest.approx({**sobol[1], **points[1]}, rel=1e-6)
    assert all(first[i] == pytest.approx(sobol[i], rel=1e-6) for i in range(2, 8))
    again = tune(CONFIG, SPACE, budget=8, population=8, workdir=tmp_path, enqueue=points, verbose=False)
    assert [row["value"] for row in again.timeline] == [row["value"] for row in result.timeline]  # read back
    with pytest.raises(ValueError, match=r"different search configuration .*enqueue: stored \["):
        tune(CONFIG, SPACE, budget=8, population=8, workdir=tmp_path, enqueue=points[:1], verbose=False)
    with pytest.raises(ValueError, match=r"enqueue has 9 points; allowed: at most the population \(8\)"):
        tune(CONFIG, SPACE, budget=8, population=8, enqueue=[{}] * 9, verbose=False)


def test_a_timeout_ends_the_run_at_its_next_round_and_a_rerun_continues_it_as_an_unlimited_call(
        pbt_run, tmp_path, capsys):
    _, _, whole = pbt_run
    result = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, timeout=1e-3, verbose=True)
    assert result.timed_out and len(result.runs) == 1 and result.runs[0].cut_at == 2  # no restart after it
    assert [row["steps"] for row in result.timeline] == [2] * 4  # the first run's first round, then it ended
    best = result.best()
    assert best["test"] is not None and best["value"] == max(row["value"] for row in result.timeline)
    assert ("tune | method pbt: timeout (0.001 s): 1 of 3 runs trained, the last cut at step 2 of 60 (the round it "
            "ended at); rerunning the call in its workdir continues the cut run and trains the 2 runs not "
            "started") in capsys.readouterr().out
    rerun = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, verbose=False)
    assert not rerun.timed_out and len(rerun.runs) == 3 and all(run.cut_at is None for run in rerun.runs)
    # the cut run went on from its checkpoint: every run's rounds are those of the unlimited call
    assert [(row["steps"], row["value"], row["test"]) for row in rerun.timeline] == [
        (row["steps"], row["value"], row["test"]) for row in whole.timeline]
    assert rerun.best() == {**whole.best(), "seconds": rerun.best()["seconds"]}
    assert all(row["seconds"] > 0 for row in rerun.timeline[4:])  # trained in this call
    again = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, verbose=False)  # now read back whole
    assert [row["value"] for row in again.timeline] == [row["value"] for row in whole.timeline]


def test_a_callback_returning_true_ends_the_run_after_that_round_and_starts_no_restart(tmp_path, capsys):
    rows = []

    def enough_at_round_3(row):
        rows.append(row)
        return row["round"] == 3 and row["member"] == 0  # the round's other members are still sent

    result = tune(CONFIG, SPACE, budget=8, workdir=tmp_path, callback=enough_at_round_3, verbose=True)
    assert result.stopped and not result.timed_out and len(result.runs) == 1 and result.runs[0].stopped
    assert result.runs[0].cut_at == 8 and {row["round"] for row in rows} == {0, 1, 2, 3} and len(rows) == 16
    assert [row["steps"] for row in result.timeline] == [2] * 4 + [4] * 4 + [6] * 4 + [8] * 4
    assert ("tune | method pbt: stopped by the callback: 1 of 3 runs trained, the last cut at step 8 of 60 (the round "
            "it ended at); rerunning the call in its workdir continues the cut run and trains the 2 runs not "
            "started") in capsys.readouterr().out


def test_a_space_the_config_lacks_is_refused_before_a_line_prints_or_a_store_opens(tmp_path, capsys):
    space = Space({"learning_rate": Float(1e-5, 3e-2, log=True), "aug_strength": Float(0.0, 1.0)})  # no augment=
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'aug_strength'; known for this task: .*\(aug_\*"):
        tune(CONFIG, space, budget=8, workdir=tmp_path, verbose=True)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_tunes_pick_replays_from_the_run_that_made_it(pbt_run):
    from vhjax.search import TuneResult, replay_pbt

    _, _, result = pbt_run
    best = result.best()
    replay = replay_pbt(CONFIG, result, seeds=1, verbose=False)
    pick = replay.picks[0]
    assert pick.run == best["restart"] and pick.trial.fitness == pytest.approx(best["value"])
    assert pick.trial.metrics["test_accuracy"] == pytest.approx(best["test"])
    assert pick.schedule[-1].end == best["steps"] and replay.members[0]["steps"] == best["steps"]
    assert pick.schedule[-1].params == pytest.approx(best["params"])
    from vhjax.search import load_result

    stored = replay_pbt(CONFIG, load_result(pbt_run[0]), seeds=1, verbose=False)  # every run's trials, read back
    assert stored.picks[0].trial.params == pick.trial.params  # the same trial: ties rank alike in both
    assert stored.picks[0].trial.fidelity == pick.trial.fidelity and stored.picks[0].trial.metrics == pick.trial.metrics
    assert stored.members[0]["steps"] == stored.picks[0].schedule[-1].end
    asha = TuneResult(None, [], 0.0, "accuracy", "maximize", method="asha")
    with pytest.raises(ValueError, match="result has method 'asha'; allowed: a PBT search"):
        replay_pbt(CONFIG, asha, verbose=False)
