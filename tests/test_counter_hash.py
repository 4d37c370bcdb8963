"""vhjax.counter_hash: the cheap random words, uniforms, coins and integers of a train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.counter_hash import hashed_bernoulli, hashed_bits, hashed_randint, hashed_uniform
from vhjax.train.step import chunk_batch_indices, epoch_order


def test_hashed_bits_are_balanced_uncorrelated_and_differ_per_vmapped_key():
    words = np.asarray(hashed_bits(jax.random.key(5), 1 << 16))
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 32).astype(np.float64)
    assert np.all(np.abs(bits.mean(0) - 0.5) < 0.01)  # every bit position is a fair coin
    neighbours = np.corrcoef(bits[:-1].ravel(), bits[1:].ravel())[0, 1]
    assert abs(neighbours) < 0.01  # consecutive counters do not give related words
    assert len(np.unique(words)) > 0.99 * len(words)
    per_member = np.asarray(jax.vmap(lambda k: hashed_bits(k, 4096))(jax.random.split(jax.random.key(6), 3)))
    low = per_member & 1
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert 0.45 < np.mean(low[i] == low[j]) < 0.55  # members' streams are independent


def test_hashed_uniform_fills_unit_interval_evenly_in_the_asked_shape():
    u = np.asarray(hashed_uniform(jax.random.key(0), (200, 100)))
    assert u.shape == (200, 100) and u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    expected = u.size / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert abs(np.corrcoef(u.ravel()[:-1], u.ravel()[1:])[0, 1]) < 0.02


@pytest.mark.parametrize("p", [0.0, 0.25, 0.9, 1.0])
def test_hashed_bernoulli_hits_its_probability_and_is_exact_at_the_ends(p):
    coins = np.asarray(hashed_bernoulli(jax.random.key(1), jnp.float32(p), 20000))
    if p in (0.0, 1.0):
        assert coins.all() == bool(p) and coins.any() == bool(p)
    else:
        assert abs(coins.mean() - p) < 0.015


def test_hashed_randint_covers_each_value_of_a_traced_range_equally():
    draw = jax.jit(lambda key, limit: hashed_randint(key, 30000, -limit, limit + 1))
    values = np.asarray(draw(jax.random.key(2), jnp.int32(3)))
    assert values.min() == -3 and values.max() == 3
    counts = np.bincount(values + 3, minlength=7)
    assert np.all(np.abs(counts / values.size - 1 / 7) < 0.01)
    assert np.all(np.asarray(hashed_randint(jax.random.key(3), 50, 4, 5)) == 4)  # a one-value range


def test_epoch_order_is_a_permutation_that_changes_with_epoch_and_key():
    key = jax.random.key(7)
    first, second = (np.asarray(epoch_order(key, jnp.asarray(e), 1000, True)) for e in (0, 1))
    other = np.asarray(epoch_order(jax.random.key(8), jnp.asarray(0), 1000, True))
    for order in (first, second, other):
        assert sorted(order.tolist()) == list(range(1000))
    assert np.mean(first == second) < 0.02 and np.mean(first == other) < 0.02
    assert abs(np.corrcoef(first, np.arange(1000))[0, 1]) < 0.1  # no trace of the input order
    assert np.array_equal(np.asarray(epoch_order(key, jnp.asarray(0), 10, False)), np.arange(10))


@pytest.mark.parametrize("count", [1, 2, 3, 1000, 4096, 4097])
def test_epoch_order_sorts_the_words_random_bits_with_the_index_breaking_ties(count, monkeypatch):
    from vhjax import counter_hash
    from vhjax.counter_hash import hashed_bits

    key, epoch = jax.random.key(11), jnp.asarray(3)
    words = np.asarray(hashed_bits(jax.random.fold_in(key, epoch), count))
    index_bits = max(1, (count - 1).bit_length())
    wanted = np.argsort(words >> index_bits, kind="stable")  # by the random bits; ties by index
    order = np.asarray(epoch_order(key, epoch, count, True))
    assert np.array_equal(order, wanted) and sorted(order.tolist()) == list(range(count))
    monkeypatch.setattr(counter_hash, "PACKED_SORT_EXAMPLES", count - 1)  # the argsort of whole words beyond it
    assert np.array_equal(np.asarray(epoch_order(key, epoch, count, True)), np.argsort(words, kind="stable"))


def test_chunk_batches_use_every_example_once_per_epoch():
    batches = np.asarray(chunk_batch_indices(jax.random.key(4), jnp.asarray(0), 10, 50, 10, True, True))
    for epoch in (batches[:5], batches[5:]):
        assert sorted(epoch.ravel().tolist()) == list(range(50))
    assert not np.array_equal(batches[:5], batches[5:])
