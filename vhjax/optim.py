"""Optimizers on optax whose numeric hyperparameters live in the optimizer state.

`make_optimizer` builds, inside one `optax.inject_hyperparams` wrapper, the chain

    clip_value -> clip_norm -> [+ weight_decay * params] -> scale_by_<optimizer>
               -> [+ weight_decay * params] -> * schedule(step) -> * (-learning_rate)

with the weight-decay term in exactly one of the two bracketed places (see below). Every number
(learning_rate, weight_decay, clip thresholds, momentum, b1, b2, eps, ...) is an array in
`state.hyperparams`, so a population (opt states stacked on a leading axis) holds one value per
member and one compiled step serves them all. The schedule is a *multiplier* that starts at 1;
its shape parameters are static, the base learning rate stays a per-member array.

Momentum convention: v <- momentum * v - lr * grad, theta <- theta + v. optax's `trace` keeps
t <- momentum * t + grad and the update is -lr * t, i.e. v = -lr * t (identical for a constant
lr). Nesterov uses optax's form: t <- momentum * t + grad, update = -lr * (grad + momentum * t).

Weight decay follows each optimizer's reference definition (torch.optim, optax):
- 'adamw' decouples it (Loshchilov & Hutter 2019, as `optax.adamw`): `weight_decay * params` is
  added to Adam's normalised direction, then scaled by the learning rate and the schedule, so the
  decay does not pass through Adam's second-moment normalisation.
- every other optimizer ('sgd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam', 'adamax',
  'adadelta', 'lbfgs') couples it: `weight_decay * params` is added to the gradient (after clipping) before
  the optimizer's direction, i.e. an L2 penalty `weight_decay / 2 * ||params||^2` (as
  `torch.optim.Adam(weight_decay=...)` and `optax.adadelta`). For plain 'sgd' both forms coincide.
Either way it applies to every parameter, and `update` needs `params` when weight decay is on.
'adam' and 'adamw' therefore differ as soon as `weight_decay > 0`; with `weight_decay=0` they are
the same optimizer.

Gradient-based tuning of the step size: `hypergradient=beta` (for any optimizer; in a config
`optimizer_kwargs={"hypergradient": beta}`, per member too) wraps the chain in
`hypergradient_step`, hypergradient descent on the learning rate (Baydin et al. 2018, "Online
Learning Rate Adaptation with Hypergradient Descent"; SGD-HD and Adam-HD are the 'sgd' and 'adam'
cases): the effective learning rate `alpha_t = learning_rate * m_t` follows
`alpha_t = alpha_{t-1} + beta * <g_t, d_{t-1}>`, g the gradient and d the last update's direction.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vhjax import hparams, validation
from vhjax.registry import Registry

Schedule = Callable[[jax.Array], jax.Array]

# ---------------------------------------------------------------------------------------------
# Optimizer directions: scale_by_* transformations, before the learning rate.


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer's direction, its hyperparameters with their defaults, and
    whether `weight_decay` is decoupled (added after the direction) or an L2 term on the gradient."""

    direction: Callable[..., optax.GradientTransformation]
    defaults: Mapping[str, float]
    decoupled_weight_decay: bool = False


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")

