"""PopulationState: P members stacked on a leading axis, with divergence and stopping bookkeeping."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class PopulationState:
    """`members` is any member pytree (the built-in classifier's is a `TrainState`) whose every leaf
    has a leading axis of size P and which has a per-member `step` field.

    `alive[i]` is False once member i produced a non-finite loss or parameter; it is then frozen at
    its last finite state and `diverged_step[i]` holds the step at which it diverged (-1 if alive).
    `stopped[i]` is True once a hook stopped member i (early stopping, a multi-fidelity rung, an
    inert padding member): it trains no more but is not diverged.
    With `same_batches` (static), every member trains on the same batch at each step, gathered once.
    """

    members: Any
    alive: jax.Array
    diverged_step: jax.Array
    stopped: jax.Array
    same_batches: bool = flax.struct.field(pytree_node=False, default=True)
    # hyperparameters compiled as constant 0 for this population (Task.static_zero): setting them
    # later would have no effect, so `set_member_hparams` refuses non-zero values
    static_zero: frozenset = flax.struct.field(pytree_node=False, default=frozenset())

    @property
    def size(self) -> int:
        return self.alive.shape[0]

    @property
    def training(self) -> jax.Array:
        """(P,) members that still train: alive and not stopped."""
        return self.alive & ~self.stopped


def new_population(members: Any, *, same_batches: bool = True, static_zero: frozenset = frozenset()
                   ) -> PopulationState:
    """Wrap stacked members: all alive, none stopped."""
    size = jax.tree.leaves(members)[0].shape[0]
    return PopulationState(members, jnp.asarray(np.ones(size, bool)), jnp.asarray(np.full(size, -1, np.int32)),
                           jnp.asarray(np.zeros(size, bool)), same_batches, static_zero)


def training_mask(population: PopulationState) -> np.ndarray:
    """(P,) members that still train, on the host (no device program for two flags)."""
    return np.asarray(population.alive) & ~np.asarray(population.stopped)
