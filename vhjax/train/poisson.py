"""Poisson-sampled batches for DP-SGD, padded to one static size.

The privacy accountants (`vhjax.privacy`) assume each step's batch is a Poisson sample: every
training example joins it independently with probability q = batch_size / N, so the batch's size
varies from step to step. A compiled step needs one shape, so the sample is padded to
`max_batch_size` rows, the padding rows carry weight 0, and a sample larger than that is cut to a
uniformly random subset of `max_batch_size` of its examples: truncated Poisson sampling, which
`dp_accounting.TruncatedSubsampledGaussianDpEvent` accounts exactly (Chua et al. 2024, "Scalable
DP-SGD: Shuffling vs. Poisson Subsampling"; arXiv 2508.15089). The default bound is set so that a
cut is rare (`DEFAULT_TAIL`): the accounting then equals plain Poisson sampling's to the digits a
user reads.

A step's sample is a pure function of (the member's data key, the step), like the shuffled batches
(`vhjax.train.step.chunk_batch_indices`): a resumed run draws the batches the uninterrupted one drew.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vhjax.counter_hash import hashed_bits, indices_by_words

DEFAULT_TAIL = 1e-6  # the default max_batch_size: a step's sample exceeds it with at most this probability
SELECT_TAG, ORDER_TAG = 0, 1  # the two independent draws of a step: who is sampled, and their order


def uses_poisson(config: Any) -> bool:
    """Whether a config trains on Poisson batches (DP-SGD's `dp_sampling='poisson'`)."""
    return getattr(config, "dp_sampling", "shuffle") == "poisson"


def sample_rate(batch_size: int, num_examples: int) -> float:
    """q: the probability that one example joins one step's batch (the expected batch size over N)."""
    return min(1.0, batch_size / num_examples)


def default_max_batch_size(batch_size: int, num_examples: int, tail: float = DEFAULT_TAIL) -> int:
    """The smallest padded size whose Binomial(N, q) sample is larger with probability <= `tail`
    (at least `batch_size`, at most N)."""
    from scipy.stats import binom  # only DP-SGD with Poisson batches needs it

    q = sample_rate(batch_size, num_examples)
    if q >= 1.0:
        return num_examples
    bound = int(binom.isf(tail, num_examples, q))
    while binom.sf(bound, num_examples, q) > tail:  # isf is a float inverse: make sure of the bound
        bound += 1
    return max(batch_size, min(num_examples, bound))


def padded_size(config: Any, num_examples: int) -> int:
    """A config's padded Poisson batch: its `dp_max_batch_size` (at most N) or the default bound."""
    if config.dp_max_batch_size is not None:
        return min(config.dp_max_batch_size, num_examples)
    return default_max_batch_size(config.batch_size, num_examples)


def step_sample(key: jax.Array, num_examples: int, batch_size: int, max_batch_size: int) -> jax.Array:
    """One step's Poisson sample as `max_batch_size` example indices, the padding rows `num_examples`
    (one past the last example): each example selected with probability q, the selected ones in a
    random order (so a sample cut to `max_batch_size` keeps a uniformly random subset)."""
    q = sample_rate(batch_size, num_examples)
    if q >= 1.0:
        selected = jnp.ones(num_examples, bool)
    else:
        threshold = jnp.uint32(min(round(q * 2 ** 32), 2 ** 32 - 1))
        selected = hashed_bits(jax.random.fold_in(key, SELECT_TAG), num_examples) < threshold
    order = hashed_bits(jax.random.fold_in(key, ORDER_TAG), num_examples)
    indices = indices_by_words(order, selected)[:max_batch_size]
    count = jnp.sum(selected, dtype=jnp.int32)
    return jnp.where(jnp.arange(max_batch_size) < count, indices, num_examples)


def chunk_poisson_indices(data_key: jax.Array, start: jax.Array, length: int, num_examples: int,
                          batch_size: int, max_batch_size: int) -> jax.Array:
    """(length, max_batch_size) indices of steps start .. start+length-1 (`step_sample` of each
    step's key, folded from `data_key` and the step)."""
    steps = start + jnp.arange(length)
    return jax.vmap(lambda step: step_sample(jax.random.fold_in(data_key, step), num_examples, batch_size,
                                             max_batch_size))(steps)


def poisson_gather(data: Any, index: jax.Array) -> Any:
    """A step's batch from padded indices: every leaf of `data` at `index` (padding rows read the
    last example) and, last, each row's weight (1 for a sampled example, 0 for padding)."""
    num_examples = jax.tree.leaves(data)[0].shape[0]
    rows = jnp.minimum(index, num_examples - 1)
    return (*jax.tree.map(lambda leaf: leaf[rows], tuple(data)), (index < num_examples).astype(jnp.float32))
