"""Ensembles trained in one program: bagging, boosting (SAMME), snapshot ensembles, adversarial training
with a per-member epsilon, and deep ensembles.

Deep ensembles need no new engine: `fit_population` gives every member its own initialisation key,
so P members with identical hyperparameters are a deep ensemble (`deep_ensemble`).

The others need per-member data (a bootstrap sample, boosting weights), a cyclic schedule with
snapshots, or an attack inside the step, which `fit_population` does not take today. They run on
`train_members`, a small vmapped optax loop written here: one member's step on one batch,
`jax.vmap` over members, `lax.scan` over steps, one compilation per (model, options). It is a plain
classifier loop (Adam or SGD with momentum, cross-entropy, optional dropout and decoupled weight
decay); models with batch statistics update them in train mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import validation
from vhjax.ensemble.members import MemberGroup
from vhjax.ensemble.model import Ensemble
from vhjax.inspect import attacks


@dataclasses.dataclass
class Trained:
    """A trained group, its snapshots (one stacked variables tree per snapshot step) and the loss
    per logged step (steps // log_every, M)."""

    group: MemberGroup
    snapshots: list[dict]
    loss: np.ndarray


def _positive_int(name: str, value: Any) -> None:
    validation.check_int(name, value, minimum=1)


def _per_member(name: str, value: Any, size: int, *, minimum: float = 0.0, strict: bool = False) -> jnp.ndarray:
    array = np.broadcast_to(np.asarray(value, np.float64), (size,)) if np.ndim(value) == 0 else np.asarray(value)
    if array.shape != (size,):
        raise ValueError(f"{name} has shape {np.shape(value)}; allowed: a scalar or one value per member ({size},)")
    bad = ~np.isfinite(array) | (array <= minimum if strict else array < minimum)
    if np.any(bad):
        i = int(np.argmax(bad))
        op = ">" if strict else ">="
        raise ValueError(f"{name} has value {float(array[i])!r} at member {i}; allowed: finite values {op} {minimum}")
    return jnp.asarray(array, jnp.float32)


@functools.lru_cache(maxsize=None)
def cosine_cycles(steps_per_cycle: int) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate multiplier of snapshot ensembles (Huang et al. 2017): cosine from 1 to 0 in each cycle."""
    _positive_int("steps_per_cycle", steps_per_cycle)
    return lambda step: 0.5 * (1.0 + jnp.cos(jnp.pi * (step % steps_per_cycle) / steps_per_cycle))


def train_members(model: Any, x: Any, y: Any, *, size: int, key: jax.Array, steps: int, batch_size: int = 100,
                  learning_rate: Any = 1e-2, optimizer: str = "adam", momentum: float = 0.9, weight_decay: Any = 0.0,
                  dropout_rate: Any = 0.0, index_tables: Any = None, example_weights: Any = None,
                  epsilon: Any = None, attack: str = "fgsm", norm: str = "linf", attack_steps: int = 5,
                  schedule: Callable | None = None, snapshot_steps: Sequence[int] = (), log_every: int = 50,
                  names: Sequence[str] | None = None, model_spec: dict | None = None) -> Trained:
    """Train `size` members of `model` on (x, y), vmapped, and return them as a MemberGroup.

    Per member (scalar or (M,)): `learning_rate`, `weight_decay`, `dropout_rate`, `epsilon`.
    Data per member: `index_tables` (M, K) draws each member's batches from its own rows (bagging);
    `example_weights` (M, N) draws them with those probabilities (boosting by resampling); else
    uniformly. `epsilon`: adversarial training on FGSM (`attack='fgsm'`) or PGD examples of that
    budget under `norm` (0 = clean training). `schedule(step)` multiplies the learning rate;
    `snapshot_steps` keeps copies of the members' variables after those steps. Everything is
    checked before compiling.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    _positive_int("size", size)
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("log_every", log_every)
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape}; allowed: ({n},) labels for x of shape {x.shape}")
    if batch_size > n:
        raise ValueError(f"batch_size has value {batch_size}; allowed: at most the {n} training examples")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer has value {optimizer!r}; allowed: 'adam', 'sgd'")
    lr = _per_member("learning_rate", learning_rate, size, strict=True)
    wd = _per_member("weight_decay", weight_decay, size)
    rate = _per_member("dropout_rate", dropout_rate, size)
    if np.any(np.asarray(rate) >= 1):
        raise ValueError(f"dropout_rate has value {np.asarray(rate).tolist()}; allowed: [0, 1)")
    eps = None if epsilon is None else _per_member("epsilon", epsilon, size)
    if eps is not None:
        attacks.check_norm(norm)
        if attack not in ("fgsm", "pgd"):
            raise ValueError(f"attack has value {attack!r}; allowed: 'fgsm', 'pgd'")
    if index_tables is not None and example_weights is not None:
        raise ValueError("give index_tables or example_weights, not both")
    if index_tables is not None:
        index_tables = np.asarray(index_tables)
        if index_tables.ndim != 2 or index_tables.shape[0] != size or index_tables.size == 0 \
                or index_tables.min() < 0 or index_tables.max() >= n:
            raise ValueError(f"index_tables has shape {index_tables.shape}; allowed: ({size}, K) row ids in [0, {n})")
    if example_weights is not None:
        example_weights = np.asarray(example_weights, np.float64)
        if example_weights.shape != (size, n) or np.any(example_weights < 0) \
                or not np.all(example_weights.sum(1) > 0):
            raise ValueError(f"example_weights has shape {example_weights.shape}; allowed: ({size}, {n}) "
                             "non-negative weights, each row with a positive sum")
    snapshot_steps = sorted({int(s) for s in snapshot_steps})
    if snapshot_steps and (snapshot_steps[0] < 1 or snapshot_steps[-1] > steps):
        raise ValueError(f"snapshot_steps has value {snapshot_steps}; allowed: steps in [1, {steps}]")

    base = optax.scale_by_adam() if optimizer == "adam" else optax.trace(decay=momentum)
    init_key, run_key = jax.random.split(key)
    sample = jnp.asarray(x[:1])
    variables = jax.vmap(lambda k: dict(model.init(k, sample)))(jax.random.split(init_key, size))
    params = variables.pop("params")
    model_state = variables
    opt_state = jax.vmap(base.init)(params)
    if example_weights is not None:
        sampling, table = "weights", jnp.log(jnp.asarray(example_weights / example_weights.sum(1, keepdims=True),
                                                          jnp.float32))
    elif index_tables is not None:
        sampling, table = "tables", jnp.asarray(index_tables, jnp.int32)
    else:
        sampling, table = "uniform", jnp.zeros((size, 1), jnp.int32)
    adversarial = None if eps is None else (attack, norm, int(attack_steps))
    run = _program(model, size, batch_size, optimizer, float(momentum), sampling, adversarial, schedule,
                   tuple(model_state))
    data = (jnp.asarray(x), jnp.asarray(y), table, lr, wd, rate, jnp.zeros(size) if eps is None else eps)

    keys = jax.random.split(run_key, steps)
    bounds = [0, *snapshot_steps] + ([steps] if not snapshot_steps or snapshot_steps[-1] != steps else [])
    carry = (params, model_state, opt_state)
    snapshots, losses = [], []
    # one compilation per distinct segment length (equal cycles compile once)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        carry, loss = run(carry, jnp.int32(lo), keys[lo:hi], data)
        losses.append(np.asarray(loss))
        if hi in snapshot_steps:
            snapshots.append({"params": carry[0], **carry[1]})
    loss = np.concatenate(losses)[log_every - 1::log_every] if steps >= log_every else np.concatenate(losses)[-1:]
    group = MemberGroup(model, {"params": carry[0], **carry[1]}, None, model_spec,
                        list(names) if names is not None else [str(i) for i in range(size)])
    return Trained(group, snapshots, loss)


