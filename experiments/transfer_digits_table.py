"""Transfer table: MNIST (5,000 real digits) <-> scikit-learn digits, fine-tune modes and mask search.

Data (one input format, 8x8x1 in [0, 1], the digits' own): scikit-learn's digits are UCI optdigits,
32x32 binary bitmaps whose 4x4 blocks were counted (0-16) and scaled to the digit's box, so each
digit fills the 8x8 height. MNIST digits are grey 28x28 with the digit size-normalised into the
central 20x20 box. `mnist_as_digits` does the same as optdigits: binarise MNIST at 0.5, crop that
20x20 box, and area-average it to 8x8 (each output pixel = the fraction of "on" pixels under it,
as digits' count / 16). So both datasets share resolution, range and framing; what differs is the
writers (American census / school MNIST vs 43 UCI writers) and stroke width. Digits are `digits /
16` as vhjax's builtin 'digits'. Splits: vhjax's 'mnist_5k' (4000 train / 1000 test) and 'digits'
(1437 / 360).

Source: an MLP 64-64-64-64-10 (4 weight layers, so 2^4 = 16 layer masks) trained on the source's
full train split (Adam 3e-3, batch 100, `--source-steps` steps). Target (the other dataset):
`per_class` labelled examples per class drawn from its train split by the training seed, a
validation split of other train examples (300 digits / 500 MNIST; the searches' fitness) and the
test split (reported only). Fine-tune: Adam 3e-3, batch 50 (fewer when the labelled set is
smaller), `--steps` steps, every member of one population sharing the seed and the batches.

Rows per (direction, labelled size): scratch; the fine-tune modes of `vhjax.transfer.mode_config`
(one `fit_from` population: direct = all frozen, feature_extractor = head only, fine_tune_last 2
layers, freeze hidden_0, full, layerwise_lr with decay 0.5) and `gradual_unfreezing` (4 stages of
steps / 4: the same total); the best of random masks, GA (tournament, uniform crossover, bit-flip
mutation, 1 elite) and SA (parallel chains, one-bit moves, Metropolis, exponential cooling; energy
= validation error) over 16 layer masks read by a policy ('copy': bit = copy the layer, else fresh
init, all train; 'train': all copied, bit = fine-tune, else freeze), each spending `--budget` masks
(populations of `--population`, fewer than 16 in all); and the exhaustive optimum (all 16 masks as
one population; validation accuracy picks, test is reported). "reached" counts the runs whose best
mask is optimal (validation accuracy) in the exhaustive table. Random, GA and SA run
`--search-seeds` times per training seed; mean +- std (ddof 0) of test accuracy over training seeds
(x search seeds for the searches). The protocol is ours; no published numbers exist for it.

Command:  python experiments/transfer_digits_table.py           (full: 3 training seeds, policy copy)
          python experiments/transfer_digits_table.py --quick   (1 seed, tiny steps)
          (the measured run: one process per direction, `--directions D --out F --cache-dir C`, then
          `--merge F1 F2`; policy train: `--no-modes --policies train`, merged into ..._train.json)
Runtime:  2-core AMD EPYC CPU, shared with other jobs (load 13-22): full 26.4 min with the two
          directions side by side; --quick 11 min under that load (about 4 CPU-minutes).
Results:  experiments/results/transfer_digits_table.json, experiments/figures/transfer_search_fitness.png,
          experiments/README.md "Transfer: MNIST (5,000 real digits) <-> scikit-learn digits".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import vhjax.search as vsearch
from vhjax.config import TrainConfig
from vhjax.population import fit
from vhjax.transfer import fit_from, gradual_unfreezing, mode_config
from vhjax.transfer.masks import (MaskObjective, baseline_mask, exhaustive_table, optimum,
                                  reaches_optimum, result_mask)

ROOT = Path(__file__).resolve().parent
DIRECTIONS = ("mnist->digits", "digits->mnist")
VALIDATION = {"digits": 300, "mnist": 500}
MODE_ROWS = (("direct", {}), ("feature_extractor", {}), ("fine_tune_last", {"last": 2}),
             ("freeze", {"frozen": ("hidden_0",)}), ("full", {}), ("layerwise_lr", {"decay": 0.5}))
SEARCHES = (("random (best of)", "random"), ("GA", "genetic"), ("SA", "simulated_annealing"))


def mnist_as_digits(x: np.ndarray) -> np.ndarray:
    """MNIST (N, 28, 28, 1) in [0, 1] -> (N, 8, 8, 1) like sklearn digits: binarised at 0.5, the
    central 20x20 box (where MNIST size-normalises its digits) area-averaged to 8x8."""
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise ValueError(f"x has shape {x.shape}; allowed: (N, 28, 28, 1) MNIST images")
    box = (x[:, 4:24, 4:24, 0] > 0.5).astype(np.float32)
    fine = np.repeat(np.repeat(box, 2, axis=1), 2, axis=2)  # 40x40: 8 blocks of 5x5 = area averaging
    return fine.reshape(-1, 8, 5, 8, 5).mean(axis=(2, 4))[..., None]


def domains() -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{'mnist' | 'digits': {'train' | 'test': (x (N, 8, 8, 1) float32 in [0, 1], y int32)}}."""
    from vhjax.data import load

    out = {"mnist": {}, "digits": {}}
    for split in ("train", "test"):
        m, d = load("mnist_5k", split), load("digits", split)
        out["mnist"][split] = (mnist_as_digits(m.x), m.y.astype(np.int32))
        out["digits"][split] = (d.x.astype(np.float32), d.y.astype(np.int32))
    return out


