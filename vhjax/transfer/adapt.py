"""Unsupervised domain adaptation: a population of members, one method each, in one program per bucket.

    result = adapt(config, [                       # config: the labelled source data and the model
        {"seed": s, **method} for s in range(3) for method in (
            {},                                    # source only (every adaptation weight 0)
            {"reweight": 1.0},                     # importance reweighting by a domain classifier
            {"resample": 1.0},                     # source batches resampled in proportion to the weights
            {"mmd_weight": 1.0}, {"coral_weight": 1.0},
            {"dann_weight": 1.0},                  # gradient reversal, lambda_p = 2 / (1 + exp(-10 p)) - 1
            {"oracle": 1.0})],                     # target-supervised bound (needs target labels)
        target={"train": x_target, "test": (x_target_test, y_target_test)})
    print(result.summary())

Every step of a member sees a labelled source batch and an unlabelled target batch of the same size.
Its features are the input of the model's `feature_layer` (default `"head"`, the last Dense of
vhjax's classifiers: the penultimate representation), captured with `flax.linen.intercept_methods`,
so any model with such a submodule works unchanged. Per member, the objective is

    (1 - o) * mean_i(w_i * loss(source_i)) + o * mean(loss(target))          # o = oracle
      + mmd_weight * MMD^2(f_s, f_t) + coral_weight * CORAL(f_s, f_t)
      + BCE(D(GRL_lambda(f_s)), 0) + BCE(D(GRL_lambda(f_t)), 1)              # the domain discriminator

with `w_i = 1 + reweight * (weight_i - 1)`, the importance weights `weight_i` = p(target | x) /
p(source | x) of a logistic-regression domain classifier on the flattened inputs, clipped at
`weight_clip` and normalised to mean 1 (computed once, on the host). `resample` = 1 draws the source
batch with probability proportional to the weights instead (unweighted loss). The discriminator
D (an MLP, its own Adam) always learns to tell the domains apart; the gradient-reversal layer GRL
passes `-lambda` times its gradient to the features, lambda = dann_weight * lambda_p (DANN, Ganin et
al. 2016) or dann_weight when `dann_schedule` = 0. A member whose weights are all 0 trains exactly as
`fit_population` would (the discriminator learns, but its reversed gradient is multiplied by 0).
The oracle member (o = 1) trains on the labelled target batches instead of the source ones, in the
same program; BatchNorm statistics follow the source batches, the oracle's the target ones.

All adaptation values are per-member hyperparameters, so members comparing methods share one
compiled program. ADDA (a separate target encoder trained adversarially after a source model, in
stages) is `adda`, run on the source-only members of an `adapt` result; its stage 2 is a member step
(`adda_step`) run by the same engine. The hooks (early stopping, best-model keeping) see the source
eval split only. Without target labels, `select_member` picks a member by its DEV (or IWCV) estimate
of the target risk: source eval losses weighted by a density ratio (IWCV: the input-space domain
classifier's; DEV: a logistic-regression domain classifier per member on that member's features).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import metrics, optim, parallel, privacy
from vhjax.batching import map_in_batches
from vhjax.compile_options import light_jit
from vhjax.config import SECTIONS, TrainConfig
from vhjax.memo import Memo
from vhjax.population.engine import PopulationRunner
from vhjax.population.fit import (BucketProgram, PopulationResult, bucket_seeds, bucket_task, bucket_tasks,
                                  fit_population, with_config_loss_weights)
from vhjax.population.members import classifier_runner, mesh_layout, population_batch_indices
from vhjax.population.state import PopulationState
from vhjax.train.state import TrainState
from vhjax.train.step import apply_gradients, apply_model, chunk_batch_indices, per_example_loss, with_penalty
from vhjax.train.task import Task, preprocess_inputs
from vhjax.train.workdir import content_digest, record_inputs
from vhjax.transfer.distill import predict
from vhjax.validation import check_choice, check_number, invalid

WEIGHT_FIELDS = ("mmd_weight", "coral_weight", "dann_weight")  # >= 0
FRACTION_FIELDS = ("reweight", "oracle")  # in [0, 1]
CHOICE_FIELDS = ("resample", "dann_schedule")  # 0 or 1
ADAPT_FIELDS = (*WEIGHT_FIELDS, *FRACTION_FIELDS, *CHOICE_FIELDS)
DEFAULTS = {"mmd_weight": 0.0, "coral_weight": 0.0, "dann_weight": 0.0, "reweight": 0.0, "oracle": 0.0,
            "resample": 0.0, "dann_schedule": 1.0}
LABEL = "adapt bucket {number}/{buckets} ({model}, {size} members) | "
ADDA_LABEL = "ADDA bucket {number}/{buckets} ({model}, {size} members) | "


# ----------------------------------------------------------------------------- the losses


@jax.custom_vjp
def reverse_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
    """The gradient-reversal layer: identity forward, `-scale` times the gradient backward."""
    return x


def _reverse_forward(x, scale):
    return x, scale


def _reverse_backward(scale, gradient):
    return -scale * gradient, jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_forward, _reverse_backward)


def dann_lambda(progress: jax.Array) -> jax.Array:
    """DANN's schedule of the reversal coefficient, 2 / (1 + exp(-10 p)) - 1, p = step / steps in [0, 1]."""
    return 2.0 / (1.0 + jnp.exp(-10.0 * progress)) - 1.0


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T, 0.0)


def mmd_loss(source: jax.Array, target: jax.Array, scales: Sequence[float] = (0.5, 1.0, 2.0)) -> jax.Array:
    """Biased MMD^2 between two feature batches (N, D) with a sum of Gaussian kernels whose bandwidths
    are `scales` times the mean pairwise squared distance of the pooled batch (not differentiated)."""
    pooled = jnp.concatenate([source, target])
    distances = squared_distances(pooled, pooled)
    bandwidth = jax.lax.stop_gradient(distances.mean()) + 1e-6
    kernel = sum(jnp.exp(-distances / (scale * bandwidth)) for scale in scales)
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()


def covariance(features: jax.Array) -> jax.Array:
    centred = features - features.mean(0)
    return centred.T @ centred / (features.shape[0] - 1)


def coral_loss(source: jax.Array, target: jax.Array) -> jax.Array:
    """Deep CORAL (Sun & Saenko 2016): ||C_s - C_t||_F^2 / (4 d^2) of the feature covariances."""
    d = source.shape[-1]
    return jnp.sum(jnp.square(covariance(source) - covariance(target))) / (4.0 * d * d)


