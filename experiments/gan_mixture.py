"""GANs (vhjax.models.Generator / Discriminator, MLP kind) on a ring of 8 Gaussians.

Data: 8 isotropic 2-D Gaussians, std 0.02, centred on a circle of radius 2 (the standard
mode-collapse benchmark of Metz et al. 2017 / Srivastava et al. 2017). Measured on 2,500
generated samples per seed: modes covered (a mode counts when at least 1% of all samples lie
within 3 std of its centre) and the fraction of high-quality samples (within 3 std of some mode),
mean ± std over seeds trained together as one population, for the standard (non-saturating) loss
and for WGAN-GP (Gulrajani et al. 2017). Saves a scatter plot per seed and loss.

One GAN is one member: its step (`make_gan_step`, written for ONE member) runs the discriminator
step(s) then the generator step, with params and optimizer states `{'g': ..., 'd': ...}`; the
engine (`vhjax.population.PopulationRunner`, driven by `run_loop`) vmaps it over seeds, scans the
steps and isolates a diverging member.

Command:  python experiments/gan_mixture.py [--steps 4000] [--wgan-steps 5000] [--seeds 3]
Hardware: 2-core CPU, a few minutes. Writes experiments/results/gan_mixture.md and
experiments/figures/gan_mixture.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.hardware import describe
from vhjax.models import Discriminator, Generator
from vhjax.models.generative import (gan_discriminator_loss, gan_generator_loss, gradient_penalty,
                                    wasserstein_critic_loss, wasserstein_generator_loss)
from vhjax.population import PopulationState, new_population
from vhjax.train.state import TrainState

import member_runs

MODES, RADIUS, STD = 8, 2.0, 0.02
LATENT = 16
EVAL_SAMPLES = 2500
MIN_SHARE = 0.01


def centres() -> jax.Array:
    angles = 2 * jnp.pi * jnp.arange(MODES) / MODES
    return RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def sample_real(key: jax.Array, n: int) -> jax.Array:
    mode_key, noise_key = jax.random.split(key)
    return centres()[jax.random.randint(mode_key, (n,), 0, MODES)] + STD * jax.random.normal(noise_key, (n, 2))


def make_gan_step(gen: Generator, disc: Discriminator, g_opt: optax.GradientTransformation,
                  d_opt: optax.GradientTransformation, batch: int, loss: str = "standard", critic_steps: int = 5,
                  gp_weight: float = 0.1):
    """The member step of ONE GAN: `inner` discriminator (critic) steps, then one generator step.

    A member is a `TrainState` whose params and opt_state are `{'g': ..., 'd': ...}`; real samples,
    latents and gradient-penalty points are drawn from the member's key folded with its step.
    loss 'standard': one discriminator step (cross-entropy) per generator step (non-saturating);
    'wgan-gp': `critic_steps` critic steps with gradient penalty per generator step."""
    inner = critic_steps if loss == "wgan-gp" else 1

    def d_loss_fn(p, real, fake, k):
        critic = lambda x: disc.apply({"params": p}, x)
        if loss == "standard":
            return gan_discriminator_loss(critic(real), critic(fake))
        return wasserstein_critic_loss(critic(real), critic(fake)) + gp_weight * gradient_penalty(critic, real, fake, k)

    g_loss_fn = gan_generator_loss if loss == "standard" else wasserstein_generator_loss

    def member_step(member: TrainState, _batch) -> tuple[TrainState, dict]:
        g_params = member.params["g"]
        k_d, k_z2 = jax.random.split(jax.random.fold_in(member.key, member.step))

        def d_step(carry, k):
            d_params, d_state = carry
            k_real, k_z, k_gp = jax.random.split(k, 3)
            real = sample_real(k_real, batch)
            fake = gen.apply({"params": g_params}, jax.random.normal(k_z, (batch, LATENT)))
            d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params, real, fake, k_gp)
            updates, d_state = d_opt.update(d_grads, d_state, d_params)
            return (optax.apply_updates(d_params, updates), d_state), d_loss

        (d_params, d_state), d_losses = jax.lax.scan(d_step, (member.params["d"], member.opt_state["d"]),
                                                     jax.random.split(k_d, inner))
        z = jax.random.normal(k_z2, (batch, LATENT))
        g_loss, g_grads = jax.value_and_grad(lambda p: g_loss_fn(
            disc.apply({"params": d_params}, gen.apply({"params": p}, z))))(g_params)
        updates, g_state = g_opt.update(g_grads, member.opt_state["g"], g_params)
        g_params = optax.apply_updates(g_params, updates)
        member = member.replace(step=member.step + 1, params={"g": g_params, "d": d_params},
                                opt_state={"g": g_state, "d": d_state})
        return member, {"loss": g_loss, "d_loss": d_losses.mean()}

    return member_step


def init_gans(gen: Generator, disc: Discriminator, g_opt: optax.GradientTransformation,
              d_opt: optax.GradientTransformation, seeds: int, key: jax.Array) -> PopulationState:
    """`seeds` GAN members: seed i initialises G and D from its own key and trains with its own key."""

    def one(k):
        kg, kd, k_loop = jax.random.split(k, 3)
        params = {"g": gen.init(kg, jnp.zeros((1, LATENT)))["params"], "d": disc.init(kd, jnp.zeros((1, 2)))["params"]}
        opt_state = {"g": g_opt.init(params["g"]), "d": d_opt.init(params["d"])}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=opt_state,
                          hparams={}, key=k_loop, data_key=jax.random.fold_in(k_loop, member_runs.DATA_TAG))

    return new_population(jax.vmap(one)(jax.random.split(key, seeds)))


def train_seeds(gen: Generator, disc: Discriminator, seeds: int, steps: int, batch: int, lr: float, key,
                loss: str = "standard", critic_steps: int = 5, gp_weight: float = 0.1):
    """`seeds` GANs as one population trained by the engine; returns (G params stacked over seeds,
    per-step metrics (steps, seeds): 'loss' of G, 'd_loss' of D)."""
    b2 = 0.9 if loss == "wgan-gp" else 0.999
    g_opt, d_opt = optax.adam(lr, b1=0.5, b2=b2), optax.adam(lr, b1=0.5, b2=b2)
    step = make_gan_step(gen, disc, g_opt, d_opt, batch, loss, critic_steps, gp_weight)
    population, metrics = member_runs.train(init_gans(gen, disc, g_opt, d_opt, seeds, key), step, None, steps,
                                            member_runs.no_batches)
    return population.members.params["g"], metrics


def mode_metrics(samples: np.ndarray) -> tuple[int, float]:
    """(modes covered, fraction of samples within 3 std of some mode) for samples (n, 2)."""
    distances = np.linalg.norm(samples[:, None, :] - np.asarray(centres())[None], axis=-1)  # (n, MODES)
    near = distances < 3 * STD
    covered = int((near.mean(axis=0) >= MIN_SHARE).sum())
    return covered, float(near.any(axis=1).mean())


def save_figure(runs: list[tuple[str, np.ndarray, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = runs[0][1].shape[0]
    real = np.asarray(sample_real(jax.random.key(99), EVAL_SAMPLES))
    figure, axes = plt.subplots(len(runs), seeds + 1, figsize=(3 * (seeds + 1), 3 * len(runs)), squeeze=False)
    for row, (label, samples, metrics) in enumerate(runs):
        axes[row, 0].scatter(real[:, 0], real[:, 1], s=2, alpha=0.4, color="tab:blue")
        axes[row, 0].set_title("real data", fontsize=9)
        axes[row, 0].set_ylabel(label)
        for i in range(seeds):
            axes[row, i + 1].scatter(samples[i, :, 0], samples[i, :, 1], s=2, alpha=0.4, color="tab:orange")
            axes[row, i + 1].set_title(f"seed {i}: {metrics[i][0]}/8 modes, {metrics[i][1]:.0%} HQ", fontsize=9)
    for axis in axes.ravel():
        axis.scatter(*np.asarray(centres()).T, marker="x", color="k", s=20)
        axis.set_xlim(-3, 3), axis.set_ylim(-3, 3), axis.set_aspect("equal")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="generator steps, standard GAN")
    parser.add_argument("--wgan-steps", type=int, default=5000, help="generator steps, WGAN-GP (5 critic steps each)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--out", default="experiments/results/gan_mixture.md")
    parser.add_argument("--figure", default="experiments/figures/gan_mixture.png")
    args = parser.parse_args()
    start = time.perf_counter()
    gen = Generator(data_shape=(2,), latent_dim=LATENT, kind="mlp", features=(128, 128), output_activation=None)
    disc = Discriminator(data_shape=(2,), kind="mlp", features=(128, 128))
    z = jax.random.normal(jax.random.key(1), (EVAL_SAMPLES, LATENT))
    runs, rows = [], []
    for loss, steps, label in (("standard", args.steps, "standard GAN (non-saturating), 1 D step per G step"),
                               ("wgan-gp", args.wgan_steps, "WGAN-GP (lambda 0.1), 5 critic steps per G step")):
        tick = time.perf_counter()
        g_params, _ = train_seeds(gen, disc, args.seeds, steps, args.batch_size, args.lr, jax.random.key(0), loss)
        samples = np.asarray(jax.vmap(lambda p: gen.apply({"params": p}, z))(g_params))
        metrics = [mode_metrics(s) for s in samples]
        modes = np.array([m[0] for m in metrics], float)
        quality = np.array([m[1] for m in metrics])
        seconds = time.perf_counter() - tick
        print(f"{label}, {steps} G steps: modes covered {modes.mean():.2f} ± {modes.std():.2f} of 8 (per seed "
              f"{modes.astype(int).tolist()}); high-quality samples {quality.mean():.3f} ± {quality.std():.3f} "
              f"({', '.join(f'{q:.3f}' for q in quality)}); {seconds:.0f} s", flush=True)
        runs.append((loss, samples, metrics))
        rows.append(f"| {label} | {steps} | {modes.mean():.2f} ± {modes.std():.2f} | {quality.mean():.3f} ± "
                    f"{quality.std():.3f} | {'; '.join(f'{int(m)}, {q:.3f}' for m, q in zip(modes, quality))} | "
                    f"{seconds:.0f} s |")
    save_figure(runs, Path(args.figure))
    wall = time.perf_counter() - start
    lines = ["### GAN on a ring of 8 Gaussians", "",
             f"MLP generator (latent {LATENT}, 128-128) and discriminator/critic (128-128, leaky ReLU), Adam "
             f"(lr {args.lr:g}, b1 0.5; b2 0.9 for WGAN-GP), batch {args.batch_size}. Data: 8 Gaussians of std {STD} "
             f"on a circle of radius {RADIUS}. On {EVAL_SAMPLES} generated samples: a mode is covered when >= "
             f"{MIN_SHARE:.0%} of samples lie within 3 std of it; high-quality (HQ) = within 3 std of some mode. "
             f"Mean ± std over {args.seeds} seeds trained together as one population "
             f"(the `vhjax.population` engine, one alternating member step).", "",
             "| loss | generator steps | modes covered (of 8) | high-quality samples | per seed (modes, HQ) | time |",
             "|---|---|---|---|---|---|", *rows, "",
             f"Figure: `{args.figure}` (real data and each seed's samples, one row per loss).  ",
             f"Command: `python experiments/gan_mixture.py --steps {args.steps} --wgan-steps {args.wgan_steps} "
             f"--seeds {args.seeds}`  ",
             f"Hardware: {describe()}  ", f"Wall time: {wall:.0f} s (both losses)", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
