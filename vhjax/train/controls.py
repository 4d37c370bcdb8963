"""Training controls as pure functions: reduce-on-plateau, early stopping, per-layer rates, accumulation.

The two monitors (`reduce_on_plateau`, `early_stopping`) follow optax's shape: a factory that
validates its settings eagerly and returns `Control(init, update)`, where `init() -> state` and
`update(state, value) -> state` are pure, so they run under `jit`, inside `lax.scan`, and under
`vmap` over a population (one state and one monitored value per member).

`layerwise` (per-layer learning-rate multipliers and freezing, by path pattern) and
`accumulate_gradients` (optax.MultiSteps) wrap an existing optimizer, e.g. one from
`vhjax.optim.make_optimizer`, whose hyperparameters stay readable with `get_hyperparams`.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from vhjax import optim

MODES = ("min", "max")
FROZEN = "frozen"
DEFAULT = "default"


class Control(NamedTuple):
    """A monitor: `init() -> state`, `update(state, value) -> state` (both pure)."""

    init: Callable[[], Any]
    update: Callable[[Any, jax.Array], Any]


def _check_mode(mode: str) -> float:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    return 1.0 if mode == "min" else -1.0


def _check_number(field: str, value: Any, low: float, high: float | None = None, *,
                  low_open: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{field}={value!r} is not allowed; allowed: {'an int' if integer else 'a number'} {bound}")


def _improved(score: jax.Array, best: jax.Array, rtol: float, atol: float) -> jax.Array:
    """Whether `score` (lower is better) beats `best` by more than `rtol * |best| + atol`.

    The threshold uses |best|, so it is right for negative metrics and for 'max' mode (scores are
    negated values); optax's `(1 - rtol) * best` is not, which is why this is not optax's code.
    """
    threshold = jnp.where(jnp.isfinite(best), best - rtol * jnp.abs(best) - atol, jnp.inf)
    return score < threshold  # False for NaN scores


# ---------------------------------------------------------------------------------------------
# Reduce the learning rate on a plateau.


class PlateauState(NamedTuple):
    """`scale` multiplies the learning rate; `best` is in the monitored metric's own units."""

    best: jax.Array
    bad_steps: jax.Array
    cooldown_left: jax.Array
    scale: jax.Array


def reduce_on_plateau(
    *,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    min_scale: float = 0.0,
) -> Control:
    """Multiply `scale` by `factor` after `patience` consecutive updates without improvement.

    Same rule as `optax.contrib.reduce_on_plateau` (and torch's ReduceLROnPlateau): a value
    improves when it beats the best by more than `rtol * |best| + atol`; the `patience`-th bad
    update in a row reduces the scale (never below `min_scale`) and resets the count; then
    `cooldown` updates are ignored. For 'max' mode (e.g. accuracy) higher is better.
    Use the scale with `scaled_learning_rate`.
    """
    sign = _check_mode(mode)
    _check_number("factor", factor, 0.0, 1.0, low_open=True)
    if factor == 1.0:
        raise ValueError("factor=1.0 is not allowed; allowed: a number in (0, 1)")
    _check_number("patience", patience, 1, integer=True)
    _check_number("rtol", rtol, 0.0, 1.0)
    _check_number("atol", atol, 0.0)
    _check_number("cooldown", cooldown, 0, integer=True)
    _check_number("min_scale", min_scale, 0.0, 1.0)

    def init() -> PlateauState:
        return PlateauState(best=jnp.float32(sign * jnp.inf), bad_steps=jnp.int32(0),
                            cooldown_left=jnp.int32(0), scale=jnp.float32(1.0))

    def update(state: PlateauState, value: jax.Array) -> PlateauState:
        value = jnp.asarray(value, jnp.float32)
        improved = _improved(sign * value, sign * state.best, rtol, atol)
        in_cooldown = state.cooldown_left > 0
        bad_steps = jnp.where(improved | in_cooldown, 0, state.bad_steps + 1)
        reduce = bad_steps >= patience
        return PlateauState(
            best=jnp.where(improved, value, state.best),
            bad_steps=jnp.where(reduce, 0, bad_steps).astype(jnp.int32),
            cooldown_left=jnp.where(in_cooldown, state.cooldown_left - 1,
                                    jnp.where(reduce, cooldown, 0)).astype(jnp.int32),
            scale=jnp.where(reduce, jnp.maximum(state.scale * factor, min_scale), state.scale),
        )

    return Control(init, update)


def restore_plateau(control: Control, values: Any) -> PlateauState:
    """A plateau state from its saved leaf values (e.g. JSON lists), with the dtypes of `control.init()`."""
    return PlateauState(*(jnp.asarray(v, t.dtype) for v, t in zip(values, control.init())))


def scaled_learning_rate(opt_state: Any, base_learning_rate: float | jax.Array, scale: jax.Array) -> Any:
    """`opt_state` (from `vhjax.optim.make_optimizer`) with learning_rate = base * scale; jit-safe."""
    return optim.set_hyperparams(opt_state, learning_rate=jnp.asarray(base_learning_rate) * scale)


# ---------------------------------------------------------------------------------------------
# Early stopping on any metric.


class EarlyStoppingState(NamedTuple):
    """`best` value, the update count at which it was seen, bad updates in a row, and `stop`."""

    best: jax.Array
    best_index: jax.Array
    count: jax.Array
    bad_steps: jax.Array
    stop: jax.Array


