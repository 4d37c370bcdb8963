"""Transfer-mask search on MNIST-1D: GA and simulated annealing against the exhaustive optimum.

Source: a 4-layer MLP (3 hidden layers + head) trained on MNIST-1D with the generator's default
arguments (vhjax's builtin 'mnist1d'). Target: MNIST-1D generated with other settings (correlated
noise 0.4 instead of 0.25, i.i.d. noise 0.04 instead of 0.02, shear 1.0 instead of 0.75, scale 0.5
instead of 0.4, generator seed 7 instead of 42), 20 labelled signals per class,
a validation split (the search's fitness) and a test split (reported only). A mask has one bit per
source layer (2^4 = 16 masks), read by a policy:

- copy (a): bit 1 copies the source layer, 0 keeps the fresh initialisation; all layers train;
- train (b): every layer is copied; bit 1 fine-tunes it, 0 freezes it.

Rows per policy: scratch, direct transfer (all copied and frozen), head only, full fine-tune
(one population of 4), best of random masks, GA (tournament, uniform crossover, bit-flip
mutation, elitism), SA (parallel chains, one-bit moves, Metropolis, exponential cooling; energy =
target validation error + `--source-weight` x source-domain error), and the exhaustive optimum (all
16 masks as one population). Random, GA and SA have the same budget (`--budget` masks, populations
of `--population`, fewer than the 16 masks) and run once per search seed; "reached" counts the runs
whose best mask is optimal in the exhaustive table (validation accuracy for GA and random, energy
for SA). Each mask's fitness is deterministic: every member starts from the same seed and sees the
same batches, so one population's masks differ only by their masks. A training seed draws the
labelled target signals and the validation split, the fresh initialisation and the batch order.
Values are mean +- std of test accuracy over training seeds x search seeds (scratch, direct, head
only, full and the exhaustive optimum: over training seeds).
The protocol is ours; no published numbers exist for it.

Command:  python experiments/transfer_mask_search.py            (full: 3 training seeds, 10 search seeds)
          python experiments/transfer_mask_search.py --quick    (smaller MLP, fewer steps, 1 x 2 seeds)
          --figure experiments/figures/transfer_mask_search_fitness.png  (best-so-far fitness per generation)
Runtime:  2-core AMD EPYC CPU, shared with other jobs: full 5.4 minutes, --quick 2.5 minutes.
Results:  experiments/README.md, "Transfer-mask search".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import vhjax.search as vsearch
from vhjax.config import TrainConfig
from vhjax.population import fit
from vhjax.transfer.masks import (BASELINES, MaskObjective, TransferMask, baseline_mask, exhaustive_table, optimum,
                                  reaches_optimum, result_mask)

TARGET_ARGS = {"corr_noise_scale": 0.4, "iid_noise_scale": 0.04, "shear_scale": 1.0, "scale_coeff": 0.5, "seed": 7,
               "num_samples": 2000, "train_split": 0.5}


def target_splits(seed: int, per_class: int = 20, val: int = 500) -> dict:
    """MNIST-1D from other generator settings: train (`per_class` signals per class, drawn by `seed`),
    val (500 of the other training signals, also by `seed`), test (the generator's 1000 test signals)."""
    from mnist1d.data import get_dataset_args, make_dataset

    from vhjax.data.builtin import preserved_global_rngs

    args = get_dataset_args()
    for name, value in TARGET_ARGS.items():
        setattr(args, name, value)
    with preserved_global_rngs():
        data = make_dataset(args)
    x, y = data["x"].astype(np.float32), data["y"].astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    train = np.sort(np.concatenate([order[y[order] == c][:per_class] for c in range(10)]))
    rest = np.setdiff1d(order, train)[:val]
    return {"train": (x[train], y[train]), "val": (x[rest], y[rest]),
            "test": (data["x_test"].astype(np.float32), data["y_test"].astype(np.int32))}


def source_model(widths: tuple, steps: int) -> tuple[dict, tuple]:
    """(the source's variables, 500 source-domain test signals) after training on builtin MNIST-1D."""
    from vhjax.data import load

    config = TrainConfig(dataset="mnist1d", model="mlp", model_kwargs={"widths": widths, "num_classes": 10},
                         batch_size=100, steps=steps, eval_every=steps, learning_rate=3e-3, seed=0)
    result = fit(config, verbose=False)
    print(f"source: MNIST-1D test accuracy {result.metrics['eval']['accuracy']:.3f} after {steps} steps", flush=True)
    test = load("mnist1d", "test")
    return {"params": result.state.params}, (test.x[:500], test.y[:500])


def baseline_rows(objective: MaskObjective) -> dict[str, float]:
    """Test accuracy of scratch, direct transfer, head only and full fine-tune: one population."""
    units = objective.units
    masks = [baseline_mask(name, units) for name in BASELINES]
    masks.append(TransferMask((1,) * len(units), (0,) * len(units), "direct"))
    values = objective.run(masks)
    return {mask.name: float(values["test_accuracy"][i]) for i, mask in enumerate(masks)}


def search_runs(objective: MaskObjective, table: dict, strategy: str, args, seeds: range,
                curves: list | None = None) -> list[tuple[float, bool]]:
    """(test accuracy of the best mask, whether it is optimal) per search seed; with `curves`, each
    run's best validation accuracy so far per generation is appended to it."""
    kwargs, extra = {}, {}
    metric, direction = "accuracy", "maximize"
    if strategy == "genetic":
        kwargs = {"population_size": args.population, "categorical_mutation": "flip", "mutation_rate": 0.25,
                  "num_elites": 1}
    elif strategy == "simulated_annealing":
        kwargs = {"num_chains": args.population, "move": "one_column", "initial_temperature": 0.02,
                  "final_temperature": 1e-3, "num_steps": args.budget // args.population}
        metric, direction = "energy", "minimize"
        extra = {"objectives": "energy", "direction": "minimize"}
    runs = []
    for seed in seeds:
        result = vsearch.search(objective, objective.space(), strategy, budget=args.budget,
                                population=args.population, seed=seed, verbose=False, strategy_kwargs=kwargs, **extra)
        found = result_mask(result.best.params, objective.units)
        if curves is not None:
            per_generation = [max(t.metrics["accuracy"] for t in result.trials if t.generation == g)
                              for g in sorted({t.generation for t in result.trials})]
            curves.append(np.maximum.accumulate(per_generation).tolist())
        runs.append((table[found]["test_accuracy"], reaches_optimum(found, table, metric, direction)))
    return runs


def fitness_figure(data: dict, path: Path) -> None:
    """Best validation accuracy so far over generations (mean over runs) for random, GA and SA, one
    panel per policy; the exhaustive optimum (mean over training seeds) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random (best of)": "tab:gray", "GA": "tab:blue", "SA": "tab:orange"}
    fig, axes = plt.subplots(1, len(data), figsize=(5.0 * len(data), 3.6), squeeze=False)
    for ax, (policy, curves) in zip(axes[0], data.items()):
        for label, colour in colours.items():
            mean = np.mean(np.array(curves[label]), axis=0)
            generations = np.arange(1, len(mean) + 1)  # generation g drawn over [g - 0.5, g + 0.5]
            ax.step(np.append(generations - 0.5, generations[-1] + 0.5), np.append(mean, mean[-1]), where="post",
                    color=colour, label=label)
        ax.axhline(np.mean(curves["optimum"]), color="black", linestyle=":", label="exhaustive optimum")
        ax.set_xticks(generations)
        ax.set_xlim(0.5, generations[-1] + 0.5)
        ax.set_xlabel("generation (masks trained = generation x population)")
        ax.set_ylabel("best validation accuracy so far")
        ax.set_title(f"MNIST-1D -> shifted MNIST-1D, policy {policy}")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small MLP, few steps, 1 training x 2 search seeds")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (the target fine-tune's)")
    parser.add_argument("--search-seeds", type=int, default=10, help="runs of random, GA and SA per training seed")
    parser.add_argument("--budget", type=int, default=12, help="masks trained per random/GA/SA run (< 16)")
    parser.add_argument("--population", type=int, default=4, help="masks per generation (SA: chains)")
    parser.add_argument("--source-weight", type=float, default=0.1, help="weight of the source error in SA's energy")
    parser.add_argument("--policies", default="copy,train", help="comma-separated: copy, train")
    parser.add_argument("--figure", default=None,
                        help="PNG of the best validation accuracy so far per generation (e.g. "
                             "experiments/figures/transfer_mask_search_fitness.png)")
    args = parser.parse_args()
    widths, source_steps, steps = ((100, 100, 100), 3000, 200) if not args.quick else ((32, 32, 32), 600, 60)
    if args.quick:
        args.seeds, args.search_seeds = 1, 2
    started = time.perf_counter()
    source, source_data = source_model(widths, source_steps)
    configs = [TrainConfig(dataset=target_splits(seed), eval_split="val", test_split="test", model="mlp",
                           model_kwargs={"widths": widths, "num_classes": 10}, batch_size=50, steps=steps,
                           eval_every=steps, learning_rate=3e-3, seed=seed) for seed in range(args.seeds)]
    figure_data: dict = {}
    for policy in args.policies.split(","):
        rows: dict[str, list[float]] = {}
        reached: dict[str, list[bool]] = {}
        optimal_masks = []
        for seed in range(args.seeds):
            objective = MaskObjective(configs[seed], source, policy=policy,
                                      source_data=source_data, source_weight=args.source_weight)
            for name, value in baseline_rows(objective).items():
                rows.setdefault(name, []).append(value)
            table = exhaustive_table(objective)
            best, _ = optimum(table)
            lowest, _ = optimum(table, "energy", "minimize")
            figure_data.setdefault(policy, {}).setdefault("optimum", []).append(table[best[0]]["accuracy"])
            optimal_masks.append(f"{'/'.join(best)} (energy: {'/'.join(lowest)})")
            rows.setdefault("exhaustive optimum", []).append(table[best[0]]["test_accuracy"])
            searches = range(args.search_seeds)
            for label, strategy in (("random (best of)", "random"), ("GA", "genetic"), ("SA", "simulated_annealing")):
                runs = search_runs(objective, table, strategy, args, searches,
                                   figure_data.setdefault(policy, {}).setdefault(label, []))
                rows.setdefault(label, []).extend(value for value, _ in runs)
                reached.setdefault(label, []).extend(ok for _, ok in runs)
            print(f"[{policy}] seed {seed} done, {time.perf_counter() - started:.0f}s", flush=True)
        print(f"\npolicy {policy!r}: target test accuracy (MNIST-1D, other generator settings, 20 per class); "
              f"optimal masks (validation accuracy) per seed: {optimal_masks}")
        print("| method | test accuracy | masks trained | reached the exhaustive optimum |")
        print("|---|---|---|---|")
        order = ["scratch", "direct", "head_only", "full", "random (best of)", "GA", "SA", "exhaustive optimum"]
        for name in order:
            trained = {"random (best of)": args.budget, "GA": args.budget, "SA": args.budget,
                       "exhaustive optimum": 16}.get(name, 1)
            hit = f"{sum(reached[name])}/{len(reached[name])}" if name in reached else ""
            print(f"| {name} | {summary(rows[name])} | {trained} | {hit} |")
        print("per training seed (scratch, direct, head_only, full, exhaustive optimum): " + "; ".join(
            f"{name} {[round(v, 3) for v in rows[name]]}" for name in (*order[:4], order[-1])))
    if args.figure:
        fitness_figure(figure_data, Path(args.figure))
    print(f"\nwall time {time.perf_counter() - started:.0f}s ({'--quick' if args.quick else 'full'}: {args.seeds} "
          f"training seed(s) x {args.search_seeds} search seed(s), budget {args.budget}, population {args.population})")


if __name__ == "__main__":
    main()
