"""Cheap random numbers for a training step: a counter hash seeded from a JAX key.

A train step draws a few arrays every step (dropout masks, each example's augmentation choice and
offset, an epoch's example order). JAX's threefry costs ~50 integer operations per 32-bit word
and, on a CPU, is lowered as a loop; drawing those arrays with it (and an epoch's permutation with
threefry and two sorts) cost a small CNN population's training program about half a second of
compilation (experiments/README.md, "Cheaper random numbers in the training step"). Here two
words drawn from the key (one threefry call) seed a counter hash: word i = mix(mix(i * golden + s0)
^ s1), with `mix` MurmurHash3's 32-bit finalizer (about 12 operations per word). Good for masks
and augmentation draws (tests/test_counter_hash.py), not cryptographic; distinct keys give
independent-looking streams, so vmapped keys (one per member) give each member its own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: the counter's stride (a Weyl sequence)
UNIFORM_BITS = 24  # a float32 in [0, 1) from the top 24 bits of a word: every value exact


def mix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, count: int) -> jax.Array:
    """`count` pseudo-random uint32 words from `key` (two words drawn from it seed the hash)."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = lax.iota(jnp.uint32, count)
    return mix32(mix32(counter * jnp.uint32(GOLDEN) + seed[0]) ^ seed[1])


def hashed_uniform(key: jax.Array, shape: tuple[int, ...] | int) -> jax.Array:
    """float32 uniform in [0, 1) of `shape`, 24 random bits each."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    words = hashed_bits(key, math.prod(shape)) >> (32 - UNIFORM_BITS)
    return (words.astype(jnp.float32) * jnp.float32(2.0 ** -UNIFORM_BITS)).reshape(shape)


def hashed_bernoulli(key: jax.Array, p: jax.Array, shape: tuple[int, ...] | int) -> jax.Array:
    """bool of `shape`, True with probability `p` (may be traced; 0 gives none, 1 all)."""
    return hashed_uniform(key, shape) < p


def hashed_randint(key: jax.Array, shape: tuple[int, ...] | int, low: jax.Array, high: jax.Array) -> jax.Array:
    """int32 uniform in [low, high) of `shape`; `low`/`high` may be traced (high > low). The bias
    of mapping 24 random bits onto the range is below range / 2**24."""
    low, high = jnp.asarray(low, jnp.int32), jnp.asarray(high, jnp.int32)
    return low + uniform_index(hashed_uniform(key, shape), high - low)


PACKED_SORT_EXAMPLES = 1 << 16  # up to here an example's index and >= 16 random bits share one uint32


def indices_by_words(words: jax.Array, selected: jax.Array | None = None) -> jax.Array:
    """The indices 0..N-1 in the order of their uint32 `words` (`hashed_bits`: a random order), and
    with `selected` (bool, N) the selected ones first, in that order (the others after them).

    Up to `PACKED_SORT_EXAMPLES` examples the index takes the low bits of each word and one array
    is sorted: XLA's CPU sort of one operand is about 5x faster than an argsort's two (96 orders of
    3,600 examples: 7.7 against 43 ms). Words whose random bits tie (rare) keep their index order."""
    count = words.shape[0]
    last = jnp.uint32(0xFFFFFFFF)
    if count > PACKED_SORT_EXAMPLES:
        keys = words if selected is None else jnp.where(selected, jnp.minimum(words, last - 1), last)
        return jnp.argsort(keys).astype(jnp.int32)
    index_mask = (1 << max(1, (count - 1).bit_length())) - 1
    packed = (words & jnp.uint32(0xFFFFFFFF ^ index_mask)) | lax.iota(jnp.uint32, count)
    if selected is not None:  # a selected word never exceeds `last`, and equals it only at its own index
        packed = jnp.where(selected, packed, last)
    return (jnp.sort(packed) & jnp.uint32(index_mask)).astype(jnp.int32)


def uniform_index(u: jax.Array, count) -> jax.Array:
    """`floor(u * count)`, at most `count - 1`: a uniform index in [0, count) for each uniform `u` in
    [0, 1) (NumPy in, NumPy out: host-side decisions use it too)."""
    xp = jnp if isinstance(u, jax.Array) or isinstance(count, jax.Array) else np
    return xp.minimum((u * count).astype(np.int32), count - 1)
