"""PBT's explore guided by a Gaussian process of recent rounds (vhjax.population.pbt_guide)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vhjax.population.pbt import fit_pbt
from vhjax.population.pbt_guide import choose, guided_explore, posterior, score_changes

RANGES = {"learning_rate": (1e-4, 1e-1, True), "dropout_rate": (0.0, 0.5, False)}


def entry(step, score, learning_rate, dropout_rate):
    return {"step": step, "score": list(score), "learning_rate": list(learning_rate),
            "dropout_rate": list(dropout_rate), "stopped": [False] * len(score)}


def test_score_changes_are_taken_from_the_state_each_slot_continued_and_standardised_per_round():
    history = [entry(10, [0.1, 0.2, 0.3, 0.4], [1e-4] * 4, [0.0] * 4),
               entry(20, [0.5, 0.3, 0.6, math.nan], [1e-3, 1e-2, 1e-1, 1e-4], [0.1, 0.2, 0.3, 0.4])]
    lineage = [{"step": 10, "parent": [3, -1, -1, -1]}]  # slot 0 continued from slot 3's state
    inputs, targets = score_changes(history, lineage, RANGES)
    changes = np.array([0.5 - 0.4, 0.3 - 0.2, 0.6 - 0.3])  # slot 3 diverged: left out
    np.testing.assert_allclose(targets, (changes - changes.mean()) / (changes.std() + 1e-6), atol=1e-9)
    np.testing.assert_allclose(inputs[:, 0], 0.0)  # the newest round
    np.testing.assert_allclose(inputs[:, 1], [1 / 3, 2 / 3, 1.0], atol=1e-9)  # log scale: 1e-3, 1e-2, 1e-1
    np.testing.assert_allclose(inputs[:, 2], [0.2, 0.4, 0.6], atol=1e-9)
    assert score_changes(history[:1], [], RANGES) is None  # one round: nothing to learn from yet
    three = [*history, entry(30, [0.7, 0.4, 0.6, 0.5], [1e-3] * 4, [0.1] * 4)]
    rounds_ago = score_changes(three, [*lineage, {"step": 20, "parent": [-1, -1, -1, 2]}], RANGES)[0][:, 0]
    assert sorted(set(rounds_ago)) == [-1.0, 0.0] and (rounds_ago == 0.0).sum() == 4  # slot 3 from slot 2


def gradient_data(points=40, seed=0):
    """Score changes that rise with the learning rate's unit coordinate."""
    rng = np.random.default_rng(seed)
    units = rng.random((points, 2))
    return np.concatenate([np.zeros((points, 1)), units], axis=1), 3 * units[:, 0] - 1.5


def values(rates, dropouts):
    return {"learning_rate": np.array(rates), "dropout_rate": np.array(dropouts)}


def test_copied_slots_take_the_candidate_the_model_predicts_gains_most():
    low, high = values([1e-4, 1e-4, 1e-4], [0.2] * 3), values([1e-1, 1e-1, 1e-1], [0.2] * 3)
    chosen = choose([low, high], [0, 2], gradient_data(), RANGES)
    assert chosen["learning_rate"].tolist() == [1e-1, 1e-4, 1e-1]  # slot 1 was not copied: candidate 0's
    mean, _ = posterior(*gradient_data(), np.array([[1.0, 0.0, 0.2], [1.0, 1.0, 0.2]]))
    assert mean[1] > mean[0] + 1.0
    assert choose([high, low], [0], gradient_data(), RANGES)["learning_rate"][0] == 1e-1  # whatever its position


def test_a_batch_of_copies_spreads_over_the_points_the_model_knows_least():
    inputs = np.array([[0.0, 0.5, 0.5]] * 5)  # all data in the centre, no change anywhere
    centre, corner, other = values([10 ** -2.5] * 2, [0.25] * 2), values([1e-4] * 2, [0.0] * 2), values([1e-1] * 2, [0.5] * 2)
    chosen = choose([centre, corner, other], [0, 1], (inputs, np.zeros(5)), RANGES)
    assert chosen["learning_rate"].tolist() == [1e-4, 1e-1]  # the second copy avoids the first's choice


