"""Self-supervised pretraining: a population of encoders trained on unlabelled inputs, as transfer sources.

    result = pretrain(config, [{"temperature": t, "learning_rate": lr, "seed": s}
                               for t in (0.1, 0.5) for lr in (1e-3, 3e-3) for s in range(2)], method="simclr")
    source = load_source(result, rank=0)                    # the encoder only: no head, no projection MLP
    fine_tuned = fit_from(probe_config, source, [mode_config("feature_extractor", result)])

The encoder is `config`'s model up to the input of its `feature_layer` (default `"head"`, the last
Dense of vhjax's classifiers), captured with `flax.linen.intercept_methods` as in `adapt`. Two methods,
one member step each, run by `fit_population`'s engine (one compiled program per bucket):

- 'simclr' (Chen et al. 2020): two augmented views of every example (the config's `augment`, or
  `augment=`, or a default for the data's kind: sequences or images), a projection MLP on the
  features, and the NT-Xent loss with the member's `temperature`;
- 'autoencoder': a decoder MLP from the features back to the input, mean squared reconstruction
  error of the clean input from one corrupted by Gaussian noise of the member's `noise` level
  (0: a plain autoencoder; > 0: denoising, Vincent et al. 2008) and by the config's `augment`, if any.

Per member: the learning rate (and every other per-member config field), `temperature` or `noise`,
and the seed. The projection / decoder MLP has its own Adam at the member's learning rate (or
`head_learning_rate`). Training reads the inputs only: the labels never enter the program. The
engine's evaluation is the pretraining loss on the first batches of the eval split's inputs
(its 'eval' `loss`, every `eval_every` steps; the untrained classifier head is never evaluated);
`PretrainResult.rows` hold each member's pretraining loss on the training and eval inputs.
`workdir=`: checkpoints through the engine; a rerun resumes exactly, a finished run restores, a
workdir with other inputs (data, method, augmentations, member values, heads) is refused by name.
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

from vhjax import parallel, privacy
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.population.engine import PopulationRunner
from vhjax.population.fit import (BucketProgram, PopulationResult, bucket_seeds, bucket_tasks, fit_population,
                                  with_config_loss_weights)
from vhjax.population.members import classifier_runner, mesh_layout
from vhjax.population.state import PopulationState
from vhjax.train.state import TrainState
from vhjax.train.step import apply_gradients, with_penalty
from vhjax.train.task import Task
from vhjax.train.workdir import content_digest, record_inputs
from vhjax.transfer.adapt import apply_with_features, feature_dim
from vhjax.transfer.weights import COLLECTIONS_KEY, flatten, layer_names, unflatten
from vhjax.validation import check_choice, check_number, invalid

METHODS = ("simclr", "autoencoder")
METHOD_FIELDS = {"simclr": "temperature", "autoencoder": "noise"}
DEFAULTS = {"temperature": 0.5, "noise": 0.0}
SEQUENCE_AUGMENT = (("shift", 0.15), ("scale", 0.2), ("gaussian_noise", 0.05))
IMAGE_AUGMENT = (("random_crop", 0.25), ("rotate", 0.25), ("gaussian_noise", 0.05))
LABEL = "pretrain bucket {number}/{buckets} ({model}, {size} members) | "


# ----------------------------------------------------------------------------- the losses


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: jax.Array) -> jax.Array:
    """NT-Xent (SimCLR's normalised temperature-scaled cross-entropy) of two views (N, D): each of the
    2N projections must pick its other view among the 2N - 1 others by cosine similarity / temperature."""
    z = jnp.concatenate([z1, z2])
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()


def reconstruction_error(reconstruction: jax.Array, x: jax.Array) -> jax.Array:
    """Mean squared error over every input value."""
    return jnp.mean(jnp.square(reconstruction - x))


class MLPHead(nn.Module):
    """ReLU Dense layers of `widths`, then a linear Dense of `outputs` (the projection or the decoder)."""

    widths: Sequence[int]
    outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs)(x)


# ----------------------------------------------------------------------------- checks (before compiling)


def split_pretrain_member(index: int, member: Mapping[str, Any], method: str) -> tuple[dict, dict]:
    """(the member's method value {temperature or noise}, its other config fields)."""
    if not isinstance(member, Mapping):
        raise invalid(f"member {index}", member, f"a dict of config fields and {METHOD_FIELDS[method]!r}")
    name = METHOD_FIELDS[method]
    for other_method, other in METHOD_FIELDS.items():
        if other != name and other in member:
            raise invalid(f"member {index}: field {other!r}", member[other],
                          f"not set with method {method!r} (it belongs to {other_method!r}; use {name!r})")
    value = member.get(name, DEFAULTS[name])
    if name == "temperature":
        check_number(f"member {index}: field 'temperature'", value, 0.0, low_inclusive=False)
    else:
        check_number(f"member {index}: field 'noise'", value, 0.0)
    return {name: float(value)}, {k: v for k, v in member.items() if k not in METHOD_FIELDS.values()}


def check_config(config: TrainConfig) -> None:
    """Refuse what has no meaning without labels: mixing, and early stopping, best-model keeping or
    plateau on anything but a pretraining loss (the eval split's one metric is `loss`, the pretraining
    loss on its inputs; monitor_split='train' watches the training batches)."""
    if config.mixing is not None:
        raise invalid("config field 'mixing'", config.mixing, "None for self-supervised pretraining")
    watches = [name for name in ("patience", "plateau_patience") if getattr(config, name) is not None]
    watches += ["keep_best"] if config.keep_best else []
    if config.monitor_split == "eval" and watches and (config.monitor, config.monitor_mode) != ("loss", "min"):
        name = watches[0]
        raise invalid(f"config field {name!r}", getattr(config, name), "None for pretraining, or monitor='loss' with "
                      "monitor_mode='min' (on the eval split: the pretraining loss on its inputs; with "
                      "monitor_split='train': the training batches' loss)")


def default_augment(input_shape: Sequence[int]) -> tuple:
    """SimCLR's views for the data's kind: sequences (L,) / (L, C) or images (H, W, C)."""
    if len(input_shape) in (1, 2):
        return SEQUENCE_AUGMENT
    if len(input_shape) == 3:
        return IMAGE_AUGMENT
    raise invalid("augment", None, f"an explicit list of augmentations: inputs of shape {tuple(input_shape)} are "
                  "neither sequences (L,) / (L, C) nor images (H, W, C)")


def with_augment(config: TrainConfig, method: str, augment: Sequence[Any] | None) -> TrainConfig:
    """The config whose `augment` makes SimCLR's views: `augment`, else the config's, else the default."""
    if augment is not None:
        if isinstance(augment, (str, Mapping)) or not isinstance(augment, Sequence) or not augment:
            raise invalid("augment", augment, "a non-empty list of augmentation entries, e.g. [('shift', 0.1)]")
        return dataclasses.replace(config, augment=tuple(augment))
    if method != "simclr" or config.augment:
        return config
    from vhjax.population.fit import bucket_task

    shape = bucket_task(config).train.x.shape[1:]
    return dataclasses.replace(config, augment=default_augment(shape))


def check_widths(name: str, widths: Any) -> None:
    if isinstance(widths, int) or not isinstance(widths, Sequence) or \
            not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise invalid(name, widths, "a sequence of positive integers")


# ----------------------------------------------------------------------------- the member step


@flax.struct.dataclass
class PretrainState(TrainState):
    """A member's `TrainState` plus its projection (SimCLR) or decoder (autoencoder) MLP and its Adam state."""

    head_params: Any = None
    head_opt_state: Any = None


def pretrain_objective(task: Task, layer: str, method: str, head: MLPHead):
    """`objective(params, head_params, state, x, key) -> (loss, (pretraining loss, model_state))` of one
    member on a batch of inputs `x` (also used, with train=False, for the eval loss)."""

    def objective(params, head_params, state: PretrainState, x: jax.Array, key: jax.Array, train: bool = True):
        hp = state.hparams
        view_key, dropout_key = jax.random.split(key)
        if method == "simclr":
            k1, k2 = jax.random.split(view_key)
            inputs = jnp.concatenate([task.augment_fn(k1, x, hp["aug_strength"], hp["aug_prob"]),
                                      task.augment_fn(k2, x, hp["aug_strength"], hp["aug_prob"])])
        else:
            inputs = x
            if task.augment_fn is not None:
                inputs = task.augment_fn(view_key, inputs, hp["aug_strength"], hp["aug_prob"])
            inputs = inputs + hp["noise"] * jax.random.normal(jax.random.fold_in(view_key, 1), x.shape, x.dtype)
        _, features, model_state = apply_with_features(task, layer, params, state.model_state, hp, inputs,
                                                       train=train, dropout_key=dropout_key if train else None)
        out = head.apply({"params": head_params}, features)
        if method == "simclr":
            n = x.shape[0]
            loss = nt_xent(out[:n], out[n:], hp["temperature"])
        else:
            loss = reconstruction_error(out.reshape(x.shape), x)
        return with_penalty(task, state, params, loss), (loss, model_state)

    return objective


def pretrain_step(task: Task, layer: str, method: str, head: MLPHead, head_optimizer: optax.GradientTransformation):
    """The member step on a batch `(x,)`: one optimizer step of the encoder and of the head MLP."""
    objective = pretrain_objective(task, layer, method, head)

    def step(state: PretrainState, batch) -> tuple[PretrainState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        (total, (loss, model_state)), (grads, head_grads) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(state.params, state.head_params, state, batch[0], key)
        new_params, opt_state = apply_gradients(task, state, grads)
        updates, head_opt_state = head_optimizer.update(head_grads, state.head_opt_state, state.head_params)
        updates = jax.tree.map(lambda u: -state.hparams["head_learning_rate"] * u, updates)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state,
                                  model_state=model_state, head_params=optax.apply_updates(state.head_params, updates),
                                  head_opt_state=head_opt_state)
        return new_state, {"loss": total, "pretrain_loss": loss}

    return step


def pretrain_runner(task: Task, layer: str, method: str, head: MLPHead, head_optimizer: optax.GradientTransformation,
                    size: int, mesh: Any = None) -> PopulationRunner:
    """The engine's chunk runner of the pretraining step for `size` members on `mesh` (None: one
    device; `classifier_runner`: the task model's compile options)."""
    return classifier_runner(task, member_step=pretrain_step(task, layer, method, head, head_optimizer),
                             **mesh_layout(mesh, size))


def with_pretrain_state(population: PopulationState, values: Sequence[dict], head: MLPHead,
                        head_optimizer: optax.GradientTransformation, width: int) -> PopulationState:
    """The members as `PretrainState`s: temperature / noise and the head's learning rate in their
    hparams, a head MLP each (initialised from the member's key folded with a constant)."""
    members = population.members

    def init(key):
        params = head.init(jax.random.fold_in(key, 0x551), jnp.zeros((1, width)))["params"]
        return params, head_optimizer.init(params)

    head_params, head_opt_state = light_jit(jax.vmap(init), run_once=True)(members.key)
    arrays = {name: jnp.asarray([v[name] for v in values], jnp.float32) for name in values[0]}
    fields = {f.name: getattr(members, f.name) for f in dataclasses.fields(TrainState)}
    fields["hparams"] = {**members.hparams, **arrays}
    return population.replace(members=PretrainState(**fields, head_params=head_params, head_opt_state=head_opt_state))


def loss_evaluator(task: Task, layer: str, method: str, head: MLPHead, splits: Sequence[np.ndarray],
                   batches: int = 4):
    """`losses(population) -> (S, P)`: each member's pretraining loss on the first `batches` batches of
    every split in `splits` (as many batches for each, at most what the smallest holds; evaluation
    mode, fixed views). One program, compiled once; the batches are stacked once."""
    size = min([task.config.batch_size, *(len(x) for x in splits)])
    count = max(1, min([batches, *(len(x) // size for x in splits)]))
    data = jnp.stack([jnp.asarray(x[:count * size]).reshape(count, size, *x.shape[1:]) for x in splits])
    objective = pretrain_objective(task, layer, method, head)

    def one(member, batches):
        loss = lambda i: objective(member.params, member.head_params, member, batches[i], jax.random.key(i),
                                   train=False)[1][0]
        return jax.lax.map(loss, jnp.arange(count)).mean()

    program = light_jit(jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(None, 0)))
    return lambda population: np.asarray(program(population.members, data))


def held_out_evaluation(losses) -> Any:
    """The bucket's evaluation for the engine: {'eval': {'loss': (P,)}}, the pretraining loss on the
    eval split's inputs (`losses` a `loss_evaluator` of (train inputs, eval inputs))."""
    return lambda population: {"eval": {"loss": losses(population)[1]}}


# ----------------------------------------------------------------------------- the result


def encoder_of(params_and_state: Mapping[str, Any], layer: str) -> dict:
    """Flax variables without `layer`'s entries (the classifier head), in every collection."""
    out = {}
    for collection, tree in params_and_state.items():
        flat = {p: v for p, v in flatten(tree).items() if p.split("/")[0] != layer} if isinstance(tree, Mapping) \
            else tree
        out[collection] = unflatten(flat) if isinstance(tree, Mapping) else tree
    return out


@dataclasses.dataclass
class PretrainResult:
    """The pretrained members (a `PopulationResult`, members in the order given) and one row per member.

    A transfer source: `load_source(result, rank=... | index=...)`, `transfer_params(result, target)` and
    `fit_from(config, result, ...)` take its encoder (no `feature_layer`, no projection / decoder MLP), so
    the target keeps a fresh head; `mode_config(mode, result)` knows the full model's layers."""

    population: PopulationResult
    rows: list[dict]  # per member: method, temperature or noise, seed, learning_rate, train_loss and eval_loss
    # (the pretraining loss on the first batches of the training / eval inputs, evaluation mode, fixed views)
    method: str
    feature_layer: str
    layers: list[str]  # the model's layer names, input to output (the feature layer last)

    def ranked(self) -> list[int]:
        """Member indices by eval pretraining loss, lowest first; diverged members last."""
        key = lambda row: (not np.isfinite(row["eval_loss"]) or row["diverged_step"] is not None, row["eval_loss"])
        return [row["member"] for row in sorted(self.rows, key=key)]

    def member_index(self, rank: int | None = None, index: int | None = None) -> int:
        if rank is not None and index is not None:
            raise ValueError("rank and index are both given; allowed: one of them")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.rows):
                raise invalid("index", index, f"an int in [0, {len(self.rows) - 1}] (a member of the pretraining)")
            return index
        rank = 0 if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < len(self.rows):
            raise invalid("rank", rank, f"an int in [0, {len(self.rows) - 1}] (0 = lowest eval pretraining loss)")
        return self.ranked()[rank]

    def encoder_variables(self, rank: int | None = None, index: int | None = None) -> dict:
        """One member's encoder as Flax variables (numpy): by `index` in the members given, or by `rank`
        on the eval pretraining loss (default: rank 0, the lowest)."""
        member = self.population.members[self.member_index(rank, index)]
        state = self.population.states[member["bucket"]].members
        take = lambda tree: jax.tree.map(lambda leaf: np.asarray(leaf[member["position"]]), tree)
        return encoder_of({COLLECTIONS_KEY: take(state.params), **take(dict(state.model_state or {}))},
                          self.feature_layer)

    def encoder_layers(self) -> list[str]:
        return list(self.layers)

    def summary(self) -> str:
        """Markdown: one row per member, ranked by eval pretraining loss."""
        name = METHOD_FIELDS[self.method]
        lines = [f"| rank | member | {name} | learning rate | seed | train loss | eval loss |",
                 "|---|---|---|---|---|---|---|"]
        for rank, index in enumerate(self.ranked()):
            row = self.rows[index]
            lines.append(f"| {rank} | {index} | {row[name]:g} | {row['learning_rate']:.3g} | {row['seed']} | "
                         f"{row['train_loss']:.4f} | {row['eval_loss']:.4f} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- pretrain


def pretrain_inputs(config: TrainConfig, method: str, values: Sequence[dict], tasks: Sequence[tuple[Task, list[int]]],
                    feature_layer: str, head_widths: Sequence[int], projection_dim: int) -> dict:
    """What a pretraining workdir records besides config.json and members.json: the method, each
    member's temperature / noise and head learning rate, the heads, the feature layer, the
    augmentations and a digest of every bucket's training and eval inputs (after preprocessing)."""
    return {"method": method, "values": list(values), "feature_layer": feature_layer,
            "head_widths": list(head_widths), "projection_dim": projection_dim if method == "simclr" else None,
            "augment": list(config.augment or ()),
            "inputs": content_digest([(task.train.x, task.eval.x) for task, _ in tasks])}


def pretrain(config: TrainConfig, members: Sequence[Mapping[str, Any]] = ({},), *, method: str = "simclr",
             augment: Sequence[Any] | None = None, feature_layer: str = "head",
             head_widths: Sequence[int] = (64,), projection_dim: int = 32, head_learning_rate: float | None = None,
             same_batches: bool | str = "auto", workdir: str | Path | None = None,
             verbose: bool = True, mesh: Any = "auto") -> PretrainResult:
    """Pretrain a population of encoders (config's model up to `feature_layer`) on config's training inputs.

    `method`: 'simclr' (two augmented views, projection MLP `head_widths` -> `projection_dim`, NT-Xent
    with the member's `temperature` > 0, default 0.5) or 'autoencoder' (decoder MLP `head_widths` ->
    the input size, MSE of the clean input, inputs corrupted by Gaussian noise of the member's `noise`
    >= 0, default 0). Each member is a dict of config fields (as a `fit_population` member) plus its
    `temperature` or `noise`; members of equal static config share one compiled program. `augment`:
    SimCLR's views (augmentation entries), default the config's `augment`, else a default for the data's
    kind (`SEQUENCE_AUGMENT` or `IMAGE_AUGMENT`); their strengths and probabilities are per member as in
    `fit_population` (the autoencoder uses `augment` or the config's, if any, as extra corruption). The
    head MLP has Adam at `head_learning_rate` (default: each member's learning rate). Labels are never
    read. The engine evaluates each member's pretraining loss on the eval split's inputs (the
    'eval' `loss`, also the result records' final 'eval' metric; early stopping and best-model
    keeping may watch it: monitor='loss', monitor_mode='min'); no classifier is evaluated.
    `workdir`: as `fit_population`'s (checkpoints after every evaluation, a rerun resumes, a finished
    run is restored), with the method, the members' temperature / noise and head learning rate, the
    heads, the feature layer, the augmentations and a digest of the training and eval inputs recorded
    in `workdir/pretrain.json`: other ones are refused by name. `mesh`: as `fit_population`'s ('auto':
    the members sharded over every local device when there are several). Everything is checked
    before anything compiles.
    """
    check_choice("method", method, METHODS)
    check_widths("head_widths", head_widths)
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
        raise invalid("projection_dim", projection_dim, "a positive int (the width of SimCLR's projection)")
    if head_learning_rate is not None:
        check_number("head_learning_rate", head_learning_rate, 0.0, low_inclusive=False)
    if not members:
        raise invalid("members", [], "at least one member (a dict of config fields)")
    check_config(config)
    privacy.refuse_own_step(config, "self-supervised pretraining")
    split_up = [split_pretrain_member(i, m, method) for i, m in enumerate(members)]
    plain = [with_config_loss_weights(config, m) for _, m in split_up]
    for index, member in enumerate(plain):
        if member.get("mixing") is not None:
            raise invalid(f"member {index}: field 'mixing'", member["mixing"], "None for self-supervised pretraining")
    config = with_augment(config, method, augment)
    values = [{**v, "head_learning_rate": float(head_learning_rate if head_learning_rate is not None
                                                 else m.get("learning_rate", config.learning_rate))}
              for (v, _), m in zip(split_up, plain)]
    tasks = bucket_tasks(config, plain)
    widths = {tuple(indices): feature_dim(task, feature_layer, task.default_hparams)  # shapes only
              for task, indices in tasks}
    heads = {tuple(indices): MLPHead(tuple(head_widths), projection_dim if method == "simclr"
                                     else int(np.prod(task.train.x.shape[1:]))) for task, indices in tasks}
    head_optimizer = optax.scale_by_adam()
    record_inputs(workdir, "pretrain", pretrain_inputs(config, method, values, tasks, feature_layer, head_widths,
                                                       projection_dim))
    mesh = parallel.resolve_mesh(mesh, len(plain))
    trained: list[tuple[Task, list[int]]] = []
    losses: list = []  # per bucket, its `loss_evaluator` on (train inputs, eval inputs)

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        trained.append((task, indices))
        head = heads[tuple(indices)]
        losses.append(loss_evaluator(task, feature_layer, method, head, (task.train.x, task.eval.x)))
        population = with_pretrain_state(population, [values[i] for i in indices], head, head_optimizer,
                                         widths[tuple(indices)])
        runner = pretrain_runner(task, feature_layer, method, head, head_optimizer, len(indices), mesh)
        return BucketProgram(population, runner=runner, train_data=(jnp.asarray(task.train.x),),  # inputs only
                             extras=[{k: v for k, v in values[i].items() if k != "head_learning_rate"}
                                     for i in indices], evaluate=held_out_evaluation(losses[-1]))

    result = fit_population(config, plain, workdir, same_batches=same_batches, mesh=mesh, verbose=verbose,
                            program=program, label=LABEL)
    rows: list[dict] = [{} for _ in members]
    for number, ((task, indices), state) in enumerate(zip(trained, result.states)):
        train_losses, held_out = losses[number](state)
        for position, index in enumerate(indices):
            rows[index] = {"member": index, "bucket": number, "position": position, "method": method,
                           **{k: v for k, v in values[index].items() if k != "head_learning_rate"},
                           "learning_rate": float(plain[index].get("learning_rate", config.learning_rate)),
                           "seed": bucket_seeds(config, [index], plain)[0], "train_loss": float(train_losses[position]),
                           "eval_loss": float(held_out[position]),
                           "diverged_step": result.members[index]["diverged_step"]}
    layers = layer_names(jax.tree.map(lambda leaf: leaf[0], result.states[0].members.params))
    return PretrainResult(result, rows, method, feature_layer, layers)


__all__ = ["METHODS", "MLPHead", "PretrainResult", "PretrainState", "nt_xent", "pretrain", "pretrain_step",
           "reconstruction_error"]