_PROGRAMS: dict = {}


def _program(model, size, batch_size, optimizer, momentum, sampling, adversarial, schedule, state_names):
    """The jitted scan over steps for these static options, built once and reused (boosting rounds,
    seeds and datasets of equal shapes share one compilation)."""
    key = (id(model), size, batch_size, optimizer, momentum, sampling, adversarial, id(schedule), state_names)
    cached = _PROGRAMS.get(key)
    if cached is not None and cached[0] is model and cached[1] is schedule:
        return cached[2]
    base = optax.scale_by_adam() if optimizer == "adam" else optax.trace(decay=momentum)
    names = list(state_names)

    def member_step(p, ms, os, member, lr_m, wd_m, drop_m, eps_m, step, k, xs, ys, table):
        k_batch, k_drop, k_attack = jax.random.split(k, 3)
        if sampling == "weights":
            idx = jax.random.categorical(k_batch, table[member], shape=(batch_size,))
        elif sampling == "tables":
            idx = table[member, jax.random.randint(k_batch, (batch_size,), 0, table.shape[1])]
        else:
            idx = jax.random.randint(k_batch, (batch_size,), 0, xs.shape[0])
        xb, yb = xs[idx], ys[idx]
        if adversarial is not None:
            attack, norm, attack_steps = adversarial
            logits_fn = lambda inputs: model.apply({"params": p, **ms}, inputs, train=False, dropout_rate=0.0)
            if attack == "fgsm":
                xb = attacks.fgsm(logits_fn, xb, yb, eps_m, norm=norm)
            else:
                xb = attacks.pgd(logits_fn, xb, yb, eps_m, norm=norm, steps=attack_steps, key=k_attack)
            xb = jax.lax.stop_gradient(xb)

        def loss_fn(p_):
            logits, new_ms = model.apply({"params": p_, **ms}, xb, train=True, dropout_rate=drop_m,
                                         rngs={"dropout": k_drop}, mutable=names)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), dict(new_ms)

        (loss, new_ms), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, os = base.update(grads, os, p)
        scale = lr_m * (schedule(step) if schedule is not None else 1.0)
        p = jax.tree.map(lambda w, u: w - scale * (u + wd_m * w), p, updates)
        return p, new_ms, os, loss

    step_all = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None, 0, None, None, None))

    @jax.jit
    def run(carry, start, keys, data):
        xs, ys, table, lr, wd, rate, eps = data

        def body(carry, inputs):
            p, ms, os = carry
            step, k = inputs
            p, ms, os, loss = step_all(p, ms, os, jnp.arange(size), lr, wd, rate, eps, step,
                                       jax.random.split(k, size), xs, ys, table)
            return (p, ms, os), loss

        return jax.lax.scan(body, carry, (start + jnp.arange(keys.shape[0]), keys))

    _PROGRAMS[key] = (model, schedule, run)
    return run


