"""The population step: one member's train step, vmapped, with non-finite members isolated."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.population.hparams import member_arrays
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
    for name in sorted(task.static_zero):
        if np.any(np.asarray(state_hparams[name]) != 0):
            member = int(np.argmax(np.asarray(state_hparams[name]) != 0))
            raise ValueError(f"member {member} sets {name!r} but the task was built with {name} = 0 for every "
                             "member (a static zero: built without dropout / that penalty); build the population "
                             "from vhjax.train.task.with_member_hparams(task, hparams)")
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
    """`new` where `condition`, else `old`, leaf by leaf (PRNG key leaves never change in a step)."""

    def choose(a, b):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return a
        return jnp.where(condition, a, b)

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


def make_population_step(task: Task, member_chunk: int | None = None
                         ) -> Callable[[PopulationState, Any], tuple[PopulationState, dict]]:
    """`step(population, batch) -> (population, metrics (P,))`: every member in one program.

    `batch` is one (x, y) shared by all members when `population.same_batches`, else (P, ...) arrays.
    With `member_chunk`, the vmapped step runs over groups of that many members in turn
    (`lax.map`), which keeps each group's activations in cache on a CPU; results are identical.
    """
    isolated = make_isolated_step(task)

    def step(population: PopulationState, batch) -> tuple[PopulationState, dict]:
        shared = population.same_batches
        member_step = jax.vmap(isolated, in_axes=(0, 0, 0, None if shared else 0))
        size = population.alive.shape[0]
        args = (population.members, population.alive, population.diverged_step)
        if member_chunk is None or member_chunk >= size or size % member_chunk:
            members, alive, diverged_step, metrics = member_step(*args, batch)
        else:
            groups = size // member_chunk
            split = lambda tree: jax.tree.map(lambda leaf: leaf.reshape(groups, member_chunk, *leaf.shape[1:]), tree)
            merge = lambda tree: jax.tree.map(lambda leaf: leaf.reshape(size, *leaf.shape[2:]), tree)
            run_group = lambda xs: member_step(*xs[:3], batch if shared else xs[3])
            members, alive, diverged_step, metrics = merge(
                jax.lax.map(run_group, split((*args, None if shared else batch))))
        return population.replace(members=members, alive=alive, diverged_step=diverged_step), metrics

    return step


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
