"""Batch norm for small batches: the total-variance running average, precise-BN recomputation (exact,
jit- and vmap-able), normalisation fields of the zoo, shortcut and zero-init options of residual nets."""

import functools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.models import count_params, get_model
from vhjax.models.batchnorm import BatchNorm, recompute_batch_stats

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


class TwoNorms(nn.Module):
    """BatchNorm on the input, Dense, BatchNorm: the second layer's statistics depend on the first's."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train, name="bn0")(x)
        h = nn.Dense(3, name="dense")(h)
        return BatchNorm(use_running_average=not train, name="bn1")(h)


def test_recompute_batch_stats_is_the_exact_mean_and_total_variance():
    model = TwoNorms()
    # four batches of 5 with very different means: the mean of batch variances is far below the total variance
    batches = normal(4, 5, 2) + jnp.arange(4.0)[:, None, None] * 3.0
    variables = model.init(KEY, batches[0])
    state = jit(lambda v, b: recompute_batch_stats(model, v, b))(variables, batches)
    everything = np.asarray(batches).reshape(-1, 2)
    np.testing.assert_allclose(state["batch_stats"]["bn0"]["mean"], everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["bn0"]["var"], everything.var(0), rtol=1e-5)
    assert np.all(everything.var(0) > 2 * np.asarray(batches).var(1).mean(0))
    # second layer: its inputs in training mode, i.e. each batch normalised by its own statistics
    b = np.asarray(batches)
    normalised = (b - b.mean(1, keepdims=True)) / np.sqrt(b.var(1, keepdims=True) + 1e-5)
    kernel = np.asarray(variables["params"]["dense"]["kernel"])
    dense_in = normalised.reshape(-1, 2) @ kernel + np.asarray(variables["params"]["dense"]["bias"])
    np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], dense_in.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["bn1"]["var"], dense_in.var(0), rtol=1e-4)
    assert set(state) == {"batch_stats"} and "params" not in state


def test_recompute_batch_stats_vmaps_over_members_and_keeps_structure():
    model = get_model("resnet1d", widths=(4, 6, 6), kernel_sizes=(3, 3), num_classes=3)
    batches = normal(3, 4, 12) + 2.0
    members = jit(jax.vmap(lambda k: model.init(k, batches[0])))(jax.random.split(KEY, 2))

    def recompute(v):
        return recompute_batch_stats(model, v, batches, dropout_rate=0.0)

    stacked = jit(jax.vmap(recompute))(members)
    one = jit(recompute)(jax.tree_util.tree_map(lambda a: a[1], members))
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure({"batch_stats": members["batch_stats"]})
    for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(one)):
        np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-5)
    first = stacked["batch_stats"]["block_0"]["norm_0"]["bn"]
    assert not np.allclose(first["mean"][0], first["mean"][1])  # members differ
    assert recompute_batch_stats(get_model("mlp"), {"params": {}}, batches) == {}  # no batch norm: nothing to do
    with pytest.raises(ValueError, match="'x_batches' has shape \\(12,\\)"):
        recompute_batch_stats(model, members, batches[0, 0])


def test_total_running_variance_is_the_mixture_variance():
    x1, x2 = normal(6, 2) + 4.0, normal(6, 2) - 4.0
    for running_var in ("total", "batch"):
        bn = BatchNorm(momentum=0.5, running_var=running_var)
        variables = bn.init(KEY, x1, use_running_average=False)
        _, s1 = bn.apply(variables, x1, use_running_average=False, mutable=["batch_stats"])
        _, s2 = bn.apply({**variables, **s1}, x2, use_running_average=False, mutable=["batch_stats"])
        m1, v1 = 0.5 * 0.0 + 0.5 * np.asarray(x1).mean(0), 0.5 * 1.0 + 0.5 * np.asarray(x1).var(0)
        if running_var == "total":
            v1 = v1 + 0.25 * np.square(0.0 - np.asarray(x1).mean(0))
            expected = 0.5 * v1 + 0.5 * np.asarray(x2).var(0) + 0.25 * np.square(m1 - np.asarray(x2).mean(0))
        else:
            expected = 0.5 * v1 + 0.5 * np.asarray(x2).var(0)
        np.testing.assert_allclose(s2["batch_stats"]["var"], expected, rtol=1e-5)
    flax_bn = nn.BatchNorm(momentum=0.5)
    same = BatchNorm(momentum=0.5, running_var="batch")
    v = flax_bn.init(KEY, x1, use_running_average=False)
    a = flax_bn.apply(v, x1, use_running_average=False, mutable=["batch_stats"])
    b = same.apply(v, x1, use_running_average=False, mutable=["batch_stats"])
    for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, w, rtol=1e-6)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("resnet1d", {"widths": (4, 6), "kernel_sizes": (3, 3)}, (8, 12)),
    ("fcn1d", {"widths": (4, 6), "kernel_sizes": (3, 3)}, (8, 12)),
    ("resnet", {"stage_sizes": (1, 1), "widths": (4, 8), "stem_features": 4}, (4, 8, 8, 3)),
    ("densenet", {"growth_rate": 4, "block_sizes": (1, 1)}, (4, 8, 8, 3)),
    ("mobilenet", {"blocks": ((8, 1), (8, 2)), "stem_features": 8}, (4, 8, 8, 3)),
])
def test_norm_momentum_and_epsilon_reach_every_batch_norm(name, kwargs, shape):
    x = normal(*shape) + 1.0

    def stats(momentum, epsilon, kind="batch"):
        model = get_model(name, **kwargs, norm=kind, norm_momentum=momentum, norm_epsilon=epsilon)
        variables = model.init(KEY, x)
        out, state = model.apply(variables, x, train=True, mutable=["batch_stats"], dropout_rate=0.0)
        return variables, state, out

    variables, slow, _ = stats(0.999, 1e-5)
    _, fast, out_small_eps = stats(0.5, 1e-5)
    _, _, out_big_eps = stats(0.5, 10.0)
    means = [k for k in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]) if k[0][-1].key == "mean"]
    assert means
    for (path, _), slow_leaf, fast_leaf in zip(
            jax.tree_util.tree_leaves_with_path(variables["batch_stats"]),
            jax.tree_util.tree_leaves(slow["batch_stats"]), jax.tree_util.tree_leaves(fast["batch_stats"])):
        if path[-1].key != "mean":
            assert not np.allclose(slow_leaf, fast_leaf), path
            continue
        # one update from 0: the mean moves (1 - momentum) * batch mean, 500 times further at 0.5 than at 0.999
        np.testing.assert_allclose(np.asarray(fast_leaf) / 500, slow_leaf, rtol=1e-3, atol=1e-7, err_msg=str(path))
    assert not np.allclose(out_small_eps, out_big_eps)
    _, _, group_small = stats(0.9, 1e-5, "group")
    _, _, group_big = stats(0.9, 10.0, "group")
    assert not np.allclose(group_small, group_big)  # epsilon reaches group norms too


@pytest.mark.parametrize("kwargs, match", [
    ({"norm_momentum": 1.0}, "'norm_momentum' has value 1.0; allowed: a finite number >= 0.0 and < 1.0"),
    ({"norm_epsilon": 0}, "'norm_epsilon' has value 0; allowed: a finite number > 0.0"),
    ({"norm_running_var": "ema"}, "'norm_running_var' has value 'ema'; allowed: one of 'total', 'batch'"),
    ({"shortcut": "projection"}, "'shortcut' has value 'projection'; allowed: one of 'identity', 'norm', 'conv'"),
    ({"zero_init_residual": 1}, None),
])
def test_norm_and_residual_fields_are_checked(kwargs, match):
    if match is None:  # 1 == True: accepted as a bool
        get_model("resnet1d", **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        get_model("resnet1d", **kwargs)


def test_shortcut_options_of_residual_nets():
    x = normal(2, 16, 3)

    def names(**kwargs):
        model = get_model("resnet1d", widths=(4, 4), kernel_sizes=(3, 3), **kwargs)
        variables = jax.eval_shape(model.init, KEY, x)
        return {block: sorted(v) for block, v in variables["params"].items() if block.startswith("block")}

    # Wang et al.: a conv + BN projection where the width changes (3 -> 4), a BN where it does not (4 -> 4)
    assert names() == {"block_0": ["conv_0", "conv_1", "norm_0", "norm_1", "proj", "proj_norm"],
                       "block_1": ["conv_0", "conv_1", "norm_0", "norm_1", "proj_norm"]}
    assert names(shortcut="identity")["block_1"] == ["conv_0", "conv_1", "norm_0", "norm_1"]
    assert names(shortcut="conv")["block_1"] == ["conv_0", "conv_1", "norm_0", "norm_1", "proj", "proj_norm"]
    assert names(shortcut="norm", norm="none")["block_1"] == ["conv_0", "conv_1"]
    image = get_model("resnet", stage_sizes=(2,), widths=(4,), stem_features=4)  # image default: identity
    params = jax.eval_shape(image.init, KEY, normal(1, 8, 8, 3))["params"]
    assert "proj" not in params["stage0_block1"] and "proj_norm" not in params["stage0_block1"]
    assert count_params(jax.eval_shape(get_model("resnet", stage_sizes=(2,), widths=(4,), stem_features=4,
                                                 shortcut="norm").init, KEY, normal(1, 8, 8, 3))["params"]) > \
        count_params(params)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("resnet1d", {"widths": (4, 4), "kernel_sizes": (3, 3), "shortcut": "identity"}, (2, 12)),
    ("resnet", {"stage_sizes": (2,), "widths": (4,), "stem_features": 4, "block": "bottleneck"}, (2, 8, 8, 3)),
])
def test_zero_init_residual_makes_blocks_start_as_their_shortcut(name, kwargs, shape):
    x = normal(*shape)
    for norm in ("batch", "none"):
        zero = get_model(name, **kwargs, norm=norm)
        plain = get_model(name, **kwargs, norm=norm, zero_init_residual=False)
        v_zero, v_plain = zero.init(KEY, x), plain.init(KEY, x)
        last = {"resnet1d": ("block_1", "norm_1" if norm == "batch" else "conv_1"),
                "resnet": ("stage0_block1", "norm_2" if norm == "batch" else "conv_2")}[name]
        leaf = v_zero["params"][last[0]][last[1]]
        weight = leaf["bn"]["scale"] if norm == "batch" else leaf["kernel"]
        plain_leaf = v_plain["params"][last[0]][last[1]]
        plain_weight = plain_leaf["bn"]["scale"] if norm == "batch" else plain_leaf["kernel"]
        assert np.all(np.asarray(weight) == 0) and np.any(np.asarray(plain_weight) != 0)


def shifted_templates(n, seed, length=24, classes=4):
    """Four random-walk templates, circularly shifted, scaled, offset per example, plus noise."""
    rng = np.random.default_rng(seed)
    templates = np.cumsum(np.random.default_rng(123).normal(size=(classes, length)), axis=1)
    templates = (templates - templates.mean(1, keepdims=True)) / templates.std(1, keepdims=True)
    y = rng.integers(0, classes, n)
    x = np.stack([np.roll(templates[c], s) for c, s in zip(y, rng.integers(-4, 5, n))])
    x = x * rng.uniform(0.5, 2.0, (n, 1)) + rng.normal(0, 1.0, (n, 1)) + rng.normal(0, 0.5, (n, length))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def running_vs_recomputed_accuracy(momentum, members=4, steps=150, batch=8, lr=2e-2, cosine=False, **model_kwargs):
    """Train `members` seeds of a small resnet1d at batch 8 (vmapped, one program); test accuracy of each
    with its running averages and with precise-BN statistics over one pass of the training set."""
    train = member_trainer(momentum, members, steps, batch, lr, tuple(sorted(model_kwargs.items())))
    running, precise = train(jnp.asarray(cosine))
    return np.asarray(running), np.asarray(precise)


@functools.lru_cache
def member_trainer(momentum, members, steps, batch, lr, model_kwargs):
    """The jitted program of `running_vs_recomputed_accuracy`: `cosine` (a traced bool: a cosine decay of
    the learning rate to 0, else a constant one) is an argument, so both schedules share one program."""
    import optax

    x_train, y_train = shifted_templates(400, 1)
    x_test, y_test = shifted_templates(2000, 2)
    model = get_model("resnet1d", widths=(8, 8), kernel_sizes=(5, 3), num_classes=4, **dict(model_kwargs), **(
        {} if momentum is None else {"norm_momentum": momentum}))
    decay = optax.cosine_decay_schedule(lr, steps)
    rng = np.random.default_rng(0)
    order = jnp.asarray(np.stack([np.concatenate([rng.permutation(400) for _ in range(steps * batch // 400 + 1)])
                                  [:steps * batch].reshape(steps, batch) for _ in range(members)]))
    passes = x_train.reshape(-1, batch, x_train.shape[1])

    def member(key, order, cosine):
        tx = optax.adam(lambda count: jnp.where(cosine, decay(count), lr))
        variables = model.init(key, x_train[:batch])
        params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

        def step(carry, index):
            params, state, opt = carry

            def loss(p):
                out, new = model.apply({"params": p, **state}, x_train[index], train=True, mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(out, y_train[index]).mean(), new

            (_, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), state, opt), None

        (params, state, _), _ = jax.lax.scan(step, (params, state, tx.init(params)), order)
        precise = recompute_batch_stats(model, {"params": params, **state}, passes)

        def accuracy(s):
            return (model.apply({"params": params, **s}, x_test).argmax(-1) == y_test).mean()

        return accuracy(state), accuracy(precise)

    run = jax.jit(jax.vmap(member, in_axes=(0, 0, None)))
    keys = jax.random.split(KEY, members)
    return lambda cosine: run(keys, order, cosine)


@functools.lru_cache
def small_batch_run(momentum, cosine):
    """Running-average and recomputed-statistics test accuracies of 4 members, batch 8, lr 1e-2, 300 steps."""
    return running_vs_recomputed_accuracy(momentum, steps=300, lr=1e-2, cosine=cosine)


@pytest.mark.slow
def test_small_batch_running_statistics_within_two_points_of_recomputed_ones():
    """Issue 17: batch 8, learning rate decayed to 0: evaluating with the default running averages is
    within two points of evaluating the same weights with exact (recomputed) statistics. Over 16 members
    the mean error is 1.2 points (1.5 with the suite's compile flags, tests/xla_flags.py); flax's default
    momentum 0.99 is 6 points off (4 points over these 4 members)."""
    running, precise = small_batch_run(None, True)
    assert precise.mean() > 0.6  # the members learned something
    assert np.abs(running - precise).mean() <= 0.02, (running, precise)


@pytest.mark.slow
def test_small_batch_constant_learning_rate_default_momentum_is_far_closer_than_flaxs():
    """At a constant learning rate (1e-2) the running averages lag behind the weights: flax's default
    momentum 0.99 is 14-16 points off the recomputed statistics, the default (0.7) a quarter of that or
    less, and no worse than the old default 0.9 (5.2 against 1.9 points on one host, 2.8 against 2.5 on
    an AVX-512 host: that gap depends on float rounding; docs/models_data.md). Only recomputing the
    statistics (precise BN in evaluation) removes the error."""
    running, precise = small_batch_run(None, False)
    errors = {}
    for momentum in (0.9, 0.99):
        other_running, other_precise = small_batch_run(momentum, False)
        np.testing.assert_allclose(other_precise, precise)  # momentum never changes training, only the averages
        errors[momentum] = np.abs(other_running - other_precise).mean()
    error = np.abs(running - precise).mean()
    assert errors[0.99] > 0.08 and error <= 0.25 * errors[0.99], (error, errors)
    assert error <= errors[0.9] + 0.01, (error, errors)