class Discriminator(nn.Module):
    """The domain discriminator: ReLU Dense layers of `widths`, then one logit (target vs source)."""

    widths: Sequence[int] = (32,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(1)(x)[:, 0]


# ----------------------------------------------------------------------------- importance weights


def domain_classifier(source_x: np.ndarray, target_x: np.ndarray, seed: int = 0) -> Any:
    """A logistic-regression domain classifier (source 0, target 1) fitted on the flattened, standardised
    inputs (an sklearn pipeline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = flatten(source_x), flatten(target_x)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    classifier.fit(np.concatenate([xs, xt]), np.r_[np.zeros(len(xs)), np.ones(len(xt))])
    return classifier


def flatten(x: np.ndarray) -> np.ndarray:
    return np.reshape(x, (len(x), -1))


def density_ratio(classifier: Any, x: np.ndarray, source_size: int, target_size: int, clip: float) -> np.ndarray:
    """p(target | x) / p(source | x) * n_s / n_t (an estimate of p_target(x) / p_source(x)), clipped at `clip`."""
    p = np.clip(classifier.predict_proba(flatten(x))[:, 1], 1e-6, 1 - 1e-6)
    return np.minimum(p / (1 - p) * source_size / target_size, clip)


def domain_weights(source_x: np.ndarray, target_x: np.ndarray, clip: float = 10.0, seed: int = 0) -> np.ndarray:
    """Importance weights p(target | x) / p(source | x) * n_s / n_t of the source examples from a
    logistic-regression domain classifier on the flattened, standardised inputs; clipped at `clip`
    and normalised to mean 1."""
    classifier = domain_classifier(source_x, target_x, seed)
    weights = density_ratio(classifier, source_x, len(source_x), len(target_x), clip)
    return (weights / weights.mean()).astype(np.float32)


# ----------------------------------------------------------------------------- checks (before compiling)


def split_adapt_member(index: int, member: Mapping[str, Any]) -> tuple[dict, dict]:
    """(the member's adaptation values, its other config fields); raises on a value out of range."""
    if not isinstance(member, Mapping):
        raise invalid(f"member {index}", member, "a dict of config fields and " + ", ".join(ADAPT_FIELDS))
    values = {**DEFAULTS, **{k: member[k] for k in ADAPT_FIELDS if k in member}}
    for name in WEIGHT_FIELDS:
        check_number(f"member {index}: field {name!r}", values[name], 0.0)
    for name in FRACTION_FIELDS:
        check_number(f"member {index}: field {name!r}", values[name], 0.0, 1.0)
    for name in CHOICE_FIELDS:
        check_choice(f"member {index}: field {name!r}", values[name], (0, 1))
    if values["resample"] and values["reweight"]:
        raise invalid(f"member {index}: field 'reweight'", values["reweight"], "0 when 'resample' is 1 (resampling "
                      "and reweighting are two ways of the same correction)")
    rest = {k: v for k, v in member.items() if k not in ADAPT_FIELDS}
    if rest.get("mixing") is not None:
        raise invalid(f"member {index}: field 'mixing'", rest["mixing"], "None for domain adaptation")
    return {k: float(v) for k, v in values.items()}, rest


def as_inputs_labels(name: str, value: Any, needs_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y or None) of a target split given as x, (x,) or (x, y)."""
    if isinstance(value, (tuple, list)) and len(value) in (1, 2):
        x, y = value[0], (value[1] if len(value) == 2 else None)
    elif isinstance(value, (tuple, list)):
        raise invalid(f"target field {name!r}", f"a sequence of {len(value)} items", "inputs x, (x,) or (x, y)")
    else:
        x, y = value, None
    x = np.asarray(x, np.float32)
    if y is None and needs_labels:
        raise invalid(f"target field {name!r}", "inputs without labels", "(x, y): labels are needed here")
    if y is not None:
        y = np.asarray(y, np.int32)
        if y.shape != (len(x),):
            raise invalid(f"target field {name!r}", f"labels of shape {y.shape}", f"labels of shape ({len(x)},)")
    return x, y


def check_target(target: Any, input_shape: tuple, batch_size: int, oracle: bool, num_classes: int
                 ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """The target splits as arrays; raises on a missing split, a wrong input shape, too few examples."""
    if not isinstance(target, Mapping) or "train" not in target or "test" not in target:
        raise invalid("target", type(target).__name__ if not isinstance(target, Mapping) else sorted(target),
                      "a dict with 'train' (target inputs, unlabelled: x, or (x, y) for the oracle) and 'test' (x, y)")
    unknown = sorted(set(target) - {"train", "test"})
    if unknown:
        raise invalid("target", f"fields {unknown}", "only 'train' and 'test'")
    splits = {"train": as_inputs_labels("train", target["train"], oracle),
              "test": as_inputs_labels("test", target["test"], True)}
    for name, (x, y) in splits.items():
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise invalid(f"target field {name!r}", f"inputs of shape {x.shape}",
                          f"inputs of shape (N, {', '.join(map(str, input_shape))}), the source's")
        if y is not None and (y.min(initial=0) < 0 or y.max(initial=0) >= num_classes):
            raise invalid(f"target field {name!r}", f"labels in [{y.min()}, {y.max()}]",
                          f"labels in [0, {num_classes - 1}], the source's classes")
    if len(splits["train"][0]) < batch_size:
        raise invalid("target field 'train'", f"{len(splits['train'][0])} examples",
                      f"at least batch_size = {batch_size} (a target batch per step)")
    return splits


def target_splits(task: Task, target: Any, oracle: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """`check_target` for the task's source, then the task's preprocessing applied to the target inputs."""
    splits = check_target(target, task.train.x.shape[1:], task.config.batch_size, oracle, task.train.num_classes)
    return {k: (preprocess_inputs(task.preprocessing, x, drop_outliers=False), y) for k, (x, y) in splits.items()}


def check_widths(widths: Any) -> None:
    if isinstance(widths, int) or not all(isinstance(w, int) and w > 0 for w in widths):
        raise invalid("discriminator_widths", widths, "a sequence of positive integers")


def accuracies(task: Task, population: PopulationState, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(P,) accuracy of every member on (x, y)."""
    return (predict(task, population, jnp.asarray(x)).argmax(-1) == np.asarray(y)[None]).mean(1)


# ----------------------------------------------------------------------------- model selection without target labels

SELECTION_CRITERIA = ("dev_risk", "iwcv_risk", "reverse_risk")  # reverse_risk: `transfer.reverse_validation`


def iwcv_risk(losses: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """IWCV (Sugiyama et al. 2007): per member, the mean of its source validation losses (P, N) weighted
    by the examples' density ratios p_target(x) / p_source(x) (N,): an estimate of its target risk."""
    return np.mean(np.asarray(losses, np.float64) * np.asarray(ratios, np.float64), axis=-1)


def dev_risk(losses: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """DEV (You et al. 2019): IWCV with the density ratio as a control variate (its mean under the source
    is 1): mean(w l) + eta (mean(w) - 1), eta = -Cov(w l, w) / Var(w), per member; lower variance than IWCV.
    `ratios` is (N,), shared by the members, or (P, N), each member's own (DEV's feature-space ratios)."""
    losses, ratios = np.broadcast_arrays(np.asarray(losses, np.float64), np.asarray(ratios, np.float64))
    weighted, centred = losses * ratios, ratios - ratios.mean(-1, keepdims=True)
    n = ratios.shape[-1]
    variance = np.sum(centred**2, axis=-1) / (n - 1)
    covariance = np.sum((weighted - weighted.mean(-1, keepdims=True)) * centred, axis=-1) / (n - 1)
    eta = np.where(variance > 0, -covariance / np.where(variance > 0, variance, 1.0), 0.0)
    return weighted.mean(-1) + eta * (ratios.mean(-1) - 1.0)


def logistic_regression(x: jax.Array, labels: jax.Array, l2: float | jax.Array, iterations: int = 25) -> jax.Array:
    """(D + 1,) weights (the bias last) minimising mean BCE(x w + b, labels) + l2 / 2 * |w|^2 (the bias not
    penalised; l2 = 1 / N is scikit-learn's LogisticRegression(C=1)): Newton steps, each the best of 8
    step lengths 1, 1/2, ..., 1/128 (never worse than the previous point). Pure JAX, so it vmaps."""
    n, d = x.shape
    a = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], 1)
    penalty = jnp.concatenate([jnp.full((d,), l2, x.dtype), jnp.zeros((1,), x.dtype)])
    lengths = 0.5 ** jnp.arange(8, dtype=x.dtype)

    def objective(w):
        z = a @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - labels * z) + 0.5 * jnp.sum(penalty * w * w)

    def newton(w, _):
        p = jax.nn.sigmoid(a @ w)
        gradient = a.T @ (p - labels) / n + penalty * w
        hessian = (a.T * (p * (1 - p))) @ a / n + jnp.diag(penalty + 1e-6)
        candidates = w[None] - lengths[:, None] * jnp.linalg.solve(hessian, gradient)[None]
        values = jax.vmap(objective)(candidates)
        best = jnp.argmin(values)
        return jnp.where(values[best] < objective(w), candidates[best], w), None

    return jax.lax.scan(newton, jnp.zeros(d + 1, x.dtype), None, length=iterations)[0]


@light_jit
def _fold_ratios(source: jax.Array, fit_source: jax.Array, fit_target: jax.Array) -> jax.Array:
    """One member, one fold: p(target | f) / p(source | f) * n_s / n_t of the `source` features, from a
    logistic regression on the standardised `fit_source` (0) vs `fit_target` (1) features."""
    pooled = jnp.concatenate([fit_source, fit_target])
    mean, std = pooled.mean(0), pooled.std(0)
    scale = lambda f: (f - mean) / jnp.where(std > 1e-6, std, 1.0)
    labels = jnp.concatenate([jnp.zeros(len(fit_source)), jnp.ones(len(fit_target))])
    w = logistic_regression(scale(pooled), labels, 1.0 / len(pooled))
    logit = scale(source) @ w[:-1] + w[-1]
    return jnp.exp(jnp.clip(logit, -30.0, 30.0)) * len(fit_source) / len(fit_target)


def feature_density_ratios(source: np.ndarray, target: np.ndarray, clip: float, folds: int = 2) -> np.ndarray:
    """DEV's density ratios (P, N_s): per member, p_target(f) / p_source(f) of its source validation
    features `source` (P, N_s, D), from a logistic-regression domain classifier of its own, fitted on its
    held-out source features vs its target features `target` (P, N_t, D) (standardised; scikit-learn's
    C = 1), cross-fitted: each source example's ratio comes from the classifier of the `folds` - 1 folds
    (every `folds`-th example) it is not in. Clipped at `clip`. Vmapped over the members."""
    source, target = jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32)
    ratios = np.zeros(source.shape[:2], np.float32)
    source_fold, target_fold = np.arange(source.shape[1]) % folds, np.arange(target.shape[1]) % folds
    for fold in range(folds):
        held = source_fold == fold
        ratios[:, held] = np.asarray(jax.vmap(_fold_ratios)(source[:, held], source[:, ~held],
                                                            target[:, target_fold != fold]))
    return np.minimum(ratios, clip)


