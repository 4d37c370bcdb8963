"""The `search` driver: objectives, persistence and resume, failures, results, bad input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.search.driver import Candidates, search
from vhjax.search.storage import open_store
from vhjax.search.strategies.base import make, pareto_shaped


# ----------------------------------------------------------------------------- stand-ins


class BoxSpace:
    """Two floats x, y in [0, 1] (identity encoding); a stand-in for a vhjax space."""

    def __init__(self, dim: int = 2):
        self.dim = dim
        self.names = ("x", "y", "z")[:dim]

    def sample(self, key, n):
        return jax.random.uniform(key, (n, self.dim))

    def decode(self, u):
        return {name: float(value) for name, value in zip(self.names, np.asarray(u))}

    def encode(self, params):
        return np.asarray([params[name] for name in self.names], np.float32)

    def __repr__(self):
        return f"BoxSpace(dim={self.dim})"


class HillState(NamedTuple):
    best_u: jax.Array
    best_f: jax.Array


def hill_climber(dim: int = 2, step: float = 0.2):
    """A stateful stand-in strategy: Gaussian steps around the best point so far (minimizes)."""
    def init(key):
        return HillState(jax.random.uniform(key, (dim,)), jnp.asarray(jnp.inf))

    def ask(state, key, n):
        noise = step * jax.random.normal(key, (n, dim))
        return state, jnp.clip(state.best_u + noise, 0.0, 1.0)

    def tell(state, u, fitness):
        i = jnp.argmin(fitness)
        better = fitness[i] < state.best_f
        return HillState(jnp.where(better, u[i], state.best_u),
                         jnp.where(better, fitness[i], state.best_f))

    return make(dim, init, ask, tell)


def peak(params_list):
    """Maximized at (0.7, 0.2): 1 - squared distance."""
    return np.asarray([1.0 - (p["x"] - 0.7) ** 2 - (p["y"] - 0.2) ** 2 for p in params_list])


class CountingObjective:
    """`peak`, counting calls and optionally raising on one call (a simulated kill)."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, params_list):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        return peak(params_list)


def _signature(result):
    return [(t.generation, t.slot, t.params, t.status, t.fitness) for t in result.trials]


# ----------------------------------------------------------------------------- basics


def test_search_improves_on_a_known_peak_and_returns_best():
    result = search(peak, BoxSpace(), hill_climber(), budget=200, population=10, seed=0,
                    verbose=False)
    assert len(result.trials) == 200 and all(t.status == "complete" for t in result.trials)
    best = result.best
    assert best.fitness == max(t.fitness for t in result.trials)
    assert best.fitness > 0.99  # optimum is 1.0 at (0.7, 0.2)
    assert abs(best.params["x"] - 0.7) < 0.1 and abs(best.params["y"] - 0.2) < 0.1
    assert best.fitness == pytest.approx(peak([best.params])[0])
    assert result.top(3)[0] == best and result.top(3)[1].fitness <= best.fitness


def test_minimize_direction_and_encoded_input():
    def distance(u):  # receives the encoded batch (n, D)
        assert isinstance(u, np.ndarray) and u.shape[1] == 2
        return np.sum((u - np.asarray([0.3, 0.6])) ** 2, axis=1)

    result = search(distance, BoxSpace(), hill_climber(), budget=120, population=8,
                    direction="minimize", objective_input="encoded", verbose=False)
    assert result.best.fitness == min(t.fitness for t in result.trials)
    assert result.best.fitness < 0.01
    curve = result.best_so_far()
    assert np.all(np.diff(curve) <= 0)  # best so far never gets worse


def test_best_so_far_is_monotone_and_matches_running_max():
    result = search(peak, BoxSpace(), hill_climber(), budget=60, population=6, seed=3,
                    verbose=False)
    curve = result.best_so_far()
    fitness = np.asarray([t.fitness for t in result.trials])
    np.testing.assert_allclose(curve, np.maximum.accumulate(fitness))
    assert np.all(np.diff(curve) >= 0)


