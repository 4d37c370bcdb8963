"""Behavioural checks of the extended model zoo: shapes, published parameter counts, activations and
initializers by name, batch-norm state, vmap over members, learning, VAE/GAN objectives, causal
masking, graph permutation symmetry, capsule lengths, FLOP counts and config errors."""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vhjax.models import MODELS, count_params, flops_per_example, get_model, output_shape
from vhjax.models.activations import ACTIVATION_NAMES, get_activation
from vhjax.models.capsule import margin_loss, squash
from vhjax.models.generative import (elbo, gan_discriminator_loss, gan_generator_loss, gradient_penalty,
                                     wasserstein_critic_loss, wasserstein_generator_loss)
from vhjax.models.gnn import normalized_adjacency
from vhjax.models.initializers import bilinear_kernel, get_initializer
from vhjax.models.mobilenet import DepthwiseConv
from vhjax.models.seq2seq import greedy_decode
from vhjax.models.transformer import sinusoidal_positions

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
# every numeric check is one compiled program; XLA's cheapest CPU optimisation level keeps compiles short
jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
NEW_MODELS = {"resnet", "resnet20", "resnet18", "resnet50", "fcn1d", "resnet1d", "densenet", "densenet121",
              "mobilenet", "mobilenet_v1", "simple_rnn", "transformer", "rnn_seq2seq", "transformer_seq2seq",
              "autoencoder", "conv_autoencoder", "vae", "gan_generator", "gan_discriminator", "gcn", "mpnn",
              "capsnet", "cnn_rnn", "cnn_transformer", "cnn_self_attention", "parallel", "cascade"}


def abstract_params(model, *shapes):
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.eval_shape(model.init, KEY, *specs)["params"]


def tokens(shape, vocab=20):
    return jnp.asarray(RNG.integers(1, vocab, shape), jnp.int32)


def normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


# --- registry, shapes, parameter counts -----------------------------------------------------------

def test_registry_has_every_new_model():
    assert NEW_MODELS <= set(MODELS.names())


SMALL_CNN = {"conv_features": (4, 8)}


@pytest.mark.parametrize("name, kwargs, input_shape, expected", [
    ("resnet20", {"num_classes": 7}, (2, 32, 32, 3), (2, 7)),
    ("resnet", {"stage_sizes": (1, 1), "widths": (4, 8), "block": "bottleneck", "stem_features": 4,
                "norm": "group"}, (2, 8, 8, 3), (2, 10)),
    ("resnet18", {"num_classes": 5}, (1, 64, 64, 3), (1, 5)),
    ("fcn1d", {"widths": (4, 8, 4)}, (2, 40), (2, 10)),
    ("resnet1d", {"widths": (4, 8), "norm": "none"}, (2, 40, 3), (2, 10)),
    ("densenet", {"block_sizes": (2, 2), "growth_rate": 4, "bottleneck": False}, (2, 16, 16, 3), (2, 10)),
    ("mobilenet", {"blocks": ((8, 1), (16, 2)), "width_multiplier": 0.5}, (2, 16, 16, 3), (2, 10)),
    ("simple_rnn", {"hidden_size": 4, "bidirectional": True, "readout": "last"}, (2, 12), (2, 10)),
    ("transformer", {"width": 16, "num_heads": 2, "num_classes": 3}, (2, 12), (2, 3)),
    ("transformer", {"width": 16, "num_heads": 4, "pooling": "cls", "activation": "relu"}, (2, 12, 3), (2, 10)),
    ("autoencoder", {"data_shape": (8, 5), "latent_dim": 3}, (2, 8, 5), (2, 8, 5)),
    ("conv_autoencoder", {"data_shape": (16, 12, 3), "features": (4, 8)}, (2, 16, 12, 3), (2, 16, 12, 3)),
    ("gan_generator", {"data_shape": (16, 16, 3), "latent_dim": 8, "features": (8, 4)}, (2, 8), (2, 16, 16, 3)),
    ("gan_generator", {"data_shape": (40,), "latent_dim": 8, "kind": "mlp"}, (2, 8), (2, 40)),
    ("gan_discriminator", {"data_shape": (16, 16, 3), "features": (4, 8)}, (2, 16, 16, 3), (2, 1)),
    ("capsnet", {"conv_features": 8, "conv_kernel": 3, "primary_capsules": 2, "primary_dim": 4,
                 "primary_kernel": 3, "class_dim": 4, "num_classes": 5}, (2, 12, 12, 1), (2, 5)),
    ("cnn_rnn", SMALL_CNN, (2, 20), (2, 10)),
    ("cnn_rnn", {**SMALL_CNN, "rnn": "gru", "bidirectional": True}, (2, 8, 8, 3), (2, 10)),
    ("cnn_rnn", {**SMALL_CNN, "rnn": "simple", "readout": "mean"}, (2, 5, 8, 8, 1), (2, 10)),
    ("cnn_transformer", {**SMALL_CNN, "width": 8, "num_heads": 2}, (2, 8, 8, 3), (2, 10)),
    ("cnn_transformer", {**SMALL_CNN, "width": 8, "num_heads": 2}, (2, 20, 2), (2, 10)),
    ("cnn_self_attention", SMALL_CNN, (2, 8, 8, 3), (2, 10)),
    ("cnn_self_attention", SMALL_CNN, (2, 20), (2, 10)),
    ("parallel", {"branches": [("cnn1d", {"num_classes": 6}), {"model": "gru", "hidden_size": 3,
                                                                 "num_classes": 4}], "num_classes": 3},
     (2, 40), (2, 3)),
    ("cascade", {"stages": [("cnn1d", {"num_classes": 12}), ("mlp", {"widths": (8,), "num_classes": 4})]},
     (2, 40), (2, 4)),
])
def test_output_shapes_alone_and_vmapped_over_members(name, kwargs, input_shape, expected):
    model = get_model(name, **kwargs)
    assert output_shape(model, input_shape) == expected
    # three members: init vmapped over keys, apply over their parameters (abstractly, nothing runs)
    keys = jax.ShapeDtypeStruct((3,), KEY.dtype)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    members = jax.eval_shape(jax.vmap(model.init, in_axes=(0, None)), keys, x)
    out = jax.eval_shape(jax.vmap(lambda v, x: model.apply(v, x), in_axes=(0, None)), members, x)
    assert out.shape == (3, *expected)


