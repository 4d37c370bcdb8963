"""ADDA's stage 2 on the population engine: resume from a workdir, a finished workdir restored, a
diverging member isolated, other inputs on a workdir refused."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from tests.transfer.test_adapt import SHORT, TARGET
from vhjax.population.engine import PopulationRunner
from vhjax.transfer import adapt, adda, select_member

STAGE = dataclasses.replace(SHORT, eval_every=10)  # 20 steps in two chunks: a checkpoint after each


@pytest.fixture(scope="module")
def stage1():
    return adapt(STAGE, [{"seed": 0}, {"seed": 1}], target=TARGET, verbose=False)


@pytest.fixture(scope="module")
def full(stage1, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("adda") / "full"
    return adda(STAGE, target=TARGET, source=stage1, learning_rate=1e-3, workdir=workdir, verbose=False), workdir


def params(result, member):
    row = result.rows[member]
    return jax.tree.leaves(jax.tree.map(lambda a: np.asarray(a[row["position"]]),
                                        result.adapted[row["bucket"]].members.params))


@pytest.mark.slow  # about 30 s on 2 shared cores (the fixtures: stage 1 and a full stage 2, about 40 s more)
def test_interrupted_adda_resumes_identically_and_a_finished_workdir_restores(stage1, full, tmp_path,
                                                                               run_interrupted, monkeypatch):
    full, _ = full
    assert [row["step"] for row in full.stage.histories[0] if row["split"] == "eval"] == [10, 20]
    run = lambda: adda(STAGE, target=TARGET, source=stage1, learning_rate=1e-3, workdir=tmp_path, verbose=False)
    run_interrupted(run, at_step=10)
    assert (tmp_path / "adda" / "bucket_0" / "checkpoints").exists()
    resumed = run()
    assert resumed.rows == full.rows
    for a, b in zip(params(resumed, 1), params(full, 1)):
        np.testing.assert_array_equal(a, b)

    def no_training(self, *args):
        raise AssertionError("a finished workdir trained again")

    monkeypatch.setattr(PopulationRunner, "__call__", no_training)
    assert run().rows == full.rows  # restored, not retrained


@pytest.mark.slow  # about 20 s on 2 shared cores: the replayed chunk compiles the per-step isolated step
def test_a_diverging_adda_member_is_isolated_not_fatal(stage1, full):
    full, _ = full
    result = adda(STAGE, target=TARGET, source=stage1, learning_rate=[1e-3, 1e38], verbose=False)
    healthy, broken = result.rows
    assert broken["diverged_step"] is not None and healthy["diverged_step"] is None
    assert result.stage.members[1]["diverged_step"] == broken["diverged_step"]
    assert all(np.isfinite(a).all() for a in params(result, 1))  # frozen at its last finite state
    for a, b in zip(params(result, 0), params(full, 0)):  # the other member trains as if alone
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert healthy["target_accuracy"] == pytest.approx(full.rows[0]["target_accuracy"], abs=1e-6)
    assert select_member(result)["member"] == 0


@pytest.mark.slow  # its fixtures train (a refusal itself compiles nothing)
def test_adda_workdir_refuses_other_inputs(stage1, full):
    _, workdir = full
    state = stage1.population.states[0]
    moved = state.replace(members=state.members.replace(params=jax.tree.map(lambda a: a * 1.01, state.members.params)))
    other_source = dataclasses.replace(stage1, population=dataclasses.replace(stage1.population, states=[moved]))
    with pytest.raises(ValueError, match=r"other adda inputs \(source[.\[:]"):
        adda(STAGE, target=TARGET, source=other_source, learning_rate=1e-3, workdir=workdir, verbose=False)
    with pytest.raises(ValueError, match=r"other adda inputs \(learning_rates\[0\]: stored 0\.001, now 0\.002"):
        adda(STAGE, target=TARGET, source=stage1, learning_rate=2e-3, workdir=workdir, verbose=False)
    other = {"train": TARGET["train"][0][::-1].copy(), "test": TARGET["test"]}
    with pytest.raises(ValueError, match=r"other adda inputs \(target[.\[:]"):
        adda(STAGE, target=other, source=stage1, learning_rate=1e-3, workdir=workdir, verbose=False)


def test_adda_learning_rates_are_checked_before_compiling():
    two = [{"seed": 0}, {"seed": 1}]
    with pytest.raises(ValueError, match=r"learning_rate has value 'a sequence of 3'; allowed: one number, or 2"):
        adda(STAGE, two, target=TARGET, learning_rate=[1e-3] * 3, verbose=False)
    with pytest.raises(ValueError, match="learning_rate has value 0.0"):
        adda(STAGE, two, target=TARGET, learning_rate=[1e-3, 0.0], verbose=False)
    with pytest.raises(ValueError, match="weight_clip has value 0.5"):
        adda(STAGE, two, target=TARGET, weight_clip=0.5, verbose=False)


def test_adapt_workdir_holding_other_target_inputs_is_refused_before_compiling(tmp_path):
    from vhjax.train.workdir import record_inputs

    record_inputs(tmp_path, "adapt", {"target": TARGET["train"][0][::-1].copy()})
    digest = r"'<array float32\(400, 2\) \w+>'"
    with pytest.raises(ValueError, match=r"holds a run with other adapt inputs \(.*target: stored " + digest + ", now "):
        adapt(STAGE, [{}], target=TARGET, workdir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"holds a run with other adapt inputs"):  # stage 1 of adda: workdir/source
        record_inputs(tmp_path / "source", "adapt", {"target": None})
        adda(STAGE, [{}], target=TARGET, workdir=tmp_path, verbose=False)
