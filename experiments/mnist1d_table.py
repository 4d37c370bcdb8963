"""Reproduce the model table of Greydanus, "Scaling Down Deep Learning" (MNIST-1D), 2020.

Protocol (the paper's): Adam, learning rate 1e-2, batch 100, 6000 steps, test accuracy at the end.
Models: logistic 40->10; MLP 40->100 (+ residual 100->100) ->10; CNN of three stride-2 1-D
convolutions with 25 channels and a dense head; bidirectional GRU, hidden size 6.
Inputs: the standard data and the paper's fixed permutation of the 40 positions (shuffled).

Each (model, input) pair is one bucket of `--seeds` members trained in one vmapped program; each
member has its own initialisation, dropout key and data order (independent seeds).

Command:  python experiments/mnist1d_table.py --seeds 3
Hardware: 2-core CPU, a few minutes. Writes experiments/results/mnist1d_table.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vhjax.config import TrainConfig
from vhjax.hardware import cpu_name
from vhjax.population import fit_population

MODELS = [("logistic", "mnist1d_logistic"), ("MLP", "mnist1d_mlp"), ("CNN", "mnist1d_cnn"), ("GRU", "mnist1d_gru")]
PUBLISHED = {"logistic": (32, 32), "MLP": (68, 68), "CNN": (94, 56), "GRU": (91, 57)}  # paper Table 1 (normal, shuffled)
NOTEBOOK = {"logistic": 31.5, "MLP": 65, "CNN": 92, "GRU": 89}  # the paper's reference notebook, single runs



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--workdir", default="runs/mnist1d_table")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mnist1d_table.md"))
    args = parser.parse_args()

    config = TrainConfig(dataset="mnist1d", optimizer="adam", learning_rate=1e-2, batch_size=100,
                         steps=args.steps, eval_every=1000, eval_split="test", seed=0)
    members = [{"model": model, "dataset": dataset}
               for _, model in MODELS for dataset in ("mnist1d", "mnist1d_shuffled") for _ in range(args.seeds)]
    start = time.time()
    result = fit_population(config, members, args.workdir, same_batches=False)
    wall = time.time() - start

    def accuracies(model: str, dataset: str) -> np.ndarray:
        return np.array([100 * m["eval"]["accuracy"] for m in result.members
                         if m["config"]["model"] == model and m["config"]["dataset"] == dataset])

    lines = [
        "| model | published | notebook | ours | published (shuffled) | ours (shuffled) |",
        "|---|---|---|---|---|---|",
    ]
    for label, model in MODELS:
        normal, shuffled = accuracies(model, "mnist1d"), accuracies(model, "mnist1d_shuffled")
        lines.append(f"| {label} | {PUBLISHED[label][0]} | {NOTEBOOK[label]} | {normal.mean():.1f} ± {normal.std():.1f} "
                     f"| {PUBLISHED[label][1]} | {shuffled.mean():.1f} ± {shuffled.std():.1f} |")
    footer = (f"\nTest accuracy (%), mean ± std over {args.seeds} seeds, {args.steps} steps. "
              f"Command: `python experiments/mnist1d_table.py --seeds {args.seeds}`. "
              f"Hardware: {cpu_name()}, CPU only. Wall time: {wall / 60:.1f} min.\n")
    table = "\n".join(lines) + "\n" + footer
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
