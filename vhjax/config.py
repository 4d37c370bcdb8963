"""Training configuration: a frozen dataclass, Python config files, and command-line overrides.

A config file is a Python file with a `get_config() -> TrainConfig` function whose docstring says
the command, the hardware and the expected result (the big_vision convention).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

from vhjax.validation import (check_choice, check_int, check_number, check_optional_number, is_number,
                              require)


SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "train_split", "eval_split", "test_split", "shuffle", "drop_remainder",
             "preprocess"),
    "model": ("model", "model_kwargs", "dropout_rate"),
    "objective": ("loss", "loss_weights"),
    "regularization": ("l1", "l2", "elastic_net", "l1_ratio", "regularize", "penalty_schedule", "max_norm"),
    "augmentation": ("augment", "mixing", "mixing_strength"),
    "optimizer": ("optimizer", "learning_rate", "optimizer_kwargs", "weight_decay", "schedule", "schedule_kwargs",
                  "clip_norm", "clip_value", "lr_multipliers", "freeze", "grad_accumulation", "plateau_patience",
                  "plateau_factor"),
    "privacy": ("dp_clip_norm", "noise_multiplier", "dp_delta", "dp_sampling", "dp_max_batch_size"),
    "loop": ("batch_size", "steps", "checkpoint_every", "seed"),
    "evaluation": ("eval_every", "eval_batch_size", "eval_metrics", "precise_bn_batches", "patience", "monitor",
                   "monitor_mode", "monitor_split", "keep_best"),
}


# fields added after stores and workdirs existed, with their defaults: `to_dict` leaves them out there
LATER_FIELDS: dict[str, Any] = {"dp_clip_norm": None, "noise_multiplier": 0.0, "dp_delta": 1e-5,
                                "dp_sampling": "shuffle", "dp_max_batch_size": None}
DP_SAMPLINGS = ("shuffle", "poisson")  # DP-SGD's batches: slices of shuffled epochs, or Poisson samples


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs, grouped in SECTIONS (data, model, objective,
    regularization, augmentation, optimizer, loop, evaluation). Fields are set flat
    (`TrainConfig(learning_rate=3e-3)`) or by section (`TrainConfig.from_sections({"optimizer":
    {"learning_rate": 3e-3}})`); overrides take either form (`learning_rate=3e-3`,
    `optimizer.learning_rate=3e-3`). Per-member hyperparameters are listed in `vhjax.hparams`."""

    # --- data
    dataset: Any = "mnist1d"  # a registered name, a TFDS name, a Dataset, or (x, y) arrays
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    test_split: str | None = None
    shuffle: bool = True
    drop_remainder: bool = True  # False: batches run across epoch boundaries, every example used each epoch
    preprocess: Sequence[Mapping[str, Any]] = ()  # e.g. ({"name": "standardize"},): fitted on train only
    # --- model
    model: Any = "mnist1d_mlp"  # a registered name or a flax.linen.Module
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dropout_rate: float | None = None
    # --- objective
    loss: Any = "cross_entropy"  # a registered name or a callable (outputs, labels) -> per-example loss
    # a weighted sum of named losses, e.g. {"cross_entropy": 1.0, "huber": 0.1}; when given it replaces
    # `loss`, and in a population each member has its own weights (arrays in one compiled step)
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # --- regularization
    l1: float = 0.0
    l2: float = 0.0
    elastic_net: float = 0.0
    l1_ratio: float = 0.5
    regularize: str = "kernels"
    penalty_schedule: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # adaptive L1/L2: a
    # multiplier of step, e.g. {"name": "linear", "init_value": 0.0, "end_value": 1.0, "transition_steps": 1000}
    max_norm: float | None = None  # project each unit's incoming weights to norm <= max_norm after each step
    # --- augmentation
    augment: Sequence[Mapping[str, Any]] = ()
    mixing: str | None = None  # 'mixup' or 'cutmix': mixes inputs and (one-hot) labels
    mixing_strength: float = 0.0  # the Beta parameter alpha; 0 = no mixing
    # --- optimizer
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
    plateau_patience: int | None = None  # reduce-LR-on-plateau per member: evaluations without improvement
    plateau_factor: float = 0.1
    # --- privacy (DP-SGD, `vhjax.privacy`): each example's gradient clipped to this L2 norm, Gaussian
    # noise of std noise_multiplier * dp_clip_norm added to their sum; None: plain gradients
    dp_clip_norm: float | None = None
    noise_multiplier: float = 0.0
    dp_delta: float = 1e-5  # the delta of the epsilon each member reports (choose it below 1 / train size)
    # 'poisson': each step's batch a Poisson sample (each example with probability batch_size / N),
    # as the accountants assume, padded to dp_max_batch_size rows (None: exceeded with probability
    # 1e-6 a step; a larger sample is cut to a random subset, and accounted so); 'shuffle': slices
    # of shuffled epochs, accounted as Poisson by convention (vhjax.train.poisson, docs/privacy.md)
    dp_sampling: str = "shuffle"
    dp_max_batch_size: int | None = None
    # --- loop
    batch_size: int = 100
    steps: int = 6000
    checkpoint_every: int = 1  # in evaluations
    seed: int = 0
    # --- evaluation
    eval_every: int = 500
    eval_batch_size: int = 1000
    eval_metrics: Sequence[str] = ("loss", "accuracy", "macro_f1")
    # BatchNorm statistics recomputed over that many training batches before each evaluation ("precise
    # BN"); 'auto': the training set up to 10,000 examples (and 32 MiB of inputs); 0: running averages
    precise_bn_batches: int | str = "auto"
    patience: int | None = None  # early stopping per member: evaluations without improvement
    monitor: str = "accuracy"
    monitor_mode: str = "max"
    monitor_split: str = "eval"  # 'train' monitors the chunk's step metrics (e.g. the training loss)
    keep_best: bool = False  # keep each member's best parameters (always on with patience)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able fields (objects such as a Module or arrays are described, not serialized).

        Fields added after stores and workdirs existed (`LATER_FIELDS`) are left out at their
        defaults, so a run or search recorded before them still resumes."""
        flat = json.loads(json.dumps(dataclasses.asdict(self), default=_describe))
        return {name: value for name, value in flat.items()
                if name not in LATER_FIELDS or value != LATER_FIELDS[name]}

    def sections(self) -> dict[str, dict[str, Any]]:
        """The fields grouped by concern: {section: {field: value}}."""
        flat = self.to_dict()
        return {section: {name: flat.get(name, LATER_FIELDS.get(name)) for name in names}
                for section, names in SECTIONS.items()}

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, Any]]) -> "TrainConfig":
        """A config from {section: {field: value}} (an ml_collections.ConfigDict works too)."""
        flat = {}
        for section, values in dict(sections).items():
            if section not in SECTIONS:
                raise ValueError(f"config section {section!r} is unknown; known: {', '.join(SECTIONS)}")
            for name, value in dict(values).items():
                if name not in SECTIONS[section]:
                    raise ValueError(f"config field {section}.{name} is unknown; fields of {section}: "
                                     f"{', '.join(SECTIONS[section])}")
                flat[name] = _plain(value)
        return cls(**flat)

    def to_config_dict(self) -> Any:
        """The sections as an `ml_collections.ConfigDict` (the big_vision config convention)."""
        import ml_collections

        return ml_collections.ConfigDict(self.sections())


def _describe(value: Any) -> Any:
    """JSON for values that are not plain data: a sequence as a list, a small array by its values,
    a larger one by dtype, shape and a digest of its contents (so a workdir or a stored search
    tells two datasets of the same shape apart), an object by its type."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "size", 0) <= 16:
        return value.tolist()
    if hasattr(value, "shape"):
        import hashlib

        import numpy as np

        digest = hashlib.blake2b(np.ascontiguousarray(np.asarray(value)).tobytes(), digest_size=8).hexdigest()
        return f"<array {getattr(value, 'dtype', '')}{tuple(value.shape)} {digest}>"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _plain(value: Any) -> Any:
    """ConfigDict / FrozenConfigDict values as plain dicts."""
    return value.to_dict() if hasattr(value, "to_dict") and not isinstance(value, TrainConfig) else value


