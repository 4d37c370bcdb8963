"""Input attributions: pure functions `(apply_fn, params, x, target, ...) -> attributions` (shape of x).

`apply_fn(params, x) -> logits (B, C)`; `x` is a batch of any shape: sequences `(B, L)` or
`(B, L, C)`, images `(B, H, W, C)`; `target` holds one class id per example. Every method is
batched over examples, and `over_members(method)` vmaps it over a population's member axis
(params with a leading axis M -> attributions `(M, *x.shape)`).

The score attributed is the target's logit (`output='logit'`) or log-probability
(`output='log_prob'`).
- vanilla gradients (Simonyan et al. 2014), gradient x input,
- integrated gradients (Sundararajan et al. 2017): completeness, sum(attr) = f(x) - f(baseline),
  holds up to the Riemann error of `steps`,
- SmoothGrad (Smilkov et al. 2017): gradients averaged over Gaussian-noised copies,
- occlusion (Zeiler & Fergus 2014): the score drop when a sliding window is set to a baseline.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

OUTPUTS = ("logit", "log_prob")


def _check(x: jax.Array, target: jax.Array, output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output has value {output!r}; allowed: {', '.join(map(repr, OUTPUTS))}")
    if x.ndim < 2:
        raise ValueError(f"x has shape {x.shape}; allowed: a batch (B, ...) of examples")
    if target.shape != x.shape[:1]:
        raise ValueError(f"target has shape {target.shape}; allowed: one class per example, shape ({x.shape[0]},)")


def target_score(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, output: str = "logit") -> jax.Array:
    """(B,) score of each example's target class."""
    logits = apply_fn(params, x)
    if output == "log_prob":
        logits = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=-1)[:, 0]


def _input_grad(apply_fn, params, x, target, output):
    # examples are independent (inference mode), so the gradient of the summed score is per example
    return jax.grad(lambda inputs: target_score(apply_fn, params, inputs, target, output).sum())(x)


def vanilla_gradients(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, *,
                      output: str = "logit") -> jax.Array:
    """d score / d x."""
    x, target = jnp.asarray(x), jnp.asarray(target)
    _check(x, target, output)
    return _input_grad(apply_fn, params, x, target, output)


def gradient_x_input(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, *,
                     output: str = "logit") -> jax.Array:
    """x * d score / d x."""
    return jnp.asarray(x) * vanilla_gradients(apply_fn, params, x, target, output=output)


def integrated_gradients(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, *,
                         baseline: Any = None, steps: int = 32, output: str = "logit") -> jax.Array:
    """(x - baseline) * mean of gradients along the straight path (trapezoid rule, `steps` intervals).

    `baseline` defaults to zeros (an array broadcastable to x, or a scalar).
    """
    x, target = jnp.asarray(x), jnp.asarray(target)
    _check(x, target, output)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps has value {steps!r}; allowed: a positive integer")
    base = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full(steps + 1, 1.0 / steps).at[0].set(0.5 / steps).at[-1].set(0.5 / steps)

    def accumulate(total, alpha_weight):
        alpha, weight = alpha_weight
        return total + weight * _input_grad(apply_fn, params, base + alpha * (x - base), target, output), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), (alphas, weights))
    return (x - base) * total


def smoothgrad(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, key: jax.Array, *,
               samples: int = 32, noise: float = 0.15, output: str = "logit") -> jax.Array:
    """Mean gradient over `samples` copies of x plus N(0, (noise * (max - min))^2) noise per example."""
    x, target = jnp.asarray(x), jnp.asarray(target)
    _check(x, target, output)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples has value {samples!r}; allowed: a positive integer")
    if not noise >= 0:
        raise ValueError(f"noise has value {noise!r}; allowed: >= 0 (a fraction of each example's range)")
    flat = x.reshape(x.shape[0], -1)
    sigma = (noise * (flat.max(1) - flat.min(1))).reshape((-1,) + (1,) * (x.ndim - 1))

    def accumulate(total, k):
        noisy = x + sigma * jax.random.normal(k, x.shape, x.dtype)
        return total + _input_grad(apply_fn, params, noisy, target, output), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), jax.random.split(key, samples))
    return total / samples


