"""Task: the pure functions and data of one training problem, built from a TrainConfig."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import augment, losses, models, optim
from vhjax.config import TrainConfig, validate
from vhjax.data import Dataset, load
from vhjax.hparams import STATIC_ZERO_NAMES
from vhjax.models.utils import abstract_init


@dataclasses.dataclass(frozen=True)
class Task:
    """What a training step needs besides the state: model, objective, optimizer, data."""

    config: TrainConfig
    model: Any
    loss_fn: Callable
    augment_fn: Callable | None
    optimizer: optax.GradientTransformation
    train: Dataset
    eval: Dataset
    test: Dataset | None
    default_hparams: dict[str, jax.Array]
    mixing_fn: Callable | None = None  # (key, x, y_onehot, strength) -> (x, y_soft)
    penalty_multiplier: Callable | None = None  # step -> factor on the L1/L2/elastic-net coefficients
    preprocessing: tuple = ()  # fitted preprocessors (vhjax.preprocess.Fitted), in order
    # Hyperparameters that are 0 for every member and therefore static: no dropout masks are drawn
    # (on CPU their random bits cost more than a small network's matmuls), no penalty is computed.
    # Populations whose members set one of them use `with_member_hparams`.
    static_zero: frozenset[str] = frozenset()
    # With config.loss_weights: the names of the loss terms, in the order of hparams["loss_weights"].
    loss_terms: tuple[str, ...] = ()
    # keyword arguments the model's __call__ accepts among train, dropout_rate, arch
    model_call_kwargs: frozenset[str] = frozenset({"train", "dropout_rate", "arch"})




def build_task(config: TrainConfig) -> Task:
    """Validate the config, resolve every name, load the data and check shapes, before compiling."""
    validate(config)
    model = resolve_model(config)
    loss_fn = resolve_loss(config.loss)
    optimizer = optim.make_optimizer(
        config.optimizer,
        learning_rate=config.learning_rate,
        schedule=config.schedule,
        schedule_kwargs=dict(config.schedule_kwargs) or None,
        total_steps=config.steps,
        clip_norm=config.clip_norm,
        clip_value=config.clip_value,
        weight_decay=config.weight_decay,
        **dict(config.optimizer_kwargs),
    )
    optimizer = with_training_controls(optimizer, config)
    augment_fn, strengths, probs = (None, np.zeros(0), np.zeros(0))
    if config.augment:
        augment_fn, strengths, probs = augment.pipeline_from_config(list(config.augment))
    train = load_split(config, config.train_split)
    evaluation = load_split(config, config.eval_split)
    test = load_split(config, config.test_split) if config.test_split else None
    if config.batch_size > len(train):
        raise ValueError(
            f"config field 'batch_size' has value {config.batch_size}; allowed: at most the "
            f"{len(train)} examples of split {config.train_split!r}")
    train, evaluation, test, preprocessing = preprocess_splits(config.preprocess, train, evaluation, test)
    outputs, variables = traced_on_data(model, train, model_label(config.model))
    check_parameter_patterns(variables["params"], config)
    dropout = config.dropout_rate if config.dropout_rate is not None else getattr(model, "dropout_rate", 0.0)
    hparams = {
        "l1": jnp.float32(config.l1),
        "l2": jnp.float32(config.l2),
        "elastic_net": jnp.float32(config.elastic_net),
        "dropout_rate": jnp.float32(dropout or 0.0),
    }
    if augment_fn is not None:  # orbax cannot save zero-size arrays, so no empty entries
        hparams["aug_strength"] = jnp.asarray(strengths, jnp.float32)
        hparams["aug_prob"] = jnp.asarray(probs, jnp.float32)
    loss_terms = tuple(sorted(dict(config.loss_weights)))
    if loss_terms:
        check_loss_terms(outputs, train, loss_terms)
        hparams["loss_weights"] = jnp.asarray([config.loss_weights[name] for name in loss_terms], jnp.float32)
    if config.dp_clip_norm is not None:
        check_private_model(variables, config)
        hparams["dp_clip_norm"] = jnp.float32(config.dp_clip_norm)
        hparams["noise_multiplier"] = jnp.float32(config.noise_multiplier)
    mixing_fn = None
    if config.mixing is not None:
        mixing_fn = augment.get_mixing(config.mixing)
        hparams["mixing_strength"] = jnp.float32(config.mixing_strength)
    penalty_multiplier = None
    if config.penalty_schedule:
        schedule = dict(config.penalty_schedule)
        if "name" not in schedule:
            raise ValueError(f"config field 'penalty_schedule' has value {schedule!r}; allowed: a dict with a "
                             f"'name' (one of {', '.join(losses.WEIGHT_SCHEDULES.names())}) and its arguments")
        penalty_multiplier = losses.weight_schedule(schedule.pop("name"), **schedule)
    static_zero = frozenset(name for name in STATIC_ZERO_NAMES if float(hparams[name]) == 0.0)
    return Task(config, model, loss_fn, augment_fn, optimizer, train, evaluation, test, hparams, mixing_fn,
                penalty_multiplier, preprocessing, static_zero=static_zero, loss_terms=loss_terms,
                model_call_kwargs=call_keywords(model))


MODEL_CONTRACT = ("a flax.linen.Module whose __call__(x, ...) maps a batch of inputs to (batch, num_classes) "
                  "outputs; it may take train=, dropout_rate= and arch= keywords, which vhjax passes only if present")


def model_label(model: Any) -> str:
    """A registered model's name, or the class name of the user's own Module."""
    return model if isinstance(model, str) else f"{getattr(model, '__name__', type(model).__name__)} (your Module; "\
        f"the contract: {MODEL_CONTRACT})"


def resolve_model(config: TrainConfig) -> Any:
    """A registered model by name, or the user's own flax.linen.Module."""
    import flax.linen as nn

    if isinstance(config.model, nn.Module):
        if config.model_kwargs:
            raise ValueError(f"config field 'model_kwargs' has value {dict(config.model_kwargs)!r}; allowed: {{}} when "
                             "model is a Module instance (configure the Module itself)")
        return config.model
    if isinstance(config.model, type) and issubclass(config.model, nn.Module):
        return config.model(**dict(config.model_kwargs))
    if not isinstance(config.model, str):
        raise TypeError(f"config field 'model' has value {config.model!r}; allowed: a registered model name "
                        f"({', '.join(models.MODELS.names()[:8])}, ...) or {MODEL_CONTRACT}")
    return models.get_model(config.model, **dict(config.model_kwargs))