def test_last_generation_is_smaller_when_budget_is_not_a_multiple():
    result = search(peak, BoxSpace(), hill_climber(), budget=10, population=4, verbose=False)
    generations = [t.generation for t in result.trials]
    assert generations == [0] * 4 + [1] * 4 + [2] * 2


def test_evaluate_protocol_gets_the_whole_batch():
    seen = []

    class Protocol:
        fitness_metric = "score"

        def evaluate(self, candidates: Candidates):
            seen.append(candidates)
            return {"score": peak(candidates.params), "aux": np.arange(len(candidates.params))}

    result = search(Protocol(), BoxSpace(), hill_climber(), budget=6, population=3, verbose=False)
    assert [c.generation for c in seen] == [0, 1]
    assert seen[0].u.shape == (3, 2) and len(seen[0].trial_ids) == 3
    assert seen[1].trial_ids == [t.trial_id for t in result.trials][3:]
    assert result.objectives == {"score": "maximize"}
    assert [t.metrics["aux"] for t in result.trials] == [0.0, 1.0, 2.0] * 2
    assert not np.array_equal(jax.random.key_data(seen[0].key), jax.random.key_data(seen[1].key))


# ----------------------------------------------------------------------------- failures


def test_nan_fitness_marks_trial_failed_and_search_goes_on():
    def half_broken(params_list):
        values = peak(params_list)
        return np.where([p["x"] < 0.5 for p in params_list], np.nan, values)

    result = search(half_broken, BoxSpace(), hill_climber(), budget=40, population=8, seed=1,
                    verbose=False)
    statuses = {t.status for t in result.trials}
    assert len(result.trials) == 40 and statuses == {"complete", "failed"}
    for trial in result.trials:
        assert (trial.status == "failed") == (trial.params["x"] < 0.5)
        assert (trial.fitness is None) == (trial.status == "failed")
    assert result.best.params["x"] >= 0.5
    assert len(result.trials.where("failed")) + len(result.trials.completed()) == 40


def test_all_failed_gives_no_best():
    result = search(lambda ps: np.full(len(ps), np.nan), BoxSpace(), hill_climber(), budget=4,
                    population=2, verbose=False)
    assert result.best is None and result.best_params is None
    assert all(t.status == "failed" for t in result.trials)


# ----------------------------------------------------------------------------- resume


def test_resume_after_kill_recomputes_nothing_and_matches_uninterrupted(tmp_path):
    budget, population = 30, 5  # 6 generations
    reference = search(CountingObjective(), BoxSpace(), hill_climber(), budget=budget,
                       population=population, seed=7, workdir=tmp_path / "straight",
                       verbose=False)

    killed = CountingObjective(fail_on_call=4)  # dies while evaluating generation 3
    with pytest.raises(KeyboardInterrupt):
        search(killed, BoxSpace(), hill_climber(), budget=budget, population=population, seed=7,
               workdir=tmp_path / "resumed", verbose=False)
    with open_store(tmp_path / "resumed") as store:
        assert len(store.trials(status="complete")) == 3 * population
        assert len(store.trials(status="running")) == population  # generation 3, interrupted
        assert store.load_state()[0] == 3

    rerun = CountingObjective()
    resumed = search(rerun, BoxSpace(), hill_climber(), budget=budget, population=population,
                     seed=7, workdir=tmp_path / "resumed", verbose=False)
    assert rerun.calls == 3  # generations 3, 4, 5 only; 0-2 were not recomputed
    assert _signature(resumed) == _signature(reference)
    assert resumed.best.params == reference.best.params
    assert len({t.trial_id for t in resumed.trials}) == budget  # interrupted rows reused

    again = CountingObjective()
    finished = search(again, BoxSpace(), hill_climber(), budget=budget, population=population,
                      seed=7, workdir=tmp_path / "resumed", verbose=False)
    assert again.calls == 0 and _signature(finished) == _signature(reference)


