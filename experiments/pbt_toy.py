"""PBT toy problem of Jaderberg et al. 2017, Figure 2, with its ablations.

Maximize Q(theta) = 1.2 - (theta0^2 + theta1^2) while only the surrogate
Q_hat(theta | h) = 1.2 - (h0 theta0^2 + h1 theta1^2) can be differentiated.
Two workers start at theta = (0.9, 0.9) with h = (1, 0) and (0, 1); each takes
gradient-ascent steps on Q_hat and, every `interval` steps, PBT ranks them by
the true Q: the worse worker copies theta and h from the better one (exploit)
and adds Gaussian noise to its copied h (explore). Ablations: exploit only,
explore only (every worker perturbs its own h, nothing is copied) and grid
search (h fixed). h lives in the unit cube, as vhjax hyperparameters do.

Everything runs in JAX: one `lax.scan` over steps, both workers vectorized.

Command:   python experiments/pbt_toy.py [--seeds 20] [--steps 200]
Hardware:  any CPU, a few seconds.
Expected:  PBT ends at Q ~ 1.19-1.2; explore only ~1.0-1.1; exploit only and grid
           search stay near 0.39 (one coordinate of theta never moves).
Writes:    experiments/figures/pbt_toy.png (theta trajectories over the Q contours).
"""

from __future__ import annotations

import argparse
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.population import exploit as pbt

VARIANTS = {  # name -> (exploit, explore)
    "pbt": (True, True),
    "explore only": (False, True),
    "exploit only": (True, False),
    "grid search": (False, False),
}
THETA_INIT = (0.9, 0.9)
H_INIT = ((1.0, 0.0), (0.0, 1.0))


def true_objective(theta: jax.Array) -> jax.Array:
    """Q(theta) = 1.2 - |theta|^2, the metric we care about (one worker)."""
    return 1.2 - jnp.sum(theta**2, axis=-1)


def surrogate_objective(theta: jax.Array, h: jax.Array) -> jax.Array:
    """Q_hat(theta | h) = 1.2 - sum(h * theta^2), the one we can differentiate."""
    return 1.2 - jnp.sum(h * theta**2)


@functools.partial(jax.jit, static_argnames=("exploit", "explore", "steps", "interval"))
def run_toy(
    key: jax.Array,
    *,
    exploit: bool,
    explore: bool,
    steps: int = 200,
    interval: int = 4,
    learning_rate: float | jax.Array = 0.01,
    noise_scale: float | jax.Array = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """Run one variant. Returns (theta trajectory (steps + 1, 2, 2), Q per step (steps + 1, 2))."""
    theta0 = jnp.array([THETA_INIT, THETA_INIT], jnp.float32)
    h0 = jnp.array(H_INIT, jnp.float32)
    ascent = jax.vmap(jax.grad(surrogate_objective))

    def step(carry, step_key):
        theta, h, since = carry
        theta = theta + learning_rate * ascent(theta, h)
        since = since + 1
        ready = pbt.is_ready(since, interval)
        scores = -true_objective(theta)  # minimized
        if exploit:
            round_ = pbt.exploit_explore(
                step_key,
                scores,
                h,
                fraction=0.5,
                ready=ready,
                factors=(1.0,),
                noise_scale=noise_scale if explore else 0.0,
            )
            theta = pbt.gather_members(theta, round_.src_index)
            h = round_.hparams_u
        elif explore:
            h = pbt.explore(step_key, h, ready, factors=(1.0,), noise_scale=noise_scale)
        since = pbt.reset_ready(since, ready)
        return (theta, h, since), theta

    carry = (theta0, h0, jnp.zeros((2,), jnp.int32))
    _, thetas = jax.lax.scan(step, carry, jax.random.split(key, steps))
    thetas = jnp.concatenate([theta0[None], thetas])
    return thetas, true_objective(thetas)


def final_q(key: jax.Array, variant: str, **kwargs) -> float:
    """Best worker's true Q at the end of training."""
    exploit, explore = VARIANTS[variant]
    _, q = run_toy(key, exploit=exploit, explore=explore, **kwargs)
    return float(jnp.max(q[-1]))


def table(seeds: int, **kwargs) -> dict[str, tuple[float, float]]:
    """Mean and std over seeds of the final Q of every variant."""
    results = {}
    for variant in VARIANTS:
        qs = [final_q(jax.random.PRNGKey(seed), variant, **kwargs) for seed in range(seeds)]
        results[variant] = (float(np.mean(qs)), float(np.std(qs)))
    return results


def plot(path: pathlib.Path, seed: int = 0, **kwargs) -> None:
    """Theta trajectories of both workers over the contours of Q, one panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-0.1, 1.0, 200)
    t0, t1 = np.meshgrid(grid, grid)
    q = 1.2 - (t0**2 + t1**2)
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4 * len(VARIANTS), 4.6), sharey=True)
    for ax, variant in zip(axes, VARIANTS):
        exploit, explore = VARIANTS[variant]
        thetas, qs = run_toy(jax.random.PRNGKey(seed), exploit=exploit, explore=explore, **kwargs)
        thetas = np.asarray(thetas)
        ax.contourf(t0, t1, q, levels=20, cmap="viridis", alpha=0.8)
        for worker, color in zip(range(2), ("tab:red", "white")):
            ax.plot(thetas[:, worker, 0], thetas[:, worker, 1], ".", ms=3, color=color)
        ax.set_title(f"{variant}: Q={float(np.max(qs[-1])):.3f}")
        ax.set_xlabel("theta0")
        ax.set_aspect("equal")
    axes[0].set_ylabel("theta1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--noise-scale", type=float, default=0.1)
    parser.add_argument(
        "--figure", default=str(pathlib.Path(__file__).parent / "figures" / "pbt_toy.png")
    )
    args = parser.parse_args()
    kwargs = dict(steps=args.steps, interval=args.interval, noise_scale=args.noise_scale)
    print(f"final true Q (best of 2 workers), {args.seeds} seeds, {args.steps} steps")
    print(f"{'variant':<14} {'Q mean':>8} {'Q std':>8}")
    for variant, (mean, std) in table(args.seeds, **kwargs).items():
        print(f"{variant:<14} {mean:8.4f} {std:8.4f}")
    plot(pathlib.Path(args.figure), **kwargs)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