def test_multi_input_models_output_shapes():
    src, tgt = jax.ShapeDtypeStruct((2, 7), jnp.int32), jax.ShapeDtypeStruct((2, 5), jnp.int32)
    for name in ("rnn_seq2seq", "transformer_seq2seq"):
        model = get_model(name, src_vocab=11, tgt_vocab=13)
        variables = jax.eval_shape(model.init, KEY, src, tgt)
        assert jax.eval_shape(model.apply, variables, src, tgt).shape == (2, 5, 13)
    x, adj = jax.ShapeDtypeStruct((2, 6, 3), jnp.float32), jax.ShapeDtypeStruct((2, 6, 6), jnp.float32)
    for name in ("gcn", "mpnn"):
        for readout, expected in (("mean", (2, 4)), ("node", (2, 6, 4))):
            model = get_model(name, widths=(5,), num_classes=4, readout=readout)
            variables = jax.eval_shape(model.init, KEY, x, adj)
            assert jax.eval_shape(model.apply, variables, x, adj).shape == expected
    vae = get_model("vae", data_shape=(10,), latent_dim=3)
    data = jax.ShapeDtypeStruct((4, 10), jnp.float32)
    recon, mean, logvar = jax.eval_shape(vae.apply, jax.eval_shape(vae.init, KEY, data), data)
    assert (recon.shape, mean.shape, logvar.shape) == ((4, 10), (4, 3), (4, 3))


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet50", 25_557_032), ("densenet121", 7_978_856), ("mobilenet_v1", 4_231_976)])
def test_imagenet_layouts_match_published_parameter_counts(name, expected):
    # torchvision / Keras counts (1000 classes; batch-norm scale and offset included, running stats not)
    assert count_params(abstract_params(get_model(name), (1, 64, 64, 3))) == expected


def test_resnet20_has_the_papers_0_27m_parameters():
    assert abs(count_params(abstract_params(get_model("resnet20"), (1, 32, 32, 3))) - 0.27e6) < 0.005e6


# --- activations and initializers -------------------------------------------------------------------

def test_activations_by_name_compute_known_values():
    x = jnp.array([-2.0, 0.0, 1.0])
    expected = {"sigmoid": 1 / (1 + np.exp(-np.array([-2.0, 0.0, 1.0]))), "tanh": np.tanh([-2.0, 0.0, 1.0]),
                "relu": [0.0, 0.0, 1.0], "leaky_relu": [-0.02, 0.0, 1.0],
                "swish": np.array([-2.0, 0.0, 1.0]) / (1 + np.exp([2.0, 0.0, -1.0]))}
    for name, values in expected.items():
        np.testing.assert_allclose(get_activation(name)(x), values, rtol=1e-6, atol=1e-7)
    assert float(get_activation("gelu")(jnp.float32(0.0))) == 0.0
    assert float(get_activation("gelu")(jnp.float32(3.0))) == pytest.approx(3.0, abs=0.01)
    np.testing.assert_allclose(get_activation("softmax")(x).sum(), 1.0, rtol=1e-6)
    assert set(ACTIVATION_NAMES) == {"sigmoid", "tanh", "relu", "leaky_relu", "prelu", "swish", "gelu", "softmax"}


