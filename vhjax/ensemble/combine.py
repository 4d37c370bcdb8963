"""Combination rules: pure functions of member probabilities `(M, N, C)` (and labels).

Every rule maps the members' class probabilities on N examples to ensemble probabilities
`(N, C)`. Rules with parameters have a `fit_*` function that learns them on held-out
(validation) predictions and returns plain arrays:

- `average` / `soft_vote`: the mean of the members' probabilities (soft voting = argmax of it).
- `weighted_average` with weights on the simplex; `fit_weights` minimises validation NLL.
- `caruana_selection`: greedy forward selection with replacement (Caruana et al. 2004,
  "Ensemble Selection from Libraries of Models"), weights = selection counts.
- `majority_vote`: each member votes for its top class, optionally with weights (SAMME uses the
  boosting weights alpha); returns vote shares.
- stacking: `fit_stacking` trains a meta-learner (multinomial logistic regression on the members'
  log-probabilities) on held-out predictions; `stacking_predict` applies it. Stacking is a learned
  combiner of the members' outputs, not a chain of models.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import calibration, validation

RULES = ("average", "weighted", "caruana", "vote", "stacking")


def check_member_probs(probs: Any, name: str = "member_probs") -> np.ndarray:
    """(M, N, C) probabilities as an array; ValueError naming `name` for an empty ensemble,
    members with different class counts or example counts, or rows that are not probabilities."""
    if isinstance(probs, (list, tuple)):
        if not probs:
            raise ValueError(f"{name} is empty; allowed: at least one member's (N, C) probabilities")
        shapes = [tuple(np.shape(p)) for p in probs]
        classes = sorted({s[-1] for s in shapes if s})
        if len(classes) > 1:
            raise ValueError(f"{name}: members have different class counts {classes} (shapes {shapes}); "
                             "allowed: every member predicts the same classes")
        if len(set(shapes)) > 1:
            raise ValueError(f"{name}: members have different shapes {shapes}; allowed: equal (N, C)")
        probs = np.stack([np.asarray(p) for p in probs])
    array = np.asarray(probs)
    if array.ndim == 3 and array.shape[0] == 0:
        raise ValueError(f"{name} has shape {array.shape}: no members; allowed: M >= 1")
    if array.ndim == 3 and not np.all(np.isfinite(array)):
        bad = np.nonzero(~np.isfinite(array).all(axis=(1, 2)))[0].tolist()
        raise ValueError(f"{name}: members {bad} have non-finite probabilities (diverged); drop them first")
    return calibration.check_probabilities(name, array, ndim=3)


def check_labels(labels: Any, examples: int, classes: int, name: str = "labels") -> np.ndarray:
    """Integer labels (N,) in [0, classes), one per example of the member probabilities."""
    array = np.asarray(labels)
    if array.shape != (examples,):
        raise ValueError(f"{name} has shape {array.shape}; allowed: one label per example, shape ({examples},)")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= classes):
        raise ValueError(f"{name} has values in [{array.min()}, {array.max()}] ({array.dtype}); allowed: integers "
                         f"in [0, {classes - 1}]")
    return array.astype(np.int32)


def pool_members(member_probs: jax.Array, candidate_of: Any, count: int) -> jax.Array:
    """(count, N, C): the mean probabilities of the members of each candidate (`candidate_of[m]`
    is member m's candidate), e.g. the K fold models of a k-fold candidate."""
    index = jnp.asarray(candidate_of, jnp.int32)
    sums = jax.ops.segment_sum(member_probs, index, num_segments=count)
    sizes = jax.ops.segment_sum(jnp.ones(index.shape, member_probs.dtype), index, num_segments=count)
    return sums / sizes[:, None, None]


def check_weights(weights: Any, size: int, name: str = "weights", *, normalized: bool = True) -> np.ndarray:
    """Weights as a float array of `size` non-negative values that (if `normalized`) sum to one."""
    w = np.asarray(weights, np.float64)
    if w.shape != (size,):
        raise ValueError(f"{name} has shape {w.shape}; allowed: one weight per member, shape ({size},)")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} has value {w.tolist()}; allowed: finite non-negative weights")
    if normalized and not np.isclose(w.sum(), 1.0, atol=1e-5):
        raise ValueError(f"{name} has value {w.tolist()} summing to {w.sum():.6g}; allowed: weights summing to 1 "
                         "(divide by their sum)")
    if not normalized and w.sum() <= 0:
        raise ValueError(f"{name} has value {w.tolist()}; allowed: at least one positive weight")
    return w


def average(member_probs: jax.Array) -> jax.Array:
    """Mean of the members' probabilities (N, C)."""
    return jnp.mean(member_probs, axis=0)


soft_vote = average


