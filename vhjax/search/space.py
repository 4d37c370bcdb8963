"""Search spaces: every candidate is a fixed-length vector in the unit cube `[0, 1]^D`.

One column per parameter:

- `Float(low, high)`: `low + u * (high - low)` (`log=True`: the same in log space); with
  `step=s` (quantized, as Optuna's `step` or Ray Tune's `quniform`) rounded to `low + k * s`;
- `Int(low, high)`: the float mapping, rounded (to `low + k * step` with `step`);
- `Categorical(choices)` / `Boolean()`: `choices[min(floor(u * k), k - 1)]`;
- any parameter may carry `condition=(parent, value_or_values)`: it exists only when the
  parent is active and decodes to one of the values (`Conditional(param, parent, values)`
  is the same thing as a wrapper). `decode` drops inactive parameters; their column is
  kept (fixed length) and `grid` collapses it to 0.5 so no two grid rows decode alike.

Strategies see only the cube; `is_categorical` and `cardinalities` tell them which columns
to mutate by resampling rather than by Gaussian steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

NASBENCH201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NASBENCH201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node)
MAX_GRID_ROWS = 1_000_000


# ----------------------------------------------------------------------------- parameters


def _normalize_condition(condition: Any) -> tuple[str, tuple] | None:
    """`(parent, value)` or `(parent, [values])` -> `(parent, (values...))`."""
    if condition is None:
        return None
    if not (isinstance(condition, (tuple, list)) and len(condition) == 2
            and isinstance(condition[0], str)):
        raise ValueError(
            f"condition must be (parent_name, value) or (parent_name, [values]); got {condition!r}"
        )
    parent, values = condition
    if isinstance(values, (list, tuple, set, frozenset)):
        values = tuple(values)
    else:
        values = (values,)
    if not values:
        raise ValueError(f"condition on {parent!r} lists no values; give at least one")
    return parent, values


def _same(a: Any, b: Any) -> bool:
    """Equal values, never confusing booleans with the integers 0 and 1."""
    if isinstance(a, (bool, np.bool_)) != isinstance(b, (bool, np.bool_)):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _check_number(label: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{label}: {field} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{label}: {field} must be finite; got {value!r}")


def _check_step(label: str, low: Any, high: Any, log: bool, step: Any, integer: bool = False) -> None:
    """`step` > 0 (an int for `Int`), with a linear scale, dividing `high - low`."""
    if integer and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
        raise TypeError(f"{label}: step must be an integer; got {step!r}")
    _check_number(label, "step", step)
    if step <= 0:
        raise ValueError(f"{label}: step must be > 0; got {step!r}")
    if log and (not integer or step != 1):
        raise ValueError(f"{label}: step needs log=False (a log scale has no even steps); got log=True, step={step!r}")
    count = (high - low) / step
    if abs(count - round(count)) > 1e-9 * max(1.0, count):
        fitting = low + math.floor(count) * step
        raise ValueError(f"{label}: high - low ({high - low!r}) is not a multiple of step {step!r}; allowed: "
                         f"high = low + k * step, e.g. high={_clean(fitting)!r}")


def _clean(value: float) -> float:
    """`low + k * step` without the float noise of the product (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


def _check_bounds(label: str, low: Any, high: Any, log: bool) -> None:
    _check_number(label, "low", low)
    _check_number(label, "high", high)
    if low >= high:
        raise ValueError(f"{label}: low must be < high; got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise ValueError(f"{label}: log=True needs low > 0; got low={low!r}")


@dataclasses.dataclass(frozen=True)
class Float:
    """A real number in `[low, high]` (log-uniform in the cube when `log=True`); with `step`, one of
    `low, low + step, ..., high` (a linear scale; `step` must divide `high - low`)."""

    low: float
    high: float
    log: bool = False
    condition: Any = None
    step: float | None = None

    cardinality = 0

    def __post_init__(self):
        object.__setattr__(self, "condition", _normalize_condition(self.condition))
        self.check("Float")

    def check(self, label: str) -> None:
        _check_bounds(label, self.low, self.high, self.log)
        if self.step is not None:
            _check_step(label, self.low, self.high, self.log, self.step)

    def _on_grid(self, value: float) -> float:
        """`value` rounded to the nearest `low + k * step` (itself without a step)."""
        if self.step is None:
            return value
        return min(_clean(self.low + round((value - self.low) / self.step) * self.step), float(self.high))

    def _to_value(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        return float(self.low + u * (self.high - self.low))

    def decode(self, u: float) -> float:
        return self._on_grid(min(max(self._to_value(u), float(self.low)), float(self.high)))

    def encode(self, value: Any, label: str = "Float") -> float:
        _check_number(label, "value", value)
        if not self.low <= value <= self.high:
            raise ValueError(f"{label}: value {value!r} is outside [{self.low}, {self.high}]")
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def grid_u(self, points: int) -> list[float]:
        evenly = list(np.linspace(0.0, 1.0, points)) if points > 1 else [0.5]
        if self.step is None:
            return evenly
        return [self.encode(v) for v in sorted({self.decode(u) for u in evenly})]


@dataclasses.dataclass(frozen=True)
class Int(Float):
    """An integer in `[low, high]`: the float mapping, rounded (log-spaced when `log=True`); with
    `step`, one of `low, low + step, ..., high`."""

    low: int
    high: int

    def __post_init__(self):
        object.__setattr__(self, "condition", _normalize_condition(self.condition))
        self.check("Int")

    def check(self, label: str) -> None:
        for field in ("low", "high"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{label}: {field} must be an integer; got {value!r}")
        _check_bounds(label, self.low, self.high, self.log)
        if self.step is not None:
            _check_step(label, self.low, self.high, self.log, self.step, integer=True)

    def decode(self, u: float) -> int:
        if self.step is None:
            return int(min(max(round(self._to_value(u)), self.low), self.high))
        return int(round(self._on_grid(min(max(self._to_value(u), self.low), self.high))))

    def encode(self, value: Any, label: str = "Int") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{label}: value must be an integer; got {value!r}")
        return super().encode(value, label)

    def grid_u(self, points: int) -> list[float]:
        values = sorted({self.decode(u) for u in super().grid_u(points)})
        return [self.encode(v) for v in values]


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One of `choices`; column `u` selects `choices[min(floor(u * k), k - 1)]`."""

    choices: Sequence[Any]
    condition: Any = None

    def __post_init__(self):
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Sequence):
            raise TypeError(f"Categorical: choices must be a list or tuple; got {self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "condition", _normalize_condition(self.condition))
        self.check("Categorical")

    @property
    def cardinality(self) -> int:
        return len(self.choices)

    def check(self, label: str) -> None:
        if not self.choices:
            raise ValueError(f"{label}: choices must not be empty; got {list(self.choices)!r}")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"{label}: choices must be distinct; got {list(self.choices)!r}")

    def index(self, u: float) -> int:
        return int(min(max(math.floor(float(u) * len(self.choices)), 0), len(self.choices) - 1))

    def decode(self, u: float) -> Any:
        return self.choices[self.index(u)]

    def encode(self, value: Any, label: str = "Categorical") -> float:
        for i, choice in enumerate(self.choices):
            if _same(choice, value):
                return (i + 0.5) / len(self.choices)
        raise ValueError(f"{label}: value {value!r} is not one of {list(self.choices)!r}")

    def grid_u(self, points: int) -> list[float]:
        del points
        return [(i + 0.5) / len(self.choices) for i in range(len(self.choices))]


def Boolean(condition: Any = None) -> Categorical:  # noqa: N802 (reads as a type)
    """`False` or `True` (a two-choice categorical)."""
    return Categorical((False, True), condition=condition)


Param = Union[Float, Int, Categorical]


def Conditional(param: Param, parent: str, values: Any) -> Param:  # noqa: N802
    """`param`, active only when `parent` decodes to `values` (one value or a list)."""
    if not isinstance(param, (Float, Categorical)):
        raise TypeError(f"Conditional: param must be a Float, Int or Categorical; got {param!r}")
    return dataclasses.replace(param, condition=(parent, values))


# ----------------------------------------------------------------------------- space


class Space:
    """An ordered dict of named parameters, encoded as `[0, 1]^D` (one column each)."""

    def __init__(self, params: Mapping[str, Param]):
        if not isinstance(params, Mapping):
            raise TypeError(f"Space: params must be a dict name -> parameter; got {params!r}")
        if not params:
            raise ValueError("Space: params must not be empty; give at least one parameter")
        for name, param in params.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"Space: parameter names must be non-empty strings; got {name!r}")
            if not isinstance(param, (Float, Categorical)):
                raise TypeError(
                    f"Space: parameter {name!r} must be Float, Int, Categorical or Boolean; "
                    f"got {param!r}"
                )
            param.check(f"parameter {name!r}")
        self.params: dict[str, Param] = dict(params)
        self._check_conditions()

    def _check_conditions(self) -> None:
        for name, param in self.params.items():
            if param.condition is None:
                continue
            parent, values = param.condition
            if parent not in self.params:
                raise ValueError(
                    f"parameter {name!r}: condition names unknown parameter {parent!r}; "
                    f"known: {self.names}"
                )
            if parent == name:
                raise ValueError(f"parameter {name!r}: condition refers to itself")
            parent_param = self.params[parent]
            if isinstance(parent_param, Categorical):
                allowed = list(parent_param.choices)
                bad = [v for v in values if not any(_same(c, v) for c in allowed)]
                if bad:
                    raise ValueError(
                        f"parameter {name!r}: condition value(s) {bad!r} of {parent!r} are not "
                        f"among its choices {allowed!r}"
                    )
            else:  # Int (and Float) parents: the value must be one the parent can decode to
                is_int = isinstance(parent_param, Int)
                bad = [v for v in values
                       if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating))
                       or not parent_param.low <= v <= parent_param.high
                       or (is_int and float(v) != int(v))]
                if bad:
                    kind = "integers" if is_int else "numbers"
                    raise ValueError(
                        f"parameter {name!r}: condition value(s) {bad!r} of {parent!r} are impossible; "
                        f"allowed: {kind} in [{parent_param.low}, {parent_param.high}]"
                    )
        for name in self.params:  # no cycles
            seen, current = {name}, self.params[name].condition
            while current is not None:
                if current[0] in seen:
                    raise ValueError(f"parameter {name!r}: conditions form a cycle through {current[0]!r}")
                seen.add(current[0])
                current = self.params[current[0]].condition

    # --------------------------------------------------------------- shape

    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def cardinalities(self) -> np.ndarray:
        """`(D,)` int: number of choices of each categorical column, 0 for floats and ints."""
        return np.array([int(p.cardinality) for p in self.params.values()], dtype=np.int32)

    @property
    def is_categorical(self) -> np.ndarray:
        """`(D,)` bool mask of categorical (and boolean) columns."""
        return self.cardinalities > 0

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: {param!r}" for name, param in self.params.items())
        return f"Space({{{inner}}})"

    # --------------------------------------------------------------- sampling

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """`n` uniform candidates `(n, D)` in the unit cube."""
        return jax.random.uniform(key, (n, self.dim))

    def clip(self, u):
        """Clip candidates into `[0, 1]` (works on NumPy and JAX arrays)."""
        xp = np if isinstance(u, np.ndarray) else jnp
        return xp.clip(u, 0.0, 1.0)

    def snap(self, u: jax.Array) -> jax.Array:
        """Move categorical columns to the centre of their category (same decoding)."""
        k = jnp.asarray(np.maximum(self.cardinalities, 1), jnp.float32)
        centre = (jnp.clip(jnp.floor(u * k), 0, k - 1) + 0.5) / k
        return jnp.where(jnp.asarray(self.is_categorical), centre, jnp.clip(u, 0.0, 1.0))

    # --------------------------------------------------------------- decoding

    def _active(self, name: str, values: Mapping[str, Any]) -> bool:
        condition = self.params[name].condition
        if condition is None:
            return True
        parent, allowed = condition
        if parent not in values:  # parent inactive (or not decoded yet)
            return False
        return any(_same(a, values[parent]) for a in allowed)

    def _active_order(self) -> list[str]:
        """Names with parents before children (decode order)."""
        order, placed = [], set()
        while len(order) < self.dim:
            for name, param in self.params.items():
                if name not in placed and (param.condition is None or param.condition[0] in placed):
                    order.append(name)
                    placed.add(name)
        return order

    def decode(self, u) -> dict[str, Any]:
        """One encoded row `(D,)` -> `{name: value}`, inactive conditional parameters dropped."""
        row = np.asarray(u, dtype=np.float64).reshape(-1)
        if row.shape != (self.dim,):
            raise ValueError(f"decode expects one row of {self.dim} values; got shape {np.shape(u)}")
        values: dict[str, Any] = {}
        for name in self._active_order():
            if self._active(name, values):
                values[name] = self.params[name].decode(row[self.names.index(name)])
        return {name: values[name] for name in self.names if name in values}

    def decode_batch(self, u) -> list[dict[str, Any]]:
        """`(n, D)` -> list of `n` decoded dicts."""
        rows = np.asarray(u)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"decode_batch expects shape (n, {self.dim}); got {rows.shape}")
        return [self.decode(row) for row in rows]

    def encode(self, values: Mapping[str, Any]) -> np.ndarray:
        """`{name: value}` -> `(D,)` float32; inactive (or omitted inactive) columns are 0.5."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise ValueError(f"encode: unknown parameter(s) {unknown}; known: {self.names}")
        row = np.full((self.dim,), 0.5, dtype=np.float32)
        for name in self._active_order():
            if not self._active(name, values):
                continue
            if name not in values:
                raise ValueError(f"encode: active parameter {name!r} is missing from {dict(values)}")
            row[self.names.index(name)] = self.params[name].encode(values[name], f"parameter {name!r}")
        return row

    def check_values(self, values: Mapping[str, Any], label: str = "values") -> dict[str, Any]:
        """Some or all parameters' values, each checked against its parameter's domain: a dict of
        them, or an error naming the parameter, the value and what is allowed."""
        if not isinstance(values, Mapping):
            raise TypeError(f"{label} has value {values!r}; allowed: a dict of parameter name -> value")
        unknown = sorted(set(values) - set(self.params), key=str)
        if unknown:
            raise ValueError(f"{label}: unknown parameter(s) {unknown}; allowed: {self.names}")
        for name, value in values.items():
            self.params[name].encode(value, f"{label}: parameter {name!r}")
        return dict(values)

    def check_points(self, points: Sequence[Mapping[str, Any]], label: str = "enqueue", most: int | None = None,
                     most_name: str = "") -> list[dict[str, Any]]:
        """A list of points (dicts of some or all parameters' values, `check_values`), at most
        `most` of them (`most_name` says what bounds them), or an error naming what does not fit."""
        if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence):
            raise TypeError(f"{label} has value {points!r}; allowed: a list of dicts of parameter values")
        if most is not None and len(points) > most:
            raise ValueError(f"{label} has {len(points)} points; allowed: at most {most_name} ({most})")
        return [self.check_values(point, f"{label}[{i}]") for i, point in enumerate(points)]

    def _canonical(self, row: np.ndarray) -> np.ndarray:
        """The same candidate with inactive columns set to 0.5."""
        return self.encode(self.decode(row))

    def grid(self, points_per_float: int = 5) -> np.ndarray:
        """Every categorical combination x `points_per_float` evenly spaced floats/ints (those of a
        parameter with a step: the distinct grid values they round to): `(G, D)`.

        Inactive conditional parameters are collapsed (column 0.5), so rows are distinct.
        """
        if isinstance(points_per_float, bool) or not isinstance(points_per_float, (int, np.integer)) \
                or points_per_float < 1:
            raise ValueError(f"points_per_float must be a positive integer; got {points_per_float!r}")
        axes = [param.grid_u(points_per_float) for param in self.params.values()]
        total = math.prod(len(axis) for axis in axes)
        if total > MAX_GRID_ROWS:
            raise ValueError(f"grid would have {total} rows (> {MAX_GRID_ROWS}); lower points_per_float")
        rows: dict[bytes, np.ndarray] = {}
        for combo in itertools.product(*axes):
            row = self._canonical(np.asarray(combo, dtype=np.float32))
            rows.setdefault(row.tobytes(), row)
        return np.stack(list(rows.values()))


# ----------------------------------------------------------------------------- architecture spaces


def _edge_name(to_node: int, from_node: int) -> str:
    return f"{to_node}<-{from_node}"


def nasbench201_space() -> Space:
    """The NAS-Bench-201 cell: 6 edges (arch-string order), each one of 5 operations."""
    return Space({_edge_name(t, f): Categorical(NASBENCH201_OPS) for t, f in NASBENCH201_EDGES})


def nasbench201_arch_string(decoded: Mapping[str, str]) -> str:
    """`{'1<-0': op, ...}` -> `'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'`."""
    nodes = []
    for to_node in (1, 2, 3):
        entries = []
        for from_node in range(to_node):
            name = _edge_name(to_node, from_node)
            if name not in decoded:
                raise ValueError(f"decoded NAS-Bench-201 cell lacks edge {name!r}; got {dict(decoded)}")
            op = decoded[name]
            if op not in NASBENCH201_OPS:
                raise ValueError(f"edge {name!r}: op {op!r} is not one of {NASBENCH201_OPS}")
            entries.append(f"{op}~{from_node}")
        nodes.append("|" + "|".join(entries) + "|")
    return "+".join(nodes)


def nasbench201_from_arch_string(arch: str) -> dict[str, str]:
    """Inverse of `nasbench201_arch_string`."""
    nodes = arch.strip().split("+") if isinstance(arch, str) else []
    if len(nodes) != 3:
        raise ValueError(f"arch string must have 3 nodes separated by '+'; got {arch!r}")
    decoded = {}
    for to_node, node in enumerate(nodes, start=1):
        entries = [entry for entry in node.split("|") if entry]
        if len(entries) != to_node:
            raise ValueError(f"node {to_node} of {arch!r} must have {to_node} inputs; got {entries}")
        for from_node, entry in enumerate(entries):
            op, _, source = entry.partition("~")
            if op not in NASBENCH201_OPS or source != str(from_node):
                raise ValueError(
                    f"bad edge {entry!r} in {arch!r}: expected 'op~{from_node}' with op in "
                    f"{NASBENCH201_OPS}"
                )
            decoded[_edge_name(to_node, from_node)] = op
    return decoded


def mlp_space(depth: tuple[int, int] = (1, 4), width: tuple[int, int] = (16, 512),
              activations: Sequence[str] = ("relu", "gelu", "tanh"),
              dropout: tuple[float, float] = (0.0, 0.5)) -> Space:
    """An MLP: depth (int), width (int, log-spaced), activation, dropout rate."""
    return Space({
        "depth": Int(*depth),
        "width": Int(*width, log=True),
        "activation": Categorical(tuple(activations)),
        "dropout": Float(*dropout),
    })


def cnn_space(depth: tuple[int, int] = (1, 4), channels: tuple[int, int] = (8, 128),
              kernel_sizes: Sequence[int] = (3, 5), pooling: Sequence[str] = ("max", "avg")) -> Space:
    """A CNN: depth (int), channels (int, log-spaced), kernel size, pooling kind."""
    return Space({
        "depth": Int(*depth),
        "channels": Int(*channels, log=True),
        "kernel_size": Categorical(tuple(kernel_sizes)),
        "pooling": Categorical(tuple(pooling)),
    })


def resnet_space(blocks: tuple[int, int] = (1, 4), base_width: Sequence[int] = (8, 16, 32),
                 block_types: Sequence[str] = ("basic", "bottleneck")) -> Space:
    """A 3-stage ResNet: blocks per stage, base width (doubled per stage), block type."""
    return Space({
        "blocks_per_stage": Int(*blocks),
        "base_width": Categorical(tuple(base_width)),
        "block": Categorical(tuple(block_types)),
    })


def resnet_kwargs(decoded: Mapping[str, Any], num_classes: int = 10) -> dict[str, Any]:
    """`resnet_space` candidate -> `get_model('resnet', **kwargs)` fields."""
    width = int(decoded["base_width"])
    return {"stage_sizes": (int(decoded["blocks_per_stage"]),) * 3, "widths": (width, 2 * width, 4 * width),
            "stem_features": width, "block": decoded["block"], "num_classes": num_classes}


def transformer_space(layers: tuple[int, int] = (1, 4), heads: Sequence[int] = (1, 2, 4),
                      head_dims: Sequence[int] = (8, 16, 32), activations: Sequence[str] = ("gelu", "relu"),
                      mlp_ratios: Sequence[int] = (2, 4)) -> Space:
    """A Transformer encoder: layers, heads, width per head (so heads always divide the width),
    feed-forward ratio and activation."""
    return Space({
        "num_layers": Int(*layers),
        "num_heads": Categorical(tuple(heads)),
        "head_dim": Categorical(tuple(head_dims)),
        "mlp_ratio": Categorical(tuple(mlp_ratios)),
        "activation": Categorical(tuple(activations)),
    })


def transformer_kwargs(decoded: Mapping[str, Any], num_classes: int = 10) -> dict[str, Any]:
    """`transformer_space` candidate -> `get_model('transformer', **kwargs)` fields."""
    width = int(decoded["num_heads"]) * int(decoded["head_dim"])
    return {"num_layers": int(decoded["num_layers"]), "num_heads": int(decoded["num_heads"]), "width": width,
            "mlp_dim": width * int(decoded["mlp_ratio"]), "activation": decoded["activation"],
            "num_classes": num_classes}
