"""Augmentations of token sequences `(N, L)` of integer ids (EDA-style, Wei and Zou 2019).

Every op is `fn(key, x, strength) -> x`; strength 0 returns `x` bitwise, shapes and dtype never
change. Token `pad_id` marks padding, which is expected at the end of each row; insertion pushes
tokens past the end off the row, deletion pads the freed places at the end with `pad_id`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import validation
from vhjax.augment.compose import (Augmentation, check_rank, check_strength, identity_at_zero, per_example,
                                   register_augmentation)

TOKEN_LAYOUT = "token ids (N, L) of an integer dtype"


def _checked_tokens(x: jax.Array, strength: jax.Array, op: str) -> jax.Array:
    check_rank(x, (2,), op, TOKEN_LAYOUT)
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
        raise ValueError(f"augmentation {op!r} got x of dtype {jnp.asarray(x).dtype}; allowed: {TOKEN_LAYOUT}")
    return check_strength(strength)


def _per_row(op: str, one: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]) -> Augmentation:
    """The augmentation `op` that checks its token ids and strength and applies `one(key, row, strength)`
    to every row (the identity at strength 0)."""

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array) -> jax.Array:
        strength = _checked_tokens(x, strength, op)
        return identity_at_zero(strength, x, per_example(key, x, lambda k, row: one(k, row, strength)))

    return apply


def _checked_pad(pad_id: Any, op: str) -> int:
    return validation.check_int(f"augmentation {op!r} option 'pad_id'", pad_id)


def _checked_id_array(values: Any, field: str, op: str, ndim: int, shape_text: str) -> np.ndarray:
    """A required integer array option of rank `ndim`; anything else raises ValueError."""
    array = None if values is None else np.asarray(values)
    if array is None or array.ndim != ndim or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        shape = None if array is None else (array.shape, str(array.dtype))
        raise ValueError(
            f"augmentation {op!r} option {field!r} is {shape!r}; allowed: a non-empty integer array {shape_text}")
    return array.astype(np.int32)


def _scatter_row(length: int, pad_id: int, dtype: jnp.dtype, targets: jax.Array, values: jax.Array) -> jax.Array:
    """A row of `pad_id` with `values` written at `targets`; targets >= length are dropped."""
    row = jnp.full((length,), pad_id, dtype)
    return row.at[targets].set(values.astype(dtype), mode="drop")


@register_augmentation("synonym_swap", max_strength=1.0)
def synonym_swap(synonyms: Any = None, pad_id: int = 0) -> Augmentation:
    """Replace each token, with probability strength, by one of its synonyms chosen uniformly.

    `synonyms` (required) is an integer array (vocab, k): row t lists the synonyms of token t,
    padded with -1. Tokens without synonyms, outside the table, or equal to `pad_id` stay.
    Natural range [0, 0.2]."""
    table = jnp.asarray(_checked_id_array(synonyms, "synonyms", "synonym_swap", 2, "(vocab, k) padded with -1"))
    pad = _checked_pad(pad_id, "synonym_swap")
    vocab = table.shape[0]

    def one(key: jax.Array, row: jax.Array, strength: jax.Array) -> jax.Array:
        hit_key, pick_key = jax.random.split(key)
        known = (row != pad) & (row >= 0) & (row < vocab)
        options = table[jnp.clip(row, 0, vocab - 1)]  # (L, k)
        available = options >= 0
        count = jnp.sum(available, axis=1)
        choice = jnp.floor(jax.random.uniform(pick_key, row.shape) * count).astype(jnp.int32)
        slot = jnp.argmax(jnp.cumsum(available, axis=1) > choice[:, None], axis=1)
        synonym = jnp.take_along_axis(options, slot[:, None], axis=1)[:, 0]
        swap = jax.random.bernoulli(hit_key, strength, row.shape) & known & (count > 0)
        return jnp.where(swap, synonym.astype(row.dtype), row)

    return _per_row("synonym_swap", one)


@register_augmentation("random_insertion", max_strength=1.0)
def random_insertion(tokens: Any = None, pad_id: int = 0) -> Augmentation:
    """Before each non-pad token, with probability strength, insert a token drawn uniformly from
    `tokens` (required; e.g. the ids of stop words). Later tokens move right; those pushed past
    the end are dropped. Natural range [0, 0.2]."""
    candidates = jnp.asarray(_checked_id_array(tokens, "tokens", "random_insertion", 1, "(M,)"))
    pad = _checked_pad(pad_id, "random_insertion")

    def one(key: jax.Array, row: jax.Array, strength: jax.Array) -> jax.Array:
        hit_key, pick_key = jax.random.split(key)
        length = row.shape[0]
        valid = row != pad
        insert = jax.random.bernoulli(hit_key, strength, row.shape) & valid
        moved = jnp.arange(length) + jnp.cumsum(insert)
        new_tokens = candidates[jax.random.randint(pick_key, row.shape, 0, candidates.shape[0])]
        out = _scatter_row(length, pad, row.dtype, jnp.where(valid, moved, length), row)
        return out.at[jnp.where(insert, moved - 1, length)].set(new_tokens.astype(row.dtype), mode="drop")

    return _per_row("random_insertion", one)


@register_augmentation("random_deletion", max_strength=1.0)
def random_deletion(pad_id: int = 0) -> Augmentation:
    """Delete each non-pad token with probability strength, keeping at least one (a random one)
    of a non-empty row; the rest close up and the row is padded at the end with `pad_id`.
    Natural range [0, 0.2]."""
    pad = _checked_pad(pad_id, "random_deletion")

    def one(key: jax.Array, row: jax.Array, strength: jax.Array) -> jax.Array:
        hit_key, keep_key = jax.random.split(key)
        length = row.shape[0]
        valid = row != pad
        keep = valid & ~jax.random.bernoulli(hit_key, strength, row.shape)
        # If every token would go, keep one valid token chosen uniformly.
        rescue = jnp.argmax(jnp.where(valid, jax.random.uniform(keep_key, row.shape), -1.0))
        keep = jnp.where(jnp.any(keep), keep, jnp.arange(length) == rescue) & valid
        targets = jnp.where(keep, jnp.cumsum(keep) - 1, length)
        return _scatter_row(length, pad, row.dtype, targets, row)

    return _per_row("random_deletion", one)


@register_augmentation("random_swap", max_strength=1.0)
def random_swap(pad_id: int = 0) -> Augmentation:
    """Swap two different non-pad tokens chosen uniformly, round(strength * n) times for a row of n
    non-pad tokens (at least once when strength > 0 and n >= 2). Natural range [0, 0.2]."""
    pad = _checked_pad(pad_id, "random_swap")

    def one(key: jax.Array, row: jax.Array, strength: jax.Array) -> jax.Array:
        length = row.shape[0]
        valid = row != pad
        count = jnp.sum(valid)
        positions = jnp.argsort(~valid, stable=True)  # indices of the non-pad tokens first
        swaps = jnp.maximum(jnp.round(strength * count), (strength > 0) & (count >= 2)).astype(jnp.int32)
        first_key, offset_key = jax.random.split(key)
        firsts = jax.random.randint(first_key, (length,), 0, jnp.maximum(count, 1))
        # The second pick is a different token: an offset in [1, n - 1] from the first.
        seconds = (firsts + jax.random.randint(offset_key, (length,), 1, jnp.maximum(count, 2))) % jnp.maximum(count, 1)

        def body(step: int, current: jax.Array) -> jax.Array:
            first, second = positions[firsts[step]], positions[seconds[step]]
            swapped = current.at[first].set(current[second]).at[second].set(current[first])
            return jnp.where(step < swaps, swapped, current)

        return jax.lax.fori_loop(0, length, body, row)

    return _per_row("random_swap", one)
