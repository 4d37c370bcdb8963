"""Prune a trained model by weight magnitude, then fine-tune it with the pruned weights held at zero."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.models.pruning import apply_masks, magnitude_masks, masked_updates, sparsity_of
from vhjax.population.fit import fit
from vhjax.population.members import classifier_runner
from vhjax.population.state import new_population
from vhjax.train.state import TrainState
from vhjax.train.step import make_eval_fn
from vhjax.train.task import build_task


@dataclasses.dataclass
class PruneResult:
    """Eval metrics of the dense, pruned and fine-tuned model; the final state and the masks."""

    dense: dict[str, float]
    pruned: dict[str, float]
    finetuned: dict[str, float]
    sparsity: float
    state: TrainState
    masks: Any


def prune_and_finetune(config: TrainConfig, sparsity: float, *, scope: str = "global", finetune_steps: int,
                       state: TrainState | None = None, verbose: bool = False) -> PruneResult:
    """Train (unless `state` is given), prune `sparsity` of the kernels by magnitude, fine-tune."""
    if not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"finetune_steps {finetune_steps!r}; allowed: a non-negative integer")
    task = build_task(config)
    if state is None:
        state = fit(config, verbose=verbose).state
    evaluate = light_jit(make_eval_fn(task))
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    as_floats = lambda values: {k: float(v) for k, v in values.items()}
    dense = as_floats(evaluate(state, *eval_data))
    masks = magnitude_masks(state.params, sparsity, scope=scope)
    pruned_state = state.replace(params=apply_masks(state.params, masks))
    pruned = as_floats(evaluate(pruned_state, *eval_data))
    finetune_task = dataclasses.replace(task, optimizer=masked_updates(task.optimizer, masks))
    current = pruned_state.replace(opt_state=finetune_task.optimizer.init(pruned_state.params))
    if finetune_steps:
        # the one engine with a population of one member (the pruned model, its own data order)
        population = new_population(jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], current), same_batches=False)
        population, _ = classifier_runner(finetune_task)(population, (jnp.asarray(task.train.x),
                                                                      jnp.asarray(task.train.y)), finetune_steps)
        current = jax.tree.map(lambda leaf: leaf[0], population.members)
    finetuned = as_floats(evaluate(current, *eval_data))
    return PruneResult(dense, pruned, finetuned, sparsity_of(current.params, masks), current, masks)
