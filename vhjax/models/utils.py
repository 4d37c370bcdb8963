"""Model utilities: parameter counts, output shapes, and config checks shared by the zoo."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax import validation


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def abstract_init(model: nn.Module, input_shape: Sequence[int]) -> tuple[Any, Any]:
    """(outputs, variables) of `model` for a float32 input of `input_shape` (batch included), as
    `jax.ShapeDtypeStruct`s: one trace of `init_with_output`, nothing computed. The key is made
    inside the trace (an eager key would compile a program of its own)."""
    example = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), example)


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """`model`'s variables for an input of `input_shape`, as `jax.ShapeDtypeStruct`s (`abstract_init`)."""
    return abstract_init(model, input_shape)[1]


def output_shape(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of `model`'s output for an input of `input_shape` (batch included; `abstract_init`)."""
    return tuple(abstract_init(model, input_shape)[0].shape)


# --- config checks, run in each model's __post_init__ so bad configs fail before tracing; messages in
# vhjax.validation's style, the field named "<model> field '<field>'" ---

def field_label(model: str, field: str) -> str:
    """How a model's field is named in error messages."""
    return f"{model} field {field!r}"


def check_positive(model: str, field: str, value: Any) -> None:
    """`value` must be an int >= 1."""
    validation.check_int(field_label(model, field), value, minimum=1)


def check_positive_ints(model: str, field: str, values: Iterable[Any]) -> None:
    """Every entry of `values` must be an int >= 1."""
    for index, value in enumerate(values):
        check_positive(model, f"{field}[{index}]", value)


def check_choice(model: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """`value` must be one of `allowed`."""
    validation.check_choice(field_label(model, field), value, allowed)


def check_rate(model: str, field: str, value: Any) -> None:
    """A static dropout rate must lie in [0, 1); traced arrays are not checked."""
    if isinstance(value, (int, float)):
        validation.check_number(field_label(model, field), value, 0.0, 1.0, high_inclusive=False)


def check_number(model: str, field: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """A static number in the given bounds (`vhjax.validation.check_number`)."""
    return validation.check_number(field_label(model, field), value, low, high, low_inclusive=low_inclusive,
                                   high_inclusive=high_inclusive)


def as_tuple(value: Any) -> Any:
    """Lists (as JSON configs give them) -> tuples, recursively, so module attributes stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuple(v) for v in value)
    return value


def set_normalized(module: nn.Module, field: str, value: Any) -> None:
    """Replace a dataclass field of a module under construction (only from `__post_init__`)."""
    object.__setattr__(module, field, value)
