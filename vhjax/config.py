"""Training configuration: a frozen dataclass, Python config files, and command-line overrides.

A config file is a Python file with a `get_config() -> TrainConfig` function whose docstring says
the command, the hardware and the expected result (the big_vision convention).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from vhjax.validation import (check_choice, check_int, check_number, check_optional_number, is_number,
                              require)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Field names are the override keys of `vhjax train`."""

    # data
    dataset: str = "mnist1d"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    test_split: str | None = None
    shuffle: bool = True
    preprocess: Sequence[Mapping[str, Any]] = ()  # e.g. ({"name": "standardize"},): fitted on train only
    # model
    model: str = "mnist1d_mlp"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dropout_rate: float | None = None
    # objective
    loss: str = "cross_entropy"
    # a weighted sum of named losses, e.g. {"cross_entropy": 1.0, "huber": 0.1}; when given it replaces
    # `loss`, and in a population each member has its own weights (arrays in one compiled step)
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    l1: float = 0.0
    l2: float = 0.0
    elastic_net: float = 0.0
    l1_ratio: float = 0.5
    regularize: str = "kernels"
    penalty_schedule: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # adaptive L1/L2: a
    # multiplier of step, e.g. {"name": "linear", "init_value": 0.0, "end_value": 1.0, "transition_steps": 1000}
    max_norm: float | None = None  # project each unit's incoming weights to norm <= max_norm after each step
    augment: Sequence[Mapping[str, Any]] = ()
    mixing: str | None = None  # 'mixup' or 'cutmix': mixes inputs and (one-hot) labels
    mixing_strength: float = 0.0  # the Beta parameter alpha; 0 = no mixing
    # optimizer
    optimizer: str = "adam"
    learning_rate: float = 1e-2
    optimizer_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight_decay: float = 0.0
    schedule: str = "constant"
    schedule_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    clip_norm: float | None = None
    clip_value: float | None = None
    lr_multipliers: Mapping[str, float] = dataclasses.field(default_factory=dict)  # path glob -> multiplier
    freeze: Sequence[str] = ()  # path globs of parameters that never change
    grad_accumulation: int = 1  # micro-batches averaged per optimizer step
    plateau_patience: int | None = None  # reduce-LR-on-plateau: evaluations without improvement
    plateau_factor: float = 0.1
    # loop
    batch_size: int = 100
    steps: int = 6000
    eval_every: int = 500
    eval_batch_size: int = 1000
    patience: int | None = None  # early stopping per member: evaluations without improvement
    monitor: str = "accuracy"
    monitor_mode: str = "max"
    monitor_split: str = "eval"  # 'train' monitors the chunk's step metrics (e.g. the training loss)
    keep_best: bool = False  # keep each member's best parameters (always on with patience)
    checkpoint_every: int = 1  # in evaluations
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


MONITORED_METRICS = ("accuracy", "loss", "macro_f1", "data_loss")
# optimizer hyperparameters with a known range (others given in optimizer_kwargs must be finite)
OPTIMIZER_RANGES = {"b1": (0.0, 1.0), "b2": (0.0, 1.0), "momentum": (0.0, 1.0), "decay": (0.0, 1.0),
                    "rho": (0.0, 1.0), "eps": (0.0, None), "initial_accumulator_value": (0.0, None)}


def validate(config: TrainConfig) -> None:
    """Check the config's own fields (names are checked against registries in `build_task`):
    every message names the field, the value and what is allowed (see `vhjax.validation`)."""
    from vhjax.hparams import BY_NAME

    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "grad_accumulation", "checkpoint_every"):
        check_int(f"config field {name!r}", getattr(config, name), 1)
    check_int("config field 'seed'", config.seed, 0)
    for name in ("patience", "plateau_patience"):
        if getattr(config, name) is not None:
            check_int(f"config field {name!r}", getattr(config, name), 1)
    for spec in BY_NAME.values():  # the per-member hyperparameters with a config field
        if spec.config_field is None or getattr(config, spec.config_field) is None:
            continue
        value = getattr(config, spec.config_field)
        require(is_number(value) and bool(spec.contains(float(value))), f"config field {spec.config_field!r}",
                value, spec.allowed)
    for name, weight in dict(config.loss_weights).items():
        check_number(f"config field 'loss_weights[{name!r}]'", weight, 0.0)
    check_optional_number("config field 'max_norm'", config.max_norm, 0.0, low_inclusive=False)
    check_optional_number("config field 'clip_norm'", config.clip_norm, 0.0, low_inclusive=False)
    check_optional_number("config field 'clip_value'", config.clip_value, 0.0, low_inclusive=False)
    check_number("config field 'l1_ratio'", config.l1_ratio, 0.0, 1.0)
    check_number("config field 'plateau_factor'", config.plateau_factor, 0.0, 1.0, low_inclusive=False,
                 high_inclusive=False)
    for pattern, value in dict(config.lr_multipliers).items():
        check_number(f"config field 'lr_multipliers[{pattern!r}]'", value, 0.0)
    for name, value in dict(config.optimizer_kwargs).items():
        low, high = OPTIMIZER_RANGES.get(name, (None, None))
        if is_number(value):
            check_number(f"config field 'optimizer_kwargs[{name!r}]'", value, low, high,
                         high_inclusive=name not in ("b1", "b2", "decay", "rho"))
    check_choice("config field 'monitor'", config.monitor, MONITORED_METRICS)
    check_choice("config field 'monitor_mode'", config.monitor_mode, ("max", "min"))
    check_choice("config field 'monitor_split'", config.monitor_split, ("train", "eval"))
    if config.monitor_split == "train":
        require(config.monitor in ("loss", "accuracy", "data_loss"), "config field 'monitor'", config.monitor,
                "'loss', 'data_loss' or 'accuracy' when monitor_split is 'train' (the step metrics)")
    require(isinstance(config.keep_best, bool), "config field 'keep_best'", config.keep_best, "True or False")
    require(isinstance(config.shuffle, bool), "config field 'shuffle'", config.shuffle, "True or False")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key=value`; the value is a Python literal if it parses as one, else a string."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `key=value` overrides; `model_kwargs.widths=(64,64)` sets one key of a dict field."""
    fields = {f.name for f in dataclasses.fields(config)}
    for text in overrides:
        key, value = parse_override(text)
        top, _, sub = key.partition(".")
        if top not in fields:
            raise ValueError(f"unknown config field {top!r}; known fields: {', '.join(sorted(fields))}")
        if sub:
            current = dict(getattr(config, top) or {})
            current[sub] = value
            value = current
        config = dataclasses.replace(config, **{top: value})
    return config


def load_config_file(path: str | Path) -> TrainConfig:
    """Load `get_config()` from a Python config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"vhjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config() function")
    config = module.get_config()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"get_config() in {str(path)!r} returned {type(config).__name__}, expected TrainConfig")
    return config
