"""Multi-task learning on MNIST-1D: do auxiliary tasks help the digit? Every task weighting (and
seed) a member of one program.

Tasks on the same signals: the digit (10 classes), its parity and whether it is >= 5 (2 classes
each). A shared MLP trunk (100, 100), one Dense head per task (`vhjax.multitask.MultiTaskNet`),
Adam 1e-3, batch 64, 3000 steps, trained on the first N training signals (N = 500 and 4000);
members weight the auxiliary tasks 0 (the digit alone), 0.3, 1 or 3, 3 seeds each, one program per
N; a second program weights the tasks by learnt uncertainty (Kendall et al. 2018). Test accuracy
per task on the 1000 test signals, mean +- std over seeds.

Command:  python experiments/multitask_table.py            (3 seeds)
          python experiments/multitask_table.py --quick    (1 seed, 300 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU: 24 s (2026-12-07); --quick about 10 s.
Results:  experiments/results/multitask_mnist1d.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vhjax.data import load
from vhjax.multitask import MultiTaskNet, Trunk, fit_multitask

AUX_WEIGHTS = (0.0, 0.3, 1.0, 3.0)


def labels(y: np.ndarray) -> np.ndarray:
    return np.stack([y, y % 2, (y >= 5).astype(np.int32)], axis=1)


def run(size: int, seeds: int, steps: int) -> tuple[list[str], float]:
    train, test = load("mnist1d", "train"), load("mnist1d", "test")
    data = (train.x[:size], labels(train.y[:size]))
    held = (test.x, labels(test.y))
    model = MultiTaskNet(Trunk((100, 100)), (10, 2, 2))
    started = time.perf_counter()
    weights = np.repeat([[1.0, w, w] for w in AUX_WEIGHTS], seeds, axis=0)
    fixed = fit_multitask(model, data, held, weights, steps=steps)
    learnt = fit_multitask(model, data, held, np.ones((seeds, 3)), steps=steps, uncertainty=True)
    seconds = time.perf_counter() - started
    lines = ["| N | auxiliary weight | digit | parity | >= 5 |", "|---|---|---|---|---|"]
    cell = lambda values: f"{values.mean():.4f} ± {values.std():.4f}"  # noqa: E731
    for i, w in enumerate(AUX_WEIGHTS):
        block = fixed.accuracy[i * seeds:(i + 1) * seeds]
        lines.append(f"| {size} | {w:g} | " + " | ".join(cell(block[:, t]) for t in range(3)) + " |")
    variance = learnt.log_variance.mean(axis=0)
    lines.append(f"| {size} | learnt (uncertainty; mean log-variances {', '.join(f'{v:.2f}' for v in variance)}) | "
                 + " | ".join(cell(learnt.accuracy[:, t]) for t in range(3)) + " |")
    return lines, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 steps (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder for multitask_mnist1d.md (default: experiments/results, "
                        "not written with --quick)")
    args = parser.parse_args()
    seeds, steps = (1, 300) if args.quick else (args.seeds, 3000)
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    text = ["# Multi-task learning on MNIST-1D", ""]
    for size in (500, 4000):
        lines, seconds = run(size, seeds, steps)
        header = f"N = {size}: {len(AUX_WEIGHTS) * seeds} + {seeds} members in two programs, {steps} steps, {seconds:.0f} s"
        print(header, "", *lines, "", sep="\n", flush=True)
        text += [header, "", *lines, ""]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "multitask_mnist1d.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