def test_guided_explore_draws_its_candidates_as_pbt_explores():
    data = gradient_data()
    assert guided_explore(np.zeros(0), data, RANGES, 0.0, candidates=1) is None  # plain PBT
    assert guided_explore(np.zeros(100), None, RANGES, 0.0, candidates=8) is None  # no data yet
    current = values([1e-2] * 4, [0.2] * 4)
    draws = np.random.default_rng(0).random(7 * 24, dtype=np.float32)  # 7 more candidates of 2 x 12 draws
    guide = guided_explore(draws, data, RANGES, 0.0, candidates=8)
    own = values([1e-2 * 0.8] * 4, [0.2 * 0.8] * 4)
    chosen = guide(np.array([True, False, True, True]), current, own)
    assert chosen["learning_rate"][1] == own["learning_rate"][1]
    for slot in (0, 2, 3):  # another draw than its own (x0.8): x1.2, towards the learning rates the data favours
        assert np.isclose(chosen["learning_rate"][slot], 1.2e-2)
        assert np.isclose(chosen["dropout_rate"][slot], 0.16) or np.isclose(chosen["dropout_rate"][slot], 0.24)
    assert guide(np.zeros(4, bool), current, own) is own


CONFIG = dict(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, batch_size=32,
              steps=90, eval_every=90, train_split="train[:80%]", eval_split="train[80%:]", test_split="test", seed=0)
MEMBERS = [{"learning_rate": lr} for lr in (1e-5, 3e-4, 1e-3, 1e-2)]


def test_guided_pbt_consults_the_model_once_it_has_data_and_resumes_identically(tmp_path, run_interrupted,
                                                                                monkeypatch):
    from vhjax.config import TrainConfig
    from vhjax.population import pbt

    config = TrainConfig(**CONFIG)
    explore = {"learning_rate": (1e-5, 1e-1, True)}
    run = dict(interval=30, candidates=8, verbose=False)
    consulted = []

    def recording(uniforms, data, *args):
        guide = guided_explore(uniforms, data, *args)
        consulted.append(None if data is None else len(data[1]))
        return guide if guide is None else lambda copied, *values: consulted.append(int(copied.sum())) or guide(copied, *values)

    monkeypatch.setattr(pbt, "guided_explore", recording)
    full = fit_pbt(config, MEMBERS, explore, **run)
    assert consulted == [None, 4, 1]  # step 30: no data; step 60: the 4 members' changes, 1 copied slot
    monkeypatch.undo()
    plain = fit_pbt(config, MEMBERS, explore, **{**run, "candidates": 1})
    assert full.lineage[0] == plain.lineage[0] and full.history[:2] == plain.history[:2]  # the same until guided
    run_interrupted(lambda: fit_pbt(config, MEMBERS, explore, workdir=tmp_path, **run), at_step=30)
    resumed = fit_pbt(config, MEMBERS, explore, workdir=tmp_path, **run)  # its guided decision from the record
    assert resumed.history == full.history and resumed.lineage == full.lineage
    with pytest.raises(ValueError, match=r"candidates has value 0; allowed: an integer in \[1, 64\]"):
        fit_pbt(dataclasses.replace(config, steps=30), MEMBERS, explore, interval=30, candidates=0, verbose=False)


def test_search_pbt_passes_candidates_on_and_a_workdir_resumes_only_with_its_own(tmp_path, monkeypatch):
    from vhjax.config import TrainConfig
    from vhjax.population import pbt
    from vhjax.search import Float, Space, search_pbt

    counts = []
    real = pbt.fit_pbt

    def recording(*args, candidates, **kwargs):
        counts.append(candidates)
        return real(*args, candidates=candidates, **kwargs)

    monkeypatch.setattr(pbt, "fit_pbt", recording)
    config = TrainConfig(**{**CONFIG, "steps": 60})
    space = Space({"learning_rate": Float(1e-4, 1e-1, log=True)})
    first = search_pbt(config, space, population=4, interval=30, workdir=tmp_path, candidates=4, verbose=False)
    again = search_pbt(config, space, population=4, interval=30, workdir=tmp_path, candidates=4, verbose=False)
    assert counts == [4] and [t.fitness for t in again.trials] == [t.fitness for t in first.trials]  # read back
    with pytest.raises(ValueError, match=r"candidates: stored 4, now absent"):  # plain PBT is another search
        search_pbt(config, space, population=4, interval=30, workdir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"candidates has value 65; allowed: an integer in \[1, 64\]"):
        search_pbt(config, space, population=4, interval=30, candidates=65, verbose=False)
