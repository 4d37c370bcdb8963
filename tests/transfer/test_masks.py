"""Transfer masks: copy/fresh and train/freeze bits as per-member arrays of one population; mask search.

Every test trains the same tiny problem with the same config and 8 members, so the population
program compiles once for the module. The problem: the source network is the labelling function
itself (a random MLP whose centred outputs define the 4 classes of Gaussian inputs), so copying
every layer is the known optimum of a short fine-tune from 64 examples (a random network's decisions have
small margins, so 20 Adam steps at 3e-3 already cost it about a quarter of its accuracy; every mask with a
fresh layer does worse still, as the exhaustive table checks).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import numpy as np
import pytest

import vhjax.search as vsearch
from vhjax.config import TrainConfig
from vhjax.models import MLP
from vhjax.population import fit_population
from vhjax.population.members import init_population, parameter_tensors
from vhjax.population.fit import bucket_task
from vhjax.search.strategies.base import flip_categorical, mutate_one_column
from vhjax.transfer.masks import (MaskObjective, TransferMask, _copy_by_rows, all_masks, baseline_mask, check_bits,
                                  exhaustive_table, fit_masked, mask_from_bits, mask_units, optimum, reaches_optimum,
                                  result_mask, tensor_rows)

WIDTHS, CLASSES = (16, 16, 16), 4


def labelled_by_source():
    """(source variables, inputs, labels): labels are the argmax of the source's outputs."""
    teacher = MLP(widths=WIDTHS, num_classes=CLASSES)
    x = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    params = jax.tree.map(np.asarray, jax.jit(teacher.init)(jax.random.key(7), x[:2])["params"])
    logits = np.asarray(jax.jit(teacher.apply)({"params": params}, x))
    # balanced classes (centred outputs) with wide margins (scaled head: the same argmax)
    params["head"] = {"kernel": 10 * params["head"]["kernel"], "bias": 10 * (params["head"]["bias"] - logits.mean(0))}
    y = np.argmax(logits - logits.mean(0), axis=1).astype(np.int32)
    return {"params": params}, x, y


SOURCE, X, Y = labelled_by_source()
CONFIG = TrainConfig(dataset={"train": (X[:64], Y[:64]), "test": (X[256:], Y[256:])}, model="mlp",
                     model_kwargs={"widths": WIDTHS, "num_classes": CLASSES}, batch_size=32, steps=20,
                     eval_every=20, learning_rate=3e-3, seed=1)
UNITS = ["hidden_0", "hidden_1", "hidden_2", "head"]
ZEROS, ONES = (0, 0, 0, 0), (1, 1, 1, 1)
MASKS = [
    TransferMask(ZEROS, ZEROS, "fresh, frozen"),
    TransferMask(ONES, ZEROS, "copied, frozen"),
    "0101",  # policy train: hidden_0, hidden_2 frozen
    "1010",
    baseline_mask("scratch", UNITS),
    baseline_mask("full", UNITS),
    baseline_mask("head_only", UNITS),
    "0011",
]


def params_of(result, index):
    record = result.members[index]
    return jax.tree.map(lambda leaf: np.asarray(leaf[record["position"]]),
                        result.states[record["bucket"]].members.params)


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def trained():
    return fit_masked(CONFIG, SOURCE, MASKS, policy="train", source_data=(X[64:256], Y[64:256]))


def test_mask_units_are_the_source_layers_or_its_tensors():
    assert mask_units(SOURCE) == UNITS
    assert mask_units(SOURCE, "tensor")[:2] == ["hidden_0/bias", "hidden_0/kernel"]
    assert mask_units(SOURCE, "tensor")[-2:] == ["head/bias", "head/kernel"]


def test_policies_read_one_bit_string_two_ways():
    assert mask_from_bits("0110", UNITS, "copy") == TransferMask((0, 1, 1, 0), ONES)
    assert mask_from_bits([False, True, True, False], UNITS, "train") == TransferMask(ONES, (0, 1, 1, 0))
    assert mask_from_bits({"head": 1, "hidden_0": 0, "hidden_1": 0, "hidden_2": 1}, UNITS).copy == (0, 0, 1, 1)
    assert baseline_mask("head_only", UNITS) == TransferMask(ONES, (0, 0, 0, 1), "head_only")


