"""Adversarial examples and robust accuracy: FGSM and PGD under L-infinity and L2 budgets.

`logits_fn(x) -> (B, C)` is any classifier closure, e.g.
`lambda x: model.apply(variables, x, train=False)`; for a population vmap the attack over members
with `over_members` (vhjax.inspect.attributions) or call it per member. Perturbations are per
example; inputs are clipped to `clip` when given (e.g. (0, 1) for images in that range).
Goodfellow et al. 2015 (FGSM), Madry et al. 2018 (PGD).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import validation
from vhjax.memo import Memo

NORMS = ("linf", "l2")


def check_epsilon(epsilon: Any, name: str = "epsilon") -> None:
    """ValueError naming `name` for a negative or non-finite budget (checked before tracing)."""
    if isinstance(epsilon, jax.core.Tracer):
        return
    values = np.atleast_1d(np.asarray(epsilon, np.float64))
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{name} has value {np.asarray(epsilon).tolist()}; allowed: finite values >= 0")


def check_norm(norm: str) -> None:
    validation.check_choice("norm", norm, NORMS)


def _loss_grad(logits_fn: Callable, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss(inputs):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(inputs), y).sum()

    return jax.grad(loss)(x)


def _per_example_norm(v: jax.Array) -> jax.Array:
    flat = v.reshape(v.shape[0], -1)
    return jnp.sqrt(jnp.sum(flat ** 2, axis=1) + 1e-12).reshape((-1,) + (1,) * (v.ndim - 1))


def _step_direction(grad: jax.Array, norm: str) -> jax.Array:
    if norm == "linf":
        return jnp.sign(grad)
    return grad / _per_example_norm(grad)


def project(delta: jax.Array, epsilon: jax.Array, norm: str) -> jax.Array:
    """Project perturbations onto the epsilon ball of `norm` (per example)."""
    if norm == "linf":
        return jnp.clip(delta, -epsilon, epsilon)
    scale = jnp.minimum(1.0, epsilon / _per_example_norm(delta))
    return delta * scale


def _clip(x: jax.Array, clip: Sequence[float] | None) -> jax.Array:
    return x if clip is None else jnp.clip(x, clip[0], clip[1])


def fgsm(logits_fn: Callable, x: jax.Array, y: jax.Array, epsilon: Any, *, norm: str = "linf",
         clip: Sequence[float] | None = None) -> jax.Array:
    """One gradient step of size epsilon that increases the cross-entropy: x + eps * sign(grad)
    (L-infinity) or x + eps * grad / ||grad|| (L2, the fast gradient method)."""
    check_epsilon(epsilon)
    check_norm(norm)
    epsilon = jnp.asarray(epsilon, x.dtype)
    return _clip(x + epsilon * _step_direction(_loss_grad(logits_fn, x, y), norm), clip)


def pgd(logits_fn: Callable, x: jax.Array, y: jax.Array, epsilon: Any, *, norm: str = "linf", steps: int = 10,
        step_size: Any = None, key: jax.Array | None = None, clip: Sequence[float] | None = None) -> jax.Array:
    """Projected gradient descent on the loss within the epsilon ball (Madry et al. 2018).

    `step_size` defaults to 2.5 * epsilon / steps; with a `key` the start is uniform in the ball
    (L-infinity) or a random direction of random radius (L2), else x itself.
    """
    check_epsilon(epsilon)
    check_norm(norm)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps has value {steps!r}; allowed: a positive integer")
    epsilon = jnp.asarray(epsilon, x.dtype)
    alpha = 2.5 * epsilon / steps if step_size is None else jnp.asarray(step_size, x.dtype)
    delta = jnp.zeros_like(x)
    if key is not None:
        if norm == "linf":
            delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * epsilon
        else:
            k1, k2 = jax.random.split(key)
            direction = jax.random.normal(k1, x.shape, x.dtype)
            radius = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
            delta = direction / _per_example_norm(direction) * radius * epsilon

    def body(_, delta):
        grad = _loss_grad(logits_fn, _clip(x + delta, clip), y)
        return project(delta + alpha * _step_direction(grad, norm), epsilon, norm)

    delta = jax.lax.fori_loop(0, steps, body, delta)
    return _clip(x + delta, clip)


def robust_accuracy(logits_fn: Callable, x: jax.Array, y: jax.Array, epsilon: Any, *, attack: str = "pgd",
                    **options: Any) -> jax.Array:
    """Accuracy on adversarial examples of budget epsilon (epsilon 0 = clean accuracy)."""
    _check_attack(attack)
    adversarial = (fgsm if attack == "fgsm" else pgd)(logits_fn, x, y, epsilon, **options)
    return jnp.mean(jnp.argmax(logits_fn(adversarial), axis=-1) == y)


def robust_accuracy_curve(logits_fn: Callable, x: Any, y: Any, epsilons: Sequence[float], *, attack: str = "pgd",
                          variables: Any = None, **options: Any) -> np.ndarray:
    """Robust accuracy at each budget in `epsilons` (one compiled attack, vmapped over budgets).

    Without `variables`, `logits_fn(x)` is a closure (e.g. over a model's variables) and each call
    compiles its attack. With `variables`, `logits_fn(variables, x)` takes them as an argument and
    the program is compiled once per `logits_fn` object and settings (`attack`, `norm`, `steps`,
    `clip`): another model's variables, new data or budgets of the same shapes compile nothing.
    `options` are those of `fgsm` / `pgd` (`key` and `step_size` are traced).
    """
    check_epsilon(epsilons, "epsilons")
    _check_attack(attack)
    x, y = jnp.asarray(x), jnp.asarray(y)
    budgets = jnp.asarray(epsilons, jnp.float32)
    traced = {name: options.pop(name) for name in TRACED_OPTIONS if options.get(name) is not None}
    if variables is None:  # a closure: its own program, compiled for this call
        program = _curve_program(lambda _, inputs: logits_fn(inputs), attack, options)
    else:
        settings = (attack, *sorted((name, _hashable(value)) for name, value in options.items()))
        program = _CURVES.get((logits_fn,), lambda: _curve_program(logits_fn, attack, options), settings)
    # x and y are arguments, not constants: XLA would otherwise constant-fold the first layer
    return np.asarray(program(budgets, x, y, variables, traced))


TRACED_OPTIONS = ("key", "step_size")  # array-valued options: arguments of the compiled curve
_CURVES: Memo[Callable] = Memo(bound=16)


def _check_attack(attack: str) -> None:
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack has value {attack!r}; allowed: 'fgsm', 'pgd'")


def _hashable(value: Any) -> Any:
    """An option as part of a cache key: sequences and arrays (e.g. `clip`) as tuples of numbers."""
    return tuple(np.asarray(value).tolist()) if isinstance(value, (list, tuple, np.ndarray, jax.Array)) else value


def _curve_program(logits_fn: Callable, attack: str, static: dict[str, Any]) -> Callable:
    """jit(budgets, x, y, variables, traced options) -> robust accuracy per budget."""
    def curve(budgets, xs, ys, variables, traced):
        bound = lambda inputs: logits_fn(variables, inputs)
        one = lambda e: robust_accuracy(bound, xs, ys, e, attack=attack, **static, **traced)
        return jax.vmap(one)(budgets)

    return jax.jit(curve)
