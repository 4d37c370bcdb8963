"""The one table of hyperparameters that may differ between the members of one compiled program.

Adding a per-member hyperparameter is one line here. From this table come: the config's range
checks, the defaults of a task's state hyperparameters, the member fields that are arrays
(everything else in a member dict is static and starts a new bucket), the ranges checked on every
member's value, the static-zero set (when no member sets it, the value is compiled in as 0 and no
work is done for it), and the names a search space or PBT may vary.

`where`: 'state' (the member's `TrainState.hparams`) or 'optimizer' (inside the optimizer state,
`optax.inject_hyperparams`; every optimizer's own numbers, such as b1 or momentum, are optimizer
hyperparameters too and only need to be finite).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class HParam:
    """One per-member hyperparameter: where it lives and which values are allowed."""

    name: str
    where: str  # 'state' or 'optimizer'
    low: float = 0.0
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = False
    static_zero: bool = False  # compiled as constant 0 when no member sets it
    config_field: str | None = None  # the TrainConfig field that gives its default (None: derived)
    doc: str = ""

    @property
    def allowed(self) -> str:
        left = ("[" if self.low_inclusive else "(") + f"{self.low:g}"
        right = ("inf)" if math.isinf(self.high) else f"{self.high:g}" + ("]" if self.high_inclusive else ")"))
        return f"a finite number in {left}, {right}"

    def contains(self, values: Any) -> np.ndarray:
        """Elementwise: finite and inside the range."""
        values = np.asarray(values, dtype=np.float64)
        above = values >= self.low if self.low_inclusive else values > self.low
        below = values <= self.high if self.high_inclusive else values < self.high
        return np.isfinite(values) & above & below


TABLE: tuple[HParam, ...] = (
    HParam("learning_rate", "optimizer", low_inclusive=False, config_field="learning_rate",
           doc="step size (the schedule multiplies it)"),
    HParam("weight_decay", "optimizer", config_field="weight_decay", doc="decoupled weight decay"),
    HParam("l1", "state", static_zero=True, config_field="l1", doc="L1 penalty coefficient"),
    HParam("l2", "state", static_zero=True, config_field="l2", doc="L2 penalty coefficient"),
    HParam("elastic_net", "state", static_zero=True, config_field="elastic_net", doc="elastic-net coefficient"),
    HParam("dropout_rate", "state", high=1.0, static_zero=True, config_field="dropout_rate", doc="dropout rate"),
    HParam("aug_strength", "state", config_field=None, doc="strength of each augmentation, in pipeline order"),
    HParam("aug_prob", "state", high=1.0, high_inclusive=True, config_field=None,
           doc="probability of each augmentation, in pipeline order"),
    HParam("mixing_strength", "state", config_field="mixing_strength", doc="mixup/CutMix Beta alpha"),
    HParam("loss_weights", "state", config_field=None, doc="weight of each named loss term (sorted by name)"),
    HParam("dp_clip_norm", "state", config_field="dp_clip_norm",
           doc="DP-SGD: each example's gradient clipped to this L2 norm (0: this member is not private)"),
    HParam("noise_multiplier", "state", config_field="noise_multiplier",
           doc="DP-SGD: the noise's std over dp_clip_norm"),
)
BY_NAME = {hp.name: hp for hp in TABLE}
# arch: masks/one-hots of a searchable model; update_scale: one multiplier of the updates per parameter
# tensor (0 freezes it; `vhjax.transfer.masks`); update_start: the step from which each parameter tensor
# updates (gradual unfreezing in one run; `vhjax.transfer.modes`); shaped by the model, so checked by
# `init_population`
MODEL_SHAPED_NAMES = ("arch", "update_scale", "update_start")
# optimizer numbers that any optimizer may take (`optimizer_kwargs`), with their allowed ranges; like
# an optimizer's own numbers they are per member only where the config's optimizer has them
OPTIMIZER_EXTRAS = {"hypergradient": HParam("hypergradient", "optimizer",
                                            doc="hypergradient learning rate of the step size (`optim.hypergradient_step`)")}
PER_MEMBER_NAMES = tuple(BY_NAME) + MODEL_SHAPED_NAMES
STATIC_ZERO_NAMES = tuple(hp.name for hp in TABLE if hp.static_zero)
STATE_NAMES = tuple(hp.name for hp in TABLE if hp.where == "state")


def check_values(name: str, values: Any, *, member_axis: bool = True) -> None:
    """Raise naming the first member (or the field) whose value is not allowed for `name`.

    Names not in the table (optimizer-specific numbers) must only be finite (`OPTIMIZER_EXTRAS`: in
    their ranges).
    """
    given = np.asarray(values)
    values = given.astype(np.float64)
    spec = BY_NAME.get(name) or OPTIMIZER_EXTRAS.get(name)
    ok = spec.contains(values) if spec else np.isfinite(values)
    allowed = spec.allowed if spec else "a finite number"
    if ok.all():
        return
    if member_axis and values.ndim >= 1:
        member = int(np.argmax(~ok.reshape(len(values), -1).all(axis=1)))
        raise ValueError(f"member {member}: hyperparameter {name!r} has value {readable(given[member])!r}; "
                         f"allowed: {allowed}")
    raise ValueError(f"hyperparameter {name!r} has value {readable(given)!r}; allowed: {allowed}")


def readable(values: Any) -> Any:
    """`values.tolist()`, float32 numbers by their shortest repr (-0.1, not -0.10000000149011612)."""
    values = np.asarray(values)
    if values.dtype != np.float32:
        return values.tolist()
    shortest = [float(np.format_float_positional(v, unique=True, trim="-")) for v in values.reshape(-1)]
    return np.asarray(shortest).reshape(values.shape).tolist()