def selection_risks(task: Task, population: PopulationState, layer: str, classifier: Any, target_x: np.ndarray,
                    clip: float) -> dict[str, np.ndarray]:
    """(P,) IWCV and DEV risks of every member: its per-example loss on the labelled source eval split,
    weighted by density ratios: IWCV's from the input-space domain `classifier` (fitted on source train vs
    target train inputs, the same for every member), DEV's from each member's own domain classifier on
    its features (`layer`'s input) of the source eval vs target train inputs (`feature_density_ratios`).
    Reads no target labels."""
    x, y = task.eval.x, jnp.asarray(task.eval.y)
    ratios = density_ratio(classifier, x, len(task.train.x), len(target_x), clip)
    logits = jnp.asarray(predict(task, population, jnp.asarray(x)))
    losses = np.asarray(jax.vmap(lambda hp, out: per_example_loss(task, hp, out, y))(population.members.hparams,
                                                                                      logits))
    features = feature_density_ratios(member_features(task, population, layer, x),
                                      member_features(task, population, layer, target_x), clip)
    return {"iwcv_risk": iwcv_risk(losses, ratios), "dev_risk": dev_risk(losses, features)}


def select_member(result: "AdaptResult", criterion: str = "dev_risk") -> dict:
    """The row of `result` (of `adapt` or `adda`) with the lowest label-free `criterion` ('dev_risk' or
    'iwcv_risk') among the members that did not diverge; oracle members (trained on target labels) are
    never chosen."""
    check_choice("criterion", criterion, SELECTION_CRITERIA)
    rows = [row for row in result.rows if row.get("oracle", 0.0) == 0 and row.get("diverged_step") is None
            and np.isfinite(row[criterion])]
    if not rows:
        raise ValueError(f"result has value {len(result.rows)} rows, none selectable; allowed: at least one member "
                         f"that is not an oracle, did not diverge and has a finite {criterion}")
    return min(rows, key=lambda row: row[criterion])


