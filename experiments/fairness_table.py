"""Fairness across groups: upweighting a minority group, every weight a member of one program.

Data (generated, seeded): 4 Gaussian features; 10% of the examples belong to a minority group,
visible only through feature 2 (shifted by +3, a proxy as real sensitive attributes often have);
the label is [x0 + x1 > 0] in the majority and [x0 - x1 > 0] in the minority (another rule), with
5% of the labels flipped. An MLP (32, 32) learns the majority's rule first. Members (one
`vhjax.ensemble.train_members` call, one compiled program) draw their batches with the minority's
examples weighted w (`example_weights`; w = 1 is plain training), 3 seeds each. Reported on a
20,000-example test set of the same distribution (`vhjax.fairness.member_report`): accuracy,
worst-group accuracy, the accuracy gap, and the equalized-odds and demographic-parity differences,
mean +- std over seeds.

Command:  python experiments/fairness_table.py            (3 seeds, 1500 steps)
          python experiments/fairness_table.py --quick    (1 seed, 200 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU: 45 s (2026-12-07); --quick about 15 s.
Results:  experiments/results/fairness_two_groups.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from vhjax import fairness
from vhjax.ensemble import Ensemble, train_members
from vhjax.models import get_model

WEIGHTS = (1.0, 3.0, 9.0, 27.0)
COLUMNS = ("accuracy", "worst_group_accuracy", "accuracy_difference", "equalized_odds_difference",
           "demographic_parity_difference")


def two_groups(size: int, seed: int, minority: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, group): the minority's label follows another rule; its features show it by a shift."""
    rng = np.random.default_rng(seed)
    group = (rng.random(size) < minority).astype(np.int32)
    x = rng.normal(size=(size, 4)).astype(np.float32)
    x[:, 2] += 3.0 * group
    y = np.where(group == 1, x[:, 0] - x[:, 1] > 0, x[:, 0] + x[:, 1] > 0).astype(np.int32)
    flip = rng.random(size) < 0.05
    return x, np.where(flip, 1 - y, y).astype(np.int32), group


def run(steps: int, seeds: int) -> tuple[list[str], float]:
    x, y, group = two_groups(2000, seed=0)
    x_test, y_test, group_test = two_groups(20000, seed=1)
    settings = [(w, seed) for w in WEIGHTS for seed in range(seeds)]
    weights = np.stack([np.where(group == 1, w, 1.0) for w, _ in settings])
    weights = weights / weights.sum(axis=1, keepdims=True)
    started = time.perf_counter()
    trained = train_members(get_model("mlp", widths=(32, 32), num_classes=2), x, y, size=len(settings),
                            key=jax.random.key(0), steps=steps, batch_size=64, learning_rate=3e-3,
                            example_weights=weights)
    predictions = np.asarray(Ensemble([trained.group]).member_logits(x_test)).argmax(-1)
    seconds = time.perf_counter() - started
    report = fairness.member_report(predictions, y_test, group_test)
    lines = ["| minority weight | minority share of batches | " + " | ".join(c.replace("_", " ") for c in COLUMNS)
             + " |", "|---|---|" + "---|" * len(COLUMNS)]
    share = lambda w: 0.1 * w / (0.9 + 0.1 * w)  # noqa: E731 - expected share at a 10% minority
    for w in WEIGHTS:
        rows = [r for (weight, _), r in zip(settings, report) if weight == w]
        cells = [f"{np.mean([r[c] for r in rows]):.4f} ± {np.std([r[c] for r in rows]):.4f}" for c in COLUMNS]
        lines.append(f"| {w:g} | {share(w):.2f} | " + " | ".join(cells) + " |")
    return lines, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=None, help="folder for fairness_two_groups.md (default: "
                        "experiments/results, not written with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 200
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    lines, seconds = run(args.steps, args.seeds)
    header = (f"Two groups (10% minority), MLP (32, 32), Adam 3e-3, batch 64, {args.steps} steps, {args.seeds} seeds, "
              f"{len(WEIGHTS) * args.seeds} members in one program: {seconds:.0f} s")
    print(header, *lines, "", sep="\n", flush=True)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fairness_two_groups.md").write_text(
            "\n".join(["# Fairness across groups: minority upweighting", "", header, "", *lines]) + "\n")


if __name__ == "__main__":
    main()
