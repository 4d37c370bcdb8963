"""Simulated annealing over transferred weights: parallel chains in one vmapped, jitted program.

    source = load_source("runs/pretrain")
    result = anneal(config, source, chains=8, steps=100, temperature=[0.0, 0.01, 0.03, 0.1] * 2,
                    step_size=1e-2, schedule="exponential", decay=0.97,
                    source_data=(xs, ys), source_weight=0.5)
    result.energy                     # (chains, steps + 1): each chain's current energy, start first

A chain's state is a copy of the target model's weights with the source transferred in (as in
`fit_from`: `transfer_params`, a fresh head where the classes differ). Each step proposes a
gradient-based neighbour, `w' = w - step_size * grad + sqrt(2 * step_size * T) * N(0, 1)` (the
gradient of the target training loss on one random minibatch; a Langevin-like move whose noise
grows with the temperature T), and accepts it by the Metropolis rule: always when the energy does
not rise, with probability exp(-dE / T) when it does (never at T = 0). The energy is the target
`eval` split's loss (or error) + `source_weight` x the same on `source_data`. The temperature
cools per chain: 'exponential' T_k = T0 * decay^k, 'linear' T_k = T0 * (1 - k / steps).

Why not a `PopulationRunner` member step through `fit_population(program=...)`: a chain's state
is not a `TrainState` (no optimizer; it carries its current energy and temperature schedule), it
evaluates the full validation (and source) energy at every step, and its record is the energy
trace per step, not the engine's per-chunk training metrics; the engine's checkpoints and
divergence isolation have nothing to do here (a NaN proposal is simply rejected). So the chains
run as one `jax.vmap` over chains of a `jax.lax.scan` over steps, compiled once per call shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.config import TrainConfig
from vhjax.population.fit import bucket_task
from vhjax.train.step import apply_model, per_example_loss
from vhjax.transfer.weights import COLLECTIONS_KEY, as_variables, transfer_params
from vhjax.validation import check_choice, check_int, check_number, invalid

SCHEDULES = ("linear", "exponential")
ENERGIES = ("loss", "error")


def per_chain(name: str, value: Any, chains: int, low: float = 0.0, high: float | None = None) -> np.ndarray:
    """A per-chain setting as a (chains,) float array: a number (every chain) or one value per chain,
    each finite and in [low, high]. Raises ValueError naming the field, value and what is allowed."""
    bounds = f">= {low}" + ("" if high is None else f" and <= {high}")
    allowed = f"a number or {chains} numbers (one per chain), finite and {bounds}"
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise invalid(name, value, allowed) from None
    if isinstance(value, (bool, str)) or array.ndim > 1 or (array.ndim == 1 and array.shape != (chains,)):
        raise invalid(name, value, allowed)
    array = np.broadcast_to(array, (chains,))
    if not np.all(np.isfinite(array)) or np.any(array < low) or (high is not None and np.any(array > high)):
        raise invalid(name, value, allowed)
    return array.astype(np.float32)


def temperatures(schedule: str, initial: Any, steps: int, decay: Any = 0.95) -> np.ndarray:
    """(chains, steps) temperature of each step: 'exponential' T0 * decay^k, 'linear' T0 * (1 - k / steps)."""
    check_choice("schedule", schedule, SCHEDULES)
    check_int("steps", steps, 1)
    initial = np.atleast_1d(np.asarray(initial, np.float32))
    k = np.arange(steps, dtype=np.float32)
    if schedule == "linear":
        return initial[:, None] * (1.0 - k / steps)[None, :]
    decay = np.broadcast_to(np.asarray(decay, np.float32), initial.shape)
    return initial[:, None] * decay[:, None] ** k[None, :]


def accept(delta: jax.Array, temperature: jax.Array, uniform: jax.Array) -> jax.Array:
    """The Metropolis rule: accept when the energy change `delta` <= 0, or when `uniform` (a draw
    from U[0, 1)) < exp(-delta / T); never uphill at T <= 0, never a NaN energy."""
    safe = jnp.where(temperature > 0, temperature, 1.0)
    uphill = (temperature > 0) & (uniform < jnp.exp(-jnp.maximum(delta, 0.0) / safe))
    return jnp.isfinite(delta) & ((delta <= 0) | uphill)


@dataclasses.dataclass
class AnnealResult:
    """Per chain: `energy (C, steps + 1)` the current energy after each step (start first),
    `proposed (C, steps)` each proposal's energy, `accepted (C, steps)`, `temperature (C, steps)`,
    `params` the final weights (leaves (C, ...)), `best_params` / `best_energy` the lowest-energy
    weights each chain visited, `model_state` (the transferred non-parameter collections)."""

    params: Any
    model_state: dict
    energy: np.ndarray
    proposed: np.ndarray
    accepted: np.ndarray
    temperature: np.ndarray
    best_params: Any
    best_energy: np.ndarray

    def acceptance_rate(self) -> np.ndarray:
        return self.accepted.mean(axis=1)


def start_weights(config: TrainConfig, source: Any, task: Any, transfer: Mapping[str, Any]) -> dict:
    """The target model's variables (fresh init from `config.seed`) with the source transferred in."""
    example = jnp.asarray(task.train.x[:2], jnp.float32)
    fresh = jax.jit(task.model.init)(jax.random.key(config.seed), example)
    fresh = {k: v for k, v in jax.tree.map(np.asarray, fresh).items() if k != "dropout"}
    merged, _ = transfer_params(as_variables(source), fresh, **dict(transfer))
    return merged