def test_prelu_learns_its_negative_slope():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return get_activation("prelu")(x)

    variables = Net().init(KEY, jnp.zeros(2))
    slope = variables["params"]["PReLU_0"]["negative_slope"]
    assert float(slope) == pytest.approx(0.25)
    np.testing.assert_allclose(Net().apply(variables, jnp.array([-2.0, 3.0])), [-0.5, 3.0])
    grad = jax.grad(lambda v: Net().apply(v, jnp.array([-2.0, 3.0])).sum())(variables)
    assert float(grad["params"]["PReLU_0"]["negative_slope"]) == pytest.approx(-2.0)


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match=r"'activation' has value 'mish'.*gelu.*prelu"):
        get_activation("mish")
    with pytest.raises(ValueError, match=r"transformer field 'activation' has value 'mish'"):
        get_model("transformer", activation="mish")


def test_initializers_have_the_stated_statistics():
    shape = (3, 3, 64, 128)
    fan_in, fan_out = 9 * 64, 9 * 128
    specs = {"constant": {"value": 0.3}, "gaussian": {"mean": 1.0, "stddev": 0.5},
             "uniform": {"minval": -0.2, "maxval": 0.1}, "xavier_uniform": {}, "glorot_normal": {},
             "he_uniform": {}, "kaiming_normal": {}, "he_normal": {"gain": 2.0}}
    draws = jit(lambda key: {name: get_initializer(name, **kw)(key, shape) for name, kw in specs.items()}
                | {"orthogonal": get_initializer("orthogonal", scale=2.0)(key, (64, 32))})(KEY)
    draws = {name: np.asarray(value) for name, value in draws.items()}
    assert np.all(draws["constant"] == np.float32(0.3))
    assert draws["gaussian"].mean() == pytest.approx(1.0, abs=0.01)
    assert draws["gaussian"].std() == pytest.approx(0.5, rel=0.02)
    uniform = draws["uniform"]
    assert uniform.min() >= -0.2 and uniform.max() < 0.1 and uniform.mean() == pytest.approx(-0.05, abs=0.005)
    for name, variance in (("xavier_uniform", 2 / (fan_in + fan_out)), ("glorot_normal", 2 / (fan_in + fan_out)),
                           ("he_uniform", 2 / fan_in), ("kaiming_normal", 2 / fan_in), ("he_normal", 8 / fan_in)):
        assert draws[name].var() == pytest.approx(variance, rel=0.03), name
    q = draws["orthogonal"]
    np.testing.assert_allclose(q.T @ q, 4.0 * np.eye(32), atol=1e-4)


def test_bilinear_kernel_upsamples_by_linear_interpolation():
    kernel = bilinear_kernel((4, 4, 2, 2))
    np.testing.assert_allclose(kernel[:, 0, 0, 0], [0.0625, 0.1875, 0.1875, 0.0625])  # 0.25 * [.25 .75 .75 .25]
    assert np.all(kernel[..., 0, 1] == 0)
    up = nn.ConvTranspose(2, (4, 4), (2, 2), padding="SAME", use_bias=False, kernel_init=get_initializer("bilinear"))
    ramp = jnp.broadcast_to(jnp.arange(6.0)[None, :, None, None], (1, 6, 6, 2))  # varies along rows
    out, _ = jit(up.init_with_output)(KEY, ramp)
    interior = np.asarray(out[0, 2:-2, 2:-2, 0])
    assert np.allclose(np.diff(interior, axis=0), 0.5) and np.allclose(np.diff(interior, axis=1), 0.0)


def test_initializer_errors_name_the_field():
    with pytest.raises(ValueError, match=r"unknown initializer 'lecun'.*xavier_uniform"):
        get_initializer("lecun")
    with pytest.raises(ValueError, match=r"'normal' got unknown field 'std'.*mean, stddev"):
        get_initializer("normal", std=0.1)
    with pytest.raises(ValueError, match=r"'uniform' field 'maxval' has value -1"):
        get_initializer("uniform", minval=0.0, maxval=-1)


# --- convolution implementations, batch norm, vmap ----------------------------------------------------

def test_depthwise_conv_equals_grouped_conv_in_both_implementations():
    x = normal(2, 9, 7, 3)

    def outputs(x):
        results = []
        for strides, multiplier in ((1, 1), (2, 2)):
            variables = DepthwiseConv((3, 3), strides, multiplier).init(KEY, x)
            grouped = nn.Conv(3 * multiplier, (3, 3), strides, ((1, 1), (1, 1)), feature_group_count=3)
            results.append([grouped.apply(variables, x)] + [
                DepthwiseConv((3, 3), strides, multiplier, impl=impl).apply(variables, x) for impl in ("xla", "patch")])
        return results

    for reference, *others in jit(outputs)(x):
        for out in others:
            np.testing.assert_allclose(out, reference, atol=1e-5)


def test_patch_and_xla_convolutions_share_parameters_and_outputs():
    x = normal(2, 8, 8, 3)
    xla = get_model("resnet", stage_sizes=(1, 1), widths=(4, 8), stem_features=4, norm="none", conv_impl="xla")
    patch = get_model("resnet", stage_sizes=(1, 1), widths=(4, 8), stem_features=4, norm="none", conv_impl="patch")

    def both(x):
        variables = xla.init(KEY, x)
        return patch.apply(variables, x), xla.apply(variables, x)

    out_patch, out_xla = jit(both)(x)
    np.testing.assert_allclose(out_patch, out_xla, atol=1e-4)


