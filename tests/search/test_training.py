"""Objective kind (a): candidates trained as one population per generation; the CLI and the demo."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import vhjax
from vhjax import hardware
from vhjax.config import TrainConfig
from tests.forking import run_module
from vhjax.search import Categorical, Int, Space, TrainingObjective, candidate_to_member
from vhjax.search.training import complete_arch

CONFIG = TrainConfig(dataset="digits", model="masked_mlp", model_kwargs={"max_width": 16, "max_depth": 2},
                     train_split="train[:80%]", eval_split="train[80%:]", test_split="test",
                     learning_rate=1e-3, batch_size=32, steps=40, eval_every=40, seed=0)


def test_candidate_to_member_nests_dotted_names():
    member = candidate_to_member({"learning_rate": 0.1, "arch.depth": 2, "model_kwargs.widths": [4, 4],
                                  "optimizer_kwargs.b1": 0.8})
    assert member == {"learning_rate": 0.1, "arch": {"depth": 2}, "model_kwargs": {"widths": (4, 4)},
                      "optimizer_kwargs": {"b1": 0.8}}
    with pytest.raises(ValueError, match="'loss.weight'.*dotted names must start with"):
        candidate_to_member({"loss.weight": 1.0})


def test_complete_arch_fills_and_broadcasts():
    full = {"width": np.full(3, 64, np.int32), "depth": np.int32(3), "skip": np.zeros(3, np.int32)}
    arch = complete_arch({"width": 8, "skip": True}, full)
    assert arch["width"].tolist() == [8, 8, 8] and int(arch["depth"]) == 3 and arch["skip"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r"\['heads'\] unknown to the model"):
        complete_arch({"heads": 2}, full)


def test_search_trains_each_generation_as_a_population(tmp_path):
    calls = []

    class Counting(TrainingObjective):
        def evaluate(self, candidates):
            calls.append(len(candidates.params))
            return super().evaluate(candidates)

    space = Space({"learning_rate": Categorical((1e-6, 3e-2)), "arch.depth": Int(1, 2)})
    objective = Counting(CONFIG, workdir=tmp_path / "training")
    result = vhjax.search(objective, space, "grid", budget=4, population=4, workdir=tmp_path, verbose=False)
    assert calls == [4]  # one population for the whole generation
    assert result.best_params["learning_rate"] == 3e-2  # the learning rate really varies per member
    assert result.best_fitness > 0.5 and result.best_metrics["test_accuracy"] is not None
    assert (tmp_path / "training" / "generation_0000" / "result.json").exists()
    again = vhjax.search(objective, space, "grid", budget=4, population=4, workdir=tmp_path, verbose=False)
    assert calls == [4] and len(again.trials) == 4  # resumed: nothing recomputed


def test_diverging_member_is_a_failed_trial_and_the_search_goes_on():
    space = Space({"learning_rate": Categorical((1e-2, 1e12))})
    result = vhjax.search(TrainingObjective(CONFIG), space, "grid", budget=2, population=2, verbose=False)
    status = {t.params["learning_rate"]: t.status for t in result.trials}
    assert status == {1e-2: "complete", 1e12: "failed"}
    assert result.best_params["learning_rate"] == 1e-2


def test_training_objective_fingerprint_is_its_training_config(tmp_path):
    import dataclasses

    short = TrainingObjective(dataclasses.replace(CONFIG, steps=8))
    assert TrainingObjective(CONFIG).fingerprint() == TrainingObjective(CONFIG).fingerprint()
    assert short.fingerprint()["config"]["steps"] == 8 != TrainingObjective(CONFIG).fingerprint()["config"]["steps"]
    space = Space({"learning_rate": Categorical((1e-2,))})
    vhjax.search(short, space, "grid", budget=1, verbose=False, workdir=tmp_path)
    with pytest.raises(ValueError, match="different search configuration.*objective"):
        vhjax.search(TrainingObjective(CONFIG), space, "grid", budget=2, verbose=False, workdir=tmp_path)


def test_two_datasets_of_the_same_shape_are_different_objectives(tmp_path):
    """Arrays in a config are described by dtype, shape and a digest of their contents: a stored
    search (or a workdir) is not resumed with other data of the same shape."""
    import dataclasses

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 64)).astype(np.float32), (np.arange(60) % 10).astype(np.int32)
    first = dataclasses.replace(CONFIG, dataset={"train": (x, y), "test": (x, y)}, eval_split="test",
                                train_split="train", test_split=None)
    other = dataclasses.replace(first, dataset={"train": (x + 1.0, y), "test": (x, y)})
    same = dataclasses.replace(first, dataset={"train": (x.copy(), y.copy()), "test": (x.copy(), y.copy())})
    assert TrainingObjective(first).fingerprint() == TrainingObjective(same).fingerprint()
    assert TrainingObjective(first).fingerprint() != TrainingObjective(other).fingerprint()
    space = Space({"learning_rate": Categorical((1e-2,))})
    vhjax.search(TrainingObjective(first), space, "grid", budget=1, verbose=False, workdir=tmp_path)
    with pytest.raises(ValueError, match="different search configuration.*objective"):
        vhjax.search(TrainingObjective(other), space, "grid", budget=1, verbose=False, workdir=tmp_path)


def test_bad_objective_config_fails_before_training():
    with pytest.raises(ValueError, match="split 'val'"):
        TrainingObjective(CONFIG, split="val")


def run_cli(argv: list[str], folder, name: str) -> str:
    """`python -m vhjax.cli ARGV` in a process forked from the tests' fork server (tests/forking.py);
    its standard output. It must exit with status 0."""
    done = run_module("vhjax.cli", argv, folder, name, __name__, "vhjax.cli", "matplotlib.backends.backend_agg")
    assert done.returncode == 0, f"vhjax.cli {argv} exited with {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def test_cli_search_spec_and_demo(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent("""
        from vhjax.config import TrainConfig
        from vhjax.search import Float, Space, TrainingObjective
        from tests.datasets import tiny_classification  # not the digits: no second spent loading them

        def get_search():
            config = TrainConfig(dataset=tiny_classification(), model="mlp",
                                 model_kwargs={"widths": (8,), "num_classes": 10}, batch_size=32, steps=20,
                                 eval_every=20)
            return dict(objective=TrainingObjective(config), space=Space({"learning_rate": Float(1e-3, 1e-1, log=True)}),
                        strategy="random", budget=4, population=2)
    """))
    out = run_cli(["search", str(spec), "--budget", "2", "--quiet", "--workdir", str(tmp_path / "s")], tmp_path, "search")
    assert "| rank | trial_id | params.learning_rate | fitness |" in out
    assert (tmp_path / "s" / "trials.sqlite").exists() and (tmp_path / "s" / "best_so_far.png").exists()
    demo = run_cli(["demo", "--budget", "4", "--population", "2", "--steps", "9", "--workdir", str(tmp_path / "d")],
                   tmp_path, "demo")
    assert "trials' worth" in demo and "| rank | trial | arch.depth |" in demo and "best trial" in demo
    cores = hardware.cpu_cores()  # --cpu-devices auto: one CPU device per core, the slots sharded over them
    assert (f"2 slots on {cores} cpu devices (members sharded" if cores > 1 else "2 slots on 1 cpu device") in demo
    assert float(demo.split(" trials' worth")[-2].split("compute ")[-1].split("/")[0]) >= 4  # the budget is spent
    assert (tmp_path / "d" / "study.db").exists()


def test_cli_refuses_a_bad_cpu_device_count_by_name(capsys):
    from vhjax.cli import main

    assert main(["demo", "--cpu-devices", "none", "--budget", "1"]) == 2  # before anything compiles
    assert "--cpu-devices: count has value 'none'; allowed: a positive int or 'auto'" in capsys.readouterr().err
    import jax

    jax.devices()  # JAX runs already, so 'auto' keeps this worker's devices
    assert main(["demo", "--cpu-devices", "auto", "--timeout", "-5"]) == 2  # tune refuses it first thing
    assert "timeout has value -5.0; allowed: a finite number > 0" in capsys.readouterr().err


def _candidates(objective, params, generation, trial_ids, fidelity, parents):
    import jax

    from vhjax.search.driver import Candidates

    return Candidates(np.zeros((len(params), 1)), params, trial_ids, generation, jax.random.key(0),
                      fidelity=np.asarray(fidelity), parent_ids=parents)


@pytest.mark.parametrize("on_disk", [True, False])
def test_promoted_candidate_continues_from_its_parent(tmp_path, on_disk):
    """A child with a parent trains only the missing steps, and equals the parent's run trained on."""
    import dataclasses

    config = dataclasses.replace(CONFIG, steps=30, eval_every=10, weight_decay=1e-4)
    workdir = tmp_path / "continued" if on_disk else None
    objective = TrainingObjective(config, workdir=workdir)
    params = [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}]
    first = objective.evaluate(_candidates(objective, params, 0, [0, 1], [10, 10], [None, None]))
    assert first["trained_steps"].tolist() == [10, 10]
    promoted = objective.evaluate(_candidates(objective, params[1:], 1, [2], [30], [1]))
    assert promoted["trained_steps"].tolist() == [20]  # from step 10 to 30, not from scratch
    straight = TrainingObjective(config).evaluate(_candidates(objective, params, 0, [0, 1], [30, 30], [None, None]))
    np.testing.assert_allclose(promoted["accuracy"][0], straight["accuracy"][1], atol=1e-6)
    np.testing.assert_allclose(promoted["loss"][0], straight["loss"][1], rtol=1e-5)
    assert promoted["accuracy"][0] != first["accuracy"][1] or promoted["loss"][0] < first["loss"][1]
    if on_disk:  # saved per trial, so a resumed search in another process finds them
        assert sorted(p.name for p in (workdir / "trial_states").iterdir()) == [
            "trial_000000.npz", "trial_000001.npz", "trial_000002.npz"]
        again = TrainingObjective(config, workdir=workdir)
        assert again._parent_step(1, again._signature(config, params[1]), 30) == 10


