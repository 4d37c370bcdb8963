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


def uniform_index(u: jax.Array, count) -> jax.Array:
    """`floor(u * count)`, at most `count - 1`: a uniform index in [0, count) for each uniform `u` in
    [0, 1) (NumPy in, NumPy out: host-side decisions use it too)."""
    xp = jnp if isinstance(u, jax.Array) or isinstance(count, jax.Array) else np
    return xp.minimum((u * count).astype(np.int32), count - 1)
