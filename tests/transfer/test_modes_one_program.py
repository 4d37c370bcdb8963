"""Fine-tuning modes as per-member `update_scale`: members of every mode train as ONE bucket (one compiled
program) and each equals the same mode trained through the static `freeze` / `lr_multipliers` path."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from vhjax.compilation_cache import count_compilations
from vhjax.config import TrainConfig
from vhjax.models import MLP
from vhjax.transfer.modes import fit_from, mode_config, mode_member, mode_scale

X = np.random.default_rng(1).normal(size=(96, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 0.5).astype(np.int32)
SOURCE = {"params": jax.tree.map(np.asarray,
                                  MLP(widths=(8, 8), num_classes=3).init(jax.random.key(4), X[:2])["params"])}
CONFIG = TrainConfig(dataset={"train": (X[:64], Y[:64]), "test": (X[64:], Y[64:])}, model="mlp",
                     model_kwargs={"widths": (8, 8), "num_classes": 3}, batch_size=16, steps=6, eval_every=6,
                     learning_rate=1e-2, seed=3)
MODES = [("direct", {}), ("feature_extractor", {}), ("fine_tune_last", {"last": 2}),
         ("freeze", {"frozen": ["hidden_1"]}), ("full", {}), ("layerwise_lr", {"decay": 0.5})]
STATIC = ["feature_extractor", "fine_tune_last", "freeze", "layerwise_lr"]  # the modes with static fields


def params_of(result, index):
    record = result.members[index]
    return jax.tree.map(lambda leaf: np.asarray(leaf[record["position"]]),
                        result.states[record["bucket"]].members.params)


@pytest.fixture(scope="module")
def one_program():
    members = [{**mode_member(mode, **options), "seed": 3} for mode, options in MODES]
    jax.clear_caches()  # an earlier test in this worker may have compiled an identical program
    with count_compilations() as seen:
        result = fit_from(CONFIG, SOURCE, members, same_batches=True, verbose=False)
    return result, seen


def test_members_of_six_modes_are_one_bucket_and_one_program(one_program):
    result, seen = one_program
    assert len(result.states) == 1 and {m["bucket"] for m in result.members} == {0}
    chunk_programs = {name: n for name, n in seen.by_function.items() if "run_free" in name}
    assert chunk_programs and all(n == 1 for n in chunk_programs.values()), dict(seen.by_function)


def test_each_mode_equals_its_static_path(one_program):
    result, _ = one_program
    options = dict(MODES)
    static = [{**mode_config(mode, SOURCE, **options[mode]), "seed": 3} for mode in STATIC] + [{"seed": 3}]
    reference = fit_from(CONFIG, SOURCE, static, same_batches=True, verbose=False)
    assert len(reference.states) == len(static)  # the static path: one bucket per mode
    names = [mode for mode, _ in MODES]
    for index, mode in enumerate([*STATIC, "full"]):
        mine, theirs = params_of(result, names.index(mode)), params_of(reference, index)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=mode)


def test_frozen_layers_are_unchanged_and_trained_ones_move(one_program):
    result, _ = one_program
    source = SOURCE["params"]
    unchanged = lambda params, layer: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[layer]),
                                                                              jax.tree.leaves(source[layer])))
    frozen = {"direct": {"hidden_0", "hidden_1", "head"}, "feature_extractor": {"hidden_0", "hidden_1"},
              "fine_tune_last": {"hidden_0"}, "freeze": {"hidden_1"}, "full": set(), "layerwise_lr": set()}
    for index, (mode, _) in enumerate(MODES):
        params = params_of(result, index)
        for layer in source:
            assert unchanged(params, layer) == (layer in frozen[mode]), (mode, layer)


def test_mode_scales_and_bad_modes_raise_before_compiling():
    tensors = ["head/bias", "head/kernel", "hidden_0/bias", "hidden_0/kernel", "hidden_1/bias", "hidden_1/kernel"]
    assert mode_scale("layerwise_lr", tensors, decay=0.5) == [1, 1, 0.25, 0.25, 0.5, 0.5]
    assert mode_scale("fine_tune_last", tensors, last=2) == [1, 1, 0, 0, 1, 1]
    assert mode_scale("freeze", tensors, frozen=["head/bias"]) == [0, 1, 1, 1, 1, 1]
    started = time.perf_counter()
    with pytest.raises(ValueError, match="mode has value 'gradul'; allowed: one of 'direct'.*'gradual'"):
        mode_member("gradul")
    with pytest.raises(ValueError, match=r"mode_options has value \{'lats': 2\}; allowed: keys among"):
        mode_member("fine_tune_last", lats=2)
    with pytest.raises(ValueError, match="decay has value 1.5"):
        mode_member("layerwise_lr", decay=1.5)
    with pytest.raises(ValueError, match=r"members\[0\]: last has value 5; allowed: 1 to 3"):
        fit_from(CONFIG, SOURCE, [mode_member("fine_tune_last", last=5)], verbose=False)
    with pytest.raises(ValueError, match=r"members\[1\]: mode 'freeze' has value 'hiddn_0/\*'; allowed: globs"):
        fit_from(CONFIG, SOURCE, [{}, mode_member("freeze", frozen=["hiddn_0"])], verbose=False)
    with pytest.raises(ValueError, match=r"members\[0\] has value \{'freeze': \('head/\*',\)\}; allowed: no "):
        fit_from(CONFIG, SOURCE, [{**mode_member("full"), "freeze": ("head/*",)}], verbose=False)
    assert time.perf_counter() - started < 10.0
