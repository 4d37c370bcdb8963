"""`fit_kfold`: K-fold cross-validation with every (candidate, fold) pair a member of one population.

Candidates x folds members train in one compiled program. Member (c, f) samples its batches only
from the training indices of fold f (a per-member index table maps its batch positions to
examples) and is evaluated on fold f's held-out examples. Folds are stratified by label. Folds of
unequal size are cut to the smallest (at most k - 1 examples are dropped), so all members share
one shape.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.config import TrainConfig
from vhjax.data import kfold_indices
from vhjax.population.engine import default_member_chunk, init_population
from vhjax.population.fit import stack_dynamic
from vhjax.population.runner import make_population_runner
from vhjax.train.loop import chunk_lengths
from vhjax.train.metrics_log import print_progress
from vhjax.train.step import chunk_batch_indices, make_eval_fn
from vhjax.train.task import build_task, with_member_hparams


@dataclasses.dataclass
class KFoldResult:
    """Per candidate: its fold metrics and their mean and std; `folds` holds the index tables."""

    candidates: list[dict]
    folds: list[tuple[np.ndarray, np.ndarray]]

    def table(self, metric: str = "accuracy") -> str:
        lines = ["| candidate | config | " + metric + " mean ± std | per fold |", "|---|---|---|---|"]
        for c in self.candidates:
            values = c["folds"][metric]
            lines.append(f"| {c['candidate']} | {c['config']} | {np.mean(values):.4f} ± {np.std(values):.4f} | "
                         + ", ".join(f"{v:.3f}" for v in values) + " |")
        return "\n".join(lines)


def fold_tables(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(train table (k, M), validation table (k, V), folds) with equal sizes across folds."""
    folds = kfold_indices(len(labels), k, seed=seed, labels=labels)
    train_size = min(len(train) for train, _ in folds)
    val_size = min(len(val) for _, val in folds)
    return (np.stack([train[:train_size] for train, _ in folds]), np.stack([val[:val_size] for _, val in folds]),
            folds)


def make_fold_batch_indices(member_tables: np.ndarray, batch_size: int, shuffle: bool):
    """`indices(population, length) -> (length, P, B)`: member i draws only from `member_tables[i]`."""
    tables = jnp.asarray(member_tables)  # (P, M) example indices each member may train on

    def indices(population, length: int) -> jax.Array:
        sample = lambda key, step: chunk_batch_indices(key, step, length, tables.shape[1], batch_size, shuffle)
        positions = jax.vmap(sample)(population.members.data_key, population.members.step)  # (P, length, B)
        chosen = jnp.take_along_axis(tables, positions.reshape(tables.shape[0], -1), axis=1)
        return jnp.swapaxes(chosen.reshape(positions.shape), 0, 1)

    return indices


def fit_kfold(config: TrainConfig, candidates: Sequence[Mapping[str, Any]] = ({},), k: int = 5, *,
              fold_seed: int = 0, verbose: bool = True) -> KFoldResult:
    """Cross-validate each candidate (a dict of dynamic hyperparameters) on `k` folds of the train split."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k {k!r}; allowed: an integer >= 2")
    if not candidates:
        raise ValueError("candidates is empty; give at least one (an empty dict means the config as is)")
    task = build_task(config)
    x, y = task.train.x, task.train.y
    train_table, val_table, folds = fold_tables(y, k, fold_seed)
    if config.batch_size > train_table.shape[1]:
        raise ValueError(f"config field 'batch_size' has value {config.batch_size}; allowed: at most the "
                         f"{train_table.shape[1]} training examples of a fold")
    members = [dict(candidates[c]) for c in range(len(candidates)) for _ in range(k)]
    fold_of = np.tile(np.arange(k), len(candidates))
    hparams = stack_dynamic(list(range(len(members))), members)
    task = with_member_hparams(task, hparams)
    population = init_population(task, jax.random.key(config.seed), len(members), hparams, same_batches=False)
    batch_indices = make_fold_batch_indices(train_table[fold_of], config.batch_size, config.shuffle)
    run_chunk = make_population_runner(task, default_member_chunk(len(members)), batch_indices)
    evaluate = jax.jit(jax.vmap(make_eval_fn(task), in_axes=(0, 0, 0)))
    data = (jnp.asarray(x), jnp.asarray(y))
    val_x, val_y = jnp.asarray(x[val_table[fold_of]]), jnp.asarray(y[val_table[fold_of]])
    step = 0
    for length in chunk_lengths(0, config.steps, config.eval_every):
        tick = time.perf_counter()
        population, _ = run_chunk(population, data, length)
        step += length
        if verbose:
            accuracy = np.asarray(evaluate(population.members, val_x, val_y)["accuracy"])
            print_progress(f"k-fold ({len(candidates)} candidates x {k} folds) | step {step}/{config.steps} | "
                           f"{len(members) * length / (time.perf_counter() - tick):.0f} member-steps/s | "
                           f"validation accuracy mean {accuracy.mean():.4f}")
    final = {name: np.asarray(v) for name, v in evaluate(population.members, val_x, val_y).items()}
    alive = np.asarray(population.alive)
    results = []
    for c in range(len(candidates)):
        rows = slice(c * k, (c + 1) * k)
        results.append({"candidate": c, "config": dict(candidates[c]),
                        "folds": {name: np.where(alive[rows], v[rows], np.nan).tolist() for name, v in final.items()}})
    return KFoldResult(results, folds)
