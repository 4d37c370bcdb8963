"""Successive halving, Hyperband and ASHA through the persisted multifidelity driver."""

from __future__ import annotations

import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.search import Categorical, Float, Space, TrainingObjective, search_multifidelity

SPACE = Space({"x": Float(0.0, 1.0)})


def noisy_quadratic(params, budgets):
    """Higher is better; small budgets add a penalty that hides the optimum x = 0.3."""
    x = np.array([p["x"] for p in params])
    return -((x - 0.3) ** 2) - 1.0 / np.asarray(budgets)


def test_hyperband_climbs_the_budget_ladder_and_finds_the_optimum():
    result = search_multifidelity(noisy_quadratic, SPACE, "hyperband", min_budget=1, max_budget=27,
                                  max_trials=500, population=9, verbose=False)
    assert sorted({t.fidelity for t in result.trials}) == [1.0, 3.0, 9.0, 27.0]
    assert result.best.fidelity == 27.0 and abs(result.best.params["x"] - 0.3) < 0.05
    by_id = {t.trial_id: t for t in result.trials}
    promoted = [t for t in result.trials if t.parent_id is not None]
    assert promoted and all(by_id[t.parent_id].fidelity < t.fidelity and by_id[t.parent_id].params == t.params
                            for t in promoted)


def test_asha_stops_at_max_trials():
    result = search_multifidelity(noisy_quadratic, SPACE, "asha", min_budget=1, max_budget=9, max_trials=20,
                                  population=4, verbose=False)
    assert len(result.trials) == 20 and max(t.fidelity for t in result.trials) == 9.0


def test_interrupted_search_resumes_without_reevaluating(tmp_path):
    full = search_multifidelity(noisy_quadratic, SPACE, "hyperband", min_budget=1, max_budget=9, max_trials=100,
                                population=3, workdir=tmp_path / "full", verbose=False)
    calls = []

    def crashing(params, budgets):
        calls.append(len(params))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return noisy_quadratic(params, budgets)

    with pytest.raises(KeyboardInterrupt):
        search_multifidelity(crashing, SPACE, "hyperband", min_budget=1, max_budget=9, max_trials=100,
                             population=3, workdir=tmp_path / "cut", verbose=False)
    evaluated = []

    def counting(params, budgets):
        evaluated.append(len(params))
        return noisy_quadratic(params, budgets)

    resumed = search_multifidelity(counting, SPACE, "hyperband", min_budget=1, max_budget=9, max_trials=100,
                                   population=3, workdir=tmp_path / "cut", verbose=False)
    assert sum(evaluated) == len(full.trials) - 9  # the 3 finished generations are not recomputed
    assert [(t.params, t.fidelity, t.fitness) for t in resumed.trials] == \
        [(t.params, t.fidelity, t.fitness) for t in full.trials]


def test_a_timeout_ends_the_schedule_after_a_generation_and_a_rerun_finishes_it(tmp_path):
    kwargs = dict(min_budget=1, max_budget=9, max_trials=100, population=3, workdir=tmp_path, verbose=False)
    cut = search_multifidelity(noisy_quadratic, SPACE, "hyperband", timeout=1e-3, **kwargs)
    assert cut.timed_out and len(cut.trials) == 3  # the first generation, then the deadline
    sent = []
    finished = search_multifidelity(noisy_quadratic, SPACE, "hyperband", callback=sent.append, **kwargs)
    assert sent == list(finished.trials)[3:]  # each trial this call finished, with its budget and parent
    straight = search_multifidelity(noisy_quadratic, SPACE, "hyperband", **{**kwargs, "workdir": None})
    assert not finished.timed_out and [(t.params, t.fidelity, t.fitness) for t in finished.trials] == \
        [(t.params, t.fidelity, t.fitness) for t in straight.trials]


@pytest.mark.parametrize("kwargs,match", [
    ({"scheduler": "bohb"}, "scheduler 'bohb' is unknown; allowed: successive_halving, hyperband, asha"),
    ({"max_trials": 5}, r"max_trials=5 is smaller than one rung of successive_halving \(9 configurations"),
    ({"min_budget": 0}, "min_budget must be an integer >= 1"),
])
def test_bad_input_fails_before_running(kwargs, match):
    arguments = dict(scheduler="successive_halving", min_budget=1, max_budget=9, max_trials=50, population=3)
    arguments.update(kwargs)
    scheduler = arguments.pop("scheduler")
    with pytest.raises(ValueError, match=match):
        search_multifidelity(noisy_quadratic, SPACE, scheduler, **arguments, verbose=False)


