"""The zoo demonstrations' own member steps (GAN alternating step, DARTS bi-level step) run through
the engine: each member trains as it would alone, and a diverging GAN is isolated."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def _load(name):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))  # the demos import their shared experiments/member_runs.py
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gan():
    module = _load("gan_mixture")
    gen = module.Generator(data_shape=(2,), latent_dim=module.LATENT, kind="mlp", features=(8,), output_activation=None)
    disc = module.Discriminator(data_shape=(2,), kind="mlp", features=(8,))
    return module, gen, disc


def test_gan_members_train_as_alone_and_divergence_is_isolated(gan):
    module, gen, disc = gan
    runs = module.member_runs
    g_opt, d_opt = optax.adam(1e-3, b1=0.5), optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.5)
    step = module.make_gan_step(gen, disc, g_opt, d_opt, batch=16, loss="wgan-gp", critic_steps=2)
    population = module.init_gans(gen, disc, g_opt, d_opt, 2, jax.random.key(0))
    population = population.replace(members=population.members.replace(opt_state={
        **population.members.opt_state,
        "d": population.members.opt_state["d"]._replace(hyperparams={
            **population.members.opt_state["d"].hyperparams, "learning_rate": jnp.asarray([1e-3, 1e30])})}))
    alone = jax.tree.map(lambda leaf: leaf[0], population.members)
    trained, metrics = runs.train(population, step, None, 4, runs.no_batches)
    assert metrics["loss"].shape == (4, 2) and np.isfinite(metrics["loss"][:, 0]).all()
    assert trained.alive.tolist() == [True, False]  # the member with a huge critic lr is frozen and flagged
    jitted = jax.jit(step)
    for _ in range(4):
        alone, _ = jitted(alone, None)
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(trained.members.params)):
        np.testing.assert_allclose(np.asarray(b)[0], a, rtol=1e-4, atol=1e-5)


def test_darts_member_step_moves_alpha_and_derives_cells():
    module = _load("darts_mnist1d")
    module.MODEL_KWARGS = {"channels": 4, "num_cells": 1, "num_classes": 3}
    module.BATCH = 8
    rng = np.random.default_rng(0)
    split = lambda n: type("Split", (), {"x": rng.normal(size=(n, 16)).astype(np.float32),
                                         "y": rng.integers(0, 3, n).astype(np.int32)})
    cells = module.run_darts(2, 3, split(24), split(12))
    assert len(cells) == 2
    for ops in cells:
        assert ops.shape == (module.NUM_EDGES,) and ops.min() >= 1 and ops.max() < module.NUM_OPS
