"""Every feature through every training entry: fit, fit_population, fit_pbt and fit_kfold all run
on the one loop, so early stopping, plateau, resume after a kill, augmentation strengths, loss
weights and metrics logging must work in each (the search entries: tests/test_search_training.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.population import fit, fit_kfold, fit_pbt, fit_population
from tests.forking import run_script
from tests.xla_flags import xla_flags

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     learning_rate=3e-3, batch_size=32, steps=40, eval_every=10, seed=0)
PAIR = [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}]


def run_entry(entry: str, config: TrainConfig, workdir: Path | None, members=None):
    """Run one entry; returns its final eval metrics per member (a list of dicts)."""
    members = members if members is not None else PAIR
    if entry == "fit":
        return [fit(config, workdir, verbose=False).metrics["eval"]]
    if entry == "fit_population":
        return [m["eval"] for m in fit_population(config, members, workdir, verbose=False).members]
    if entry == "fit_pbt":
        result = fit_pbt(config, members, {"learning_rate": (1e-4, 1e-1, True)}, interval=config.eval_every,
                         workdir=workdir, verbose=False)
        return [m["eval"] for m in result.members]
    if entry == "fit_kfold":
        result = fit_kfold(config, members[:1], k=2, workdir=workdir, verbose=False)
        return [{name: values[0] for name, values in result.candidates[0]["folds"].items()}]
    raise AssertionError(entry)


def pbt_first_round(config: TrainConfig, members) -> list[float]:
    """fit_pbt's scores (the evaluation loss: Adam's steps barely change when the loss is scaled,
    the accuracy may not move) at its first round, before any member copied another (which may
    make two populations end alike)."""
    result = fit_pbt(config, members, {"learning_rate": (1e-4, 1e-1, True)}, interval=config.eval_every,
                     metric="loss", verbose=False)
    return list(result.history[0]["score"])


def log_rows(workdir: Path) -> list[dict]:
    rows = []
    for path in sorted(workdir.rglob("metrics.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


ENTRIES = ("fit", "fit_population", "fit_pbt", "fit_kfold")


@pytest.mark.parametrize("entry", ENTRIES)
def test_metrics_are_logged_at_every_evaluation(entry, tmp_path):
    run_entry(entry, CONFIG, tmp_path)
    rows = log_rows(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "eval"] == [10, 20, 30, 40]
    assert [r["step"] for r in rows if r["split"] == "train"] == [10, 20, 30, 40]
    assert all("loss" in r and "accuracy" in r for r in rows if r["split"] == "eval")


@pytest.mark.parametrize("entry", ENTRIES)
def test_early_stopping_ends_the_run(entry, tmp_path):
    # the loss monitored in 'max' mode: every evaluation after the first is "worse"
    config = dataclasses.replace(CONFIG, patience=1, monitor="loss", monitor_mode="max")
    run_entry(entry, config, tmp_path)
    assert [r["step"] for r in log_rows(tmp_path) if r["split"] == "eval"] == [10, 20]


@pytest.mark.parametrize("entry", ENTRIES)
def test_plateau_scales_the_learning_rate(entry, tmp_path):
    config = dataclasses.replace(CONFIG, plateau_patience=1, plateau_factor=0.5, monitor="loss", monitor_mode="max")
    run_entry(entry, config, tmp_path)
    scales = [np.min(r["learning_rate_scale"]) for r in log_rows(tmp_path) if r["split"] == "train"]
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.125)


@pytest.mark.parametrize("entry", ENTRIES)
def test_resume_after_a_kill_gives_the_same_result(entry, tmp_path, run_interrupted):
    full = run_entry(entry, CONFIG, tmp_path / "full")
    run_interrupted(lambda: run_entry(entry, CONFIG, tmp_path / "cut"), at_step=20)
    resumed = run_entry(entry, CONFIG, tmp_path / "cut")
    assert resumed == full
    assert [r["step"] for r in log_rows(tmp_path / "cut") if r["split"] == "eval"] == [10, 20, 30, 40]


@pytest.mark.parametrize("entry", ENTRIES)
def test_augmentation_strength_changes_training(entry):
    augment = ({"name": "gaussian_noise", "strength": 0.0},)
    config = dataclasses.replace(CONFIG, augment=augment, steps=20)
    members = [{"learning_rate": 3e-3, "augment": [{"name": "gaussian_noise", "strength": s}]} for s in (0.0, 0.0)]
    noisy_members = [{"learning_rate": 3e-3, "augment": [{"name": "gaussian_noise", "strength": s}]} for s in (0.0, 0.9)]
    if entry == "fit_pbt":  # members copy each other: compare the first round, before any copy
        plain, noisy = pbt_first_round(config, members), pbt_first_round(config, noisy_members)
        assert noisy[0] == plain[0] and noisy[1] != plain[1]
        return
    plain = run_entry(entry, config, None, members)
    noisy_config = dataclasses.replace(config, augment=({"name": "gaussian_noise", "strength": 0.9},))
    noisy = run_entry(entry, noisy_config if entry in ("fit", "fit_kfold") else config, None,
                      noisy_members if entry != "fit_kfold" else [noisy_members[1]])
    if entry in ("fit", "fit_kfold"):
        assert noisy[0]["loss"] != plain[0]["loss"]
    else:  # member 0 is unchanged, member 1 trains on noisy inputs in the same program
        assert noisy[0] == plain[0] and noisy[1]["loss"] != plain[1]["loss"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_loss_weights_per_member(entry):
    config = dataclasses.replace(CONFIG, steps=20, loss_weights={"cross_entropy": 1.0})
    members = [{"learning_rate": 3e-3, "loss_weights": {"cross_entropy": w}} for w in (1.0, 1.0)]
    weighted = [{"learning_rate": 3e-3, "loss_weights": {"cross_entropy": w}} for w in (1.0, 0.1)]
    if entry == "fit_pbt":  # members copy each other: compare the first round, before any copy
        same, other = pbt_first_round(config, members), pbt_first_round(config, weighted)
        assert other[0] == same[0] and other[1] != same[1]
        return
    same = run_entry(entry, config, None, members)
    members = weighted
    weighted_config = dataclasses.replace(config, loss_weights={"cross_entropy": 0.1})
    other = run_entry(entry, weighted_config if entry in ("fit", "fit_kfold") else config, None,
                      members if entry != "fit_kfold" else [members[1]])
    if entry in ("fit", "fit_kfold"):
        assert other[0]["accuracy"] != same[0]["accuracy"] or other[0]["loss"] != same[0]["loss"]
    else:
        assert other[0] == same[0] and other[1]["loss"] != same[1]["loss"]


def test_every_entry_takes_a_mesh_and_any_population_size(tmp_path):
    """2 forced CPU devices; populations of 1, 2 and 3 members (padded with inert members); the
    search entries (search, multi-fidelity, tune) too."""
    import textwrap

    # one child with 2 devices runs both modes, the mesh over them and then no mesh (what a second
    # child would run): the programs they share (initialisation, small helpers) compile once
    script = textwrap.dedent("""
        import json, sys
        from vhjax.parallel import population_mesh
        from vhjax.population import fit, fit_kfold, fit_pbt, fit_population
        import dataclasses
        from tests.datasets import tiny_classification
        from tests.population.test_entries import CONFIG, PAIR
        CONFIG = dataclasses.replace(CONFIG, steps=20, dataset=tiny_classification())  # no second loading the digits
        three = PAIR + [{"learning_rate": 5e-3}]
        for mode in sys.argv[1:]:
            mesh = population_mesh() if mode == "mesh" else None
            out = {
                "fit": fit(CONFIG, mesh=mesh, verbose=False).metrics["eval"]["loss"],
                "fit_population": [m["eval"]["loss"]
                                   for m in fit_population(CONFIG, three, mesh=mesh, verbose=False).members],
                "fit_pbt": [m["eval"]["loss"] for m in fit_pbt(CONFIG, three, {"learning_rate": (1e-4, 1e-1, True)},
                                                              interval=10, mesh=mesh, verbose=False).members],
                "fit_kfold": fit_kfold(CONFIG, PAIR[:1], k=3, mesh=mesh, verbose=False).candidates[0]["folds"]["loss"],
            }
            # the search entries train through the same loop: a generation of 3 on the mesh, a
            # multi-fidelity search, and tune's running population of 3 slots (padded to 4)
            import vhjax
            from vhjax.search import Categorical, Space, TrainingObjective, search_multifidelity, tune
            space = Space({"learning_rate": Categorical((3e-3, 5e-3, 1e-2))})
            objective = TrainingObjective(CONFIG, metric="loss", mesh=mesh)
            found = vhjax.search(objective, space, "grid", budget=3, population=3, direction="minimize", verbose=False)
            out["search"] = sorted(t.fitness for t in found.trials)
            halving = search_multifidelity(objective, space, "successive_halving", min_budget=10, max_budget=20,
                                           max_trials=5, population=3, eta=2, generator="grid", direction="minimize",
                                           verbose=False)
            out["multifidelity"] = sorted(t.fitness for t in halving.trials)
            tuned = tune(CONFIG, space, trials=3, population=3, min_steps=10, metric="loss", direction="minimize",
                         sampler="random", pruner="none", mesh=mesh, verbose=False)
            out["tune"] = sorted(row["value"] for row in tuned.timeline)
            print(mode, json.dumps(out))
    """)
    code, output = run_script(script, ["mesh", "single"], {"XLA_FLAGS": xla_flags(devices=2)}, tmp_path / "output")
    assert code == 0, output[-3000:]
    outputs = dict(line.split(" ", 1) for line in output.splitlines() if line.startswith(("mesh {", "single {")))
    outputs = {mode: json.loads(line) for mode, line in outputs.items()}
    assert sorted(outputs) == ["mesh", "single"], output[-3000:]
    for entry in (*ENTRIES, "search", "multifidelity", "tune"):
        np.testing.assert_allclose(outputs["mesh"][entry], outputs["single"][entry], rtol=1e-4)


def test_a_data_axis_splits_each_members_batch(tmp_path):
    """4 forced devices as members=2 x data=2: each member's batch is split over 2 devices and its
    gradient reduced across them (an all-reduce in the program); results equal one device."""
    import textwrap

    # one child with the 4 devices runs both modes in turn (the programs they share compile once)
    script = textwrap.dedent("""
        import json, sys
        import jax, jax.numpy as jnp
        from vhjax.parallel import mesh_from_spec
        from vhjax.population import fit_population, init_population
        from vhjax.population.fit import bucket_task, compiled_programs
        import dataclasses
        from tests.datasets import tiny_classification
        from tests.population.test_entries import CONFIG, PAIR
        CONFIG = dataclasses.replace(CONFIG, dataset=tiny_classification())  # no second loading the digits
        for mode in sys.argv[1:]:
            mesh = mesh_from_spec("members=2,data=2") if mode == "mesh" else None
            result = fit_population(CONFIG, PAIR, mesh=mesh, verbose=False)
            hlo = ""
            if mesh is not None:
                task = bucket_task(CONFIG, ["learning_rate"])
                runner, _ = compiled_programs(task, None, mesh=mesh)
                from vhjax import parallel
                population = parallel.shard_members(init_population(task, 2, {"learning_rate": [3e-3, 1e-2]}), mesh)
                data = parallel.replicate((jnp.asarray(task.train.x), jnp.asarray(task.train.y)), mesh)
                hlo = runner._free_chunk.lower(population, data, 2, 2).compile().as_text()
            print(mode, json.dumps({"loss": [m["eval"]["loss"] for m in result.members],
                                    "all_reduce": "all-reduce" in hlo}))
    """)
    code, output = run_script(script, ["mesh", "single"], {"XLA_FLAGS": xla_flags(devices=4)}, tmp_path / "output")
    assert code == 0, output[-3000:]
    outputs = dict(line.split(" ", 1) for line in output.splitlines() if line.startswith(("mesh {", "single {")))
    outputs = {mode: json.loads(line) for mode, line in outputs.items()}
    assert sorted(outputs) == ["mesh", "single"], output[-3000:]
    assert outputs["mesh"]["all_reduce"]
    np.testing.assert_allclose(outputs["mesh"]["loss"], outputs["single"]["loss"], rtol=1e-4)


def test_a_bucket_program_gives_each_bucket_its_runner_data_and_member_extras():
    """`fit_population(program=...)` (the seam `vhjax.transfer.distill` and `adapt` train through):
    called once per bucket with its member indices; its runner and training data are the ones
    trained with, its extras join each member's record config; the classifier's own runner and data
    passed this way train exactly as without a program."""
    from vhjax.population.fit import BucketProgram, compiled_programs

    import jax.numpy as jnp

    members = [{"learning_rate": 3e-3}, {"batch_size": 16}, {"learning_rate": 1e-2}]
    calls, chunks = [], []

    def program(task, population, indices):
        run_chunk, _ = compiled_programs(task, None)
        calls.append(list(indices))

        def runner(population, data, length):
            chunks.append(length)
            return run_chunk(population, data, length)

        return BucketProgram(population, runner=runner,
                             train_data=(jnp.asarray(task.train.x), jnp.asarray(task.train.y)),
                             extras=[{"tag": i} for i in indices])

    seamed = fit_population(CONFIG, members, verbose=False, mesh=None, member_group=None, program=program)
    plain = fit_population(CONFIG, members, verbose=False, mesh=None, member_group=None)
    assert calls == [[0, 2], [1]] and sum(chunks) == 2 * CONFIG.steps
    assert [m["config"] for m in seamed.members] == [{**m, "tag": i} for i, m in enumerate(members)]
    for a, b in zip(seamed.members, plain.members):
        assert a["eval"] == b["eval"] and a["bucket"] == b["bucket"] and a["position"] == b["position"]
    with pytest.raises(ValueError, match="extras"):
        fit_population(CONFIG, members[:1], verbose=False, mesh=None,
                       program=lambda task, population, indices: BucketProgram(population, extras=[{}, {}]))