AUTO_CONV_MODELS = [
    ("cnn1d", {}, (2, 40)),
    ("cnn2d", {"conv_layers": ((4, 3),), "head_widths": ()}, (2, 6, 6, 1)),
    ("fcn1d", {"widths": (4, 4), "kernel_sizes": (3, 3)}, (2, 12)),
    ("resnet1d", {"widths": (4, 6), "kernel_sizes": (3, 3)}, (2, 12)),
    ("resnet", {"stage_sizes": (1, 1), "widths": (4, 8), "stem_features": 4}, (2, 8, 8, 3)),
    ("densenet", {"growth_rate": 4, "block_sizes": (1, 1)}, (2, 8, 8, 3)),
    ("mobilenet", {"blocks": ((8, 1), (8, 2)), "stem_features": 8}, (2, 8, 8, 3)),
    ("cnn_rnn", {"conv_features": (4,), "hidden_size": 4}, (2, 12)),
    ("cnn_transformer", {"conv_features": (4,), "width": 8, "num_heads": 2, "num_layers": 1}, (2, 12)),
    ("cnn_self_attention", {"conv_features": (4,)}, (2, 6, 6, 1)),
    ("nb201_cell_net", {"channels": 4}, (2, 12)),
    ("nb201_cell_net", {"channels": 4}, (2, 6, 6, 1)),
    ("capsnet", {"conv_features": 8, "conv_kernel": 3, "primary_capsules": 2, "primary_dim": 4,
                 "primary_kernel": 3, "class_dim": 4}, (2, 9, 9, 1)),
    ("conv_autoencoder", {"data_shape": (8, 8, 1), "features": (4, 6)}, (2, 8, 8, 1)),
    ("gan_generator", {"data_shape": (8, 8, 1), "latent_dim": 4, "features": (6, 4)}, (2, 4)),
    ("gan_discriminator", {"data_shape": (8, 8, 1), "features": (4, 6)}, (2, 8, 8, 1)),
]


@pytest.mark.parametrize("name, kwargs, shape", AUTO_CONV_MODELS, ids=[m[0] for m in AUTO_CONV_MODELS])
def test_auto_conv_impl_is_patch_on_cpu_xla_elsewhere_and_matches_xla(name, kwargs, shape, monkeypatch):
    from vhjax.models.patch_conv import resolve_conv_impl

    model = get_model(name, **kwargs)
    assert model.conv_impl == "auto"
    xla = get_model(name, **kwargs, conv_impl="xla")
    x = normal(*shape)
    variables = jax.eval_shape(xla.init, KEY, x)
    variables = jax.tree_util.tree_map(lambda s: normal(*s.shape) * 0.3, variables)

    def has_native_conv(m):
        return "conv_general_dilated" in str(jax.make_jaxpr(lambda v, x: m.apply(v, x))(variables, x))

    assert jax.default_backend() == "cpu" and resolve_conv_impl("auto") == "patch"
    assert not has_native_conv(model) and has_native_conv(xla)
    np.testing.assert_allclose(jit(model.apply)(variables, x), jit(xla.apply)(variables, x), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_conv_impl("auto") == "xla" and has_native_conv(model)


@pytest.mark.parametrize("kernel, stride, padding, shape", [
    (3, 2, "SAME", (2, 4, 5, 3)), (4, 2, "SAME", (2, 4, 4, 2)), (3, 2, "VALID", (2, 4, 5, 3)),
    (2, 3, "SAME", (2, 3, 3, 1)), (5, 1, "SAME", (2, 7, 2)), (3, 3, "VALID", (1, 4, 2)),
])
def test_patch_conv_transpose_equals_flax_conv_transpose(kernel, stride, padding, shape):
    from vhjax.models.patch_conv import PatchConvTranspose

    dims = len(shape) - 2
    args = (3, (kernel,) * dims, (stride,) * dims, padding)
    x = normal(*shape)
    variables = nn.ConvTranspose(*args).init(KEY, x)
    expected = nn.ConvTranspose(*args).apply(variables, x)
    np.testing.assert_allclose(PatchConvTranspose(*args).apply(variables, x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="padding has value 'CIRCULAR'; allowed: 'SAME', 'VALID'"):
        PatchConvTranspose(3, (kernel,) * dims, (stride,) * dims, "CIRCULAR").init(KEY, x)


@pytest.mark.parametrize("name", ["nb201_cell_net", "capsnet", "conv_autoencoder", "gan_generator",
                                  "gan_discriminator"])
def test_conv_impl_field_is_checked(name):
    with pytest.raises(ValueError, match="'conv_impl' has value 'fast'; allowed: one of 'auto', 'patch', 'xla'"):
        get_model(name, conv_impl="fast")


def test_batch_norm_state_updates_in_training_only():
    model = get_model("resnet1d", widths=(4,), kernel_sizes=(3, 3), num_classes=2)
    x = 3.0 + normal(8, 12)

    def run(x):
        variables = model.init(KEY, x)
        train_out, updated = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": KEY})
        return variables, updated, train_out, model.apply(variables, x)  # eval: running averages, no mutation

    variables, updated, train_out, eval_out = jit(run)(x)
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updated["batch_stats"])
    assert before and any(not np.allclose(a, b) for a, b in zip(before, after))
    assert not np.allclose(train_out, eval_out)  # batch statistics vs running averages


@pytest.mark.parametrize("name, kwargs, shape", [
    ("resnet1d", {"widths": (4,), "kernel_sizes": (3, 3), "num_classes": 3}, (4, 12)),
    ("transformer", {"width": 8, "num_heads": 2, "num_layers": 1, "num_classes": 3}, (4, 12)),
])
def test_models_vmap_over_members(name, kwargs, shape):
    model = get_model(name, **kwargs)
    x = normal(*shape)

    def run(x):
        members = jax.vmap(lambda k: model.init(k, x))(jax.random.split(KEY, 3))
        out = jax.vmap(lambda v: model.apply(v, x))(members)
        single = model.apply(jax.tree_util.tree_map(lambda a: a[1], members), x)
        _, state = jax.vmap(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                  rngs={"dropout": KEY}))(members)
        return out, single, state

    out, single, state = jit(run)(x)
    assert out.shape == (3, shape[0], 3)
    assert not np.allclose(out[0], out[1])  # members differ
    np.testing.assert_allclose(out[1], single, atol=1e-5)
    leaves = jax.tree_util.tree_leaves(state)  # training under vmap: per-member batch statistics
    assert bool(leaves) == (name == "resnet1d") and all(leaf.shape[0] == 3 for leaf in leaves)