def resolve_loss(loss: Any) -> Callable:
    """A registered loss by name, or the user's own `(outputs, labels) -> per-example loss` callable."""
    if callable(loss):
        return loss
    return losses.get_loss(loss)


def call_keywords(model: Any) -> frozenset[str]:
    """Which of train, dropout_rate, arch the model's __call__ accepts (all, if it takes **kwargs)."""
    import inspect

    try:
        parameters = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return frozenset({"train", "dropout_rate", "arch"})
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return frozenset({"train", "dropout_rate", "arch"})
    return frozenset({"train", "dropout_rate", "arch"} & set(parameters))


def load_split(config: TrainConfig, split: str) -> Dataset:
    """One split of the config's dataset: a registered or TFDS name, a Dataset, (x, y) arrays, or a
    dict of splits {name: Dataset or (x, y)}; split strings slice in-memory data too ('train[:90%]')."""
    return load(config.dataset, split, data_dir=config.data_dir)


def with_member_hparams(task: Task, names: Any) -> Task:
    """The task with traced values for the static-zero hyperparameters among `names` (members set them)."""
    traced = task.static_zero & set(names or ())
    return dataclasses.replace(task, static_zero=task.static_zero - traced) if traced else task


def preprocess_splits(specs: Any, train: Dataset, evaluation: Dataset, test: Dataset | None):
    """Fit each preprocessor on the (already preprocessed) training split only; apply it to every split.

    'outliers' gives a keep-mask: it drops training examples only. Returns the splits and the
    fitted preprocessors (saved with the run by `fit`).
    """
    from vhjax import preprocess

    fitted_list = []
    for index, spec in enumerate(specs):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"config field 'preprocess' entry {index} is {spec!r}; allowed: a dict with a 'name' "
                             f"(one of {', '.join(preprocess.PREPROCESSORS.names())}) and its options")
        name = spec.pop("name")
        pre = preprocess.get_preprocessor(name, **spec)
        fitted = pre.fit(train.x.reshape(len(train), -1), train.y)
        fitted_list.append(fitted)
        if name == "outliers":
            keep = np.asarray(pre.transform(fitted, train.x.reshape(len(train), -1)), bool)
            train = dataclasses.replace(train, x=train.x[keep], y=train.y[keep])
            continue

        def apply(data: Dataset | None) -> Dataset | None:
            if data is None:
                return None
            out = np.asarray(pre.transform(fitted, data.x.reshape(len(data), -1)), np.float32)
            out = out.reshape(data.x.shape) if out.size == data.x.size else out
            return dataclasses.replace(data, x=out)

        train, evaluation, test = apply(train), apply(evaluation), apply(test)
    return train, evaluation, test, tuple(fitted_list)