def test_resume_with_a_larger_budget_continues(tmp_path):
    kwargs = dict(population=4, seed=2, verbose=False)
    search(peak, BoxSpace(), hill_climber(), budget=8, workdir=tmp_path / "a", **kwargs)
    counter = CountingObjective()
    extended = search(counter, BoxSpace(), hill_climber(), budget=16, workdir=tmp_path / "a",
                      **kwargs)
    straight = search(peak, BoxSpace(), hill_climber(), budget=16, workdir=tmp_path / "b", **kwargs)
    assert counter.calls == 2 and _signature(extended) == _signature(straight)


def test_a_timeout_ends_the_search_after_the_running_generation_and_a_rerun_goes_on(tmp_path, capsys):
    kwargs = dict(budget=20, population=4, seed=3)
    counter = CountingObjective()
    cut = search(counter, BoxSpace(), hill_climber(), workdir=tmp_path / "a", timeout=1e-3, **kwargs)
    assert cut.timed_out and counter.calls == 1 and len(cut.trials) == 4  # the call's first generation runs
    printed = capsys.readouterr()
    assert "timeout (0.001 s): 4 of 20 trials done; rerunning the call in its workdir goes on" in printed.out + printed.err
    rerun = CountingObjective()
    resumed = search(rerun, BoxSpace(), hill_climber(), workdir=tmp_path / "a", verbose=False, **kwargs)
    straight = search(peak, BoxSpace(), hill_climber(), verbose=False, **kwargs)
    assert not resumed.timed_out and rerun.calls == 4 and _signature(resumed) == _signature(straight)
    roomy = search(peak, BoxSpace(), hill_climber(), timeout=3600, verbose=False, **kwargs)
    assert not roomy.timed_out and _signature(roomy) == _signature(straight)


def test_the_callback_gets_every_finished_trial_once_as_stored(tmp_path):
    sent = []
    kwargs = dict(budget=10, population=4, seed=1, verbose=False)
    result = search(peak, BoxSpace(), hill_climber(), workdir=tmp_path, callback=sent.append, **kwargs)
    assert sent == list(result.trials) and [t.generation for t in sent] == [0] * 4 + [1] * 4 + [2] * 2
    assert all(t.status == "complete" and t.fitness == pytest.approx(peak([t.params])[0]) for t in sent)
    more = []  # a larger budget: only the new generations are sent
    extended = search(peak, BoxSpace(), hill_climber(), workdir=tmp_path, callback=more.append,
                      **{**kwargs, "budget": 14})
    assert more == list(extended.trials)[10:] and len(more) == 4

    def stop_at_generation_1(trial):  # a stop of the user's own: the generation is stored first
        if trial.generation == 1:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        search(peak, BoxSpace(), hill_climber(), workdir=tmp_path / "stopped", callback=stop_at_generation_1, **kwargs)
    rerun = CountingObjective()
    resumed = search(rerun, BoxSpace(), hill_climber(), workdir=tmp_path / "stopped", **kwargs)
    assert rerun.calls == 1 and _signature(resumed) == _signature(result)  # only generation 2 was left


def test_a_callback_returning_true_stops_after_its_generation_and_a_rerun_goes_on(tmp_path, capsys):
    kwargs = dict(budget=20, population=4, seed=3)
    sent = []

    def enough_after_generation_1(trial):
        sent.append(trial)
        return trial.generation == 1 and trial.slot == 0  # the generation's other trials are still sent

    counter = CountingObjective()
    stopped = search(counter, BoxSpace(), hill_climber(), workdir=tmp_path, callback=enough_after_generation_1,
                     **kwargs)
    assert stopped.stopped and not stopped.timed_out and counter.calls == 2 and len(stopped.trials) == 8
    assert sent == list(stopped.trials)
    printed = capsys.readouterr()
    assert "stopped by the callback: 8 of 20 trials done; rerunning the call in its workdir goes on" in (
        printed.out + printed.err)
    rerun = CountingObjective()
    resumed = search(rerun, BoxSpace(), hill_climber(), workdir=tmp_path, verbose=False, callback=lambda t: None,
                     **kwargs)
    straight = search(peak, BoxSpace(), hill_climber(), verbose=False, **kwargs)
    assert not resumed.stopped and rerun.calls == 3 and _signature(resumed) == _signature(straight)