def early_stopping(*, mode: str = "min", patience: int = 10, min_delta: float = 0.0) -> Control:
    """Set `stop` once `patience` updates in a row fail to beat the best by more than `min_delta`.

    `best_index` counts updates from 0 (the index of the best evaluation). Once `stop` is True
    the state is frozen (later values are ignored), so a member of a population that keeps
    running under `vmap` keeps its own best.
    """
    sign = _check_mode(mode)
    _check_number("patience", patience, 1, integer=True)
    _check_number("min_delta", min_delta, 0.0)

    def init() -> EarlyStoppingState:
        return EarlyStoppingState(best=jnp.float32(sign * jnp.inf), best_index=jnp.int32(-1),
                                  count=jnp.int32(0), bad_steps=jnp.int32(0), stop=jnp.bool_(False))

    def update(state: EarlyStoppingState, value: jax.Array) -> EarlyStoppingState:
        value = jnp.asarray(value, jnp.float32)
        improved = _improved(sign * value, sign * state.best, 0.0, min_delta)
        bad_steps = jnp.where(improved, 0, state.bad_steps + 1).astype(jnp.int32)
        new = EarlyStoppingState(
            best=jnp.where(improved, value, state.best),
            best_index=jnp.where(improved, state.count, state.best_index).astype(jnp.int32),
            count=state.count + 1,
            bad_steps=bad_steps,
            stop=bad_steps >= patience,
        )
        return jax.tree.map(lambda old, fresh: jnp.where(state.stop, old, fresh), state, new)

    return Control(init, update)


# ---------------------------------------------------------------------------------------------
# Per-layer learning-rate multipliers and freezing.


def _path_string(key_path: tuple) -> str:
    parts = []
    for key in key_path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def param_paths(params: Any) -> list[str]:
    """Every leaf's path, its keys joined by '/' (e.g. 'Dense_0/kernel')."""
    return [_path_string(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def check_patterns_match(params: Any, patterns: Sequence[str], field: str) -> None:
    """Each glob must match at least one parameter path (a typo would silently do nothing)."""
    paths = param_paths(params)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
            shown = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
            raise ValueError(f"config field {field!r} has pattern {pattern!r}, which matches no parameter; "
                             f"allowed: globs over the parameter paths ({shown})")


def path_labels(rules: Sequence[tuple[str, str]], default: str = DEFAULT) -> Callable[[Any], Any]:
    """`labels(params)`: for each leaf, the label of the first rule whose glob matches its path.

    A path is the leaf's keys joined by '/', e.g. 'Dense_0/kernel'; patterns are `fnmatch` globs
    ('Dense_0/*', '*/bias', 'Conv_*/*'). Leaves no rule matches get `default`.
    """
    for pattern, label in rules:
        if not isinstance(pattern, str) or not isinstance(label, str):
            raise ValueError(f"rule ({pattern!r}, {label!r}) is not allowed; allowed: (glob string, label string)")

    def labels(params: Any) -> Any:
        def label_of(key_path, leaf):
            del leaf
            path = _path_string(key_path)
            return next((label for pattern, label in rules if fnmatch.fnmatchcase(path, pattern)), default)

        return jax.tree_util.tree_map_with_path(label_of, params)

    return labels


def layerwise(
    optimizer: optax.GradientTransformation,
    multipliers: Mapping[str, float] | None = None,
    frozen: Sequence[str] = (),
) -> optax.GradientTransformation:
    """`optimizer` followed by per-layer scaling of its updates (Caffe's `lr_mult`), by path glob.

    `multipliers` maps a glob to a learning-rate multiplier (the first matching glob wins;
    unmatched leaves keep multiplier 1); leaves matching a glob in `frozen` get zero updates, so
    they never change. Scaling the final update by m is multiplying that layer's learning rate by
    m for every optimizer here (SGD, momentum, Adam, ...). The optimizer itself stays one
    transformation over all params, so `vhjax.optim.get_hyperparams` keeps working.
    Uses `optax.multi_transform` with a path-pattern label function.
    """
    multipliers = dict(multipliers or {})
    for pattern, value in multipliers.items():
        _check_number(f"multipliers[{pattern!r}]", value, 0.0)
    rules = [(pattern, FROZEN) for pattern in frozen]
    transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero(),
                                                          DEFAULT: optax.identity()}
    for index, (pattern, value) in enumerate(multipliers.items()):
        label = f"multiplier_{index}"
        rules.append((pattern, label))
        transforms[label] = optax.scale(value)
    return optax.chain(optimizer, optax.multi_transform(transforms, path_labels(rules)))


# ---------------------------------------------------------------------------------------------
# Gradient accumulation.


def accumulate_gradients(optimizer: optax.GradientTransformation, every_k: int) -> optax.GradientTransformation:
    """Average gradients over `every_k` micro-batches and step `optimizer` once per `every_k` calls.

    The updates in between are zero, so params change only every k-th call; with equal-sized
    micro-batches the step equals one step on their union (Caffe's `accum_batch_size`).
    A thin wrapper of `optax.MultiSteps`.
    """
    _check_number("every_k", every_k, 1, integer=True)
    return optax.MultiSteps(optimizer, every_k_schedule=every_k).gradient_transformation()
