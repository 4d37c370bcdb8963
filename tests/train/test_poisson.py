"""Poisson-sampled batches (`vhjax.train.poisson`): each example joins a step's batch with
probability q, independently; the sample is padded (weight 0) or cut to a uniformly random subset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import binom

from vhjax.train import poisson
from vhjax.train.step import private_gradients

KEY = jax.random.key(3)


def samples(num_examples: int, batch_size: int, max_batch_size: int, steps: int, start: int = 0) -> np.ndarray:
    return np.asarray(jax.jit(poisson.chunk_poisson_indices, static_argnums=(2, 3, 4, 5))(
        KEY, jnp.int32(start), steps, num_examples, batch_size, max_batch_size))


def sizes_and_inclusion(indices: np.ndarray, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Each step's sample size and each example's share of steps that sampled it; checks that
    each row is distinct examples followed by padding."""
    sizes = (indices < num_examples).sum(axis=1)
    counts = np.zeros(num_examples)
    for row, size in zip(indices, sizes):
        assert np.all(row[size:] == num_examples)  # padding only after the sample
        assert len(set(row[:size].tolist())) == size  # no example twice
        counts[row[:size]] += 1
    return sizes, counts / len(indices)


def test_each_example_joins_a_batch_with_probability_q_independently():
    n, batch, steps = 200, 20, 3000
    indices = samples(n, batch, 60, steps)
    sizes, inclusion = sizes_and_inclusion(indices, n)
    q = batch / n
    assert abs(sizes.mean() - batch) < 4 * np.sqrt(n * q * (1 - q) / steps)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.12)  # Binomial(N, q), not a fixed size
    assert np.abs(inclusion - q).max() < 5 * np.sqrt(q * (1 - q) / steps)
    hits = np.zeros((steps, n), bool)
    hits[np.arange(steps)[:, None], np.minimum(indices, n - 1)] = indices < n
    pair = np.mean(hits[:, :-1] & hits[:, 1:])  # neighbours are drawn independently
    assert pair == pytest.approx(q * q, abs=4 * np.sqrt(q * q / (steps * (n - 1))))


def test_a_sample_above_the_bound_keeps_a_uniformly_random_subset():
    n, batch, bound, steps = 200, 40, 30, 2000
    sizes, inclusion = sizes_and_inclusion(samples(n, batch, bound, steps), n)
    assert sizes.max() == bound and np.mean(sizes == bound) > 0.9
    # cutting by index order would keep the low indices: every example keeps the same share
    expected = sizes.mean() / n
    assert abs(inclusion[: n // 2].mean() - inclusion[n // 2:].mean()) < 0.01
    assert np.abs(inclusion - expected).max() < 5 * np.sqrt(expected / steps)


def test_large_training_sets_take_the_argsort_path():
    n, batch = 70_000, 700
    sizes, inclusion = sizes_and_inclusion(samples(n, batch, 900, 8), n)
    assert np.all(np.abs(sizes - batch) < 5 * np.sqrt(batch))


def test_a_steps_sample_depends_on_the_key_and_the_step_only():
    whole = samples(50, 5, 20, 12)
    np.testing.assert_array_equal(samples(50, 5, 20, 7, start=5), whole[5:])  # a resumed chunk
    assert not np.array_equal(whole[0], whole[1])


def test_the_default_bound_is_exceeded_with_at_most_the_tail_probability():
    for n, batch in ((3600, 100), (240, 20), (50, 49)):
        bound = poisson.default_max_batch_size(batch, n)
        q = batch / n
        assert binom.sf(bound, n, q) <= poisson.DEFAULT_TAIL < binom.sf(bound - 1, n, q) or bound == n
        assert batch <= bound <= n
    assert poisson.default_max_batch_size(10, 10) == 10  # q = 1: everyone, every step


def test_the_gather_weights_sampled_rows_one_and_padding_zero():
    x, y = jnp.arange(8.0).reshape(4, 2), jnp.arange(4)
    bx, by, weights = poisson.poisson_gather((x, y), jnp.array([2, 0, 4, 4]))
    np.testing.assert_array_equal(by, [2, 0, 3, 3])
    np.testing.assert_array_equal(weights, [1, 1, 0, 0])
    np.testing.assert_array_equal(bx[0], x[2])


def test_padding_rows_change_nothing_and_the_sum_is_divided_by_the_expected_batch_size():
    class State:  # what private_gradients reads of a member
        params = {"w": jnp.array([0.5, -1.0])}
        hparams = {"dp_clip_norm": jnp.float32(1.0), "noise_multiplier": jnp.float32(0.0)}

    def example_loss(params, index, example):
        x, target, _ = example
        loss = (params["w"] @ x - target) ** 2
        return loss, loss

    x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.1, 0.2], [9.0, 9.0], [-7.0, 3.0]])
    target = jnp.array([1.0, 0.0, 0.5, 100.0, -50.0])  # rows 3 and 4 are padding: huge if they counted
    weights = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    loss, _, grads, clipped = private_gradients(example_loss, State, (x, target, x), KEY, weights, expected_size=4)
    sampled = (x[:3], target[:3], x[:3])
    loss3, _, grads3, clipped3 = private_gradients(example_loss, State, sampled, KEY)
    np.testing.assert_allclose(grads["w"], grads3["w"] * 3 / 4, rtol=1e-6)  # the clipped sum over 4, not over 3
    assert float(loss) == pytest.approx(float(loss3))  # the sampled examples' mean
    assert float(clipped) == pytest.approx(float(clipped3))
