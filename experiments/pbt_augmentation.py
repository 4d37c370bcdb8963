"""A PBT-learned augmentation schedule on MNIST-1D, against fixed augmentation and none.

Three arms of `--members` MNIST-1D models (`--model`, default the paper MLP) each, trained side by side in ONE population (one compiled,
vmapped program; every member has its own initialisation and data order):

- pbt:   strengths of (shift, time_warp, gaussian_noise) start log-uniform in [0.02, 0.4]; every
         `--interval` steps the members are scored on the validation split, the bottom 25% copy
         parameters, optimizer state and strengths of a random top-25% member
         (`truncation_sources` + `copy_members`), and the copies perturb each strength by x0.8 or
         x1.25 (`perturb`, `set_member_hparams`). Exploit/explore stays inside the arm.
- fixed: strengths drawn from the same distribution once and kept (random search over constant
         strengths, the same compute).
- none:  no augmentation.

Each arm reports the test accuracy of its member with the best final validation accuracy (and
the arm's mean over members). The whole procedure is repeated for `--seeds` independent
sub-populations, all inside the same program, and the table gives mean +- std over them.

Command:  python experiments/pbt_augmentation.py          (defaults: 3 seeds, 8 members/arm, 2000 steps)
Hardware: 2-core CPU (shared), a few minutes. Writes experiments/results/pbt_augmentation.md and
experiments/figures/pbt_augmentation.png (the learned strength schedule).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.augment.compose import MAX_STRENGTH
from vhjax.config import TrainConfig
from vhjax.hardware import describe
from vhjax.population import (copy_members, get_member_hparams, init_population, make_population_eval,
                              classifier_runner, perturb, set_member_hparams,
                              truncation_sources)
from vhjax.train import build_task

OPS = ("shift", "time_warp", "gaussian_noise")
ARMS = ("pbt", "fixed", "none")
INIT_RANGE = (0.02, 0.4)
MODEL_TEXT = {"mnist1d_mlp": "MNIST-1D MLP (40-100-100 residual-10)",
              "mnist1d_cnn": "MNIST-1D paper CNN (3 stride-2 convs of 25 channels)"}


def layout(seeds: int, members: int) -> dict[tuple[int, str], np.ndarray]:
    """(seed, arm) -> the global member indices of that sub-population."""
    groups, start = {}, 0
    for seed in range(seeds):
        for arm in ARMS:
            groups[seed, arm] = np.arange(start, start + members)
            start += members
    return groups


def initial_strengths(rng: np.random.Generator, groups: dict, size: int) -> np.ndarray:
    strengths = np.zeros((size, len(OPS)), np.float32)
    for (_, arm), index in groups.items():
        if arm != "none":
            strengths[index] = np.exp(rng.uniform(*np.log(INIT_RANGE), size=(len(index), len(OPS))))
    return strengths


def exploit_explore(key: jax.Array, population, scores: np.ndarray, groups: dict) -> tuple:
    """Truncation exploit and multiplicative explore inside every PBT sub-population."""
    size = population.size
    source = np.arange(size)
    for (seed, arm), index in groups.items():
        if arm == "pbt":
            key, sub = jax.random.split(key)
            local = np.asarray(truncation_sources(sub, jnp.asarray(scores[index]), fraction=0.25))
            source[index] = index[local]
    population = copy_members(population, jnp.asarray(source))
    strengths = np.asarray(get_member_hparams(population)["aug_strength"])
    copied = source != np.arange(size)
    explored = strengths.copy()
    for k, op in enumerate(OPS):
        key, sub = jax.random.split(key)
        column = np.asarray(perturb(sub, jnp.asarray(strengths[:, k]), factors=(0.8, 1.25)))
        explored[:, k] = np.clip(column, 0.0, min(MAX_STRENGTH[op], 1.0))
    strengths = np.where(copied[:, None], explored, strengths).astype(np.float32)
    return set_member_hparams(population, aug_strength=jnp.asarray(strengths)), source, strengths


def lineage(sources: list[np.ndarray], strengths: list[np.ndarray], member: int) -> np.ndarray:
    """(rounds, K) strengths in effect along the ancestry of `member` (interval r uses strengths[r])."""
    path, current = [], member
    for r in range(len(strengths) - 1, -1, -1):
        path.append(strengths[r][current])
        if r > 0:
            current = sources[r - 1][current]  # exploit before interval r copied from sources[r-1]
    return np.array(path[::-1])


def run(args) -> dict:
    config = TrainConfig(dataset="mnist1d", model=args.model, optimizer="adam", learning_rate=3e-3,
                         batch_size=100, steps=args.steps, eval_every=args.interval,
                         train_split="train[:90%]", eval_split="train[90%:]", test_split="test",
                         augment=tuple({"name": op, "strength": 0.0} for op in OPS), seed=args.seed)
    task = build_task(config)
    groups = layout(args.seeds, args.members)
    size = args.seeds * len(ARMS) * args.members
    rng = np.random.default_rng(args.seed)
    strengths0 = initial_strengths(rng, groups, size)
    population = init_population(task, size,
                                 {"aug_strength": strengths0, "aug_prob": np.ones_like(strengths0)},
                                 same_batches=False)
    run_chunk = classifier_runner(task, isolation="per_step")
    evaluate = jax.jit(make_population_eval(task))
    val = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    test = (jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    train = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    key = jax.random.key(args.seed + 1)
    history = {"strengths": [strengths0], "sources": [], "val": []}
    step, start = 0, time.time()
    while step < args.steps:
        length = min(args.interval, args.steps - step)
        population, _ = run_chunk(population, train, length)
        step += length
        scores = np.asarray(evaluate(population, *val)["accuracy"])
        history["val"].append(scores)
        means = {arm: np.mean([scores[i].max() for (s, a), i in groups.items() if a == arm]) for arm in ARMS}
        print(f"step {step}/{args.steps} | best validation accuracy per sub-population (mean over seeds): "
              + ", ".join(f"{a} {v:.3f}" for a, v in means.items()) + f" | {time.time() - start:.0f} s", flush=True)
        if step < args.steps:
            key, sub = jax.random.split(key)
            population, source, strengths = exploit_explore(sub, population, scores, groups)
            history["sources"].append(source)
            history["strengths"].append(strengths)
    final_val = np.asarray(evaluate(population, *val)["accuracy"])
    final_test = np.asarray(evaluate(population, *test)["accuracy"])
    return {"groups": groups, "val": final_val, "test": final_test, "history": history,
            "wall": time.time() - start, "size": size}


def summarise(out: dict) -> dict:
    rows = {arm: {"best": [], "mean": [], "chosen": []} for arm in ARMS}
    for (seed, arm), index in out["groups"].items():
        chosen = index[np.argmax(out["val"][index])]
        rows[arm]["best"].append(out["test"][chosen])
        rows[arm]["mean"].append(out["test"][index].mean())
        rows[arm]["chosen"].append(chosen)
    return rows


def plot(out: dict, rows: dict, interval: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = out["history"]
    rounds = len(history["strengths"])
    steps = np.arange(rounds + 1) * interval
    figure, axes = plt.subplots(1, len(OPS), figsize=(4 * len(OPS), 3.4), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (axis, op) in enumerate(zip(axes, OPS)):
        for seed, chosen in enumerate(rows["pbt"]["chosen"]):
            index = out["groups"][seed, "pbt"]
            population_values = np.array([s[index, k] for s in history["strengths"]])
            axis.step(steps, np.vstack([population_values, population_values[-1:]]), where="post",
                      color=colors[seed], alpha=0.15, lw=0.8)
            path_values = lineage(history["sources"], history["strengths"], chosen)[:, k]
            axis.step(steps, np.append(path_values, path_values[-1]), where="post", color=colors[seed], lw=2,
                      label=f"seed {seed}: best member's lineage")
        axis.set(title=f"{op} strength", xlabel="training step", yscale="log")
    axes[0].legend(fontsize=7)
    figure.suptitle("PBT-learned augmentation schedule on MNIST-1D (thin: all PBT members)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=200)
    parser.add_argument("--members", type=int, default=8, help="members per arm and seed")
    parser.add_argument("--seeds", type=int, default=3, help="independent repeats of the whole procedure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="mnist1d_mlp", choices=sorted(MODEL_TEXT))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pbt_augmentation.md"))
    parser.add_argument("--figure", default=str(Path(__file__).parent / "figures" / "pbt_augmentation.png"))
    args = parser.parse_args()
    start = time.time()
    out = run(args)
    rows = summarise(out)
    plot(out, rows, args.interval, Path(args.figure))
    total = time.time() - start
    std = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0
    table = ["| arm | test acc. of best-validation member (mean ± std over seeds) | mean test acc. over the arm's members |",
             "|---|---|---|"]
    for arm in ARMS:
        best, mean = np.array(rows[arm]["best"]), np.array(rows[arm]["mean"])
        table.append(f"| {arm} | {best.mean():.3f} ± {std(best):.3f} | {mean.mean():.3f} ± {std(mean):.3f} |")
    final = []
    for seed, chosen in enumerate(rows["pbt"]["chosen"]):
        values = out["history"]["strengths"][-1][chosen]
        final.append(f"seed {seed}: " + ", ".join(f"{op} {v:.3f}" for op, v in zip(OPS, values)))
    command = (f"python experiments/pbt_augmentation.py --steps {args.steps} --interval {args.interval} "
               f"--members {args.members} --seeds {args.seeds} --seed {args.seed} --model {args.model}")
    report = ["## PBT-learned augmentation schedule vs fixed and none (MNIST-1D)", "",
              f"Command: `{command}`  ", f"Hardware: {describe()}  ",
              f"Wall time: {total:.0f} s (training loop {out['wall']:.0f} s, one population of {out['size']} members).", "",
              f"{MODEL_TEXT[args.model]}, Adam lr 3e-3, batch 100, {args.steps} steps; 3600 fit / "
              f"400 validation / 1000 test. Per seed, {args.members} members per arm; PBT exploits every "
              f"{args.interval} steps on validation accuracy (bottom 25% copy top 25%, strengths x0.8 or x1.25). "
              f"Ops: {', '.join(OPS)}; initial / fixed strengths log-uniform in {list(INIT_RANGE)}. "
              f"{args.seeds} independent repeats of the whole procedure.", "", *table, "",
              "Final strengths of the best PBT member: " + "; ".join(final) + ".", "",
              f"Schedule plot: `{os.path.relpath(args.figure, Path(__file__).resolve().parents[1])}`.", ""]
    print("\n".join(table))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report))
    print(f"wall time {total:.0f} s; wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