def bootstrap_tables(key: jax.Array, size: int, n: int, fraction: float = 1.0) -> np.ndarray:
    """(size, round(fraction * n)) row ids drawn with replacement: one bootstrap sample per member."""
    _positive_int("size", size)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction has value {fraction!r}; allowed: (0, 1]")
    return np.asarray(jax.random.randint(key, (size, max(1, round(fraction * n))), 0, n))


def bagging(model: Any, x: Any, y: Any, *, size: int, key: jax.Array, fraction: float = 1.0,
            **train_options: Any) -> Ensemble:
    """Bagging (Breiman 1996): each member trains on its own bootstrap sample; predictions averaged."""
    k_tables, k_train = jax.random.split(key)
    tables = bootstrap_tables(k_tables, size, len(np.asarray(y)), fraction)
    trained = train_members(model, x, y, size=size, key=k_train, index_tables=tables, **train_options)
    return Ensemble([trained.group])


def boosting(model: Any, x: Any, y: Any, *, rounds: int, key: jax.Array, num_classes: int | None = None,
             **train_options: Any) -> tuple[Ensemble, dict]:
    """Multi-class AdaBoost, SAMME (Zhu et al. 2009), by resampling: round t trains a member on
    batches drawn with the current example weights w; with weighted error err,
    alpha = log((1 - err) / err) + log(K - 1); w *= exp(alpha * [misclassified]), renormalised.

    Stops early when a member is no better than chance (err >= 1 - 1/K) or perfect. The ensemble is
    the alpha-weighted vote (`rule='vote'`). Returns (ensemble, {'alpha', 'error'} per round kept).
    """
    _positive_int("rounds", rounds)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    k = int(num_classes or (y.max() + 1))
    n = len(y)
    w = np.full(n, 1.0 / n)
    groups, alphas, errors = [], [], []
    for t, round_key in enumerate(jax.random.split(key, rounds)):
        trained = train_members(model, x, y, size=1, key=round_key, example_weights=w[None], names=[f"round{t}"],
                                **train_options)
        logits = model.apply(trained.group.member(0), jnp.asarray(x), train=False, dropout_rate=0.0)
        miss = np.asarray(jnp.argmax(logits, -1)) != y
        err = float(np.sum(w * miss))
        if err >= 1.0 - 1.0 / k:
            break  # no better than chance: SAMME discards it and stops
        err = max(err, 1e-10)
        alpha = math.log((1 - err) / err) + math.log(k - 1)
        groups.append(trained.group)
        alphas.append(alpha)
        errors.append(err)
        if err <= 1e-10:
            break
        w = w * np.exp(alpha * miss)
        w = w / w.sum()
    if not groups:
        raise ValueError("boosting: the first member is no better than chance; nothing to ensemble")
    variables = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *[g.variables for g in groups])
    group = MemberGroup(model, variables, None, groups[0].model_spec, [g.names[0] for g in groups])
    return Ensemble([group], rule="vote", weights=np.asarray(alphas)), {"alpha": alphas, "error": errors}


