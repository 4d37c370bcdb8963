"""Preprocessors fitted on training data only, their registry and their serialization.

A preprocessor is `Preprocessor(name, options, fit, transform, inverse_transform)`:
`fit(x, y=None) -> Fitted` learns arrays from the data it is given (and nothing else);
`transform(fitted, x)` applies them with jax.numpy, so it can run under `jax.jit`.
`Fitted` is a pytree (flax struct dataclass) whose leaves are the learned arrays; its name and
options travel with it, so `to_json`/`from_json` and `save`/`load` (npz) store a fitted
preprocessor with a run and `transform(fitted, x)` applies it without knowing where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vhjax import validation
from vhjax.registry import Registry

Arrays = dict[str, Any]
FitArrays = Callable[[np.ndarray, np.ndarray | None], Arrays]
Apply = Callable[[Arrays, jax.Array], jax.Array]


@struct.dataclass
class Fitted:
    """A fitted preprocessor: `arrays` (the pytree leaves) plus its `name` and `options` (JSON)."""

    name: str = struct.field(pytree_node=False)
    options: str = struct.field(pytree_node=False)
    arrays: Arrays = struct.field(default_factory=dict)

    @property
    def option_dict(self) -> dict[str, Any]:
        return json.loads(self.options)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """`fit(x, y=None) -> Fitted`, `transform(fitted, x) -> array`, and, where it exists,
    `inverse_transform(fitted, z) -> x`."""

    name: str
    options: Mapping[str, Any]
    fit: Callable[..., Fitted]
    transform: Callable[[Fitted, Any], jax.Array]
    inverse_transform: Callable[[Fitted, Any], jax.Array] | None = None

    def fit_transform(self, x: Any, y: Any = None) -> tuple[Fitted, jax.Array]:
        """(fitted, transform(fitted, x)) in one call."""
        fitted = self.fit(x, y)
        return fitted, self.transform(fitted, x)


PreprocessorFactory = Callable[..., Preprocessor]
PREPROCESSORS: Registry[PreprocessorFactory] = Registry("preprocessor")


def register_preprocessor(name: str) -> Callable[[PreprocessorFactory], PreprocessorFactory]:
    """Register a factory `factory(**options) -> Preprocessor` under `name`."""
    return PREPROCESSORS.register(name)


def get_preprocessor(name: str, **options: Any) -> Preprocessor:
    """The preprocessor registered under `name`, built with `options` (validated: unknown names
    and options raise ValueError listing the allowed ones)."""
    return PREPROCESSORS.build(name, **options)


def make_preprocessor(name: str, options: Mapping[str, Any], fit_arrays: FitArrays, apply: Apply, *,
                      inverse: Apply | None = None, needs_labels: bool = False, min_rank: int = 2) -> Preprocessor:
    """Wrap `fit_arrays(x, y) -> dict of arrays` (NumPy, float64 in) and `apply(arrays, x)`
    (jax.numpy) into a Preprocessor with input checks and a serializable Fitted."""
    options_json = json.dumps(dict(options), sort_keys=True)

    def fit(x: Any, y: Any = None) -> Fitted:
        data = check_input(name, x, min_rank)
        labels = check_labels(name, data, y) if needs_labels else None
        arrays = {key: np.asarray(value) for key, value in fit_arrays(data, labels).items()}
        return Fitted(name=name, options=options_json, arrays=arrays)

    def checked(fitted: Fitted) -> Fitted:
        if not isinstance(fitted, Fitted) or fitted.name != name:
            raise ValueError(f"preprocessor {name!r} got fitted {getattr(fitted, 'name', fitted)!r}; "
                             "allowed: the Fitted its own fit returned")
        return fitted

    def transform(fitted: Fitted, x: Any) -> jax.Array:
        return apply(checked(fitted).arrays, jnp.asarray(x))

    def inverse_transform(fitted: Fitted, z: Any) -> jax.Array:
        return inverse(checked(fitted).arrays, jnp.asarray(z))

    return Preprocessor(name, dict(options), fit, transform, inverse_transform if inverse else None)


# --- input and option checks -------------------------------------------------------------------


def check_input(name: str, x: Any, min_rank: int = 2) -> np.ndarray:
    """`x` as float64 NumPy with at least `min_rank` dims and one example; finite values only."""
    data = np.asarray(x, dtype=np.float64)
    if data.ndim < min_rank or data.shape[0] < 1:
        raise ValueError(f"preprocessor {name!r} got x of shape {data.shape}; "
                         f"allowed: at least {min_rank} dims, (N, ...) with N >= 1")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"preprocessor {name!r} got x with NaN or infinite values; allowed: finite values")
    return data


def check_labels(name: str, x: np.ndarray, y: Any) -> np.ndarray:
    """Integer labels (N,) matching x, with at least two classes."""
    if y is None:
        raise ValueError(f"preprocessor {name!r} needs labels: fit(x, y) with y (N,) integer classes, got y=None")
    labels = np.asarray(y)
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"preprocessor {name!r} got y of shape {labels.shape} and dtype {labels.dtype}; "
                         f"allowed: integer labels ({x.shape[0]},)")
    if np.unique(labels).size < 2:
        raise ValueError(f"preprocessor {name!r} got y with one class; allowed: at least two classes")
    return labels


def _option(name: str, field: str) -> str:
    """How a preprocessor's option is named in error messages."""
    return f"preprocessor {name!r} option {field!r}"


