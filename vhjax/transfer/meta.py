"""Meta-learning: initialisations that adapt to a new task in a few gradient steps (CATALOG 1.12,
"meta-learning: share knowledge across tasks and adapt quickly to new ones"; "few-shot settings").

Methods, each a loss of ONE member's meta-parameters on a batch of tasks, trained by the population
engine (`population.members.fit_members`), so meta-learners of different inner learning rates, meta
learning rates and seeds train as members of one program:

- 'maml' (Finn et al. 2017): the query loss after `inner_steps` SGD steps on the support set,
  differentiated through the inner steps (second order);
- 'fomaml': the same with the inner steps' Jacobian dropped (first-order MAML);
- 'reptile' (Nichol et al. 2018): the meta-gradient is the parameters minus the parameters after
  `inner_steps` steps on the task (support and query together); with SGD as the outer optimizer the
  meta step is Reptile's `phi + epsilon (theta - phi)`;
- 'joint': no inner loop, the query loss at the meta-parameters (pretraining on every task's data,
  the usual transfer baseline).

A task batch is `(support_x, support_y, query_x, query_y)`, each with leading axes (tasks, examples).
`sinusoid_tasks` (regression, the benchmark of both papers) and `class_tasks` (N-way K-shot
classification from a labelled dataset, classes relabelled per task) sample them.
`adaptation_curve` measures meta-learned (or any) parameters on new tasks after k inner steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vhjax import optim
from vhjax.validation import check_choice, check_int, check_number

METHODS = ("maml", "fomaml", "reptile", "joint")
LOSSES = ("mse", "cross_entropy")


def task_loss(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Mean loss of outputs (N, C) against targets: 'mse' (targets (N, C)) or 'cross_entropy' (labels (N,))."""
    if kind == "mse":
        return lambda outputs, targets: jnp.mean((outputs - targets) ** 2)
    return lambda outputs, labels: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(outputs), labels[:, None], 1))


def sinusoid_tasks(key: jax.Array, tasks: int, shots: int, queries: int) -> tuple:
    """`tasks` sine waves y = A sin(x - b), A ~ U[0.1, 5], b ~ U[0, pi], x ~ U[-5, 5] (Finn et al. 2017):
    `shots` support and `queries` query points each, shaped (tasks, n, 1)."""
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amplitude = jax.random.uniform(k_amp, (tasks, 1, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_phase, (tasks, 1, 1), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(k_x, (tasks, shots + queries, 1), minval=-5.0, maxval=5.0)
    y = amplitude * jnp.sin(x - phase)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def class_tasks(key: jax.Array, x: np.ndarray, y: np.ndarray, classes: Sequence[int], tasks: int, ways: int,
                shots: int, queries: int) -> tuple:
    """`tasks` N-way (`ways`) K-shot (`shots`) classification tasks from the examples of `classes`:
    per task `ways` classes drawn, relabelled 0..ways-1 in a random order, `shots` support and
    `queries` query examples per class (without replacement inside a task)."""
    x, y = np.asarray(x, np.float32), np.asarray(y)
    pools = [np.flatnonzero(y == c) for c in classes]
    check_int("ways", ways, 2, len(pools))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1])
    xs, ys, xq, yq = [], [], [], []
    for _ in range(tasks):
        chosen = rng.choice(len(pools), ways, replace=False)
        support, query = [], []
        for label, pool in enumerate(chosen):
            rows = rng.choice(pools[pool], shots + queries, replace=False)
            support.append((rows[:shots], label))
            query.append((rows[shots:], label))
        xs.append(np.concatenate([x[r] for r, _ in support]))
        ys.append(np.concatenate([np.full(len(r), label) for r, label in support]))
        xq.append(np.concatenate([x[r] for r, _ in query]))
        yq.append(np.concatenate([np.full(len(r), label) for r, label in query]))
    return tuple(jnp.asarray(np.stack(a)) for a in (xs, np.stack(ys).astype(np.int32), xq,
                                                     np.stack(yq).astype(np.int32)))


