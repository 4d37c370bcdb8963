"""The training and evaluation steps, written once for one member.

`jax.vmap` of these functions is the population step (vhjax.population); `lax.scan` of the
train step is a chunk of training with no Python in the loop (vhjax.population.engine).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vhjax import losses, metrics, regularizers
from vhjax.batching import map_in_batches
from vhjax.counter_hash import hashed_bits, indices_by_words
from vhjax.train.poisson import uses_poisson
from vhjax.train.state import TrainState
from vhjax.train.task import Task

Batch = tuple[jax.Array, jax.Array]


def init_state(task: Task, key: jax.Array, hparams: dict[str, jax.Array] | None = None,
               data_key: jax.Array | None = None) -> TrainState:
    """Initialise parameters, optimizer state and keys of one member."""
    init_key, dropout_key, member_key, default_data_key = jax.random.split(key, 4)
    example = jnp.zeros((1, *task.train.x.shape[1:]), jnp.float32)
    variables = dict(task.model.init({"params": init_key, "dropout": dropout_key}, example))
    params = variables.pop("params")
    return TrainState(
        step=jnp.int32(0),
        params=params,
        model_state=variables,
        opt_state=task.optimizer.init(params),
        hparams=dict(task.default_hparams if hparams is None else hparams),
        key=member_key,
        data_key=default_data_key if data_key is None else data_key,
    )


def epoch_order(data_key: jax.Array, epoch: jax.Array, num_examples: int, shuffle: bool) -> jax.Array:
    """The example order of one epoch: a permutation drawn from (data_key, epoch), or 0..N-1.

    The order sorts the examples by counter-hash words (one sort, `counter_hash.indices_by_words`;
    `jax.random.permutation` runs threefry and two sorts, which cost a population's training
    program about 0.25 s of CPU compilation). The hash's seed is drawn with threefry from
    (data_key, epoch): seeding it from the key's words by the hash alone compiled 0.1-0.2 s sooner,
    but with it the shrinking PBT reached Optuna TPE's best in 6 of 12 seeds against 12 of 12
    (experiments/README.md, session 39)."""
    if not shuffle:
        return jnp.arange(num_examples)
    return indices_by_words(hashed_bits(jax.random.fold_in(data_key, epoch), num_examples))


def chunk_batch_indices(data_key: jax.Array, start: jax.Array, length: int, num_examples: int,
                        batch_size: int, shuffle: bool, drop_remainder: bool = True) -> jax.Array:
    """Batch indices (length, batch_size) for steps start .. start+length-1.

    The batch of a step is a pure function of (data_key, step): a fresh permutation each epoch.
    With `drop_remainder` the last partial batch of each epoch is dropped; without it batches run
    across epoch boundaries (the stream of epoch permutations cut every batch_size examples), so
    every example is used once per epoch. A resumed run sees exactly the batches an uninterrupted
    one would. Only the epochs the chunk spans are permuted (not one per step).
    """
    if not drop_remainder:
        first = (start * batch_size) // num_examples
        epochs = (length * batch_size) // num_examples + 2
        orders = jax.vmap(lambda e: epoch_order(data_key, first + e, num_examples, shuffle))(jnp.arange(epochs))
        positions = (start + jnp.arange(length))[:, None] * batch_size + jnp.arange(batch_size)[None, :]
        epoch, index = jnp.divmod(positions, num_examples)
        return orders[epoch - first, index]
    steps_per_epoch = num_examples // batch_size
    first_epoch = start // steps_per_epoch
    epochs = length // steps_per_epoch + 2  # static bound on the epochs a chunk can touch
    orders = jax.vmap(lambda e: epoch_order(data_key, first_epoch + e, num_examples, shuffle))(jnp.arange(epochs))
    steps = start + jnp.arange(length)
    epoch, position = jnp.divmod(steps, steps_per_epoch)
    columns = position[:, None] * batch_size + jnp.arange(batch_size)[None, :]
    return orders[(epoch - first_epoch)[:, None], columns]


def apply_model(task: Task, params, model_state, hparams: dict, x: jax.Array, *, train: bool,
                dropout_key: jax.Array | None = None):
    """Run the model; returns (outputs, updated model_state).

    A member whose hparams hold an `arch` entry (masks or one-hots of a searchable model built at
    maximum size) passes it to the model, so members of one program can differ in architecture.
    """
    variables = {"params": params, **model_state}
    kwargs = {"train": train, "dropout_rate": 0.0 if "dropout_rate" in task.static_zero else hparams["dropout_rate"]}
    if "arch" in hparams:
        kwargs["arch"] = hparams["arch"]
    kwargs = {name: value for name, value in kwargs.items() if name in task.model_call_kwargs}
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    if train and model_state:
        outputs, new_state = task.model.apply(variables, x, rngs=rngs, mutable=list(model_state), **kwargs)
        return outputs, dict(new_state)
    return task.model.apply(variables, x, rngs=rngs, **kwargs), model_state


def per_example_loss(task: Task, hparams: dict, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The task's loss per example: `loss`, or the member's weighted sum of `loss_weights` terms."""
    if not task.loss_terms:
        return task.loss_fn(outputs, targets)
    weights = hparams["loss_weights"]
    return sum(weights[i] * losses.get_loss(name)(outputs, targets) for i, name in enumerate(task.loss_terms))