def test_dropout_rate_zero_in_training_is_the_identity():
    model = get_model("transformer", width=8, num_heads=2, num_layers=1, dropout_rate=0.5)

    def run(x, rate):
        variables = model.init(KEY, x)
        rngs = {"dropout": jax.random.key(1)}
        return (model.apply(variables, x), model.apply(variables, x, train=True, dropout_rate=rate, rngs=rngs),
                model.apply(variables, x, train=True, dropout_rate=rate + 0.5, rngs=rngs))

    plain, rate_zero, rate_half = jit(run)(normal(3, 10), jnp.float32(0.0))
    np.testing.assert_allclose(rate_zero, plain, atol=1e-6)
    assert not np.allclose(rate_half, plain)


# --- learning ---------------------------------------------------------------------------------------

def _separable_task(n):
    """Label 1 when a sequence's mean is positive: linearly separable, balanced."""
    x = normal(n, 16)
    return x, (x.mean(1) > 0).astype(jnp.int32)


def train_and_evaluate(model, x, y, x_test, y_test, steps=50, learning_rate=1e-2):
    """Full-batch Adam from init to test accuracy, all in one compiled program."""
    optimizer = optax.adam(learning_rate)

    def run(x, y, x_test, y_test):
        variables = model.init(KEY, x)
        params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def step(_, carry):
            params, state, opt_state = carry

            def loss(p):
                logits, new_state = model.apply({"params": p, **state}, x, train=True, mutable=list(state),
                                                rngs={"dropout": KEY})
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

            (_, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return optax.apply_updates(params, updates), dict(new_state), opt_state

        params, state, _ = jax.lax.fori_loop(0, steps, step, (params, state, optimizer.init(params)))
        return (model.apply({"params": params, **state}, x_test).argmax(-1) == y_test).mean()

    return float(jit(run)(x, y, x_test, y_test))


@pytest.mark.parametrize("name, kwargs", [
    ("resnet1d", {"widths": (8,), "kernel_sizes": (3, 3), "num_classes": 2}),
    ("transformer", {"width": 16, "num_heads": 2, "num_layers": 1, "num_classes": 2}),
])
def test_model_learns_a_separable_task(name, kwargs):
    accuracy = train_and_evaluate(get_model(name, **kwargs), *_separable_task(256), *_separable_task(512))
    assert accuracy > 0.8  # chance is 0.5


# --- generative --------------------------------------------------------------------------------------

def test_vae_elbo_is_finite_and_rises_under_adam():
    model = get_model("vae", data_shape=(12,), latent_dim=2, widths=(16,))
    x = jnp.asarray(np.random.default_rng(7).random((32, 12)) > 0.5, jnp.float32)  # not the shared RNG:
    optimizer = optax.adam(1e-2)  # its state would depend on which tests ran before on this worker

    def run(x):
        params = model.init(KEY, x)

        def step(carry, key):
            params, opt_state = carry
            value, grads = jax.value_and_grad(lambda p: -elbo(model, p, x, key).mean())(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), -value

        (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(KEY, 30))
        return history, elbo(model, params, x, KEY)

    history, per_example = jit(run)(x)
    assert bool(jnp.all(jnp.isfinite(history)))
    assert float(history[-5:].mean()) > float(history[:5].mean()) + 0.5
    # log p(x) <= 0 for binary data, and the ELBO bounds it from below
    assert per_example.shape == (32,) and bool(jnp.all(per_example < 0))


def test_vae_samples_only_when_asked():
    model = get_model("vae", data_shape=(6,), latent_dim=2)

    def run(x):
        params = model.init(KEY, x)
        return (model.apply(params, x)[0], model.apply(params, x, sample=False, rngs={"latent": KEY})[0],
                model.apply(params, x, sample=True, rngs={"latent": KEY})[0])

    deterministic, mean_only, sampled = jit(run)(jnp.asarray(RNG.random((4, 6)), jnp.float32))
    np.testing.assert_array_equal(deterministic, mean_only)
    assert not np.allclose(sampled, deterministic)


def test_gradient_penalty_vanishes_for_a_unit_norm_linear_critic():
    real, fake, w = normal(16, 4, 3), normal(16, 4, 3), normal(12)
    w = w / jnp.linalg.norm(w)
    critic = lambda scale: (lambda x: x.reshape(x.shape[0], -1) @ (scale * w))
    unit, tripled = jit(lambda r, f: (gradient_penalty(critic(1.0), r, f, KEY),
                                      gradient_penalty(critic(3.0), r, f, KEY)))(real, fake)
    assert float(unit) < 1e-10
    assert float(tripled) == pytest.approx(4.0, rel=1e-5)  # (|3 w| - 1)^2


def test_gan_losses_have_known_values_and_the_critic_penalty_is_finite():
    zeros = jnp.zeros((5, 1))
    assert float(gan_discriminator_loss(zeros, zeros)) == pytest.approx(2 * math.log(2))
    assert float(gan_generator_loss(zeros)) == pytest.approx(math.log(2))
    real, fake = jnp.array([[3.0], [1.0]]), jnp.array([[0.5], [-0.5]])
    assert float(wasserstein_critic_loss(real, fake)) == pytest.approx(-2.0)
    assert float(wasserstein_generator_loss(fake)) == pytest.approx(0.0)
    generator = get_model("gan_generator", data_shape=(8, 8, 1), latent_dim=4, features=(8, 4))
    critic = get_model("gan_discriminator", data_shape=(8, 8, 1), features=(4,))

    def run(z):
        samples = generator.apply(generator.init(KEY, z), z)
        c_params = critic.init(KEY, samples)
        return samples, gradient_penalty(lambda x: critic.apply(c_params, x), jnp.ones_like(samples), samples, KEY)

    samples, penalty = jit(run)(normal(3, 4))
    assert samples.shape == (3, 8, 8, 1) and float(jnp.abs(samples).max()) < 1.0  # tanh output
    assert math.isfinite(float(penalty)) and float(penalty) > 0


# --- sequence models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["transformer_seq2seq", "rnn_seq2seq"])
def test_decoder_is_causal_padding_is_ignored_and_greedy_decode_matches_teacher_forcing(name):
    sizes = {"width": 16, "num_heads": 2, "num_layers": 1} if name.startswith("transformer") else {"hidden_size": 8}
    model = get_model(name, src_vocab=20, tgt_vocab=20, **sizes)
    src = tokens((2, 6)).at[1, 4:].set(0)  # second source padded
    tgt = tokens((2, 7))
    changed = tgt.at[:, 4:].set((tgt[:, 4:] + 5) % 19 + 1)  # other tokens from position 4 on
    longer = jnp.concatenate([src, jnp.zeros((2, 3), jnp.int32)], axis=1)  # more source padding

    def run(src, tgt, changed, longer):
        variables = model.init(KEY, src, tgt)
        decoded = greedy_decode(model, variables, src, bos_id=1, max_len=5)
        teacher = jnp.concatenate([jnp.ones((2, 1), jnp.int32), decoded[:, :-1]], axis=1)
        return (model.apply(variables, src, tgt), model.apply(variables, src, changed),
                model.apply(variables, longer, tgt), decoded, model.apply(variables, src, teacher).argmax(-1))

    logits, changed_logits, longer_logits, decoded, teacher_argmax = jit(run)(src, tgt, changed, longer)
    np.testing.assert_allclose(changed_logits[:, :4], logits[:, :4], atol=1e-5)  # past unaffected by future
    assert not np.allclose(changed_logits[:, 4:], logits[:, 4:])  # the changed positions do matter
    np.testing.assert_allclose(longer_logits, logits, atol=1e-5)  # padding tokens are invisible
    np.testing.assert_array_equal(teacher_argmax, decoded)


def test_sinusoidal_positions_follow_the_formula():
    table = np.asarray(sinusoidal_positions(5, 6))
    p, i = 3, 2
    assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-6)
    assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-6)


