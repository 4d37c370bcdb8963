"""The one loop: a kill before the first checkpoint duplicates no log rows; damaged checkpoints
fall back to the previous good one; extending a finished run by raising steps; padding on a mesh."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig, validate
from vhjax.population import fit, fit_population
from vhjax.population.loop import pad_members
from vhjax.population.members import init_population
from vhjax.train import build_task, checkpoint, init_state

from tests.xla_flags import xla_flags

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     learning_rate=3e-3, batch_size=32, steps=30, eval_every=10, seed=0)


def eval_steps(workdir: Path) -> list[int]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if row["split"] == "eval"]


def test_kill_before_the_first_checkpoint_leaves_no_duplicated_log_rows(tmp_path, monkeypatch):
    real_save = checkpoint.Checkpointer.save

    def die_before_saving(self, step, state, record):
        raise KeyboardInterrupt  # killed after the evaluation was logged, before its checkpoint

    monkeypatch.setattr(checkpoint.Checkpointer, "save", die_before_saving)
    with pytest.raises(KeyboardInterrupt):
        fit(CONFIG, tmp_path, verbose=False)
    assert eval_steps(tmp_path) == [10]
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    result = fit(CONFIG, tmp_path, verbose=False)
    assert eval_steps(tmp_path) == [10, 20, 30]
    assert [row["step"] for row in result.history if row["split"] == "eval"] == [10, 20, 30]


def damage_latest(workdir: Path, flip: bool) -> None:
    step_dir = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 64),
                   key=lambda p: -p.stat().st_size)
    data = bytearray(files[0].read_bytes())
    if flip:
        data[len(data) // 2] ^= 0x01
    else:
        data[: 32] = bytes(32)
    files[0].write_bytes(bytes(data))


@pytest.mark.parametrize("flip", [True, False])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, run_interrupted, flip):
    full = fit(CONFIG, tmp_path / "full", verbose=False)
    run_interrupted(lambda: fit(CONFIG, tmp_path / "cut", verbose=False), at_step=20)
    damage_latest(tmp_path / "cut", flip)
    with pytest.warns(RuntimeWarning, match="skipped damaged checkpoint"):
        resumed = fit(CONFIG, tmp_path / "cut", verbose=False)
    assert resumed.metrics == full.metrics  # resumed from step 10, redid 20 and 30
    assert eval_steps(tmp_path / "cut") == [10, 20, 30]


def test_raising_steps_extends_a_finished_run(tmp_path):
    short = fit(CONFIG, tmp_path, verbose=False)
    longer = fit(dataclasses.replace(CONFIG, steps=50), tmp_path, verbose=False)
    assert int(longer.state.step) == 50 and eval_steps(tmp_path) == [10, 20, 30, 40, 50]
    straight = fit(dataclasses.replace(CONFIG, steps=50), tmp_path / "straight", verbose=False)
    assert longer.metrics == straight.metrics and short.metrics != straight.metrics
    with pytest.raises(ValueError, match="only 'steps' may be raised"):
        fit(dataclasses.replace(CONFIG, steps=20), tmp_path, verbose=False)


def test_a_last_chunk_that_eval_every_does_not_divide_runs_in_the_program_of_a_full_chunk(tmp_path):
    from vhjax.compilation_cache import count_compilations

    members = [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}]
    uneven = dataclasses.replace(CONFIG, steps=25, eval_every=10)  # chunks of 10, 10 and 5 steps
    with count_compilations() as seen:
        result = fit_population(uneven, members, tmp_path, verbose=False)
    assert seen.by_function["jit(run_free)"] == 1, dict(seen.by_function)
    assert eval_steps(tmp_path / "bucket_0") == [10, 20, 25]
    even = fit_population(dataclasses.replace(uneven, eval_every=5), members, verbose=False)  # the same 25 steps
    for got, want in zip(result.members, even.members):
        np.testing.assert_allclose(got["eval"]["loss"], want["eval"]["loss"], rtol=1e-4)


def test_padding_members_are_inert():
    task = build_task(CONFIG)
    population = init_population(task, 3)
    padded = pad_members(population, 4)
    assert padded.size == 4 and padded.stopped.tolist() == [False, False, False, True]
    assert pad_members(population, 3) is population


PADDED_ON_A_MESH = """
import json, jax, jax.numpy as jnp, numpy as np
from jax import monitoring
import dataclasses
from tests.datasets import tiny_classification
from tests.population.test_loop import CONFIG
from vhjax import parallel
CONFIG = dataclasses.replace(CONFIG, dataset=tiny_classification())  # not the digits: no second loading them
from vhjax.population.loop import on_mesh
from vhjax.population.members import classifier_runner, init_population
from vhjax.train import build_task