# optimizer hyperparameters with a known range (others given in optimizer_kwargs must be finite)
OPTIMIZER_RANGES = {"b1": (0.0, 1.0), "b2": (0.0, 1.0), "momentum": (0.0, 1.0), "decay": (0.0, 1.0),
                    "rho": (0.0, 1.0), "eps": (0.0, None), "initial_accumulator_value": (0.0, None)}


def validate(config: TrainConfig) -> None:
    """Check the config's own fields (names are checked against registries in `build_task`):
    every message names the field, the value and what is allowed (see `vhjax.validation`)."""
    from vhjax.hparams import BY_NAME

    for name in ("loss_weights", "optimizer_kwargs", "lr_multipliers"):
        require(isinstance(getattr(config, name), Mapping), f"config field {name!r}", getattr(config, name),
                "a dict name -> value")
    require(isinstance(config.eval_metrics, (str, list, tuple)), "config field 'eval_metrics'", config.eval_metrics,
            "a metric name or a list of them")
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "grad_accumulation", "checkpoint_every"):
        check_int(f"config field {name!r}", getattr(config, name), 1)
    check_int("config field 'seed'", config.seed, 0)
    precise = config.precise_bn_batches
    if precise != "auto":
        require(is_number(precise) and float(precise).is_integer() and not isinstance(precise, float)
                and precise >= 0, "config field 'precise_bn_batches'", precise, "'auto' or an integer >= 0")
    for name in ("patience", "plateau_patience"):
        if getattr(config, name) is not None:
            check_int(f"config field {name!r}", getattr(config, name), 1)
    for spec in BY_NAME.values():  # the per-member hyperparameters with a config field
        if spec.config_field is None or getattr(config, spec.config_field) is None:
            continue
        value = getattr(config, spec.config_field)
        require(is_number(value) and bool(spec.contains(float(value))), f"config field {spec.config_field!r}",
                value, spec.allowed)
    check_privacy(config)
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
    check_choice("config field 'monitor_mode'", config.monitor_mode, ("max", "min"))
    check_choice("config field 'monitor_split'", config.monitor_split, ("train", "eval"))
    if config.monitor_split == "train":
        require(config.monitor in ("loss", "accuracy", "data_loss"), "config field 'monitor'", config.monitor,
                "'loss', 'data_loss' or 'accuracy' when monitor_split is 'train' (the step metrics)")
    require(isinstance(config.keep_best, bool), "config field 'keep_best'", config.keep_best, "True or False")
    require(isinstance(config.shuffle, bool), "config field 'shuffle'", config.shuffle, "True or False")
    require(isinstance(config.drop_remainder, bool), "config field 'drop_remainder'", config.drop_remainder,
            "True or False")
    from vhjax.train.step import EVAL_METRICS

    metrics = tuple(config.eval_metrics) if not isinstance(config.eval_metrics, str) else (config.eval_metrics,)
    require(len(metrics) > 0 and all(m in EVAL_METRICS for m in metrics), "config field 'eval_metrics'",
            config.eval_metrics, "names among " + ", ".join(EVAL_METRICS))
    if config.monitor_split != "train":
        require(config.monitor in metrics, "config field 'monitor'", config.monitor,
                f"one of the eval_metrics {metrics}")