def test_simple_rnn_computes_the_elman_recurrence():
    model = get_model("simple_rnn", hidden_size=3, readout="last", num_classes=2, activation="relu")
    x = normal(2, 4, 2)
    variables, out = jit(lambda x: (v := model.init(KEY, x), model.apply(v, x)))(x)
    p = variables["params"]
    cell = p["rnn_0"]["cell"]
    h = np.zeros((2, 3))
    for t in range(4):
        h = np.maximum(np.asarray(x[:, t]) @ cell["i"]["kernel"] + cell["i"]["bias"] + h @ cell["h"]["kernel"], 0)
    expected = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --- graphs and capsules -------------------------------------------------------------------------------

def _graph(nodes=5, features=3):
    upper = np.triu(RNG.random((nodes, nodes)) > 0.5, 1).astype(np.float32)
    return normal(1, nodes, features), jnp.asarray(upper + upper.T)[None]


@pytest.mark.parametrize("name", ["gcn", "mpnn"])
def test_graph_nets_are_permutation_equivariant_and_ignore_padding(name):
    x, adj = _graph()
    perm = np.array([3, 0, 4, 1, 2])
    node_model = get_model(name, widths=(6, 6), num_classes=4, readout="node")
    graph_model = get_model(name, widths=(6, 6), num_classes=4, readout="mean")
    # two padding nodes with garbage features and edges, masked out
    x_pad = jnp.concatenate([x, 9.0 * jnp.ones((1, 2, 3))], axis=1)
    adj_pad = jnp.pad(adj, ((0, 0), (0, 2), (0, 2)), constant_values=1.0)
    mask = jnp.arange(7)[None] < 5

    def run(x, adj, x_perm, adj_perm, x_pad, adj_pad, mask):
        variables = node_model.init(KEY, x, adj)
        return (node_model.apply(variables, x, adj), node_model.apply(variables, x_perm, adj_perm),
                graph_model.apply(variables, x, adj), graph_model.apply(variables, x_perm, adj_perm),
                graph_model.apply(variables, x_pad, adj_pad, mask))

    nodes, nodes_perm, graph, graph_perm, graph_pad = jit(run)(x, adj, x[:, perm], adj[:, perm][:, :, perm],
                                                               x_pad, adj_pad, mask)
    np.testing.assert_allclose(nodes_perm, nodes[:, perm], atol=1e-5)  # equivariant
    assert not np.allclose(nodes_perm, nodes)  # ... and not trivially constant
    np.testing.assert_allclose(graph_perm, graph, atol=1e-5)  # invariant
    np.testing.assert_allclose(graph_pad, graph, atol=1e-5)


