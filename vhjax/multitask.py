"""Multi-task learning: one shared trunk, one head per task, a population of task weightings in one
program (CATALOG 1.12, "multi-task learning"; 1.5, "dynamic loss adjustment").

`MultiTaskNet(trunk, heads)` puts a Dense head of `heads[t]` classes on a shared trunk (any Flax
module mapping inputs to features, e.g. the zoo's `mlp` without its head). The objective of a member
is a weighted sum of the tasks' cross-entropies, its weights a per-member array (`task_weights`, one
per task); with `uncertainty=True` each task's loss is instead scaled by a learnt precision,
`exp(-s_t) L_t + s_t` (Kendall, Gal & Cipolla 2018, "Multi-task learning using uncertainty to
weigh losses"), the `s_t` trained with the weights. Labels are `(N, tasks)` integers. `fit_multitask`
trains the members (one program, the population engine) and reports each task's test accuracy per
member.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.models.generative import MLPStack
from vhjax.validation import check_int, check_number


class MultiTaskNet(nn.Module):
    """A shared `trunk`, then one Dense head per task (`heads`: classes per task); returns a tuple
    of per-task logits."""

    trunk: nn.Module
    heads: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        features = self.trunk(x)
        return tuple(nn.Dense(classes, name=f"head_{t}")(features) for t, classes in enumerate(self.heads))


class Trunk(nn.Module):
    """A plain MLP trunk: the zoo's `MLPStack` (Dense + ReLU layers of `widths`) on the flattened input."""

    widths: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return MLPStack(self.widths)(x.reshape(x.shape[0], -1))


def cross_entropies(logits: Sequence[jax.Array], labels: jax.Array) -> jax.Array:
    """(tasks,) mean cross-entropy of each task's logits against its label column."""
    return jnp.stack([-jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, t:t + 1], axis=1))
                      for t, out in enumerate(logits)])


def multitask_loss(model: MultiTaskNet, uncertainty: bool):
    """`loss_fn(params, batch, key, hparams)` for the population engine: sum_t w_t L_t, or with
    `uncertainty` sum_t w_t (exp(-s_t) L_t + s_t) with `s` learnt (params['log_variance'])."""

    def loss_fn(params, batch, key, hparams):
        del key
        x, labels = batch
        losses = cross_entropies(model.apply({"params": params["net"]}, x), labels)
        weights = hparams["task_weights"]
        if uncertainty:
            s = params["log_variance"]
            total = jnp.sum(weights * (jnp.exp(-s) * losses + s))
        else:
            total = jnp.sum(weights * losses)
        return total, {f"loss_{t}": losses[t] for t in range(losses.shape[0])}

    return loss_fn


@dataclasses.dataclass
class MultiTaskResult:
    """Per member (rows of `task_weights`): test accuracy per task (members, tasks), the learnt
    log-variances when `uncertainty` (members, tasks), and the trained population."""

    accuracy: np.ndarray
    log_variance: np.ndarray | None
    population: Any


def fit_multitask(model: MultiTaskNet, train: tuple, test: tuple, task_weights: Any, *, steps: int,
                  batch_size: int = 64, learning_rate: float = 1e-3, uncertainty: bool = False,
                  key: jax.Array | None = None, workdir: str | Path | None = None,
                  checkpoint_every: int | None = None, mesh: Any = "auto") -> MultiTaskResult:
    """Train one member per row of `task_weights` (members, tasks) on `train` = (x, labels (N, tasks))
    with Adam, every member on the same batches (one program); test accuracy per task on `test`.
    `workdir`: checkpoints every `checkpoint_every` steps (default a tenth), a rerun resumes, a finished
    run is restored, other inputs are refused (`population.members.resumable`).
    `mesh`: the members over every local device ('auto', the default; None: one device), as `fit_population`."""
    from vhjax.population.members import fit_members, init_members, per_step_batches, resumable

    x, labels = np.asarray(train[0], np.float32), np.asarray(train[1], np.int32)
    weights = np.asarray(task_weights, np.float32)
    tasks = len(model.heads)
    if labels.ndim != 2 or labels.shape != (len(x), tasks):
        raise ValueError(f"train labels have shape {labels.shape}; allowed: ({len(x)}, {tasks}), one column per task")
    if weights.ndim != 2 or weights.shape[1] != tasks:
        raise ValueError(f"task_weights has shape {weights.shape}; allowed: (members, {tasks})")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"task_weights has value {weights.tolist()}; allowed: finite numbers >= 0")
    for t, classes in enumerate(model.heads):
        if labels[:, t].min() < 0 or labels[:, t].max() >= classes:
            raise ValueError(f"train labels of task {t} span [{labels[:, t].min()}, {labels[:, t].max()}]; allowed: "
                             f"[0, {classes - 1}] (heads[{t}] = {classes})")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1, len(x))
    check_number("learning_rate", learning_rate, 0.0, low_inclusive=False)
    key = jax.random.key(0) if key is None else key
    size = len(weights)

    def init_fn(k):
        params = {"net": model.init(k, jnp.asarray(x[:1]))["params"]}
        return {**params, "log_variance": jnp.zeros(tasks)} if uncertainty else params

    optimizer = optim.make_optimizer("adam", learning_rate=learning_rate)
    population = init_members(init_fn, optimizer, key, size, hparams={"task_weights": weights})
    batches = per_step_batches((x, labels), steps, batch_size)
    saving = resumable(workdir, "multitask", {"model": repr(model), "train": (x, labels), "task_weights": weights,
                                              "steps": steps, "batch_size": batch_size,
                                              "learning_rate": learning_rate, "uncertainty": uncertainty,
                                              "key": np.asarray(jax.random.key_data(key))}, steps, checkpoint_every)
    trained, _ = fit_members(population, multitask_loss(model, uncertainty), optimizer, batches, steps, mesh=mesh,
                             **saving)
    params = trained.members.params
    logits = jax.jit(jax.vmap(lambda p: model.apply({"params": p["net"]}, jnp.asarray(test[0], jnp.float32))))(params)
    test_labels = np.asarray(test[1])
    accuracy = np.stack([(np.asarray(out).argmax(-1) == test_labels[None, :, t]).mean(axis=1)
                         for t, out in enumerate(logits)], axis=1)
    variance = np.asarray(params["log_variance"]) if uncertainty else None
    return MultiTaskResult(accuracy, variance, trained)


__all__ = ["MultiTaskNet", "MultiTaskResult", "Trunk", "cross_entropies", "fit_multitask", "multitask_loss"]
