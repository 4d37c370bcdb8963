"""A vhjax study is an Optuna study: plain Optuna reads a search's workdir with no export step."""

from __future__ import annotations

import sqlite3

import numpy as np
import optuna
import pytest

from vhjax.search import Categorical, Float, Int, Space, search
from vhjax.search.storage import SQLITE_FILENAME, StoreOutdated, open_store

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = Space({"x": Float(-2.0, 2.0), "lr": Float(1e-4, 1e-1, log=True), "n": Int(1, 8),
               "kind": Categorical(["a", "b", "c"])})


def objective(batch):
    """Depends on x and kind strongly, on n weakly, on lr not at all; x = 1.5 fails (NaN)."""
    return np.asarray([np.nan if c["x"] > 1.5 else -(c["x"] - 0.3) ** 2 - 0.01 * c["n"] + 2.0 * (c["kind"] == "b")
                       for c in batch])


def _url(workdir) -> str:
    return f"sqlite:///{workdir / SQLITE_FILENAME}"


def test_plain_optuna_reads_a_search_workdir(tmp_path):
    result = search(objective, SPACE, "random", budget=24, population=6, workdir=tmp_path, seed=3, verbose=False)
    summaries = optuna.get_all_study_summaries(storage=_url(tmp_path))
    assert [(s.study_name, s.n_trials) for s in summaries] == [("default", 24)]
    study = optuna.load_study(study_name="default", storage=_url(tmp_path))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    assert [t._trial_id for t in trials] == [t.trial_id for t in result.trials]
    states = {"complete": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL}
    for ours, theirs in zip(result.trials, trials):
        assert theirs.state == states[ours.status]
        assert theirs.params == ours.params  # every parameter, as vhjax decoded it
        assert theirs.value == (ours.fitness if ours.status == "complete" else None)
        assert theirs.user_attrs["generation"] == ours.generation and theirs.user_attrs["slot"] == ours.slot
        assert theirs.system_attrs["vhjax:trial"]["u"] == list(ours.u)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["x"] > 1.5 and "fail_reason" in t.user_attrs for t in failed)
    assert trials[0].distributions == {
        "x": optuna.distributions.FloatDistribution(-2.0, 2.0),
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "n": optuna.distributions.IntDistribution(1, 8),
        "kind": optuna.distributions.CategoricalDistribution(("a", "b", "c"))}
    assert study.best_trial._trial_id == result.best.trial_id and study.best_value == result.best.fitness
    importance = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert set(importance) == {"x", "lr", "n", "kind"}
    assert max(importance, key=importance.get) in ("x", "kind") and importance["lr"] < importance["kind"]


def test_a_stepped_space_is_stepped_optuna_distributions_and_a_pbt_space_is_not(tmp_path):
    from vhjax.search.tune import optuna_distributions
    from vhjax.search.tune_pbt import pbt_space

    space = Space({"x": Float(-2.0, 2.0, step=0.5), "n": Int(2, 8, step=2)})
    result = search(lambda batch: np.asarray([-(c["x"] - 0.3) ** 2 for c in batch]), space, "random", budget=12,
                    population=6, workdir=tmp_path, seed=1, verbose=False)
    assert {t.params["x"] for t in result.trials} <= {-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0}
    assert result.best.params["x"] in (0.0, 0.5)  # nearest 0.3 on the grid
    trial = optuna.load_study(study_name="default", storage=_url(tmp_path)).trials[0]
    stepped = {"x": optuna.distributions.FloatDistribution(-2.0, 2.0, step=0.5),
               "n": optuna.distributions.IntDistribution(2, 8, step=2)}
    assert trial.distributions == stepped == optuna_distributions(space)
    assert not pbt_space(space) and pbt_space(Space({"x": Float(-2.0, 2.0)}))


def test_multi_objective_search_is_a_multi_objective_study(tmp_path):
    def two(batch):
        return {"acc": np.asarray([c["x"] for c in batch]), "cost": np.asarray([c["x"] ** 2 for c in batch])}

    result = search(two, Space({"x": Float(-1.0, 1.0)}), "random", budget=8, population=4, workdir=tmp_path,
                    objectives={"acc": "maximize", "cost": "minimize"}, verbose=False)
    study = optuna.load_study(study_name="default", storage=_url(tmp_path))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert [t.values for t in study.trials] == [[t.metrics["acc"], t.metrics["cost"]] for t in result.trials]
    assert {t._trial_id for t in study.best_trials} == {t.trial_id for t in result.pareto_front}