def test_copy_policy_all_zeros_is_the_fresh_init_and_all_ones_the_source(trained):
    fresh = init_population(bucket_task(CONFIG), 1, seeds=[CONFIG.seed]).members.params  # scratch's init
    assert same(params_of(trained, 0), jax.tree.map(lambda leaf: np.asarray(leaf[0]), fresh))  # frozen: as started
    assert same(params_of(trained, 1), SOURCE["params"])
    assert not same(params_of(trained, 4), params_of(trained, 5))


def test_train_policy_freezes_the_zero_bits_and_trains_the_others(trained):
    for index, bits in ((2, "0101"), (3, "1010"), (6, "0001")):
        params = params_of(trained, index)
        for layer, bit in zip(UNITS, bits):
            unchanged = same(params[layer], SOURCE["params"][layer])
            assert unchanged == (bit == "0"), (index, layer)


def test_masks_of_one_population_are_one_bucket_with_per_member_behaviour(trained):
    assert len(trained.states) == 1 and {m["bucket"] for m in trained.members} == {0}
    copy = [m["mask"]["copy"] for m in trained.members]
    assert copy[:2] == ["0000", "1111"] and trained.members[6]["mask"]["train"] == "0001"
    accuracy = [m["eval"]["accuracy"] for m in trained.members]
    assert accuracy[1] == 1.0  # the source as is labels its own data perfectly
    assert accuracy[5] > accuracy[4] + 0.2  # full fine-tune from the source beats scratch
    assert trained.members[1]["source"]["accuracy"] == 1.0


def test_tensor_masks_freeze_single_tensors():
    units = mask_units(SOURCE, "tensor")
    kernels_only = "".join("1" if unit.endswith("kernel") else "0" for unit in units)
    result = fit_masked(CONFIG, SOURCE, [kernels_only] + ["1" * len(units)] * 7, policy="train",
                        granularity="tensor")
    params = params_of(result, 0)
    for layer in UNITS:
        assert same(params[layer]["bias"], SOURCE["params"][layer]["bias"])
        assert not same(params[layer]["kernel"], SOURCE["params"][layer]["kernel"])


@pytest.fixture(scope="module")
def exhaustive():
    objective = MaskObjective(CONFIG, SOURCE, policy="copy")
    return objective, exhaustive_table(objective, population=8)  # the driver's grid, 2 generations of 8


def test_exhaustive_search_finds_the_known_optimum(exhaustive):
    _, table = exhaustive
    assert sorted(table) == ["".join(map(str, m)) for m in all_masks(UNITS)]
    best, value = optimum(table)
    assert best == ["1111"] and value > 0.7  # the source is the labelling function
    assert value > max(row["accuracy"] for bits, row in table.items() if bits != "1111") + 0.1
    assert table["0000"]["accuracy"] < 0.5


def test_genetic_algorithm_over_masks_reaches_the_optimum(exhaustive):
    objective, table = exhaustive
    found = vsearch.search(objective, objective.space(), "genetic", budget=24, population=8, seed=0, verbose=False,
                           strategy_kwargs={"population_size": 8, "categorical_mutation": "flip",
                                            "mutation_rate": 0.25})
    assert reaches_optimum(result_mask(found.best.params, UNITS), table)
    assert len(found.trials) == 24


def test_simulated_annealing_over_masks_reaches_the_optimum(exhaustive):
    objective, table = exhaustive
    found = vsearch.search(objective, objective.space(), "simulated_annealing", budget=24, population=8, seed=0,
                           verbose=False, strategy_kwargs={"num_chains": 8, "move": "one_column",
                                                           "initial_temperature": 0.05, "num_steps": 3})
    assert reaches_optimum(result_mask(found.best.params, UNITS), table)


