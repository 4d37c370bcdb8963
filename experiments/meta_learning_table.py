"""Meta-learning: MAML, first-order MAML, Reptile and joint pretraining, each a population of
seeds in one program, on sine-wave regression and few-shot MNIST-1D classification.

Sine waves (the benchmark of Finn et al. 2017 and Nichol et al. 2018): y = A sin(x - b),
A ~ U[0.1, 5], b ~ U[0, pi], x ~ U[-5, 5]; 10 support and 10 query points per task, 4 tasks per
meta step, 3000 meta steps; MLP (40, 40); inner SGD at 0.01, 1 step (Reptile: 5 steps on support
and query, outer SGD at 0.1; the others outer Adam 1e-3). Reported: the mean squared error on 50
query points of 500 new waves after k = 0, 1, 5, 10 SGD steps on their 10 support points, and for
an untrained network (random init), mean +- std over 3 seeds (the members).

Few-shot MNIST-1D: 3-way 5-shot tasks; meta-training on classes 0-5, new tasks from classes 6-9
(test split); 15 query examples per class; the same methods (inner lr 0.05, 1 step; Reptile 5),
MLP (64, 64), 2000 meta steps; accuracy after k steps (chance 1/3).

Command:  python experiments/meta_learning_table.py            (3 seeds)
          python experiments/meta_learning_table.py --quick    (1 seed, 200 meta steps: a smoke test)
Runtime:  2-core AMD EPYC CPU: 41 s (2026-12-07); --quick about 30 s.
Results:  experiments/results/meta_learning.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from vhjax.data import load
from vhjax.models import get_model
from vhjax.transfer import meta

SETTINGS = {  # method: (inner steps, outer optimizer, outer learning rate)
    "maml": (1, "adam", 1e-3), "fomaml": (1, "adam", 1e-3), "reptile": (5, "sgd", 0.1), "joint": (0, "adam", 1e-3),
}
K = (0, 1, 5, 10)


def by_step(tasks: tuple, steps: int, per_step: int) -> tuple:
    return tuple(a.reshape(steps, per_step, *a.shape[1:]) for a in tasks)


def table(model, sampled: tuple, new: tuple, *, seeds: int, inner_lr: float, loss: str) -> tuple[list[str], float]:
    started = time.perf_counter()
    rows, initial = [], None
    for method, (inner_steps, optimizer, outer_lr) in SETTINGS.items():
        result = meta.meta_train(model, sampled, method=method, size=seeds, inner_lr=inner_lr, meta_lr=outer_lr,
                                 inner_steps=inner_steps, optimizer=optimizer, loss=loss, key=jax.random.key(7))
        rows.append((method, meta.adaptation_curve(model, result.population.members.params, new, inner_lr, K, loss)))
        initial = result.initial.members.params
    rows.append(("random init (no meta-training)", meta.adaptation_curve(model, initial, new, inner_lr, K, loss)))
    metric = "query MSE" if loss == "mse" else "query accuracy"
    lines = ["| method | " + " | ".join(f"{metric} after {k} steps" for k in K) + " |", "|---|" + "---|" * len(K)]
    for method, curve in rows:
        lines.append(f"| {method} | " + " | ".join(f"{curve[:, i].mean():.3f} ± {curve[:, i].std():.3f}"
                                                  for i in range(len(K))) + " |")
    return lines, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 meta steps (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder for meta_learning.md (default: experiments/results, "
                        "not written with --quick)")
    args = parser.parse_args()
    seeds, sine_steps, class_steps = (1, 200, 200) if args.quick else (args.seeds, 3000, 2000)
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    text = ["# Meta-learning", ""]

    sampled = by_step(meta.sinusoid_tasks(jax.random.key(1), sine_steps * 4, 10, 10), sine_steps, 4)
    new = meta.sinusoid_tasks(jax.random.key(2), 500, 10, 50)
    lines, seconds = table(get_model("mlp", widths=(40, 40), num_classes=1), sampled, new, seeds=seeds,
                           inner_lr=0.01, loss="mse")
    header = f"Sine waves, 10-shot, {sine_steps} meta steps of 4 tasks, {seeds} seeds per method: {seconds:.0f} s"
    print(header, "", *lines, "", sep="\n", flush=True)
    text += [header, "", *lines, ""]

    train, test = load("mnist1d", "train"), load("mnist1d", "test")
    sampled = by_step(meta.class_tasks(jax.random.key(3), train.x, train.y, range(6), class_steps * 4, 3, 5, 15),
                      class_steps, 4)
    new = meta.class_tasks(jax.random.key(4), test.x, test.y, range(6, 10), 300, 3, 5, 15)
    lines, seconds = table(get_model("mlp", widths=(64, 64), num_classes=3), sampled, new, seeds=seeds,
                           inner_lr=0.05, loss="cross_entropy")
    header = (f"MNIST-1D 3-way 5-shot, meta-train classes 0-5, new tasks from classes 6-9 (test split), "
              f"{class_steps} meta steps of 4 tasks, {seeds} seeds per method: {seconds:.0f} s")
    print(header, "", *lines, "", sep="\n", flush=True)
    text += [header, "", *lines, ""]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "meta_learning.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
