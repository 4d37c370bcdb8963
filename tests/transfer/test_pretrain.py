"""Self-supervised pretraining: NT-Xent, temperature per member, the autoencoder learning, labels never read,
the held-out pretraining loss as the evaluation, resume from a workdir and its refusals, the encoder as a
transfer source (no heads), pretrained features beating random ones with few labels, bad input."""

from __future__ import annotations

import dataclasses
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.models.mlp import MLP
from vhjax.population import fit_population
from vhjax.population.engine import PopulationRunner
from vhjax.transfer import fit_from, load_source, mode_config, transfer_params
from vhjax.transfer.pretrain import nt_xent, pretrain

pretrain_module = importlib.import_module("vhjax.transfer.pretrain")  # the module (the package exports the function)
TRAIN, TEST = load("digits", "train"), load("digits", "test")  # (N, 8, 8, 1) images in [0, 1]
TINY = TrainConfig(dataset={"train": (TRAIN.x[:256], TRAIN.y[:256]), "test": (TEST.x[:128], TEST.y[:128])},
                   model="mlp", model_kwargs={"widths": (16,), "num_classes": 10}, batch_size=64, steps=20,
                   eval_every=20, learning_rate=3e-3)
TWO_CHUNKS = dataclasses.replace(TINY, eval_every=10)  # a checkpoint at step 10 and at step 20 (with a workdir)
OVER_TEMPERATURE = [{"temperature": 0.1, "seed": 0}, {"temperature": 1.0, "seed": 0}]


def hidden(result, index):
    """Member `index`'s encoder parameters (numpy)."""
    member = result.population.members[index]
    params = result.population.states[member["bucket"]].members.params
    return jax.tree.map(lambda leaf: np.asarray(leaf[member["position"]]), params["hidden_0"])


def numpy_nt_xent(z1, z2, temperature):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [np.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i]
        total += -np.log(np.exp(z[i] @ z[positive] / temperature) / np.sum(others))
    return total / (2 * n)


# ----------------------------------------------------------------------------- NT-Xent


def test_nt_xent_equals_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    for temperature in (0.1, 0.5, 2.0):
        assert float(nt_xent(jnp.asarray(z1), jnp.asarray(z2), jnp.float32(temperature))) == pytest.approx(
            numpy_nt_xent(z1, z2, temperature), rel=1e-5)


def test_identical_views_give_a_lower_loss_than_random_pairs():
    z = jax.random.normal(jax.random.key(0), (16, 8))
    other = jax.random.normal(jax.random.key(1), (16, 8))
    for temperature in (0.1, 0.5):
        same, random = nt_xent(z, z, temperature), nt_xent(z, other, temperature)
        assert float(same) < float(random) - 0.5


def test_temperature_is_per_member_under_vmap():
    z1, z2 = jax.random.normal(jax.random.key(0), (2, 6, 4))
    temperatures = jnp.asarray([0.1, 0.5, 2.0])
    batched = jax.vmap(nt_xent, in_axes=(None, None, 0))(z1, z2, temperatures)
    np.testing.assert_allclose(batched, [nt_xent(z1, z2, t) for t in temperatures], rtol=1e-6)
    assert len(set(np.round(np.asarray(batched), 4))) == 3


# ----------------------------------------------------------------------------- the population


@pytest.fixture(scope="module")
def over_temperature():
    return pretrain(TWO_CHUNKS, OVER_TEMPERATURE, verbose=False)


def test_members_over_temperature_share_one_program(over_temperature):
    assert len(over_temperature.population.states) == 1  # one bucket: one compiled program
    hparams = over_temperature.population.states[0].members.hparams
    np.testing.assert_allclose(np.asarray(hparams["temperature"]), [0.1, 1.0])
    assert [row["temperature"] for row in over_temperature.rows] == [0.1, 1.0]
    a, b = hidden(over_temperature, 0), hidden(over_temperature, 1)
    assert not np.allclose(a["kernel"], b["kernel"])  # same seed and batches: the temperature made the difference
    assert all(np.isfinite(row["eval_loss"]) and np.isfinite(row["train_loss"]) for row in over_temperature.rows)