def scale_updates(updates, scale: jax.Array):
    """Each parameter tensor's update times its entry of `scale (T,)`, tensors in `jax.tree.leaves`
    order (see `vhjax.transfer.masks.tensor_paths`); an entry 0 gives an update of exactly 0."""
    leaves, treedef = jax.tree.flatten(updates)
    scaled = [jnp.where(scale[i] == 0, jnp.zeros_like(leaf), leaf * scale[i].astype(leaf.dtype))
              for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, scaled)


def with_penalty(task: Task, state: TrainState, params, loss: jax.Array) -> jax.Array:
    """`loss` plus the member's regularisation penalty on `params` (static-zero coefficients are left
    out: no penalty is computed for them; adaptive L1/L2 coefficients follow their schedule)."""
    hp = state.hparams
    coefficients = {name: hp[name] for name in regularizers.PENALTY_NAMES if name not in task.static_zero}
    if not coefficients:
        return loss
    if task.penalty_multiplier is not None:
        factor = task.penalty_multiplier(state.step)
        coefficients = {name: value * factor for name, value in coefficients.items()}
    return loss + regularizers.penalty(params, coefficients, where=task.config.regularize,
                                       l1_ratio=task.config.l1_ratio)


def update_factors(hparams: dict, step: jax.Array) -> jax.Array | None:
    """The per-tensor multipliers of this step's updates: `update_scale` (T,) where the member has
    it, times `step >= update_start` (T,) where it has that (gradual unfreezing in one run); None
    when it has neither (nothing is scaled, nothing is computed)."""
    scale, start = hparams.get("update_scale"), hparams.get("update_start")
    if start is None:
        return scale
    started = step >= start
    return started.astype(jnp.float32) if scale is None else jnp.where(started, scale, jnp.zeros_like(scale))


def apply_gradients(task: Task, state: TrainState, grads) -> tuple:
    """(new params, new optimizer state): the optimizer's step, the member's per-tensor
    `update_scale` (0: frozen) and `update_start` (no update before that step), and the config's
    max-norm constraint, which leaves a tensor whose update is zeroed (frozen, not started) as it
    is. The optimizer state advances for every tensor, started or not."""
    updates, opt_state = task.optimizer.update(grads, state.opt_state, state.params)
    factors = update_factors(state.hparams, state.step)
    if factors is not None:
        updates = scale_updates(updates, factors)
    new_params = optax.apply_updates(state.params, updates)
    if task.config.max_norm is not None:
        projected = regularizers.max_norm(new_params, task.config.max_norm, where=task.config.regularize)
        new_params = projected if factors is None else keep_unmoved(projected, state.params, factors)
    return new_params, opt_state


