"""Training controls wired into TrainConfig and fit: freezing, LR multipliers, accumulation, plateau."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.train import build_task, fit, init_state

BASE = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (8,), "num_classes": 10},
                   optimizer="sgd", learning_rate=0.1, batch_size=32, steps=12, eval_every=12, seed=0)


def initial_params(config):
    return init_state(build_task(config), jax.random.key(config.seed)).params


def changed(config):
    before, after = initial_params(config), fit(config, verbose=False).state.params
    return {layer: not np.allclose(before[layer]["kernel"], after[layer]["kernel"]) for layer in before}


def test_freeze_and_zero_multiplier_keep_layers_fixed():
    assert changed(BASE) == {"head": True, "hidden_0": True}
    assert changed(dataclasses.replace(BASE, freeze=("hidden_0/*",))) == {"head": True, "hidden_0": False}
    assert changed(dataclasses.replace(BASE, lr_multipliers={"head/*": 0.0})) == {"head": False, "hidden_0": True}


def test_gradient_accumulation_steps_only_every_k_batches():
    assert changed(dataclasses.replace(BASE, grad_accumulation=4, steps=3)) == {"head": False, "hidden_0": False}
    assert changed(dataclasses.replace(BASE, grad_accumulation=4, steps=4)) == {"head": True, "hidden_0": True}


def test_learning_rate_is_reduced_on_a_plateau(tmp_path):
    config = dataclasses.replace(BASE, learning_rate=1e-9, steps=40, eval_every=10, plateau_patience=1,
                                 plateau_factor=0.5, monitor="loss", monitor_mode="min")
    result = fit(config, tmp_path, verbose=False)
    scales = [row["learning_rate_scale"] for row in result.history if row["split"] == "train"]
    assert scales == [1.0, 0.5, 0.25, 0.125]  # the loss never improves by 1e-4 after the first evaluation
    from vhjax.optim import get_hyperparams

    assert np.isclose(float(get_hyperparams(result.state.opt_state)["learning_rate"]), 1e-9 * 0.125)


@pytest.mark.parametrize("field,value,match", [
    ("grad_accumulation", 0, "'grad_accumulation' has value 0"),
    ("plateau_factor", 1.5, "'plateau_factor' has value 1.5"),
    ("lr_multipliers", {"head/*": -1.0}, r"lr_multipliers\['head/\*'\]' has value -1.0"),
])
def test_bad_control_settings_fail_before_compiling(field, value, match):
    with pytest.raises(ValueError, match=match):
        build_task(dataclasses.replace(BASE, **{field: value}))


def test_mixing_at_strength_zero_matches_no_mixing_and_strength_varies_per_member():
    from vhjax.population import fit_population

    adam = dataclasses.replace(BASE, optimizer="adam", learning_rate=1e-2, steps=20, eval_every=20)
    plain = fit(adam, verbose=False).state.params
    zero = fit(dataclasses.replace(adam, mixing="mixup", mixing_strength=0.0), verbose=False).state.params
    mixed = fit(dataclasses.replace(adam, mixing="mixup", mixing_strength=0.4), verbose=False).state.params
    np.testing.assert_allclose(plain["head"]["kernel"], zero["head"]["kernel"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(plain["head"]["kernel"], mixed["head"]["kernel"], atol=1e-4)
    members = [{"mixing_strength": s} for s in (0.0, 0.4)]
    population = fit_population(dataclasses.replace(adam, mixing="cutmix"), members, verbose=False)
    assert len(population.states) == 1  # strengths are arrays in one program
    with pytest.raises(ValueError, match="mixing"):
        build_task(dataclasses.replace(adam, mixing="mixop"))


def test_max_norm_bounds_every_unit_and_penalty_schedule_scales_coefficients():
    adam = dataclasses.replace(BASE, optimizer="adam", learning_rate=5e-2, steps=30, eval_every=30)
    free = fit(adam, verbose=False).state.params
    bounded = fit(dataclasses.replace(adam, max_norm=0.5), verbose=False).state.params
    column_norms = lambda kernel: np.linalg.norm(np.asarray(kernel), axis=0)
    assert column_norms(free["hidden_0"]["kernel"]).max() > 0.6
    for layer in ("hidden_0", "head"):
        assert column_norms(bounded[layer]["kernel"]).max() <= 0.5 + 1e-5
    plain = fit(adam, verbose=False).state.params["head"]["kernel"]
    switched_off = fit(dataclasses.replace(adam, l2=1.0, penalty_schedule={"name": "constant", "value": 0.0}),
                       verbose=False).state.params["head"]["kernel"]
    ramped = fit(dataclasses.replace(adam, l2=1.0, penalty_schedule={"name": "linear", "init_value": 0.0,
                                                                     "end_value": 1.0, "transition_steps": 30}),
                 verbose=False).state.params["head"]["kernel"]
    np.testing.assert_allclose(np.asarray(plain), np.asarray(switched_off), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(ramped) < np.linalg.norm(plain)  # the ramped L2 shrinks the weights
    with pytest.raises(ValueError, match="penalty_schedule"):
        build_task(dataclasses.replace(adam, penalty_schedule={"init_value": 0.0}))


def test_preprocessing_is_fitted_on_train_only_and_saved_with_the_run(tmp_path):
    from vhjax import preprocess

    config = dataclasses.replace(BASE, optimizer="adam", learning_rate=1e-2, steps=60, eval_every=60,
                                 model_kwargs={"widths": (16,), "num_classes": 10},
                                 preprocess=({"name": "outliers", "threshold": 4.0}, {"name": "standardize"}))
    task = build_task(config)
    raw = build_task(BASE)
    assert len(task.train) < len(raw.train) and len(task.eval) == len(raw.eval)  # outliers: train rows only
    x = task.train.x.reshape(len(task.train), -1)
    varying = x.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1.0, atol=1e-4)
    assert abs(task.eval.x.reshape(len(task.eval), -1).mean(axis=0)).max() > 1e-3  # train statistics, not eval's
    result = fit(config, tmp_path, verbose=False)
    assert result.metrics["eval"]["accuracy"] > 0.85
    saved = preprocess.from_json((tmp_path / "preprocess_1.json").read_text())
    raw_eval = raw.eval.x.reshape(len(raw.eval), -1)
    np.testing.assert_allclose(np.asarray(preprocess.transform(saved, raw_eval)),
                               task.eval.x.reshape(len(task.eval), -1), atol=1e-5)
    pca = build_task(dataclasses.replace(config, preprocess=({"name": "pca", "n_components": 12},)))
    assert pca.train.x.shape[1:] == (12,)
    with pytest.raises(ValueError, match="preprocess"):
        build_task(dataclasses.replace(config, preprocess=({"n_components": 3},)))
