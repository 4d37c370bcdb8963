"""map_in_batches: the same result as one call over all examples, whatever the batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.batching import map_in_batches


@pytest.mark.parametrize("n, batch_size", [(7, 3), (6, 3), (5, 100), (1, 4), (9, 1)])
def test_batches_give_the_whole_splits_result_and_padding_rows_are_cut(n, batch_size):
    x = jax.random.normal(jax.random.key(0), (n, 4, 2))
    weights = jax.random.normal(jax.random.key(1), (8, 5))
    fn = lambda xb: {"out": xb.reshape(xb.shape[0], -1) @ weights, "norm": jnp.abs(xb).sum(axis=(1, 2))}
    got = jax.jit(lambda x: map_in_batches(fn, x, batch_size))(x)
    want = fn(x)
    assert got["out"].shape == (n, 5) and got["norm"].shape == (n,)
    np.testing.assert_allclose(got["out"], want["out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["norm"], want["norm"], rtol=1e-6)


def test_the_function_sees_only_whole_batches_of_the_requested_size():
    seen = []
    fn = lambda xb: (seen.append(xb.shape), xb.sum(axis=1))[1]
    out = map_in_batches(fn, jnp.ones((10, 3)), 4)
    assert seen == [(4, 3)] and out.shape == (10,)
    np.testing.assert_array_equal(out, np.full(10, 3.0))