OPTIMIZERS.add("sgd", OptimizerSpec(lambda: optax.identity(), {}))
OPTIMIZERS.add(
    "momentum",
    OptimizerSpec(lambda momentum: optax.trace(decay=momentum, nesterov=False), {"momentum": 0.9}),
)
OPTIMIZERS.add(
    "nesterov",
    OptimizerSpec(lambda momentum: optax.trace(decay=momentum, nesterov=True), {"momentum": 0.9}),
)
OPTIMIZERS.add(
    "adagrad",
    OptimizerSpec(
        lambda initial_accumulator_value, eps: optax.scale_by_rss(initial_accumulator_value, eps),
        {"initial_accumulator_value": 0.1, "eps": 1e-7},
    ),
)
OPTIMIZERS.add(
    "rmsprop",
    OptimizerSpec(
        lambda decay, eps, initial_scale: optax.scale_by_rms(decay, eps, initial_scale),
        {"decay": 0.9, "eps": 1e-8, "initial_scale": 0.0},
    ),
)
_ADAM_DIRECTION = lambda b1, b2, eps, eps_root: optax.scale_by_adam(b1, b2, eps, eps_root)  # noqa: E731
_ADAM_DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}
OPTIMIZERS.add("adam", OptimizerSpec(_ADAM_DIRECTION, _ADAM_DEFAULTS))
OPTIMIZERS.add("adamw", OptimizerSpec(_ADAM_DIRECTION, _ADAM_DEFAULTS, decoupled_weight_decay=True))
OPTIMIZERS.add(
    "adamax",
    OptimizerSpec(
        lambda b1, b2, eps: optax.scale_by_adamax(b1, b2, eps),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    ),
)
# Limited-memory BFGS (Liu & Nocedal 1989), a quasi-Newton (second-order) method: the direction is
# the gradient times an inverse-Hessian estimate from the last 10 (params, gradient) differences.
# No line search (that would need the loss inside `update`): learning_rate scales the step, 1.0
# being the full quasi-Newton step. The memory size is shaped state, so it is fixed (optax's 10).
OPTIMIZERS.add("lbfgs", OptimizerSpec(lambda: optax.scale_by_lbfgs(memory_size=10), {}))
# Zeiler (2012); the paper has no learning rate, i.e. learning_rate=1.0 (torch's default too).
OPTIMIZERS.add(
    "adadelta",
    OptimizerSpec(lambda rho, eps: optax.scale_by_adadelta(rho, eps), {"rho": 0.9, "eps": 1e-6}),
)

class HypergradientState(NamedTuple):
    """`hypergradient_step`'s state: the inner chain's, the step-size multiplier, the last update."""

    inner: Any
    multiplier: jax.Array
    previous: Any


def hypergradient_step(inner: optax.GradientTransformation, hyper_lr: jax.Array,
                       learning_rate: jax.Array) -> optax.GradientTransformation:
    """`inner` (whose updates are `-learning_rate * direction`) with its step size learnt by
    hypergradient descent (Baydin et al. 2018): the updates are scaled by a multiplier `m` (1 at
    first, never below 0) with `m_t = m_{t-1} - hyper_lr / learning_rate**2 * <g_t, u_{t-1}>`, `g_t`
    this step's gradient and `u_{t-1}` the inner chain's last update; for the effective step size
    `alpha = learning_rate * m` this is the paper's `alpha_t = alpha_{t-1} + hyper_lr * <g_t, d_{t-1}>`.
    `hyper_lr = 0` leaves `inner` as it is (m stays exactly 1)."""

    def init(params: Any) -> HypergradientState:
        return HypergradientState(inner.init(params), jnp.ones([], jnp.float32), jax.tree.map(jnp.zeros_like, params))

    def update(grads: Any, state: HypergradientState, params: Any = None) -> tuple[Any, HypergradientState]:
        dot = sum(jnp.vdot(g, u) for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(state.previous)))
        step = hyper_lr / jnp.square(learning_rate) * dot
        multiplier = jnp.maximum(state.multiplier - step.astype(jnp.float32), 0.0)
        updates, inner_state = inner.update(grads, state.inner, params)
        scaled = jax.tree.map(lambda u: (multiplier * u).astype(u.dtype), updates)
        return scaled, HypergradientState(inner_state, multiplier, updates)

    return optax.GradientTransformation(init, update)


def step_size_multiplier(opt_state: Any) -> jax.Array | None:
    """The learnt multiplier of the learning rate in a `make_optimizer(..., hypergradient=...)`
    state ((P,) for a population), or None without hypergradient descent."""
    found = [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda n: isinstance(n, HypergradientState))
             if isinstance(node, HypergradientState)]
    return found[0].multiplier if found else None


# ---------------------------------------------------------------------------------------------
# Schedules: multipliers of the base learning rate, equal to 1 at step 0 (after any warmup).

SCHEDULES: Registry[Callable[..., Schedule]] = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(total_steps: int | None) -> Schedule:
    del total_steps
    return optax.constant_schedule(1.0)


