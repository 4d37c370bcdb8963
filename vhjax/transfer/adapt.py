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
stages) is `adda`, run on the source-only members of an `adapt` result. The hooks (early stopping, best-model keeping) see the source eval split only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import metrics
from vhjax.config import TrainConfig
from vhjax.population.engine import PopulationRunner, default_member_group
from vhjax.population.fit import (BucketProgram, PopulationResult, bucket_seeds, bucket_task, bucket_tasks,
                                  fit_population, with_config_loss_weights)
from vhjax.population.members import population_batch_indices
from vhjax.population.state import PopulationState
from vhjax.preprocess.base import transform
from vhjax.train.state import TrainState
from vhjax.train.step import apply_gradients, apply_model, chunk_batch_indices, per_example_loss, with_penalty
from vhjax.train.task import Task
from vhjax.transfer.distill import predict
from vhjax.validation import check_choice, check_number, invalid

WEIGHT_FIELDS = ("mmd_weight", "coral_weight", "dann_weight")  # >= 0
FRACTION_FIELDS = ("reweight", "oracle")  # in [0, 1]
CHOICE_FIELDS = ("resample", "dann_schedule")  # 0 or 1
ADAPT_FIELDS = (*WEIGHT_FIELDS, *FRACTION_FIELDS, *CHOICE_FIELDS)
DEFAULTS = {"mmd_weight": 0.0, "coral_weight": 0.0, "dann_weight": 0.0, "reweight": 0.0, "oracle": 0.0,
            "resample": 0.0, "dann_schedule": 1.0}
LABEL = "adapt bucket {number}/{buckets} ({model}, {size} members) | "


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


def domain_weights(source_x: np.ndarray, target_x: np.ndarray, clip: float = 10.0, seed: int = 0) -> np.ndarray:
    """Importance weights p(target | x) / p(source | x) * n_s / n_t of the source examples from a
    logistic-regression domain classifier on the flattened, standardised inputs; clipped at `clip`
    and normalised to mean 1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = np.reshape(source_x, (len(source_x), -1)), np.reshape(target_x, (len(target_x), -1))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    classifier.fit(np.concatenate([xs, xt]), np.r_[np.zeros(len(xs)), np.ones(len(xt))])
    p = np.clip(classifier.predict_proba(xs)[:, 1], 1e-6, 1 - 1e-6)
    weights = np.minimum(p / (1 - p) * len(xs) / len(xt), clip)
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
    for fitted in task.preprocessing:
        splits = {k: (np.asarray(transform(fitted, x)), y) for k, (x, y) in splits.items()}
    return splits


def check_widths(widths: Any) -> None:
    if isinstance(widths, int) or not all(isinstance(w, int) and w > 0 for w in widths):
        raise invalid("discriminator_widths", widths, "a sequence of positive integers")


def accuracies(task: Task, population: PopulationState, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(P,) accuracy of every member on (x, y)."""
    return (predict(task, population, jnp.asarray(x)).argmax(-1) == np.asarray(y)[None]).mean(1)


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


def adapt_batch_indices(task: Task, target_size: int, weights: np.ndarray):
    """Per step 3 * batch_size indices: the source batch (exactly `fit_population`'s), a source batch
    drawn in proportion to `weights`, and a target batch (its own permutations)."""
    config, size = task.config, task.config.batch_size
    source = population_batch_indices(task)
    probabilities = jnp.asarray(weights / weights.sum())

    def extra(data_key, start, length):
        target = chunk_batch_indices(jax.random.fold_in(data_key, 1), start, length, target_size, size,
                                     config.shuffle, config.drop_remainder)
        draw = lambda s: jax.random.choice(jax.random.fold_in(jax.random.fold_in(data_key, 2), s), len(weights),
                                           (size,), p=probabilities)
        return jnp.concatenate([jax.vmap(draw)(start + jnp.arange(length)), target], -1)

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members
        if population.same_batches:
            more = extra(members.data_key[0], jnp.max(members.step), length)
        else:
            more = jnp.swapaxes(jax.vmap(lambda k, s: extra(k, s, length))(members.data_key, members.step), 0, 1)
        return jnp.concatenate([source(population, length), more], -1)

    return indices


