"""Regularizers and augmentations against none, on MNIST-1D and digits: one population per dataset.

For each dataset, every condition (no regularization; L1, L2, elastic net, weight decay, dropout;
each augmentation family alone) is trained with `--seeds` independent seeds (own initialisation,
own data order: `same_batches=False`). Every member carries the same augmentation op list with
all strengths 0 except, for an augmentation condition, its own op (strength 0 is exactly the
identity), and every other difference is a dynamic hyperparameter (l1, l2, elastic_net,
weight_decay, dropout_rate, augmentation strengths), so a whole dataset's table is ONE bucket:
one compiled, vmapped program.

Each regularizer / augmentation is tried at two coefficients; the coefficient is chosen by mean
validation accuracy (10% of the training split held out), and the table reports test accuracy
(mean +- std over seeds) of the chosen coefficient, with the difference to "none".

Command:  python experiments/regularization_table.py            (defaults: 3 seeds; 2000 steps MNIST-1D, 800 digits)
Hardware: 2-core CPU (shared), about 10 minutes. Writes experiments/results/regularization_table.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vhjax.config import TrainConfig
from vhjax.hardware import describe
from vhjax.population import fit_population

# (label, field, coefficients tried); field is a member field or ("augment", op name)
REGULARIZERS = (
    ("L1", "l1", (1e-5, 1e-4)),
    ("L2", "l2", (1e-4, 1e-3)),
    ("elastic net", "elastic_net", (1e-5, 1e-4)),
    ("weight decay (decoupled)", "weight_decay", (1e-4, 1e-3)),
    ("dropout", "dropout_rate", (0.1, 0.3)),
)

DATASETS = {
    "mnist1d": {
        "config": dict(dataset="mnist1d", model="mnist1d_mlp", learning_rate=3e-3,
                       train_split="train[:90%]", eval_split="train[90%:]", test_split="test"),
        "augment": (("gaussian_noise", {}, (0.05, 0.15)), ("shift", {}, (0.1, 0.25)),
                    ("scale", {}, (0.1, 0.25)), ("time_warp", {}, (0.2, 0.5)),
                    ("window_slice", {}, (0.1, 0.25))),
        "steps": 2000,
        "describe": "MNIST-1D (4000 train: 3600 fit / 400 validation; 1000 test), MNIST-1D MLP "
                    "(40-100-100 residual-10)",
    },
    "digits": {
        "config": dict(dataset="digits", model="cnn2d", learning_rate=3e-3,
                       model_kwargs={"conv_layers": ((16, 3, 1, "SAME"), (32, 3, 1, "SAME")), "head_widths": (64,)},
                       train_split="train[:90%]", eval_split="train[90%:]", test_split="test"),
        "augment": (("translate", {}, (0.125, 0.25)), ("rotate", {}, (0.15, 0.3)),
                    ("cutout", {}, (0.25, 0.5)), ("elastic", {"sigma": 1.5}, (0.5, 1.0)),
                    ("image_scale", {}, (0.1, 0.2))),
        "steps": 800,
        "describe": "digits 8x8 (1437 train: 1293 fit / 144 validation; 360 test), small 2-D CNN "
                    "(conv 16, conv 32, max pool, dense 64)",
    },
}


def conditions(spec: dict) -> list[tuple[str, str, float | None, dict]]:
    """(group, label, coefficient, member fields) of every condition; strengths default to 0."""
    ops = spec["augment"]

    def augment(strengths: dict) -> tuple:
        return tuple({"name": name, **options, "strength": strengths.get(name, 0.0)} for name, options, _ in ops)

    base = {"l1": 0.0, "l2": 0.0, "elastic_net": 0.0, "weight_decay": 0.0, "dropout_rate": 0.0}
    rows = [("none", "none", None, {**base, "augment": augment({})})]
    for label, field, values in REGULARIZERS:
        rows += [("regularizer", label, v, {**base, field: v, "augment": augment({})}) for v in values]
    for name, _, values in ops:
        rows += [("augmentation", name, v, {**base, "augment": augment({name: v})}) for v in values]
    return rows


def run_dataset(name: str, steps: int, seeds: int, verbose: bool) -> tuple[list[dict], float, int]:
    """Train one population for `name`; returns rows (chosen coefficient per condition), wall time, buckets."""
    spec = DATASETS[name]
    config = TrainConfig(**spec["config"], optimizer="adamw", batch_size=100, steps=steps,
                         eval_every=max(1, steps // 4), seed=0)
    conds = conditions(spec)
    members = [dict(fields) for _, _, _, fields in conds for _ in range(seeds)]
    start = time.time()
    result = fit_population(config, members, same_batches=False, verbose=verbose)
    wall = time.time() - start
    scores = {}
    for index, (group, label, value, _) in enumerate(conds):
        runs = result.members[index * seeds:(index + 1) * seeds]
        val = np.array([m["eval"]["accuracy"] for m in runs])
        test = np.array([m["test"]["accuracy"] for m in runs])
        diverged = sum(m["diverged_step"] is not None for m in runs)
        scores.setdefault((group, label), []).append((value, val, test, diverged))
    rows = []
    for (group, label), options in scores.items():
        value, val, test, diverged = max(options, key=lambda o: o[1].mean())
        rows.append({"group": group, "label": label, "value": value, "val": val, "test": test,
                     "diverged": diverged, "tried": [o[0] for o in options]})
    return rows, wall, len(result.states)


def markdown(name: str, rows: list[dict], seeds: int, steps: int, wall: float, buckets: int, members: int) -> str:
    none = next(r for r in rows if r["label"] == "none")
    lines = [f"### {name}: {DATASETS[name]['describe']}", "",
             f"{members} members ({seeds} seeds x {members // seeds} conditions), {steps} Adam steps "
             f"(lr {DATASETS[name]['config']['learning_rate']}, batch 100), {buckets} bucket(s); "
             f"wall time {wall:.0f} s.", "",
             "| group | method | coefficient (chosen on validation) | tried | validation acc. | test acc. (mean ± std) | Δ test vs none |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        coefficient = "-" if r["value"] is None else f"{r['value']:g}"
        tried = "-" if r["value"] is None else ", ".join(f"{v:g}" for v in r["tried"])
        delta = "" if r is none else f"{100 * (r['test'].mean() - none['test'].mean()):+.1f} pts"
        note = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        lines.append(f"| {r['group']} | {r['label']} | {coefficient} | {tried} | {r['val'].mean():.3f} | "
                     f"{r['test'].mean():.3f} ± {r['test'].std(ddof=1) if len(r['test']) > 1 else 0:.3f}{note} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps for every dataset (default: 2000 MNIST-1D, 800 digits)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "regularization_table.md"))
    args = parser.parse_args()
    start = time.time()
    sections = []
    for name in args.datasets:
        steps = args.steps or DATASETS[name]["steps"]
        rows, wall, buckets = run_dataset(name, steps, args.seeds, not args.quiet)
        members = args.seeds * (1 + 2 * len(REGULARIZERS) + 2 * len(DATASETS[name]["augment"]))
        section = markdown(name, rows, args.seeds, steps, wall, buckets, members)
        print(section + "\n", flush=True)
        sections.append(section)
    total = time.time() - start
    command = "python experiments/regularization_table.py " + " ".join(
        ([f"--steps {args.steps}"] if args.steps else []) + [f"--seeds {args.seeds}", "--datasets " + " ".join(args.datasets)])
    report = ["## Regularizers and augmentations vs none (one population per dataset)", "",
              f"Command: `{command}`  ", f"Hardware: {describe()}  ",
              f"Total wall time: {total:.0f} s (includes compilation).", "",
              "Each condition's coefficient is chosen by mean validation accuracy over seeds among the two "
              "tried; test accuracy is mean ± sample std over seeds (independent init and data order). "
              "Regularizers act on kernels only (L1/L2/elastic net added to the loss; weight decay is "
              "AdamW-style decoupled). Every member carries all augmentation ops, strength 0 except its own.",
              "", *("\n\n".join(sections).splitlines()), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report))
    print(f"total wall time {total:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