def target_splits(data: dict, per_class: int, seed: int, val: int) -> dict:
    """train: `per_class` examples per class of `data['train']` drawn by `seed`; val: `val` other train
    examples (also by `seed`); test: `data['test']`."""
    x, y = data["train"]
    order = np.random.default_rng(seed).permutation(len(y))
    train = np.sort(np.concatenate([order[y[order] == c][:per_class] for c in range(10)]))
    rest = np.setdiff1d(order, train)
    rest = rest[np.random.default_rng(seed + 1000).permutation(len(rest))[:val]]
    return {"train": (x[train], y[train]), "val": (x[rest], y[rest]), "test": data["test"]}


def source_model(data: dict, widths: tuple, steps: int) -> tuple[dict, float]:
    """(the source's variables, its test accuracy on its own domain) after training on the train split."""
    config = TrainConfig(dataset={"train": data["train"], "test": data["test"]}, model="mlp",
                         model_kwargs={"widths": widths, "num_classes": 10}, batch_size=100, steps=steps,
                         eval_every=steps, learning_rate=3e-3, seed=0)
    result = fit(config, verbose=False)
    return {"params": result.state.params}, float(result.metrics["eval"]["accuracy"])


def target_config(splits: dict, widths: tuple, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(dataset=splits, eval_split="val", test_split="test", model="mlp",
                       model_kwargs={"widths": widths, "num_classes": 10}, batch_size=min(50, len(splits["train"][1])),
                       steps=steps, eval_every=steps, learning_rate=3e-3, seed=seed)


def mode_rows(config: TrainConfig, source: dict) -> dict[str, float]:
    """Test accuracy of each fine-tune mode (one `fit_from` population) and of gradual unfreezing
    (4 stages of steps / 4)."""
    members = [{**mode_config(mode, source, **kw), "seed": config.seed} for mode, kw in MODE_ROWS]
    result = fit_from(config, source, members, verbose=False)
    rows = {mode: float(record["test"]["accuracy"]) for (mode, _), record in zip(MODE_ROWS, result.members)}
    stages = gradual_unfreezing(config, source, max(1, config.steps // 4), member={"seed": config.seed},
                                verbose=False)
    rows["gradual_unfreezing"] = float(stages[-1].members[0]["test"]["accuracy"])
    return rows


def search_runs(objective: MaskObjective, table: dict, strategy: str, budget: int, population: int,
                seeds: range) -> list[dict]:
    """Per search seed: test accuracy of the best mask, whether it is optimal, and the best validation
    accuracy seen up to each generation."""
    kwargs, extra, metric = {}, {}, "accuracy"
    if strategy == "genetic":
        kwargs = {"population_size": population, "categorical_mutation": "flip", "mutation_rate": 0.25,
                  "num_elites": 1}
    elif strategy == "simulated_annealing":
        kwargs = {"num_chains": population, "move": "one_column", "initial_temperature": 0.02,
                  "final_temperature": 1e-3, "num_steps": budget // population}
        metric, extra = "error", {"objectives": "error", "direction": "minimize"}
    runs = []
    for seed in seeds:
        result = vsearch.search(objective, objective.space(), strategy, budget=budget, population=population,
                                seed=seed, verbose=False, strategy_kwargs=kwargs, **extra)
        found = result_mask(result.best.params, objective.units)
        generations = sorted({t.generation for t in result.trials})
        per_generation = [max(t.metrics["accuracy"] for t in result.trials if t.generation == g)
                          for g in generations]
        runs.append({"test_accuracy": table[found]["test_accuracy"], "mask": found,
                     "reached": reaches_optimum(found, table, metric,
                                                "minimize" if metric == "error" else "maximize"),
                     "best_so_far": np.maximum.accumulate(per_generation).tolist()})
    return runs


def one_setting(data: dict, source: dict, args, direction: str, per_class: int, seed: int, policies) -> dict:
    """Every row for one (direction, labelled size, training seed): test accuracies, searches, optimum."""
    target = direction.split("->")[1]
    config = target_config(target_splits(data[target], per_class, seed, VALIDATION[target]), args.widths,
                           args.steps, seed)
    out = {"modes": mode_rows(config, source) if args.modes else {}, "policies": {}}
    for policy in policies:
        objective = MaskObjective(config, source, policy=policy)
        scratch = objective.run([baseline_mask("scratch", objective.units)])
        table = exhaustive_table(objective)
        best, best_val = optimum(table)
        entry = {"scratch": float(scratch["test_accuracy"][0]), "optimal_masks": best, "optimum_val": best_val,
                 "exhaustive optimum": table[best[0]]["test_accuracy"], "table": table, "searches": {}}
        for label, strategy in SEARCHES:
            entry["searches"][label] = search_runs(objective, table, strategy, args.budget, args.population,
                                                   range(args.search_seeds))
        out["policies"][policy] = entry
    return out


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table_rows(results: list[dict], policy: str) -> dict[str, tuple[list[float], str]]:
    """Row name -> (test accuracies over seeds (x search seeds), 'reached k/n' or '')."""
    rows: dict[str, tuple[list[float], str]] = {}
    policy_entries = [r["policies"][policy] for r in results]
    rows["scratch"] = ([e["scratch"] for e in policy_entries], "")
    for mode, _ in (*MODE_ROWS, ("gradual_unfreezing", {})):
        if all(mode in r["modes"] for r in results):
            rows[mode] = ([r["modes"][mode] for r in results], "")
    for label, _ in SEARCHES:
        runs = [run for e in policy_entries for run in e["searches"][label]]
        rows[label] = ([run["test_accuracy"] for run in runs], f"{sum(run['reached'] for run in runs)}/{len(runs)}")
    rows["exhaustive optimum"] = ([e["exhaustive optimum"] for e in policy_entries], "")
    return rows


def fitness_figure(results: dict, path: Path, policy: str = "copy") -> None:
    """Best-so-far validation accuracy over generations (mean over runs) for random, GA and SA, one
    panel per direction, one line style per labelled size; the exhaustive optimum dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [d for d in DIRECTIONS if d in results]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown) + 2.4, 3.8), squeeze=False)
    colours = {"random (best of)": "tab:gray", "GA": "tab:blue", "SA": "tab:orange"}
    styles = ["-", "--", "-."]
    for ax, direction in zip(axes[0], [d for d in DIRECTIONS if d in results]):
        for k, (size, settings) in enumerate(sorted(results[direction].items(), key=lambda kv: int(kv[0]))):
            entries = [s["policies"][policy] for s in settings["seeds"]]
            for label, _ in SEARCHES:
                curves = np.array([run["best_so_far"] for e in entries for run in e["searches"][label]])
                generations = np.arange(1, curves.shape[1] + 1)
                mean = curves.mean(axis=0)  # generation g drawn over [g - 0.5, g + 0.5]
                ax.step(np.append(generations - 0.5, generations[-1] + 0.5), np.append(mean, mean[-1]), where="post", color=colours[label],
                        linestyle=styles[k % 3], label=f"{label}, {size}/class")
            ax.axhline(np.mean([e["optimum_val"] for e in entries]), color="black", linestyle=styles[k % 3],
                       linewidth=0.8, alpha=0.6, label=f"exhaustive optimum, {size}/class")
        ax.set_xticks(generations)
        ax.set_xlim(0.5, generations[-1] + 0.5)
        ax.set_xlabel("generation (masks trained = generation x population)")
        ax.set_ylabel("best validation accuracy so far")
        ax.set_title(f"{direction} (policy {policy})")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny steps, 1 search seed, size 10 only")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (labelled set, init, batch order)")
    parser.add_argument("--search-seeds", type=int, default=5, help="runs of random, GA and SA per training seed")
    parser.add_argument("--sizes", default="10,50", help="labelled examples per class, comma-separated")
    parser.add_argument("--steps", type=int, default=300, help="fine-tune steps")
    parser.add_argument("--source-steps", type=int, default=2000, help="source training steps")
    parser.add_argument("--budget", type=int, default=12, help="masks trained per random/GA/SA run (< 16)")
    parser.add_argument("--population", type=int, default=4, help="masks per generation (SA: chains)")
    parser.add_argument("--policies", default="copy", help="comma-separated: copy, train")
    parser.add_argument("--no-modes", dest="modes", action="store_false", help="skip the fine-tune mode rows")
    parser.add_argument("--directions", default=",".join(DIRECTIONS), help=f"comma-separated among {DIRECTIONS}")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="JSON files of runs over other directions: merge them, report, write --out and the figure")
    parser.add_argument("--cache-dir", default=None, help="JAX's persistent compilation cache (reused across seeds)")
    parser.add_argument("--out", default=None, help="results JSON (default experiments/results/...; --quick: a temp dir)")
    parser.add_argument("--figure", default=None, help="PNG (default experiments/figures/...; --quick: a temp dir)")
    args = parser.parse_args(argv)
    quick_dir = Path(tempfile.mkdtemp(prefix="transfer_digits_")) if args.quick else None
    where = (quick_dir, quick_dir) if args.quick else \
        (ROOT / "results", ROOT / "figures")
    args.out = args.out or str(where[0] / "transfer_digits_table.json")
    args.figure = args.figure or str(where[1] / "transfer_search_fitness.png")
    args.widths = (64, 64, 64)
    if args.quick:
        args.seeds, args.search_seeds, args.sizes = 1, 1, "10"
        args.steps, args.source_steps, args.widths = 20, 100, (16, 16, 16)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.policies = args.policies.split(",")
    args.directions = args.directions.split(",")
    for direction in args.directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"directions has value {direction!r}; allowed: {DIRECTIONS}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Every row, as a dict direction -> size -> {'seeds': [...]} plus the sources' accuracies."""
    started = time.perf_counter()
    data = domains()
    results: dict = {"sources": {}}
    for direction in args.directions:
        name = direction.split("->")[0]
        source, accuracy = source_model(data[name], args.widths, args.source_steps)
        results["sources"][name] = accuracy
        print(f"source {name}: own test accuracy {accuracy:.3f} after {args.source_steps} steps "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
        results[direction] = {}
        for size in args.sizes:
            settings = [one_setting(data, source, args, direction, size, seed, args.policies)
                        for seed in range(args.seeds)]
            results[direction][str(size)] = {"seeds": settings}
            print(f"{direction} {size}/class done ({time.perf_counter() - started:.0f}s)", flush=True)
    results["wall_s"] = {direction: time.perf_counter() - started for direction in args.directions}
    results["args"] = {k: v for k, v in vars(args).items() if k not in ("out", "figure", "merge", "cache_dir")}
    return results


def merged(files: list[str]) -> dict:
    """The runs of several processes (one per direction) as one results dict."""
    out: dict = {"sources": {}, "wall_s": {}}
    for file in files:
        part = json.loads(Path(file).read_text())
        out["sources"].update(part["sources"])
        out["wall_s"].update(part["wall_s"])
        out["args"] = {**part["args"], "directions": [*out.get("args", {}).get("directions", []),
                                                      *part["args"]["directions"]]}
        out.update({d: part[d] for d in part["args"]["directions"]})
    return out


def report(results: dict) -> str:
    args = argparse.Namespace(**results["args"])
    lines = []
    for direction in args.directions:
        for size in args.sizes:
            seeds = results[direction][str(size)]["seeds"]
            header = "| method | " + " | ".join(f"policy {p}: test acc. | reached" for p in args.policies) + \
                     " | masks trained |"
            lines += [f"\n{direction}, {size} labelled per class (source own test accuracy "
                      f"{results['sources'][direction.split('->')[0]]:.3f})", header,
                      "|---|" + "---|---|" * len(args.policies) + "---|"]
            per_policy = {p: table_rows(seeds, p) for p in args.policies}
            for name in per_policy[args.policies[0]]:
                trained = {"exhaustive optimum": 16, "gradual_unfreezing": 4}.get(
                    name, args.budget if name in dict(SEARCHES) else 1)
                cells = " | ".join(f"{summary(per_policy[p][name][0])} | {per_policy[p][name][1]}"
                                   for p in args.policies)
                lines.append(f"| {name} | {cells} | {trained} |")
            for p in args.policies:
                lines.append(f"optimal masks ({p}) per seed: {[s['policies'][p]['optimal_masks'] for s in seeds]}")
    lines.append(f"\nwall time per direction (s): {results['wall_s']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cache_dir:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    results = merged(args.merge) if args.merge else run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(jsonable(results), indent=1))
    print(report(results), flush=True)
    fitness_figure(results, Path(args.figure), args.policies[0])
    return results


if __name__ == "__main__":
    main()