# ----------------------------------------------------------------------------- features


def apply_with_features(task: Task, layer: str, params, model_state, hparams: dict, x: jax.Array, *, train: bool,
                        dropout_key: jax.Array | None = None):
    """(outputs, features (N, D), model_state): `apply_model` with the input of submodule `layer` captured."""
    captured = []

    def interceptor(next_fun, args, kwargs, context):
        scope = context.module.scope
        if context.method_name == "__call__" and scope is not None and tuple(scope.path) == (layer,):
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        outputs, model_state = apply_model(task, params, model_state, hparams, x, train=train,
                                           dropout_key=dropout_key)
    if not captured:
        raise ValueError(f"feature_layer has value {layer!r}; allowed: the name of a top-level submodule of model "
                         f"{type(task.model).__name__} (its input is taken as the features), e.g. 'head'")
    return outputs, captured[-1].reshape(x.shape[0], -1), model_state


def feature_dim(task: Task, layer: str, hparams: dict) -> int:
    """The width of the features (shapes only: nothing compiles); raises if `layer` is not found."""
    example = jax.ShapeDtypeStruct((2, *task.train.x.shape[1:]), jnp.float32)

    def features(x):
        variables = dict(task.model.init(jax.random.key(0), x))
        params = variables.pop("params")
        return apply_with_features(task, layer, params, variables, hparams, x, train=False)[1]

    return int(jax.eval_shape(features, example).shape[-1])


def member_features(task: Task, population: PopulationState, layer: str, x: np.ndarray) -> np.ndarray:
    """(P, N, D) features (`layer`'s input) of every member on `x`, evaluation mode, in eval batches
    (one program per task and layer, compiled once per input shape)."""
    features = _FEATURES.get((task,), lambda: features_program(task, layer), settings=layer)
    return np.asarray(features(population.members, jnp.asarray(x)))


def features_program(task: Task, layer: str):
    """`features(members, x (N, ...)) -> (P, N, D)` in eval batches, jitted."""

    def one(member, x):
        apply = lambda xb: apply_with_features(task, layer, member.params, member.model_state, member.hparams, xb,
                                               train=False)[1]
        out = map_in_batches(apply, x, task.config.eval_batch_size)
        return out.reshape(out.shape[0], -1)  # (N, ...) -> (N, D)

    return light_jit(jax.vmap(one, in_axes=(0, None)))


_FEATURES: Memo = Memo(4)  # per task and layer: DEV's selection after every adapt run compiles nothing new


# ----------------------------------------------------------------------------- the member step


@flax.struct.dataclass
class AdaptState(TrainState):
    """A member's `TrainState` plus its domain discriminator's parameters and optimizer state."""

    disc_params: Any = None
    disc_opt_state: Any = None


def adapt_step(task: Task, layer: str, discriminator: Discriminator, disc_optimizer: optax.GradientTransformation):
    """The member step on a batch (source x, y, weight; resampled source x, y, weight; target x, y)."""
    steps = task.config.steps

    def step(state: AdaptState, batch) -> tuple[AdaptState, dict]:
        xs, ys, ws, xr, yr, _, xt, yt = batch
        hp = state.hparams
        resample = hp["resample"] > 0.5
        x, y = jnp.where(resample, xr, xs), jnp.where(resample, yr, ys)
        weight = jnp.where(resample, 1.0, 1.0 + hp["reweight"] * (ws - 1.0))
        augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
        if task.augment_fn is not None:
            x = task.augment_fn(augment_key, x, hp["aug_strength"], hp["aug_prob"])
            xt = task.augment_fn(jax.random.fold_in(augment_key, 2), xt, hp["aug_strength"], hp["aug_prob"])
        scale = hp["dann_weight"] * jnp.where(hp["dann_schedule"] > 0.5, dann_lambda(state.step / steps), 1.0)
        oracle = hp["oracle"]

        def objective(params, disc_params):
            out_s, f_s, state_s = apply_with_features(task, layer, params, state.model_state, hp, x, train=True,
                                                      dropout_key=dropout_key)
            out_t, f_t, state_t = apply_with_features(task, layer, params, state.model_state, hp, xt, train=True,
                                                      dropout_key=jax.random.fold_in(dropout_key, 1))
            source = (per_example_loss(task, hp, out_s, y) * weight).mean()
            data = (1.0 - oracle) * source + oracle * per_example_loss(task, hp, out_t, yt).mean()
            mmd, coral = mmd_loss(f_s, f_t), coral_loss(f_s, f_t)
            loss = with_penalty(task, state, params, data + hp["mmd_weight"] * mmd + hp["coral_weight"] * coral)
            logits = discriminator.apply({"params": disc_params}, reverse_gradient(jnp.concatenate([f_s, f_t]), scale))
            domains = jnp.concatenate([jnp.zeros(len(f_s)), jnp.ones(len(f_t))])
            domain = optax.sigmoid_binary_cross_entropy(logits, domains).mean()
            model_state = jax.tree.map(lambda s, t: jnp.where(oracle > 0.5, t, s), state_s, state_t)
            aux = {"loss": loss, "data_loss": source, "accuracy": metrics.accuracy(out_s, y), "mmd": mmd,
                   "coral": coral, "domain_loss": domain}
            return loss + domain, (aux, model_state)

        (_, (step_metrics, model_state)), (grads, disc_grads) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(state.params, state.disc_params)
        new_params, opt_state = apply_gradients(task, state, grads)
        disc_updates, disc_opt_state = disc_optimizer.update(disc_grads, state.disc_opt_state, state.disc_params)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state, model_state=model_state,
                                  disc_params=optax.apply_updates(state.disc_params, disc_updates),
                                  disc_opt_state=disc_opt_state)
        return new_state, step_metrics

    return step


def target_draw(task: Task, target_size: int):
    """`draw(data_key, start, length) -> (length, batch_size)`: a member's target batches (its own
    permutations of the target inputs, from its data key folded with 1)."""
    config = task.config
    return lambda data_key, start, length: chunk_batch_indices(
        jax.random.fold_in(data_key, 1), start, length, target_size, config.batch_size, config.shuffle,
        config.drop_remainder)


def member_draws(draw, population: PopulationState, length: int) -> jax.Array:
    """`draw(data_key, start, length)` for the population: (length, ...) shared, or (length, P, ...) per member."""
    members = population.members
    if population.same_batches:
        return draw(members.data_key[0], jnp.max(members.step), length)
    return jnp.swapaxes(jax.vmap(lambda k, s: draw(k, s, length))(members.data_key, members.step), 0, 1)


