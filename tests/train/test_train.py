"""Training core: fit, determinism, resume, early stopping, divergence, bad input."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from vhjax.config import TrainConfig, apply_overrides, parse_override
from vhjax.train import build_task, fit, init_state, make_train_step
from vhjax.population.loop import chunk_lengths

REPO = Path(__file__).resolve().parents[2]

SMALL = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (32,), "num_classes": 10},
                    learning_rate=3e-3, batch_size=64, steps=120, eval_every=40, seed=3)


def test_fit_learns_digits():
    result = fit(SMALL, verbose=False)
    assert result.metrics["eval"]["accuracy"] > 0.85
    evals = [row for row in result.history if row["split"] == "eval"]
    assert [row["step"] for row in evals] == [40, 80, 120]
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_same_seed_same_metrics_other_seed_differs():
    config = dataclasses.replace(SMALL, steps=40)
    first, second = fit(config, verbose=False), fit(config, verbose=False)
    assert first.metrics == second.metrics
    third = fit(dataclasses.replace(config, seed=4), verbose=False)
    assert third.metrics != first.metrics


def test_chunks_align_to_eval_boundaries():
    assert chunk_lengths(0, 100, 40) == [40, 40, 20]
    assert chunk_lengths(40, 100, 40) == [40, 20]
    assert chunk_lengths(100, 100, 40) == []


def test_interrupted_run_resumes_to_identical_metrics(tmp_path, run_interrupted):
    uninterrupted = fit(SMALL, tmp_path / "full", verbose=False)
    run_interrupted(lambda: fit(SMALL, tmp_path / "cut", verbose=False), at_step=80)  # after the 2nd checkpoint
    resumed = fit(SMALL, tmp_path / "cut", verbose=False)
    assert resumed.metrics == uninterrupted.metrics
    steps = [row["step"] for row in resumed.history if row["split"] == "eval"]
    assert steps == [40, 80, 120]  # no duplicated or lost log lines


def test_killed_process_resumes(tmp_path):
    """SIGKILL a real `vhjax train` process mid-run, rerun it: same result as an uninterrupted run."""
    config_file = tmp_path / "cfg.py"
    config_file.write_text(  # the data made in the file: loading the digits costs each process a second
        "from vhjax.config import TrainConfig\n"
        "from tests.datasets import tiny_classification\n"
        "def get_config():\n"
        "    return TrainConfig(dataset=tiny_classification(), model='mlp',\n"
        "                       model_kwargs={'widths': (32,), 'num_classes': 10},\n"
        "                       learning_rate=3e-3, batch_size=64, steps=1000, eval_every=50, seed=1)\n")
    from tests.forking import run_module, start_module

    argv = ["train", str(config_file), "--quiet", "--workdir"]  # `python -m vhjax.cli ...`, forked from the fork server
    killed = start_module("vhjax.cli", [*argv, tmp_path / "cut"], str(tmp_path / "killed.out"),
                          str(tmp_path / "killed.err"), "vhjax.cli")
    checkpoints = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        time.sleep(0.05)
    killed.kill()  # SIGKILL
    killed.join()
    assert killed.exitcode == -signal.SIGKILL
    for name in ("cut", "full"):  # the killed run resumed, and one uninterrupted
        done = run_module("vhjax.cli", [*argv, tmp_path / name], tmp_path, name, "vhjax.cli", timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    cut = json.loads((tmp_path / "cut" / "result.json").read_text())
    full = json.loads((tmp_path / "full" / "result.json").read_text())
    assert cut == full


def test_workdir_with_other_config_is_refused(tmp_path):
    fit(dataclasses.replace(SMALL, steps=40), tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"different config \(learning_rate: stored 0\.003, now 0\.001\); "):
        fit(dataclasses.replace(SMALL, steps=80, learning_rate=1e-3), tmp_path, verbose=False)  # raised steps: allowed
    with pytest.raises(ValueError, match=r"different config \(model_kwargs\.widths\[0\]: stored 32, now 16; "
                                         r"steps: stored 40, now 20\)"):
        fit(dataclasses.replace(SMALL, steps=20, model_kwargs={"widths": (16,), "num_classes": 10}), tmp_path,
            verbose=False)


def test_early_stopping_stops_after_patience():
    # Monitoring the loss in 'max' mode: every evaluation after the first is "worse", so the run
    # must stop after exactly `patience` further evaluations.
    config = dataclasses.replace(SMALL, steps=400, monitor="loss", monitor_mode="max", patience=2)
    result = fit(config, verbose=False)
    assert result.stopped_early
    assert int(result.state.step) == 120
    assert result.best_step == 40


def test_non_finite_loss_names_the_step():
    config = dataclasses.replace(SMALL, optimizer="sgd", learning_rate=1e30)
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        fit(config, verbose=False)


def test_l2_coefficient_shrinks_weights():
    def kernel_norm(config):
        params = fit(config, verbose=False).state.params
        return sum(float(jnp.sum(leaf ** 2)) for leaf in jax.tree.leaves(params))

    plain = dataclasses.replace(SMALL, steps=80)
    assert kernel_norm(dataclasses.replace(plain, l2=1e-2)) < 0.8 * kernel_norm(plain)


def test_hparams_are_arrays_not_constants():
    """Changing a hyperparameter's value in the state reuses the compiled step."""
    task = build_task(dataclasses.replace(SMALL, l2=1e-3, dropout_rate=0.1))
    step = jax.jit(make_train_step(task))
    data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    state = init_state(task, jax.random.key(0))
    step(state, data)
    other = state.replace(hparams={**state.hparams, "l2": jnp.float32(0.5), "dropout_rate": jnp.float32(0.3)})
    step(other, data)
    assert step._cache_size() == 1


