"""The population step: one member's train step, vmapped, with non-finite members isolated."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.population.hparams import check_not_static_zero, member_arrays
from vhjax.population.state import PopulationState
from vhjax.train.state import TrainState
from vhjax.train.step import chunk_batch_indices, init_state, make_eval_fn, make_train_step
from vhjax.train.task import Task


def init_population(task: Task, key: jax.Array, size: int, hparams: Mapping[str, Any] | None = None,
                    *, same_batches: bool = True) -> PopulationState:
    """P members with their own initialisation, keys and hyperparameters.

    `hparams` maps a hyperparameter name (state or optimizer) to P values or one shared value.
    With `same_batches`, every member sees the same batch at every step (a fair comparison);
    otherwise each member has its own data order.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"population size {size!r}; allowed: a positive integer")
    member_keys = jax.random.split(key, size)
    shared_data_key = jax.random.fold_in(key, 0x5EED)
    data_keys = (jnp.broadcast_to(shared_data_key, (size,)) if same_batches
                 else jax.random.split(shared_data_key, size))
    check_member_archs(task, size, (hparams or {}).get("arch"))
    probe = init_state(task, jax.random.key(0))
    state_hparams, optimizer_hparams = member_arrays(size, hparams or {}, probe.hparams, probe.opt_state)
    check_not_static_zero(task.static_zero, state_hparams)
    members = jax.vmap(lambda k, dk: init_state(task, k, data_key=dk))(member_keys, data_keys)
    members = members.replace(hparams=state_hparams,
                              opt_state=optim.set_hyperparams(members.opt_state, **optimizer_hparams))
    return PopulationState(members, jnp.ones(size, bool), jnp.full(size, -1, jnp.int32), same_batches,
                           task.static_zero)


def check_member_archs(task: Task, size: int, arch: Any) -> None:
    """Each member's `arch` must fit the model's maximum shape (checked before compiling)."""
    if arch is None:
        return
    if not hasattr(task.model, "check_arch"):
        raise ValueError(f"model {task.config.model!r} has no searchable architecture; members cannot "
                         "set 'arch' (use a searchable model such as 'masked_mlp')")
    for member in range(size):
        task.model.check_arch(jax.tree.map(lambda leaf: np.asarray(leaf)[member], arch), member=member)


def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def keep_where(condition: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `condition`, else `old`, leaf by leaf; `condition` is a scalar or one flag per
    member (leading axis). PRNG key leaves are taken from `new` (they never change in a step)."""

    def choose(a, b):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return a
        return jnp.where(condition.reshape(condition.shape + (1,) * (a.ndim - condition.ndim)), a, b)

    return jax.tree.map(choose, new, old)


def make_isolated_step(task: Task) -> Callable:
    """One member's step that freezes the member at its last finite state if this step diverges."""
    train_step = make_train_step(task)

    def step(member: TrainState, alive: jax.Array, diverged_step: jax.Array, data):
        new, metrics = train_step(member, data)
        ok = alive & jnp.isfinite(metrics["loss"]) & all_finite(new.params)
        diverged_step = jnp.where(alive & ~ok, member.step + 1, diverged_step)
        return keep_where(ok, new, member), ok, diverged_step, metrics

    return step


def default_member_chunk(size: int) -> int | None:
    """Members per group on a CPU (8: the working set of a group stays in cache); None elsewhere."""
    if jax.default_backend() == "cpu" and size > 8 and size % 8 == 0:
        return 8
    return None


def make_population_step(task: Task, *, isolate: bool = True
                         ) -> Callable[[PopulationState, Any], tuple[PopulationState, dict]]:
    """`step(population, batch) -> (population, metrics (P,))`: every member in one program.

    `batch` is one (x, y) shared by all members when `population.same_batches`, else (P, ...) arrays.
    With `isolate`, a diverging member is frozen and flagged (`make_isolated_step`) and the metrics
    of members frozen before the step are NaN; without it nothing is checked (the population
    runner's optimistic chunks). Member groups for CPU caches: `population.runner`.
    """
    if not isolate:
        train_step = make_train_step(task)

        def free_step(population: PopulationState, batch) -> tuple[PopulationState, dict]:
            vmapped = jax.vmap(train_step, in_axes=(0, None if population.same_batches else 0))
            members, metrics = vmapped(population.members, batch)
            return population.replace(members=members), metrics

        return free_step
    isolated = make_isolated_step(task)

    def step(population: PopulationState, batch) -> tuple[PopulationState, dict]:
        member_step = jax.vmap(isolated, in_axes=(0, 0, 0, None if population.same_batches else 0))
        members, alive, diverged_step, metrics = member_step(
            population.members, population.alive, population.diverged_step, batch)
        metrics = nan_where_frozen(population.alive, metrics)
        return population.replace(members=members, alive=alive, diverged_step=diverged_step), metrics

    return step


def nan_where_frozen(alive: jax.Array, metrics: dict) -> dict:
    """Step metrics with NaN for members not alive (`alive` broadcasts against the metrics)."""
    return {name: jnp.where(alive, value, jnp.nan) for name, value in metrics.items()}


def population_batch_indices(task: Task) -> Callable[[PopulationState, int], jax.Array]:
    """Batch indices of a chunk: (length, B) shared by all members, or (length, P, B) when each has its own."""
    config, size = task.config, len(task.train)

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members
        sample = lambda key, step: chunk_batch_indices(key, step, length, size, config.batch_size, config.shuffle)
        if population.same_batches:
            # live members share the step count; frozen (diverged) ones ignore their batch
            return sample(members.data_key[0], jnp.max(members.step))
        return jnp.swapaxes(jax.vmap(sample)(members.data_key, members.step), 0, 1)

    return indices


def make_population_eval(task: Task) -> Callable[[PopulationState, jax.Array, jax.Array], dict]:
    """`evaluate(population, x, y) -> metrics`, each of shape (P,)."""
    evaluate = jax.vmap(make_eval_fn(task), in_axes=(0, None, None))
    return lambda population, x, y: evaluate(population.members, x, y)
