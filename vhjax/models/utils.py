"""Model utilities: parameter counts, output shapes, and config checks shared by the zoo."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def output_shape(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of `model`'s output for an input of `input_shape` (batch included); nothing is computed."""
    example = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), example)
    return tuple(jax.eval_shape(model.apply, variables, example).shape)


# --- config checks, run in each model's __post_init__ so bad configs fail before tracing ---

def check_positive(model: str, field: str, value: Any) -> None:
    """`value` must be an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: a positive integer")


def check_positive_ints(model: str, field: str, values: Iterable[Any]) -> None:
    """Every entry of `values` must be an int >= 1."""
    for index, value in enumerate(values):
        check_positive(model, f"{field}[{index}]", value)


def check_choice(model: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """`value` must be one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: "
                         f"{', '.join(repr(a) for a in allowed)}")


def check_rate(model: str, field: str, value: Any) -> None:
    """A static dropout rate must lie in [0, 1); traced arrays are not checked."""
    if isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
        raise ValueError(f"{model} field {field!r} has value {value!r}; allowed: a number in [0, 1)")


def as_tuple(value: Any) -> Any:
    """Lists (as JSON configs give them) -> tuples, recursively, so module attributes stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuple(v) for v in value)
    return value


def set_normalized(module: nn.Module, field: str, value: Any) -> None:
    """Replace a dataclass field of a module under construction (only from `__post_init__`)."""
    object.__setattr__(module, field, value)