def test_a_follower_process_returns_process_0s_trials_and_whether_the_search_ended_early(monkeypatch):
    from vhjax import distributed

    kwargs = dict(budget=8, population=4, seed=3, verbose=False)
    lead = search(peak, BoxSpace(), hill_climber(), timeout=1e-3, **kwargs)  # as process 0 ends it
    message = {"trials": [dataclasses.asdict(t) for t in lead.trials], "timed_out": True, "stopped": False}
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(distributed, "broadcast_bytes", lambda data: json.dumps(message).encode())
    follower = search(peak, BoxSpace(), hill_climber(), timeout=3600, **kwargs)  # its own clock never ran out
    assert follower.timed_out and not follower.stopped and list(follower.trials) == list(lead.trials)


def test_the_cli_passes_a_timeout_to_the_search(tmp_path, capsys):
    from vhjax.cli import main

    spec = tmp_path / "spec.py"
    spec.write_text("from vhjax.search import Float, Space\n"
                    "def get_search():\n"
                    "    return dict(objective=lambda ps: [1 - (p['x'] - 0.3) ** 2 for p in ps],\n"
                    "                space=Space({'x': Float(0.0, 1.0)}), strategy='random', budget=12, population=3)\n")
    assert main(["search", str(spec), "--timeout", "0.001", "--quiet", "--workdir", str(tmp_path / "s")]) == 0
    assert "| rank |" in capsys.readouterr().out
    with open_store(tmp_path / "s") as store:
        assert len(store.trials(status="complete")) == 3  # the first generation, then the deadline


