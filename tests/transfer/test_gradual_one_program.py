"""Gradual unfreezing inside one program: a member's per-tensor `update_start` (mode 'gradual') lets its
layers join one by one while members of other modes train in the same bucket and compiled program."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import pytest

from vhjax.compilation_cache import count_compilations
from vhjax.config import TrainConfig
from vhjax.models import MLP
from vhjax.population.fit import fit_population
from vhjax.transfer.modes import fit_from, mode_config, mode_member, mode_scale, mode_start

X = np.random.default_rng(1).normal(size=(96, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 0.5).astype(np.int32)
SOURCE = {"params": jax.tree.map(np.asarray,
                                  MLP(widths=(8, 8), num_classes=3).init(jax.random.key(4), X[:2])["params"])}
CONFIG = TrainConfig(dataset={"train": (X[:64], Y[:64]), "test": (X[64:], Y[64:])}, model="mlp",
                     model_kwargs={"widths": (8, 8), "num_classes": 3}, batch_size=16, steps=6, eval_every=2,
                     learning_rate=1e-2, seed=3)
TENSORS = ["head/bias", "head/kernel", "hidden_0/bias", "hidden_0/kernel", "hidden_1/bias", "hidden_1/kernel"]
DIVERGES = 1e30  # Adam's steps of this size overflow the logits within a few steps
MEMBERS = {"feature_extractor": mode_member("feature_extractor"), "full": mode_member("full"),
           "gradual_2": mode_member("gradual", stage_steps=2), "gradual_4": mode_member("gradual", stage_steps=4),
           "layerwise_lr": mode_member("layerwise_lr", decay=0.5), "gradual_0": mode_member("gradual", stage_steps=0),
           "gradual_0_decay": mode_member("gradual", stage_steps=0, decay=0.5),
           "diverging": {**mode_member("full"), "learning_rate": DIVERGES}}
NAMES = list(MEMBERS)
STARTS = {"gradual_2": {"head": 0, "hidden_1": 2, "hidden_0": 4},  # the head first, each earlier layer later
          "gradual_4": {"head": 0, "hidden_1": 4, "hidden_0": 8}}


def params_of(result, name):
    record = result.members[NAMES.index(name)]
    return jax.tree.map(lambda leaf: np.asarray(leaf[record["position"]]),
                        result.states[record["bucket"]].members.params)


def unchanged(params, layer) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[layer]),
                                                    jax.tree.leaves(SOURCE["params"][layer])))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every member in one workdir: 4 steps (compilations counted), then resumed to 6."""
    workdir, members = tmp_path_factory.mktemp("gradual"), [{**fields, "seed": 3} for fields in MEMBERS.values()]
    jax.clear_caches()  # an earlier test in this worker may have compiled an identical program
    with count_compilations() as seen:
        first = fit_from(dataclasses.replace(CONFIG, steps=4), SOURCE, members, workdir, same_batches=True,
                         verbose=False)
    resumed = fit_from(CONFIG, SOURCE, members, workdir, same_batches=True, verbose=False)
    return {4: first, 6: resumed}, seen


def test_gradual_and_other_modes_are_one_bucket_and_one_program(runs):
    results, seen = runs
    assert len(results[4].states) == 1 and {m["bucket"] for m in results[4].members} == {0}
    chunk_programs = {name: n for name, n in seen.by_function.items() if "run_free" in name}
    assert chunk_programs and all(n == 1 for n in chunk_programs.values()), dict(seen.by_function)
    starts = np.asarray(results[4].states[0].members.hparams["update_start"])
    np.testing.assert_array_equal(starts[NAMES.index("gradual_2")], [0, 0, 4, 4, 2, 2])
    assert not starts[NAMES.index("full")].any()  # members of other modes: every tensor from step 0


def test_earlier_layers_are_exactly_unchanged_until_their_start_step_also_after_resuming(runs):
    results, _ = runs  # steps 4 -> 6 ran after a resume: the restored step counter decides who trains
    for steps, result in results.items():
        for name, starts in STARTS.items():
            params = params_of(result, name)
            for layer, start in starts.items():
                assert unchanged(params, layer) == (steps <= start), (steps, name, layer)
        assert not any(unchanged(params_of(result, "full"), layer) for layer in STARTS["gradual_2"])


def test_gradual_with_stage_steps_0_equals_full_and_with_decay_layerwise_lr(runs):
    results, _ = runs
    for gradual, other in (("gradual_0", "full"), ("gradual_0_decay", "layerwise_lr")):
        mine, theirs = params_of(results[6], gradual), params_of(results[6], other)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=gradual)


def test_a_diverging_member_is_isolated_from_the_gradual_ones(runs):
    results, _ = runs
    records = {name: results[6].members[i] for i, name in enumerate(NAMES)}
    assert records["diverging"]["diverged_step"] is not None
    assert all(records[name]["diverged_step"] is None for name in NAMES if name != "diverging")
    for name in NAMES[:-1]:
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params_of(results[6], name))), name


