"""Differentiable cell search: first-order DARTS and GDAS (Gumbel-softmax sampling) on `NB201CellNet`.

Architecture logits `alpha (6, 5)` and network weights alternate, inside one `lax.scan`:
an alpha step on a validation batch (first order: the gradient of the validation loss with respect
to alpha at the current weights), then a weight step on a training batch. DARTS mixes every edge
with `softmax(alpha)`; GDAS samples a hard one-hot row per edge (straight-through Gumbel-softmax)
at a temperature annealed geometrically from `tau_max` to `tau_min`. Adam (optax) updates both.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.models.cell import NUM_EDGES, NUM_OPS, NB201CellNet

METHODS = ("darts", "gdas")


def gumbel_softmax_weights(key: jax.Array, alpha: jax.Array, tau: float | jax.Array,
                           hard: bool = True) -> jax.Array:
    """Gumbel-softmax rows of `alpha (..., K)` at temperature `tau`.

    `hard=True` returns one-hot rows whose gradient is that of the soft sample (straight-through).
    """
    gumbel = jax.random.gumbel(key, alpha.shape, alpha.dtype)
    soft = jax.nn.softmax((alpha + gumbel) / tau, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), alpha.shape[-1], dtype=soft.dtype)
    return one_hot - jax.lax.stop_gradient(soft) + soft


def derive_ops(alpha: Any) -> np.ndarray:
    """The discrete cell of `alpha (6, 5)`: per edge the strongest op other than 'none' (index 0)."""
    alpha = np.asarray(alpha)
    if alpha.shape != (NUM_EDGES, NUM_OPS):
        raise ValueError(f"alpha has shape {alpha.shape}; allowed: ({NUM_EDGES}, {NUM_OPS})")
    return (np.argmax(alpha[:, 1:], axis=-1) + 1).astype(np.int32)


def _check(method: str, steps: int, x_train, y_train, x_val, y_val, batch_size: int | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method = {method!r}; allowed: {', '.join(repr(m) for m in METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps = {steps!r}; allowed: a positive integer")
    for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x_{name} has {len(x)} rows and y_{name} {len(y)}; allowed: equal, non-zero")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size = {batch_size!r}; allowed: a positive integer or None (full batch)")


def _batch(key: jax.Array, x: jax.Array, y: jax.Array, batch_size: int | None):
    if batch_size is None:
        return x, y
    index = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    return x[index], y[index]


def make_darts_step(model: nn.Module, w_opt: optax.GradientTransformation, a_opt: optax.GradientTransformation,
                    *, method: str = "darts", batch_size: int | None = None) -> Callable:
    """`step(carry, tau) -> (carry, metrics)` for `lax.scan`; carry = (params, w_state, alpha, a_state, key, data)."""

    def loss_fn(params, weights, x, y, key):
        logits = model.apply({"params": params}, x, train=True, arch={"weights": weights}, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def mix(key, alpha, tau):
        if method == "gdas":
            return gumbel_softmax_weights(key, alpha, tau, hard=True)
        return jax.nn.softmax(alpha, axis=-1)

    def step(carry, tau):
        params, w_state, alpha, a_state, key, (x_train, y_train, x_val, y_val) = carry
        key, k_tb, k_vb, k_wa, k_aa, k_wd, k_ad = jax.random.split(key, 7)
        xv, yv = _batch(k_vb, x_val, y_val, batch_size)
        val_loss, a_grad = jax.value_and_grad(lambda a: loss_fn(params, mix(k_aa, a, tau), xv, yv, k_ad))(alpha)
        a_update, a_state = a_opt.update(a_grad, a_state, alpha)
        alpha = optax.apply_updates(alpha, a_update)
        xt, yt = _batch(k_tb, x_train, y_train, batch_size)
        weights = jax.lax.stop_gradient(mix(k_wa, alpha, tau))
        train_loss, w_grad = jax.value_and_grad(loss_fn)(params, weights, xt, yt, k_wd)
        w_update, w_state = w_opt.update(w_grad, w_state, params)
        params = optax.apply_updates(params, w_update)
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "tau": tau, "alpha": alpha}
        return (params, w_state, alpha, a_state, key, (x_train, y_train, x_val, y_val)), metrics

    return step


def darts_search(x_train: Any, y_train: Any, x_val: Any, y_val: Any, *, steps: int, key: jax.Array,
                 model: nn.Module | None = None, method: str = "darts", batch_size: int | None = None,
                 w_lr: float = 3e-3, alpha_lr: float = 3e-2, alpha_weight_decay: float = 1e-3,
                 tau_max: float = 10.0, tau_min: float = 0.1,
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Search a cell for `model` (default `NB201CellNet(channels=16, num_cells=1)`) on the given data.

    Returns `(alpha (6, 5), derived ops (6,) int — argmax per edge excluding 'none', history)` where
    `history` holds per-step arrays `train_loss`, `val_loss`, `tau` and `alpha (steps, 6, 5)`.
    `model` must accept `arch={"weights": (6, 5)}`. `tau_*` only matter for `method='gdas'`.
    """
    _check(method, steps, x_train, y_train, x_val, y_val, batch_size)
    x_train, x_val = jnp.asarray(x_train, jnp.float32), jnp.asarray(x_val, jnp.float32)
    y_train, y_val = jnp.asarray(y_train, jnp.int32), jnp.asarray(y_val, jnp.int32)
    if model is None:
        num_classes = int(max(int(y_train.max()), int(y_val.max()))) + 1
        model = NB201CellNet(channels=16, num_cells=1, num_classes=num_classes)
    key, init_key = jax.random.split(key)
    alpha = jnp.zeros((NUM_EDGES, NUM_OPS), jnp.float32)
    params = model.init(init_key, x_train[:1], arch={"weights": jax.nn.softmax(alpha, -1)})["params"]
    w_opt = optax.adam(w_lr)
    a_opt = optax.adamw(alpha_lr, b1=0.5, b2=0.999, weight_decay=alpha_weight_decay)
    step = make_darts_step(model, w_opt, a_opt, method=method, batch_size=batch_size)
    taus = tau_max * (tau_min / tau_max) ** (jnp.arange(steps) / max(steps - 1, 1))
    carry = (params, w_opt.init(params), alpha, a_opt.init(alpha), key, (x_train, y_train, x_val, y_val))
    carry, history = jax.jit(lambda c, t: jax.lax.scan(step, c, t))(carry, taus.astype(jnp.float32))
    alpha = np.asarray(carry[2])
    return alpha, derive_ops(alpha), {name: np.asarray(value) for name, value in history.items()}
