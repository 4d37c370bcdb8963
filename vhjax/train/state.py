"""TrainState: everything one member carries between steps, as a pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """One member's training state.

    `hparams` holds the non-optimizer hyperparameters as arrays (regularizer coefficients,
    dropout rate, augmentation strengths and probabilities); optimizer hyperparameters live in
    `opt_state` (optax.inject_hyperparams). `model_state` holds non-parameter collections such as
    batch statistics. `key` drives this member's dropout and augmentation, `data_key` its batch
    order (members given the same data_key see the same batches). Every field is an array pytree, so a population is a TrainState whose leaves
    have a leading member axis.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: optax.OptState
    hparams: dict[str, jax.Array]
    key: jax.Array
    data_key: jax.Array