def keep_unmoved(params, old_params, factors: jax.Array):
    """`params` with every tensor whose factor (T,) is 0 restored from `old_params`."""
    leaves, treedef = jax.tree.flatten(params)
    old = jax.tree.leaves(old_params)
    kept = [jnp.where(factors[i] == 0, before, after) for i, (after, before) in enumerate(zip(leaves, old))]
    return jax.tree.unflatten(treedef, kept)


NOISE_KEY_TAG = 7  # DP-SGD's noise key: fold_in(the step's augmentation key, 7); mixing uses 1


def per_example_objective(task: Task, state: TrainState, dropout_key: jax.Array,
                          data_loss: Callable | None) -> Callable:
    """`(params, index, (x, target, batch) of one example) -> (its loss, its outputs)`: the task's
    loss (or `data_loss`) on a batch of that one example, its dropout key folded with its index."""

    def example_loss(params, index, example):
        x, target, batch = jax.tree.map(lambda leaf: leaf[None], example)
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
        outputs, _ = apply_model(task, params, state.model_state, state.hparams, x, train=True, dropout_key=key)
        loss = (per_example_loss(task, state.hparams, outputs, target) if data_loss is None
                else data_loss(state, outputs, target, batch))
        return loss[0], outputs[0]

    return example_loss


def private_gradients(example_loss: Callable, state: TrainState, examples: tuple, noise_key: jax.Array,
                      weights: jax.Array | None = None, expected_size: int | None = None):
    """DP-SGD's gradient (Abadi et al. 2016) of a member with hparams `dp_clip_norm` C and
    `noise_multiplier` s: each example's gradient scaled to L2 norm at most C, summed, Gaussian
    noise of std s*C added, divided by the batch size. C = 0: the plain mean gradient (a member
    that is not private, in the same program).

    A Poisson batch (`vhjax.train.poisson`) gives each row's `weights` (1 sampled, 0 padding): a
    padding row's gradient is zero before clipping, and the sum is divided by `expected_size` (the
    config's batch size), not by the sample's size, which would depend on the data (Abadi et al.'s
    estimator; the non-private member's gradient is then unbiased too). Returns (mean loss of the
    sampled examples, outputs, gradient, fraction of them clipped)."""
    size = jax.tree.leaves(examples)[0].shape[0]
    if weights is None:
        (example_losses, outputs), example_grads = jax.vmap(
            jax.value_and_grad(example_loss, has_aux=True), in_axes=(None, 0, 0))(
                state.params, jnp.arange(size), examples)
        count, divisor = size, size
    else:
        def weighted_loss(params, index, example, weight):  # weight 0 or 1: the gradient is 0 or the example's
            loss, outputs = example_loss(params, index, example)
            return loss * weight, outputs

        # the weight enters the loss, not the gradients: multiplying the per-example gradients by it
        # made 600 steps of 6 MNIST-1D CNN members take 10.1 s against 6.8 s (6.0-6.4 s shuffled)
        (example_losses, outputs), example_grads = jax.vmap(
            jax.value_and_grad(weighted_loss, has_aux=True), in_axes=(None, 0, 0, 0))(
                state.params, jnp.arange(size), examples, weights)
        count, divisor = jnp.maximum(jnp.sum(weights), 1.0), expected_size
        example_losses = example_losses * (size / count)  # so that .mean() is the sampled examples'
    clip, multiplier = state.hparams["dp_clip_norm"], state.hparams["noise_multiplier"]
    summed, clipped = optax.per_example_global_norm_clip(example_grads, jnp.where(clip > 0, clip, jnp.inf))
    leaves, treedef = jax.tree.flatten(summed)
    noise_keys = jax.random.split(noise_key, len(leaves))
    std = multiplier * clip
    noisy = [(leaf + std * jax.random.normal(k, leaf.shape, leaf.dtype)) / divisor
             for leaf, k in zip(leaves, noise_keys)]
    return example_losses.mean(), outputs, jax.tree.unflatten(treedef, noisy), clipped / count


