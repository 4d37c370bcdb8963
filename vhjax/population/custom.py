"""Populations of any model with any loss: autoencoders, VAEs, seq2seq, graph networks, ...

`fit_population` trains classifiers from a `TrainConfig`. Models with other inputs or objectives
train here from two functions written for ONE member:

    init_fn(key) -> params
    loss_fn(params, batch, key, hparams) -> scalar loss

The step (value_and_grad, optimizer update, divergence isolation) is vmapped over members and
scan-compiled over steps; every optimizer hyperparameter and every entry of `hparams` (e.g. a
KL weight beta, a dropout rate) is a per-member array.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import optim
from vhjax.population.engine import all_finite, keep_where


@flax.struct.dataclass
class CustomPopulation:
    """P members: parameters, optimizer state, per-member hyperparameters and keys, divergence flags."""

    params: Any
    opt_state: Any
    hparams: dict[str, jax.Array]
    key: jax.Array
    step: jax.Array
    alive: jax.Array
    diverged_step: jax.Array

    @property
    def size(self) -> int:
        return int(self.alive.shape[0])


def _per_member(name: str, value: Any, size: int) -> jax.Array:
    array = jnp.asarray(value, jnp.float32)
    if array.ndim == 0:
        return jnp.full((size,), array)
    if array.shape[0] != size:
        raise ValueError(f"hyperparameter {name!r} has shape {array.shape}; expected ({size},) or a scalar")
    if not np.all(np.isfinite(np.asarray(array))):
        raise ValueError(f"hyperparameter {name!r} has non-finite values {np.asarray(array).tolist()}")
    return array


def init_custom_population(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                           key: jax.Array, size: int, hparams: Mapping[str, Any] | None = None,
                           optimizer_hparams: Mapping[str, Any] | None = None) -> CustomPopulation:
    """`size` members initialised by `init_fn` with their own keys; `optimizer_hparams` (e.g.
    learning_rate) go into the optimizer state of an optimizer from `vhjax.optim.make_optimizer`."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"population size {size!r}; allowed: a positive integer")
    init_keys, member_keys = jax.random.split(key)
    params = jax.vmap(init_fn)(jax.random.split(init_keys, size))
    opt_state = jax.vmap(optimizer.init)(params)
    if optimizer_hparams:
        known = optim.get_hyperparams(opt_state)
        unknown = sorted(set(optimizer_hparams) - set(known))
        if unknown:
            raise ValueError(f"unknown optimizer hyperparameter(s) {unknown}; known: {sorted(known)}")
        opt_state = optim.set_hyperparams(opt_state, **{k: _per_member(k, v, size) for k, v in optimizer_hparams.items()})
    values = {k: _per_member(k, v, size) for k, v in (hparams or {}).items()}
    return CustomPopulation(params, opt_state, values, jax.random.split(member_keys, size),
                            jnp.zeros(size, jnp.int32), jnp.ones(size, bool), jnp.full(size, -1, jnp.int32))


def make_custom_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                     isolate: bool = True) -> Callable:
    """`step(population, batch) -> (population, loss (P,))`; all members see the same batch.

    A member whose loss or parameters become non-finite keeps its last finite state and is flagged
    (with `isolate=False` nothing is checked: `fit_custom` runs that first, see there).
    """

    def member_step(params, opt_state, hparams, key, step, alive, diverged_step, batch):
        step_key = jax.random.fold_in(key, step)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, step_key, hparams)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if not isolate:
            return new_params, new_opt_state, alive, diverged_step, loss
        finite = jnp.isfinite(loss) & all_finite(new_params)
        ok = alive & finite
        return (keep_where(ok, new_params, params), keep_where(ok, new_opt_state, opt_state), ok,
                jnp.where(alive & ~finite, step + 1, diverged_step), jnp.where(alive, loss, jnp.nan))

    vmapped = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, 0, 0, None))

    def step(population: CustomPopulation, batch: Any) -> tuple[CustomPopulation, jax.Array]:
        params, opt_state, alive, diverged, loss = vmapped(
            population.params, population.opt_state, population.hparams, population.key, population.step,
            population.alive, population.diverged_step, batch)
        return population.replace(params=params, opt_state=opt_state, alive=alive, diverged_step=diverged,
                                  step=population.step + 1), loss

    return step


def fit_custom(population: CustomPopulation, loss_fn: Callable, optimizer: optax.GradientTransformation,
               batches: Any, steps: int) -> tuple[CustomPopulation, np.ndarray]:
    """Train for `steps` steps under one `lax.scan`; `batches` is a pytree of arrays with a leading
    step axis of length `steps` (e.g. (steps, B, ...) inputs). Returns the population and the (steps, P) losses."""
    leading = {np.shape(leaf)[0] for leaf in jax.tree.leaves(batches)}
    if leading != {steps}:
        raise ValueError(f"batches need a leading axis of length steps={steps}; got leading sizes {sorted(leading)}")
    # Optimistic isolation (as population.runner): train without per-step checks; if a live member
    # ended non-finite, train again from the start with the per-step isolated step.
    end, losses = scan_program(loss_fn, optimizer, False)(population, batches)
    finite = jnp.all(jnp.isfinite(losses), axis=0) & jax.vmap(all_finite)(end.params)
    if bool(jnp.any(population.alive & ~finite)):
        end, losses = scan_program(loss_fn, optimizer, True)(population, batches)
    else:  # members frozen before this call keep their state
        end = end.replace(params=keep_where(population.alive, end.params, population.params),
                          opt_state=keep_where(population.alive, end.opt_state, population.opt_state))
    losses = jnp.where(population.alive, losses, jnp.nan)
    return end, np.asarray(losses)


def scan_program(loss_fn: Callable, optimizer: optax.GradientTransformation, isolate: bool) -> Callable:
    """The jitted scan of the step, built once per (loss, optimizer, isolate) so repeated
    `fit_custom` calls do not compile again."""
    try:
        return _cached_scan_program(loss_fn, optimizer, isolate)
    except TypeError:  # an unhashable loss function: build it for this call only
        return _cached_scan_program.__wrapped__(loss_fn, optimizer, isolate)


@functools.lru_cache(maxsize=16)
def _cached_scan_program(loss_fn: Callable, optimizer: optax.GradientTransformation, isolate: bool) -> Callable:
    return jax.jit(lambda p, b: jax.lax.scan(make_custom_step(loss_fn, optimizer, isolate=isolate), p, b))
