"""Distillation: a large teacher and a small student on MNIST-1D and scikit-learn digits.

Per dataset and seed: a teacher MLP (`--teacher-widths`) is trained on the training split; then one
`vhjax.transfer.distill` call trains every student (an MLP of `--student-widths`) in one compiled
program: the student alone (soft weight 0), distilled students over a grid of temperature T x soft
weight w, and mixed students (distil for 70% of the steps, then hard labels only; the optimizer
state carries on). Splits: train / val (the choice of the best (T, w)) / test (reported). Rows:
teacher, student alone, best distilled student (the (T, w) with the best mean val accuracy over
seeds), best mixed student (likewise); test accuracy mean +- std over seeds, parameters, FLOPs per
example (matmul multiply-adds, `flops_per_example(count='matmul')`).
The protocol is ours (Hinton et al. 2015's loss, our splits and sizes); no published numbers exist for it.

Command:  python experiments/distill_table.py                 (full: 3 seeds, both datasets)
          python experiments/distill_table.py --quick         (1 seed, few steps, small grid: a smoke test)
Runtime:  2-core AMD EPYC CPU, shared: --quick 1 minute (55 s); the full command has not been timed yet.
Results:  not in experiments/README.md yet (the full command has not been run).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from vhjax.config import TrainConfig
from vhjax.population import fit
from vhjax.transfer import distill


def splits(name: str, seed: int) -> dict:
    """train / val / test arrays: MNIST-1D (its 4000 training signals split 3500/500, its 1000 test
    signals) or digits (1797 images: 1000 / 197 / 600 by a permutation drawn by `seed`)."""
    if name == "mnist1d":
        from vhjax.data import load

        train, test = load("mnist1d", "train"), load("mnist1d", "test")
        order = np.random.default_rng(seed).permutation(len(train.y))
        tr, va = order[:-500], order[-500:]
        return {"train": (train.x[tr], train.y[tr]), "val": (train.x[va], train.y[va]), "test": (test.x, test.y)}
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = {"train": order[:1000], "val": order[1000:1197], "test": order[1197:]}
    return {split: (x[idx], y[idx]) for split, idx in parts.items()}


def config(data: dict, widths: tuple, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(dataset=data, model="mlp", model_kwargs={"widths": widths, "num_classes": 10},
                       eval_split="val", test_split="test", batch_size=100, steps=steps, eval_every=steps,
                       learning_rate=3e-3, seed=seed)


def students(grid: list[tuple[float, float]], mixed_steps: int, seed: int) -> list[dict]:
    alone = [{"seed": seed, "soft_weight": 0.0}]
    distilled = [{"seed": seed, "temperature": t, "soft_weight": w} for t, w in grid]
    mixed = [{**s, "distill_steps": mixed_steps} for s in distilled]
    return alone + distilled + mixed


def one_seed(name: str, seed: int, args) -> tuple[dict, list[dict]]:
    data = splits(name, seed)
    teacher_config = config(data, tuple(args.teacher_widths), args.teacher_steps, seed)
    teacher = fit(teacher_config, verbose=False)
    student_config = config(data, tuple(args.student_widths), args.steps, seed)
    grid = list(itertools.product(args.temperatures, args.weights))
    result = distill(student_config, teacher, students(grid, int(0.7 * args.steps), seed),
                     teacher_model=teacher_config, verbose=False)
    return result.teacher, result.students


def summary(name: str, runs: list[tuple[dict, list[dict]]]) -> list[str]:
    """Markdown rows: teacher, alone, best distilled and best mixed (T, w) by mean val accuracy."""
    def stats(values):
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    teachers = [t for t, _ in runs]
    rows = [f"| {name} | teacher | | {stats([t['accuracy'] for t in teachers])} | {teachers[0]['params']} "
            f"| {teachers[0]['flops']:.4g} |"]
    first = runs[0][1]
    for kind in ("alone", "distilled", "mixed"):
        positions = [i for i, row in enumerate(first) if row["kind"] == kind]
        best = max(positions, key=lambda i: np.mean([s[i]["eval_accuracy"] for _, s in runs]))
        row = first[best]
        setting = "" if kind == "alone" else f"T={row['temperature']:g}, w={row['soft_weight']:g}"
        rows.append(f"| {name} | student {kind} | {setting} | {stats([s[best]['accuracy'] for _, s in runs])} "
                    f"| {row['params']} | {row['flops']:.4g} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps, small grid (a smoke test)")
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-widths", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--student-widths", type=int, nargs="+", default=[16])
    parser.add_argument("--teacher-steps", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.9])
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.teacher_steps, args.steps = 1, 300, 200
        args.teacher_widths, args.temperatures, args.weights = [64], [1.0, 4.0], [0.9]
    started = time.perf_counter()
    lines = ["| dataset | model | setting | test accuracy | params | FLOPs/example |", "|---|---|---|---|---|---|"]
    for name in args.datasets:
        runs = [one_seed(name, seed, args) for seed in range(args.seeds)]
        lines += summary(name, runs)
        print(f"{name}: done at {time.perf_counter() - started:.0f}s", flush=True)
    print("\n".join(lines))
    mode = "--quick" if args.quick else "full"
    print(f"\nwall time {time.perf_counter() - started:.0f}s ({mode}, {args.seeds} seeds)")


if __name__ == "__main__":
    main()