def adapt_gather(batch_size: int):
    def gather(data, index):
        xs, ys, ws, xt, yt = data
        u, r, t = index[..., :batch_size], index[..., batch_size:2 * batch_size], index[..., 2 * batch_size:]
        return xs[u], ys[u], ws[u], xs[r], ys[r], ws[r], xt[t], yt[t]

    return gather


def with_adapt_state(population: PopulationState, values: Sequence[dict], discriminator: Discriminator,
                     disc_optimizer: optax.GradientTransformation, width: int) -> PopulationState:
    """The population's members as `AdaptState`s: adaptation values in their hparams, a discriminator each
    (initialised from the member's key folded with a constant; the member's own key is left as it is)."""
    members = population.members

    def init(key):
        params = discriminator.init(jax.random.fold_in(key, 0xDA), jnp.zeros((1, width)))["params"]
        return params, disc_optimizer.init(params)

    disc_params, disc_opt_state = jax.jit(jax.vmap(init))(members.key)
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
          verbose: bool = True) -> AdaptResult:
    """Train a population on `config`'s labelled (source) data, adapting to `target`'s inputs.

    `target`: {'train': unlabelled target inputs x (or (x, y); labels are read by oracle members only),
    'test': (x, y) for the report}, inputs shaped as the source's (after the config's preprocessing,
    which is applied to them too). Each member is a dict of config fields (as a `fit_population`
    member) plus `mmd_weight`, `coral_weight`, `dann_weight` (>= 0, default 0), `dann_schedule` (1:
    DANN's lambda_p ramp, default; 0: constant), `reweight` (in [0, 1]: 0 unweighted, 1 the importance
    weights), `resample` (0 or 1) and `oracle` (in [0, 1]: the weight of the labelled target loss).
    Everything is checked before anything compiles. Single device.
    """
    check_number("discriminator_learning_rate", discriminator_learning_rate, 0.0, low_inclusive=False)
    check_number("weight_clip", weight_clip, 1.0)
    check_widths(discriminator_widths)
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
    trained: list[tuple[Task, list[int]]] = []  # per bucket, as trained
    weights = None

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        nonlocal weights
        splits, width = prepared[tuple(indices)]
        xt, yt = splits["train"]
        weights = domain_weights(task.train.x, xt, weight_clip, config.seed)
        trained.append((task, indices))
        population = with_adapt_state(population, [values[i] for i in indices], discriminator, disc_optimizer, width)
        runner = PopulationRunner(adapt_step(task, feature_layer, discriminator, disc_optimizer),
                                  adapt_batch_indices(task, len(xt), weights),
                                  member_group=default_member_group(len(indices)),
                                  gather=adapt_gather(task.config.batch_size))
        yt = np.zeros(len(xt), np.int32) if yt is None else yt  # read by oracle members only
        data = tuple(jnp.asarray(a) for a in (task.train.x, task.train.y, weights, xt, yt))
        return BucketProgram(population, runner=runner, train_data=data, extras=[values[i] for i in indices])

    result = fit_population(config, plain, same_batches=same_batches, mesh=None, verbose=verbose, program=program,
                            label=LABEL)
    rows: list[dict] = [{} for _ in members]
    for number, ((task, indices), population) in enumerate(zip(trained, result.states)):
        x_test, y_test = prepared[tuple(indices)][0]["test"]
        target_accuracy = accuracies(task, population, x_test, y_test)
        source_split = "test" if task.test is not None else "eval"
        for position, index in enumerate(indices):
            rows[index] = {"member": index, "bucket": number, "position": position, "method": method(values[index]),
                           **values[index],
                           "seed": bucket_seeds(config, [index], plain)[0],
                           "source_accuracy": result.members[index][source_split]["accuracy"],
                           "target_accuracy": float(target_accuracy[position])}
    return AdaptResult(result, rows, weights, [task for task, _ in trained])