def check_choice(name: str, field: str, value: Any, allowed: Sequence[str]) -> str:
    return validation.check_choice(_option(name, field), value, allowed)


def check_int(name: str, field: str, value: Any, low: int, *, optional: bool = False, odd: bool = False) -> int | None:
    if optional and value is None:
        return None
    allowed = f"{'None or ' if optional else ''}{'an odd integer' if odd else 'an integer'} >= {low}"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
    validation.require(ok and not (odd and value % 2 == 0), _option(name, field), value, allowed)
    return int(value)


def check_float(name: str, field: str, value: Any, low: float, high: float = math.inf, *,
                open_low: bool = False) -> float:
    return validation.check_number(_option(name, field), value, low, None if high == math.inf else high,
                                   low_inclusive=not open_low)


def flat(x: np.ndarray | jax.Array) -> Any:
    """(N, ...) -> (N, D)."""
    return x.reshape(x.shape[0], -1)


def as_float32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# --- applying and storing fitted preprocessors ---------------------------------------------------


def transform(fitted: Fitted, x: Any) -> jax.Array:
    """Apply a Fitted preprocessor (e.g. one loaded from disk) to `x`."""
    return get_preprocessor(fitted.name, **fitted.option_dict).transform(fitted, x)


def to_json(fitted: Fitted) -> str:
    """A JSON text holding the name, options and arrays (dtype, shape, values) of `fitted`."""
    arrays = {key: {"dtype": str(np.asarray(value).dtype), "shape": list(np.shape(value)),
                    "values": np.asarray(value).ravel().tolist()} for key, value in fitted.arrays.items()}
    return json.dumps({"name": fitted.name, "options": fitted.option_dict, "arrays": arrays}, allow_nan=True)


def from_json(text: str) -> Fitted:
    """The Fitted that `to_json` wrote."""
    record = json.loads(text)
    arrays = {key: np.asarray(item["values"], dtype=item["dtype"]).reshape(item["shape"])
              for key, item in record["arrays"].items()}
    PREPROCESSORS.get(record["name"])  # unknown names fail here, listing the known ones
    return Fitted(name=record["name"], options=json.dumps(record["options"], sort_keys=True), arrays=arrays)


META_KEY = "__fitted__"


def save(fitted: Fitted, path: str | Path) -> Path:
    """Write `fitted` to an .npz file (arrays plus a JSON record of name and options)."""
    path = Path(path)
    if META_KEY in fitted.arrays:
        raise ValueError(f"fitted arrays may not use the key {META_KEY!r}")
    meta = json.dumps({"name": fitted.name, "options": fitted.option_dict})
    with path.open("wb") as handle:
        np.savez(handle, **{META_KEY: np.asarray(meta)}, **{k: np.asarray(v) for k, v in fitted.arrays.items()})
    return path


def load(path: str | Path) -> Fitted:
    """The Fitted that `save` wrote to `path`."""
    with np.load(Path(path), allow_pickle=False) as archive:
        meta = json.loads(str(archive[META_KEY]))
        arrays = {key: archive[key] for key in archive.files if key != META_KEY}
    PREPROCESSORS.get(meta["name"])
    return Fitted(name=meta["name"], options=json.dumps(meta["options"], sort_keys=True), arrays=arrays)
