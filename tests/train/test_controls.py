"""Reduce-on-plateau, early stopping, per-layer multipliers / freezing and gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from vhjax import optim
from vhjax.train import controls


def run(control, values):
    """The states after each value, via a jitted lax.scan."""
    step = lambda state, value: (control.update(state, value),) * 2
    _, states = jax.jit(lambda vs: jax.lax.scan(step, control.init(), vs))(jnp.asarray(values, jnp.float32))
    return states


def test_plateau_reduces_after_patience_bad_steps_and_not_before():
    plateau = controls.reduce_on_plateau(patience=3, factor=0.5)
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]  # bad steps from index 2 on
    scales = np.asarray(run(plateau, values).scale)
    np.testing.assert_allclose(scales, [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_plateau_improvement_resets_count_and_respects_min_delta():
    plateau = controls.reduce_on_plateau(patience=2, factor=0.1, rtol=0.0, atol=0.05)
    # 0.97 and 0.96 are within atol of the best 1.0 -> bad; 0.5 improves; then two bad again
    scales = np.asarray(run(plateau, [1.0, 0.97, 0.5, 0.49, 0.48]).scale)
    np.testing.assert_allclose(scales, [1, 1, 1, 1, 0.1])


def test_plateau_matches_optax_contrib_on_positive_losses():
    rng = np.random.default_rng(0)
    values = np.abs(1.0 + np.cumsum(rng.normal(0.0, 0.05, 60))).astype(np.float32)
    settings = dict(factor=0.5, patience=4, rtol=1e-2, atol=0.0, cooldown=2, min_scale=0.01)
    ours = np.asarray(run(controls.reduce_on_plateau(**settings), values).scale)
    reference = contrib.reduce_on_plateau(**settings)
    step = lambda state, value: (reference.update(jnp.zeros(()), state, value=value)[1],) * 2
    _, states = jax.jit(lambda vs: jax.lax.scan(step, reference.init(jnp.zeros(())), vs))(jnp.asarray(values))
    expected = np.asarray(states.scale)
    assert min(expected) < 1.0  # the sequence exercises reductions
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_plateau_max_mode_and_vmap_over_members():
    plateau = controls.reduce_on_plateau(mode="max", patience=2, factor=0.5, rtol=0.0, atol=1e-3)
    members = jnp.array([[0.5, 0.6, 0.7, 0.8], [0.5, 0.4, 0.4, 0.4]])  # rising accuracy vs stuck
    states = jax.vmap(lambda vs: run(plateau, vs))(members)
    np.testing.assert_allclose(states.scale[:, -1], [1.0, 0.5])
    np.testing.assert_allclose(states.best[:, -1], [0.8, 0.5])


def test_scaled_learning_rate_sets_the_injected_rate():
    opt = optim.make_optimizer("sgd", learning_rate=0.1)
    opt_state = opt.init({"w": jnp.ones(2)})
    scaled = jax.jit(controls.scaled_learning_rate)(opt_state, 0.1, jnp.float32(0.25))
    np.testing.assert_allclose(optim.get_hyperparams(scaled)["learning_rate"], 0.025, rtol=1e-6)


def test_early_stopping_min_and_max_modes():
    stopper = controls.early_stopping(mode="min", patience=2, min_delta=0.01)
    states = run(stopper, [1.0, 0.8, 0.795, 0.9, 0.7])
    np.testing.assert_array_equal(states.stop, [False, False, False, True, True])  # stays stopped
    assert int(states.best_index[2]) == 1 and float(states.best[2]) == pytest.approx(0.8)
    accuracy = controls.early_stopping(mode="max", patience=3)
    states = run(accuracy, [0.1, 0.5, 0.4, 0.5, 0.45, 0.6])
    np.testing.assert_array_equal(states.stop, [False, False, False, False, True, True])
    assert int(states.best_index[-1]) == 1


def test_control_settings_validated():
    for kwargs, field in [({"mode": "up"}, "mode"), ({"patience": 0}, "patience"), ({"factor": 1.5}, "factor")]:
        with pytest.raises(ValueError, match=field):
            controls.reduce_on_plateau(**kwargs)
    with pytest.raises(ValueError, match="min_delta"):
        controls.early_stopping(min_delta=-1.0)


PARAMS = {"encoder": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}},
          "head": {"kernel": jnp.ones((2, 1)), "bias": jnp.zeros(1)}}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)


def test_path_labels_first_matching_glob():
    labels = controls.path_labels([("encoder/*", "body"), ("*/bias", "bias")])(PARAMS)
    assert labels["encoder"]["Dense_0"]["bias"] == "body"
    assert labels["head"]["bias"] == "bias" and labels["head"]["kernel"] == "default"


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_frozen_layers_do_not_change_and_multipliers_scale(name):
    base = optim.make_optimizer(name, learning_rate=0.1)
    tx = controls.layerwise(base, multipliers={"head/bias": 3.0}, frozen=["encoder/*"])
    reference = optim.make_optimizer(name, learning_rate=0.1)
    state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
    updates, state = jax.jit(tx.update)(GRADS, state, PARAMS)
    ref_updates, _ = reference.update(GRADS, ref_state, PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    np.testing.assert_array_equal(new["encoder"]["Dense_0"]["kernel"], PARAMS["encoder"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(new["encoder"]["Dense_0"]["bias"], PARAMS["encoder"]["Dense_0"]["bias"])
    assert np.all(np.asarray(new["head"]["kernel"]) != 1.0)
    np.testing.assert_allclose(updates["head"]["kernel"], ref_updates["head"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["bias"], 3.0 * ref_updates["head"]["bias"], rtol=1e-6)
    assert float(optim.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


def test_multisteps_accumulates_and_equals_one_big_batch_sgd_step():
    k, lr = 3, 0.1
    x = jax.random.normal(jax.random.key(0), (k * 4, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    loss = lambda p, xb, yb: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)
    tx = controls.accumulate_gradients(optim.make_optimizer("sgd", learning_rate=lr), k)
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for i in range(k):
        grads = jax.grad(loss)(params, x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4])
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    for p in history[:-1]:
        np.testing.assert_array_equal(p["w"], 0.0)
    big_grads = jax.grad(loss)({"w": jnp.zeros(3), "b": jnp.zeros(())}, x, y)
    np.testing.assert_allclose(history[-1]["w"], -lr * big_grads["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(history[-1]["b"], -lr * big_grads["b"], rtol=1e-5, atol=1e-7)
    assert float(optim.get_hyperparams(state)["learning_rate"]) == pytest.approx(lr)
    with pytest.raises(ValueError, match="every_k"):
        controls.accumulate_gradients(optax.sgd(0.1), 0)