def preprocess_inputs(preprocessing: Sequence[Any], x: np.ndarray, *, drop_outliers: bool) -> np.ndarray:
    """Other inputs (unlabelled training rows, a target domain's inputs) as `preprocess_splits` made the
    task's splits: each fitted preprocessor in order; 'outliers' drops rows where `drop_outliers` (rows
    that train, as on the training split), else it is skipped (as on the eval and test splits)."""
    from vhjax.preprocess.base import transform

    for fitted in preprocessing:
        out = np.asarray(transform(fitted, x.reshape(len(x), -1)), np.float32)
        if fitted.name == "outliers":
            x = x[out.astype(bool)] if drop_outliers else x
        else:
            x = out.reshape(x.shape) if out.size == x.size else out
    return x


def check_private_model(variables: dict, config: TrainConfig) -> None:
    """DP-SGD clips each example's gradient: a model whose training mixes examples (BatchNorm's batch
    statistics) has no per-example gradient, so it is refused before anything compiles."""
    mixing_state = sorted(set(variables) - {"params"})
    if mixing_state:
        raise ValueError(
            f"config field 'dp_clip_norm' has value {config.dp_clip_norm!r} with model {model_label(config.model)!r}, "
            f"whose training updates {', '.join(mixing_state)} (statistics over the batch, so one example's gradient "
            "depends on the others); allowed: a model without batch statistics (e.g. norm='group' or 'layer' "
            "where the model has a norm option), or dp_clip_norm=None")


def with_training_controls(optimizer: Any, config: TrainConfig) -> Any:
    """Per-layer learning-rate multipliers and freezing, then gradient accumulation, as config says."""
    from vhjax.train import controls

    if config.lr_multipliers or config.freeze:
        optimizer = controls.layerwise(optimizer, dict(config.lr_multipliers), tuple(config.freeze))
    if config.grad_accumulation > 1:
        optimizer = controls.accumulate_gradients(optimizer, config.grad_accumulation)
    return optimizer


def check_loss_terms(outputs: jax.ShapeDtypeStruct, data: Dataset, names: tuple[str, ...]) -> None:
    """Each named loss must take the model's outputs (for a batch of 2) and the dataset's labels."""
    labels = jax.ShapeDtypeStruct((2, *data.y.shape[1:]), data.y.dtype)
    for name in names:
        loss_fn = losses.get_loss(name)  # unknown names raise, listing the known ones
        try:
            per_example = jax.eval_shape(loss_fn, outputs, labels)
        except Exception as error:
            raise ValueError(f"config field 'loss_weights' names loss {name!r}, which cannot take outputs of shape "
                             f"{outputs.shape} with labels of shape {labels.shape}: {error}") from None
        if per_example.shape != (2,):
            raise ValueError(f"config field 'loss_weights': loss {name!r} gives shape {per_example.shape} for "
                             "a batch of 2; allowed: one value per example")


def check_parameter_patterns(params: Any, config: TrainConfig) -> None:
    """`freeze` and `lr_multipliers` globs must each match one of the model's `params` (abstract or not)."""
    if not config.freeze and not config.lr_multipliers:
        return
    from vhjax.train import controls

    controls.check_patterns_match(params, tuple(config.freeze), "freeze")
    controls.check_patterns_match(params, tuple(config.lr_multipliers), "lr_multipliers")


def check_model_fits_data(model: Any, data: Dataset, model_name: str) -> jax.ShapeDtypeStruct:
    """Trace the model on the data's shape; raise ValueError with expected vs actual shapes.
    Returns the outputs' shape for a batch of 2."""
    return traced_on_data(model, data, model_name)[0]


def traced_on_data(model: Any, data: Dataset, model_name: str) -> tuple[jax.ShapeDtypeStruct, Any]:
    """(outputs, variables) of the model for a batch of 2 of the data's shape, abstract (one trace,
    `models.utils.abstract_init`), after `check_model_fits_data`'s checks."""
    try:
        out, variables = abstract_init(model, (2, *data.x.shape[1:]))
    except Exception as error:  # the model cannot consume this input at all
        raise ValueError(
            f"model {model_name!r} cannot take inputs of shape (batch, {', '.join(map(str, data.x.shape[1:]))}) "
            f"from dataset {data.name!r}: {error}") from error
    if out.shape != (2, data.num_classes):
        raise ValueError(
            f"model {model_name!r} outputs shape (batch, {', '.join(map(str, out.shape[1:]))}) but dataset "
            f"{data.name!r} has {data.num_classes} classes: expected (batch, {data.num_classes})")
    return out, variables