def adapt_batch_indices(task: Task, target_size: int, weights: np.ndarray):
    """Per step 3 * batch_size indices: the source batch (exactly `fit_population`'s), a source batch
    drawn in proportion to `weights`, and a target batch (its own permutations)."""
    size = task.config.batch_size
    source, target = population_batch_indices(task), target_draw(task, target_size)
    probabilities = jnp.asarray(weights / weights.sum())

    def extra(data_key, start, length):
        draw = lambda s: jax.random.choice(jax.random.fold_in(jax.random.fold_in(data_key, 2), s), len(weights),
                                           (size,), p=probabilities)
        return jnp.concatenate([jax.vmap(draw)(start + jnp.arange(length)), target(data_key, start, length)], -1)

    def indices(population: PopulationState, length: int) -> jax.Array:
        return jnp.concatenate([source(population, length), member_draws(extra, population, length)], -1)

    return indices


def adapt_gather(batch_size: int):
    def gather(data, index):
        xs, ys, ws, xt, yt = data
        u, r, t = index[..., :batch_size], index[..., batch_size:2 * batch_size], index[..., 2 * batch_size:]
        return xs[u], ys[u], ws[u], xs[r], ys[r], ws[r], xt[t], yt[t]

    return gather


def adapt_runner(task: Task, layer: str, discriminator: Discriminator, disc_optimizer: optax.GradientTransformation,
                 target_size: int, weights: np.ndarray, size: int, mesh: Any = None) -> PopulationRunner:
    """The engine's chunk runner of the adaptation step for `size` members on `mesh` (None: one
    device; `classifier_runner`: the task model's compile options)."""
    return classifier_runner(task, batch_indices=adapt_batch_indices(task, target_size, weights),
                             member_step=adapt_step(task, layer, discriminator, disc_optimizer),
                             gather=adapt_gather(task.config.batch_size), **mesh_layout(mesh, size))


def with_adapt_state(population: PopulationState, values: Sequence[dict], discriminator: Discriminator,
                     disc_optimizer: optax.GradientTransformation, width: int) -> PopulationState:
    """The population's members as `AdaptState`s: adaptation values in their hparams, a discriminator each
    (initialised from the member's key folded with a constant; the member's own key is left as it is)."""
    members = population.members

    def init(key):
        params = discriminator.init(jax.random.fold_in(key, 0xDA), jnp.zeros((1, width)))["params"]
        return params, disc_optimizer.init(params)

    disc_params, disc_opt_state = light_jit(jax.vmap(init), run_once=True)(members.key)
    arrays = {name: jnp.asarray([v[name] for v in values], jnp.float32) for name in ADAPT_FIELDS}
    fields = {f.name: getattr(members, f.name) for f in dataclasses.fields(TrainState)}
    fields["hparams"] = {**members.hparams, **arrays}
    return population.replace(members=AdaptState(**fields, disc_params=disc_params, disc_opt_state=disc_opt_state))


# ----------------------------------------------------------------------------- the report


def method(values: Mapping[str, float]) -> str:
    """A member's method name: 'oracle', 'source only', or its active corrections joined by '+'."""
    if values["oracle"] > 0:
        return "oracle" if values["oracle"] == 1 else f"oracle {values['oracle']:g}"
    active = [name for name, on in (("reweight", values["reweight"] > 0), ("resample", values["resample"] > 0),
                                    ("MMD", values["mmd_weight"] > 0), ("CORAL", values["coral_weight"] > 0),
                                    ("DANN", values["dann_weight"] > 0)) if on]
    return "+".join(active) or "source only"


