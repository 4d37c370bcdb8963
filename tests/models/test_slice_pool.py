"""Pooling by strided slices equals flax's reduce_window pooling, values and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.models import get_model
from vhjax.models.slice_pool import avg_pool, max_pool

CASES = [  # (input shape, window, strides, padding)
    ((3, 8, 8, 4), (2, 2), (2, 2), "VALID"),
    ((3, 9, 7, 4), (2, 2), (2, 2), "VALID"),  # odd sizes: the last row / column is dropped
    ((3, 16, 16, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet / DenseNet stem
    ((3, 8, 8, 2), (3, 3), (1, 1), "SAME"),  # the NAS-Bench-201 cell's pool
    ((3, 40, 5), (3,), (2,), "SAME"),  # 1-D
]


@pytest.mark.parametrize("shape, window, strides, padding", CASES)
def test_max_pool_matches_flax_values_and_gradients(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous values: no ties for the maximum
    ours = max_pool("patch", x, window, strides, padding)
    flax_out = nn.max_pool(x, window, strides, padding=padding)
    np.testing.assert_array_equal(ours, flax_out)
    loss = lambda pool: lambda v: jnp.sum(jnp.sin(pool(v)))
    grad_ours = jax.grad(loss(lambda v: max_pool("patch", v, window, strides, padding)))(x)
    grad_flax = jax.grad(loss(lambda v: nn.max_pool(v, window, strides, padding=padding)))(x)
    np.testing.assert_allclose(grad_ours, grad_flax, atol=1e-6)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, window, strides, padding", CASES)
def test_avg_pool_matches_flax_values_and_gradients(shape, window, strides, padding, count_include_pad):
    x = jax.random.normal(jax.random.key(1), shape)
    pool_ours = lambda v: avg_pool("patch", v, window, strides, padding, count_include_pad)
    pool_flax = lambda v: nn.avg_pool(v, window, strides, padding=padding, count_include_pad=count_include_pad)
    np.testing.assert_allclose(pool_ours(x), pool_flax(x), atol=1e-6)
    grads = [jax.grad(lambda v: jnp.sum(jnp.sin(pool(v))))(x) for pool in (pool_ours, pool_flax)]
    np.testing.assert_allclose(*grads, atol=1e-6)


def test_vmapped_over_members_equals_each_member_alone():
    x = jax.random.normal(jax.random.key(2), (4, 3, 8, 8, 2))  # 4 members
    batched = jax.vmap(lambda v: max_pool("patch", v, (2, 2), (2, 2)))(x)
    for member in range(4):
        np.testing.assert_array_equal(batched[member], nn.max_pool(x[member], (2, 2), (2, 2)))


def test_padding_never_wins_the_maximum():
    x = -jnp.ones((1, 4, 4, 1))  # every input below the zero a zero-padding would bring
    np.testing.assert_array_equal(max_pool("patch", x, (3, 3), (2, 2), ((1, 1), (1, 1))), -jnp.ones((1, 2, 2, 1)))


def test_xla_impl_is_flax_and_bad_window_is_named():
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 3))
    np.testing.assert_array_equal(max_pool("xla", x, (2, 2), (2, 2)), nn.max_pool(x, (2, 2), (2, 2)))
    with pytest.raises(ValueError, match="pooling window"):
        max_pool("patch", x, (2,), (2,))
    with pytest.raises(ValueError, match="conv_impl"):
        max_pool("fast", x, (2, 2), (2, 2))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_cnn_with_pooling_is_the_same_network_under_both_impls(pooling):
    x = jax.random.normal(jax.random.key(4), (5, 8, 8, 1))
    outputs = []
    for impl in ("patch", "xla"):
        model = get_model("cnn2d", conv_layers=((8, 3, 1, "SAME"), (8, 3, 1, "SAME")), head_widths=(16,),
                          pooling=pooling, conv_impl=impl)
        params = model.init(jax.random.key(0), x)
        outputs.append(model.apply(params, x))
    np.testing.assert_allclose(*outputs, atol=1e-5)