def inner_adapt(apply: Callable, loss: Callable, params: Any, x: jax.Array, y: jax.Array, lr: jax.Array,
                steps: int, first_order: bool = False) -> Any:
    """`steps` SGD steps of `loss(apply(params, x), y)` at learning rate `lr` from `params`
    (`first_order`: the gradients are constants, so nothing differentiates through them)."""

    def step(current, _):
        return sgd_step(apply, loss, current, x, y, lr, first_order), None

    return lax.scan(step, params, None, length=steps)[0] if steps else params


def sgd_step(apply: Callable, loss: Callable, params: Any, x: jax.Array, y: jax.Array, lr: jax.Array,
             first_order: bool = False) -> Any:
    """One inner SGD step of `loss(apply(params, x), y)` (`first_order`: the gradient a constant)."""
    grads = jax.grad(lambda p: loss(apply(p, x), y))(params)
    if first_order:
        grads = lax.stop_gradient(grads)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def meta_objective(apply: Callable, loss: Callable, method: str, inner_steps: int) -> Callable:
    """`loss_fn(params, batch, key, hparams) -> (meta loss, metrics)` for `make_loss_step`: the
    method's loss averaged over the batch's tasks; `hparams['inner_lr']` is the member's inner rate.
    The metric `query_loss` is the query loss after adaptation, whatever the method."""
    check_choice("method", method, METHODS)

    def one_task(params, inner_lr, xs, ys, xq, yq):
        if method == "reptile":
            x_all, y_all = jnp.concatenate([xs, xq]), jnp.concatenate([ys, yq])
            adapted = lax.stop_gradient(inner_adapt(apply, loss, params, x_all, y_all, inner_lr, inner_steps))
            pull = 0.5 * sum(jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(adapted)))
            return pull, loss(apply(adapted, xq), yq)
        steps = 0 if method == "joint" else inner_steps
        adapted = inner_adapt(apply, loss, params, xs, ys, inner_lr, steps, first_order=method == "fomaml")
        query = loss(apply(adapted, xq), yq)
        return query, query

    def loss_fn(params, batch, key, hparams):
        del key
        values, query = jax.vmap(one_task, in_axes=(None, None, 0, 0, 0, 0))(params, hparams["inner_lr"], *batch)
        return values.mean(), {"query_loss": query.mean()}

    return loss_fn


@dataclasses.dataclass
class MetaResult:
    """Meta-learned members (a `PopulationState`, the initial one beside it) and each member's meta
    loss per step (steps, members; Reptile's is its pull toward the adapted parameters)."""

    population: Any
    initial: Any
    meta_loss: np.ndarray
    method: str
    inner_steps: int


