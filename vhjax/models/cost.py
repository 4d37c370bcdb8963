"""Compute cost of a model's forward pass, from XLA's cost analysis of the compiled program.

Nothing is run and no parameters are allocated: the model is initialised and lowered on abstract
shapes (`jax.ShapeDtypeStruct`), compiled, and `compiled.cost_analysis()` read. XLA counts a
multiply-add as 2 flops (a Dense layer of D inputs and K outputs: 2*D*K + K per example, the K
for the bias). Caveat: XLA counts the body of a loop (`lax.scan`, `fori_loop`, so flax's
`nn.RNN`) once, not once per iteration, so recurrent models are under-counted; for them use
`count='matmul'`, which walks the jaxpr and counts the multiply-adds of every matrix product and
convolution, each `scan` body times its length.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.utils import check_positive


def compiled_cost(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
    """XLA's cost analysis ('flops', 'bytes accessed', ...) of `jax.jit(fn)` on `args` (arrays or
    `jax.ShapeDtypeStruct`s)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax versions: one dict per device program
        cost = cost[0]
    return dict(cost or {})


def _input_specs(input_shape: Any, dtype: Any, batch_size: int) -> list[jax.ShapeDtypeStruct]:
    shapes = input_shape if input_shape and all(isinstance(s, (list, tuple)) for s in input_shape) else [input_shape]
    dtypes = dtype if isinstance(dtype, (list, tuple)) else [dtype] * len(shapes)
    if len(dtypes) != len(shapes):
        raise ValueError(f"flops_per_example field 'dtype' has value {dtype!r}; allowed: one dtype, or one per input "
                         f"({len(shapes)} inputs)")
    specs = []
    for i, (shape, dt) in enumerate(zip(shapes, dtypes)):
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"flops_per_example field 'input_shape' has value {input_shape!r}; allowed: the shape "
                             "of one example without the batch axis, e.g. (40,), or one such shape per input")
        specs.append(jax.ShapeDtypeStruct((batch_size, *shape), jnp.dtype(dt)))
    return specs


COUNTS = ("xla", "matmul")


def _flops(eqn: Any, operand: int, axes: Sequence[int]) -> float:
    """2 flops per multiply-add: every output element sums over the `axes` of input `operand`."""
    shape = eqn.invars[operand].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(shape[axis] for axis in axes)


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return _flops(eqn, 0, lhs_contract)


def _conv_flops(eqn: Any) -> float:
    spec = eqn.params["dimension_numbers"].rhs_spec  # kernel axes: (out feature, in feature, *spatial)
    return _flops(eqn, 1, spec[1:])


def jaxpr_matmul_flops(jaxpr: Any) -> float:
    """Multiply-add flops (2 per MAC) of every dot_general and convolution, scan bodies times their length."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        multiplier = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (list, tuple)) else (value,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += multiplier * jaxpr_matmul_flops(inner) / (len(value) if name == "cond" else 1)
    return total


def flops_per_example(model: nn.Module, input_shape: Sequence[int] | Sequence[Sequence[int]], *,
                      batch_size: int = 1, dtype: Any = jnp.float32, count: str = "xla") -> float:
    """Flops of one inference forward pass (`train=False`) per example.

    `count='xla'` reads XLA's cost analysis (all ops, loop bodies once); `count='matmul'` counts
    matrix-product and convolution multiply-adds from the jaxpr, loops included (see module doc).

    `input_shape` is one example's shape without the batch axis, e.g. (40,) or (32, 32, 3); a
    model with several inputs (graph nets, seq2seq) takes one shape per input, and `dtype` may
    then be one dtype per input (e.g. int32 token ids). The program is compiled for `batch_size`
    examples and the count divided by it.
    """
    check_positive("flops_per_example", "batch_size", batch_size)
    if count not in COUNTS:
        raise ValueError(f"flops_per_example field 'count' has value {count!r}; allowed: {', '.join(COUNTS)}")
    specs = _input_specs(input_shape, dtype, batch_size)
    variables = jax.eval_shape(model.init, jax.random.key(0), *specs)
    if count == "matmul":
        closed = jax.make_jaxpr(lambda v, *xs: model.apply(v, *xs, train=False))(variables, *specs)
        return jaxpr_matmul_flops(closed.jaxpr) / batch_size
    cost = compiled_cost(lambda v, *xs: model.apply(v, *xs, train=False), variables, *specs)
    if "flops" not in cost:
        raise ValueError(f"XLA reported no flop count for {type(model).__name__} on this backend: {sorted(cost)}")
    return float(cost["flops"]) / batch_size
