"""Distillation: a large teacher and a small student on MNIST-1D and scikit-learn digits.

Per dataset and seed: a teacher MLP (`--teacher-widths`) is trained on the training split; then one
`vhjax.transfer.distill` call trains every student (an MLP of `--student-widths`) in one compiled
program: the student alone (soft weight 0), distilled students over a grid of temperature T x soft
weight w, mixed students (distil for 70% of the steps, then hard labels only; the optimizer
state carries on), and a hard-distilled student (the teacher's predicted labels as its only
target: soft weight 0, teacher_labels 1). Splits: train / val (the choice of the best (T, w)) /
test (reported). Rows: teacher, student alone, best distilled student (the (T, w) with the best
mean val accuracy over seeds), best mixed student (likewise), the hard-distilled student; test
accuracy mean +- std over seeds, parameters, FLOPs per example (matmul multiply-adds,
`flops_per_example(count='matmul')`).
The protocol is ours (Hinton et al. 2015's loss, our splits and sizes); no published numbers exist for it.

Command:  python experiments/distill_table.py                 (full: 3 seeds, both datasets)
          python experiments/distill_table.py --quick         (1 seed, few steps, small grid: a smoke test)
          (--teacher-steps 1000 --tag _teacher1000: the same with a less-trained teacher;
           --datasets mnist1d --teacher-model mnist1d_cnn --tag _cnn_teacher: the MNIST-1D paper CNN as teacher)
Runtime:  2-core AMD EPYC CPU, shared (load 6-9): --quick 40 s; the full command 3.0 min (176 s; 2026-12-02).
Results:  experiments/results/distill_<dataset>.md (every student, all (T, w)); summary and reading in
          experiments/README.md ("Distillation").
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

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


def config(data: dict, widths: tuple, steps: int, seed: int, model: str = "mlp") -> TrainConfig:
    kwargs = {"widths": widths, "num_classes": 10} if model == "mlp" else {}
    return TrainConfig(dataset=data, model=model, model_kwargs=kwargs,
                       eval_split="val", test_split="test", batch_size=100, steps=steps, eval_every=steps,
                       learning_rate=3e-3, seed=seed)


def students(grid: list[tuple[float, float]], mixed_steps: int, seed: int) -> list[dict]:
    alone = [{"seed": seed, "soft_weight": 0.0}]
    distilled = [{"seed": seed, "temperature": t, "soft_weight": w} for t, w in grid]
    mixed = [{**s, "distill_steps": mixed_steps} for s in distilled]
    hard = [{"seed": seed, "soft_weight": 0.0, "teacher_labels": 1.0}]
    return alone + distilled + mixed + hard


def category(row: dict) -> str:
    """The table's name for a student: its kind, or 'hard' for one taught by the teacher's labels alone."""
    return "hard" if row["teacher_labels"] > 0 and row["soft_weight"] == 0 else row["kind"]


def one_seed(name: str, seed: int, args) -> tuple[dict, list[dict]]:
    data = splits(name, seed)
    teacher_config = config(data, tuple(args.teacher_widths), args.teacher_steps, seed, args.teacher_model)
    teacher = fit(teacher_config, verbose=False)
    student_config = config(data, tuple(args.student_widths), args.steps, seed)
    grid = list(itertools.product(args.temperatures, args.weights))
    result = distill(student_config, teacher, students(grid, int(0.7 * args.steps), seed),
                     teacher_model=teacher_config, verbose=False)
    return result.teacher, result.students


def summary(name: str, runs: list[tuple[dict, list[dict]]]) -> list[str]:
    """Markdown rows: teacher, alone, best distilled and best mixed (T, w) by mean val accuracy, hard."""
    def stats(values):
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    teachers = [t for t, _ in runs]
    rows = [f"| {name} | teacher | | {stats([t['accuracy'] for t in teachers])} | {teachers[0]['params']} "
            f"| {teachers[0]['flops']:.4g} |"]
    first = runs[0][1]
    for kind in ("alone", "distilled", "mixed", "hard"):
        positions = [i for i, row in enumerate(first) if category(row) == kind]
        best = max(positions, key=lambda i: np.mean([s[i]["eval_accuracy"] for _, s in runs]))
        row = first[best]
        setting = {"alone": "", "hard": "teacher's labels"}.get(kind, f"T={row['temperature']:g}, "
                                                                        f"w={row['soft_weight']:g}")
        rows.append(f"| {name} | student {kind} | {setting} | {stats([s[best]['accuracy'] for _, s in runs])} "
                    f"| {row['params']} | {row['flops']:.4g} |")
    return rows


def all_rows(runs: list[tuple[dict, list[dict]]]) -> list[str]:
    """Every student position: its settings, test accuracy mean +- std and mean val accuracy over seeds."""
    rows = []
    for i, row in enumerate(runs[0][1]):
        test = [s[i]["accuracy"] for _, s in runs]
        val = [s[i]["eval_accuracy"] for _, s in runs]
        rows.append(f"| {category(row)} | {row['temperature']:g} | {row['soft_weight']:g} | {row['teacher_labels']:g} "
                    f"| {row['distill_steps']} | {np.mean(test):.4f} ± {np.std(test):.4f} | {np.mean(val):.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps, small grid (a smoke test)")
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-widths", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--teacher-model", default="mlp", help="mlp (of --teacher-widths) or a registered "
                        "model name with its default kwargs, e.g. mnist1d_cnn")
    parser.add_argument("--student-widths", type=int, nargs="+", default=[16])
    parser.add_argument("--teacher-steps", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--out", default=None, help="folder for distill_<dataset>.md (default: "
                        "experiments/results, not written with --quick)")
    parser.add_argument("--tag", default="", help="file name suffix: distill_<dataset><tag>.md")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.teacher_steps, args.steps = 1, 300, 200
        args.teacher_widths, args.temperatures, args.weights = [64], [1.0, 4.0], [0.9]
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    started = time.perf_counter()
    header = ["| dataset | model | setting | test accuracy | params | FLOPs/example |", "|---|---|---|---|---|---|"]
    lines = list(header)
    for name in args.datasets:
        begun = time.perf_counter()
        runs = [one_seed(name, seed, args) for seed in range(args.seeds)]
        rows = summary(name, runs)
        lines += rows
        seconds = time.perf_counter() - begun
        print(f"{name}: done at {time.perf_counter() - started:.0f}s", flush=True)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            teacher = f"MLP {args.teacher_widths}" if args.teacher_model == "mlp" else args.teacher_model
            settings = (f"{args.seeds} seeds; teacher {teacher}, {args.teacher_steps} steps; "
                        f"student MLP {args.student_widths}, {args.steps} steps (mixed: distil "
                        f"{int(0.7 * args.steps)}, then hard labels); grid T {args.temperatures} x w {args.weights}; "
                        f"test accuracy mean ± std over seeds; best (T, w) by mean val accuracy; {seconds:.0f} s")
            text = "\n".join([f"# Distillation: {name}", "", settings, "", *header, *rows,
                              "", "All students (over seeds):", "",
                              "| kind | T | w | teacher labels | distill steps | test acc (mean ± std) "
                              "| val acc (mean) |", "|---|---|---|---|---|---|---|", *all_rows(runs)]) + "\n"
            (Path(out) / f"distill_{name}{args.tag}.md").write_text(text)
    print("\n".join(lines))
    mode = "--quick" if args.quick else "full"
    print(f"\nwall time {time.perf_counter() - started:.0f}s ({mode}, {args.seeds} seeds)")


if __name__ == "__main__":
    main()
