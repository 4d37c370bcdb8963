"""vhjax.models.layers: the population-friendly dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.models.layers import Dropout, keep_mask


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_keep_mask_frequency_and_scale_match_the_rounded_keep(keep):
    mask, scale = keep_mask(jax.random.key(0), (200, 37, 5), jnp.float32(keep))  # size not a multiple of 4
    rounded = round(keep * 256) / 256
    assert mask.shape == (200, 37, 5)
    assert abs(float(mask.mean()) - rounded) < 0.01
    assert float(scale) == pytest.approx(1.0 / max(rounded, 1 / 256))


def test_keep_mask_units_are_independent_across_calls_and_keys():
    a, _ = keep_mask(jax.random.key(1), (4096,), jnp.float32(0.5))
    b, _ = keep_mask(jax.random.key(2), (4096,), jnp.float32(0.5))
    agreement = float(jnp.mean(a == b))
    assert 0.45 < agreement < 0.55  # independent fair coins agree half the time


def test_dropout_is_unbiased_and_identity_at_rate_zero():
    x = jnp.ones((512, 64))
    layer = Dropout()
    apply = lambda rate, key: layer.apply({}, x, rate, False, rngs={"dropout": key})
    out = apply(jnp.float32(0.3), jax.random.key(3))
    assert float(out.mean()) == pytest.approx(1.0, abs=0.02)
    assert float(jnp.mean(out == 0)) == pytest.approx(0.3, abs=0.01)
    np.testing.assert_array_equal(apply(jnp.float32(0.0), jax.random.key(3)), x)
    rates = jnp.array([0.0, 0.5])
    vmapped = jax.vmap(apply)(rates, jax.random.split(jax.random.key(4), 2))
    np.testing.assert_array_equal(vmapped[0], x)
    assert float(jnp.mean(vmapped[1] == 0)) == pytest.approx(0.5, abs=0.01)