def energy_fn(task: Any, kind: str, data: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]):
    """`energy(params, model_state)`: sum of weight x (mean loss or error) over the (x, y) splits."""
    hp = task.default_hparams
    splits = [(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)) for x, y in data]

    def energy(params, model_state):
        total = 0.0
        for (x, y), weight in zip(splits, weights):
            outputs, _ = apply_model(task, params, model_state, hp, x, train=False)
            value = (per_example_loss(task, hp, outputs, y).mean() if kind == "loss"
                     else 1.0 - jnp.mean(jnp.argmax(outputs, -1) == y))
            total = total + weight * value
        return total

    return energy


def chain_program(task: Any, energy, model_state: dict, batch_size: int):
    """`run(params, key, temperatures (steps,), step_size) -> records` for one chain (vmapped by `anneal`)."""
    hp = task.default_hparams
    x_train, y_train = jnp.asarray(task.train.x, jnp.float32), jnp.asarray(task.train.y, jnp.int32)
    size = min(batch_size, x_train.shape[0])

    def train_loss(params, index):
        outputs, _ = apply_model(task, params, model_state, hp, x_train[index], train=False)
        return per_example_loss(task, hp, outputs, y_train[index]).mean()

    def step(carry, temperature_and_key):
        params, current, best, best_energy, step_size = carry
        temperature, key = temperature_and_key
        batch_key, noise_key, accept_key = jax.random.split(key, 3)
        index = jax.random.choice(batch_key, x_train.shape[0], (size,), replace=False)
        grads = jax.grad(train_loss)(params, index)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(noise_key, len(leaves))
        scale = jnp.sqrt(2.0 * step_size * temperature)
        proposal = jax.tree.unflatten(treedef, [
            leaf - step_size * g + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
            for leaf, g, k in zip(leaves, jax.tree.leaves(grads), keys)])
        proposed = energy(proposal, model_state)
        accepted = accept(proposed - current, temperature, jax.random.uniform(accept_key))
        params = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), proposal, params)
        current = jnp.where(accepted, proposed, current)
        improved = current < best_energy
        best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, best)
        best_energy = jnp.where(improved, current, best_energy)
        return (params, current, best, best_energy, step_size), (current, proposed, accepted)

    def run(params, key, schedule, step_size):
        start = energy(params, model_state)
        keys = jax.random.split(key, schedule.shape[0])
        (params, _, best, best_energy, _), (energies, proposed, accepted) = jax.lax.scan(
            step, (params, start, params, start, step_size), (schedule, keys))
        return params, best, best_energy, jnp.concatenate([start[None], energies]), proposed, accepted

    return run


def anneal(config: TrainConfig, source: Any, chains: int = 4, *, steps: int = 50, temperature: Any = 0.01,
           step_size: Any = 1e-2, schedule: str = "exponential", decay: Any = 0.95, energy: str = "loss",
           source_data: tuple[Any, Any] | None = None, source_weight: float = 0.0, skip: Sequence[str] = (),
           new_head: bool = True, head: str | None = None) -> AnnealResult:
    """Run `chains` simulated-annealing chains over the transferred weights for `steps` steps, all
    chains in one compiled program. `temperature` (T0), `step_size` and `decay`: a number or one
    value per chain. `schedule`: 'exponential' or 'linear' cooling. `energy`: 'loss' or 'error' of
    the target's eval split, plus `source_weight` x the same on `source_data=(x, y)` (source-domain
    examples, the target's classes). Minibatches of `config.batch_size` from the train split; chain
    c draws from `jax.random.fold_in(key(config.seed), c)`. Every input is checked before compiling."""
    check_int("chains", chains, 1)
    check_int("steps", steps, 1)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("energy", energy, ENERGIES)
    initial = per_chain("temperature", temperature, chains)
    steps_size = per_chain("step_size", step_size, chains)
    decays = per_chain("decay", decay, chains, 0.0, 1.0)
    check_number("source_weight", source_weight, 0.0)
    if source_weight and source_data is None:
        raise invalid("source_weight", source_weight, "0 unless source_data=(x, y) is given")
    task = bucket_task(config)
    if source_data is not None:
        xs, ys = np.asarray(source_data[0]), np.asarray(source_data[1])
        if xs.shape[1:] != tuple(task.train.x.shape[1:]) or ys.shape != (xs.shape[0],):
            raise invalid("source_data", f"x {xs.shape}, y {ys.shape}",
                          f"(x, y) with x of shape (n, {', '.join(map(str, task.train.x.shape[1:]))}) and y (n,)")
    variables = start_weights(config, source, task, {"skip": tuple(skip), "new_head": new_head, "head": head})
    params, model_state = variables[COLLECTIONS_KEY], {k: v for k, v in variables.items() if k != COLLECTIONS_KEY}
    data, weights = [(task.eval.x, task.eval.y)], [1.0]
    if source_data is not None and source_weight:
        data, weights = data + [source_data], weights + [float(source_weight)]
    run = chain_program(task, energy_fn(task, energy, data, weights), model_state, config.batch_size)
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(config.seed), c))(jnp.arange(chains))
    schedules = temperatures(schedule, initial, steps, decays)
    stacked = jax.tree.map(lambda leaf: jnp.broadcast_to(jnp.asarray(leaf), (chains, *np.shape(leaf))), params)
    final, best, best_energy, energies, proposed, accepted = jax.jit(jax.vmap(run))(
        stacked, keys, jnp.asarray(schedules), jnp.asarray(steps_size))
    as_numpy = lambda tree: jax.tree.map(np.asarray, tree)
    return AnnealResult(params=as_numpy(final), model_state=model_state, energy=np.asarray(energies),
                        proposed=np.asarray(proposed), accepted=np.asarray(accepted), temperature=schedules,
                        best_params=as_numpy(best), best_energy=np.asarray(best_energy))
