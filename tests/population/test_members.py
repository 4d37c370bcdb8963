"""Populations of non-classifier models (here a VAE) with per-member hyperparameters and isolation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import optim
from vhjax.data import load
from vhjax.models import get_model
from vhjax.models.generative import elbo
from vhjax.population import fit_members, init_members

MODEL = get_model("vae", data_shape=(64,), latent_dim=4, widths=(32,))
OPTIMIZER = optim.make_optimizer("adam", learning_rate=1e-3)


def init_fn(key):
    return MODEL.init({"params": key, "latent": key}, jnp.zeros((2, 64)))["params"]


def loss_fn(params, x, key, hparams):
    return -elbo(MODEL, {"params": params}, x, key, beta=hparams["beta"]).mean()


@pytest.fixture(scope="module")
def batches():
    x = load("digits", "train").x.reshape(-1, 64)
    rng = np.random.default_rng(0)
    return jnp.asarray(x[rng.integers(0, len(x), (150, 64))])  # (steps, B, 64)


def test_vae_population_learns_and_hyperparameters_vary_per_member(batches):
    population = init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, hparams={"beta": [1.0, 1.0, 1.0]},
                                        optimizer_hparams={"learning_rate": [1e-5, 3e-3, 3e-3]})
    population, losses = fit_members(population, loss_fn, OPTIMIZER, batches, 150)
    assert losses.shape == (150, 3)
    start, end = losses[:10].mean(axis=0), losses[-10:].mean(axis=0)
    assert end[1] < start[1] - 5  # the -ELBO falls by several nats
    assert end[1] < end[0] - 5  # the tiny learning rate really is per member
    strong_kl = init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, hparams={"beta": [1.0, 1.0, 10.0]},
                                       optimizer_hparams={"learning_rate": [1e-5, 3e-3, 3e-3]})
    strong_kl, losses_kl = fit_members(strong_kl, loss_fn, OPTIMIZER, batches, 150)
    np.testing.assert_array_equal(losses_kl[:, :2], losses[:, :2])  # other members are untouched
    assert losses_kl[-10:, 2].mean() > end[2]  # beta is a per-member array inside the same program


def test_diverging_member_is_frozen_and_flagged(batches):
    population = init_members(init_fn, OPTIMIZER, jax.random.key(1), 2, hparams={"beta": 1.0},
                                        optimizer_hparams={"learning_rate": [3e-3, 1e30]})
    population, losses = fit_members(population, loss_fn, OPTIMIZER, batches[:20], 20)
    assert population.alive.tolist() == [True, False] and int(population.diverged_step[1]) >= 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(population.members.params))


def test_unchecked_chunk_equals_checking_every_step_and_frozen_members_stay(batches):
    from vhjax.population import loss_runner

    population = init_members(init_fn, OPTIMIZER, jax.random.key(1), 2, hparams={"beta": 1.0},
                                        optimizer_hparams={"learning_rate": [3e-3, 1e30]})
    population, _ = fit_members(population, loss_fn, OPTIMIZER, batches[:20], 20)  # member 1 diverges
    frozen = jax.tree.map(lambda leaf: np.asarray(leaf)[1], population.members.params)
    checked, checked_metrics = loss_runner(loss_fn, OPTIMIZER, first_step=20, isolation="per_step")(
        jax.tree.map(jnp.copy, population), batches[20:30], 10)
    checked_losses = checked_metrics["loss"]
    population, losses = fit_members(population, loss_fn, OPTIMIZER, batches[20:30], 10)  # no check per step
    # two different XLA programs (per-step checks or not): equal up to float rounding of fusions
    np.testing.assert_allclose(losses[:, 0], np.asarray(checked_losses)[:, 0], rtol=1e-6, atol=1e-9)
    assert np.isnan(losses[:, 1]).all() and np.isnan(np.asarray(checked_losses)[:, 1]).all()
    for a, b, c in zip(jax.tree.leaves(population.members.params), jax.tree.leaves(checked.members.params), jax.tree.leaves(frozen)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(a)[1], c)  # the diverged member stays exactly frozen


def test_bad_input_is_named(batches):
    with pytest.raises(ValueError, match="'beta' has shape \\(2,\\); allowed: \\(3,\\)"):
        init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, hparams={"beta": [1.0, 2.0]})
    with pytest.raises(ValueError, match="unknown optimizer hyperparameter"):
        init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, optimizer_hparams={"lr": 1e-3})
    population = init_members(init_fn, OPTIMIZER, jax.random.key(0), 2, hparams={"beta": 1.0})
    with pytest.raises(ValueError, match="leading axis of length steps=5"):
        fit_members(population, loss_fn, OPTIMIZER, batches[:4], 5)


def test_init_keys_give_each_member_its_own_initialisation():
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(7), s))(jnp.asarray([3, 5, 3]))
    population = init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, hparams={"beta": 1.0}, init_keys=keys)
    for index in range(3):
        alone = init_fn(keys[index])
        for got, want in zip(jax.tree.leaves(population.members.params), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(got)[index], want, rtol=1e-6, atol=1e-7)
    leaves = jax.tree.leaves(population.members.params)
    assert all(np.array_equal(leaf[0], leaf[2]) for leaf in leaves)  # the same seed, the same initialisation
    assert not all(np.array_equal(leaf[0], leaf[1]) for leaf in leaves)
    default = init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, hparams={"beta": 1.0})
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(default.members.params), leaves))
    with pytest.raises(ValueError, match=r"init_keys has shape \(2,\); allowed: 3 typed keys"):
        init_members(init_fn, OPTIMIZER, jax.random.key(0), 3, init_keys=keys[:2])


def test_seq2seq_population_trains_under_vmap():
    import optax

    model = get_model("rnn_seq2seq", src_vocab=12, tgt_vocab=12, embed_dim=8, hidden_size=16)
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.integers(2, 12, (40, 8, 5)))  # (steps, B, L): learn to copy reversed
    batches = (src, jnp.concatenate([jnp.ones((40, 8, 1), src.dtype), src[..., ::-1]], -1),
               jnp.concatenate([src[..., ::-1], jnp.zeros((40, 8, 1), src.dtype)], -1))

    def seq_loss(params, batch, key, hparams):
        source, target_in, target_out = batch
        logits = model.apply({"params": params}, source, target_in)
        return optax.softmax_cross_entropy_with_integer_labels(logits, target_out).mean()

    init = lambda key: model.init(key, src[0], batches[1][0])["params"]
    optimizer = optim.make_optimizer("adam", learning_rate=1e-2)
    population = init_members(init, optimizer, jax.random.key(0), 2,
                                        optimizer_hparams={"learning_rate": [1e-2, 1e-6]})
    population, losses = fit_members(population, seq_loss, optimizer, batches, 40)
    assert losses[-5:, 0].mean() < losses[:5, 0].mean() - 0.3
    assert losses[-5:, 0].mean() < losses[-5:, 1].mean() - 0.3
