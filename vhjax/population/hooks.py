"""Hooks of the one loop (`loop.run_loop`): per-member early stopping, best-model keeping and
reduce-LR-on-plateau, each a small `(init, update)` pair over the whole population.

Each monitors any computed metric: `split` 'train' reads the chunk's mean step metrics (e.g. the
training loss), any other split an evaluation the loop ran ('eval', 'test', ...). Members that
diverged count as not improving. Every state is an array pytree with a leading member axis, so it
is checkpointed with the population and a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.population.engine import keep_where
from vhjax.population.exploit import get_member_hparams, set_member_hparams
from vhjax.population.loop import Hook, Report
from vhjax.population.state import PopulationState
from vhjax.train import controls
from vhjax.validation import check_choice


def monitored(report: Report, population: PopulationState, split: str, metric: str) -> jax.Array:
    """The metric per member as float32, NaN for members that diverged."""
    values = report.metric(split, metric).astype(np.float32)
    return jnp.asarray(np.where(np.asarray(population.alive), values, np.nan))


def monitored_or_worst(report: Report, population: PopulationState, split: str, metric: str, mode: str) -> jax.Array:
    """The monitored metric with diverged members at the worst value (never an improvement)."""
    value = monitored(report, population, split, metric)
    return jnp.where(jnp.isnan(value), -jnp.inf if mode == "max" else jnp.inf, value)


def per_member_control(control: controls.Control, population: PopulationState) -> Any:
    """A control's initial state for every member (leading axis P)."""
    return jax.vmap(lambda _: control.init())(jnp.arange(population.size))


def early_stopping(*, split: str = "eval", metric: str = "accuracy", mode: str = "max", patience: int,
                   min_delta: float = 0.0) -> Hook:
    """Stop each member once `patience` evaluations in a row fail to improve its monitored metric;
    a stopped member trains no more (the others go on in the same program)."""
    check_choice("mode", mode, ("max", "min"))
    control = controls.early_stopping(mode=mode, patience=patience, min_delta=min_delta)

    def update(state: dict, population: PopulationState, report: Report):
        value = monitored_or_worst(report, population, split, metric, mode)
        new = jax.vmap(control.update)(state["control"], value)
        return {"control": new}, population.replace(stopped=population.stopped | new.stop)

    def init(population: PopulationState) -> dict:
        return {"control": per_member_control(control, population)}

    return Hook("early_stopping", init, update)


def keep_best(*, split: str = "eval", metric: str = "accuracy", mode: str = "max") -> Hook:
    """Keep each member's parameters and model state (e.g. BatchNorm statistics) at its best value
    of the monitored metric; `best_members(population, state)` swaps them in."""
    check_choice("mode", mode, ("max", "min"))
    sign = 1.0 if mode == "max" else -1.0

    def init(population: PopulationState) -> dict:
        members = population.members
        return {"value": jnp.full(population.size, -jnp.inf, jnp.float32), "step": jnp.full(population.size, -1),
                "params": jax.tree.map(jnp.copy, members.params),
                "model_state": jax.tree.map(jnp.copy, members.model_state)}

    def update(state: dict, population: PopulationState, report: Report):
        value = sign * monitored(report, population, split, metric)
        better = jnp.isfinite(value) & (value > state["value"])
        members = population.members
        return {"value": jnp.where(better, value, state["value"]),
                "step": jnp.where(better, jnp.asarray(members.step), state["step"]),
                "params": keep_where(better, members.params, state["params"]),
                "model_state": keep_where(better, members.model_state, state["model_state"])}, population

    return Hook("keep_best", init, update)


def best_members(population: PopulationState, state: dict) -> PopulationState:
    """The population with each member's kept best parameters (members never evaluated keep theirs)."""
    seen = state["step"] >= 0
    members = population.members
    return population.replace(members=members.replace(
        params=keep_where(seen, state["params"], members.params),
        model_state=keep_where(seen, state["model_state"], members.model_state)))


def reduce_on_plateau(*, split: str = "eval", metric: str = "accuracy", mode: str = "max", patience: int,
                      factor: float = 0.1) -> Hook:
    """Multiply a member's learning rate by `factor` after `patience` evaluations without improvement
    of its monitored metric (each member on its own; composes with PBT, which changes rates too)."""
    control = controls.reduce_on_plateau(mode=mode, factor=factor, patience=patience)

    def init(population: PopulationState) -> dict:
        return {"control": per_member_control(control, population)}

    def update(state: dict, population: PopulationState, report: Report):
        value = monitored_or_worst(report, population, split, metric, mode)
        old = state["control"]
        new = jax.vmap(control.update)(old, value)
        report.logs["learning_rate_scale"] = np.asarray(new.scale)
        rates = get_member_hparams(population)["learning_rate"] * (new.scale / old.scale)
        return {"control": new}, set_member_hparams(population, learning_rate=rates)

    return Hook("reduce_on_plateau", init, update)


def config_hooks(config: Any) -> list[Hook]:
    """The hooks a TrainConfig asks for: plateau, early stopping (patience) and best-model keeping.

    `monitor_split` 'train' monitors the chunk's step metrics (e.g. the training loss), any other
    split an evaluation. Best-model keeping is on with early stopping or `keep_best`.
    """
    split, metric, mode = config.monitor_split, config.monitor, config.monitor_mode
    hooks = []
    if config.plateau_patience:
        hooks.append(reduce_on_plateau(split=split, metric=metric, mode=mode, patience=config.plateau_patience,
                                       factor=config.plateau_factor))
    if config.patience:
        hooks.append(early_stopping(split=split, metric=metric, mode=mode, patience=config.patience))
    if config.patience or config.keep_best:
        hooks.append(keep_best(split=split, metric=metric, mode=mode))
    return hooks
