"""fit_pbt: exploit/explore during training, lineage, resume, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vhjax import compilation_cache
from vhjax.config import TrainConfig
from vhjax.population import fit_population
from vhjax.population.pbt import fit_pbt

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=120, eval_every=120, train_split="train[:80%]",
                     eval_split="train[80%:]", test_split="test", seed=0)
MEMBERS = [{"learning_rate": lr} for lr in (1e-5, 1e-5, 1e-5, 1e-2)]
EXPLORE = {"learning_rate": (1e-5, 1e-1, True)}


def test_explore_values_perturbs_clips_and_redraws_each_hyperparameter_from_one_draw():
    import jax
    import jax.numpy as jnp

    from vhjax.population.exploit import explore_values

    values = {"learning_rate": jnp.full((2000,), 1e-3), "l2": jnp.full((2000, 3), 0.5)}  # l2: one per layer
    ranges = {"learning_rate": (1e-4, 1e-2, True), "l2": (0.0, 0.55, False)}
    same = explore_values(jax.random.key(0), values, ranges, factors=(1.0,), resample_probability=0.0)
    assert all(np.array_equal(same[k], values[k]) for k in values)  # the identity at zero strength
    moved = explore_values(jax.random.key(0), values, ranges, factors=(0.5, 2.0))
    np.testing.assert_allclose(np.unique(np.round(np.asarray(moved["learning_rate"]), 6)), [5e-4, 2e-3])
    l2 = np.asarray(moved["l2"])
    np.testing.assert_allclose(np.unique(np.round(l2, 6)), [0.25, 0.55])  # 1.0 clipped to the range's top
    assert np.all(l2 == l2[:, :1])  # one factor per member for a per-layer value
    halves = np.asarray(moved["learning_rate"]) < 1e-3
    assert 0.45 < halves.mean() < 0.55
    assert abs(np.corrcoef(halves, l2[:, 0] < 0.5)[0, 1]) < 0.1  # each hyperparameter's factor its own
    redrawn = explore_values(jax.random.key(1), values, ranges, resample_probability=0.25)
    fresh = np.asarray(redrawn["learning_rate"])
    fresh = fresh[~np.isclose(fresh, 8e-4) & ~np.isclose(fresh, 1.2e-3)]
    assert 0.2 < fresh.size / 2000 < 0.3 and fresh.min() >= 1e-4 and fresh.max() <= 1e-2
    assert 0.3 < np.mean(fresh < 1e-3) < 0.7  # log-uniform: half of [1e-4, 1e-2] lies below 1e-3


def test_pbt_rescues_bad_members_and_beats_no_exploitation():
    pbt = fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, fraction=0.25, verbose=False)
    plain = fit_population(CONFIG, MEMBERS, verbose=False, same_batches=False)
    pbt_mean = np.mean([m["test"]["accuracy"] for m in pbt.members])
    plain_mean = np.mean([m["test"]["accuracy"] for m in plain.members])
    assert pbt_mean > plain_mean + 0.2  # the ablation without exploit/explore loses
    assert len(pbt.lineage) == 3 and all(r["parent"].count(-1) == 3 for r in pbt.lineage)
    first = pbt.lineage[0]["parent"]
    assert [p for p in first if p >= 0] == [3]  # a bad member copied the good one
    learning_rates = [m["hparams"]["learning_rate"] for m in pbt.members]
    assert sum(lr > 1e-3 for lr in learning_rates) >= 3  # copies carry (perturbed) good rates
    assert all(1e-5 <= lr <= 1e-1 for lr in learning_rates)


def test_interrupted_pbt_resumes_identically(tmp_path, run_interrupted):
    config = dataclasses.replace(CONFIG, steps=90)
    full = fit_pbt(config, MEMBERS, EXPLORE, interval=30, workdir=tmp_path / "full", verbose=False)
    run_interrupted(lambda: fit_pbt(config, MEMBERS, EXPLORE, interval=30, workdir=tmp_path / "cut", verbose=False),
                    at_step=60)
    resumed = fit_pbt(config, MEMBERS, EXPLORE, interval=30, workdir=tmp_path / "cut", verbose=False)
    assert resumed.lineage == full.lineage
    assert [m["eval"] for m in resumed.members] == [m["eval"] for m in full.members]
    assert (tmp_path / "cut" / "pbt.json").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"explore": {"learnin_rate": (1e-3, 1e-1)}}, "unknown hyperparameter 'learnin_rate'"),
    ({"explore": {"learning_rate": (0.0, 1e-1, True)}}, "low > 0 for log scale"),
    ({"interval": 0}, r"interval has value 0; allowed: an integer in \[1, "),
    ({"fraction": 0.8}, r"fraction has value 0.8; allowed: a finite number > 0.0 and <= 0.5"),
])
def test_bad_pbt_input_fails_before_training(kwargs, match):
    arguments = {"explore": EXPLORE, "interval": 30, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_pbt(CONFIG, MEMBERS, arguments.pop("explore"), **arguments, verbose=False)


def test_search_pbt_rounds_default_to_a_tenth_of_the_run_in_chunks_of_one_length():
    from vhjax.search.pbt_search import default_interval, even_interval

    assert [default_interval(steps) for steps in (1500, 90, 5)] == [150, 9, 1]
    assert default_interval(1001) == 91 and 1001 % 91 == 0  # 7 * 13: no shorter last chunk to compile
    assert [even_interval(1500, 30), even_interval(500, 30), even_interval(97, 10)] == [50, 20, 1]
    assert even_interval(12, 5) == 2 and even_interval(30, 12) == 3  # 2.4: 2 is nearest; 2.5: the larger of 2, 3
    with pytest.raises(ValueError, match="rounds"):
        even_interval(100, 0)


def test_the_first_population_spreads_every_parameter_over_its_range(monkeypatch):
    from vhjax.search import Float, Space, search_pbt
    from vhjax.search.pbt_search import initial_units

    points = initial_units(4, 32, seed=7)
    assert points.shape == (32, 4) and points.dtype == np.float32
    def strata(p):  # which 1/32 of each parameter's range each member's value falls in
        return [sorted(np.floor(p[:, d] * 32).astype(int).tolist()) for d in range(p.shape[1])]
    assert strata(points) == [list(range(32))] * 4  # one member in each 1/32 of every range
    assert strata(initial_units(4, 32, seed=7, design="random")) != [list(range(32))] * 4  # draws leave gaps
    assert np.array_equal(points, initial_units(4, 32, seed=7)) and not np.array_equal(points, initial_units(4, 32, 8))
    assert initial_units(3, 24, seed=1).shape == (24, 3)  # any population size
    monkeypatch.setattr("vhjax.population.pbt.fit_pbt", lambda *a, **k: pytest.fail("trained"))
    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    with pytest.raises(ValueError, match="initial has value 'grid'; allowed: one of 'sobol', 'random'"):
        search_pbt(CONFIG, space, population=4, initial="grid", verbose=False)


def test_search_pbt_stores_float32_values_at_a_bound_inside_the_range():
    from vhjax.search import Float, Space
    from vhjax.search.pbt_search import member_params

    space = Space({"weight_decay": Float(1e-5, 1e-1, log=True), "dropout_rate": Float(0.0, 0.5)})
    entry = {"weight_decay": np.float32([1e-5, 1e-1, 3e-3]), "dropout_rate": np.float32([[0.5], [0.0], [0.25]])}
    assert float(np.float32(1e-5)) < 1e-5 and float(np.float32(1e-1)) > 1e-1  # float32 rounds both bounds outward
    rows = [member_params(space, entry, i) for i in range(3)]
    assert rows[0] == {"weight_decay": 1e-5, "dropout_rate": 0.5}
    assert rows[1] == {"weight_decay": 1e-1, "dropout_rate": 0.0}
    assert rows[2]["weight_decay"] == pytest.approx(3e-3) and rows[2]["dropout_rate"] == 0.25
    for row in rows:
        space.encode(row)  # the store's check: raises for a value outside the range


def test_search_pbt_stores_every_round_with_lineage(tmp_path):
    from vhjax.search import Float, Space, search_pbt
    from vhjax.search.pbt_search import initial_units

    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    config = dataclasses.replace(CONFIG, steps=90)
    result = search_pbt(config, space, population=4, interval=30, workdir=tmp_path, verbose=False)
    assert len(result.trials) == 12 and sorted({t.fidelity for t in result.trials}) == [30.0, 60.0, 90.0]
    first = sorted((t for t in result.trials if t.generation == 0), key=lambda t: t.slot)
    sobol = [space.decode(u) for u in initial_units(space.dim, 4, seed=0)]  # the default first population
    assert [t.params["learning_rate"] for t in first] == pytest.approx([p["learning_rate"] for p in sobol], rel=1e-6)
    by_id = {t.trial_id: t for t in result.trials}
    later = [t for t in result.trials if t.generation > 0]
    assert all(t.parent_id is not None and by_id[t.parent_id].generation == t.generation - 1 for t in later)
    assert result.best.fidelity == 90.0
    final = [t for t in result.trials if t.fidelity == 90.0]
    assert all(t.metrics["eval_accuracy"] == pytest.approx(t.fitness) for t in final)  # the same members
    assert all(0.0 <= t.metrics["test_accuracy"] <= 1.0 for t in final)
    assert len({t.metrics["test_accuracy"] for t in final}) > 1  # each member's own test value
    assert "test_accuracy" not in result.trials[0].metrics  # only the returned members were tested
    assert result.best_metrics["test_accuracy"] == result.best.metrics["test_accuracy"]
    schedule = result.ancestry()  # the pick's hyperparameters round by round
    assert [t.fidelity for t in schedule] == [30.0, 60.0, 90.0] and schedule[-1] == result.best
    assert all(later.parent_id == earlier.trial_id for earlier, later in zip(schedule, schedule[1:]))
    assert "lineage" in result.plot()
    assert compilation_cache.enabled_dir() is None  # the default (True) respects VHJAX_CACHE_DIR=off (conftest)
    try:  # a path turns JAX's persistent compilation cache on there, as tune's does
        again = search_pbt(config, space, population=4, interval=30, workdir=tmp_path, verbose=False,
                           compilation_cache=str(tmp_path / "jax_cache"))
        assert compilation_cache.enabled_dir() == str((tmp_path / "jax_cache").resolve())
    finally:
        compilation_cache.disable()  # the suite's own cache comes back before the next test (conftest)
    assert len(again.trials) == 12  # nothing trained or stored twice
    with pytest.raises(ValueError, match="initial: stored 'sobol', now absent"):  # another first population
        search_pbt(config, space, population=4, interval=30, workdir=tmp_path, verbose=False, initial="random")
    in_memory = search_pbt(config, space, population=4, interval=30, verbose=False)  # stored after training
    assert [(t.generation, t.slot, t.fitness, t.params, t.parent_id is None) for t in in_memory.trials] == [
        (t.generation, t.slot, t.fitness, t.params, t.parent_id is None) for t in result.trials]


def test_pbt_keep_best_returns_each_slots_best_evaluated_parameters():
    # half the members copy and redraw a learning rate in [1, 1e4], which wrecks them: the worst of the
    # good members (~0.6 accuracy) then scores lower than before the copy and must return its own
    # evaluated parameters, not those it copied
    config = dataclasses.replace(CONFIG, steps=60, keep_best=True)
    members = [{"learning_rate": lr} for lr in (1e-2, 1e-2, 1e-2, 1e-5)]
    pbt = fit_pbt(config, members, {"learning_rate": (1.0, 1e4, True)}, interval=30, fraction=0.5,
                  resample_probability=1.0, verbose=False)
    assert any(entry["score"][i] < pbt.history[0]["score"][i]  # the case above, in some slot
               for entry in pbt.history[1:] for i in range(len(members)))
    for i, member in enumerate(pbt.members):
        scores = [entry["score"][i] for entry in pbt.history]
        best_round = int(np.argmax(scores))  # the first round of the slot's best score
        assert member["eval"]["accuracy"] == pytest.approx(scores[best_round])  # re-evaluated: those parameters
        assert member["best_step"] == pbt.history[best_round]["step"]
        assert member["hparams"]["learning_rate"] == pbt.history[best_round]["learning_rate"][i]  # of that round


def test_a_stop_ends_the_run_at_that_round_the_rerun_continues_it_and_a_run_resumes_with_or_without_one(tmp_path):
    config = dataclasses.replace(CONFIG, steps=8, keep_best=True)
    asked = []

    def stop():  # true from its second call on: after round 1
        asked.append(1)
        return len(asked) >= 2

    stopped = fit_pbt(config, MEMBERS, EXPLORE, interval=2, stop=stop, verbose=False)
    assert [entry["step"] for entry in stopped.history] == [2, 4] and len(asked) == 2 and stopped.cut_at == 4
    assert all(member["best_step"] in (2, 4) for member in stopped.members)  # each slot's kept round
    whole = fit_pbt(config, MEMBERS, EXPLORE, interval=2, verbose=False)
    assert whole.cut_at is None and stopped.history == whole.history[:2]
    # a run cut in its workdir continues there as the uncut run trains, whether or not the rerun has a stop
    asked.clear()
    fit_pbt(config, MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "cut", stop=stop, verbose=False)
    continued = fit_pbt(config, MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "cut", stop=lambda: False,
                        verbose=False)
    assert continued.cut_at is None and continued.history == whole.history
    assert continued.lineage == whole.lineage and continued.members == whole.members
    # a stop keeps no state in the checkpoints: a run started with one resumes without one, and back
    first = fit_pbt(dataclasses.replace(config, steps=4), MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "a",
                    stop=lambda: False, verbose=False)
    resumed = fit_pbt(config, MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "a", verbose=False)
    assert [entry["step"] for entry in first.history] == [2, 4] and len(resumed.history) == 4
    fit_pbt(dataclasses.replace(config, steps=4), MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "b", verbose=False)
    again = fit_pbt(config, MEMBERS, EXPLORE, interval=2, workdir=tmp_path / "b", stop=lambda: False, verbose=False)
    assert [entry["score"] for entry in again.history] == [entry["score"] for entry in resumed.history]


@pytest.mark.parametrize("main, mine, sent", [(True, True, b"1"), (True, False, b"0"), (False, None, None)])
def test_on_a_mesh_over_processes_every_process_takes_process_0s_stop(monkeypatch, main, mine, sent):
    from vhjax import distributed, parallel
    from vhjax.population import loop

    asked, broadcast = [], []
    monkeypatch.setattr(parallel, "spans_processes", lambda mesh: True)
    monkeypatch.setattr(distributed, "is_main_process", lambda: main)
    monkeypatch.setattr(distributed, "broadcast_bytes", lambda data: broadcast.append(data) or b"1")

    def stop():
        asked.append(1)
        return mine

    # process 0 asks its own stop and sends the answer; another process sends nothing and follows it
    assert loop.stop_requested(stop, mesh=object()) is True
    assert broadcast == [sent] and len(asked) == int(main)
    assert loop.stop_requested(None, mesh=object()) is False and len(broadcast) == 1  # no stop: no collective


def test_search_pbt_streams_rounds_and_keeps_the_best_round_of_each_slot(tmp_path):
    from vhjax.search import Float, Space, search_pbt

    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    config = dataclasses.replace(CONFIG, steps=90, keep_best=True)
    rows = []
    result = search_pbt(config, space, population=4, interval=30, workdir=tmp_path, callback=rows.append,
                        verbose=False)
    assert [(row["round"], row["step"], row["member"]) for row in rows] == [
        (r, 30 * (r + 1), m) for r in range(3) for m in range(4)]
    stored = {(t.generation, t.slot): t for t in result.trials}
    assert all(stored[row["round"], row["member"]].fitness == pytest.approx(row["value"]) for row in rows)
    assert all(row["params"] == stored[row["round"], row["member"]].params for row in rows)
    assert rows[-1]["seconds"] > rows[0]["seconds"] > 0
    tested = [t for t in result.trials if "test_accuracy" in t.metrics]
    assert sorted(t.slot for t in tested) == [0, 1, 2, 3]  # one returned member per slot, at its kept round
    for t in tested:
        slot_scores = [stored[g, t.slot].fitness for g in range(3)]
        assert t.generation == int(np.argmax(slot_scores)) and t.metrics["eval_accuracy"] == pytest.approx(t.fitness)
    assert result.best.fitness == max(t.fitness for t in result.trials)  # the pick of any round
    assert result.best_metrics["test_accuracy"] == result.best.metrics["test_accuracy"]


def test_search_pbt_keep_best_must_rank_as_pbt_does():
    from vhjax.search import Float, Space, search_pbt

    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    config = dataclasses.replace(CONFIG, keep_best=True, monitor="loss", monitor_mode="min")
    with pytest.raises(ValueError, match="'monitor'.*allowed with keep_best"):
        search_pbt(config, space, population=4, interval=30, verbose=False)


def test_a_pbt_search_saves_a_tenth_of_its_rounds_and_resumes_from_them(tmp_path, monkeypatch, run_interrupted):
    """30 rounds of 2 steps: a checkpoint every 3rd round (10, not 30 orbax saves: each costs more than
    such a round); a run killed after its 2nd save resumes from round 6 and stores what the uncut run
    stores. A fit workdir may be resumed with another `checkpoint_every` (it changes no result)."""
    from vhjax.search import Float, Space, search_pbt
    from vhjax.search.pbt_search import pbt_checkpoint_every
    from vhjax.train import checkpoint

    space = Space({"learning_rate": Float(1e-4, 1e-1, log=True)})
    config = dataclasses.replace(CONFIG, steps=60)
    assert pbt_checkpoint_every(config, 2) == 3 and pbt_checkpoint_every(config, 30) == 1
    assert pbt_checkpoint_every(dataclasses.replace(config, checkpoint_every=5), 2) == 5
    saved, real_save = [], checkpoint.Checkpointer.save
    monkeypatch.setattr(checkpoint.Checkpointer, "save", lambda self, step, *a: (saved.append(step),
                                                                                real_save(self, step, *a))[1])
    full = search_pbt(config, space, population=2, interval=2, workdir=tmp_path / "full", verbose=False)
    assert saved == list(range(6, 61, 6))  # steps of rounds 3, 6, ..., 30
    run_interrupted(lambda: search_pbt(config, space, population=2, interval=2, workdir=tmp_path / "cut",
                                       verbose=False), at_step=12)
    resumed = search_pbt(config, space, population=2, interval=2, workdir=tmp_path / "cut", verbose=False)
    assert [(t.params, t.metrics) for t in resumed.trials] == [(t.params, t.metrics) for t in full.trials]
    run = dataclasses.replace(CONFIG, steps=20, eval_every=10)
    fit_population(run, MEMBERS[:2], workdir=tmp_path / "fit", verbose=False)
    fit_population(dataclasses.replace(run, checkpoint_every=2), MEMBERS[:2], workdir=tmp_path / "fit", verbose=False)