def check_privacy(config: TrainConfig) -> None:
    """DP-SGD's fields: noise needs a clip norm (its scale), and the per-example gradients it
    clips must each depend on one example (no mixup/CutMix) and make one optimizer step each."""
    check_number("config field 'dp_delta'", config.dp_delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_choice("config field 'dp_sampling'", config.dp_sampling, DP_SAMPLINGS)
    if config.dp_clip_norm is None:
        require(config.noise_multiplier == 0.0, "config field 'noise_multiplier'", config.noise_multiplier,
                "0 while dp_clip_norm is None (the noise's std is noise_multiplier * dp_clip_norm: set dp_clip_norm)")
        require(config.dp_sampling == "shuffle", "config field 'dp_sampling'", config.dp_sampling,
                "'shuffle' while dp_clip_norm is None (Poisson batches are DP-SGD's: set dp_clip_norm)")
    if config.dp_sampling == "shuffle":
        require(config.dp_max_batch_size is None, "config field 'dp_max_batch_size'", config.dp_max_batch_size,
                "None unless dp_sampling is 'poisson' (it bounds a Poisson batch)")
    elif config.dp_max_batch_size is not None:
        bound = config.dp_max_batch_size
        require(isinstance(bound, numbers.Integral) and not isinstance(bound, bool) and bound >= config.batch_size,
                "config field 'dp_max_batch_size'",
                config.dp_max_batch_size, f"None or an integer >= batch_size ({config.batch_size}): the padded size "
                "of a Poisson batch whose expected size is batch_size")
    if config.dp_clip_norm is None:
        return
    require(config.mixing is None, "config field 'mixing'", config.mixing,
            "None with DP-SGD (dp_clip_norm set): mixup/CutMix make an example's gradient depend on another example")
    require(config.grad_accumulation == 1, "config field 'grad_accumulation'", config.grad_accumulation,
            "1 with DP-SGD (dp_clip_norm set): each step's noisy gradient is one optimizer step (raise batch_size)")


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


def _field_path(key: str) -> tuple[str, str]:
    """(field, key within a dict field) of `field`, `field.key`, `section.field` or `section.field.key`."""
    import difflib

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    head, _, rest = key.partition(".")
    second, _, tail = rest.partition(".")
    if head in SECTIONS and second in SECTIONS[head]:
        return second, tail
    # 'optimizer' and 'model' are sections and fields: `optimizer=sgd` sets the field
    if head in SECTIONS and second and not (head in fields and isinstance(getattr(TrainConfig(), head), Mapping)):
        home = next((section for section, names in SECTIONS.items() if second in names), None)
        hint = (f"; {second!r} is in section {home!r} ({home}.{second})" if home else
                "".join(f"; did you mean {head}.{m}?" for m in difflib.get_close_matches(second, SECTIONS[head], 1)))
        raise ValueError(f"unknown config field {head}.{second} (override {key!r}){hint}; fields of {head}: "
                         f"{', '.join(SECTIONS[head])}")
    if head in fields:
        return head, rest
    close = difflib.get_close_matches(head, sorted(fields | set(SECTIONS)), 1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(fields))
    raise ValueError(f"unknown config field {head!r} (override {key!r}){hint}; known fields: {known} "
                     f"(or section.field, sections: {', '.join(SECTIONS)})")


def _check_override_type(key: str, field: str, value: Any) -> None:
    """A number field takes a number, a True/False field True or False (as ml_collections checks types)."""
    default = next(f for f in dataclasses.fields(TrainConfig) if f.name == field).default
    if isinstance(default, bool):
        require(isinstance(value, bool), f"config field {key!r}", value, "True or False")
    elif isinstance(default, (int, float)):
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"config field {key!r}", value,
                f"a number (default {default!r})")


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `key=value` overrides: `learning_rate=3e-3`, `optimizer.learning_rate=3e-3`, and
    `model_kwargs.widths=(64,64)` (one key of a dict field)."""
    for text in overrides:
        key, value = parse_override(text)
        field, sub = _field_path(key)
        if not sub:
            _check_override_type(key, field, value)
        if sub:
            current = getattr(config, field)
            if not isinstance(current, Mapping):
                raise ValueError(f"config field {field!r} has value {current!r}; allowed: a dict to set {sub!r} in")
            value = {**dict(current), sub: value}
        config = dataclasses.replace(config, **{field: value})
    return config


def config_help() -> str:
    """Every config field by section with its default, for `--help`."""
    defaults = TrainConfig().sections()
    lines = ["config fields (override as section.field=value or field=value; defaults shown):"]
    for section, values in defaults.items():
        lines.append(f"  {section}:")
        lines += [f"    {section}.{name} = {value!r}" for name, value in values.items()]
    return "\n".join(lines)


def as_train_config(config: Any, source: str = "config") -> TrainConfig:
    """A TrainConfig from a TrainConfig, a flat dict of fields, or a sectioned dict / ConfigDict."""
    if isinstance(config, TrainConfig):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        config = dict(config)
        if config and all(key in SECTIONS and isinstance(value, Mapping) for key, value in config.items()):
            return TrainConfig.from_sections(config)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"{source} has unknown fields {unknown}; known: {', '.join(sorted(fields))} "
                             f"(or sections {', '.join(SECTIONS)})")
        return TrainConfig(**config)
    raise TypeError(f"{source} has value of type {type(config).__name__}; allowed: a TrainConfig, a dict of fields, "
                    "a dict of sections, or an ml_collections.ConfigDict")


def load_config_file(path: str | Path) -> TrainConfig:
    """Load `get_config()` from a Python config file: a TrainConfig, a dict of fields or sections,
    or an ml_collections.ConfigDict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"vhjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config() function")
    return as_train_config(module.get_config(), f"get_config() in {str(path)!r}")
