"""`fit_kfold`: K-fold cross-validation with every (candidate, fold) pair a member of one population.

Candidates x folds members train in one compiled program. Member (c, f) samples its batches only
from the training indices of fold f (a per-member index table maps its batch positions to
examples) and is evaluated on fold f's held-out examples. Folds are stratified by label. Folds of
unequal size are cut to the smallest (at most k - 1 examples are dropped), so all members share
one shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import parallel
from vhjax.config import TrainConfig
from vhjax.data import kfold_indices
from vhjax.population.engine import default_member_group
from vhjax.population.fit import bucket_members, bucket_task, stack_dynamic
from vhjax.population.hooks import best_members, config_hooks
from vhjax.population.loop import run_loop
from vhjax.population.members import classifier_runner, init_population
from vhjax.train.step import chunk_batch_indices, make_eval_fn
from vhjax.train.workdir import prepare_workdir
from vhjax.validation import check_int


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
        rows = jnp.minimum(jnp.arange(population.size), tables.shape[0] - 1)  # inert padding members: any row
        chosen = jnp.take_along_axis(tables[rows], positions.reshape(population.size, -1), axis=1)
        return jnp.swapaxes(chosen.reshape(positions.shape), 0, 1)

    return indices


def fit_kfold(config: TrainConfig, candidates: Sequence[Mapping[str, Any]] = ({},), k: int = 5, *,
              fold_seed: int = 0, workdir: str | Path | None = None, mesh: Any = "auto",
              verbose: bool = True) -> KFoldResult:
    """Cross-validate each candidate (a dict of per-member fields) on `k` folds of the train split.

    The one loop: checkpoints and resume with a `workdir`, a `mesh`, and the config's early
    stopping, plateau and best-model keeping (monitoring each member's own held-out fold).
    """
    check_int("k", k, 2)
    if not candidates:
        raise ValueError("candidates has value []; allowed: at least one (an empty dict means the config as is)")
    members = [dict(candidates[c]) for c in range(len(candidates)) for _ in range(k)]
    buckets = bucket_members(config, members)
    if len(buckets) != 1:
        raise ValueError(f"candidates have value {list(candidates)!r}; allowed: candidates that differ only in "
                         "per-member fields (k-fold trains one program)")
    hparams = stack_dynamic(list(range(len(members))), members)
    task = bucket_task(buckets[0][0], hparams)
    config = task.config
    x, y = task.train.x, task.train.y
    train_table, val_table, folds = fold_tables(y, k, fold_seed)
    if config.batch_size > train_table.shape[1]:
        raise ValueError(f"config field 'batch_size' has value {config.batch_size}; allowed: at most the "
                         f"{train_table.shape[1]} training examples of a fold")
    fold_of = np.tile(np.arange(k), len(candidates))
    population = init_population(task, len(members), hparams, same_batches=False, data_seed=buckets[0][0].seed)
    batch_indices = make_fold_batch_indices(train_table[fold_of], config.batch_size, config.shuffle)
    mesh = parallel.resolve_mesh(mesh)
    group = default_member_group(len(members)) if mesh is None else None
    place = parallel.batch_placement(mesh) if mesh is not None and mesh.shape[parallel.DATA] > 1 else None
    runner = classifier_runner(task, group, batch_indices, place=place)
    evaluate = jax.jit(jax.vmap(make_eval_fn(task), in_axes=(0, 0, 0)))
    val_x, val_y = jnp.asarray(x[val_table[fold_of]]), jnp.asarray(y[val_table[fold_of]])
    evaluate_folds = lambda p: {"eval": evaluate(p.members, val_x, val_y)}
    root = prepare_workdir(workdir, config)
    outcome = run_loop(population, runner, (jnp.asarray(x), jnp.asarray(y)), steps=config.steps,
                       eval_every=config.eval_every, evaluate=evaluate_folds, hooks=config_hooks(config),
                       workdir=root, checkpoint_every=config.checkpoint_every, mesh=mesh,
                       label=f"k-fold ({len(candidates)} candidates x {k} folds) | ", verbose=verbose,
                       hparams=[{"candidate": c, "fold": f, **dict(candidates[c])}
                                for c in range(len(candidates)) for f in range(k)])
    population = outcome.population
    if "keep_best" in outcome.hook_states:
        population = best_members(population, outcome.hook_states["keep_best"])
    final = {name: np.asarray(v) for name, v in evaluate_folds(population)["eval"].items()}
    alive = np.asarray(population.alive)
    results = []
    for c in range(len(candidates)):
        rows = slice(c * k, (c + 1) * k)
        results.append({"candidate": c, "config": dict(candidates[c]),
                        "folds": {name: np.where(alive[rows], v[rows], np.nan).tolist() for name, v in final.items()}})
    return KFoldResult(results, folds)
