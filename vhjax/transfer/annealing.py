"""Simulated annealing over transferred weights: parallel chains as the members of one population program.

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
`eval` split's loss (or error) + `source_weight` x the same on `source_data` (every example of
each, or with `energy_batch=n` a fixed random subset of n of each, drawn once). The temperature
cools per chain: 'exponential' T_k = T0 * decay^k, 'linear' T_k = T0 * (1 - k / steps).

The chains are the members of one `fit_population` bucket (one compiled program): `anneal`
gives the bucket its own `PopulationRunner` whose member step is the annealing step above
(`fit_population(program=...)`), and each member's state is an `AnnealState` (its `TrainState`
plus its current and best energy, best weights and the per-step records). Chain c is member c
(seed `config.seed + c`: its own data order and, where the head is fresh, its own head).
With `workdir=`, the engine checkpoints the chains' states (current and best weights and energies,
step, records of energies and acceptances, per-chain keys) every `config.eval_every` steps: a rerun
resumes with the same chains as an uninterrupted run, a finished one is restored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import parallel, privacy
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.models.utils import abstract_variables
from vhjax.population.engine import PopulationRunner
from vhjax.population.fit import BucketProgram, PopulationResult, bucket_task, fit_population
from vhjax.population.members import classifier_runner, mesh_layout
from vhjax.train.state import TrainState
from vhjax.train.step import apply_model, per_example_loss
from vhjax.train.workdir import content_digest, record_inputs
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


@flax.struct.dataclass
class AnnealState(TrainState):
    """A chain: its `TrainState` (params = the current weights; `hparams` with its `sa_temperature`,
    `sa_step_size`, `sa_decay`) plus its current `energy`, its lowest-energy weights and energy, and
    its records: `trace (steps + 1,)` the energy after each step (start first), `proposed (steps,)`,
    `accepted (steps,)`."""

    energy: Any = None
    best_params: Any = None
    best_energy: Any = None
    trace: Any = None
    proposed: Any = None
    accepted: Any = None


@dataclasses.dataclass
class AnnealResult:
    """Per chain: `energy (C, steps + 1)` the current energy after each step (start first),
    `proposed (C, steps)` each proposal's energy, `accepted (C, steps)`, `temperature (C, steps)`,
    `params` the final weights (leaves (C, ...)), `best_params` / `best_energy` the lowest-energy
    weights each chain visited, `model_state` (the transferred non-parameter collections, which
    the energies used; leaves (C, ...)) and
    `population` (the `fit_population` result: records, the eval metrics of the final weights)."""

    params: Any
    model_state: dict
    energy: np.ndarray
    proposed: np.ndarray
    accepted: np.ndarray
    temperature: np.ndarray
    best_params: Any
    best_energy: np.ndarray
    population: PopulationResult | None = None

    def acceptance_rate(self) -> np.ndarray:
        return self.accepted.mean(axis=1)


def start_weights(source: Any, population: Any, transfer: Mapping[str, Any]) -> Any:
    """The population with the source transferred into every member (each keeps its own fresh head)."""
    members = population.members
    target = {COLLECTIONS_KEY: members.params, **dict(members.model_state or {})}
    merged, _ = transfer_params(as_variables(source), target, member_axis=True, **dict(transfer))
    params = jax.tree.map(jnp.asarray, merged.pop(COLLECTIONS_KEY))
    model_state = jax.tree.map(jnp.asarray, merged) if members.model_state else members.model_state
    return population.replace(members=members.replace(params=params, model_state=model_state))


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


def energy_subset(size: int, energy_batch: int | None, seed: int) -> np.ndarray:
    """The examples (indices, sorted) of a split of `size` that the energy reads: all of them when
    `energy_batch` is None or >= size, else a fixed random subset of `energy_batch` drawn once from `seed`."""
    if energy_batch is None or energy_batch >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, energy_batch, replace=False))


def energy_splits(splits: Sequence[tuple[Any, Any]], energy_batch: int | None, seed: int) -> list[tuple[Any, Any]]:
    """Each (x, y) split cut to its `energy_subset` (split i's drawn from seed `seed + i`)."""
    out = []
    for index, (x, y) in enumerate(splits):
        take = energy_subset(len(x), energy_batch, seed + index)
        out.append((np.asarray(x)[take], np.asarray(y)[take]))
    return out


def temperature_at(schedule: str, steps: int, hparams: Mapping[str, jax.Array], step: jax.Array) -> jax.Array:
    """A chain's temperature at `step` (traced): `temperatures` for one chain."""
    initial = hparams["sa_temperature"]
    if schedule == "linear":
        return initial * (1.0 - step / steps)
    return initial * hparams["sa_decay"] ** step


def anneal_step(task: Any, energy, schedule: str, steps: int):
    """The member step of a chain on a minibatch (x, y): propose, evaluate, accept or reject, record."""
    hp_default = task.default_hparams

    def step(state: AnnealState, batch) -> tuple[AnnealState, dict]:
        x, y = batch[0], batch[1]
        hp = state.hparams
        k = state.step
        temperature = temperature_at(schedule, steps, hp, k)
        step_size = hp["sa_step_size"]
        noise_key, accept_key = jax.random.split(jax.random.fold_in(state.key, k))

        def train_loss(params):
            outputs, _ = apply_model(task, params, state.model_state, hp_default, x, train=False)
            return per_example_loss(task, hp_default, outputs, y).mean()

        grads = jax.grad(train_loss)(state.params)
        leaves, treedef = jax.tree.flatten(state.params)
        keys = jax.random.split(noise_key, len(leaves))
        scale = jnp.sqrt(2.0 * step_size * temperature)
        proposal = jax.tree.unflatten(treedef, [
            leaf - step_size * g + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
            for leaf, g, key in zip(leaves, jax.tree.leaves(grads), keys)])
        proposed = energy(proposal, state.model_state)
        accepted = accept(proposed - state.energy, temperature, jax.random.uniform(accept_key))
        params = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), proposal, state.params)
        current = jnp.where(accepted, proposed, state.energy)
        improved = current < state.best_energy
        new_state = state.replace(
            step=k + 1, params=params, energy=current,
            best_params=jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, state.best_params),
            best_energy=jnp.where(improved, current, state.best_energy),
            trace=state.trace.at[k + 1].set(current), proposed=state.proposed.at[k].set(proposed),
            accepted=state.accepted.at[k].set(accepted))
        return new_state, {"loss": current, "energy": current, "accepted": accepted.astype(jnp.float32),
                           "temperature": temperature}

    return step


