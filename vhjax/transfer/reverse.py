"""Reverse validation: a label-free choice among domain-adapted members (Zhong et al. 2010, "Cross
Validation Framework to Choose amongst Models and Datasets for Transfer Learning"; Ganin et al.
2016, "Domain-Adversarial Training of Neural Networks", section 5.1.2, chose DANN's hyperparameters
this way).

For each member of an `adapt` or `adda` result: label the target's training inputs with the
member's predictions, train a reverse classifier (the config's model, training settings and steps)
on those pseudo-labelled target inputs alone, and measure it on the labelled source eval split. A
member whose target labels are right teaches a reverse classifier that works back on the source;
`reverse_risk` = 1 - that accuracy, lower is better, and `select_member(result, 'reverse_risk')`
picks by it. No target label is read.

All reverse classifiers of a bucket train as one population in one compiled program: the target
inputs are shared data, each member's labels a column of a (N_t, P) table, and each reverse
member reads its own column (`pseudo_label_loss`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from vhjax import parallel
from vhjax.data import Dataset
from vhjax.population.fit import BucketProgram, fit_population
from vhjax.population.members import classifier_runner, mesh_layout
from vhjax.population.state import PopulationState
from vhjax.train.step import make_train_step, per_example_loss
from vhjax.train.task import Task
from vhjax.transfer.adapt import target_splits
from vhjax.transfer.distill import predict
from vhjax.validation import check_int

LABEL_COLUMN = "label_column"  # a reverse member's hparam: which column of the label table it learns


def pseudo_label_loss(task: Task):
    """`data_loss` for `make_train_step` on batches (x, y, labels (B, P)): the member learns column
    `hparams['label_column']` of the label table (its adapted member's predictions)."""

    def data_loss(state, outputs, targets, batch):
        column = state.hparams[LABEL_COLUMN].astype(jnp.int32)
        labels = jnp.take(batch[2], column, axis=-1).astype(targets.dtype)
        return per_example_loss(task, state.hparams, outputs, labels)

    return data_loss


def with_label_columns(population: PopulationState) -> PopulationState:
    """The population with member i learning column i."""
    members = population.members
    size = np.asarray(members.step).shape[0]
    columns = jnp.arange(size, dtype=jnp.float32)
    return population.replace(members=members.replace(hparams={**members.hparams, LABEL_COLUMN: columns}))


def reverse_accuracies(task: Task, population: PopulationState, target_x: np.ndarray, *, steps: int,
                       mesh: Any = "auto", verbose: bool = False) -> np.ndarray:
    """(P,) source eval accuracy of each member's reverse classifier (one program for the bucket)."""
    pseudo = np.asarray(predict(task, population, jnp.asarray(target_x))).argmax(-1).astype(np.int32)  # (P, N_t)
    size = pseudo.shape[0]
    classes = task.train.num_classes
    train = Dataset(target_x, pseudo[0], classes, "reverse", "train")  # labels per member come from the table
    config = dataclasses.replace(task.config, dataset={"train": train, "eval": task.eval}, train_split="train",
                                 eval_split="eval", test_split=None, steps=steps,
                                 eval_every=min(task.config.eval_every, steps), preprocess=(), patience=None,
                                 keep_best=False, monitor_split="eval", seed=task.config.seed)
    members = [{"seed": task.config.seed + i} for i in range(size)]
    mesh = parallel.resolve_mesh(mesh, size)
    table = jnp.asarray(pseudo.T)

    def program(reverse_task: Task, reverse_population: PopulationState, indices: list[int]) -> BucketProgram:
        step = make_train_step(reverse_task, pseudo_label_loss(reverse_task))
        runner = classifier_runner(reverse_task, member_step=step, **mesh_layout(mesh, size))
        return BucketProgram(with_label_columns(reverse_population), runner=runner,
                             train_data=(jnp.asarray(train.x), jnp.asarray(train.y), table))

    result = fit_population(config, members, same_batches=True, mesh=mesh, verbose=verbose, program=program,
                            label="reverse validation ({size} members) | ")
    return np.asarray([member["eval"]["accuracy"] for member in result.members])


def reverse_validation(result: Any, target: Any, *, steps: int | None = None, mesh: Any = "auto",
                       verbose: bool = False) -> Any:
    """`result` (of `adapt` or `adda`) with `reverse_risk` (1 - the reverse classifier's source eval
    accuracy) and `reverse_accuracy` in every row; `select_member(result, 'reverse_risk')` then picks
    by it. `target`: the target dict given to `adapt`/`adda` (its 'train' inputs are read). `steps`: the reverse
    classifiers' training steps (default: each bucket's config's). Diverged members get NaN."""
    adda = bool(getattr(result, "adapted", None))
    states, tasks = (result.adapted, result.stage_tasks) if adda else (result.population.states, result.tasks)
    rows = [dict(row) for row in result.rows]
    for number, (task, state) in enumerate(zip(tasks, states)):
        count = check_int("steps", task.config.steps if steps is None else steps, 1)
        x = target_splits(task, target, False)["train"][0]  # checked and preprocessed as `adapt` did
        accuracies = reverse_accuracies(task, state, x, steps=count, mesh=mesh, verbose=verbose)
        for row in rows:
            if row["bucket"] != number:
                continue
            accuracy = float(accuracies[row["position"]]) if row.get("diverged_step") is None else float("nan")
            row["reverse_accuracy"], row["reverse_risk"] = accuracy, 1.0 - accuracy
    return dataclasses.replace(result, rows=rows)


__all__ = ["LABEL_COLUMN", "pseudo_label_loss", "reverse_accuracies", "reverse_validation"]