def test_resume_through_database_url(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    killed = CountingObjective(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        search(killed, BoxSpace(), hill_climber(), budget=12, population=4, storage=url,
               verbose=False)
    rerun = CountingObjective()
    resumed = search(rerun, BoxSpace(), hill_climber(), budget=12, population=4, storage=url,
                     verbose=False)
    reference = search(peak, BoxSpace(), hill_climber(), budget=12, population=4, verbose=False)
    assert rerun.calls == 2 and _signature(resumed) == _signature(reference)


def test_resume_with_another_configuration_is_refused(tmp_path):
    search(peak, BoxSpace(), hill_climber(), budget=4, population=2, workdir=tmp_path,
           verbose=False)
    with pytest.raises(ValueError, match="space"):
        search(peak, BoxSpace(dim=3), hill_climber(dim=3), budget=4, population=2,
               workdir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="seed"):
        search(peak, BoxSpace(), hill_climber(), budget=4, population=2, seed=1,
               workdir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="population"):
        search(peak, BoxSpace(), hill_climber(), budget=4, population=4, workdir=tmp_path,
               verbose=False)


# ----------------------------------------------------------------------------- multi-objective


def test_multi_objective_pareto_front():
    def two(params_list):  # a = x, b = 1 - x + y: the front is y == min over x
        return np.asarray([[p["x"], 1.0 - p["x"] + p["y"]] for p in params_list])

    result = search(two, BoxSpace(), hill_climber(), budget=40, population=8, verbose=False,
                    objectives={"a": "minimize", "b": "minimize"})
    front = result.pareto_front
    points = [(t.metrics["a"], t.metrics["b"]) for t in result.trials]

    def dominated(p):
        return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)

    expected = {t.trial_id for t, p in zip(result.trials, points) if not dominated(p)}
    assert {t.trial_id for t in front} == expected and 0 < len(front) < 40
    assert result.trials[0].fitness == result.trials[0].metrics["a"]


def test_fitness_shaping_pareto_ranks_and_failed_values():
    ranks = pareto_shaped(np.asarray([[0.0, 1.0]]), np.asarray([[1.0, 0.0], [1.0, 2.0], [np.nan, 0.0]]))
    np.testing.assert_array_equal(ranks, [0.0, 1.0, 2.0])  # failed: one below the worst
    seen = []
    strategy = make(1, lambda key: (), lambda s, key, n: (s, jnp.full((n, 1), 0.5)),
                    lambda s, u, fitness: seen.append(np.asarray(fitness)) or s)
    state, proposals = strategy.ask(strategy.init(jax.random.key(0)), jax.random.key(1), 3)
    state, metrics = strategy.tell(state, proposals, jnp.array([2.0, jnp.nan, -jnp.inf]))
    np.testing.assert_array_equal(seen[0], [2.0, np.inf, np.inf])  # failed -> +inf (worst) for the strategy
    assert float(state.best_fitness) == 2.0 and int(metrics["failed"]) == 2


# ----------------------------------------------------------------------------- exports


def test_to_csv_and_to_markdown(tmp_path):
    result = search(peak, BoxSpace(), hill_climber(), budget=6, population=3, verbose=False)
    text = result.trials.to_csv(tmp_path / "trials.csv")
    assert (tmp_path / "trials.csv").read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6
    assert {"trial_id", "status", "fitness", "params.x", "params.y", "metrics.fitness"} <= set(rows[0])
    for row, trial in zip(rows, result.trials):
        x, y = float(row["params.x"]), float(row["params.y"])
        assert float(row["fitness"]) == pytest.approx(1 - (x - 0.7) ** 2 - (y - 0.2) ** 2, rel=1e-5)
        assert int(row["trial_id"]) == trial.trial_id and row["status"] == "complete"
    markdown = result.trials.to_markdown(columns=["trial_id", "fitness", "params.x"])
    lines = markdown.strip().splitlines()
    assert lines[0] == "| trial_id | fitness | params.x |" and len(lines) == 2 + 6
    assert lines[2].startswith(f"| {result.trials[0].trial_id} | ")
    assert "more trials not shown" in result.trials.to_markdown(max_rows=2)


def test_plots_are_written(tmp_path):
    class Lineage:  # each trial's parent: the trial in the same slot one generation earlier
        @staticmethod
        def evaluate(candidates):
            ids = np.asarray(candidates.trial_ids)
            parents = np.where(candidates.generation == 0, -1, ids - len(ids))
            return {"fitness": peak(candidates.params), "parent_id": parents,
                    "fidelity": np.full(len(ids), 3.0)}

    result = search(Lineage(), BoxSpace(), hill_climber(), budget=6, population=2,
                    workdir=tmp_path, verbose=False)
    trials = result.trials
    assert [t.parent_id for t in trials] == [None, None] + [t.trial_id for t in trials[:4]]
    assert trials[0].fidelity == 3.0 and "parent_id" not in trials[0].metrics
    paths = result.plot()
    assert set(paths) == {"history", "best_so_far", "lineage"}
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in paths)


def test_progress_is_printed(capsys):
    search(peak, BoxSpace(), hill_climber(), budget=4, population=2, verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "4/4 trials" in lines[1] and "best" in lines[1]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=0), "budget"),
    (dict(budget=3, population=4), "budget must be >= population"),
    (dict(budget=4, population=0), "population"),
    (dict(budget=4, direction="max"), "direction"),
    (dict(budget=4, objective_input="dicts"), "objective_input"),
    (dict(budget=4, objectives={"a": "up"}), "objectives"),
    (dict(budget=4, timeout=0), r"timeout has value 0; allowed: a finite number > 0"),
])
def test_bad_input_is_rejected_before_running(kwargs, message):
    calls = CountingObjective()
    with pytest.raises(ValueError, match=message):
        search(calls, BoxSpace(), hill_climber(), verbose=False, **kwargs)
    assert calls.calls == 0


def test_objective_of_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="objective of unknown kind int"):
        search(42, BoxSpace(), hill_climber(), budget=2, verbose=False)


def test_missing_fitness_metric_is_named():
    with pytest.raises(ValueError, match="lacks metric"):
        search(lambda ps: {"acc": peak(ps)}, BoxSpace(), hill_climber(), budget=2, verbose=False)