def snapshot_ensemble(model: Any, x: Any, y: Any, *, cycles: int, steps_per_cycle: int, key: jax.Array,
                      size: int = 1, **train_options: Any) -> tuple[Ensemble, Trained]:
    """Snapshot ensemble (Huang et al. 2017): one run with a cyclic cosine learning rate; the
    members are the weights at the end of every cycle (`size` runs give size * cycles members)."""
    _positive_int("cycles", cycles)
    trained = train_members(model, x, y, size=size, key=key, steps=cycles * steps_per_cycle,
                            schedule=cosine_cycles(steps_per_cycle),
                            snapshot_steps=[c * steps_per_cycle for c in range(1, cycles + 1)], **train_options)
    variables = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trained.snapshots)
    names = [f"run{r}/cycle{c + 1}" for c in range(cycles) for r in range(size)]
    return Ensemble([MemberGroup(model, variables, None, trained.group.model_spec, names)]), trained


def adversarial_training(model: Any, x: Any, y: Any, *, epsilons: Sequence[float], key: jax.Array,
                         **train_options: Any) -> Trained:
    """A population over epsilon: member i trains on adversarial examples of budget epsilons[i]."""
    eps = np.asarray(epsilons, np.float64)
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"epsilons has value {np.asarray(epsilons).tolist()}; allowed: a non-empty list of budgets")
    return train_members(model, x, y, size=len(eps), key=key, epsilon=eps,
                         names=[f"eps={e:g}" for e in eps], **train_options)


def deep_ensemble(config: Any, size: int, workdir: Any = None, *, member: dict | None = None,
                  same_batches: bool = False, verbose: bool = False) -> tuple[Ensemble, Any]:
    """`size` members with identical hyperparameters trained by `fit_population` (each has its own
    initialisation key; with `same_batches=False` also its own data order): a deep ensemble
    (Lakshminarayanan et al. 2017). Returns (ensemble, population result)."""
    from vhjax.population import fit_population

    _positive_int("size", size)
    result = fit_population(config, [dict(member or {}) for _ in range(size)], workdir,
                            same_batches=same_batches, verbose=verbose)
    return Ensemble.from_population(result, config), result
