"""One ranking rule for picks: by value, tested trials first among equal values, then order."""

from __future__ import annotations

import math
import types

import pytest

from vhjax.search import SearchResult, TrialTable, TuneResult
from vhjax.search.pbt_replay import ranked_picks
from vhjax.search.storage import Trial


def trial(trial_id: int, fitness: float | None, tested: bool = False, status: str = "complete") -> Trial:
    metrics = {"score": fitness, **({"test_accuracy": 0.5} if tested else {})}
    return Trial(trial_id=trial_id, generation=0, slot=trial_id, params={"x": float(trial_id)}, u=(0.0,),
                 status=status, fitness=fitness, metrics=metrics)


def result(trials: list[Trial], direction: str = "maximize") -> SearchResult:
    return SearchResult(trials=TrialTable(trials), direction=direction, objectives={"fitness": direction})


def test_search_result_ranks_a_tested_trial_before_an_earlier_untested_one_of_equal_value():
    trials = [trial(0, 0.9), trial(1, 0.95), trial(2, 0.95, tested=True), trial(3, 0.95), trial(4, math.nan),
              trial(5, None, status="failed"), trial(6, 0.99, status="running")]
    assert [t.trial_id for t in result(trials).top(10)] == [2, 1, 3, 0]
    assert result(trials).best.trial_id == 2
    low = [trial(0, 0.3), trial(1, 0.1), trial(2, 0.1, tested=True)]
    assert [t.trial_id for t in result(low, "minimize").top(3)] == [2, 1, 0]


def test_tune_result_top_best_and_leaderboard_share_the_order():
    rows = [{"seconds": float(i), "trial": i, "state": "COMPLETE", "value": v, "test": t, "steps": 50}
            for i, (v, t) in enumerate([(0.9, 0.8), (0.95, None), (0.95, 0.7), (0.95, None)])]
    rows.append({"seconds": 4.0, "trial": 4, "state": "FAIL", "value": math.nan, "test": None, "steps": 50})
    study = types.SimpleNamespace(trials=[types.SimpleNamespace(params={"x": float(i)}) for i in range(5)])
    tuned = TuneResult(study, rows[::-1], 1.0, "accuracy", "maximize", method="pbt")  # finish order is not rank
    assert [row["trial"] for row in tuned.top(10)] == [2, 1, 3, 0]
    assert tuned.best()["trial"] == 2 and tuned.best()["params"] == {"x": 2.0}
    ranks = [line.split(" | ")[1] for line in tuned.leaderboard(3).splitlines()[2:]]
    assert ranks == ["2", "1", "3"]
    with pytest.raises(ValueError, match="no trial completed"):
        TuneResult(study, rows[-1:], 1.0, "accuracy", "maximize").best()
    cut = [{**row, "state": "PRUNED"} for row in rows[:3]]
    with pytest.raises(ValueError, match=r"timeout ended the search\): 3 trials ended, 3 of them pruned"):
        TuneResult(study, cut, 1.0, "accuracy", "maximize", timed_out=True).best()
    # minimizing (a loss): the lowest value first, the tested one first among equals, as SearchResult ranks
    low = [{**row, "value": v} for row, v in zip(rows[:4], (0.3, 0.1, 0.1, 0.1))]
    assert [row["trial"] for row in TuneResult(study, low[::-1], 1.0, "loss", "minimize").top(4)] == [2, 1, 3, 0]


def test_picks_over_runs_rank_as_the_runs_read_back_as_one_store():
    # tune numbers the runs' trials run by run; a workdir stores them with ids increasing run by run
    runs = [result([trial(0, 0.95), trial(1, 0.97)]), result([trial(0, 0.97, tested=True), trial(1, 0.95)])]
    picks = ranked_picks(runs, 4)
    assert [(run, t.trial_id) for run, t in picks] == [(1, 0), (0, 1), (0, 0), (1, 1)]
    merged = result([t for run, r in enumerate(runs)
                     for t in (Trial(**{**vars(t), "trial_id": 10 * run + t.trial_id}) for t in r.trials)])
    assert [t.trial_id for t in merged.top(4)] == [10, 1, 0, 11]