@dataclasses.dataclass
class AdaptResult:
    """The members (a `PopulationResult`, in the order given), one row per member, the source weights."""

    population: PopulationResult
    rows: list[dict]  # per member: method, its adaptation values, seed, source and target accuracy
    weights: np.ndarray  # importance weights of the source training examples (mean 1; the last bucket's)
    tasks: list = dataclasses.field(default_factory=list)  # per bucket: its Task
    adapted: list = dataclasses.field(default_factory=list)  # `adda` only: per bucket, the adapted members
    stage: PopulationResult | None = None  # `adda` only: stage 2's result (records, histories)
    stage_tasks: list = dataclasses.field(default_factory=list)  # `adda` only: per stage-2 bucket, its Task

    def summary(self, metric: str = "target_accuracy") -> str:
        """Markdown: per method (in first-seen order) mean ± std of `metric` over its members."""
        groups: dict[str, list[float]] = {}
        for row in self.rows:
            groups.setdefault(row["method"], []).append(row[metric])
        lines = [f"| method | members | {metric.replace('_', ' ')} |", "|---|---|---|"]
        for name, values in groups.items():
            lines.append(f"| {name} | {len(values)} | {np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- adapt


def adapt(config: TrainConfig, members: Sequence[Mapping[str, Any]] = ({},), *, target: Mapping[str, Any],
          feature_layer: str = "head", discriminator_widths: Sequence[int] = (32,),
          discriminator_learning_rate: float = 1e-3, weight_clip: float = 10.0, same_batches: bool | str = "auto",
          workdir: str | Path | None = None, verbose: bool = True, mesh: Any = "auto") -> AdaptResult:
    """Train a population on `config`'s labelled (source) data, adapting to `target`'s inputs.

    `target`: {'train': unlabelled target inputs x (or (x, y); labels are read by oracle members only),
    'test': (x, y) for the report}, inputs shaped as the source's (after the config's preprocessing,
    which is applied to them too). Each member is a dict of config fields (as a `fit_population`
    member) plus `mmd_weight`, `coral_weight`, `dann_weight` (>= 0, default 0), `dann_schedule` (1:
    DANN's lambda_p ramp, default; 0: constant), `reweight` (in [0, 1]: 0 unweighted, 1 the importance
    weights), `resample` (0 or 1) and `oracle` (in [0, 1]: the weight of the labelled target loss).
    Every row also has the member's `diverged_step` and its label-free selection risks `iwcv_risk` and
    `dev_risk` (`select_member`). `workdir`: checkpoints, resume and refusal as `fit_population`'s, the
    target inputs and adaptation values included. `mesh`: as `fit_population`'s ('auto': the members
    sharded over every local device when there are several). Everything is checked before anything
    compiles.
    """
    check_number("discriminator_learning_rate", discriminator_learning_rate, 0.0, low_inclusive=False)
    check_number("weight_clip", weight_clip, 1.0)
    check_widths(discriminator_widths)
    privacy.refuse_own_step(config, "domain adaptation (adapt)")
    if config.mixing is not None:
        raise invalid("config field 'mixing'", config.mixing, "None for domain adaptation")
    if not members:
        raise invalid("members", [], "at least one member (a dict of config fields)")
    split_up = [split_adapt_member(i, m) for i, m in enumerate(members)]
    values = [v for v, _ in split_up]
    plain = [with_config_loss_weights(config, m) for _, m in split_up]
    tasks = bucket_tasks(config, plain)
    prepared = {tuple(indices): (target_splits(task, target, any(values[i]["oracle"] > 0 for i in indices)),
                                 feature_dim(task, feature_layer, task.default_hparams))  # shapes only, before compiling
                for task, indices in tasks}
    discriminator = Discriminator(tuple(discriminator_widths))
    disc_optimizer = optax.adam(discriminator_learning_rate)
    mesh = parallel.resolve_mesh(mesh, len(plain))
    trained: list[tuple[Task, list[int]]] = []  # per bucket, as trained
    classifiers: list = []  # per bucket, its domain classifier
    weights = None
    if workdir is not None:  # what config.json and members.json do not say
        oracle = any(v["oracle"] > 0 for v in values)
        xt, yt = next(iter(prepared.values()))[0]["train"]
        record_inputs(workdir, "adapt", {"target": xt, "target_labels": yt if oracle else None, "values": values,
                                         "feature_layer": feature_layer, "weight_clip": weight_clip,
                                         "discriminator_widths": list(discriminator_widths),
                                         "discriminator_learning_rate": discriminator_learning_rate})

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        nonlocal weights
        splits, width = prepared[tuple(indices)]
        xt, yt = splits["train"]
        classifier = domain_classifier(task.train.x, xt, config.seed)
        weights = density_ratio(classifier, task.train.x, len(task.train.x), len(xt), weight_clip)
        weights = (weights / weights.mean()).astype(np.float32)  # = domain_weights(task.train.x, xt, ...)
        trained.append((task, indices))
        classifiers.append(classifier)
        population = with_adapt_state(population, [values[i] for i in indices], discriminator, disc_optimizer, width)
        runner = adapt_runner(task, feature_layer, discriminator, disc_optimizer, len(xt), weights, len(indices), mesh)
        yt = np.zeros(len(xt), np.int32) if yt is None else yt  # read by oracle members only
        data = tuple(jnp.asarray(a) for a in (task.train.x, task.train.y, weights, xt, yt))
        return BucketProgram(population, runner=runner, train_data=data, extras=[values[i] for i in indices])

    result = fit_population(config, plain, workdir, same_batches=same_batches, mesh=mesh, verbose=verbose,
                            program=program, label=LABEL)
    rows: list[dict] = [{} for _ in members]
    for number, ((task, indices), population) in enumerate(zip(trained, result.states)):
        splits = prepared[tuple(indices)][0]
        x_test, y_test = splits["test"]
        target_accuracy = accuracies(task, population, x_test, y_test)
        risks = selection_risks(task, population, feature_layer, classifiers[number], splits["train"][0], weight_clip)
        source_split = "test" if task.test is not None else "eval"
        for position, index in enumerate(indices):
            rows[index] = {"member": index, "bucket": number, "position": position, "method": method(values[index]),
                           **values[index],
                           "seed": bucket_seeds(config, [index], plain)[0],
                           "source_accuracy": result.members[index][source_split]["accuracy"],
                           "target_accuracy": float(target_accuracy[position]),
                           "diverged_step": result.members[index]["diverged_step"],
                           **{name: float(risk[position]) for name, risk in risks.items()}}
    return AdaptResult(result, rows, weights, [task for task, _ in trained])


# ----------------------------------------------------------------------------- ADDA


@flax.struct.dataclass
class AddaState(TrainState):
    """An ADDA stage-2 member: `params`, `model_state` and `opt_state` are the target encoder's (its
    Adam, learning rate injected per member), plus the frozen source model and the discriminator."""

    source_params: Any = None
    source_model_state: Any = None
    disc_params: Any = None
    disc_opt_state: Any = None


def adda_optimizers(discriminator_learning_rate: float) -> tuple:
    """(the target encoder's Adam(b1 = 0.5), learning rate injected; the discriminator's Adam(b1 = 0.5))."""
    return (optax.inject_hyperparams(optax.adam)(learning_rate=2e-4, b1=0.5),
            optax.adam(discriminator_learning_rate, b1=0.5))


def adda_step(task: Task, layer: str, discriminator: Discriminator, encoder_optimizer: optax.GradientTransformation,
              disc_optimizer: optax.GradientTransformation):
    """ADDA's stage-2 member step on a batch (source x, target x): the discriminator learns source
    features (frozen source model, evaluation mode) = 0 and target features = 1; the target encoder
    (every parameter but `layer`'s) the inverted label; both from the same forward pass."""
    size = task.config.batch_size
    bce = optax.sigmoid_binary_cross_entropy
    domains = jnp.concatenate([jnp.zeros(size), jnp.ones(size)])

    def step(state: AddaState, batch) -> tuple[AddaState, dict]:
        xs, xt = batch
        hp = state.hparams
        dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, 0xADDA), state.step)
        f_s = apply_with_features(task, layer, state.source_params, state.source_model_state, hp, xs, train=False)[1]

        def objective(params, disc_params):
            _, f_t, model_state = apply_with_features(task, layer, params, state.model_state, hp, xt, train=True,
                                                      dropout_key=dropout_key)
            logits = discriminator.apply({"params": disc_params}, jnp.concatenate([f_s, jax.lax.stop_gradient(f_t)]))
            disc_loss = bce(logits, domains).mean()
            fooled = discriminator.apply({"params": jax.lax.stop_gradient(disc_params)}, f_t)
            encoder_loss = bce(fooled, jnp.zeros(size)).mean()  # its features called source
            return disc_loss + encoder_loss, (disc_loss, encoder_loss, model_state)

        (loss, (disc_loss, encoder_loss, model_state)), (grads, disc_grads) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(state.params, state.disc_params)
        grads = {**grads, layer: jax.tree.map(jnp.zeros_like, grads[layer])}  # the head stays the source's
        updates, opt_state = encoder_optimizer.update(grads, state.opt_state, state.params)
        disc_updates, disc_opt_state = disc_optimizer.update(disc_grads, state.disc_opt_state, state.disc_params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, model_state=model_state,
                                  disc_params=optax.apply_updates(state.disc_params, disc_updates),
                                  disc_opt_state=disc_opt_state)
        return new_state, {"loss": loss, "discriminator_loss": disc_loss, "encoder_loss": encoder_loss}

    return step


