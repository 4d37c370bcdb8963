"""Bayesian optimization with a Gaussian process, written in JAX (jittable and vmappable).

- History: a fixed buffer of `max_history` told candidates (when full, a new one replaces
  the worst), so the state has a fixed shape. Failed trials are kept with the worst
  observed value (the GP learns that the region is bad).
- Model: GP with a Matern-5/2 (or RBF) kernel with one lengthscale per column, an amplitude
  and a noise level, on standardized fitness. Hyperparameters maximize the log marginal
  likelihood (weak log-normal priors keep them sane with few points): the better of the
  previous ask's values and a few isotropic starts, then `fit_steps` Adam steps.
  Categorical columns enter the kernel at the centre of their category.
- Acquisition: expected improvement (minimization) over `num_candidates` uniform points plus
  Gaussian perturbations of the best observed points; the `refine_top` best are refined by
  `refine_steps` Adam steps on EI, and the best one is proposed.
- Batches (`n > 1`): constant liar: each proposal joins the data with the current minimum as
  its (fake) value before the next one is chosen (Ginsbourger et al. 2010).
- The first `num_initial` candidates are uniform random.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import optax
from flax import struct

from vhjax.search.strategies.base import (Strategy, categorical_info, check_ask_size, check_choice, check_number,
                                          check_positive_int, failed_as_worst, make, register_strategy,
                                          snap_categorical)

KERNELS = ("matern52", "rbf")
_LOG_LENGTHSCALE_BOUNDS = (math.log(0.01), math.log(20.0))
_LOG_NOISE_BOUNDS = (math.log(1e-6), math.log(1.0))
_LOG_AMPLITUDE_BOUNDS = (math.log(0.05), math.log(20.0))
_JITTER = 1e-6


@struct.dataclass
class GPHyper:
    log_lengthscale: jax.Array  # (D,)
    log_amplitude: jax.Array
    log_noise: jax.Array


@struct.dataclass
class BayesOptState:
    x: jax.Array  # (C, D) told candidates
    y: jax.Array  # (C,) their fitness (+inf: failed or empty)
    active: jax.Array  # (C,) bool
    told: jax.Array
    hyper: GPHyper  # last fitted hyperparameters (warm start)


# ----------------------------------------------------------------------------- GP


def kernel_matrix(a: jax.Array, b: jax.Array, hyper: GPHyper, kind: str) -> jax.Array:
    """`(n, m)` covariance between rows of `a` and `b`."""
    scale = jnp.exp(hyper.log_lengthscale)
    diff = a[:, None, :] / scale - b[None, :, :] / scale
    sq = jnp.sum(diff**2, axis=-1)
    amplitude = jnp.exp(hyper.log_amplitude)
    if kind == "rbf":
        return amplitude * jnp.exp(-0.5 * sq)
    r = jnp.sqrt(sq + 1e-12)
    s5 = math.sqrt(5.0)
    return amplitude * (1.0 + s5 * r + 5.0 / 3.0 * sq) * jnp.exp(-s5 * r)


def _masked_cholesky(x, active, hyper, kind):
    """Cholesky of the covariance of active points; inactive rows become an identity block."""
    mask = active.astype(jnp.float32)
    k = kernel_matrix(x, x, hyper, kind) * mask[:, None] * mask[None, :]
    diagonal = mask * (jnp.exp(hyper.log_noise) + _JITTER) + (1.0 - mask)
    return jnp.linalg.cholesky(k + jnp.diag(diagonal))


def negative_log_marginal_likelihood(hyper: GPHyper, x, y, active, kind: str) -> jax.Array:
    """`-log p(y | x, hyper)` over active points, plus weak log-normal priors."""
    chol = _masked_cholesky(x, active, hyper, kind)
    y = jnp.where(active, y, 0.0)
    alpha = jsp.linalg.cho_solve((chol, True), y)
    count = jnp.sum(active)
    nll = 0.5 * y @ alpha + jnp.sum(jnp.log(jnp.diag(chol))) + 0.5 * count * math.log(2 * math.pi)
    prior = (0.5 * jnp.sum((hyper.log_lengthscale - math.log(0.5)) ** 2) / 1.5**2
             + 0.5 * hyper.log_amplitude**2 / 1.5**2
             + 0.5 * (hyper.log_noise - math.log(1e-3)) ** 2 / 3.0**2)
    return nll + prior


def _clip_hyper(hyper: GPHyper) -> GPHyper:
    return GPHyper(jnp.clip(hyper.log_lengthscale, *_LOG_LENGTHSCALE_BOUNDS),
                   jnp.clip(hyper.log_amplitude, *_LOG_AMPLITUDE_BOUNDS),
                   jnp.clip(hyper.log_noise, *_LOG_NOISE_BOUNDS))


def fit_hyperparameters(start: GPHyper, x, y, active, kind: str, steps: int,
                        learning_rate: float = 0.05) -> GPHyper:
    """Best of `start` and isotropic starts, then `steps` Adam steps on the NLML."""
    dim = x.shape[1]
    starts = [start] + [GPHyper(jnp.full((dim,), math.log(ls), jnp.float32), jnp.float32(0.0),
                                jnp.float32(math.log(1e-3))) for ls in (0.1, 0.3, 1.0)]
    losses = jnp.stack([negative_log_marginal_likelihood(h, x, y, active, kind) for h in starts])
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    chosen = jnp.argmin(losses)
    hyper = jax.tree.map(lambda *leaves: jnp.stack(leaves)[chosen], *starts)
    optimizer = optax.adam(learning_rate)
    loss_grad = jax.value_and_grad(negative_log_marginal_likelihood)

    def step(carry, _):
        hyper, opt_state = carry
        loss, grads = loss_grad(hyper, x, y, active, kind)
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
        updates, opt_state = optimizer.update(grads, opt_state, hyper)
        return (_clip_hyper(optax.apply_updates(hyper, updates)), opt_state), loss

    (hyper, _), _ = jax.lax.scan(step, (hyper, optimizer.init(hyper)), None, length=steps)
    return hyper


def posterior(x_query, x, y, active, hyper: GPHyper, kind: str):
    """Posterior mean and standard deviation `(m,)` at `x_query (m, D)`."""
    chol = _masked_cholesky(x, active, hyper, kind)
    mask = active.astype(jnp.float32)
    alpha = jsp.linalg.cho_solve((chol, True), jnp.where(active, y, 0.0))
    k_star = kernel_matrix(x_query, x, hyper, kind) * mask[None, :]
    mean = k_star @ alpha
    v = jsp.linalg.solve_triangular(chol, k_star.T, lower=True)
    variance = jnp.exp(hyper.log_amplitude) - jnp.sum(v**2, axis=0)
    return mean, jnp.sqrt(jnp.maximum(variance, 1e-12))


def expected_improvement(mean, std, incumbent, xi: float = 0.0):
    """EI for minimization: `E[max(incumbent - xi - f, 0)]`."""
    improvement = incumbent - xi - mean
    z = improvement / std
    return improvement * jax.scipy.stats.norm.cdf(z) + std * jax.scipy.stats.norm.pdf(z)


# ----------------------------------------------------------------------------- strategy


def _standardize(y, active):
    """Failed -> worst observed, then zero mean / unit variance over active points."""
    y = failed_as_worst(jnp.where(active, y, jnp.nan), jnp.where(active, y, jnp.nan))
    count = jnp.maximum(jnp.sum(active), 1)
    mean = jnp.sum(jnp.where(active, y, 0.0)) / count
    std = jnp.sqrt(jnp.sum(jnp.where(active, (y - mean) ** 2, 0.0)) / count)
    return jnp.where(active, (y - mean) / jnp.maximum(std, 1e-9), 0.0)


@register_strategy("bayesopt")
def bayesian_optimization(space: Any, *, kernel: str = "matern52", num_initial: int | None = None,
                          max_history: int = 128, num_candidates: int = 512, num_local: int = 256,
                          refine_top: int = 4, refine_steps: int = 20, fit_steps: int = 30,
                          xi: float = 0.0) -> Strategy:
    """GP-BO with expected improvement; `num_initial` defaults to `max(5, D + 1)` random points."""
    _, cards = categorical_info(space)
    dim = cards.shape[0]
    check_choice("kernel", kernel, KERNELS)
    initial = check_positive_int("num_initial", max(5, dim + 1) if num_initial is None else num_initial)
    capacity = check_positive_int("max_history", max_history, minimum=2)
    n_random = check_positive_int("num_candidates", num_candidates)
    n_local = check_positive_int("num_local", num_local, minimum=0)
    top = check_positive_int("refine_top", refine_top)
    if top > n_random + n_local:
        raise ValueError(f"refine_top must be <= num_candidates + num_local; got {refine_top!r}")
    refine = check_positive_int("refine_steps", refine_steps, minimum=0)
    fit = check_positive_int("fit_steps", fit_steps, minimum=0)
    xi = check_number("xi", xi, 0.0)
    snap = lambda u: snap_categorical(u, cards)  # noqa: E731

    def init(key: jax.Array) -> BayesOptState:
        del key
        hyper = GPHyper(jnp.full((dim,), math.log(0.3), jnp.float32), jnp.float32(0.0),
                        jnp.float32(math.log(1e-3)))
        return BayesOptState(x=jnp.full((capacity, dim), 0.5, jnp.float32),
                             y=jnp.full((capacity,), jnp.inf, jnp.float32),
                             active=jnp.zeros((capacity,), bool), told=jnp.asarray(0, jnp.int32),
                             hyper=hyper)

    def propose(key, x, y, active, hyper):
        """One EI maximizer given (standardized) data."""
        k_rand, k_pick, k_local, k_scale = jax.random.split(key, 4)
        incumbent = jnp.min(jnp.where(active, y, jnp.inf))
        candidates = [jax.random.uniform(k_rand, (n_random, dim))]
        if n_local:
            ranked = jnp.argsort(jnp.where(active, y, jnp.inf))[:5]
            centres = x[ranked[jax.random.randint(k_pick, (n_local,), 0, jnp.minimum(jnp.sum(active), 5))]]
            scale = jnp.where(jax.random.bernoulli(k_scale, 0.5, (n_local, 1)), 0.02, 0.1)
            candidates.append(centres + scale * jax.random.normal(k_local, (n_local, dim)))
        candidates = snap(jnp.concatenate(candidates))

        def acquisition(u):
            mean, std = posterior(snap(u), x, y, active, hyper, kernel)
            return expected_improvement(mean, std, incumbent, xi)

        scores = acquisition(candidates)
        start = candidates[jnp.argsort(-scores)[:top]]
        optimizer = optax.adam(0.01)

        def ascend(carry, _):
            u, opt_state = carry
            grads = jax.grad(lambda v: -jnp.sum(acquisition(v)))(u)
            grads = jnp.where(jnp.isfinite(grads), grads, 0.0)
            updates, opt_state = optimizer.update(grads, opt_state, u)
            return (jnp.clip(optax.apply_updates(u, updates), 0.0, 1.0), opt_state), None

        (refined, _), _ = jax.lax.scan(ascend, (start, optimizer.init(start)), None, length=refine)
        pool = jnp.concatenate([start, snap(refined)])
        pool_scores = acquisition(pool)
        pool_scores = jnp.where(jnp.isfinite(pool_scores), pool_scores, -jnp.inf)
        return pool[jnp.argmax(pool_scores)]

    def ask(state: BayesOptState, key: jax.Array, n: int):
        n = check_ask_size(n)
        k_random, k_propose = jax.random.split(key)
        x_data = snap(state.x)
        y_data = _standardize(state.y, state.active)
        hyper = fit_hyperparameters(state.hyper, x_data, y_data, state.active, kernel, fit)
        lie = jnp.min(jnp.where(state.active, y_data, jnp.inf))
        lie = jnp.where(jnp.isfinite(lie), lie, 0.0)
        x_ext = jnp.concatenate([x_data, jnp.full((n, dim), 0.5, jnp.float32)])
        y_ext = jnp.concatenate([y_data, jnp.zeros((n,), jnp.float32)])
        active_ext = jnp.concatenate([state.active, jnp.zeros((n,), bool)])

        def next_point(carry, inputs):
            x_all, y_all, act = carry
            j, key = inputs
            u = propose(key, x_all, y_all, act, hyper)
            slot = capacity + j
            return (x_all.at[slot].set(u), y_all.at[slot].set(lie), act.at[slot].set(True)), u

        keys = jax.random.split(k_propose, n)
        _, proposed = jax.lax.scan(next_point, (x_ext, y_ext, active_ext), (jnp.arange(n), keys))
        random_rows = jax.random.uniform(k_random, (n, dim))
        is_initial = (state.told + jnp.arange(n)) < initial
        has_data = jnp.any(state.active)
        u = jnp.where((is_initial | ~has_data)[:, None], random_rows, proposed)
        return state.replace(hyper=hyper), u

    def tell(state: BayesOptState, u: jax.Array, fitness: jax.Array) -> BayesOptState:
        def insert(carry, row):
            x, y, active = carry
            u_i, f_i = row
            # an empty slot, else the worst (failed first)
            slot = jnp.where(jnp.all(active), jnp.argmax(y), jnp.argmin(active))
            return (x.at[slot].set(u_i), y.at[slot].set(f_i), active.at[slot].set(True)), None

        (x, y, active), _ = jax.lax.scan(insert, (state.x, state.y, state.active), (u, fitness))
        return state.replace(x=x, y=y, active=active, told=state.told + u.shape[0])

    return make(dim, init, ask, tell)