def test_bit_flip_mutation_and_one_bit_moves_change_bits():
    cards = np.full(6, 2, np.int32)
    u = jax.random.uniform(jax.random.key(0), (5, 6))
    bits = lambda v: np.floor(np.asarray(v) * 2).astype(int)
    flipped = flip_categorical(jax.random.key(1), u, cards, 1.0, 0.1)
    assert np.all(bits(flipped) == 1 - bits(u))  # rate 1: every bit flips (a resample keeps half)
    moved = mutate_one_column(jax.random.key(2), u, cards, 0.1)
    assert np.all((bits(moved) != bits(u)).sum(axis=1) == 1)


@pytest.mark.parametrize("mask, match", [
    ("101", r"mask has value '101'; allowed: 4 bits .* one per unit \['hidden_0', 'hidden_1', 'hidden_2', 'head'\]"),
    ("1012", r"mask has value '1012'; allowed: 4 bits"),
    ([1, 0, 1, 1, 0], r"mask has value \[1, 0, 1, 1, 0\]; allowed: 4 bits"),
    ({"hidden_0": 1, "hidden_9": 0}, r"mask has value .*'hidden_9'.*unknown: \['hidden_9'\]"),
    ({"hidden_0": 1}, r"missing: \['hidden_1', 'hidden_2', 'head'\]"),
])
def test_bad_masks_raise_naming_field_value_and_allowed(mask, match):
    with pytest.raises(ValueError, match=match):
        check_bits(mask, UNITS)


def test_bad_masks_raise_before_compiling():
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"masks\[1\] has value '11'; allowed: 4 bits"):
        fit_masked(CONFIG, SOURCE, ["1111", "11"])
    with pytest.raises(ValueError, match="policy has value 'copy_all'; allowed: one of 'copy', 'train'"):
        fit_masked(CONFIG, SOURCE, ["1111"], policy="copy_all")
    with pytest.raises(ValueError, match="granularity has value 'block'"):
        mask_units(SOURCE, "block")
    with pytest.raises(ValueError, match=r"member field 'freeze' has value"):
        fit_masked(CONFIG, SOURCE, ["1111"], member={"freeze": ("head/*",)})
    tensors = parameter_tensors(bucket_task(CONFIG))
    with pytest.raises(ValueError, match=r"member 0: hyperparameter 'update_scale' has value \[1.0, 1.0\]; allowed: "
                                         r"8 finite numbers >= 0, one per parameter tensor"):
        fit_population(CONFIG, [{"update_scale": [1.0, 1.0]}], verbose=False)
    assert len(tensors) == 8 and time.perf_counter() - started < 5.0


class NormNet(nn.Module):
    """Dense, BatchNorm, Dense: a layer with batch statistics."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train, name="hidden_1")(nn.Dense(8, name="hidden_0")(x))
        return nn.Dense(3, name="head")(nn.relu(h))


def test_batch_statistics_follow_their_layers_copy_bit():
    """The start hook alone (no training program): member 0 copies hidden_0 and head, member 1 hidden_1."""
    x = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    y = (np.arange(32) % 3).astype(np.int32)
    fresh = NormNet().init(jax.random.key(3), x[:2])
    source = {"params": jax.tree.map(lambda a: np.asarray(a) + 1.0, fresh["params"]),
              "batch_stats": jax.tree.map(lambda a: np.asarray(a) + 5.0, fresh["batch_stats"])}
    config = TrainConfig(dataset={"train": (x, y), "test": (x, y)}, model=NormNet(), batch_size=16, steps=1)
    task = bucket_task(config)
    units, tensors = mask_units(source), parameter_tensors(task)
    copy = np.stack([tensor_rows(TransferMask(bits, (1, 1, 1)), units, tensors)[0] for bits in ((1, 0, 1), (0, 1, 0))])
    population = _copy_by_rows(init_population(task, 2, seeds=[0, 0]), source, {}, copy)
    members = population.members
    np.testing.assert_array_equal(np.asarray(members.model_state["batch_stats"]["hidden_1"]["mean"]),
                                  [[0.0] * 8, [5.0] * 8])  # fresh (0) vs copied (5)
    np.testing.assert_array_equal(np.asarray(members.params["hidden_1"]["scale"]), [[1.0] * 8, [2.0] * 8])
    np.testing.assert_array_equal(np.asarray(members.params["head"]["bias"]), [[1.0] * 3, [0.0] * 3])
