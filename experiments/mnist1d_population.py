"""64 MNIST-1D CNNs in one program: learning rate x weight decay x dropout x augmentation strength.

Every member is the paper's CNN (three stride-2 convolutions, 25 channels). The 64 members differ
only in hyperparameters, which are arrays inside one compiled, vmapped training step, so the
whole grid is one bucket: one compilation, one scan-compiled loop. Augmentation is a random
shift plus Gaussian noise whose strength varies per member (strength 0 = no augmentation).

Prints a leaderboard and saves a heat map of test accuracy over learning rate x weight decay
(best over dropout and augmentation), plus the per-member table.

Command:  python experiments/mnist1d_population.py
Hardware: 2-core CPU, a few minutes. Writes experiments/results/mnist1d_population.md and
experiments/figures/mnist1d_population.png.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from vhjax.config import TrainConfig
from vhjax.population import fit_population

LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
DROPOUTS = (0.0, 0.2)
AUG_STRENGTHS = (0.0, 0.5)


def members() -> list[dict]:
    return [{"learning_rate": lr, "weight_decay": wd, "dropout_rate": dropout,
             "augment": ({"name": "shift", "strength": aug}, {"name": "gaussian_noise", "strength": aug * 0.2})}
            for lr, wd, dropout, aug in itertools.product(LEARNING_RATES, WEIGHT_DECAYS, DROPOUTS, AUG_STRENGTHS)]


def heat_map(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(LEARNING_RATES), len(WEIGHT_DECAYS)), np.nan)
    for m in result.members:
        i, j = LEARNING_RATES.index(m["config"]["learning_rate"]), WEIGHT_DECAYS.index(m["config"]["weight_decay"])
        value = m["test"]["accuracy"] if m["diverged_step"] is None else np.nan
        grid[i, j] = np.nanmax([grid[i, j], value])
    figure, axis = plt.subplots(figsize=(5, 4))
    image = axis.imshow(grid, cmap="viridis", origin="lower")
    axis.set_xticks(range(len(WEIGHT_DECAYS)), [f"{w:g}" for w in WEIGHT_DECAYS])
    axis.set_yticks(range(len(LEARNING_RATES)), [f"{lr:g}" for lr in LEARNING_RATES])
    for (i, j), value in np.ndenumerate(grid):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize=8)
    axis.set(xlabel="weight decay", ylabel="learning rate",
             title="MNIST-1D CNN test accuracy\n(best over dropout x augmentation)")
    figure.colorbar(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--workdir", default="runs/mnist1d_population")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mnist1d_population.md"))
    parser.add_argument("--figure", default=str(Path(__file__).parent / "figures" / "mnist1d_population.png"))
    args = parser.parse_args()
    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", optimizer="adamw", learning_rate=1e-2,
                         batch_size=100, steps=args.steps, eval_every=max(1, args.steps // 6),
                         train_split="train[:90%]", eval_split="train[90%:]", test_split="test", seed=0)
    start = time.time()
    result = fit_population(config, members(), args.workdir)
    wall = time.time() - start
    table = result.table(metric="accuracy", split="test", top=10)
    print(table)
    heat_map(result, Path(args.figure))
    report = [f"64 MNIST-1D CNNs, {args.steps} steps each, one bucket; wall time {wall:.0f} s "
              f"(buckets: {len(result.states)}).", "", "Top 10 by test accuracy:", "", table, ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report))
    print(f"\nwall time {wall:.0f} s; wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