def test_child_with_another_static_config_or_no_parent_state_trains_from_scratch(tmp_path):
    objective = TrainingObjective(CONFIG)
    base = {"learning_rate": 3e-3}
    objective.evaluate(_candidates(objective, [base], 0, [0], [20], [None]))
    wider = {**base, "model_kwargs": {"max_width": 8, "max_depth": 2}}  # other shapes: a new bucket
    out = objective.evaluate(_candidates(objective, [wider, base, base], 1, [1, 2, 3], [40, 40, 40], [0, 7, 0]))
    assert out["trained_steps"].tolist() == [40, 40, 20]  # parent 7 was never trained
    unlinked = TrainingObjective(CONFIG, continue_from_parent=False, workdir=tmp_path / "unlinked")
    assert unlinked.evaluate(_candidates(objective, [base], 0, [0], [20], [None]))["trained_steps"].tolist() == [20]
    assert unlinked.evaluate(_candidates(objective, [base], 1, [1], [40], [0]))["trained_steps"].tolist() == [40]
    assert not (tmp_path / "unlinked" / "trial_states").exists()  # nothing kept that nothing reads


def test_pbt_strategy_children_continue_from_their_parents():
    """PBT through the search driver: every round trains `interval` more steps, never from step 0."""
    import dataclasses

    config = dataclasses.replace(CONFIG, steps=60, eval_every=20)
    space = Space({"learning_rate": Categorical((1e-3, 3e-3, 1e-2))})
    result = vhjax.search(TrainingObjective(config), space, "pbt", budget=8, population=4, verbose=False,
                          strategy_kwargs={"population_size": 4, "interval": 10})
    rounds = sorted({t.fidelity for t in result.trials})
    assert rounds == [10.0, 20.0]
    assert all(t.metrics["trained_steps"] == 10 for t in result.trials)  # round 2 continued: 10 steps, not 20
    assert all(t.parent_id is not None for t in result.trials if t.fidelity == 20.0)
