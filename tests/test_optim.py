"""Optimizers: hand-computed steps, schedules, clipping, injectable per-member hyperparameters."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vhjax.optim import (OPTIMIZERS, get_hyperparams, make_optimizer, make_schedule, set_hyperparams,
                         step_size_multiplier)

CURVATURE = jnp.array([1.0, 3.0])


def quadratic(theta):
    return 0.5 * jnp.sum(CURVATURE * theta**2)


def run_steps(tx, theta, steps):
    """`steps` optimizer steps on `quadratic`, returning every iterate."""
    return run_steps_with_state(tx, theta, steps)[0]


def run_steps_with_state(tx, theta, steps):
    """Every iterate of `steps` optimizer steps on `quadratic`, and the final optimizer state."""

    def step(carry, _):
        theta, state = carry
        updates, state = tx.update(jax.grad(quadratic)(theta), state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), theta

    (_, state), thetas = jax.lax.scan(step, (theta, tx.init(theta)), length=steps)
    return thetas, state


LEARNING_RATES = {
    "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5,
    "rmsprop": 0.02, "adam": 0.05, "adamw": 0.05, "adamax": 0.05, "adadelta": 10.0, "lbfgs": 1.0,  # adadelta: Zeiler has no lr; 1.0 starts slowly at eps=1e-6
}


def test_registry_holds_every_optimizer():
    assert set(OPTIMIZERS.names()) == set(LEARNING_RATES)


@pytest.mark.parametrize("name", sorted(LEARNING_RATES))
def test_every_optimizer_decreases_a_quadratic(name):
    theta0 = jnp.array([2.0, -1.5])
    tx = make_optimizer(name, learning_rate=LEARNING_RATES[name])
    thetas = jax.jit(run_steps, static_argnums=(0, 2))(tx, theta0, 200)
    assert float(quadratic(thetas[-1])) < 0.01 * float(quadratic(theta0))


def test_lbfgs_solves_an_ill_conditioned_quadratic_where_sgd_crawls():
    curvature = jnp.logspace(0, 3, 8)  # condition number 1000
    loss = lambda theta: 0.5 * jnp.sum(curvature * theta**2)  # noqa: E731

    def final_loss(tx, steps):
        def step(carry, _):
            theta, state = carry
            updates, state = tx.update(jax.grad(loss)(theta), state, theta)
            return (optax.apply_updates(theta, updates), state), None

        theta0 = jnp.ones(8)
        (theta, _), _ = jax.lax.scan(step, (theta0, tx.init(theta0)), length=steps)
        return float(loss(theta))

    start = float(loss(jnp.ones(8)))
    assert final_loss(make_optimizer("lbfgs", learning_rate=1.0), 50) < 1e-9 * start
    # plain gradient descent at its largest stable rate (just under 2 / the largest curvature)
    assert final_loss(make_optimizer("sgd", learning_rate=1.9e-3), 50) > 1e-3 * start


def two_steps(tx, theta0):
    thetas = run_steps(tx, jnp.array(theta0), 2)
    return [float(t[0]) for t in thetas]


def test_momentum_two_steps_by_hand():
    # v <- beta v - lr g; theta <- theta + v, on f = 0.5 * theta^2 (g = theta)
    lr, beta, theta = 0.1, 0.9, 2.0
    v = -lr * theta
    theta1 = theta + v
    v = beta * v - lr * theta1
    theta2 = theta1 + v
    got = two_steps(make_optimizer("momentum", learning_rate=lr, momentum=beta), [2.0, 0.0])
    np.testing.assert_allclose(got, [theta1, theta2], rtol=1e-6)


def test_nesterov_two_steps_by_hand():
    # t <- beta t + g; theta <- theta - lr (g + beta t)
    lr, beta, theta, t = 0.1, 0.9, 2.0, 0.0
    expected = []
    for _ in range(2):
        g = theta
        t = beta * t + g
        theta = theta - lr * (g + beta * t)
        expected.append(theta)
    got = two_steps(make_optimizer("nesterov", learning_rate=lr, momentum=beta), [2.0, 0.0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_adam_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.8, 0.9, 1e-8
    theta, m, v, expected = 2.0, 0.0, 0.0, []
    for step in (1, 2):
        g = theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        theta = theta - lr * m_hat / (math.sqrt(v_hat) + eps)
        expected.append(theta)
    got = two_steps(make_optimizer("adam", learning_rate=lr, b1=b1, b2=b2, eps=eps), [2.0, 0.0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_decoupled_weight_decay_scaled_by_learning_rate():
    tx = make_optimizer("adamw", learning_rate=0.5, weight_decay=0.1)
    params = jnp.array([2.0, -4.0])
    updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
    # adam's direction is 0 for a zero gradient: the whole update is -lr * wd * params
    np.testing.assert_allclose(updates, -0.5 * 0.1 * params, rtol=1e-6)


def test_adam_weight_decay_is_l2_on_the_gradient_adamw_decoupled():
    # f = 0.5 * theta^2 (g = theta) plus weight decay wd: adam sees g + wd * theta (one Adam step of a
    # constant-sign gradient moves by ~lr whatever its size), adamw moves lr by Adam and lr * wd * theta more.
    lr, wd, theta = 0.1, 0.5, 2.0
    adam = two_steps(make_optimizer("adam", learning_rate=lr, weight_decay=wd), [theta, 0.0])
    adamw = two_steps(make_optimizer("adamw", learning_rate=lr, weight_decay=wd), [theta, 0.0])
    plain = two_steps(make_optimizer("adam", learning_rate=lr), [theta, 0.0])
    np.testing.assert_allclose(adam[0], theta - lr, rtol=1e-6)  # first Adam step: -lr * sign(g + wd theta)
    np.testing.assert_allclose(adamw[0], theta - lr - lr * wd * theta, rtol=1e-6)
    np.testing.assert_allclose(plain[0], theta - lr, rtol=1e-6)
    assert abs(adamw[1] - adam[1]) > 0.05


def test_coupled_weight_decay_equals_an_l2_gradient_for_every_coupled_optimizer():
    wd, theta0 = 0.3, jnp.array([2.0, -1.5])
    for name, spec in OPTIMIZERS._items.items():
        lr = LEARNING_RATES[name]
        with_wd = run_steps(make_optimizer(name, learning_rate=lr, weight_decay=wd), theta0, 3)
        l2 = optax.chain(optax.add_decayed_weights(wd), make_optimizer(name, learning_rate=lr))
        by_hand = run_steps(l2, theta0, 3)
        if spec.decoupled_weight_decay:
            assert name == "adamw" and not np.allclose(with_wd, by_hand, rtol=1e-4)
        else:
            np.testing.assert_allclose(with_wd, by_hand, rtol=1e-5, err_msg=name)


def test_adadelta_two_steps_by_hand():
    # Zeiler 2012: E[g2] <- rho E[g2] + (1-rho) g^2; dx = -sqrt(E[dx2] + eps) / sqrt(E[g2] + eps) g;
    # E[dx2] <- rho E[dx2] + (1-rho) dx^2; theta <- theta + lr dx
    lr, rho, eps, theta = 1.0, 0.9, 1e-6, 2.0
    eg2 = edx2 = 0.0
    expected = []
    for _ in range(2):
        g = theta
        eg2 = rho * eg2 + (1 - rho) * g * g
        dx = -math.sqrt(edx2 + eps) / math.sqrt(eg2 + eps) * g
        edx2 = rho * edx2 + (1 - rho) * dx * dx
        theta = theta + lr * dx
        expected.append(theta)
    tx = make_optimizer("adadelta", learning_rate=lr, rho=rho, eps=eps)
    np.testing.assert_allclose(two_steps(tx, [2.0, 0.0]), expected, rtol=1e-5)
    assert set(get_hyperparams(tx.init(jnp.zeros(2)))) == {"learning_rate", "weight_decay", "rho", "eps"}
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['momentum'\].*'eps', 'rho'"):
        make_optimizer("adadelta", learning_rate=1.0, momentum=0.9)


def test_cosine_multipliers():
    schedule = make_schedule("cosine", {"alpha": 0.1}, total_steps=100)
    got = [schedule(0), schedule(50), schedule(100), schedule(150)]
    np.testing.assert_allclose(got, [1.0, 0.55, 0.1, 0.1], rtol=1e-5)
    warm = make_schedule("cosine", {"warmup_steps": 10}, total_steps=110)
    got = [warm(0), warm(5), warm(10), warm(60), warm(110)]
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_step_and_exponential_multipliers():
    every = make_schedule("step", {"every": 10, "decay_factor": 0.5})
    np.testing.assert_allclose([every(0), every(9), every(10), every(19), every(20)], [1, 1, 0.5, 0.5, 0.25])
    at = make_schedule("step", {"boundaries": (3, 7), "decay_factor": 0.1})
    np.testing.assert_allclose([at(2), at(3), at(6), at(7), at(100)], [1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    smooth = make_schedule("exponential", {"decay_rate": 0.5, "transition_steps": 4})
    np.testing.assert_allclose([smooth(0), smooth(2), smooth(8)], [1.0, 0.5**0.5, 0.25], rtol=1e-6)
    assert float(make_schedule("constant")(1000)) == 1.0


def test_schedule_multiplies_the_injectable_learning_rate():
    step_decay = {"every": 2, "decay_factor": 0.5}
    tx = make_optimizer("sgd", learning_rate=0.2, schedule="step", schedule_kwargs=step_decay)
    params = jnp.zeros(1)
    state = tx.init(params)
    steps = []
    for _ in range(4):
        updates, state = tx.update(jnp.ones(1), state, params)
        steps.append(float(updates[0]))
    np.testing.assert_allclose(steps, [-0.2, -0.2, -0.1, -0.1], rtol=1e-6)
    state = set_hyperparams(state, learning_rate=1.0)
    updates, _ = tx.update(jnp.ones(1), state, params)
    np.testing.assert_allclose(updates, [-0.25], rtol=1e-6)


def test_clip_norm_limits_the_update_norm():
    tx = make_optimizer("sgd", learning_rate=1.0, clip_norm=2.0)
    params = jnp.zeros(3)
    state = tx.init(params)
    big, _ = tx.update(jnp.array([30.0, -40.0, 0.0]), state, params)
    np.testing.assert_allclose(jnp.linalg.norm(big), 2.0, rtol=1e-6)
    np.testing.assert_allclose(big, [-1.2, 1.6, 0.0], rtol=1e-6)
    small, _ = tx.update(jnp.array([0.3, 0.4, 0.0]), state, params)
    np.testing.assert_allclose(small, [-0.3, -0.4, 0.0], rtol=1e-6)
    looser, _ = tx.update(jnp.array([30.0, -40.0, 0.0]), set_hyperparams(state, clip_norm=10.0), params)
    np.testing.assert_allclose(jnp.linalg.norm(looser), 10.0, rtol=1e-6)


def test_clip_value_acts_elementwise_before_clip_norm():
    tx = make_optimizer("sgd", learning_rate=1.0, clip_value=1.0, clip_norm=100.0)
    params = jnp.zeros(3)
    updates, _ = tx.update(jnp.array([5.0, -0.5, -3.0]), tx.init(params), params)
    np.testing.assert_allclose(updates, [-1.0, 0.5, 1.0])


def test_every_numeric_hyperparameter_is_in_the_state():
    tx = make_optimizer(
        "adam", learning_rate=0.1, clip_norm=1.0, clip_value=2.0, weight_decay=0.01, b1=0.5
    )
    hyper = get_hyperparams(tx.init(jnp.zeros(2)))
    common = {"learning_rate", "weight_decay", "clip_norm", "clip_value"}
    assert set(hyper) == common | {"b1", "b2", "eps", "eps_root"}
    assert float(hyper["b1"]) == 0.5 and hyper["b1"].dtype == jnp.float32
    rms = get_hyperparams(make_optimizer("rmsprop", learning_rate=0.1).init(jnp.zeros(1)))
    assert set(rms) == {"learning_rate", "weight_decay", "decay", "eps", "initial_scale"}


def test_setting_momentum_to_zero_gives_sgd():
    theta0 = jnp.array([2.0, -1.0])
    tx = make_optimizer("momentum", learning_rate=0.1, momentum=0.9)
    state = set_hyperparams(tx.init(theta0), momentum=0.0)
    sgd = make_optimizer("sgd", learning_rate=0.1)
    sgd_state = sgd.init(theta0)
    theta, sgd_theta = theta0, theta0
    for _ in range(3):
        updates, state = tx.update(jax.grad(quadratic)(theta), state, theta)
        theta = theta + updates
        sgd_updates, sgd_state = sgd.update(jax.grad(quadratic)(sgd_theta), sgd_state, sgd_theta)
        sgd_theta = sgd_theta + sgd_updates
    np.testing.assert_allclose(theta, sgd_theta, rtol=1e-6)


def test_population_learning_rates_one_compilation():
    tx = make_optimizer("momentum", learning_rate=0.1, momentum=0.0)
    population = 3
    params = jnp.ones((population, 2))
    states = jax.vmap(tx.init)(params)
    assert get_hyperparams(states)["learning_rate"].shape == (population,)

    traces = []

    @jax.jit
    def population_step(params, states):
        traces.append(1)

        def member_step(theta, state):
            updates, state = tx.update(jnp.ones_like(theta), state, theta)
            return theta + updates, state

        return jax.vmap(member_step)(params, states)

    lrs = jnp.array([0.01, 0.1, 1.0])
    states = set_hyperparams(states, learning_rate=lrs)
    moved, states = population_step(params, states)
    np.testing.assert_allclose(params - moved, jnp.repeat(lrs[:, None], 2, axis=1), rtol=1e-6)

    lrs = jnp.array([0.5, 0.0, 2.0])
    states = set_hyperparams(states, learning_rate=lrs)
    moved_again, _ = population_step(moved, states)
    np.testing.assert_allclose(moved - moved_again, jnp.repeat(lrs[:, None], 2, axis=1), rtol=1e-6)
    assert len(traces) == 1

    shared = set_hyperparams(states, momentum=0.5)  # a scalar broadcasts to every member
    np.testing.assert_allclose(get_hyperparams(shared)["momentum"], [0.5] * population)
    with pytest.raises(ValueError, match="learning_rate"):
        set_hyperparams(states, learning_rate=jnp.ones(4))


def test_hyperparams_found_inside_a_chain():
    tx = optax.chain(optax.identity(), make_optimizer("sgd", learning_rate=0.3))
    state = set_hyperparams(tx.init(jnp.zeros(1)), learning_rate=0.7)
    assert float(get_hyperparams(state)["learning_rate"]) == pytest.approx(0.7)
    updates, _ = tx.update(jnp.ones(1), state, jnp.zeros(1))
    np.testing.assert_allclose(updates, [-0.7], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="lamb", learning_rate=0.1), "unknown optimizer .lamb.*adadelta"),
        (dict(name="adam", learning_rate=0.1, momentum=0.9), "momentum.*b1"),
        (dict(name="sgd", learning_rate=0.1, schedule="linear"), "linear"),
        (dict(name="sgd", learning_rate=0.1, schedule="cosine"), "total_steps"),
        (dict(name="sgd", learning_rate=0.1, schedule="step", schedule_kwargs={"gamma": 0.1}), "gamma"),
        (dict(name="sgd", learning_rate=0.1, schedule="step"), "every"),
        (dict(name="sgd", learning_rate=0.1, schedule="exponential"), "decay_rate"),
        (dict(name="sgd", learning_rate=0.1, schedule="cosine", total_steps=0), "total_steps"),
        (dict(name="sgd", learning_rate=jnp.ones(3)), "learning_rate"),
        (dict(name="sgd", learning_rate=0.1, hypergradient=-1e-3),
         r"optimizer hyperparameter 'hypergradient' has value -0.001; allowed: a finite number >= 0"),
        (dict(name="sgd", learning_rate=0.1, beta=1.0), r"allowed: \[\] and hypergradient"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, **kwargs)


def test_bad_learning_rate_type_and_unknown_hyperparam_names():
    with pytest.raises(TypeError, match="learning_rate"):
        make_optimizer("sgd", learning_rate=lambda step: 0.1)
    state = make_optimizer("sgd", learning_rate=0.1).init(jnp.zeros(1))
    with pytest.raises(ValueError, match="beta.*learning_rate"):
        set_hyperparams(state, beta=0.9)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        get_hyperparams(optax.sgd(0.1).init(jnp.zeros(1)))


def final_loss_and_multiplier(tx, steps=100):
    thetas, state = run_steps_with_state(tx, jnp.array([1.0, 1.0]), steps)
    return float(quadratic(thetas[-1])), step_size_multiplier(state)


@pytest.mark.parametrize("name, small, beta", [("sgd", 1e-3, 1e-3), ("adam", 1e-3, 1e-4)])
def test_hypergradient_descent_raises_a_too_small_step_size_and_is_the_optimizer_at_zero(name, small, beta):
    plain, none = final_loss_and_multiplier(make_optimizer(name, learning_rate=small))
    at_zero, unit = final_loss_and_multiplier(make_optimizer(name, learning_rate=small, hypergradient=0.0))
    learnt, multiplier = final_loss_and_multiplier(make_optimizer(name, learning_rate=small, hypergradient=beta))
    assert none is None and float(unit) == 1.0 and at_zero == plain  # beta 0: the optimizer, exactly
    assert float(multiplier) > 10 and learnt < plain / 50  # SGD-HD / Adam-HD (Baydin et al. 2018)
    assert "hypergradient" in get_hyperparams(make_optimizer(name, learning_rate=small, hypergradient=beta)
                                              .init(jnp.zeros(2)))


def test_hypergradient_descent_lowers_a_step_size_that_oscillates():
    # curvatures 1 and 3: SGD oscillates along the second above 2/3 and diverges past it
    loss, multiplier = final_loss_and_multiplier(make_optimizer("sgd", learning_rate=0.65, hypergradient=1e-2))
    plain, _ = final_loss_and_multiplier(make_optimizer("sgd", learning_rate=0.65))
    assert float(multiplier) < 1.0 and loss < plain


def test_hypergradient_varies_per_member_in_one_program_and_zero_is_the_plain_optimizer():
    import dataclasses

    from vhjax.config import TrainConfig
    from vhjax.population import fit_population

    plain = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                        optimizer="sgd", learning_rate=1e-3, batch_size=32, steps=60, eval_every=60, seed=0)
    config = dataclasses.replace(plain, optimizer_kwargs={"hypergradient": 0.0})
    members = [{"optimizer_kwargs": {"hypergradient": beta}} for beta in (0.0, 0.1)]
    result = fit_population(config, members, mesh=None, verbose=False)
    alone = fit_population(plain, [{}], mesh=None, verbose=False)
    assert len(result.states) == 1  # one bucket: one compiled program for both values
    multiplier = np.asarray(step_size_multiplier(result.states[0].members.opt_state))
    assert multiplier[0] == 1.0 and multiplier[1] > 10.0  # 126 when written: a step size of about 0.13
    losses = [m["eval"]["loss"] for m in result.members]
    assert losses[0] == pytest.approx(alone.members[0]["eval"]["loss"], rel=1e-6)  # beta 0: plain SGD
    assert losses[1] < losses[0] - 1.0  # the learnt step size trains faster from a too-small one (0.87, 2.33)
    with pytest.raises(ValueError, match=r"member 1: hyperparameter 'hypergradient' has value -0.1; allowed: "
                                         r"a finite number in \[0, inf\)"):
        fit_population(config, [{}, {"optimizer_kwargs": {"hypergradient": -0.1}}], mesh=None, verbose=False)