def test_training_objective_trains_each_budget_for_that_many_steps(tmp_path):
    config = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                         batch_size=32, steps=1, eval_every=100, seed=0)
    objective = TrainingObjective(config, workdir=tmp_path / "training")
    space = Space({"learning_rate": Categorical((1e-5, 3e-3, 1e-2))})
    result = search_multifidelity(objective, space, "successive_halving", min_budget=10, max_budget=90,
                                  max_trials=20, population=9, workdir=tmp_path, verbose=False)
    assert sorted({t.fidelity for t in result.trials}) == [10.0, 30.0, 90.0]
    assert result.best.fidelity == 90.0 and result.best.params["learning_rate"] != 1e-5
    steps = {int(d.name.split("_")[1]) for d in (tmp_path / "training").glob("generation_*/budget_*")}
    assert steps == {10, 30, 90}
    by_id = {t.trial_id: t for t in result.trials}
    promoted = [t for t in result.trials if t.parent_id is not None]
    assert promoted  # each promotion continued from its parent's state: only the missing steps trained
    assert all(t.metrics["trained_steps"] == t.fidelity - by_id[t.parent_id].fidelity for t in promoted)
    scratch = [t for t in result.trials if t.parent_id is None]
    assert all(t.metrics["trained_steps"] == t.fidelity for t in scratch)


def counting(log):
    def objective(params, budgets):
        log.append(len(params))
        return noisy_quadratic(params, budgets)

    return objective


@pytest.mark.parametrize("scheduler", ["asha", "hyperband"])
def test_raising_max_trials_extends_a_finished_search(tmp_path, scheduler):
    """Before the one protocol this failed: 'the store's generation 2 holds 2 trials but the
    scheduler replays 4' (the replayed asks had other sizes)."""
    first, second = [], []
    arguments = dict(min_budget=1, max_budget=9, population=4, workdir=tmp_path, verbose=False)
    short = search_multifidelity(counting(first), SPACE, scheduler, max_trials=10, **arguments)
    assert len(short.trials) == 10 and sum(first) == 10  # generations of 4, 4, 2
    longer = search_multifidelity(counting(second), SPACE, scheduler, max_trials=22, **arguments)
    assert len(longer.trials) == 22 and sum(second) == 12  # nothing of the first 10 again
    assert [(t.params, t.fidelity) for t in longer.trials[:10]] == [(t.params, t.fidelity) for t in short.trials]
    by_id = {t.trial_id: t for t in longer.trials}
    for trial in longer.trials[10:]:
        if trial.parent_id is not None:  # a promotion continues a configuration of the first run too
            assert by_id[trial.parent_id].params == trial.params
            assert by_id[trial.parent_id].fidelity < trial.fidelity


def test_raising_hyperband_iterations_extends_a_finished_schedule(tmp_path):
    arguments = dict(min_budget=1, max_budget=9, max_trials=1000, population=5, workdir=tmp_path, verbose=False)
    one = search_multifidelity(noisy_quadratic, SPACE, "hyperband", n_iterations=1, **arguments)
    again = search_multifidelity(noisy_quadratic, SPACE, "hyperband", n_iterations=1, **arguments)
    assert len(again.trials) == len(one.trials)  # finished: nothing more to do
    log = []
    two = search_multifidelity(counting(log), SPACE, "hyperband", n_iterations=2, **arguments)
    assert len(two.trials) == 2 * len(one.trials) and sum(log) == len(one.trials)


def test_promoted_candidates_name_their_parent_trial(tmp_path):
    seen = []

    class Objective:
        @staticmethod
        def evaluate(candidates):
            seen.append(candidates)
            return noisy_quadratic(candidates.params, candidates.fidelity)

    result = search_multifidelity(Objective(), SPACE, "successive_halving", min_budget=1, max_budget=9,
                                  max_trials=50, population=9, verbose=False)
    by_id = {t.trial_id: t for t in result.trials}
    promoted = [(c.params[i], c.fidelity[i], p) for c in seen for i, p in enumerate(c.parent_ids) if p is not None]
    assert len(promoted) == 3 + 1  # rungs (9, 1), (3, 3), (1, 9)
    for params, budget, parent in promoted:
        assert by_id[parent].params == params and by_id[parent].fidelity == budget / 3
