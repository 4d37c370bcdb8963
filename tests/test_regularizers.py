"""L1 / L2 / elastic-net penalties on a small parameter tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import regularizers as reg

PARAMS = {
    "Dense_0": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.0]]), "bias": jnp.array([5.0, -1.0])},
    "Embed_0": {"embedding": jnp.array([[-1.0, 1.0]])},
    "LayerNorm_0": {"scale": jnp.array([2.0, 2.0])},
}
KERNEL_L1 = 1 + 2 + 3 + 0 + 1 + 1
KERNEL_L2 = 1 + 4 + 9 + 0 + 1 + 1
ALL_L1 = KERNEL_L1 + 5 + 1 + 2 + 2
ALL_L2 = KERNEL_L2 + 25 + 1 + 4 + 4


def test_l1_l2_kernels_vs_all():
    assert float(reg.l1(PARAMS)) == KERNEL_L1
    assert float(reg.l2(PARAMS)) == KERNEL_L2
    assert float(reg.l1(PARAMS, where="all")) == ALL_L1
    assert float(reg.l2(PARAMS, where="all")) == ALL_L2


def test_callable_where_selects_by_path():
    only_dense = lambda path, leaf: path[0] == "Dense_0"
    assert float(reg.l1(PARAMS, where=only_dense)) == 1 + 2 + 3 + 5 + 1
    assert float(reg.l2(PARAMS, where=lambda path, leaf: False)) == 0.0


def test_elastic_net_mixes_l1_and_l2():
    np.testing.assert_allclose(reg.elastic_net(PARAMS, 0.25), 0.25 * KERNEL_L1 + 0.75 * KERNEL_L2)
    np.testing.assert_allclose(reg.elastic_net(PARAMS, 1.0, where="all"), ALL_L1)


def test_bad_where_raises():
    with pytest.raises(ValueError, match="weights"):
        reg.l1(PARAMS, where="weights")
    with pytest.raises(ValueError, match="weights"):
        reg.penalty(PARAMS, {"l1": 1.0}, where="weights")


def test_penalty_sums_coefficient_times_regularizer():
    value = reg.penalty(PARAMS, {"l1": 0.1, "l2": 0.01, "elastic_net": 2.0}, l1_ratio=0.5)
    expected = 0.1 * KERNEL_L1 + 0.01 * KERNEL_L2 + 2.0 * (0.5 * KERNEL_L1 + 0.5 * KERNEL_L2)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert float(reg.penalty(PARAMS, {})) == 0.0


def test_penalty_under_jit_and_vmap_over_coefficients():
    coefficients = {"l1": jnp.array([0.0, 0.1, 1.0]), "l2": jnp.array([0.5, 0.0, 2.0])}
    batched = jax.jit(jax.vmap(lambda c: reg.penalty(PARAMS, c, where="all")))(coefficients)
    for i in range(3):
        single = {k: float(v[i]) for k, v in coefficients.items()}
        np.testing.assert_allclose(batched[i], reg.penalty(PARAMS, single, where="all"), rtol=1e-6)
        np.testing.assert_allclose(batched[i], single["l1"] * ALL_L1 + single["l2"] * ALL_L2, rtol=1e-6)


def test_penalty_gradient_is_two_c_w_for_l2():
    grads = jax.grad(lambda p: reg.penalty(p, {"l2": 0.5}))(PARAMS)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], PARAMS["Dense_0"]["kernel"])
    np.testing.assert_allclose(grads["Dense_0"]["bias"], 0.0)


def test_unknown_coefficient_raises_listing_allowed():
    with pytest.raises(ValueError, match="l3.*elastic_net"):
        reg.penalty(PARAMS, {"l3": 1.0})