# ----------------------------------------------------------------------------- real strategies
# These run once vhjax.search.strategies (make_strategy) and vhjax.search.space exist.


def _make_strategy_or_skip():
    strategies = pytest.importorskip("vhjax.search.strategies")
    if not hasattr(strategies, "make_strategy"):
        pytest.skip("vhjax.search.strategies.make_strategy not available yet")
    return strategies.make_strategy


def test_unknown_strategy_name_is_rejected():
    _make_strategy_or_skip()
    calls = CountingObjective()
    with pytest.raises(ValueError, match="no_such_strategy"):
        search(calls, BoxSpace(), "no_such_strategy", budget=2, verbose=False)
    assert calls.calls == 0


@pytest.mark.parametrize("name", ["random", "regularized_evolution"])
def test_real_strategies_on_nasbench201_resume_identically(tmp_path, name):
    _make_strategy_or_skip()
    space_lib = pytest.importorskip("vhjax.search.space")
    tabular = pytest.importorskip("vhjax.search.tabular")
    try:
        bench = tabular.NASBench201("cifar10")
    except FileNotFoundError:
        pytest.skip("nb201.csv not available")
    space = space_lib.nasbench201_space()

    class Killable:
        fitness_metric = bench.fitness_metric

        def __init__(self, fail_on_call=None):
            self.calls, self.fail_on_call = 0, fail_on_call

        def evaluate(self, candidates):
            self.calls += 1
            if self.calls == self.fail_on_call:
                raise KeyboardInterrupt("simulated kill")
            return bench.evaluate(candidates)

    kwargs = dict(budget=60, population=10, seed=4, verbose=False)
    reference = search(Killable(), space, name, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        search(Killable(fail_on_call=3), space, name, workdir=tmp_path, **kwargs)
    rerun = Killable()
    resumed = search(rerun, space, name, workdir=tmp_path, **kwargs)
    assert rerun.calls == 4 and _signature(resumed) == _signature(reference)
    best = resumed.best
    assert best.fitness == bench.evaluate([best.params])[bench.fitness_metric][0]
    assert best.metrics[bench.reported_metric] == bench.lookup(
        tabular.ops_to_arch(tabular.params_to_ops(best.params)))[bench.reported_metric]


# ----------------------------------------------------------------------------- the driver checks what it is handed


def fixed_strategy(rows, dim=2):
    """A strategy that always proposes `rows` (whatever n is)."""
    rows = jnp.asarray(rows, jnp.float32)
    return make(dim, lambda key: (), lambda state, key, n: (state, rows), lambda state, u, fitness: state)


@pytest.mark.parametrize("rows, message", [
    ([[np.nan, 0.5]], r"non-finite points.*allowed: points in \[0, 1\]"),
    ([[7.0, 0.5]], r"outside \[0, 1\].*7\.0"),
    ([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], r"u of shape \(3, 2\); allowed: \(m, 2\) with m <= 2"),
    ([[0.1, 0.2, 0.3]], r"u of shape \(1, 3\); allowed: \(m, 2\)"),
])
def test_bad_proposals_are_refused_naming_the_strategy(tmp_path, rows, message):
    calls = CountingObjective()
    with pytest.raises(ValueError, match="strategy 'custom:.*" + message):
        search(calls, BoxSpace(), fixed_strategy(rows), budget=4, population=2, workdir=tmp_path,
               verbose=False)
    assert calls.calls == 0
    with open_store(tmp_path) as store:
        assert store.count_trials() == 0 and store.get_meta("config_fingerprint") is None


def test_an_old_style_strategy_is_refused_with_the_protocol():
    class Old(NamedTuple):
        init: object
        ask: object
        tell: object

    old = Old(lambda key: (), lambda state, key, n: (state, jnp.full((n, 2), 0.5)), lambda s, u, f: s)
    with pytest.raises(TypeError, match=r"must return \(state, Proposals"):
        search(peak, BoxSpace(), old, budget=2, population=2, verbose=False)


@pytest.mark.parametrize("output, error, message", [
    (lambda params: [{"fitness": 1.0} for _ in params], TypeError, "not numeric.*objective returns fitness"),
    (lambda params: ["good"] * len(params), TypeError, "not numeric.*objective returns fitness"),
    (lambda params: {"fitness": ["a", "b"]}, TypeError, "metric 'fitness'.*not numeric"),
    (lambda params: np.zeros(len(params) + 1), ValueError, r"returned shape \(3,\); expected \(2,\)"),
])
def test_bad_objective_output_names_the_objective_contract(output, error, message):
    with pytest.raises(error, match="objective '.*" + message):
        search(output, BoxSpace(), "random", budget=2, population=2, verbose=False)


def test_storage_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="storage=.*is a directory; allowed: a database URL or an SQLite file"):
        search(peak, BoxSpace(), "random", budget=2, population=2, storage=tmp_path, verbose=False)


