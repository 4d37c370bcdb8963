"""Semi-supervised distillation on MNIST-1D: 400 labels, 3,100 unlabelled signals, two rounds of self-training.

Per seed, the 4000 MNIST-1D training signals are split by a permutation: 400 labelled (training),
500 validation (labelled: choosing the rule and the next teacher), 3,100 unlabelled (their labels
are never read); the 1000 test signals are reported. The model is the MNIST-1D paper CNN, AdamW,
dropout 0.1, weight decay 1e-4 and random shift (strength 0.1) on every member.

- supervised: the CNN on the 400 labels (`fit`); it is round 1's teacher.
- round 1: one `vhjax.transfer.distill(..., unlabeled=...)` call, every student in one compiled
  program, each step a batch of 100 labelled and 100 unlabelled rows: the labels only
  (unlabeled_weight 0: the supervised baseline in the same program), soft targets (soft weight 1,
  T = 1 and 2), pseudo-labels (soft weight 0: the teacher's label) with confidence thresholds 0,
  0.7 and 0.9, and soft targets with unlabeled_weight 3.
- round 2: the student with the best validation accuracy of round 1 is the teacher of the same
  students again (self-training iterated, as Noisy Student does: the student is noised by dropout
  and shift, the teacher is not).
- all labels: the CNN trained on 3,500 labelled signals (the 400 and the 3,100 with their labels): the
  ceiling unlabelled data cannot pass.

The protocol is ours (Lee 2013's pseudo-labels, Hinton et al. 2015's soft targets, Xie et al. 2020's
iterated self-training, on our splits); no published numbers exist for it.

Command:  python experiments/semi_supervised_table.py            (3 seeds)
          python experiments/semi_supervised_table.py --quick    (1 seed, 200 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU, a test job on the same cores: --quick 25 s, the full command 318 s (2026-12-07).
Results:  experiments/README.md ("Semi-supervised distillation").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.hardware import describe
from vhjax.population import fit
from vhjax.transfer import distill

LABELLED, VALIDATION = 400, 500
STUDENTS = {  # name: distillation values (seed added per run)
    "labels only": {"soft_weight": 0.0, "unlabeled_weight": 0.0},
    "soft targets, T=1": {"soft_weight": 1.0, "temperature": 1.0},
    "soft targets, T=2": {"soft_weight": 1.0, "temperature": 2.0},
    "soft targets, T=1, weight 3": {"soft_weight": 1.0, "temperature": 1.0, "unlabeled_weight": 3.0},
    "pseudo-labels": {"soft_weight": 0.0},
    "pseudo-labels, confidence 0.7": {"soft_weight": 0.0, "confidence": 0.7},
    "pseudo-labels, confidence 0.9": {"soft_weight": 0.0, "confidence": 0.9},
}


def splits(seed: int) -> tuple[dict, np.ndarray, dict]:
    """(the labelled dataset dict, the unlabelled inputs, the all-labels dataset dict)."""
    train, test = load("mnist1d", "train"), load("mnist1d", "test")
    order = np.random.default_rng(seed).permutation(len(train.y))
    labelled, validation, rest = order[:LABELLED], order[LABELLED:LABELLED + VALIDATION], order[LABELLED + VALIDATION:]
    common = {"val": (train.x[validation], train.y[validation]), "test": (test.x, test.y)}
    everything = np.concatenate([labelled, rest])
    return ({"train": (train.x[labelled], train.y[labelled]), **common}, train.x[rest],
            {"train": (train.x[everything], train.y[everything]), **common})


def make_config(data: dict, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(dataset=data, model="mnist1d_cnn", optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4,
                       dropout_rate=0.1, augment=({"name": "shift", "strength": 0.1},), batch_size=100, steps=steps,
                       eval_every=steps, eval_split="val", test_split="test", seed=seed)


def one_seed(seed: int, steps: int) -> dict[str, dict[str, float]]:
    data, unlabeled, everything = splits(seed)
    config = make_config(data, steps, seed)
    scores: dict[str, dict[str, float]] = {}
    supervised = fit(config, verbose=False)
    scores["supervised (400 labels)"] = {"val": supervised.metrics["eval"]["accuracy"],
                                         "test": supervised.metrics["test"]["accuracy"]}
    students = [{"seed": seed, **values} for values in STUDENTS.values()]
    teacher, source = supervised, None
    for round_number in (1, 2):
        result = distill(config, teacher, students, teacher_model=config, source=source, unlabeled=unlabeled,
                         unlabeled_batch=100, verbose=False)
        scores[f"round {round_number}: its teacher"] = {"val": float("nan"), "test": result.teacher["accuracy"]}
        for name, row in zip(STUDENTS, result.students):
            scores[f"round {round_number}: {name}"] = {"val": row["eval_accuracy"], "test": row["accuracy"]}
        teacher, source = result.population, {"rank": 0}  # the best student on validation teaches round 2
    ceiling = fit(dataclasses.replace(config, dataset=everything), verbose=False)
    scores["all labels (3,500)"] = {"val": ceiling.metrics["eval"]["accuracy"],
                                    "test": ceiling.metrics["test"]["accuracy"]}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds, steps = (1, 200) if args.quick else (args.seeds, args.steps)
    started = time.perf_counter()
    runs = []
    for seed in range(seeds):
        begun = time.perf_counter()
        runs.append(one_seed(seed, steps))
        print(f"seed {seed}: {time.perf_counter() - begun:.0f} s", flush=True)
    print(f"\n{seeds} seeds, {steps} steps per member; total {time.perf_counter() - started:.0f} s; {describe()}\n")
    print("| row | val accuracy | test accuracy (mean ± std) |")
    print("|---|---|---|")
    for name in runs[0]:
        val = np.array([run[name]["val"] for run in runs])
        test = np.array([run[name]["test"] for run in runs])
        val_text = "" if np.isnan(val).all() else f"{val.mean():.3f}"
        print(f"| {name} | {val_text} | {test.mean():.3f} ± {test.std():.3f} |")


if __name__ == "__main__":
    main()
