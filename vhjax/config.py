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


MONITORED_METRICS = ("accuracy", "loss", "macro_f1")


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"config field {field!r} has value {value!r}; allowed: {allowed}")


def validate(config: TrainConfig) -> None:
    """Check the config's own fields (names are checked against registries in `build_task`)."""
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "grad_accumulation", "checkpoint_every"):
        value = getattr(config, name)
        _require(isinstance(value, int) and value > 0, name, value, "a positive integer")
    if config.patience is not None:
        _require(isinstance(config.patience, int) and config.patience > 0, "patience", config.patience,
                 "a positive integer (evaluations without improvement) or None")
    _require(config.learning_rate > 0, "learning_rate", config.learning_rate, "a positive number")
    for name in ("l1", "l2", "elastic_net", "weight_decay"):
        value = getattr(config, name)
        _require(value >= 0, name, value, "a non-negative number")
    for name, weight in dict(config.loss_weights).items():
        _require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 <= weight < float("inf"),
                 f"loss_weights[{name!r}]", weight, "a finite number >= 0")
    if config.max_norm is not None:
        _require(config.max_norm > 0, "max_norm", config.max_norm, "a positive number or None")
    _require(config.mixing_strength >= 0, "mixing_strength", config.mixing_strength, "a non-negative number")
    _require(0.0 <= config.l1_ratio <= 1.0, "l1_ratio", config.l1_ratio, "a number in [0, 1]")
    if config.dropout_rate is not None:
        _require(0.0 <= config.dropout_rate < 1.0, "dropout_rate", config.dropout_rate, "a number in [0, 1)")
    if config.plateau_patience is not None:
        _require(isinstance(config.plateau_patience, int) and config.plateau_patience > 0, "plateau_patience",
                 config.plateau_patience, "a positive integer (evaluations without improvement) or None")
    _require(0.0 < config.plateau_factor < 1.0, "plateau_factor", config.plateau_factor, "a number in (0, 1)")
    for pattern, value in dict(config.lr_multipliers).items():
        _require(isinstance(value, (int, float)) and value >= 0, f"lr_multipliers[{pattern!r}]", value,
                 "a non-negative number")
    _require(config.monitor in MONITORED_METRICS, "monitor", config.monitor, ", ".join(MONITORED_METRICS))
    _require(config.monitor_mode in ("max", "min"), "monitor_mode", config.monitor_mode, "'max' or 'min'")
    _require(isinstance(config.monitor_split, str) and config.monitor_split in ("train", "eval"), "monitor_split",
             config.monitor_split, "'train' (the step metrics) or 'eval'")


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