def make_train_step(task: Task, data_loss: Callable | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The pure train step of one member on one batch (x, y): augment, step the optimizer.

    `data_loss(state, outputs, targets, batch) -> per-example loss` replaces the task's loss; the
    batch may then carry more than (x, y), e.g. a teacher's logits (`vhjax.transfer.distill`); a
    Poisson batch (`vhjax.train.poisson`) carries each row's weight last."""
    poisson = uses_poisson(task.config)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        x, y = batch[0], batch[1]
        augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
        hp = state.hparams
        if task.augment_fn is not None:
            x = task.augment_fn(augment_key, x, hp["aug_strength"], hp["aug_prob"])
        targets = y
        if task.mixing_fn is not None:  # mixup / CutMix: soft targets from one-hot labels
            targets = jax.nn.one_hot(y, task.train.num_classes)
            x, targets = task.mixing_fn(jax.random.fold_in(augment_key, 1), x, targets, hp["mixing_strength"])

        def objective(params):
            outputs, model_state = apply_model(task, params, state.model_state, hp, x, train=True,
                                               dropout_key=dropout_key)
            per_example = (per_example_loss(task, hp, outputs, targets) if data_loss is None
                           else data_loss(state, outputs, targets, batch))
            loss = per_example.mean()
            return with_penalty(task, state, params, loss), (loss, outputs, model_state)

        extra = {}
        accuracy = None
        if "dp_clip_norm" in hp:  # DP-SGD: clipped per-example gradients and Gaussian noise
            example_loss = per_example_objective(task, state, dropout_key, data_loss)
            weights = batch[-1] if poisson else None  # a Poisson batch: 1 for each sampled row, 0 for padding
            mean_data_loss, outputs, data_grads, clipped = private_gradients(
                example_loss, state, (x, targets, batch), jax.random.fold_in(augment_key, NOISE_KEY_TAG),
                weights, task.config.batch_size)
            if poisson:
                predicted = metrics.predicted_classes(outputs)
                correct = predicted == metrics.label_classes(y, predicted)
                accuracy = jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)
                extra["batch_size"] = jnp.sum(weights)
            penalty, penalty_grads = jax.value_and_grad(
                lambda params: with_penalty(task, state, params, jnp.float32(0.0)))(state.params)
            total, model_state = mean_data_loss + penalty, state.model_state
            grads = jax.tree.map(jnp.add, data_grads, penalty_grads)
            extra = {"clipped_fraction": clipped}
        else:
            (total, (mean_data_loss, outputs, model_state)), grads = jax.value_and_grad(
                objective, has_aux=True)(state.params)
        new_params, opt_state = apply_gradients(task, state, grads)
        new_state = state.replace(step=state.step + 1, params=new_params,
                                  opt_state=opt_state, model_state=model_state)
        if accuracy is None:
            accuracy = metrics.accuracy(outputs, y)
        step_metrics = {"loss": total, "data_loss": mean_data_loss, "accuracy": accuracy, **extra}
        return new_state, step_metrics

    return train_step


