"""Population engine: members in one program, isolation, buckets, exploit/explore, resume, sharding."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.population import (classifier_runner, copy_members, fit_population, get_member_hparams, init_population,
                              new_population, perturb, resample, set_member_hparams, truncation_sources)
from vhjax.train import build_task
from tests.xla_flags import xla_flags

BASE = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                   learning_rate=3e-3, batch_size=32, steps=60, eval_every=30, seed=0)


@pytest.fixture(scope="module")
def task():
    return build_task(BASE)


@pytest.fixture(scope="module")
def data(task):
    return jnp.asarray(task.train.x), jnp.asarray(task.train.y)


def run(task, population, data, steps):
    return classifier_runner(task)(population, data, steps)[0]


def run_checked_every_step(task, population, data, steps):
    return classifier_runner(task, isolation="per_step")(population, data, steps)


def run_alone(task, member, data, steps):
    """One member trained as a population of one, on its own data key."""
    alone = new_population(jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], member), same_batches=False)
    trained, _ = classifier_runner(task)(alone, data, steps)
    return jax.tree.map(lambda leaf: leaf[0], trained.members)


def test_members_match_their_own_single_runs(task, data):
    from vhjax.train.task import with_member_hparams

    task = with_member_hparams(task, ["l2"])  # traced L2 coefficients (the config's is a static 0)
    population = init_population(task, 3, {"learning_rate": [1e-3, 3e-3, 1e-2], "l2": [0.0, 1e-3, 0.0]})
    members = [jax.tree.map(lambda leaf: leaf[i], population.members) for i in range(3)]
    trained = run(task, population, data, 5)
    for i in range(3):
        member = run_alone(task, members[i], data, 5)
        for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(jax.tree.map(lambda l: l[i], trained.members.params))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    first, last = (np.asarray(jax.tree.leaves(trained.members.params)[0])[i] for i in (0, 2))
    assert not np.allclose(first, last)


def test_diverging_member_is_isolated_bit_for_bit(task, data):
    healthy = init_population(task, 3, {"learning_rate": [1e-3, 2e-3, 3e-3]})
    broken = init_population(task, 3, {"learning_rate": [1e-3, 1e30, 3e-3]})
    healthy, broken = run(task, healthy, data, 6), run(task, broken, data, 6)
    assert broken.alive.tolist() == [True, False, True]
    assert 1 <= int(broken.diverged_step[1]) <= 6 and np.asarray(broken.diverged_step)[[0, 2]].tolist() == [-1, -1]
    for a, b in zip(jax.tree.leaves(healthy.members.params), jax.tree.leaves(broken.members.params)):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])
        assert np.isfinite(np.asarray(b)[1]).all()  # frozen at its last finite state


def test_optimistic_chunks_equal_checking_every_step(task, data):
    hparams = {"learning_rate": [1e-3, 1e30, 3e-3, 2e-3]}
    start = lambda: init_population(task, 4, hparams, same_batches=False)
    checked, checked_metrics = run_checked_every_step(task, start(), data, 6)
    for chunk in (None, 2):  # all members at once, and groups of two trained one after the other
        optimistic, metrics = classifier_runner(task, chunk)(start(), data, 6)
        assert optimistic.diverged_step.tolist() == checked.diverged_step.tolist()
        assert optimistic.alive.tolist() == [True, False, True, True]
        for a, b in zip(jax.tree.leaves(checked.members), jax.tree.leaves(optimistic.members)):
            if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.asarray(metrics["loss"])[:, [0, 2, 3]],
                                      np.asarray(checked_metrics["loss"])[:, [0, 2, 3]])


def test_frozen_member_stays_frozen_in_later_chunks(task, data):
    runner = classifier_runner(task)
    population, _ = runner(init_population(task, 3, {"learning_rate": [1e-3, 1e30, 3e-3]}),
                           data, 6)
    frozen = jax.tree.map(lambda leaf: np.asarray(leaf)[1], population.members.params)
    diverged_at = int(population.diverged_step[1])
    before = np.asarray(jax.tree.leaves(population.members.params)[0])[0].copy()
    assert runner.replayed_chunks == 1
    population, metrics = runner(population, data, 5)
    assert runner.replayed_chunks == 1  # no live member diverged: the optimistic chunk stands
    assert not bool(population.alive[1]) and int(population.diverged_step[1]) == diverged_at
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(population.members.params)):
        np.testing.assert_array_equal(a, np.asarray(b)[1])
    assert np.isnan(np.asarray(metrics["loss"])[:, 1]).all()  # no metrics for a frozen member
    assert np.isfinite(np.asarray(metrics["loss"])[:, [0, 2]]).all()
    assert not np.array_equal(before, np.asarray(jax.tree.leaves(population.members.params)[0])[0])


def test_a_chunk_trains_only_its_active_steps_in_the_program_of_its_full_length(task, data):
    from vhjax.compilation_cache import count_compilations

    hparams = {"learning_rate": [1e-3, 1e30, 3e-3]}  # member 1 diverges within the first steps
    runner = classifier_runner(task)
    with count_compilations() as seen:
        part, part_metrics = runner(init_population(task, 3, hparams), data, 8, active=5)
        runner(init_population(task, 3, hparams), data, 8)
    assert seen.by_function["jit(run_free)"] == 1  # 5 of 8 steps: the 8-step program
    alone, alone_metrics = classifier_runner(task)(init_population(task, 3, hparams), data, 5)
    assert np.asarray(part.members.step)[[0, 2]].tolist() == [5, 5]
    assert part.alive.tolist() == [True, False, True] and part.diverged_step.tolist() == alone.diverged_step.tolist()
    for a, b in zip(jax.tree.leaves(part.members.params), jax.tree.leaves(alone.members.params)):
        np.testing.assert_allclose(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]], rtol=1e-5, atol=1e-6)
    loss = np.asarray(part_metrics["loss"])
    assert loss.shape == (8, 3) and np.isnan(loss[5:]).all()  # rows of the steps not run
    np.testing.assert_allclose(loss[:5, [0, 2]], np.asarray(alone_metrics["loss"])[:, [0, 2]], rtol=1e-5)
    with pytest.raises(ValueError, match="active has value 9; allowed: 1..8"):
        runner(init_population(task, 3, hparams), data, 8, active=9)


def test_without_a_traced_loop_bound_a_chunk_is_a_scan_of_its_length(task, data, monkeypatch):
    """As on GPUs (`traced_loop_bound`): full chunks train as before, a shorter one is refused."""
    from vhjax.population import engine
    from vhjax.population.loop import run_chunk

    hparams = {"learning_rate": [1e-3, 3e-3]}
    traced, _ = classifier_runner(task)(init_population(task, 2, hparams), data, 4)
    monkeypatch.setattr(engine, "traced_loop_bound", lambda: False)
    runner = classifier_runner(task)
    assert not runner.accepts_active_steps
    scanned, metrics = runner(init_population(task, 2, hparams), data, 4)
    assert np.isfinite(np.asarray(metrics["loss"])).all() and np.asarray(scanned.members.step).tolist() == [4, 4]
    for a, b in zip(jax.tree.leaves(traced.members.params), jax.tree.leaves(scanned.members.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="active has value 3; allowed on cpu: 4"):
        runner(init_population(task, 2, hparams), data, 4, active=3)
    short, metrics = run_chunk(runner, init_population(task, 2, hparams), data, 3, full=4)  # its own program
    assert metrics["loss"].shape == (3, 2) and np.asarray(short.members.step).tolist() == [3, 3]


def test_same_batches_option(task):
    same = init_population(task, 3, same_batches=True)
    own = init_population(task, 3, same_batches=False)
    same_keys = jax.random.key_data(same.members.data_key)
    own_keys = jax.random.key_data(own.members.data_key)
    assert (same_keys == same_keys[0]).all()
    assert len({tuple(np.asarray(k).ravel()) for k in own_keys}) == 3


@pytest.mark.parametrize("hparams,match", [
    ({"learning_rate": [1e-3, 1e-3]}, r"'learning_rate' has shape \(2,\); allowed: \(3,\)"),
    ({"learnin_rate": 1e-3}, "unknown hyperparameter 'learnin_rate'; known for this task: .*learning_rate"),
    ({"learning_rate": [1e-3, 1e-3, -1.0]}, "member 2: hyperparameter 'learning_rate' has value"),
    ({"dropout_rate": [0.0, 1.5, 0.0]}, "member 1: hyperparameter 'dropout_rate'"),
])
def test_bad_hyperparameters_fail_before_compiling(task, hparams, match):
    with pytest.raises(ValueError, match=match):
        init_population(task, 3, hparams)


def test_exploit_explore_primitives(task, data):
    from vhjax.train.task import with_member_hparams

    population = init_population(with_member_hparams(task, ["l2"]), 4,
                                 {"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3]})
    population = run(task, population, data, 2)
    copied = jax.jit(copy_members)(population, jnp.array([3, 1, 2, 3]))
    leaf = lambda p: np.asarray(jax.tree.leaves(p.members.params)[0])
    np.testing.assert_array_equal(leaf(copied)[0], leaf(population)[3])
    np.testing.assert_array_equal(leaf(copied)[1], leaf(population)[1])
    assert np.allclose(get_member_hparams(copied)["learning_rate"], [4e-3, 2e-3, 3e-3, 4e-3])
    keys = jax.random.key_data(copied.members.key)
    assert not np.array_equal(keys[0], keys[3])  # a copy keeps its own randomness

    changed = set_member_hparams(copied, learning_rate=jnp.array([1.0, 2.0, 3.0, 4.0]), l2=jnp.full(4, 0.5))
    assert np.allclose(get_member_hparams(changed)["learning_rate"], [1, 2, 3, 4])
    assert np.allclose(changed.members.hparams["l2"], 0.5)

    values = jnp.ones(1000)
    perturbed = perturb(jax.random.key(0), values)
    np.testing.assert_allclose(np.unique(np.round(np.asarray(perturbed), 3)), [0.8, 1.2])
    redrawn = resample(jax.random.key(0), values, 10.0, 20.0, probability=0.25)
    fraction = float(jnp.mean(redrawn != 1.0))
    assert 0.18 < fraction < 0.32 and float(redrawn.max()) <= 20.0

    sources = truncation_sources(jax.random.key(0), jnp.array([0.1, 0.9, jnp.nan, 0.5, 0.8, 0.2, 0.7, 0.3]), 0.25)
    sources = np.asarray(sources)
    assert set(sources[[2, 0]]) <= {1, 4}  # the NaN member and the worst copy the top two
    assert (sources[[1, 3, 4, 5, 6, 7]] == [1, 3, 4, 5, 6, 7]).all()


def test_fit_population_buckets_and_leaderboard(tmp_path):
    members = [
        {"learning_rate": 1e-2, "model_kwargs": {"widths": (16,), "num_classes": 10}},
        {"learning_rate": 1e-5, "model_kwargs": {"widths": (16,), "num_classes": 10}},
        {"learning_rate": 3e-3, "model_kwargs": {"widths": (8, 8), "num_classes": 10}},
    ]
    result = fit_population(BASE, members, tmp_path, verbose=False)
    assert [m["bucket"] for m in result.members] == [0, 0, 1]
    assert len(result.states) == 2 and result.states[0].size == 2
    good, tiny_lr = result.members[0]["eval"]["accuracy"], result.members[1]["eval"]["accuracy"]
    assert good > 0.7 and good > tiny_lr + 0.2  # the learning rate really varies inside the bucket
    assert result.best()["member"] in (0, 2)
    table = result.table()
    assert table.splitlines()[2].startswith("| 1 |") and "learning_rate" in table
    assert json.loads((tmp_path / "result.json").read_text())[1]["member"] == 1


def test_fit_population_resumes(tmp_path, run_interrupted):
    members = [{"learning_rate": lr, "l2": l2} for lr, l2 in [(1e-3, 0.0), (3e-3, 1e-3)]]
    config = dataclasses.replace(BASE, steps=90)
    full = fit_population(config, members, tmp_path / "full", verbose=False)
    run_interrupted(lambda: fit_population(config, members, tmp_path / "cut", verbose=False))
    resumed = fit_population(config, members, tmp_path / "cut", verbose=False)
    assert [m["eval"] for m in resumed.members] == [m["eval"] for m in full.members]
    stored = r"\(members: stored \[\{'learning_rate': 0\.001, 'l2': 0\.0\}, \{"  # 2 members then, 1 now: the lists
    with pytest.raises(ValueError, match="other members " + stored):
        fit_population(config, members[:1], tmp_path / "cut", verbose=False)


def test_per_step_isolation_gives_the_same_population(tmp_path):
    members = [{"learning_rate": lr} for lr in (1e-3, 1e30, 3e-3)]
    optimistic = fit_population(BASE, members, verbose=False)
    per_step = fit_population(BASE, members, verbose=False, isolation="per_step")
    assert [m["diverged_step"] for m in per_step.members] == [m["diverged_step"] for m in optimistic.members]
    assert per_step.members[1]["diverged_step"] is not None
    for a, b in zip(jax.tree.leaves(optimistic.states[0].members.params), jax.tree.leaves(per_step.states[0].members.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="isolation has value 'sometimes'; allowed: one of 'optimistic', 'per_step'"):
        fit_population(BASE, members, isolation="sometimes", verbose=False)


def test_reduce_on_plateau_per_member_survives_a_resume(tmp_path, run_interrupted):
    config = dataclasses.replace(BASE, steps=90, eval_every=30, plateau_patience=1, plateau_factor=0.5)
    members = [{"learning_rate": 1e-7}, {"learning_rate": 3e-3}]  # member 0 cannot improve: a plateau
    full = fit_population(config, members, tmp_path / "full", verbose=False)
    rates = np.asarray(get_member_hparams(full.states[0])["learning_rate"])
    assert rates[0] == np.float32(1e-7) * np.float32(0.25)  # halved at the 2nd and 3rd evaluation
    assert rates[1] > rates[0] * 1000  # the other member keeps its own rate
    logged = [json.loads(line) for line in (tmp_path / "full" / "bucket_0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["learning_rate_scale"][0] for r in logged if "learning_rate_scale" in r] == [1.0, 0.5, 0.25]

    run_interrupted(lambda: fit_population(config, members, tmp_path / "cut", verbose=False), at_step=60)
    resumed = fit_population(config, members, tmp_path / "cut", verbose=False)
    assert [m["eval"] for m in resumed.members] == [m["eval"] for m in full.members]
    np.testing.assert_array_equal(get_member_hparams(resumed.states[0])["learning_rate"], rates)


def test_masked_architectures_in_one_program(tmp_path):
    config = dataclasses.replace(BASE, model="masked_mlp", model_kwargs={"max_width": 16, "max_depth": 2})
    arch = lambda width, depth: {"width": [width, width], "depth": depth, "skip": [0, 1]}
    members = [{"arch": arch(16, 2)}, {"arch": arch(1, 1)}, {"arch": arch(8, 2)}]
    result = fit_population(config, members, verbose=False)
    assert len(result.states) == 1  # one compiled program for three architectures
    accuracies = [m["eval"]["accuracy"] for m in result.members]
    assert accuracies[1] < accuracies[0] - 0.2  # a 1-unit network cannot match a 16-unit one
    with pytest.raises(ValueError, match="member 1: arch 'width'"):
        fit_population(config, [{"arch": arch(16, 2)}, {"arch": arch(32, 2)}], verbose=False)


def test_unknown_member_field():
    with pytest.raises(ValueError, match="member 0: unknown field 'lr'"):
        fit_population(BASE, [{"lr": 0.1}], verbose=False)


def test_sharded_population_matches_single_device(tmp_path):
    """4 forced CPU devices, P = 8 (two members per device): same results as one device."""
    # one child with the 4 devices runs both modes in turn (the programs they share compile once)
    script = textwrap.dedent("""
        import json, sys, jax
        from vhjax.config import TrainConfig
        from vhjax.population import fit_population
        from vhjax.parallel import population_mesh
        from tests.datasets import tiny_classification  # not the digits: no second spent loading them
        config = TrainConfig(dataset=tiny_classification(), model="mlp",
                             model_kwargs={"widths": (16,), "num_classes": 10}, learning_rate=3e-3, batch_size=32,
                             steps=40, eval_every=20)
        members = [{"learning_rate": 1e-3 * (i + 1)} for i in range(8)]
        for mode in sys.argv[1:]:
            mesh = population_mesh() if mode == "sharded" else None
            # sharded: one member from each of the 4 devices per group (member_group=1, 2 groups)
            result = fit_population(config, members, mesh=mesh, member_group=1 if mesh else None, verbose=False)
            sharding = result.states[0].members.step.sharding
            print(mode, json.dumps({"devices": jax.device_count(), "spread": len(sharding.device_set),
                                    "acc": [m["eval"]["accuracy"] for m in result.members],
                                    "loss": [m["eval"]["loss"] for m in result.members]}))
    """)
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices=4), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    completed = subprocess.run([sys.executable, "-c", script, "sharded", "single"], env=env, capture_output=True,
                               text=True, check=True)
    outputs = dict(line.split(" ", 1) for line in completed.stdout.splitlines()
                   if line.startswith(("sharded {", "single {")))
    outputs = {mode: json.loads(line) for mode, line in outputs.items()}
    assert sorted(outputs) == ["sharded", "single"], completed.stdout[-3000:]
    assert outputs["sharded"]["devices"] == 4 and outputs["sharded"]["spread"] == 4
    assert outputs["single"]["spread"] == 1
    np.testing.assert_allclose(outputs["sharded"]["loss"], outputs["single"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(outputs["sharded"]["acc"], outputs["single"]["acc"], atol=1e-3)


def test_member_chunks_give_the_same_result_as_one_vmap(task, data):
    population = init_population(task, 4, {"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3]},
                                 same_batches=False)
    results, losses = [run_checked_every_step(task, jax.tree.map(jnp.copy, population), data, 4)[0]], []
    # groups of 2 in turn; and a group of 1 from each of 2 shards (members 0, 2 then 1, 3), as on a 2-device mesh
    for chunk, shards in ((None, 1), (2, 1), (1, 2)):
        end, metrics = classifier_runner(task, chunk, shards=shards)(jax.tree.map(jnp.copy, population), data, 4)
        results.append(end)
        losses.append(np.asarray(metrics["loss"]))
    for other in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0].members.params), jax.tree.leaves(other.members.params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for loss in losses[1:]:  # (steps, P) in the members' own order
        np.testing.assert_allclose(loss, losses[0], rtol=1e-6)


def test_static_zero_hyperparameters_refused_unless_rebuilt(task):
    from vhjax.train.task import with_member_hparams

    # no random dropout masks are drawn and no penalties computed at all
    assert task.static_zero == {"dropout_rate", "l1", "l2", "elastic_net"}
    for name in ("dropout_rate", "l2"):
        with pytest.raises(ValueError, match=f"member 1 sets '{name}'.*static zero"):
            init_population(task, 2, {name: [0.0, 0.3]})
    population = init_population(task, 2)
    with pytest.raises(ValueError, match="'l2' is a static zero"):  # it would silently do nothing
        set_member_hparams(population, l2=jnp.array([0.0, 1e-3]))
    rebuilt = with_member_hparams(task, {"dropout_rate": [0.0, 0.3], "l2": [0.0, 1e-3]})
    assert rebuilt.static_zero == {"l1", "elastic_net"}
    population = init_population(rebuilt, 2, {"dropout_rate": [0.0, 0.3], "l2": [0.0, 1e-3]})
    set_member_hparams(population, l2=jnp.array([1e-3, 0.0]))


def test_batches_gathered_on_the_host_train_like_batches_gathered_in_the_program(task, data):
    """`vhjax.population.feed` (per-host batches on a multi-process mesh) in one process: the chunk's
    indices, its batches gathered from host arrays and `run_batches` (own batches, member groups,
    a diverging member replayed) give the members the in-program gather gives."""
    from vhjax import parallel
    from vhjax.population import feed

    mesh = parallel.population_mesh(jax.devices()[:1])
    population = init_population(task, 3, {"learning_rate": [1e-3, 1e30, 3e-3]}, same_batches=False)
    runner = classifier_runner(task, 2)
    want, want_metrics = runner(jax.tree.map(jnp.copy, population), data, 5)
    indices = feed.chunk_indices(runner, population, 5, mesh)
    assert indices.shape == (5, 3, BASE.batch_size)
    batches, rows = feed.chunk_batches(tuple(np.asarray(leaf) for leaf in data), indices, mesh, False)
    assert rows == 5 * 3 * BASE.batch_size and batches[0].shape == (5, 3, BASE.batch_size, *data[0].shape[1:])
    got, got_metrics = runner.run_batches(jax.tree.map(jnp.copy, population), batches)
    assert runner.replayed_chunks == 2 and got.alive.tolist() == want.alive.tolist() == [True, False, True]
    for a, b in zip(jax.tree.leaves(want.members.params), jax.tree.leaves(got.members.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(want_metrics["loss"], got_metrics["loss"])


def test_a_group_with_no_training_member_is_skipped():
    """Member groups run in turn; a group whose members are all stopped does not run at all (its
    steps execute no member step), and nothing else changes."""
    from flax import struct

    from vhjax.population.engine import PopulationRunner

    @struct.dataclass
    class Member:
        params: jax.Array
        step: jax.Array

    executed = []

    def member_step(member, batch):
        jax.debug.callback(lambda: executed.append(1))  # once per executed step of a group
        new = member.replace(params=member.params + batch.mean(), step=member.step + 1)
        return new, {"loss": new.params}

    indices = lambda population, length: jnp.tile(jnp.arange(2), (length, 1))
    runner = PopulationRunner(member_step, indices, member_group=2)
    population = new_population(Member(jnp.arange(4.0), jnp.zeros(4, jnp.int32)))
    data = jnp.array([1.0, 2.0])
    for stopped, runs in (([False] * 4, 6), ([False, False, True, True], 3), ([False, True, False, True], 6),
                          ([True] * 4, 0)):
        executed.clear()
        end, metrics = runner(population.replace(stopped=jnp.array(stopped)), data, 3)
        jax.block_until_ready(end)
        assert len(executed) == runs  # 2 groups x 3 steps, less the groups with no training member
        expected = np.where(stopped, np.arange(4.0), np.arange(4.0) + 4.5)  # 3 steps of +1.5, or unchanged
        np.testing.assert_allclose(end.members.params, expected)
        loss = np.asarray(metrics["loss"])
        assert np.isnan(loss[:, np.array(stopped)]).all() and np.isfinite(loss[:, ~np.array(stopped)]).all()


def test_stopped_members_are_restored_by_a_program_run_only_when_their_group_trained(monkeypatch):
    """The chunk program trains every member of a running group; the stopped ones among them get
    their old state back from `restore_idle`, which runs only when that happened."""
    from flax import struct

    from vhjax.population import engine
    from vhjax.population.engine import PopulationRunner

    @struct.dataclass
    class Member:
        params: jax.Array
        step: jax.Array

    def member_step(member, batch):
        new = member.replace(params=member.params * 2.0 + batch.mean(), step=member.step + 1)
        return new, {"loss": new.params}

    calls = []
    restore = engine.restore_idle
    monkeypatch.setattr(engine, "restore_idle", lambda end, start: calls.append(1) or restore(end, start))
    runner = PopulationRunner(member_step, lambda population, length: jnp.zeros((length, 1), jnp.int32),
                              member_group=2)
    population = new_population(Member(jnp.arange(1.0, 5.0), jnp.zeros(4, jnp.int32)))
    data = jnp.array([0.5])
    restored = []
    for stopped in ([False] * 4, [False, False, True, True], [False, True, False, True]):
        calls.clear()
        end, _ = runner(population.replace(stopped=jnp.array(stopped)), data, 2)
        restored.append(len(calls))
        trained = np.arange(1.0, 5.0) * 4.0 + 1.5  # two steps of x -> 2x + 0.5
        np.testing.assert_allclose(end.members.params, np.where(stopped, np.arange(1.0, 5.0), trained))
        np.testing.assert_array_equal(end.members.step, np.where(stopped, 0, 2))
    assert restored == [0, 0, 1]  # all training; stopped members in an idle (skipped) group; in a running one