def adda_batch_indices(task: Task, target_size: int):
    """Per step 2 * batch_size indices: the source batch (`fit_population`'s) and a target batch."""
    source, target = population_batch_indices(task), target_draw(task, target_size)
    return lambda population, length: jnp.concatenate([source(population, length),
                                                       member_draws(target, population, length)], -1)


def adda_gather(batch_size: int):
    return lambda data, index: (data[0][index[..., :batch_size]], data[1][index[..., batch_size:]])


def with_adda_state(population: PopulationState, source_params: Any, source_model_state: Any,
                    learning_rates: Sequence[float], discriminator: Discriminator, optimizers: tuple,
                    width: int) -> PopulationState:
    """The stage-2 population: each member's target encoder and frozen source model from the stacked
    source parameters and model state, its encoder Adam at its learning rate, a fresh discriminator
    (from the member's key folded with 0xADDA)."""
    encoder_optimizer, disc_optimizer = optimizers
    members = population.members

    def init(key, params):
        disc_params = discriminator.init(jax.random.fold_in(key, 0xADDA), jnp.zeros((1, width)))["params"]
        return encoder_optimizer.init(params), disc_params, disc_optimizer.init(disc_params)

    opt_state, disc_params, disc_opt_state = light_jit(jax.vmap(init), run_once=True)(members.key, source_params)
    opt_state = optim.set_hyperparams(opt_state, learning_rate=jnp.asarray(learning_rates, jnp.float32))
    fields = {f.name: getattr(members, f.name) for f in dataclasses.fields(TrainState)}
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # own buffers: the engine may donate the encoder's
    fields.update(params=copy(source_params), model_state=copy(source_model_state), opt_state=opt_state)
    return population.replace(members=AddaState(**fields, source_params=source_params,
                                                source_model_state=source_model_state,
                                                disc_params=disc_params, disc_opt_state=disc_opt_state))


_RUNNERS: Memo[PopulationRunner] = Memo(4)  # per task and settings: a rerun (resume, new learning rate) compiles nothing


def adda_runner(task: Task, layer: str, discriminator: Discriminator, optimizers: tuple, target_size: int,
                size: int, disc_learning_rate: float, mesh: Any = None) -> PopulationRunner:
    """The engine's chunk runner of ADDA's step for `size` members on `mesh` (None: one device), one
    per task and settings (the learning rates are state; `classifier_runner`: the task model's
    compile options)."""
    settings = (layer, discriminator.widths, disc_learning_rate, target_size, size)
    return _RUNNERS.get((task, mesh), lambda: classifier_runner(
        task, batch_indices=adda_batch_indices(task, target_size),
        member_step=adda_step(task, layer, discriminator, *optimizers), gather=adda_gather(task.config.batch_size),
        **mesh_layout(mesh, size)), settings=settings)


STAGE_SECTIONS = ("optimizer", "regularization", "augmentation")  # ADDA's own in stage 2, not the config's
STAGE_MEMBER_FIELDS = (*SECTIONS["data"], *SECTIONS["model"], *SECTIONS["objective"], "batch_size",
                       "eval_batch_size", "eval_metrics")  # what a stage-2 member keeps of its stage-1 fields


def stage_config(config: TrainConfig, steps: int) -> TrainConfig:
    """Stage 2's config: `config`'s data, model and loop, `steps` steps, the optimizer, regularisation and
    augmentation sections at their defaults (unused: ADDA's step has its own), no early stopping, no
    best-model keeping, no plateau, BatchNorm statistics as trained (no precise BN on source data)."""
    defaults = TrainConfig()
    reset = {name: getattr(defaults, name) for section in STAGE_SECTIONS for name in SECTIONS[section]}
    return dataclasses.replace(config, **reset, steps=steps, eval_every=min(config.eval_every, steps), patience=None,
                               keep_best=False, precise_bn_batches=0)


def stage_member(record: Mapping[str, Any], seed: int) -> dict:
    """A stage-2 member from a stage-1 member's record config: its data, model and objective fields, its seed."""
    return {**{k: v for k, v in record["config"].items() if k in STAGE_MEMBER_FIELDS}, "seed": seed}


def check_learning_rates(learning_rate: Any, count: int) -> list[float]:
    """One stage-2 learning rate per adapted member, from one for all or a sequence of `count`."""
    rates = [learning_rate] * count if not isinstance(learning_rate, (list, tuple, np.ndarray)) else list(learning_rate)
    if len(rates) != count:
        raise invalid("learning_rate", f"a sequence of {len(rates)}",
                      f"one number, or {count} (one per adapted member)")
    for rate in rates:
        check_number("learning_rate", rate, 0.0, low_inclusive=False)
    return [float(r) for r in rates]


