"""PopulationState: P members stacked on a leading axis, with divergence bookkeeping."""

from __future__ import annotations

import flax.struct
import jax

from vhjax.train.state import TrainState


@flax.struct.dataclass
class PopulationState:
    """`members` is a TrainState whose every leaf has a leading axis of size P.

    `alive[i]` is False once member i produced a non-finite loss or parameter; it is then frozen at
    its last finite state and `diverged_step[i]` holds the step at which it diverged (-1 if alive).
    With `same_batches` (static), every member trains on the same batch at each step, gathered once.
    """

    members: TrainState
    alive: jax.Array
    diverged_step: jax.Array
    same_batches: bool = flax.struct.field(pytree_node=False, default=True)
    # hyperparameters compiled as constant 0 for this population (Task.static_zero): setting them
    # later would have no effect, so `set_member_hparams` refuses non-zero values
    static_zero: frozenset = flax.struct.field(pytree_node=False, default=frozenset())

    @property
    def size(self) -> int:
        return self.alive.shape[0]