def test_labels_are_never_read(over_temperature):
    labels = np.random.default_rng(0).permutation(TRAIN.y[:256])
    shuffled = dataclasses.replace(TWO_CHUNKS, dataset={"train": (TRAIN.x[:256], labels),
                                                        "test": (TEST.x[:128], TEST.y[:128])})
    other = pretrain(shuffled, OVER_TEMPERATURE, verbose=False)
    for index in (0, 1):
        for x, y in zip(jax.tree.leaves(hidden(other, index)), jax.tree.leaves(hidden(over_temperature, index))):
            np.testing.assert_array_equal(x, y)  # bit-identical
    state, state_other = over_temperature.population.states[0].members, other.population.states[0].members
    for x, y in zip(jax.tree.leaves(state.head_params), jax.tree.leaves(state_other.head_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [row["eval_loss"] for row in other.rows] == [row["eval_loss"] for row in over_temperature.rows]


def test_autoencoder_reconstruction_error_falls():
    config = dataclasses.replace(TINY, steps=60, eval_every=10)
    result = pretrain(config, [{"noise": 0.0, "seed": 0}, {"noise": 0.3, "seed": 1}], method="autoencoder",
                      verbose=False)
    for member in (0, 1):
        _, losses = result.population.curve(member, split="train", metric="pretrain_loss")
        assert len(losses) == 6 and losses[-1] < 0.6 * losses[0]
        row = result.rows[member]
        assert row["eval_loss"] < losses[0] and np.isfinite(row["train_loss"])
    assert [row["noise"] for row in result.rows] == [0.0, 0.3]


def test_the_engine_evaluates_the_held_out_pretraining_loss_not_a_classifier(over_temperature):
    for index, row in enumerate(over_temperature.rows):
        record = over_temperature.population.members[index]
        assert sorted(record["eval"]) == ["loss"] and "test" not in record  # no untrained-head accuracy
        assert record["eval"]["loss"] == pytest.approx(row["eval_loss"], rel=1e-6)
    steps, losses = over_temperature.population.curve(0, split="eval", metric="loss")
    assert steps.tolist() == [10, 20] and np.all(np.isfinite(losses))
    assert losses[-1] == pytest.approx(over_temperature.rows[0]["eval_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- the workdir


def member_arrays(result):
    """Every member's encoder and projection head parameters (numpy leaves, members first)."""
    members = result.population.states[0].members
    return [np.asarray(leaf) for leaf in jax.tree.leaves((members.params, members.head_params, members.opt_state))]


@pytest.mark.slow  # three short pretraining programs (interrupted, resumed, restored): about a minute on 2 shared cores
def test_interrupted_pretraining_resumes_identically_and_a_finished_workdir_restores(over_temperature, tmp_path,
                                                                                     run_interrupted, monkeypatch):
    run = lambda: pretrain(TWO_CHUNKS, OVER_TEMPERATURE, workdir=tmp_path, verbose=False)
    run_interrupted(run, at_step=10)
    assert (tmp_path / "bucket_0" / "checkpoints").exists() and (tmp_path / "pretrain.json").exists()
    resumed = run()
    assert resumed.population.histories[0][-1]["step"] == 20
    for a, b in zip(member_arrays(resumed), member_arrays(over_temperature)):  # as if never interrupted
        np.testing.assert_array_equal(a, b)
    assert resumed.rows == over_temperature.rows

    def no_training(self, *args):
        raise AssertionError("a finished workdir trained again")

    monkeypatch.setattr(PopulationRunner, "__call__", no_training)
    restored = run()
    assert restored.rows == over_temperature.rows
    for a, b in zip(member_arrays(restored), member_arrays(over_temperature)):
        np.testing.assert_array_equal(a, b)


class Stop(Exception):
    """Raised in place of training: the checks and the workdir's record ran."""


def test_pretrain_workdir_refuses_other_inputs_by_name_before_training(tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(pretrain_module, "fit_population", stop)
    with pytest.raises(Stop):  # records workdir/pretrain.json, then would train
        pretrain(TINY, OVER_TEMPERATURE, workdir=tmp_path, verbose=False)
    with pytest.raises(Stop):  # the same inputs resume
        pretrain(TINY, OVER_TEMPERATURE, workdir=tmp_path, verbose=False)
    other_data = dataclasses.replace(TINY, dataset={"train": (TRAIN.x[256:512], TRAIN.y[256:512]),
                                                    "test": (TEST.x[:128], TEST.y[:128])})
    refused = [
        (dict(config=other_data), r"inputs[.\[:]"),
        (dict(augment=[("gaussian_noise", 0.1)]), r"augment[.\[:]"),
        (dict(members=[{"temperature": 0.2, "seed": 0}, {"temperature": 1.0, "seed": 0}]), r"values\[0\]"),
        (dict(method="autoencoder", members=[{"seed": 0}, {"seed": 0}]), r"augment.*; method: stored 'simclr', "
                                                                        r"now 'autoencoder'; projection_dim.*; values"),
        (dict(head_widths=(32,)), r"head_widths[.\[:]"),
    ]
    for change, fields in refused:
        kwargs = {"config": TINY, "members": OVER_TEMPERATURE, **change}
        with pytest.raises(ValueError, match=r"holds a run with other pretrain inputs \(" + fields):
            pretrain(kwargs.pop("config"), kwargs.pop("members"), workdir=tmp_path, verbose=False, **kwargs)
    watched = dataclasses.replace(TINY, patience=2, monitor="loss", monitor_mode="min", keep_best=True)
    with pytest.raises(Stop):  # early stopping and best-model keeping on the held-out pretraining loss pass the checks
        pretrain(watched, OVER_TEMPERATURE, verbose=False)


# ----------------------------------------------------------------------------- the source


def test_a_pretrained_member_is_a_source_without_heads(over_temperature):
    source = load_source(over_temperature, index=1)
    assert sorted(source["params"]) == ["hidden_0"]  # no classifier head, no projection MLP
    np.testing.assert_array_equal(source["params"]["hidden_0"]["kernel"], hidden(over_temperature, 1)["kernel"])
    best = over_temperature.ranked()[0]
    np.testing.assert_array_equal(load_source(over_temperature, rank=0)["params"]["hidden_0"]["kernel"],
                                  hidden(over_temperature, best)["kernel"])
    target = jax.tree.map(np.asarray, dict(MLP(widths=(16,), num_classes=3).init(jax.random.key(0),
                                                                              jnp.zeros((1, 8, 8, 1)))))
    merged, report = transfer_params(over_temperature, target)
    assert report.copied == ["hidden_0/bias", "hidden_0/kernel"] and report.fresh == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], target["params"]["head"]["kernel"])
    assert mode_config("feature_extractor", over_temperature) == {"freeze": ("hidden_0/*",)}
    with pytest.raises(ValueError, match="rank has value 2; allowed: an int in \\[0, 1\\]"):
        load_source(over_temperature, rank=2)


# ----------------------------------------------------------------------------- the transfer check


@pytest.mark.slow  # about 25 s of CPU each (a pretraining program, then linear probes); longer on a loaded machine
@pytest.mark.parametrize("method,field,value", [("simclr", "temperature", 0.2), ("autoencoder", "noise", 0.2)])
def test_pretrained_features_beat_random_ones_with_ten_labels_per_class(method, field, value):
    config = dataclasses.replace(TINY, dataset={"train": (TRAIN.x, TRAIN.y), "test": (TEST.x, TEST.y)},
                                 batch_size=128, steps=200, eval_every=200)
    result = pretrain(config, [{field: value, "seed": s} for s in (0, 1)], method=method, verbose=False)
    few = np.concatenate([np.flatnonzero(TRAIN.y == c)[:10] for c in range(10)])
    probe = dataclasses.replace(config, dataset={"train": (TRAIN.x[few], TRAIN.y[few]), "test": (TEST.x, TEST.y)},
                                batch_size=100, steps=200, eval_every=200, learning_rate=1e-2)
    frozen = mode_config("feature_extractor", result)
    scratch = fit_population(probe, [{**frozen, "seed": s} for s in (0, 1)], verbose=False)
    for s in (0, 1):  # seen while writing (100-300 steps): SimCLR 0.69-0.77, autoencoder 0.66-0.83, random 0.51-0.52
        pretrained = fit_from(probe, load_source(result, index=s), [{**frozen, "seed": s}], verbose=False)
        assert pretrained.members[0]["eval"]["accuracy"] > scratch.members[s]["eval"]["accuracy"] + 0.08


# ----------------------------------------------------------------------------- bad input


class NoHead(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10, name="out")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kwargs,members,message", [
    ({"method": "byol"}, [{}], "method has value 'byol'; allowed"),
    ({}, [{"temperature": 0.0}], "member 0: field 'temperature' has value 0.0"),
    ({}, [{"temperature": -1.0}], "member 0: field 'temperature' has value -1.0"),
    ({"method": "autoencoder"}, [{"noise": -0.1}], "member 0: field 'noise' has value -0.1"),
    ({"method": "autoencoder"}, [{"temperature": 0.5}], "field 'temperature' has value 0.5; allowed: not set"),
    ({"head_widths": (0,)}, [{}], "head_widths has value \\(0,\\); allowed: a sequence of positive integers"),
    ({"augment": []}, [{}], "augment has value \\[\\]; allowed: a non-empty list"),
    ({"feature_layer": "penultimate"}, [{}], "feature_layer has value 'penultimate'"),
])
def test_bad_input_raises_before_compiling(kwargs, members, message):
    with pytest.raises(ValueError, match=message):
        pretrain(TINY, members, verbose=False, **kwargs)


def test_a_model_without_a_head_and_label_based_monitoring_are_refused():
    with pytest.raises(ValueError, match="feature_layer has value 'head'; allowed: the name of a top-level submodule"):
        pretrain(dataclasses.replace(TINY, model=NoHead(), model_kwargs={}), [{}], verbose=False)
    with pytest.raises(ValueError, match="config field 'patience' has value 3"):
        pretrain(dataclasses.replace(TINY, patience=3), [{}], verbose=False)
    with pytest.raises(ValueError, match="config field 'mixing' has value 'mixup'"):
        pretrain(dataclasses.replace(TINY, mixing="mixup", mixing_strength=0.2), [{}], verbose=False)