def adda(config: TrainConfig, members: Sequence[Mapping[str, Any]] = ({},), *, target: Mapping[str, Any],
         source: AdaptResult | None = None, steps: int | None = None, learning_rate: float | Sequence[float] = 2e-4,
         feature_layer: str = "head", discriminator_widths: Sequence[int] = (64, 64),
         discriminator_learning_rate: float = 2e-4, weight_clip: float = 10.0, workdir: str | Path | None = None,
         verbose: bool = True, mesh: Any = "auto") -> AdaptResult:
    """ADDA (Tzeng et al. 2017): adversarial discriminative domain adaptation, in two stages.

    Stage 1, the source model: `source`, an `adapt` result on the same `config` and `target` whose
    'source only' members are adapted (e.g. the source-only rows of a table's population), or, when
    `source` is None, `adapt(config, members, target=target)` with members that set no adaptation field.
    Stage 2, per source-only member, trained by the population engine (`fit_population` with ADDA's
    member step: chunks, divergence isolation, metrics history, checkpoints): a target encoder (every
    parameter but `feature_layer`'s, initialised from the source model) is trained for `steps` (default
    config.steps) against a domain discriminator (an MLP of `discriminator_widths`) that learns source
    features (frozen source model, evaluation mode) = 0 and target features = 1, the encoder with the
    inverted label (GAN loss), both Adam(b1 = 0.5); `learning_rate` is the encoder's, one for all or one
    per adapted member (in the order of the result's rows). The classifier head stays the source's. No
    augmentation, no target labels. `workdir`: stage 1 checkpoints in `workdir/source` (when trained
    here), stage 2 in `workdir/adda`; a rerun resumes (a finished one restores); other source models,
    target inputs or ADDA settings are refused.
    Returns an `AdaptResult`: `rows` one per adapted member (method 'ADDA', its source and target test
    accuracy with the target encoder, the discriminator's and encoder's losses over the last chunk, its
    divergence step and the label-free selection risks), `population` stage 1's, `adapted` per stage-2
    bucket the adapted members (a `PopulationState`), `stage` stage 2's `PopulationResult`. `mesh`: as
    `fit_population`'s ('auto': the members sharded over every local device when there are several),
    for both stages. Everything is checked before anything compiles.
    """
    check_number("discriminator_learning_rate", discriminator_learning_rate, 0.0, low_inclusive=False)
    check_number("weight_clip", weight_clip, 1.0)
    privacy.refuse_own_step(config, "ADDA")
    steps = config.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise invalid("steps", steps, "a positive int (ADDA stage 2 steps)")
    check_widths(discriminator_widths)
    root = Path(workdir) if workdir is not None else None
    if source is None:
        for index, member in enumerate(members):
            values = split_adapt_member(index, member)[0]
            changed = sorted(k for k in ADAPT_FIELDS if k != "dann_schedule" and values[k] != DEFAULTS[k])
            if changed:
                raise invalid(f"member {index}: field {changed[0]!r}", values[changed[0]],
                              "not set: ADDA's stage 1 is a source-only model")
        rates = check_learning_rates(learning_rate, len(members))
        task = bucket_task(config)
        target_splits(task, target, False)
        feature_dim(task, feature_layer, task.default_hparams)
        source = adapt(config, members, target=target, feature_layer=feature_layer, weight_clip=weight_clip,
                       workdir=None if root is None else root / "source", verbose=verbose, mesh=mesh)
    elif not isinstance(source, AdaptResult) or not source.tasks:
        raise invalid("source", type(source).__name__, "an AdaptResult of `adapt` (stage 1) or None")
    chosen = [row for row in source.rows if row["method"] == "source only"]
    if not chosen:
        raise invalid("source", "an AdaptResult without a 'source only' member", "one with at least one")
    rates = check_learning_rates(learning_rate, len(chosen))
    for task in {id(source.tasks[row["bucket"]]): source.tasks[row["bucket"]] for row in chosen}.values():
        target_splits(task, target, False)
        feature_dim(task, feature_layer, task.default_hparams)  # raises on an unknown layer
    discriminator = Discriminator(tuple(discriminator_widths))
    optimizers = adda_optimizers(discriminator_learning_rate)
    mesh = parallel.resolve_mesh(mesh, len(chosen))
    stage = stage_config(config, steps)
    stage_members = [stage_member(source.population.members[row["member"]], row["seed"]) for row in chosen]
    states = source.population.states  # one transfer a bucket, not one device slice a leaf and member
    on_host = {bucket: jax.device_get({"params": states[bucket].members.params,
                                       "model_state": states[bucket].members.model_state})
               for bucket in {row["bucket"] for row in chosen}}
    source_members = [jax.tree.map(lambda a, p=row["position"]: a[p], on_host[row["bucket"]]) for row in chosen]
    trained: list[tuple[Task, list[int]]] = []
    if root is not None:  # what config.json and members.json do not say
        record_inputs(root / "adda", "adda", {
            "source": content_digest([(m["params"], m["model_state"]) for m in source_members]),
            "target": target_splits(source.tasks[chosen[0]["bucket"]], target, False)["train"][0],
            "learning_rates": rates, "feature_layer": feature_layer,
            "discriminator_widths": list(discriminator_widths),
            "discriminator_learning_rate": discriminator_learning_rate})

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        trained.append((task, indices))
        xt = target_splits(task, target, False)["train"][0]
        width = feature_dim(task, feature_layer, task.default_hparams)
        stack = lambda *leaves: jnp.stack(leaves)
        population = with_adda_state(population, jax.tree.map(stack, *[source_members[i]["params"] for i in indices]),
                                     jax.tree.map(stack, *[source_members[i]["model_state"] for i in indices]),
                                     [rates[i] for i in indices], discriminator, optimizers, width)
        runner = adda_runner(task, feature_layer, discriminator, optimizers, len(xt), len(indices),
                             discriminator_learning_rate, mesh)
        return BucketProgram(population, runner=runner, train_data=(jnp.asarray(task.train.x), jnp.asarray(xt)),
                             extras=[{"learning_rate": rates[i]} for i in indices])

    result = fit_population(stage, stage_members, None if root is None else root / "adda", mesh=mesh,
                            verbose=verbose, program=program, label=ADDA_LABEL)
    rows: list[dict] = [{} for _ in chosen]
    for number, ((task, indices), population) in enumerate(zip(trained, result.states)):
        splits = target_splits(task, target, False)
        (xt, _), (x_test, y_test) = splits["train"], splits["test"]
        source_split = task.test if task.test is not None else task.eval
        target_accuracy = accuracies(task, population, x_test, y_test)
        source_accuracy = accuracies(task, population, source_split.x, source_split.y)
        risks = selection_risks(task, population, feature_layer, domain_classifier(task.train.x, xt, config.seed), xt,
                                weight_clip)
        last = last_train_row(result.histories[number])
        for position, index in enumerate(indices):
            row = chosen[index]
            rows[index] = {"member": row["member"], "bucket": number, "position": position, "method": "ADDA",
                           "seed": row["seed"], "learning_rate": rates[index],
                           "source_accuracy": float(source_accuracy[position]),
                           "target_accuracy": float(target_accuracy[position]),
                           "source_only_target_accuracy": row["target_accuracy"],
                           "discriminator_loss": float(np.reshape(last["discriminator_loss"], -1)[position]),
                           "encoder_loss": float(np.reshape(last["encoder_loss"], -1)[position]),
                           "diverged_step": result.members[index]["diverged_step"],
                           **{name: float(values[position]) for name, values in risks.items()}}
    return AdaptResult(source.population, rows, source.weights, source.tasks, list(result.states), result,
                       [task for task, _ in trained])


def last_train_row(history: Sequence[dict]) -> dict:
    """The metrics log's last 'train' row (chunk means per member)."""
    return [row for row in history if row["split"] == "train"][-1]


__all__ = ["ADAPT_FIELDS", "AdaptResult", "AdaptState", "AddaState", "Discriminator", "adapt", "adapt_step", "adda",
           "adda_step", "coral_loss", "dann_lambda", "dev_risk", "domain_weights", "iwcv_risk", "mmd_loss",
           "feature_density_ratios", "logistic_regression", "reverse_gradient", "select_member"]