def occlusion_masks(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """(K, *shape) 0/1 masks of every window position (one example's shape, no batch axis)."""
    if len(window) != len(shape) or len(stride) != len(shape):
        raise ValueError(f"window {tuple(window)} and stride {tuple(stride)} need one entry per axis of {tuple(shape)}")
    if any(w < 1 or w > n for w, n in zip(window, shape)) or any(s < 1 for s in stride):
        raise ValueError(f"window {tuple(window)} must lie in [1, {tuple(shape)}] and stride {tuple(stride)} be >= 1")
    starts = [list(range(0, n - w + 1, s)) or [0] for n, w, s in zip(shape, window, stride)]
    for axis, (n, w) in enumerate(zip(shape, window)):  # cover the end of each axis too
        if starts[axis][-1] + w < n:
            starts[axis].append(n - w)
    grids = np.meshgrid(*starts, indexing="ij")
    corners = np.stack([g.ravel() for g in grids], axis=1)
    masks = np.zeros((len(corners), *shape), np.float32)
    for k, corner in enumerate(corners):
        masks[(k, *[slice(c, c + w) for c, w in zip(corner, window)])] = 1.0
    return masks


def default_window(shape: Sequence[int]) -> tuple[int, ...]:
    """A window of ~1/8 of each spatial axis; a trailing channel axis of an image (>= 3 axes) whole."""
    shape = tuple(shape)
    spatial = shape[:-1] if len(shape) >= 3 else shape
    window = tuple(max(1, n // 8) for n in spatial)
    return window + (shape[-1],) if len(shape) >= 3 else window


def occlusion(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array, *,
              window: Sequence[int] | None = None, stride: Sequence[int] | None = None, baseline: float = 0.0,
              output: str = "logit") -> jax.Array:
    """Per input position, the mean drop of the target score over the windows that cover it.

    `window`/`stride` have one entry per axis of one example (default `default_window`, stride =
    window); covered positions are set to `baseline`.
    """
    x, target = jnp.asarray(x), jnp.asarray(target)
    _check(x, target, output)
    shape = tuple(x.shape[1:])
    window = tuple(window) if window is not None else default_window(shape)
    stride = tuple(stride) if stride is not None else window
    masks = jnp.asarray(occlusion_masks(shape, window, stride))
    clean = target_score(apply_fn, params, x, target, output)

    def drop(mask):
        occluded = x * (1 - mask) + baseline * mask
        return clean - target_score(apply_fn, params, occluded, target, output)  # (B,)

    drops = jax.lax.map(drop, masks)  # (K, B)
    total = jnp.einsum("kb,k...->b...", drops, masks)
    coverage = jnp.maximum(masks.sum(0), 1.0)
    return total / coverage


METHODS = {"gradients": vanilla_gradients, "gradient_x_input": gradient_x_input,
           "integrated_gradients": integrated_gradients, "smoothgrad": smoothgrad, "occlusion": occlusion}


def over_members(method: Callable, **options: Any) -> Callable:
    """`fn(apply_fn, stacked_params, x, target[, key]) -> (M, *x.shape)`: `method` vmapped over a
    leading member axis of the params (the same inputs for every member), jit-compiled with
    `apply_fn` static (pass the same function object to reuse the compilation)."""
    if method is smoothgrad:
        def run_keyed(apply_fn, params, x, target, key):
            return jax.vmap(lambda p: smoothgrad(apply_fn, p, x, target, key, **options))(params)

        return jax.jit(run_keyed, static_argnums=0)

    def run(apply_fn, params, x, target):
        return jax.vmap(lambda p: method(apply_fn, p, x, target, **options))(params)

    return jax.jit(run, static_argnums=0)


def rank_correlation(a: jax.Array, b: jax.Array, *, absolute: bool = True) -> jax.Array:
    """Spearman rank correlation per example of two attribution maps (B, ...) -> (B,).

    With `absolute`, ranks |a| and |b| (the sign of saliency is often arbitrary), as Adebayo et
    al. 2018 do in their sanity checks.
    """
    a = jnp.asarray(a).reshape(a.shape[0], -1)
    b = jnp.asarray(b).reshape(b.shape[0], -1)
    if absolute:
        a, b = jnp.abs(a), jnp.abs(b)
    ra = jnp.argsort(jnp.argsort(a, axis=1), axis=1).astype(jnp.float32)
    rb = jnp.argsort(jnp.argsort(b, axis=1), axis=1).astype(jnp.float32)
    ra = ra - ra.mean(1, keepdims=True)
    rb = rb - rb.mean(1, keepdims=True)
    return jnp.sum(ra * rb, 1) / jnp.sqrt(jnp.sum(ra ** 2, 1) * jnp.sum(rb ** 2, 1) + 1e-12)