def test_mode_start_and_bad_input_raise_before_compiling():
    assert mode_start("gradual", TENSORS, stage_steps=5) == [0, 0, 10, 10, 5, 5]
    assert mode_start("gradual", TENSORS, stage_steps=5, layers=["hidden_1", "head"]) == [0, 0, 0, 0, 5, 5]
    assert mode_start("full", TENSORS) is None
    assert mode_scale("gradual", TENSORS, stage_steps=5) == [1.0] * 6
    assert mode_scale("gradual", TENSORS, stage_steps=5, decay=0.5) == [1, 1, 0.25, 0.25, 0.5, 0.5]
    started = time.perf_counter()
    with pytest.raises(ValueError, match="stage_steps has value -1; allowed: an integer in"):
        mode_member("gradual", stage_steps=-1)
    with pytest.raises(ValueError, match=r"mode_options has value \{\}; allowed: stage_steps=<steps"):
        mode_member("gradual")
    with pytest.raises(ValueError, match=r"allowed: keys among \['stage_steps', 'decay', 'layers'\] for mode "
                                         r"'gradual'; not: \['last'\]"):
        mode_member("gradual", stage_steps=1, last=2)
    with pytest.raises(ValueError, match="allowed: stage_steps only with mode 'gradual' \\(mode is 'full'\\)"):
        mode_member("full", stage_steps=1)
    with pytest.raises(ValueError, match="mode has value 'gradual'; allowed: one of 'direct'.*no static config"):
        mode_config("gradual", SOURCE)
    with pytest.raises(ValueError, match=r"members\[1\]: mode 'gradual' layers has value 'hiddn_1'; allowed: "):
        fit_from(CONFIG, SOURCE, [{}, mode_member("gradual", stage_steps=1, layers=["hiddn_1", "head"])],
                 verbose=False)
    with pytest.raises(ValueError, match=r"members\[0\] has value \{'update_start': \[0, 0, 0, 0, 0, 0\]\}; "
                                         "allowed: no update_scale, update_start"):
        fit_from(CONFIG, SOURCE, [{**mode_member("full"), "update_start": [0] * 6}], verbose=False)
    with pytest.raises(ValueError, match=r"member 0: hyperparameter 'update_start' has value \[0, 1\]; allowed: 6 "
                                         r"whole numbers in \[0, 2147483647\], one per parameter tensor"):
        fit_population(CONFIG, [{"update_start": [0, 1]}], verbose=False)
    with pytest.raises(ValueError, match=r"member 1: hyperparameter 'update_start' has value \[0, 0, 0, 0, 0, "
                                         r"-1\]; allowed"):
        fit_population(CONFIG, [{}, {"update_start": [0, 0, 0, 0, 0, -1]}], verbose=False)
    with pytest.raises(ValueError, match=r"member 0: hyperparameter 'update_start' has value \[0, 0, 0, 0, 0, "
                                         r"2.5\]; allowed"):
        fit_population(CONFIG, [{"update_start": [0, 0, 0, 0, 0, 2.5]}], verbose=False)
    assert time.perf_counter() - started < 10.0


def test_update_factors_gate_the_scale_by_the_start_step_and_are_absent_without_either():
    from vhjax.train.step import update_factors

    start, scale = np.asarray([0, 2, 5], np.int32), np.asarray([1.0, 0.5, 0.0], np.float32)
    assert update_factors({}, np.int32(3)) is None  # static absence: nothing is scaled or computed
    np.testing.assert_array_equal(update_factors({"update_start": start}, np.int32(2)), [1, 1, 0])
    np.testing.assert_array_equal(update_factors({"update_start": start, "update_scale": scale}, np.int32(1)),
                                  [1, 0, 0])
    np.testing.assert_array_equal(update_factors({"update_start": start, "update_scale": scale}, np.int32(9)),
                                  [1, 0.5, 0])
    np.testing.assert_array_equal(update_factors({"update_scale": scale}, np.int32(0)), scale)


def test_max_norm_leaves_frozen_and_not_started_tensors_as_they_are():
    """max_norm projects only tensors that moved: a frozen extractor and layers before their start
    step keep the source weights (whose units are far above the bound), the trained head obeys it."""
    bound = 0.05
    members = [{**mode_member("feature_extractor"), "seed": 3}, {**mode_member("gradual", stage_steps=4), "seed": 3}]
    result = fit_from(dataclasses.replace(CONFIG, steps=3, max_norm=bound), SOURCE, members, None,
                      same_batches=True, verbose=False)
    for index in range(2):
        record = result.members[index]
        params = jax.tree.map(lambda leaf: np.asarray(leaf[record["position"]]),
                              result.states[record["bucket"]].members.params)
        assert unchanged(params, "hidden_0") and unchanged(params, "hidden_1")
        assert np.linalg.norm(SOURCE["params"]["hidden_0"]["kernel"], axis=0).min() > 10 * bound
        assert np.linalg.norm(params["head"]["kernel"], axis=0).max() <= bound * (1 + 1e-5)