@pytest.mark.parametrize("field,value,match", [
    ("model", "no_such_model", "known models"),
    ("dataset", "no_such_dataset", "no_such_dataset"),
    ("optimizer", "no_such_optimizer", "no_such_optimizer"),
    ("loss", "no_such_loss", "no_such_loss"),
    ("batch_size", 0, "batch_size"),
    ("learning_rate", -1.0, "learning_rate"),
    ("monitor", "speed", "monitor"),
])
def test_bad_config_fails_before_compiling(field, value, match):
    with pytest.raises(ValueError, match=match):
        build_task(dataclasses.replace(SMALL, **{field: value}))


def test_augmentation_name_checked():
    with pytest.raises(ValueError, match="no_such_aug"):
        build_task(dataclasses.replace(SMALL, augment=({"name": "no_such_aug", "strength": 0.1, "prob": 1.0},)))


def test_shape_mismatch_names_expected_and_actual():
    with pytest.raises(ValueError, match=r"10 classes: expected \(batch, 10\)"):
        build_task(dataclasses.replace(SMALL, model_kwargs={"widths": (8,), "num_classes": 5}))
    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        build_task(dataclasses.replace(SMALL, dataset="mnist1d", model="cnn2d", model_kwargs={}))


def test_overrides():
    config = apply_overrides(SMALL, ["learning_rate=0.1", "model_kwargs.widths=(8, 8)", "optimizer=sgd"])
    assert config.learning_rate == 0.1 and config.optimizer == "sgd"
    assert config.model_kwargs == {"widths": (8, 8), "num_classes": 10}
    assert parse_override("eval_split=train[:10%]") == ("eval_split", "train[:10%]")
    with pytest.raises(ValueError, match="unknown config field 'lr'"):
        apply_overrides(SMALL, ["lr=0.1"])


def test_cli_train_and_help(tmp_path):
    from tests.forking import run_module

    def cli(name: str, *argv: str) -> tuple[int, str, str]:  # `python -m vhjax.cli ARGV`, forked from the fork server
        return run_module("vhjax.cli", list(argv), tmp_path, name, "vhjax.cli", timeout=300)

    code, help_text, _ = cli("help", "--help")
    assert code == 0 and "train" in help_text
    config = str(REPO / "experiments/configs/mnist1d_mlp.py")
    code, out, err = cli("train", "train", config, "steps=100", "eval_every=50", "--workdir", str(tmp_path / "run"))
    assert code == 0, err[-3000:]
    assert "step 100/100" in out and "test" not in err
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "result.json").exists()
    code, _, err = cli("bad", "train", config, "model=nope")
    assert code == 2 and "known models" in err
