"""`fit_kfold`: K-fold cross-validation with every (candidate, fold) pair a member of one population.

Candidates x folds members train in one compiled program. Member (c, f) samples its batches only
from the training indices of fold f (a per-member index table maps its batch positions to
examples) and is evaluated on fold f's held-out examples. Folds are stratified by label. Folds of
unequal size are cut to the smallest (at most k - 1 examples are dropped), so all members share
one shape.

The result keeps the trained population and the task, so `out_of_fold_probs(result)` gives every
training example's prediction by the one fold model that did not train on it (all folds, uncut):
the level-1 training set of stacking (`vhjax.ensemble.stack_kfold`). A model with BatchNorm keeps
the precise-BN statistics its folds were evaluated with, so out-of-fold and test predictions use
them too, as `fit_population`'s do. Member (c, f)'s statistics are recomputed over fold f's own
training examples (`fold_precise_batches`): a held-out example's input never enters the statistics
of the model that scores it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import parallel
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.data import kfold_indices
from vhjax.population.fit import bucket_members, bucket_task, stack_dynamic
from vhjax.population.hooks import best_members, config_hooks
from vhjax.population.loop import run_loop
from vhjax.population.members import classifier_runner, init_population, mesh_layout
from vhjax.train.step import (AUTO_PRECISE_BN_BYTES, chunk_batch_indices, make_eval_fn, precise_bn_count,
                              recompute_statistics)
from vhjax.train.workdir import prepare_workdir
from vhjax.validation import check_int


@dataclasses.dataclass
class KFoldResult:
    """Per candidate: its fold metrics and their mean and std; `folds` holds the index tables
    (train, held-out) of each fold. `population`: the final members, candidate-major (member
    c * k + f is candidate c on fold f; kept-best parameters if the config keeps them; precise-BN
    statistics for models with BatchNorm, as evaluated); `task`:
    the task they trained on (its `train` split is the one the folds index)."""

    candidates: list[dict]
    folds: list[tuple[np.ndarray, np.ndarray]]
    population: Any = None
    task: Any = None

    @property
    def k(self) -> int:
        return len(self.folds)

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


def fold_precise_batches(config: TrainConfig, x: np.ndarray, member_tables: np.ndarray) -> np.ndarray | None:
    """(P, count, batch size, *input shape): each member's precise-BN batches, the first examples of
    its own training table (`precise_bn_count` per fold; under 'auto' all members' batches together
    stay within the byte bound one set of batches has). None where precise BN is off."""
    members, fold_size = member_tables.shape
    example_bytes = x[:1].nbytes
    if config.precise_bn_batches == "auto":
        example_bytes = max(example_bytes * members, 1)
        if fold_size * example_bytes > AUTO_PRECISE_BN_BYTES:
            fold_size = max(AUTO_PRECISE_BN_BYTES // example_bytes, config.batch_size)
    count = precise_bn_count(config, fold_size, example_bytes)
    if not count:
        return None
    rows = member_tables[:, :count * config.batch_size]
    return x[rows].reshape(members, count, config.batch_size, *x.shape[1:])


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
    mesh = parallel.resolve_mesh(mesh, len(members))
    runner = classifier_runner(task, batch_indices=batch_indices, **mesh_layout(mesh, len(members)))
    val_x, val_y = jnp.asarray(x[val_table[fold_of]]), jnp.asarray(y[val_table[fold_of]])
    precise_x = (fold_precise_batches(config, np.asarray(x), train_table[fold_of])
                 if "batch_stats" in population.members.model_state else None)
    if precise_x is None:
        recompute = lambda members: members
        evaluate = light_jit(jax.vmap(make_eval_fn(task), in_axes=(0, 0, 0)))
    else:  # each member's BatchNorm statistics from its own fold's training examples
        precise_x = jnp.asarray(precise_x)
        one_member, evaluate_one = recompute_statistics(task), make_eval_fn(task, precise=False)
        recompute_all = jax.jit(jax.vmap(one_member))
        evaluate_all = jax.jit(jax.vmap(lambda state, px, vx, vy: evaluate_one(one_member(state, px), vx, vy)))
        recompute = lambda members: recompute_all(members, precise_x)
        evaluate = lambda members, vx, vy: evaluate_all(members, precise_x, vx, vy)
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
    population = population.replace(members=recompute(population.members))  # the kept models are the evaluated ones
    final = {name: np.asarray(v) for name, v in evaluate_folds(population)["eval"].items()}
    alive = np.asarray(population.alive)
    results = []
    for c in range(len(candidates)):
        rows = slice(c * k, (c + 1) * k)
        results.append({"candidate": c, "config": dict(candidates[c]),
                        "folds": {name: np.where(alive[rows], v[rows], np.nan).tolist() for name, v in final.items()}})
    return KFoldResult(results, folds, population, task)


def _check_result(result: Any) -> KFoldResult:
    if not isinstance(result, KFoldResult) or result.population is None or result.task is None:
        raise ValueError(f"result has value {type(result).__name__}; allowed: a KFoldResult from fit_kfold "
                         "(with its population and task)")
    return result


def member_probs(result: KFoldResult, x: Any, *, batch_size: int = 1000) -> np.ndarray:
    """(candidates, k, N, classes) probabilities of every fold model on `x` (preprocessed like
    `result.task`'s splits), one vmapped apply over the members."""
    result = _check_result(result)
    count = len(result.candidates) * result.k
    members = jax.tree.map(lambda leaf: leaf[:count], result.population.members)  # drop inert padding
    apply = _apply_members(result.task, in_axis=None)
    x = jnp.asarray(x)
    probs = np.concatenate([np.asarray(apply(members, x[i:i + batch_size]))
                            for i in range(0, x.shape[0], batch_size)], axis=1)
    return probs.reshape(len(result.candidates), result.k, *probs.shape[1:])


def out_of_fold_probs(result: KFoldResult) -> np.ndarray:
    """(candidates, N_train, classes): each training example predicted by the fold model that held it out.

    Every example of `result.task.train` lies in exactly one fold's held-out set (all of it, not
    cut to the smallest fold), so every row is filled once. Member (c, f) evaluates only fold f's
    held-out examples: one vmapped apply over members with a per-member input batch.
    """
    result = _check_result(result)
    k, count = result.k, len(result.candidates) * result.k
    held_out = [np.asarray(val) for _, val in result.folds]
    width = max(len(v) for v in held_out)
    table = np.stack([np.pad(v, (0, width - len(v)), mode="edge") for v in held_out])  # (k, V), padded by repeats
    fold_of = np.tile(np.arange(k), len(result.candidates))
    members = jax.tree.map(lambda leaf: leaf[:count], result.population.members)
    x = np.asarray(result.task.train.x)
    probs = np.asarray(_apply_members(result.task, in_axis=0)(members, jnp.asarray(x[table[fold_of]])))
    probs = probs.reshape(len(result.candidates), k, width, -1)
    out = np.full((len(result.candidates), len(x), probs.shape[-1]), np.nan, np.float32)
    for f, v in enumerate(held_out):
        out[:, v] = probs[:, f, :len(v)]
    return out


def _apply_members(task: Any, in_axis: int | None):
    """light_jit(vmap(member -> softmax(apply))) with `x` shared (None) or per member (0)."""
    from vhjax.train.step import apply_model

    def one(state, x):
        return jax.nn.softmax(apply_model(task, state.params, state.model_state, state.hparams, x, train=False)[0],
                              axis=-1)

    return light_jit(jax.vmap(one, in_axes=(0, in_axis)))
