"""Shared by the zoo demonstrations (VAE, GAN, seq2seq, GCN, DARTS): populations of one model over
seeds, trained by the one engine (`vhjax.population.PopulationRunner`) and the one loop
(`vhjax.population.run_loop`).

Each demo writes its member step for ONE member, `step(member, batch) -> (member, metrics with a
scalar "loss")`; a member is a `TrainState`. Members draw their own batches, as independent runs
over seeds do: `own_batches` gives each member its own indices into a device-resident data table
from its `data_key` and step (so a member's batches do not depend on the population around it),
and `no_batches` serves steps that sample everything they need from the member's key (the GAN).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.population import PopulationRunner, PopulationState, run_loop
from vhjax.population.engine import gather_batch

DATA_TAG = 0xDA7A  # a member's data key is its key folded with this: batch draws never reuse the step's key


def own_data(population: PopulationState) -> PopulationState:
    """The population with a data key per member (its key folded with DATA_TAG) and its own batches."""
    members = population.members
    data_keys = jax.vmap(lambda key: jax.random.fold_in(key, DATA_TAG))(members.key)
    return population.replace(members=members.replace(data_key=data_keys), same_batches=False)


def own_batches(batch_size: int, table_size: int) -> Callable[[PopulationState, int], jax.Array]:
    """Batch indices `(length, P, batch_size)`: member i's batch at step s is drawn uniformly (with
    replacement) from `fold_in(data_key_i, s)`."""

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members

        def one(data_key, step):
            draw = lambda s: jax.random.randint(jax.random.fold_in(data_key, s), (batch_size,), 0, table_size)
            return jax.vmap(draw)(step + jnp.arange(length))

        return jnp.swapaxes(jax.vmap(one)(members.data_key, members.step), 0, 1)

    return indices


def no_batches(population: PopulationState, length: int) -> jax.Array:
    """For steps that need no data table (data=None): one dummy index per step."""
    return jnp.arange(length)


def train(population: PopulationState, member_step: Callable, data: Any, steps: int,
          batch_indices: Callable, *, chunk: int | None = None, gather: Callable = gather_batch,
          member_group: int | None = None) -> tuple[PopulationState, dict[str, np.ndarray]]:
    """Train every member to `steps` through the engine and the loop; returns the population and the
    per-step metrics, each `(steps, P)` (NaN where a member did not train). `gather` and
    `member_group` go to `PopulationRunner`."""
    runner = PopulationRunner(member_step, batch_indices, gather=gather, member_group=member_group)
    outcome = run_loop(population, runner, data, steps=steps, eval_every=chunk or steps, verbose=False)
    if runner.replayed_chunks:
        print(f"  ({runner.replayed_chunks} chunk(s) replayed to isolate a diverging member; "
              f"alive {np.asarray(outcome.population.alive).tolist()})", flush=True)
    return outcome.population, outcome.step_metrics