def test_a_search_that_failed_on_bad_input_leaves_the_store_usable(tmp_path):
    def strings(params):
        return ["oops"] * len(params)

    with pytest.raises(TypeError, match="not numeric"):
        search(strings, BoxSpace(), "random", budget=4, population=2, workdir=tmp_path, verbose=False,
               objectives="score")
    result = search(peak, BoxSpace(), "random", budget=4, population=2, workdir=tmp_path, verbose=False)
    assert len(result.trials) == 4 and all(t.status == "complete" for t in result.trials)


def test_fingerprint_compares_space_numbers_by_meaning(tmp_path):
    from vhjax.search import Float, Int, Space

    def objective(params):
        return np.asarray([p["x"] for p in params])

    search(objective, Space({"x": Float(0, 1), "n": Int(1, 3)}), "random", budget=2, population=2,
           workdir=tmp_path, verbose=False)
    result = search(objective, Space({"x": Float(0.0, 1.0), "n": Int(1, 3)}), "random", budget=4, population=2,
                    workdir=tmp_path, verbose=False)
    assert len(result.trials) == 4
    with pytest.raises(ValueError, match="different search configuration.*space"):
        search(objective, Space({"x": Float(0.0, 2.0), "n": Int(1, 3)}), "random", budget=6, population=2,
               workdir=tmp_path, verbose=False)


def test_the_objective_fingerprint_is_part_of_the_study(tmp_path):
    class Trainer:
        def __init__(self, steps):
            self.steps = steps

        def fingerprint(self):
            return {"steps": self.steps}

        def evaluate(self, candidates):
            return peak(candidates.params)

    search(Trainer(40), BoxSpace(), "random", budget=2, population=2, workdir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"\(objective\.steps: stored 40, now 8\)"):
        search(Trainer(8), BoxSpace(), "random", budget=4, population=2, workdir=tmp_path, verbose=False)
    assert len(search(Trainer(40), BoxSpace(), "random", budget=4, population=2, workdir=tmp_path,
                      verbose=False).trials) == 4


def test_candidates_carry_fidelity_and_parent_trial_ids():
    """A strategy proposing budgets and parents: the objective sees them as trial ids."""
    seen = []

    def ask(state, key, n, first):
        from vhjax.search.strategies.base import proposals_of

        parent = np.where(first >= n, np.arange(first - n, first), -1)  # the same slot, one generation back
        return state, proposals_of(jnp.full((n, 2), 0.5), first, np.full((n,), 5.0), parent)

    strategy = make(2, lambda key: (), ask, lambda state, proposals, fitness: state, proposes=True)

    class Objective:
        @staticmethod
        def evaluate(candidates):
            seen.append((list(candidates.trial_ids), candidates.parent_ids, candidates.fidelity.tolist()))
            return peak(candidates.params)

    result = search(Objective(), BoxSpace(), strategy, budget=4, population=2, verbose=False)
    (ids0, parents0, budgets0), (ids1, parents1, _) = seen
    assert parents0 == [None, None] and parents1 == ids0 and budgets0 == [5.0, 5.0]
    assert [t.parent_id for t in result.trials] == [None, None] + ids0
    assert all(t.fidelity == 5.0 for t in result.trials)
