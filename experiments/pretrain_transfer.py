"""Self-supervised pretraining as a transfer source on scikit-learn digits, with 10 labels per class.

Per seed (3): the encoder of an MLP (64 pixels -> `--widths` ReLU -> head) is (a) randomly initialised,
(b) pretrained with SimCLR (NT-Xent, temperature 0.2, the default image views: random crop, rotation,
noise) or (c) with a denoising autoencoder (noise 0.2), on the 1437 training images without labels
(`vhjax.transfer.pretrain`, one program per method, the seeds as members). Then a fresh head is trained
on 10 labelled training images per class (drawn by the seed) in two modes: `feature_extractor` (a
linear probe: the encoder frozen) and `full` (everything trains). Reported: test accuracy (360 images)
mean +- std over seeds. The protocol is ours; no published numbers exist for it.

Command:  python experiments/pretrain_transfer.py                  (3 seeds, widths 16, then 64)
          python experiments/pretrain_transfer.py --quick          (1 seed, few steps: a smoke test)
Runtime:  2-core AMD EPYC CPU, shared (load 6-22): 532 s (hidden 16) + 442 s (hidden 64), 2026-12-02.
Results:  printed as markdown; copied into experiments/README.md ("Self-supervised pretraining").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.population import fit_population
from vhjax.transfer import fit_from, load_source, mode_config, pretrain

METHODS = {"SimCLR": ("simclr", "temperature", 0.2), "denoising AE": ("autoencoder", "noise", 0.2)}
MODES = ("feature_extractor", "full")


def table(widths: tuple[int, ...], seeds: list[int], pretrain_steps: int, probe_steps: int, per_class: int) -> str:
    train, test = load("digits", "train"), load("digits", "test")
    base = TrainConfig(dataset={"train": (train.x, train.y), "test": (test.x, test.y)}, model="mlp",
                       model_kwargs={"widths": widths, "num_classes": 10}, batch_size=128, steps=pretrain_steps,
                       eval_every=pretrain_steps, learning_rate=3e-3)
    sources = {"random": None}
    for name, (method, field, value) in METHODS.items():
        sources[name] = pretrain(base, [{field: value, "seed": s} for s in seeds], method=method, verbose=False)
    scores: dict[tuple[str, str], list[float]] = {}
    for s in seeds:
        rng = np.random.default_rng(s)
        few = np.concatenate([rng.choice(np.flatnonzero(train.y == c), per_class, replace=False) for c in range(10)])
        probe = dataclasses.replace(base, dataset={"train": (train.x[few], train.y[few]), "test": (test.x, test.y)},
                                    batch_size=len(few), steps=probe_steps, eval_every=probe_steps, learning_rate=1e-2)
        layers = sources["SimCLR"]
        for mode in MODES:
            member = {**mode_config(mode, layers), "seed": s}
            for name, source in sources.items():
                result = (fit_population(probe, [member], verbose=False) if source is None else
                          fit_from(probe, load_source(source, index=seeds.index(s)), [member], verbose=False))
                scores.setdefault((name, mode), []).append(result.members[0]["test"]["accuracy"]
                                                           if "test" in result.members[0] else
                                                           result.members[0]["eval"]["accuracy"])
    lines = [f"| encoder (widths {widths}) | " + " | ".join(f"{m} test accuracy" for m in MODES) + " |",
             "|---|" + "---|" * len(MODES)]
    for name in sources:
        cells = [f"{np.mean(scores[name, m]):.3f} ± {np.std(scores[name, m], ddof=1) if len(seeds) > 1 else 0:.3f}"
                 for m in MODES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--widths", type=int, nargs="*", default=[16, 64])
    args = parser.parse_args()
    seeds, pretrain_steps, probe_steps = ([0], 50, 50) if args.quick else ([0, 1, 2], 500, 300)
    for width in args.widths:
        start = time.perf_counter()
        print(table((width,), seeds, pretrain_steps, probe_steps, 10))
        print(f"({len(seeds)} seeds, {pretrain_steps} pretraining steps, {probe_steps} probe steps, "
              f"{time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