def meta_train(model: Any, tasks: tuple, *, method: str = "maml", size: int | None = None,
               inner_lr: Any = 0.01, meta_lr: Any = 1e-3, inner_steps: int = 1, loss: str = "mse",
               optimizer: str = "adam", key: jax.Array | None = None, workdir: str | Path | None = None,
               checkpoint_every: int | None = None, mesh: Any = "auto") -> MetaResult:
    """Meta-train `size` members of `model` (a flax Module taking (N, ...) inputs) on `tasks`, a task
    batch per meta step: arrays with leading axes (meta steps, tasks, examples); one program. Per
    member (a scalar or one value each): `inner_lr` and `meta_lr` (the outer optimizer's learning
    rate; Reptile's epsilon with optimizer 'sgd'). `workdir`: checkpoints every `checkpoint_every`
    meta steps (default a tenth), a rerun resumes, a finished run is restored, other inputs are refused
    (`population.members.resumable`). Everything is checked before compiling.
    `mesh`: the members over every local device ('auto', the default; None: one device), as `fit_population`."""
    from vhjax.population.members import fit_members, init_members, resumable

    check_choice("method", method, METHODS)
    check_choice("loss", loss, LOSSES)
    check_int("inner_steps", inner_steps, 0 if method == "joint" else 1)
    leading = {np.shape(leaf)[:2] for leaf in jax.tree.leaves(tasks)}
    if len(tasks) != 4 or len(leading) != 1:
        raise ValueError(f"tasks has leading shapes {sorted(leading)}; allowed: four arrays (support_x, support_y, "
                         "query_x, query_y) with the same (meta steps, tasks) leading axes")
    steps = leading.pop()[0]
    inner = np.atleast_1d(np.asarray(inner_lr, np.float32))
    outer = np.atleast_1d(np.asarray(meta_lr, np.float32))
    size = size or max(len(inner), len(outer))
    for name, values in (("inner_lr", inner), ("meta_lr", outer)):
        if len(values) not in (1, size):
            raise ValueError(f"{name} has {len(values)} values; allowed: one, or one per member ({size})")
        for value in values:
            check_number(name, float(value), 0.0, low_inclusive=False)
    key = jax.random.key(0) if key is None else key
    example = jax.tree.map(lambda leaf: leaf[0, 0], tasks)[0]
    apply = lambda params, x: model.apply({"params": params}, x)  # noqa: E731
    init_fn = lambda k: model.init(k, example)["params"]  # noqa: E731
    outer_optimizer = optim.make_optimizer(optimizer, learning_rate=float(outer[0]))
    population = init_members(init_fn, outer_optimizer, key, size,
                              hparams={"inner_lr": np.broadcast_to(inner, (size,))},
                              optimizer_hparams={"learning_rate": np.broadcast_to(outer, (size,))})
    objective = meta_objective(apply, task_loss(loss), method, inner_steps)
    saving = resumable(workdir, "meta", {"model": repr(model), "tasks": tasks, "method": method, "size": size,
                                         "inner_lr": inner, "meta_lr": outer, "inner_steps": inner_steps,
                                         "loss": loss, "optimizer": optimizer,
                                         "key": np.asarray(jax.random.key_data(key))}, steps, checkpoint_every)
    trained, meta_loss = fit_members(population, objective, outer_optimizer, tasks, steps, mesh=mesh, **saving)
    return MetaResult(trained, population, np.asarray(meta_loss), method, inner_steps)


def adaptation_curve(model: Any, params: Any, tasks: tuple, inner_lr: Any, steps: Sequence[int],
                     loss: str = "mse") -> np.ndarray:
    """(members, len(steps)) mean query loss (or, for 'cross_entropy', accuracy) on `tasks` (leading
    axes (tasks, examples)) after k SGD steps on each task's support set at the member's `inner_lr`,
    from each member's `params` (a stacked tree, leading axis members)."""
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    objective = task_loss(loss)
    members = jax.tree.leaves(params)[0].shape[0]
    rates = jnp.broadcast_to(jnp.asarray(inner_lr, jnp.float32), (members,))

    def score(p, xq, yq):
        out = apply(p, xq)
        return objective(out, yq) if loss == "mse" else jnp.mean(jnp.argmax(out, -1) == yq)

    most = max(steps)

    def member(p, lr):
        def task(xs, ys, xq, yq):  # the score after 0, 1, ..., `most` steps: one scan, one program
            def step(current, _):
                return sgd_step(apply, objective, current, xs, ys, lr), score(current, xq, yq)

            final, scores = lax.scan(step, p, None, length=most)
            return jnp.concatenate([scores, score(final, xq, yq)[None]])
        return jax.vmap(task)(*tasks).mean(axis=0)

    curves = np.asarray(jax.jit(jax.vmap(member))(params, rates))  # (members, most + 1)
    return curves[:, list(steps)]


__all__ = ["LOSSES", "METHODS", "MetaResult", "adaptation_curve", "class_tasks", "inner_adapt", "meta_objective",
           "meta_train", "sinusoid_tasks", "task_loss"]
