"""replay_pbt: a PBT pick's schedule trained again from scratch, over seeds, in one population."""

from __future__ import annotations

import dataclasses

import pytest

from vhjax.config import TrainConfig
from vhjax.population import fit_population
from vhjax.search import Float, SearchResult, Space, TrialTable, replay_pbt, search_pbt
from vhjax.search.pbt_replay import pbt_schedule
from vhjax.search.storage import Trial

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=90, eval_every=30, train_split="train[:80%]",
                     eval_split="train[80%:]", test_split="test", seed=0)


def trial(trial_id: int, generation: int, slot: int, learning_rate: float, parent: int | None,
          fitness: float = 0.5, interval: int = 30) -> Trial:
    return Trial(trial_id, generation, slot, {"learning_rate": learning_rate}, (0.0,), "complete", fitness,
                 {"score": fitness}, float(interval * (generation + 1)), parent)


def made_result(*trials: Trial) -> SearchResult:
    """A stored PBT run as search_pbt returns it (only the trials matter to a replay)."""
    return SearchResult(trials=TrialTable(list(trials)), direction="maximize", objectives={"accuracy": "maximize"},
                        top_fidelity_only=False)


def test_the_schedule_follows_the_ancestry_across_copies():
    trials = [trial(0, 0, 0, 1e-3, None), trial(1, 0, 1, 1e-2, None),
              trial(2, 1, 0, 1.2e-2, 1), trial(3, 1, 1, 1e-2, 1),  # slot 0 copied slot 1, explored 1.2x
              trial(4, 2, 0, 1.2e-2, 2), trial(5, 2, 1, 8e-3, 2)]  # slot 1 copied slot 0 at the next round
    rounds = pbt_schedule(trials, trials[5])
    assert [(r.start, r.end, r.params["learning_rate"]) for r in rounds] == [(0, 30, 1e-2), (30, 60, 1.2e-2),
                                                                            (60, 90, 8e-3)]
    orphan = trial(6, 1, 2, 1e-2, None)  # a trial whose parent is not stored: no schedule from step 0
    with pytest.raises(ValueError, match="ancestry back to the first round"):
        pbt_schedule([*trials, orphan], orphan)
    unstepped = dataclasses.replace(trials[0], fidelity=None)
    with pytest.raises(ValueError, match="at step None after step 0; allowed: a PBT trial"):
        pbt_schedule([unstepped], unstepped)


def test_a_constant_schedule_replays_exactly_the_members_fit_population_trains():
    constant = made_result(trial(0, 0, 0, 1e-2, None), trial(1, 1, 0, 1e-2, 0), trial(2, 2, 0, 1e-2, 1, fitness=0.9))
    replay = replay_pbt(CONFIG, constant, seeds=[3, 5], verbose=False)
    plain = fit_population(CONFIG, [{"learning_rate": 1e-2, "seed": s} for s in (3, 5)], verbose=False)
    assert [m["test"] for m in replay.members] == [m["test"] for m in plain.members]
    assert [m["eval"] for m in replay.members] == [m["eval"] for m in plain.members]
    assert replay.members[0]["test"] != replay.members[1]["test"]  # each seed its own model
    assert [m["steps"] for m in replay.members] == [90, 90]