def anneal_runner(task: Any, energy, schedule: str, steps: int, size: int, mesh: Any = None) -> PopulationRunner:
    """The engine's chunk runner of `size` annealing chains on `mesh` (None: one device;
    `classifier_runner`: the task model's compile options)."""
    return classifier_runner(task, member_step=anneal_step(task, energy, schedule, steps), **mesh_layout(mesh, size))


def with_anneal_state(population: Any, energy, steps: int, settings: Mapping[str, np.ndarray]) -> Any:
    """The population's members as `AnnealState`s: their start energy, empty records, settings in hparams."""
    members = population.members
    start = light_jit(jax.vmap(energy), run_once=True)(members.params, members.model_state)
    size = population.size
    fields = {f.name: getattr(members, f.name) for f in dataclasses.fields(TrainState)}
    fields["hparams"] = {**members.hparams, **{name: jnp.asarray(v, jnp.float32) for name, v in settings.items()}}
    trace = jnp.zeros((size, steps + 1), jnp.float32).at[:, 0].set(start)
    return population.replace(members=AnnealState(
        **fields, energy=start, best_params=members.params, best_energy=start, trace=trace,
        proposed=jnp.zeros((size, steps), jnp.float32), accepted=jnp.zeros((size, steps), bool)))


def anneal(config: TrainConfig, source: Any, chains: int = 4, *, steps: int = 50, temperature: Any = 0.01,
           step_size: Any = 1e-2, schedule: str = "exponential", decay: Any = 0.95, energy: str = "loss",
           source_data: tuple[Any, Any] | None = None, source_weight: float = 0.0, skip: Sequence[str] = (),
           new_head: bool = True, head: str | None = None, energy_batch: int | None = None,
           workdir: str | Path | None = None, verbose: bool = False, mesh: Any = "auto") -> AnnealResult:
    """Run `chains` simulated-annealing chains over the transferred weights for `steps` steps, the
    chains the members of one `fit_population` bucket (one compiled program). `temperature` (T0),
    `step_size` and `decay`: a number or one value per chain. `schedule`: 'exponential' or 'linear'
    cooling. `energy`: 'loss' or 'error' of the target's eval split, plus `source_weight` x the
    same on `source_data=(x, y)` (source-domain examples, the target's classes). Minibatches of
    `config.batch_size` from the train split, chain c's data order and noise from seed
    `config.seed + c`. `energy_batch`: None (default) evaluates the energy on every example of each
    split, every step; n: on a fixed random subset of at most n examples of each (drawn once from
    `config.seed`, `energy_subset`), n / size of the cost per step, the same subset throughout so the
    Metropolis rule compares like with like. `workdir`: as `fit_population`'s (a checkpoint of every
    chain's state after each `config.eval_every` steps; a rerun resumes exactly, a finished run is
    restored), with what config.json and members.json do not hold (a digest of the source's and of
    `source_data`'s contents, the per-chain settings, schedule, energy, steps, energy_batch, transfer
    options) recorded in `workdir/anneal.json`: other ones are refused by name. `mesh`: as
    `fit_population`'s (default 'auto': chains sharded over the local devices). Every input is
    checked before anything compiles."""
    check_int("chains", chains, 1)
    privacy.refuse_own_step(config, "simulated annealing (anneal)")
    check_int("steps", steps, 1)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("energy", energy, ENERGIES)
    settings = {"sa_temperature": per_chain("temperature", temperature, chains),
                "sa_step_size": per_chain("step_size", step_size, chains),
                "sa_decay": per_chain("decay", decay, chains, 0.0, 1.0)}
    check_number("source_weight", source_weight, 0.0)
    if source_weight and source_data is None:
        raise invalid("source_weight", source_weight, "0 unless source_data=(x, y) is given")
    if energy_batch is not None:
        check_int("energy_batch", energy_batch, 1)
    config = dataclasses.replace(config, steps=steps, eval_every=min(config.eval_every, steps))
    task = bucket_task(config)
    if source_data is not None:
        xs, ys = np.asarray(source_data[0]), np.asarray(source_data[1])
        if xs.shape[1:] != tuple(task.train.x.shape[1:]) or ys.shape != (xs.shape[0],):
            raise invalid("source_data", f"x {xs.shape}, y {ys.shape}",
                          f"(x, y) with x of shape (n, {', '.join(map(str, task.train.x.shape[1:]))}) and y (n,)")
    source = as_variables(source)
    transfer = {"skip": tuple(skip), "new_head": new_head, "head": head}
    shapes = abstract_variables(task.model, (2, *task.train.x.shape[1:]))  # shapes only, before compiling
    transfer_params(source, {k: v for k, v in shapes.items() if k != "dropout"}, **transfer)
    data, weights = [(task.eval.x, task.eval.y)], [1.0]
    if source_data is not None and source_weight:
        data, weights = data + [source_data], weights + [float(source_weight)]
    energy_of = energy_fn(task, energy, energy_splits(data, energy_batch, config.seed), weights)
    record_inputs(workdir, "anneal", {
        "source": content_digest(source), "source_data": None if source_data is None else content_digest(
            tuple(np.asarray(a) for a in source_data)), "source_weight": float(source_weight),
        "steps": steps, "schedule": schedule, "energy": energy, "energy_batch": energy_batch,
        **{name: settings[key].tolist() for name, key in (("temperature", "sa_temperature"),
                                                           ("step_size", "sa_step_size"), ("decay", "sa_decay"))},
        "transfer": {"skip": list(skip), "new_head": new_head, "head": head}})
    mesh = parallel.resolve_mesh(mesh, chains)
    kept: dict[str, Any] = {}  # the transferred collections the energies used (fit_population returns
    # BatchNorm statistics recomputed by its precise-BN step)

    def program(bucket: Any, population: Any, indices: list[int]) -> BucketProgram:
        kept["model_state"] = dict(population.members.model_state or {})
        population = with_anneal_state(population, energy_of, steps, {k: v[indices] for k, v in settings.items()})
        runner = anneal_runner(bucket, energy_of, schedule, steps, len(indices), mesh)
        extras = [{"temperature": float(settings["sa_temperature"][i]), "step_size": float(settings["sa_step_size"][i]),
                   "decay": float(settings["sa_decay"][i])} for i in indices]
        return BucketProgram(population, runner=runner, extras=extras)

    result = fit_population(config, [{"seed": config.seed + c} for c in range(chains)], workdir, same_batches=False,
                            mesh=mesh, verbose=verbose, start=lambda _, population: start_weights(source, population,
                                                                                               transfer),
                            program=program)
    states = result.states[0].members
    order = np.array([record["position"] for record in result.members])
    take = lambda tree: jax.tree.map(lambda leaf: np.asarray(leaf)[order], tree)
    return AnnealResult(params=take(states.params), model_state=take(kept["model_state"]),
                        energy=take(states.trace), proposed=take(states.proposed), accepted=take(states.accepted),
                        temperature=temperatures(schedule, settings["sa_temperature"], steps, settings["sa_decay"]),
                        best_params=take(states.best_params), best_energy=take(states.best_energy),
                        population=result)