compiled = []
monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: compiled.append(kw.get("fun_name")) if event.endswith("backend_compile_duration") else None)
task = build_task(CONFIG)
start = init_population(task, 3, {"learning_rate": [1e-3, 2e-3, 3e-3]})
data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
alone = classifier_runner(task)
expected, _ = alone(alone(jax.tree.map(jnp.copy, start), data, 2)[0], data, 2)  # two chunks on one device
mesh = parallel.population_mesh()
run = on_mesh(classifier_runner(task, shards=4), mesh)
on_devices = parallel.replicate(data, mesh)
population, _ = run(start, on_devices, 2)
counts = []
for chunk in range(3):  # from the first chunk's output, from the second's, from the start again
    before = len(compiled)
    population, metrics = run(population if chunk < 2 else start, on_devices, 2)
    counts.append(compiled[before:])
on_mesh_twice, _ = run(run(start, on_devices, 2)[0], on_devices, 2)
error = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(expected.members.params),
                                                         jax.tree.leaves(on_mesh_twice.members.params)))
print(json.dumps({"compiled": counts, "size": population.size, "stopped": np.asarray(population.stopped).tolist(),
                  "steps": metrics["loss"].shape[1], "error": error}))
"""


def test_a_padded_population_on_a_mesh_is_padded_and_cut_in_one_program_each():
    """3 members on 4 forced CPU devices: a chunk after the first pads its population in one program
    and cuts it back in one (leaf by leaf they were dozens of small asynchronous programs with
    collectives, which deadlocked XLA's CPU client on a loaded 2-core machine), and the members
    train exactly as on one device."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices=4), "PYTHONPATH": str(Path(__file__).parents[2])}
    completed = subprocess.run([sys.executable, "-c", PADDED_ON_A_MESH], env=env, capture_output=True, text=True,
                               cwd=Path(__file__).parents[2], timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    second_chunk, *later = out["compiled"]
    assert len(second_chunk) <= 2, second_chunk  # the padding program (41 programs leaf by leaf)
    assert later == [[], []], later  # placements seen before: nothing new
    assert out["size"] == 3 and out["stopped"] == [False, False, False] and out["steps"] == 3
    assert out["error"] < 1e-6


def test_seed_population_members_are_the_models_fit_trains():
    """Member i of a population with seed s (own data order) is exactly fit(seed=s)."""
    members = [{"seed": s} for s in (3, 4)]
    population = fit_population(CONFIG, members, same_batches=False, verbose=False)
    assert len(population.states) == 1  # seeds are per member: one program
    for s, member in zip((3, 4), population.members):
        alone = fit(dataclasses.replace(CONFIG, seed=s), verbose=False)
        assert member["eval"]["accuracy"] == pytest.approx(alone.metrics["eval"]["accuracy"], abs=1e-6)
        assert member["eval"]["loss"] == pytest.approx(alone.metrics["eval"]["loss"], rel=1e-5)


def test_best_model_keeping_returns_each_members_best_and_curves():
    config = dataclasses.replace(CONFIG, keep_best=True, steps=40)
    result = fit_population(config, [{"learning_rate": 3e-3}, {"learning_rate": 0.08}], verbose=False)
    for index, member in enumerate(result.members):
        steps, accuracy = result.curve(index)
        assert steps.tolist() == [10, 20, 30, 40]
        assert member["best_step"] == int(steps[np.nanargmax(accuracy)])
        assert member["eval"]["accuracy"] == pytest.approx(np.nanmax(accuracy), abs=1e-6)


def test_a_workdir_in_use_is_refused_at_once(tmp_path):
    from vhjax.train.workdir import WorkdirInUse, workdir_lock

    with workdir_lock(tmp_path):
        with pytest.raises(WorkdirInUse, match="is in use by another process"):
            fit(CONFIG, tmp_path, verbose=False)
    assert fit(CONFIG, tmp_path, verbose=False).metrics["eval"]["accuracy"] > 0.2  # free again


def test_one_scalar_per_member_fills_a_vector_hyperparameter():
    """A search-space entry `aug_strength` gives one number per member; with two augmentations in
    the pipeline it sets both (it was refused: 'has shape (2,); expected (2, 2)')."""
    augment = ({"name": "gaussian_noise", "strength": 0.1}, {"name": "translate", "strength": 0.1})
    config = dataclasses.replace(CONFIG, augment=augment, steps=10)
    result = fit_population(config, [{"aug_strength": 0.0}, {"aug_strength": 0.4}], verbose=False)
    strengths = np.asarray(result.states[0].members.hparams["aug_strength"])
    np.testing.assert_allclose(strengths, [[0.0, 0.0], [0.4, 0.4]])


def test_precise_bn_evaluates_with_exact_statistics_and_leaves_training_alone():
    from vhjax.models import recompute_batch_stats
    from vhjax.train.step import make_eval_fn

    config = TrainConfig(dataset="mnist1d", model="fcn1d", model_kwargs={"widths": (8, 8), "kernel_sizes": (5, 3)},
                         train_split="train[:400]", eval_split="test[:200]", batch_size=8, steps=20, eval_every=20,
                         precise_bn_batches=0)
    plain = fit(config, verbose=False)
    precise = fit(dataclasses.replace(config, precise_bn_batches=10), verbose=False)
    training = lambda state: (state.params, state.opt_state, state.step)
    for a, b in zip(jax.tree.leaves(training(plain.state)), jax.tree.leaves(training(precise.state))):
        np.testing.assert_array_equal(a, b)  # training is the same (only the returned statistics differ)
    assert precise.metrics["eval"]["loss"] != plain.metrics["eval"]["loss"]
    task = build_task(config)
    xb = jnp.asarray(task.train.x[:80]).reshape(10, 8, *task.train.x.shape[1:])
    # by hand, each as one jitted program (op by op it compiled each of many small operations)
    exact = jax.jit(lambda variables: recompute_batch_stats(task.model, variables, xb, dropout_rate=0.0))(
        {"params": plain.state.params, **plain.state.model_state})
    by_hand = jax.jit(make_eval_fn(task))(plain.state.replace(model_state=exact), jnp.asarray(task.eval.x),
                                          jnp.asarray(task.eval.y))
    assert precise.metrics["eval"]["loss"] == pytest.approx(float(by_hand["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(exact["batch_stats"]), jax.tree.leaves(precise.state.model_state["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the returned model holds those statistics


def test_precise_bn_auto_covers_the_training_set_within_its_caps_and_only_models_with_batchnorm():
    from vhjax.train.step import AUTO_PRECISE_BN_EXAMPLES, make_eval_fn, precise_bn_count

    auto = TrainConfig(dataset="mnist1d", batch_size=8)
    assert precise_bn_count(auto, 403, 160) == 50  # the whole training set (the last partial batch left out)
    assert precise_bn_count(auto, 10 ** 6, 160) == AUTO_PRECISE_BN_EXAMPLES // 8
    assert precise_bn_count(auto, 10 ** 6, 4 << 20) == 1  # 32 MiB of inputs at most
    assert precise_bn_count(dataclasses.replace(auto, precise_bn_batches=7), 403, 160) == 7
    assert precise_bn_count(dataclasses.replace(auto, precise_bn_batches=0), 403, 160) == 0
    with pytest.raises(ValueError, match="precise_bn_batches.*'auto' or an integer >= 0"):
        validate(dataclasses.replace(auto, precise_bn_batches="all"))
    # the default evaluates a BatchNorm model with recomputed statistics: equal to precise_bn_batches=k
    config = TrainConfig(dataset="mnist1d", model="fcn1d", model_kwargs={"widths": (8, 8), "kernel_sizes": (5, 3)},
                         train_split="train[:80]", eval_split="test[:50]", batch_size=8, steps=5, eval_every=5)
    default, explicit = fit(config, verbose=False), fit(dataclasses.replace(config, precise_bn_batches=10), verbose=False)
    assert default.metrics["eval"]["loss"] == pytest.approx(explicit.metrics["eval"]["loss"], rel=1e-6)
    # the returned model is the evaluated one: its statistics are the recomputed ones, so plain
    # evaluation with precise BN off reports the same numbers
    task = build_task(config)
    off = jax.jit(make_eval_fn(build_task(dataclasses.replace(config, precise_bn_batches=0))))
    plain = off(default.state, jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    assert float(plain["loss"]) == pytest.approx(default.metrics["eval"]["loss"], rel=1e-5)
    # a model without BatchNorm builds no batches at all (nothing becomes a constant of its program)
    mlp = build_task(dataclasses.replace(config, model="mnist1d_mlp", model_kwargs={}))
    state = init_state(mlp, jax.random.key(0))
    jax.jit(make_eval_fn(mlp))(state, jnp.asarray(mlp.eval.x), jnp.asarray(mlp.eval.y))
    assert "batch_stats" not in state.model_state


def test_shared_batch_order_follows_the_calls_seed_not_the_cached_tasks():
    """The task is built once for configs that differ only in the seed (a search's generations);
    the shared data order must still be that of each call's own seed (it was the first call's)."""
    from vhjax.population.members import member_keys

    def shared_data_key(seed: int) -> np.ndarray:
        result = fit_population(dataclasses.replace(CONFIG, seed=seed, steps=1, eval_every=1), [{}, {}],
                                verbose=False)
        return np.asarray(jax.random.key_data(result.states[0].members.data_key))

    shared_data_key(0)  # builds and caches the task with seed 0
    expected = np.asarray(jax.random.key_data(member_keys(jnp.asarray([7], jnp.uint32))[1][0]))
    assert (shared_data_key(7) == expected).all()