@SCHEDULES.register("step")
def _step(
    total_steps: int | None,
    *,
    decay_factor: float = 0.1,
    every: int | None = None,
    boundaries: tuple[int, ...] | None = None,
) -> Schedule:
    """Multiply by `decay_factor` every `every` steps, or at each step in `boundaries`."""
    del total_steps
    if (every is None) == (boundaries is None):
        raise ValueError(
            f"schedule 'step' needs exactly one of every / boundaries; got every={every!r}, "
            f"boundaries={boundaries!r}"
        )
    if every is not None:
        _check_positive_int("schedule_kwargs['every']", every)
        return optax.exponential_decay(1.0, every, decay_factor, staircase=True)
    for boundary in boundaries:
        _check_positive_int("schedule_kwargs['boundaries']", boundary)
    if len(set(boundaries)) != len(boundaries):
        raise ValueError(f"schedule_kwargs['boundaries']={boundaries!r} has repeated steps")
    return optax.piecewise_constant_schedule(1.0, {int(b): decay_factor for b in boundaries})


@SCHEDULES.register("exponential")
def _exponential(
    total_steps: int | None,
    *,
    decay_rate: float,
    transition_steps: int = 1,
    staircase: bool = False,
) -> Schedule:
    """Multiply by `decay_rate` per `transition_steps` steps (smoothly unless `staircase`)."""
    del total_steps
    _check_positive_int("schedule_kwargs['transition_steps']", transition_steps)
    validation.check_number("schedule_kwargs['decay_rate']", decay_rate, 0.0, low_inclusive=False)
    return optax.exponential_decay(1.0, transition_steps, decay_rate, staircase=staircase)


@SCHEDULES.register("cosine")
def _cosine(total_steps: int | None, *, warmup_steps: int = 0, alpha: float = 0.0) -> Schedule:
    """Cosine from 1 to `alpha` over `total_steps` (which include a linear warmup from 0)."""
    if total_steps is None:
        raise ValueError("schedule 'cosine' needs total_steps (got None)")
    _check_positive_int("total_steps", total_steps)
    validation.check_int("schedule_kwargs['warmup_steps']", warmup_steps, 0, total_steps - 1)
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(1.0, total_steps, alpha=alpha)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, total_steps, end_value=alpha)


@SCHEDULES.register("cosine_cycles")
def _cosine_cycles(total_steps: int | None, *, steps_per_cycle: int) -> Schedule:
    """Cyclic cosine (snapshot ensembles, Huang et al. 2017): from 1 to 0 in every cycle of
    `steps_per_cycle` steps, back to 1 at the start of the next."""
    del total_steps
    _check_positive_int("schedule_kwargs['steps_per_cycle']", steps_per_cycle)
    return lambda step: 0.5 * (1.0 + jnp.cos(jnp.pi * (step % steps_per_cycle) / steps_per_cycle))


def _check_positive_int(field: str, value: Any) -> None:
    validation.check_int(field, value, minimum=1)


def make_schedule(
    schedule: str = "constant",
    schedule_kwargs: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
) -> Schedule:
    """The learning-rate multiplier `step -> factor` named `schedule` (1 at step 0 unless warmup)."""
    builder = SCHEDULES.get(schedule)
    kwargs = dict(schedule_kwargs or {})
    allowed = [name for name in inspect.signature(builder).parameters if name != "total_steps"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown schedule_kwargs {unknown} for schedule {schedule!r}; allowed: {allowed}")
    try:
        return builder(total_steps, **kwargs)
    except TypeError as error:  # a required keyword is missing
        raise ValueError(f"schedule {schedule!r}: {error}; allowed schedule_kwargs: {allowed}") from None


# ---------------------------------------------------------------------------------------------
# The optimizer.


def _as_hyperparameter(field: str, value: Any) -> jax.Array:
    """A scalar float32 array; rejects non-numbers and arrays that are not scalars."""
    if isinstance(value, bool) or callable(value):
        raise validation.invalid(field, value, "a number (schedules go in `schedule`)", TypeError)
    try:
        array = jnp.asarray(value, jnp.float32)
    except TypeError:
        raise validation.invalid(field, value, "a number", TypeError) from None
    if array.ndim != 0:
        raise ValueError(
            f"{field} has shape {array.shape}; give a scalar and set per-member values on the "
            "batched state with set_hyperparams"
        )
    return array


def _with_signature(fn: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """`fn(**kwargs)` with an explicit keyword-only signature, as inject_hyperparams inspects it."""
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names]
    )
    return fn