def test_resumed_search_is_the_same_optuna_study(tmp_path):
    first = search(objective, SPACE, "random", budget=6, population=3, workdir=tmp_path / "cut", seed=1, verbose=False)
    resumed = search(objective, SPACE, "random", budget=12, population=3, workdir=tmp_path / "cut", seed=1,
                     verbose=False)
    straight = search(objective, SPACE, "random", budget=12, population=3, workdir=tmp_path / "straight", seed=1,
                      verbose=False)
    assert [t.params for t in resumed.trials] == [t.params for t in straight.trials]
    assert [t.params for t in resumed.trials][:6] == [t.params for t in first.trials]
    study = optuna.load_study(study_name="default", storage=_url(tmp_path / "cut"))
    assert [t.number for t in study.trials] == list(range(12))
    assert [t.params for t in study.trials] == [t.params for t in straight.trials]


def test_store_of_the_pre_optuna_format_is_a_clear_error(tmp_path):
    """An old workdir (tables vhjax_trials, ...) is refused, not migrated, and left as it was."""
    path = tmp_path / SQLITE_FILENAME
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE vhjax_trials (trial_id INTEGER PRIMARY KEY, study TEXT)")
        db.execute("INSERT INTO vhjax_trials VALUES (1, 'default')")
    before = path.read_bytes()
    with pytest.raises(StoreOutdated, match="older vhjax") as caught:
        search(objective, SPACE, budget=2, workdir=tmp_path, verbose=False)
    assert str(path) in str(caught.value) and isinstance(caught.value, ValueError)
    assert path.read_bytes() == before
    with pytest.raises(StoreOutdated):
        open_store(storage=f"sqlite:///{path}")


def test_trials_optuna_added_are_left_out_of_the_search(tmp_path):
    """A trial told through Optuna's API (no vhjax fields) is not a vhjax trial; the search goes on."""
    search(objective, SPACE, budget=3, population=3, workdir=tmp_path, verbose=False)
    study = optuna.load_study(study_name="default", storage=_url(tmp_path))
    study.enqueue_trial({"x": 0.0})
    with open_store(tmp_path) as store:
        assert store.count_trials() == 4 and len(store.trials()) == 3


def test_a_study_that_stored_nothing_takes_the_directions_of_the_next_call(tmp_path):
    with open_store(tmp_path, objectives={"loss": "minimize"}):
        pass  # e.g. a call refused on bad input after opening the store
    with open_store(tmp_path, objectives={"acc": "maximize", "cost": "minimize"}) as store:
        store.add_trials([])
    study = optuna.load_study(study_name="default", storage=_url(tmp_path))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study._storage.get_study_system_attrs(study._study_id)["vhjax:objectives"] == ["acc", "cost"]


def _wsgi_get(app, path: str) -> dict:
    """GET `path` from a WSGI app in-process; its JSON body (asserting status 200)."""
    import json
    from wsgiref.util import setup_testing_defaults

    environ, status = {"PATH_INFO": path}, []
    setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    assert status == ["200 OK"], (path, status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_and_plots_read_a_search_workdir(tmp_path):
    """optuna-dashboard's own server (its WSGI app, in-process) and Optuna's plots on a vhjax workdir."""
    import matplotlib

    matplotlib.use("Agg")
    optuna_dashboard = pytest.importorskip("optuna_dashboard")  # in the `test` extra: CI always has it
    result = search(objective, SPACE, "random", budget=12, population=4, workdir=tmp_path, seed=0, verbose=False)
    app = optuna_dashboard.wsgi(_url(tmp_path))
    [summary] = _wsgi_get(app, "/api/studies")["study_summaries"]
    assert summary["study_name"] == "default" and summary["directions"] == ["maximize"]
    detail = _wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert len(detail["trials"]) == 12
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(complete) == sum(t.status == "complete" for t in result.trials) > 0
    assert {p["name"] for p in detail["trials"][0]["params"]} == {"x", "lr", "n", "kind"}

    study = optuna.load_study(study_name="default", storage=_url(tmp_path))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    plotted = sum(len(collection.get_offsets()) for collection in axes.collections)
    assert plotted >= len(complete)  # every complete trial is a point (plus the best-so-far line)