def _macro_f1(outputs: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    return metrics.precision_recall_f1(outputs, y, num_classes)["macro_f1"]


# Evaluation metrics by name: (outputs, labels, per-example loss, num_classes) -> scalar
EVAL_METRICS: dict[str, Callable] = {
    "loss": lambda outputs, y, loss, k: loss.mean(),
    "accuracy": lambda outputs, y, loss, k: metrics.accuracy(outputs, y),
    "macro_f1": lambda outputs, y, loss, k: _macro_f1(outputs, y, k),
    "nll": lambda outputs, y, loss, k: -jnp.take_along_axis(jax.nn.log_softmax(outputs), y[:, None], 1).mean(),
    "top5_accuracy": lambda outputs, y, loss, k: jnp.mean(jnp.any(
        jax.lax.top_k(outputs, min(5, k))[1] == y[:, None], axis=1)),
}


AUTO_PRECISE_BN_EXAMPLES = 10_000  # 'auto': the training set up to this many examples ...
AUTO_PRECISE_BN_BYTES = 32 << 20  # ... and this many bytes of inputs (they are a constant of the program)


def precise_bn_count(config: Any, train_size: int, example_bytes: int) -> int:
    """How many training batches precise BN recomputes statistics over (0: off)."""
    count = config.precise_bn_batches
    if count == "auto":
        examples = min(train_size, AUTO_PRECISE_BN_EXAMPLES, AUTO_PRECISE_BN_BYTES // max(example_bytes, 1))
        count = examples // config.batch_size
    return min(int(count), train_size // config.batch_size)


def precise_bn_batches(task: Task) -> jax.Array | None:
    """The batches of training inputs precise BN runs over (the first examples, in order), or None."""
    x = task.train.x
    count = precise_bn_count(task.config, len(x), x[:1].nbytes)
    if not count:
        return None
    size = task.config.batch_size
    return jnp.asarray(x[:count * size]).reshape(count, size, *x.shape[1:])


def recompute_statistics(task: Task) -> Callable[[TrainState, jax.Array], TrainState]:
    """`(state, batches) -> state` with its BatchNorm statistics recomputed exactly over `batches`
    (count, batch size, *input shape) of training inputs; the identity for a model without BatchNorm.
    For callers whose members see different training examples (k-fold: each member its own fold's)."""

    def apply(state: TrainState, batches: jax.Array) -> TrainState:
        if "batch_stats" not in state.model_state:
            return state
        from vhjax.models import recompute_batch_stats

        kwargs = {"dropout_rate": 0.0} if "dropout_rate" in task.model_call_kwargs else {}
        return state.replace(model_state=recompute_batch_stats(
            task.model, {"params": state.params, **state.model_state}, batches, **kwargs))

    return apply


def precise_statistics(task: Task) -> Callable[[TrainState], TrainState]:
    """`state -> state` with its BatchNorm statistics recomputed exactly over the precise-BN batches
    (`precise_bn_batches`); the identity for models without BatchNorm or with precise BN off.
    Idempotent (training-mode statistics do not depend on the running ones), so evaluating a state
    that already holds them changes nothing. The batches are built on the first trace of a model
    with BatchNorm (a model without pays nothing) and are a constant of the program."""
    inputs: list = []
    recompute = recompute_statistics(task)

    def apply(state: TrainState) -> TrainState:
        if "batch_stats" not in state.model_state:
            return state
        if not inputs:
            inputs.append(precise_bn_batches(task))
        return state if inputs[0] is None else recompute(state, inputs[0])

    return apply


def make_eval_fn(task: Task, *, precise: bool = True) -> Callable:
    """`evaluate(state, x, y) -> metrics` of one member over a whole split, in fixed-size batches;
    the metrics named in `config.eval_metrics` (see EVAL_METRICS). A model with BatchNorm first has
    its statistics recomputed exactly over `config.precise_bn_batches` training batches ("precise
    BN", by default the training set up to 10,000 examples; for evaluation only, training keeps its
    running averages; 0 evaluates with the running averages). `precise=False`: the state's own
    statistics as they are (a caller that recomputed them itself, e.g. per k-fold member)."""
    batch_size = task.config.eval_batch_size
    num_classes = task.train.num_classes
    names = (task.config.eval_metrics,) if isinstance(task.config.eval_metrics, str) else tuple(task.config.eval_metrics)

    with_precise_statistics = precise_statistics(task) if precise else (lambda state: state)

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        state = with_precise_statistics(state)
        outputs = map_in_batches(
            lambda xb: apply_model(task, state.params, state.model_state, state.hparams, xb, train=False)[0],
            x, batch_size)
        loss = per_example_loss(task, state.hparams, outputs, y)
        return {name: EVAL_METRICS[name](outputs, y, loss, num_classes) for name in names}

    return evaluate