def make_optimizer(
    name: str,
    *,
    learning_rate: float | jax.Array,
    schedule: str = "constant",
    schedule_kwargs: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
    clip_norm: float | jax.Array | None = None,
    clip_value: float | jax.Array | None = None,
    weight_decay: float | jax.Array = 0.0,
    **hyper: float | jax.Array,
) -> optax.GradientTransformation:
    """Optimizer `name` with every numeric hyperparameter injectable (see the module docstring).

    `weight_decay` is decoupled for 'adamw' and an L2 term on the gradient for every other
    optimizer (module docstring). `hyper` holds the optimizer's own hyperparameters (e.g. momentum,
    b1, b2, eps; rho for 'adadelta'); unknown ones
    raise ValueError listing those allowed for `name`. Clip thresholds, when given, are
    injectable too; when None, no clipping is built in. `hyper` may also hold `hypergradient`
    (>= 0, injectable): the step size is then learnt by `hypergradient_step`.
    """
    spec = OPTIMIZERS.get(name)
    hyper = dict(hyper)
    hypergradient = hyper.pop("hypergradient", None)
    if isinstance(hypergradient, (int, float)):
        validation.check_number("optimizer hyperparameter 'hypergradient'", hypergradient,
                                hparams.OPTIMIZER_EXTRAS["hypergradient"].low)
    unknown = sorted(set(hyper) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for optimizer {name!r}; allowed: {sorted(spec.defaults)} "
            "and hypergradient"
        )
    multiplier = make_schedule(schedule, schedule_kwargs, total_steps)

    values = {"learning_rate": learning_rate, "weight_decay": weight_decay}
    values |= {key: hyper.get(key, default) for key, default in spec.defaults.items()}
    if clip_value is not None:
        values["clip_value"] = clip_value
    if clip_norm is not None:
        values["clip_norm"] = clip_norm
    if hypergradient is not None:
        values["hypergradient"] = hypergradient
    values = {key: _as_hyperparameter(key, value) for key, value in values.items()}
    direction_names = list(spec.defaults)

    def build(**hps: jax.Array) -> optax.GradientTransformation:
        clipping = []
        if "clip_value" in hps:
            clipping.append(optax.clip(hps["clip_value"]))
        if "clip_norm" in hps:
            clipping.append(optax.clip_by_global_norm(hps["clip_norm"]))
        decay = optax.add_decayed_weights(hps["weight_decay"])
        chain = optax.chain(
            *clipping,
            *([] if spec.decoupled_weight_decay else [decay]),
            spec.direction(**{key: hps[key] for key in direction_names}),
            *([decay] if spec.decoupled_weight_decay else []),
            optax.scale_by_schedule(multiplier),
            optax.scale(-hps["learning_rate"]),
        )
        if "hypergradient" not in hps:
            return chain
        return hypergradient_step(chain, hps["hypergradient"], hps["learning_rate"])

    injectable = optax.inject_hyperparams(
        _with_signature(build, list(values)), hyperparam_dtype=jnp.float32
    )
    return injectable(**values)


# ---------------------------------------------------------------------------------------------
# Reading and writing hyperparameters in (possibly chained, possibly batched) optimizer states.

_INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def _is_inject_state(node: Any) -> bool:
    return isinstance(node, _INJECT_STATES)


def _inject_state(opt_state: Any) -> Any:
    found = [
        node
        for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_inject_state)
        if _is_inject_state(node)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one inject_hyperparams state in opt_state, found {len(found)}; "
            "build the optimizer with make_optimizer"
        )
    return found[0]


def get_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """The hyperparameters stored in `opt_state` (shape (P,) each for a batched population)."""
    return dict(_inject_state(opt_state).hyperparams)


def set_hyperparams(opt_state: Any, **values: float | jax.Array) -> Any:
    """A copy of `opt_state` with the named hyperparameters replaced.

    Each value is broadcast to the stored shape and dtype (a scalar sets every member; a (P,)
    array sets one value per member of a batched state), so jit caches stay valid.
    """
    current = _inject_state(opt_state).hyperparams
    unknown = sorted(set(values) - set(current))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; known: {sorted(current)}")
    updated = dict(current)
    for key, value in values.items():
        old = current[key]
        new = jnp.asarray(value, old.dtype)
        try:
            updated[key] = jnp.broadcast_to(new, old.shape)
        except ValueError:
            raise ValueError(
                f"hyperparameter {key!r}: value of shape {new.shape} does not fit "
                f"the stored shape {old.shape}"
            ) from None

    def replace(node: Any) -> Any:
        return node._replace(hyperparams=updated) if _is_inject_state(node) else node

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_inject_state)