def test_gcn_normalisation_matches_the_formula():
    adj = jnp.array([[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    a_hat = normalized_adjacency(adj, jnp.ones((1, 3), bool))[0]
    degree = np.array([2.0, 3.0, 2.0])  # with self-loops
    expected = (np.asarray(adj[0]) + np.eye(3)) / np.sqrt(np.outer(degree, degree))
    np.testing.assert_allclose(a_hat, expected, rtol=1e-6)


def test_capsule_lengths_lie_in_unit_interval_and_margin_loss_is_hand_computable():
    model = get_model("capsnet", conv_features=8, conv_kernel=3, primary_capsules=2, primary_dim=4,
                      primary_kernel=3, class_dim=4, num_classes=3)
    x = 5.0 * normal(4, 10, 10, 1)
    lengths = jit(lambda x: model.apply(model.init(KEY, x), x))(x)
    assert lengths.shape == (4, 3) and bool(jnp.all((lengths >= 0) & (lengths < 1)))
    s = jnp.array([[3.0, 4.0]])
    np.testing.assert_allclose(jnp.linalg.norm(squash(s)), 25 / 26, rtol=1e-6)
    loss = margin_loss(jnp.array([[0.5, 0.3, 0.05]]), jnp.array([0]))
    assert float(loss[0]) == pytest.approx(0.4 ** 2 + 0.5 * 0.2 ** 2)


# --- cost -----------------------------------------------------------------------------------------------

def test_flops_per_example_matches_a_hand_count_for_dense_layers():
    d, h, k = 40, 16, 7
    assert flops_per_example(get_model("linear", num_classes=k), (d,)) == 2 * d * k + k  # matmul + bias
    assert flops_per_example(get_model("linear", num_classes=k), (d,), batch_size=8) == 2 * d * k + k
    # an MLP adds the hidden layer's matmul, bias and ReLU (one max per unit)
    assert flops_per_example(get_model("mlp", widths=(h,), num_classes=k), (d,)) == 2 * d * h + 2 * h + 2 * h * k + k


# --- config errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, match", [
    ("transformer", {"width": 32, "num_heads": 3}, r"'num_heads' has value 3; allowed: a divisor of 'width' = 32"),
    ("transformer_seq2seq", {"width": 10, "num_heads": 4}, r"'num_heads' has value 4"),
    ("cnn_transformer", {"width": 10, "num_heads": 3}, r"'num_heads' has value 3"),
    ("resnet", {"activation": "mish"},
     r"resnet field 'activation' has value 'mish'; allowed: one of the activations .*gelu"),
    ("resnet", {"norm": "instance"}, r"'norm' has value 'instance'"),
    ("resnet", {"widths": (16, 32)}, r"'widths' has value \(16, 32\); allowed: one width per stage"),
    ("fcn1d", {"kernel_sizes": (8, 5)}, r"'kernel_sizes' has value \(8, 5\)"),
    ("simple_rnn", {"activation": "gelu"}, r"'activation' has value 'gelu'"),
    ("conv_autoencoder", {"data_shape": (10, 10, 1), "features": (4, 4)}, r"'data_shape'.*divisible by 2\^2"),
    ("mpnn", {"aggregation": "median"}, r"'aggregation' has value 'median'"),
    ("parallel", {"branches": ["cnn1d"]}, r"parallel field 'branches\[0\]' has value 'cnn1d'"),
])
def test_bad_configs_raise_naming_field_and_value(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_model(name, **kwargs)


@pytest.mark.parametrize("name, kwargs, shape, match", [
    ("resnet1d", {}, (2, 4), r"resnet1d field 'kernel_sizes\[0\]' has value 8, larger than the input"),
    ("fcn1d", {"kernel_sizes": (3, 3, 9)}, (2, 6, 1), r"'kernel_sizes\[2\]' has value 9"),
    ("resnet20", {}, (2, 2, 2, 3), r"resnet field 'stem_kernel' has value 3"),
    ("capsnet", {}, (2, 8, 8, 1), r"capsnet field 'conv_kernel' has value 9"),
    ("cnn_rnn", {"kernel_size": 5}, (2, 3), r"cnn_rnn field 'kernel_size' has value 5"),
    ("autoencoder", {"data_shape": (40,)}, (2, 30), r"'data_shape' has value \(40,\) but the input has shape"),
])
def test_kernels_larger_than_the_input_and_wrong_shapes_raise(name, kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        output_shape(get_model(name, **kwargs), shape)


def test_parallel_sum_needs_equal_branch_widths():
    model = get_model("parallel", branches=[("mlp", {"num_classes": 4}), ("mlp", {"num_classes": 5})], merge="sum")
    with pytest.raises(ValueError, match=r"'merge' has value 'sum'.*widths \[4, 5\]"):
        output_shape(model, (2, 8))


def test_matmul_flop_count_includes_every_loop_iteration():
    from vhjax.models.cost import flops_per_example

    mlp = get_model("mlp", widths=(32,), num_classes=10)
    assert flops_per_example(mlp, (40,), count="matmul") == 2 * (40 * 32 + 32 * 10)
    gru = get_model("gru", hidden_size=6, num_classes=10)
    short, long = (flops_per_example(gru, (n,), count="matmul") for n in (10, 40))
    assert long == pytest.approx(4 * short, rel=0.05)  # one recurrent step per position
    with pytest.raises(ValueError, match="'count' has value 'hlo'"):
        flops_per_example(mlp, (40,), count="hlo")


@pytest.mark.parametrize("name, kwargs, inputs", [
    ("transformer", {"num_layers": 2}, ((2, 6),)),
    ("cnn_transformer", {"conv_features": (4,), "num_layers": 1}, ((2, 12),)),
    ("transformer_seq2seq", {"src_vocab": 7, "tgt_vocab": 7, "num_layers": 1}, ((2, 5), (2, 4))),
])
def test_layer_norm_epsilon_is_a_field_that_reaches_every_layer_norm(name, kwargs, inputs):
    kwargs = {"width": 8, "num_heads": 2, **kwargs}
    args = [jnp.ones(shape, jnp.int32) if name == "transformer_seq2seq" else normal(*shape) for shape in inputs]
    assert get_model(name, **kwargs).norm_epsilon == 1e-6  # flax's default, unchanged

    def epsilons(epsilon):
        model = get_model(name, **kwargs, norm_epsilon=epsilon)
        seen = []

        def record(next_fun, call_args, call_kwargs, context):
            if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
                seen.append(context.module.epsilon)
            return next_fun(*call_args, **call_kwargs)

        with nn.intercept_methods(record):
            variables = jax.eval_shape(model.init, KEY, *args)
        return seen, model, variables

    seen, model, variables = epsilons(0.25)
    assert len(seen) >= 3 and set(seen) == {0.25}, seen
    variables = jax.tree_util.tree_map(lambda s: 0.3 * normal(*s.shape), variables)
    small = get_model(name, **kwargs, norm_epsilon=1e-6)
    assert not np.allclose(jit(model.apply)(variables, *args), jit(small.apply)(variables, *args), atol=1e-3)
    with pytest.raises(ValueError, match="'norm_epsilon' has value 0; allowed: a finite number > 0.0"):
        get_model(name, **kwargs, norm_epsilon=0)