# ----------------------------------------------------------------------------- ADDA


def adda_stage(task: Task, layer: str, discriminator: Discriminator, steps: int, learning_rate: float,
               disc_learning_rate: float, width: int):
    """One member's ADDA stage 2 (jit and vmap it): (source params, model state, hparams, key, source x,
    target x) -> (target params, target model state, final discriminator and encoder losses)."""
    size = task.config.batch_size
    encoder_optimizer, disc_optimizer = optax.adam(learning_rate, b1=0.5), optax.adam(disc_learning_rate, b1=0.5)
    bce = optax.sigmoid_binary_cross_entropy

    def run(params, model_state, hparams, key, xs_all, xt_all):
        disc_params = discriminator.init(jax.random.fold_in(key, 0xADDA), jnp.zeros((1, width)))["params"]

        def body(carry, step):
            target_params, target_state, encoder_opt, disc_params, disc_opt = carry
            ks, kt, kd = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 0xADDA), step), 3)
            xs = xs_all[jax.random.randint(ks, (size,), 0, xs_all.shape[0])]
            xt = xt_all[jax.random.randint(kt, (size,), 0, xt_all.shape[0])]
            f_s = apply_with_features(task, layer, params, model_state, hparams, xs, train=False)[1]

            def encode(target_params):
                _, f_t, state = apply_with_features(task, layer, target_params, target_state, hparams, xt, train=True,
                                                    dropout_key=kd)
                return f_t, state

            def disc_loss(disc_params, f_t):  # the discriminator: source 0, target 1
                logits = discriminator.apply({"params": disc_params}, jnp.concatenate([f_s, f_t]))
                return bce(logits, jnp.r_[jnp.zeros(size), jnp.ones(size)]).mean()

            def encoder_loss(target_params):  # the target encoder, inverted labels: its features called source
                f_t, state = encode(target_params)
                return bce(discriminator.apply({"params": disc_params}, f_t), jnp.zeros(size)).mean(), state

            d_loss, d_grads = jax.value_and_grad(disc_loss)(disc_params, encode(target_params)[0])
            (e_loss, state), e_grads = jax.value_and_grad(encoder_loss, has_aux=True)(target_params)
            e_grads = {**e_grads, layer: jax.tree.map(jnp.zeros_like, e_grads[layer])}  # the head stays the source's
            updates, encoder_opt = encoder_optimizer.update(e_grads, encoder_opt, target_params)
            d_updates, disc_opt = disc_optimizer.update(d_grads, disc_opt, disc_params)
            carry = (optax.apply_updates(target_params, updates), state, encoder_opt,
                     optax.apply_updates(disc_params, d_updates), disc_opt)
            return carry, jnp.stack([d_loss, e_loss])

        carry = (params, model_state, encoder_optimizer.init(params), disc_params, disc_optimizer.init(disc_params))
        (target_params, target_state, *_), losses = jax.lax.scan(body, carry, jnp.arange(steps))
        return target_params, target_state, losses[-max(1, steps // 10):].mean(0)

    return run


def adda(config: TrainConfig, members: Sequence[Mapping[str, Any]] = ({},), *, target: Mapping[str, Any],
         source: AdaptResult | None = None, steps: int | None = None, learning_rate: float = 2e-4,
         feature_layer: str = "head", discriminator_widths: Sequence[int] = (64, 64),
         discriminator_learning_rate: float = 2e-4, verbose: bool = True) -> AdaptResult:
    """ADDA (Tzeng et al. 2017): adversarial discriminative domain adaptation, in two stages.

    Stage 1, the source model: `source`, an `adapt` result on the same `config` and `target` whose
    'source only' members are adapted (e.g. the source-only rows of a table's population), or, when
    `source` is None, `adapt(config, members, target=target)` with members that set no adaptation field.
    Stage 2, per source-only member, all members in one vmapped program per bucket: a target encoder
    (every parameter but `feature_layer`'s, initialised from the source model) is trained for `steps`
    (default config.steps) against a domain discriminator (an MLP of `discriminator_widths`) that learns
    source features (frozen source model, evaluation mode) = 0 and target features = 1, the encoder with
    the inverted label (GAN loss), both Adam(b1 = 0.5). The classifier head stays the source's. Batches
    of config.batch_size drawn with replacement; no augmentation, no target labels.
    Returns an `AdaptResult`: `rows` one per adapted member (method 'ADDA', its source and target test
    accuracy with the target encoder), `population` stage 1's, `adapted` per bucket the adapted
    members (a `PopulationState`). Everything is checked before anything compiles.
    """
    check_number("learning_rate", learning_rate, 0.0, low_inclusive=False)
    check_number("discriminator_learning_rate", discriminator_learning_rate, 0.0, low_inclusive=False)
    steps = config.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise invalid("steps", steps, "a positive int (ADDA stage 2 steps)")
    check_widths(discriminator_widths)
    discriminator = Discriminator(tuple(discriminator_widths))
    if source is None:
        for index, member in enumerate(members):
            values = split_adapt_member(index, member)[0]
            changed = sorted(k for k in ADAPT_FIELDS if k != "dann_schedule" and values[k] != DEFAULTS[k])
            if changed:
                raise invalid(f"member {index}: field {changed[0]!r}", values[changed[0]],
                              "not set: ADDA's stage 1 is a source-only model")
        task = bucket_task(config)
        target_splits(task, target, False)
        feature_dim(task, feature_layer, task.default_hparams)
        source = adapt(config, members, target=target, feature_layer=feature_layer, verbose=verbose)
    elif not isinstance(source, AdaptResult) or not source.tasks:
        raise invalid("source", type(source).__name__, "an AdaptResult of `adapt` (stage 1) or None")
    if not any(row["method"] == "source only" for row in source.rows):
        raise invalid("source", "an AdaptResult without a 'source only' member", "one with at least one")
    rows, adapted = [], []
    for number, (task, state) in enumerate(zip(source.tasks, source.population.states)):
        chosen = [row for row in source.rows if row["bucket"] == number and row["method"] == "source only"]
        if not chosen:
            continue
        splits = target_splits(task, target, False)
        (xt, _), (x_test, y_test) = splits["train"], splits["test"]
        width = feature_dim(task, feature_layer, task.default_hparams)
        positions = jnp.asarray([row["position"] for row in chosen])
        members_ = jax.tree.map(lambda a: a[positions], state.members)
        run = adda_stage(task, feature_layer, discriminator, steps, learning_rate, discriminator_learning_rate, width)
        if verbose:
            print(f"ADDA bucket {number + 1}/{len(source.tasks)}: {len(chosen)} members, {steps} steps", flush=True)
        params, model_state, losses = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, 0, None, None)))(
            members_.params, members_.model_state, members_.hparams, members_.key, jnp.asarray(task.train.x),
            jnp.asarray(xt))
        population = state.replace(members=members_.replace(params=params, model_state=model_state))
        adapted.append(population)
        source_split = task.test if task.test is not None else task.eval
        target_accuracy = accuracies(task, population, x_test, y_test)
        source_accuracy = accuracies(task, population, source_split.x, source_split.y)
        for position, row in enumerate(chosen):
            rows.append({"member": row["member"], "bucket": number, "position": position, "method": "ADDA",
                         "seed": row["seed"], "source_accuracy": float(source_accuracy[position]),
                         "target_accuracy": float(target_accuracy[position]),
                         "source_only_target_accuracy": row["target_accuracy"],
                         "discriminator_loss": float(losses[position, 0]), "encoder_loss": float(losses[position, 1])})
    return AdaptResult(source.population, rows, source.weights, source.tasks, adapted)


__all__ = ["ADAPT_FIELDS", "AdaptResult", "AdaptState", "Discriminator", "adapt", "adapt_step", "adda", "coral_loss",
           "dann_lambda", "domain_weights", "mmd_loss", "reverse_gradient"]
