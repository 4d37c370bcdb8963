"""Hypergradient descent on the step size: how much it lessens the need to tune the initial one.

Baydin et al. 2018 ("Online Learning Rate Adaptation with Hypergradient Descent") claim SGD-HD and
Adam-HD reduce the need to tune the initial learning rate. Here, per optimizer, one `fit_population`
call trains every (initial learning rate, hypergradient beta, seed) as members of one compiled
program: the MNIST-1D paper CNN, batch 100, `--steps` steps, train on `train[:90%]`, select
nothing (final parameters), report the test accuracy (mean +- std over seeds) and the learnt
multiplier of the step size (`optim.step_size_multiplier`; effective step size = initial x it).
beta = 0 is the plain optimizer. Diverged members are counted, not averaged.

Command:  python experiments/hypergradient_table.py              (SGD and Adam, 3 seeds, 3000 steps)
          python experiments/hypergradient_table.py --quick      (1 seed, 300 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU: 163 s (109 s SGD, 54 s Adam; 2026-12-07); --quick 11 s.
Results:  experiments/results/hypergradient_<optimizer>.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from vhjax.config import TrainConfig
from vhjax.optim import step_size_multiplier
from vhjax.population import fit_population

GRIDS = {  # initial learning rates, betas (the paper: 1e-3 for SGD, 1e-7 to 1e-4 for Adam)
    "sgd": ([1e-3, 1e-2, 1e-1], [0.0, 1e-4, 1e-3, 1e-2]),
    "adam": ([1e-4, 1e-3, 1e-2], [0.0, 1e-7, 1e-6, 1e-5]),
}


def one_optimizer(name: str, seeds: int, steps: int) -> tuple[list[dict], float]:
    """Every (lr, beta, seed) of `name` in one population; per member: settings, test accuracy,
    the multiplier and whether it diverged."""
    rates, betas = GRIDS[name]
    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", optimizer=name, batch_size=100, steps=steps,
                         eval_every=steps, train_split="train[:90%]", eval_split="train[90%:]", test_split="test",
                         optimizer_kwargs={"hypergradient": 0.0})
    grid = list(itertools.product(rates, betas, range(seeds)))
    members = [{"learning_rate": lr, "optimizer_kwargs": {"hypergradient": beta}, "seed": seed}
               for lr, beta, seed in grid]
    started = time.perf_counter()
    result = fit_population(config, members, verbose=False)
    seconds = time.perf_counter() - started
    multipliers = np.asarray(step_size_multiplier(result.states[0].members.opt_state))
    rows = []
    for (lr, beta, seed), record in zip(grid, result.members):
        rows.append({"lr": lr, "beta": beta, "seed": seed, "test": record["test"]["accuracy"],
                     "multiplier": float(multipliers[record["position"]]),
                     "diverged": record["diverged_step"] is not None})
    return rows, seconds


def table(rows: list[dict]) -> list[str]:
    """Markdown: per (beta, initial lr) the test accuracy mean +- std over the members that did not
    diverge, the mean multiplier, and the spread over the initial learning rates per beta."""
    rates = sorted({r["lr"] for r in rows})
    lines = ["| beta | " + " | ".join(f"lr {lr:g}: test acc (x step size)" for lr in rates)
             + " | worst - best over lr |", "|---|" + "---|" * (len(rates) + 1)]
    for beta in sorted({r["beta"] for r in rows}):
        cells, means = [], []
        for lr in rates:
            group = [r for r in rows if r["beta"] == beta and r["lr"] == lr]
            alive = [r for r in group if not r["diverged"]]
            if not alive:
                cells.append(f"diverged ({len(group)})")
                means.append(float("nan"))
                continue
            test = [r["test"] for r in alive]
            gone = len(group) - len(alive)
            cells.append(f"{np.mean(test):.4f} ± {np.std(test):.4f} (x{np.mean([r['multiplier'] for r in alive]):.3g})"
                         + (f", {gone} diverged" if gone else ""))
            means.append(float(np.mean(test)))
        spread = np.nanmax(means) - np.nanmin(means) if np.isfinite(means).any() else float("nan")
        lines.append(f"| {beta:g} | " + " | ".join(cells) + f" | {spread:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 steps (a smoke test)")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=sorted(GRIDS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=None, help="folder for hypergradient_<optimizer>.md (default: "
                        "experiments/results, not written with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 300
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    for name in args.optimizers:
        rows, seconds = one_optimizer(name, args.seeds, args.steps)
        lines = table(rows)
        header = (f"{name}: MNIST-1D paper CNN, {args.steps} steps, batch 100, {args.seeds} seeds, "
                  f"{len(rows)} members in one program, {seconds:.0f} s")
        print(header, *lines, "", sep="\n", flush=True)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            per_member = ["| lr | beta | seed | test acc | multiplier | diverged |", "|---|---|---|---|---|---|"]
            per_member += [f"| {r['lr']:g} | {r['beta']:g} | {r['seed']} | {r['test']:.4f} | {r['multiplier']:.4g} "
                           f"| {r['diverged']} |" for r in rows]
            text = "\n".join([f"# Hypergradient descent: {name}", "", header, "", *lines, "", "Every member:", "",
                              *per_member]) + "\n"
            (Path(out) / f"hypergradient_{name}.md").write_text(text)


if __name__ == "__main__":
    main()