def test_a_change_takes_effect_at_its_step_and_a_shorter_schedule_stops_there(tmp_path, run_interrupted):
    # pick 0 trains at 1e-2 for 30 steps, then at learning rate 0 (its weights stay); pick 1 is one round
    # long: both must end as the model trained 30 steps at 1e-2
    frozen = made_result(trial(0, 0, 0, 1e-2, None, fitness=0.6), trial(1, 1, 0, 0.0, 0, fitness=0.62),
                         trial(2, 2, 0, 0.0, 1, fitness=0.8), trial(3, 0, 1, 1e-2, None, fitness=0.65))
    replay = replay_pbt(CONFIG, frozen, top=2, seeds=1, verbose=False)
    assert [(p.trial.trial_id, len(p.schedule)) for p in replay.picks] == [(2, 3), (3, 1)]  # best first
    short = fit_population(dataclasses.replace(CONFIG, steps=30), [{"learning_rate": 1e-2, "seed": 0}], verbose=False)
    close = lambda got, expected: all(g == pytest.approx(e, rel=1e-5) for g, e in zip(got, expected))  # noqa: E731
    # (the replay's programs vmap 2 members, the plain fit 1: equal up to float rounding, which depends on the CPU)
    assert close([m["test"] for m in replay.members], [short.members[0]["test"]] * 2)
    assert [m["steps"] for m in replay.members] == [90, 30]
    held = replay_pbt(CONFIG, frozen, top=2, seeds=1, until=90, verbose=False)  # pick 1 goes on at its last values
    full = fit_population(CONFIG, [{"learning_rate": 1e-2, "seed": 0}], verbose=False)
    assert close([m["test"] for m in held.members], [short.members[0]["test"], full.members[0]["test"]])
    assert [m["steps"] for m in held.members] == [90, 90]
    rows = replay.summary()
    assert rows[0]["pbt_eval"] == 0.8 and rows[0]["test_mean"] == pytest.approx(short.members[0]["test"]["accuracy"],
                                                                                rel=1e-5)
    assert rows[0]["test_std"] == 0.0 and "| 0 | 0 | 2 | 3 (90) | 0.8000 |" in replay.table()
    # killed right after the checkpoint of step 30, where pick 0's rate changes: the resumed replay is the same
    run_interrupted(lambda: replay_pbt(CONFIG, frozen, top=2, seeds=1, workdir=tmp_path, verbose=False), at_step=30)
    resumed = replay_pbt(CONFIG, frozen, top=2, seeds=1, workdir=tmp_path, verbose=False)
    assert resumed.members == replay.members


def test_a_search_pbt_pick_replays_over_seeds_with_its_own_schedule():
    space = Space({"learning_rate": Float(1e-4, 1e-1, log=True)})
    result = search_pbt(CONFIG, space, population=4, interval=30, verbose=False)
    replay = replay_pbt(CONFIG, result, top=2, seeds=2, verbose=False)
    assert replay.picks[0].trial == result.best and len(replay.members) == 4
    assert [r.params for r in replay.picks[0].schedule] == [t.params for t in result.ancestry()]
    chosen = replay_pbt(CONFIG, result, trials=[result.best], seeds=[7], verbose=False)
    assert chosen.members[0]["seed"] == 7 and chosen.picks[0].trial == result.best
    assert 0.5 < replay.summary()[0]["test_mean"] <= 1.0  # a trained model, not a stub


def test_bad_input_is_refused_before_anything_trains():
    result = made_result(trial(0, 0, 0, 1e-2, None), trial(1, 1, 0, 1e-2, 0, fitness=0.9))
    with pytest.raises(ValueError, match="seeds has value 0; allowed"):
        replay_pbt(CONFIG, result, seeds=0, verbose=False)
    with pytest.raises(ValueError, match="seeds has value \\[1, 1\\]"):
        replay_pbt(CONFIG, result, seeds=[1, 1], verbose=False)
    with pytest.raises(ValueError, match="'steps' has value 30; allowed: at least the schedule's last step, 60"):
        replay_pbt(dataclasses.replace(CONFIG, steps=30), result, verbose=False)
    with pytest.raises(ValueError, match="until has value 50; allowed: an integer in \\[60, 90\\]"):
        replay_pbt(CONFIG, result, until=50, verbose=False)
    with pytest.raises(ValueError, match="trials has value \\[9\\]"):
        replay_pbt(CONFIG, result, trials=[trial(9, 0, 0, 1e-2, None)], verbose=False)
    with pytest.raises(ValueError, match="schedule 1 has rounds of \\[20\\] steps"):  # picks of runs with other intervals
        replay_pbt(CONFIG, made_result(trial(0, 0, 0, 1e-2, None, fitness=0.9),
                                       trial(1, 0, 1, 1e-2, None, fitness=0.8, interval=20)), top=2, verbose=False)
    with pytest.raises(ValueError, match="allowed: the result of search_pbt"):
        replay_pbt(CONFIG, [result], verbose=False)