def weighted_average(member_probs: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_m weights[m] * probs[m]; `weights` on the simplex (see `check_weights`)."""
    return jnp.tensordot(jnp.asarray(weights, member_probs.dtype), member_probs, axes=1)


def majority_vote(member_probs: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Vote shares (N, C): the (weighted) fraction of members whose top class is c.

    Ties are broken toward the class with the higher mean probability (a 1e-6 nudge), so the
    argmax is well defined. The shares are not calibrated probabilities.
    """
    m, _, c = member_probs.shape
    w = jnp.full((m,), 1.0 / m) if weights is None else jnp.asarray(weights, jnp.float32) / jnp.sum(weights)
    votes = jax.nn.one_hot(jnp.argmax(member_probs, axis=-1), c)
    shares = jnp.tensordot(w, votes, axes=1)
    shares = shares + 1e-6 * jnp.mean(member_probs, axis=0)
    return shares / jnp.sum(shares, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _fitted_weights(probs: jax.Array, labels: jax.Array, steps: int, learning_rate: float) -> jax.Array:
    """softmax of the logits after `steps` Adam steps on the validation NLL of `weighted_average`."""
    optimizer = optax.adam(learning_rate)

    def loss(logits):
        return calibration.nll(weighted_average(probs, jax.nn.softmax(logits)), labels)

    def step(carry, _):
        logits, state = carry
        updates, state = optimizer.update(jax.grad(loss)(logits), state)
        return (optax.apply_updates(logits, updates), state), None

    start = jnp.zeros(probs.shape[0])
    (logits, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
    return jax.nn.softmax(logits)


def fit_weights(member_probs: Any, labels: Any, *, steps: int = 500, learning_rate: float = 0.05) -> np.ndarray:
    """Simplex weights (M,) minimising the validation NLL of `weighted_average` (softmax-parametrised, Adam)."""
    probs = jnp.asarray(check_member_probs(member_probs))
    labels = jnp.asarray(labels, jnp.int32)
    weights = np.asarray(_fitted_weights(probs, labels, int(steps), float(learning_rate)), np.float64)
    return weights / weights.sum()


def _score(probs: jax.Array, labels: jax.Array, metric: str) -> jax.Array:
    """Lower is better."""
    if metric == "nll":
        return calibration.nll(probs, labels)
    return 1.0 - jnp.mean(jnp.argmax(probs, axis=-1) == labels)


@functools.partial(jax.jit, static_argnames="metric")
def _scores_each(member_probs: jax.Array, labels: jax.Array, metric: str) -> jax.Array:
    """`_score` of each of (M, N, C) probabilities: (M,)."""
    return jax.vmap(lambda probs: _score(probs, labels, metric))(member_probs)


def caruana_selection(member_probs: Any, labels: Any, *, rounds: int = 25, metric: str = "nll"
                      ) -> tuple[np.ndarray, list[float]]:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on validation predictions.

    Starts from the best single member, then `rounds` times adds (again, if it helps most) the member
    whose inclusion gives the lowest validation `metric` ('nll' or 'error'). Returns the weights
    (selection counts / total) of the best ensemble met along the way, and the validation score
    after each round (index 0 = best single member). As the best member is the starting point,
    the result is never worse than the best member on the validation data.
    """
    validation.check_choice("metric", metric, ("nll", "error"))
    validation.check_int("rounds", rounds, minimum=0)
    probs = jnp.asarray(check_member_probs(member_probs))
    labels = jnp.asarray(labels, jnp.int32)
    singles = np.asarray(_scores_each(probs, labels, metric))
    counts = np.zeros(probs.shape[0], np.int64)
    counts[int(np.argmin(singles))] = 1
    total = probs[int(np.argmin(singles))]
    history = [float(singles.min())]
    best_counts, best_score = counts.copy(), history[0]
    for _ in range(rounds):
        k = counts.sum()
        candidates = (total[None] * k + probs) / (k + 1)  # the ensemble with each member added once more
        scores = np.asarray(_scores_each(candidates, labels, metric))
        choice = int(np.argmin(scores))
        counts[choice] += 1
        total = candidates[choice]
        history.append(float(scores[choice]))
        if scores[choice] < best_score - 1e-9:
            best_score, best_counts = float(scores[choice]), counts.copy()
    return best_counts / best_counts.sum(), history


def stacking_features(member_probs: jax.Array) -> jax.Array:
    """(N, M*C) meta-features: the members' log-probabilities side by side."""
    logp = jnp.log(jnp.clip(member_probs, 1e-7, 1.0))
    return jnp.transpose(logp, (1, 0, 2)).reshape(member_probs.shape[1], -1)


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _stacking_fit(features, labels, mask, l2, start, steps: int, learning_rate: float) -> dict:
    """Meta-learner fit on the rows where `mask` is 1 (k-fold CV uses masks, so one program serves
    every fold and every l2, vmapped)."""
    optimizer = optax.adam(learning_rate)
    params = {"kernel": start, "bias": jnp.zeros(start.shape[1])}

    def loss(p):
        logits = features @ p["kernel"] + p["bias"]
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.sum(mask * per_example) / jnp.sum(mask) + l2 * jnp.sum((p["kernel"] - start) ** 2)

    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(jax.grad(loss)(p), state)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params


_stacking_program = jax.jit(_stacking_fit, static_argnames=("steps", "learning_rate"))


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _stacking_cv_losses(features, labels, train_masks, l2_values, start, steps: int, learning_rate: float):
    """Mean held-out NLL over the folds (`train_masks`, one row per fold) of each l2 value, in one program."""
    def held_out_loss(l2_value, mask):
        p = _stacking_fit(features, labels, mask, l2_value, start, steps, learning_rate)
        per_example = optax.softmax_cross_entropy_with_integer_labels(features @ p["kernel"] + p["bias"], labels)
        return jnp.sum((1 - mask) * per_example) / jnp.sum(1 - mask)

    return jax.vmap(lambda value: jax.vmap(lambda mask: held_out_loss(value, mask))(train_masks).mean())(l2_values)


def fit_stacking(member_probs: Any, labels: Any, *, l2: float | Sequence[float] | None = None, folds: int = 5,
                 steps: int = 500, learning_rate: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """A multinomial logistic-regression meta-learner on held-out member predictions.

    Fit it on predictions the members did not train on (a validation split, or out-of-fold
    predictions from k-fold training). It starts at the plain average of log-probabilities (kernel =
    stacked identities / M) and `l2` penalises the kernel's distance from that start: a large `l2`
    keeps the average, a small one lets the M*C*C weights fit freely. `l2=None` (default) picks it
    from `L2_GRID` by `folds`-fold cross-validated NLL on the held-out data (every fold and value in
    one vmapped program), then refits on all of it; a sequence is used as the grid. The chosen value
    is returned as `meta['l2']`. Full-batch Adam: log-probability features reach -16, so a learning
    rate above ~0.01 oscillates for large `l2` (measured on MNIST-1D members).
    """
    probs = jnp.asarray(check_member_probs(member_probs))
    grid = L2_GRID if l2 is None else tuple(np.atleast_1d(np.asarray(l2, np.float64)).tolist())
    if not grid or any(not (v >= 0) for v in grid):
        raise ValueError(f"l2 has value {l2!r}; allowed: a non-negative float, a list of them, or None")
    m, n, c = probs.shape
    labels = jnp.asarray(check_labels(labels, n, c))
    features = stacking_features(probs)
    start = jnp.tile(jnp.eye(c), (m, 1)) / m
    settings = {"steps": int(steps), "learning_rate": float(learning_rate)}
    chosen = grid[0]
    if len(grid) > 1:
        if not isinstance(folds, int) or not 2 <= folds <= n:
            raise ValueError(f"folds has value {folds!r}; allowed: an integer in [2, {n}]")
        fold_of = np.random.default_rng(seed).permutation(n) % folds
        train_masks = jnp.asarray(np.stack([fold_of != f for f in range(folds)]), jnp.float32)
        losses = np.asarray(_stacking_cv_losses(features, labels, train_masks, jnp.asarray(grid, jnp.float32), start,
                                                **settings))
        chosen = grid[int(np.argmin(losses))]
    params = _stacking_program(features, labels, jnp.ones(n), jnp.float32(chosen), start, **settings)
    return {**jax.tree.map(np.asarray, params), "l2": np.float64(chosen)}


def stacking_predict(meta: dict, member_probs: jax.Array) -> jax.Array:
    """Ensemble probabilities from a `fit_stacking` meta-learner."""
    return jax.nn.softmax(stacking_features(member_probs) @ meta["kernel"] + meta["bias"], axis=-1)


def combine_probs(rule: str, member_probs: jax.Array, weights: Any = None, meta: dict | None = None) -> jax.Array:
    """Ensemble probabilities by rule name (see `RULES`)."""
    if rule == "average":
        return average(member_probs)
    if rule in ("weighted", "caruana"):
        return weighted_average(member_probs, weights)
    if rule == "vote":
        return majority_vote(member_probs, weights)
    if rule == "stacking":
        return stacking_predict(meta, member_probs)
    raise validation.invalid("rule", rule, "one of " + ", ".join(map(repr, RULES)))


@functools.partial(jax.jit, static_argnames="names")
def _member_scores(probs: jax.Array, labels: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    scores = {"accuracy": lambda: jnp.mean(jnp.argmax(probs, -1) == labels[None], axis=1),
              "nll": lambda: jax.vmap(calibration.nll, (0, None))(probs, labels),
              "ece": lambda: jax.vmap(calibration.ece, (0, None))(probs, labels)}
    return {name: scores[name]() for name in names if name in scores}


def member_scores(member_probs: Any, labels: Any, names: Sequence[str] = ("accuracy", "nll", "ece")) -> dict:
    """Per-member metrics (M,) as NumPy arrays (of the names among accuracy, nll and ece)."""
    probs = jnp.asarray(check_member_probs(member_probs))
    labels = jnp.asarray(labels, jnp.int32)
    return {name: np.asarray(value) for name, value in _member_scores(probs, labels, tuple(names)).items()}
