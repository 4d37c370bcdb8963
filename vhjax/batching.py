"""A function over a whole split in fixed-size batches, inside one traced program.

Evaluation, feature extraction, distillation's teacher and anomaly scores all apply a network to
more examples than fit in one batch; `map_in_batches` pads the examples to whole batches, runs the
function over them with one `lax.map` (one compiled body, memory of one batch) and cuts the padding
rows off again.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def map_in_batches(fn: Callable[[jax.Array], Any], x: jax.Array, batch_size: int) -> Any:
    """`fn` over `x` (N, ...) in batches of `min(batch_size, N)` examples: every output leaf (B, ...)
    comes back as (N, ...). The last batch is padded with zeros; `fn` must treat examples
    independently (evaluation mode), so the padding rows, cut afterwards, change nothing."""
    n = x.shape[0]
    size = max(1, min(batch_size, n))
    padded = -(-n // size) * size
    batches = jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, size, *x.shape[1:])
    out = lax.map(fn, batches)
    return jax.tree.map(lambda leaf: leaf.reshape(padded, *leaf.shape[2:])[:n], out)
