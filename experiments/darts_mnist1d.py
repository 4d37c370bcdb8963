"""DARTS vs random search over the NAS-Bench-201 cell space on MNIST-1D, at equal search compute.

Search data: MNIST-1D train[:75%] for weights, train[75%:] for selection (alpha steps / picking
the best random cell). Network: `NB201CellNet(channels=16, num_cells=1)` with 1-D convolutions.

- DARTS (first order; the step of `vhjax.search.darts.make_darts_step` wrapped as an engine member
  step, one member per search seed, params and optimizer states `{'w': ..., 'alpha': ...}`, trained
  by `PopulationRunner` + `run_loop`): S steps, each one alpha step on a validation batch and one
  weight step on a training batch, batch 100: 2S forward+backward passes of the network; the
  derived cell is the argmax op per edge excluding 'none'.
- Random search: K cells drawn uniformly from the 5^6 cells, each trained 2S / K steps (batch 100)
  as one population (`vhjax.population.fit_population`, members `{"arch": {"ops": ...}}`); the
  cell with the best accuracy on train[75%:] wins. Total: 2S forward+backward passes.
  A pass costs the same for every cell and for the DARTS supernet here, since `MixedEdge` computes
  all five ops and weights them (one-hot for a discrete cell), so equal passes = equal compute.

Each search is repeated over seeds; every found cell (plus the all-`nor_conv_3x3` default cell as a
reference) is then retrained from scratch on the full training set for R steps in one population
and scored on the test set. Reported: test accuracy mean ± std over search seeds.

Command:  python experiments/darts_mnist1d.py [--search-steps 600] [--random-cells 6] [--retrain-steps 1500] [--seeds 3]
Hardware: 2-core CPU, a few minutes. Writes experiments/results/darts_mnist1d.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.hardware import describe
from vhjax.models.cell import NASBENCH201_OPS, NUM_EDGES, NUM_OPS, NB201CellNet, decoded_from_ops
from vhjax.population import PopulationState, fit_population, new_population
from vhjax.search.darts import derive_ops, make_darts_step
from vhjax.train.state import TrainState

import member_runs

BATCH = 100
LR = 3e-3
ALPHA_LR, ALPHA_WEIGHT_DECAY = 3e-2, 1e-3  # darts_search's defaults
# one member per group: the engine runs the seeds' searches one after another inside one program, each
# with plain convolutions (vmapping nn.Conv over members lowers to grouped convolutions, slow on CPU)
DARTS_MEMBER_GROUP = 1
MODEL_KWARGS = {"channels": 16, "num_cells": 1, "num_classes": 10}


def cell_text(ops) -> str:
    return " ".join(f"{edge}:{op}" for edge, op in decoded_from_ops(ops).items())


def init_darts(model, x_example, w_opt, a_opt, seeds: int) -> PopulationState:
    """One DARTS run per search seed s: supernet weights from `key(s)` (as `darts_search(key=key(s))`
    initialises them), alpha = 0, params and opt_state `{'w': ..., 'alpha': ...}`."""

    def one(seed_key):
        key, init_key = jax.random.split(seed_key)
        alpha = jnp.zeros((NUM_EDGES, NUM_OPS), jnp.float32)
        params = {"w": model.init(init_key, x_example, arch={"weights": jax.nn.softmax(alpha, -1)})["params"],
                  "alpha": alpha}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                          opt_state={"w": w_opt.init(params["w"]), "alpha": a_opt.init(alpha)}, hparams={},
                          key=key, data_key=jax.random.fold_in(key, member_runs.DATA_TAG))

    keys = jax.vmap(jax.random.key)(jnp.arange(seeds, dtype=jnp.uint32))
    return new_population(jax.vmap(one)(keys), same_batches=False)


def make_darts_member_step(model, w_opt, a_opt) -> Callable:
    """The bi-level DARTS step of ONE search run as an engine member step: an alpha step on its
    validation batch, then a weight step on its training batch (`vhjax.search.darts.make_darts_step`,
    first order), with the member's key folded with its step for dropout."""
    darts_step = make_darts_step(model, w_opt, a_opt, method="darts", batch_size=None)

    def member_step(member: TrainState, batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(member.key, member.step)
        carry = (member.params["w"], member.opt_state["w"], member.params["alpha"], member.opt_state["alpha"], key,
                 batch)
        (w, w_state, alpha, a_state, _, _), metrics = darts_step(carry, jnp.float32(1.0))  # tau: GDAS only
        member = member.replace(step=member.step + 1, params={"w": w, "alpha": alpha},
                                opt_state={"w": w_state, "alpha": a_state})
        return member, {"loss": metrics["train_loss"], "val_loss": metrics["val_loss"]}

    return member_step


def darts_batches(num_train: int, num_val: int) -> Callable:
    """Per member and step, `BATCH` training indices and `BATCH` validation indices `(length, P, 2, BATCH)`."""
    limits = jnp.asarray([[num_train], [num_val]])

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members

        def one(data_key, step):
            draw = lambda s: jax.random.randint(jax.random.fold_in(data_key, s), (2, BATCH), 0, limits)
            return jax.vmap(draw)(step + jnp.arange(length))

        return jnp.swapaxes(jax.vmap(one)(members.data_key, members.step), 0, 1)

    return indices


def gather_darts(data, index):
    x_train, y_train, x_val, y_val = data
    train_index, val_index = index[..., 0, :], index[..., 1, :]
    return x_train[train_index], y_train[train_index], x_val[val_index], y_val[val_index]


def run_darts(seeds: int, steps: int, train, val) -> list[np.ndarray]:
    """First-order DARTS, one search per seed, all seeds one engine population (`PopulationRunner`
    + `run_loop`); the derived cell is the argmax op per edge excluding 'none'."""
    model = NB201CellNet(**MODEL_KWARGS)
    w_opt = optax.adam(LR)
    a_opt = optax.adamw(ALPHA_LR, b1=0.5, b2=0.999, weight_decay=ALPHA_WEIGHT_DECAY)
    data = (jnp.asarray(train.x, jnp.float32), jnp.asarray(train.y, jnp.int32),
            jnp.asarray(val.x, jnp.float32), jnp.asarray(val.y, jnp.int32))
    population = init_darts(model, data[0][:1], w_opt, a_opt, seeds)
    population, metrics = member_runs.train(population, make_darts_member_step(model, w_opt, a_opt), data, steps,
                                            darts_batches(len(train.x), len(val.x)), gather=gather_darts,
                                            member_group=DARTS_MEMBER_GROUP)
    alphas = np.asarray(population.members.params["alpha"])
    cells = [derive_ops(alpha) for alpha in alphas]
    for seed, ops in enumerate(cells):
        print(f"DARTS seed {seed}: val loss {np.nanmean(metrics['val_loss'][-50:, seed]):.3f}; cell {cell_text(ops)}",
              flush=True)
    return cells


def run_random(seeds: int, cells: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    """Per seed, the best of `cells` random cells trained `steps` steps each (all seeds: one population)."""
    rng = np.random.default_rng(1234)
    candidates = rng.integers(0, NUM_OPS, (seeds, cells, NUM_EDGES)).astype(np.int32)
    config = TrainConfig(dataset="mnist1d", train_split="train[:75%]", eval_split="train[75%:]",
                         model="nb201_cell_net", model_kwargs=MODEL_KWARGS, learning_rate=LR, batch_size=BATCH,
                         steps=steps, eval_every=steps, seed=0)
    members = [{"arch": {"ops": ops}} for ops in candidates.reshape(-1, NUM_EDGES)]
    result = fit_population(config, members, verbose=False)
    val_acc = np.array([m["eval"]["accuracy"] if m["diverged_step"] is None else -1.0 for m in result.members])
    val_acc = val_acc.reshape(seeds, cells)
    best = [candidates[s, int(np.argmax(val_acc[s]))] for s in range(seeds)]
    for s in range(seeds):
        print(f"random search seed {s}: val accuracies {np.round(val_acc[s], 3).tolist()}; best cell "
              f"{cell_text(best[s])}", flush=True)
    return best, [float(val_acc[s].max()) for s in range(seeds)]


def retrain(cells: list[np.ndarray], steps: int) -> np.ndarray:
    """Test accuracy of each cell trained from scratch on the full training set (one population)."""
    config = TrainConfig(dataset="mnist1d", train_split="train", eval_split="test", model="nb201_cell_net",
                         model_kwargs=MODEL_KWARGS, learning_rate=LR, batch_size=BATCH, steps=steps,
                         eval_every=steps, seed=7)
    result = fit_population(config, [{"arch": {"ops": np.asarray(c, np.int32)}} for c in cells], verbose=False)
    return np.array([m["eval"]["accuracy"] if m["diverged_step"] is None else np.nan for m in result.members])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-steps", type=int, default=600)
    parser.add_argument("--random-cells", type=int, default=6)
    parser.add_argument("--retrain-steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="experiments/results/darts_mnist1d.md")
    args = parser.parse_args()
    start = time.perf_counter()
    train, val = load("mnist1d", "train[:75%]"), load("mnist1d", "train[75%:]")
    passes = 2 * args.search_steps
    per_cell = passes // args.random_cells
    tick = time.perf_counter()
    darts_cells = run_darts(args.seeds, args.search_steps, train, val)
    darts_time = time.perf_counter() - tick
    tick = time.perf_counter()
    random_cells, _ = run_random(args.seeds, args.random_cells, per_cell)
    random_time = time.perf_counter() - tick
    reference = np.full(NUM_EDGES, NASBENCH201_OPS.index("nor_conv_3x3"), np.int32)
    tick = time.perf_counter()
    accuracy = retrain(darts_cells + random_cells + [reference], args.retrain_steps)
    retrain_time = time.perf_counter() - tick
    darts_acc, random_acc = accuracy[:args.seeds], accuracy[args.seeds:2 * args.seeds]
    wall = time.perf_counter() - start
    summary = (f"DARTS {darts_acc.mean():.3f} ± {darts_acc.std():.3f}; random search {random_acc.mean():.3f} ± "
               f"{random_acc.std():.3f}; all-conv3x3 reference {accuracy[-1]:.3f}")
    print(f"test accuracy after retraining {args.retrain_steps} steps: {summary}; wall {wall:.0f} s")
    lines = ["### DARTS vs random search on MNIST-1D (NAS-Bench-201 cell space, 1-D)", "",
             f"`NB201CellNet(channels=16, num_cells=1)`, Adam lr {LR:g}, batch {BATCH}. Search on train[:75%] "
             f"(weights) / train[75%:] (selection). Equal compute: DARTS runs {args.search_steps} steps, each an "
             f"alpha step plus a weight step = {passes} forward+backward passes; random search trains "
             f"{args.random_cells} uniformly drawn cells for {per_cell} steps each = {per_cell * args.random_cells} "
             f"passes, and keeps the best on train[75%:]. (A pass costs the same for the DARTS supernet and any "
             f"discrete cell: every edge computes all five ops.) Each found cell is retrained from scratch on the "
             f"full training set (4000) for {args.retrain_steps} steps and scored on the test set (1000); mean ± std "
             f"over {args.seeds} search seeds.", "",
             "| method | test accuracy (retrained) | per seed | cells found |", "|---|---|---|---|",
             f"| DARTS (first order) | {darts_acc.mean():.3f} ± {darts_acc.std():.3f} | "
             f"{', '.join(f'{a:.3f}' for a in darts_acc)} | {'; '.join(f'`{cell_text(c)}`' for c in darts_cells)} |",
             f"| random search, best of {args.random_cells} | {random_acc.mean():.3f} ± {random_acc.std():.3f} | "
             f"{', '.join(f'{a:.3f}' for a in random_acc)} | "
             f"{'; '.join(f'`{cell_text(c)}`' for c in random_cells)} |",
             f"| reference: every edge nor_conv_3x3 | {accuracy[-1]:.3f} | (one run) | |", "",
             f"Times: DARTS searches {darts_time:.0f} s (one population, one member per search seed), random search {random_time:.0f} s (one population), "
             f"retraining {retrain_time:.0f} s (one population); these include compilation.  ",
             f"Command: `python experiments/darts_mnist1d.py --search-steps {args.search_steps} --random-cells "
             f"{args.random_cells} --retrain-steps {args.retrain_steps} --seeds {args.seeds}`  ",
             f"Hardware: {describe()}  ", f"Wall time: {wall:.0f} s", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
