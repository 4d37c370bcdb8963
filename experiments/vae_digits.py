"""A variational autoencoder (vhjax.models.VAE, MLP encoder/decoder) on sklearn digits (8x8 in [0, 1]).

Measured: the test-set evidence lower bound with a Bernoulli likelihood, reported as -ELBO in nats
per image (lower is better; each test image's ELBO is averaged over 16 posterior samples), mean ±
std over seeds trained together as one population (the `vhjax.population` engine: a member step
from `make_loss_step`, each member drawing its own batches). Saves originals vs reconstructions
(posterior means) of 10 test images, plus 10 samples from the prior.

Command:  python experiments/vae_digits.py [--steps 3000] [--seeds 3]
Hardware: 2-core CPU, about a minute. Writes experiments/results/vae_digits.md and
experiments/figures/vae_digits.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.data import load
from vhjax.hardware import describe
from vhjax.models import VAE, elbo
from vhjax.population import init_members, make_loss_step

import member_runs

EVAL_SAMPLES = 16


def train_seeds(model: VAE, x_train: jax.Array, seeds: int, steps: int, batch_size: int, lr: float, key):
    """`seeds` VAEs as one population trained by the engine: each member draws its own batches and
    its own ELBO noise. Returns params stacked over seeds and the (steps, seeds) training losses."""
    optimizer = optax.adam(lr)
    init_fn = lambda k: model.init({"params": k, "latent": k}, x_train[:2])["params"]
    loss_fn = lambda params, x, k, hparams: -elbo(model, {"params": params}, x, k, train=True).mean()
    population = member_runs.own_data(init_members(init_fn, optimizer, key, seeds))
    population, metrics = member_runs.train(population, make_loss_step(loss_fn, optimizer), x_train, steps,
                                            member_runs.own_batches(batch_size, x_train.shape[0]))
    return population.members.params, metrics["loss"]


def test_neg_elbo(model: VAE, params, x_test: jax.Array, key) -> np.ndarray:
    """Per-seed mean over test images of -ELBO (each averaged over EVAL_SAMPLES posterior samples)."""

    def one(p, k):
        values = jax.vmap(lambda kk: elbo(model, {"params": p}, x_test, kk))(jax.random.split(k, EVAL_SAMPLES))
        return -values.mean()

    seeds = jax.tree.leaves(params)[0].shape[0]
    return np.asarray(jax.jit(jax.vmap(one))(params, jax.random.split(key, seeds)))


def save_figure(model: VAE, params, x_test: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = jax.tree.map(lambda a: a[0], params)
    originals = x_test[:10]
    logits, _, _ = model.apply({"params": first}, jnp.asarray(originals))
    recon = np.asarray(jax.nn.sigmoid(logits))
    z = jax.random.normal(jax.random.key(123), (10, model.latent_dim))
    samples = np.asarray(jax.nn.sigmoid(model.apply({"params": first}, z, method="decode")))
    figure, axes = plt.subplots(3, 10, figsize=(10, 3.3))
    for row, (images, label) in enumerate(((originals, "original"), (recon, "reconstruction"), (samples, "prior sample"))):
        for col in range(10):
            axes[row, col].imshow(images[col, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
            axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle("VAE on sklearn digits (test images, seed 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--out", default="experiments/results/vae_digits.md")
    parser.add_argument("--figure", default="experiments/figures/vae_digits.png")
    args = parser.parse_args()
    start = time.perf_counter()
    x_train = jnp.asarray(load("digits", "train").x)
    x_test = np.asarray(load("digits", "test").x)
    model = VAE(data_shape=(8, 8, 1), latent_dim=args.latent, widths=(256, 128))
    params, losses = train_seeds(model, x_train, args.seeds, args.steps, args.batch_size, 1e-3, jax.random.key(0))
    test = test_neg_elbo(model, params, jnp.asarray(x_test), jax.random.key(1))
    train_final = np.asarray(losses)[-100:].mean(axis=0)
    save_figure(model, params, x_test, Path(args.figure))
    wall = time.perf_counter() - start
    print(f"train -ELBO (last 100 steps) {train_final.mean():.2f}; test -ELBO {test.mean():.2f} ± {test.std():.2f} "
          f"nats/image (per seed {', '.join(f'{v:.2f}' for v in test)}); wall {wall:.0f} s")
    lines = ["### VAE on sklearn digits", "",
             f"MLP VAE (encoder 64-256-128, latent {args.latent}, Bernoulli decoder), {args.steps} Adam steps "
             f"(lr 1e-3, batch {args.batch_size}) on the 1437 training digits (8x8, in [0, 1]). Metric: test-set "
             f"negative ELBO in nats per image (360 test digits, {EVAL_SAMPLES} posterior samples each; lower is "
             f"better), mean ± std over {args.seeds} seeds trained together as one population (`vhjax.population` engine). The pixels are grey levels, "
             "so the Bernoulli likelihood is the usual surrogate, not a density of the data: compare the number "
             "only with other Bernoulli-likelihood results on the same [0, 1] scaling.", "",
             "| model | test -ELBO (nats/image) | per seed | train -ELBO (last 100 steps) |", "|---|---|---|---|",
             f"| VAE (256, 128), z = {args.latent} | {test.mean():.2f} ± {test.std():.2f} | "
             f"{', '.join(f'{v:.2f}' for v in test)} | {train_final.mean():.2f} |", "",
             f"Figure: `{args.figure}` (test originals, reconstructions, prior samples).  ",
             f"Command: `python experiments/vae_digits.py --steps {args.steps} --seeds {args.seeds}`  ",
             f"Hardware: {describe()}  ", f"Wall time: {wall:.0f} s", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
