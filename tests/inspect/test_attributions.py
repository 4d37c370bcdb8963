"""Attribution methods: exact identities on linear models, completeness of integrated gradients,
shapes for sequences and images, and vmapping over population members."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import models
from vhjax.inspect import attributions as attr


def linear_setup(shape=(12,), classes=4, batch=5):
    model = models.get_model("linear", num_classes=classes)
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    params = model.init(jax.random.key(1), x)["params"]
    return model, params, x, jnp.arange(batch) % classes


def test_linear_model_identities():
    model, params, x, target = linear_setup()
    apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)
    kernel, bias = params["head"]["kernel"], params["head"]["bias"]
    grads = attr.vanilla_gradients(apply_fn, params, x, target)
    np.testing.assert_allclose(grads, kernel[:, target].T, rtol=1e-5)
    gxi = attr.gradient_x_input(apply_fn, params, x, target)
    logits = apply_fn(params, x)[jnp.arange(5), target]
    np.testing.assert_allclose(gxi.sum(1), logits - bias[target], rtol=1e-4, atol=1e-5)
    # occlusion of one position at a time with baseline 0 removes exactly x_i * w_i
    occ = attr.occlusion(apply_fn, params, x, target, window=(1,))
    np.testing.assert_allclose(occ, gxi, rtol=1e-4, atol=1e-5)
    # integrated gradients of a linear model equal gradient x input (zero baseline)
    np.testing.assert_allclose(attr.integrated_gradients(apply_fn, params, x, target, steps=4), gxi, rtol=1e-4,
                               atol=1e-5)
    # SmoothGrad without noise is the plain gradient
    np.testing.assert_allclose(attr.smoothgrad(apply_fn, params, x, target, jax.random.key(0), samples=3, noise=0.0),
                               grads, rtol=1e-5)


@pytest.mark.parametrize("output", ["logit", "log_prob"])
def test_integrated_gradients_completeness_on_a_nonlinear_net(output):
    model = models.get_model("mlp", widths=(64, 64), num_classes=5, activation="tanh")
    x = jax.random.normal(jax.random.key(2), (6, 20))
    params = model.init(jax.random.key(3), x)["params"]
    apply_fn = lambda p, inputs: 3.0 * model.apply({"params": p}, inputs)  # sharper, more curved
    target = jnp.arange(6) % 5
    baseline = 0.1 * jnp.ones_like(x)
    ig = attr.integrated_gradients(apply_fn, params, x, target, baseline=baseline, steps=64, output=output)
    gap = attr.target_score(apply_fn, params, x, target, output) - attr.target_score(apply_fn, params, baseline,
                                                                                      target, output)
    np.testing.assert_allclose(ig.sum(1), gap, rtol=0.02, atol=2e-3)
    coarse = attr.integrated_gradients(apply_fn, params, x, target, baseline=baseline, steps=1, output=output)
    assert float(jnp.abs(coarse.sum(1) - gap).max()) > float(jnp.abs(ig.sum(1) - gap).max())  # Riemann error shrinks


@pytest.mark.parametrize("kind,shape,methods", [("cnn1d", (16, 2), tuple(attr.METHODS)),
                                                ("cnn2d", (8, 8, 1), ("gradients", "occlusion"))])
def test_shapes_for_sequences_and_images_and_over_members(kind, shape, methods):
    conv = ((4, 3, 1, "SAME"),)
    model = models.get_model(kind, conv_layers=conv, head_widths=(), num_classes=3)
    x = jax.random.normal(jax.random.key(4), (2, *shape))
    stacked = jax.vmap(lambda k: model.init(k, x)["params"])(jax.random.split(jax.random.key(5), 2))
    apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)
    target = jnp.array([0, 2])
    for name in methods:
        method = attr.METHODS[name]
        if name == "smoothgrad":
            out = attr.over_members(method, samples=2)(apply_fn, stacked, x, target, jax.random.key(0))
        else:
            out = attr.over_members(method, **({"steps": 4} if name == "integrated_gradients" else {}))(
                apply_fn, stacked, x, target)
        assert out.shape == (2, *x.shape), name
        assert bool(jnp.all(jnp.isfinite(out)))
        assert not np.allclose(out[0], out[1]), name  # members have their own weights
    member_one = attr.vanilla_gradients(apply_fn, jax.tree.map(lambda a: a[1], stacked), x, target)
    np.testing.assert_allclose(attr.over_members(attr.vanilla_gradients)(apply_fn, stacked, x, target)[1],
                               member_one, rtol=1e-5, atol=1e-6)


def test_occlusion_masks_cover_every_position():
    masks = attr.occlusion_masks((10, 7, 1), (3, 3, 1), (3, 3, 1))
    assert masks.min() == 0 and np.all(masks.sum(0) >= 1)
    assert attr.default_window((8, 8, 1)) == (1, 1, 1) and attr.default_window((40,)) == (5,)


def test_rank_correlation():
    a = jax.random.normal(jax.random.key(6), (4, 30))
    np.testing.assert_allclose(attr.rank_correlation(a, 2 * a + 1, absolute=False), 1.0, atol=1e-5)
    np.testing.assert_allclose(attr.rank_correlation(a, -a, absolute=False), -1.0, atol=1e-5)
    from scipy.stats import spearmanr

    b = jax.random.normal(jax.random.key(7), (4, 30))
    expected = [spearmanr(np.abs(a[i]), np.abs(b[i])).statistic for i in range(4)]
    np.testing.assert_allclose(attr.rank_correlation(a, b), expected, atol=1e-5)


def test_bad_inputs():
    model, params, x, target = linear_setup()
    apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)
    with pytest.raises(ValueError, match=r"target has shape \(3,\)"):
        attr.vanilla_gradients(apply_fn, params, x, target[:3])
    with pytest.raises(ValueError, match="output has value 'prob'"):
        attr.vanilla_gradients(apply_fn, params, x, target, output="prob")
    with pytest.raises(ValueError, match="steps has value 0"):
        attr.integrated_gradients(apply_fn, params, x, target, steps=0)
    with pytest.raises(ValueError, match="window"):
        attr.occlusion(apply_fn, params, x, target, window=(13,))
