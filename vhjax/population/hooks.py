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

from vhjax import parallel
from vhjax.compile_options import light_jit
from vhjax.population.engine import keep_where
from vhjax.population.exploit import get_member_hparams, set_member_hparams
from vhjax.population.loop import Hook, Report
from vhjax.population.state import PopulationState
from vhjax.train import controls
from vhjax.validation import check_choice


def monitored_on_host(report: Report, population: PopulationState, split: str, metric: str) -> np.ndarray:
    """The metric per member as float32 on the host, NaN for members that diverged."""
    values = report.metric(split, metric).astype(np.float32)
    return np.where(np.asarray(population.alive), values, np.float32(np.nan))


def monitored(report: Report, population: PopulationState, split: str, metric: str) -> jax.Array:
    """The metric per member as float32, NaN for members that diverged."""
    return jnp.asarray(monitored_on_host(report, population, split, metric))


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
    of the monitored metric; `best_members(population, state)` swaps them in. Each update is one
    compiled program (not one per parameter leaf)."""
    check_choice("mode", mode, ("max", "min"))
    sign = 1.0 if mode == "max" else -1.0

    def init(population: PopulationState) -> dict:
        members = population.members
        return _initial_kept(members.params, members.model_state, jnp.asarray(members.step))

    def update(state: dict, population: PopulationState, report: Report):
        value = jnp.asarray(np.float32(sign) * monitored_on_host(report, population, split, metric))  # no program
        members = population.members
        step = jnp.asarray(members.step)
        value = placed_like(value, step)
        state = placed_like(state, {"value": step, "step": step, "params": members.params,
                                    "model_state": members.model_state})  # training moves members onto the mesh
        return _kept_update(state, value, members.params, members.model_state, step), population

    return Hook("keep_best", init, update)


def placed_like(state: Any, current: Any) -> Any:
    """`state` with the device placement of `current` (same tree), so one compiled update serves
    every call; a no-op once they match."""
    if all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(current))):
        return state
    return jax.tree.map(lambda a, b: parallel.spread(a, b.sharding), state, current)


@light_jit
def _initial_kept(params: Any, model_state: Any, step: jax.Array) -> dict:
    """Nothing kept yet: value -inf, step -1, copies of the current parameters and model state."""
    return {"value": jnp.full(step.shape, -jnp.inf, jnp.float32), "step": jnp.full(step.shape, -1, step.dtype),
            "params": jax.tree.map(jnp.copy, params), "model_state": jax.tree.map(jnp.copy, model_state)}


@light_jit
def _kept_update(state: dict, value: jax.Array, params: Any, model_state: Any, step: jax.Array) -> dict:
    """Members whose (sign-adjusted) value beats their kept one take the current parameters."""
    better = jnp.isfinite(value) & (value > state["value"])
    return {"value": jnp.where(better, value, state["value"]), "step": jnp.where(better, step, state["step"]),
            "params": keep_where(better, params, state["params"]),
            "model_state": keep_where(better, model_state, state["model_state"])}


def best_members(population: PopulationState, state: dict) -> PopulationState:
    """The population with each member's kept best parameters (members never evaluated keep theirs)."""
    members = population.members
    params, model_state = _swap_in_kept(state["step"], (state["params"], state["model_state"]),
                                        (members.params, members.model_state))
    return population.replace(members=members.replace(params=params, model_state=model_state))


@light_jit
def _swap_in_kept(kept_step: jax.Array, kept: Any, current: Any) -> Any:
    """`kept` for the members with a kept step (>= 0), else `current`."""
    return keep_where(kept_step >= 0, kept, current)


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
