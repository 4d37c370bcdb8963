"""Behavioural checks of the model zoo: shapes, hand-counted parameters, hand-computed forwards,
dropout overrides, bidirectional symmetry, trainability and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vhjax.models import MODELS, count_params, get_model, output_shape

KEY = jax.random.key(0)


def init_params(model, shape):
    return jax.jit(model.init)(KEY, jnp.zeros(shape, jnp.float32))["params"]


def param_shapes(model, shape):
    return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct(shape, jnp.float32))["params"]


def relu(v):
    return np.maximum(v, 0.0)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# --- registry and shapes ---------------------------------------------------------------------

def test_registry_lists_every_model_and_rejects_unknown_names():
    expected = {"linear", "mlp", "cnn1d", "cnn2d", "gru", "lstm",
                "mnist1d_logistic", "mnist1d_mlp", "mnist1d_cnn", "mnist1d_gru"}
    assert expected <= set(MODELS.names())
    with pytest.raises(ValueError, match=r"unknown model 'resnet9000'.*mnist1d_cnn"):
        get_model("resnet9000")


@pytest.mark.parametrize("name, kwargs, input_shape, expected", [
    ("linear", {"num_classes": 3}, (2, 40), (2, 3)),
    ("linear", {}, (2, 8, 8, 1), (2, 10)),
    ("mlp", {"widths": (16, 16, 8), "residual": True, "num_classes": 4}, (3, 40), (3, 4)),
    ("mlp", {"widths": (), "num_classes": 2}, (3, 5), (3, 2)),
    ("cnn1d", {}, (2, 40), (2, 10)),
    ("cnn1d", {"conv_layers": ((8, 3, 1, "SAME"), (4, 5, 1, "VALID")), "pooling": "max", "num_classes": 6,
               "head_widths": (12,)}, (2, 32, 3), (2, 6)),
    ("cnn1d", {"conv_layers": [{"features": 4, "kernel_size": 3}], "pooling": "avg", "pool_window": 3,
               "pool_stride": 1}, (2, 10), (2, 10)),
    ("cnn2d", {}, (2, 8, 8, 1), (2, 10)),
    ("cnn2d", {"conv_layers": ((6, 5, 1, "VALID"), (16, 5, 1, "VALID")), "pooling": "avg",
               "head_widths": (120, 84), "num_classes": 7}, (2, 32, 32, 3), (2, 7)),
    ("gru", {"hidden_size": 4}, (2, 12), (2, 10)),
    ("gru", {"hidden_size": 4, "bidirectional": True, "readout": "last", "num_layers": 2}, (2, 12, 3), (2, 10)),
    ("lstm", {"hidden_size": 5, "readout": "mean", "num_classes": 3}, (2, 12), (2, 3)),
    ("lstm", {"hidden_size": 5, "bidirectional": True}, (2, 7, 2), (2, 10)),
    ("mnist1d_logistic", {}, (5, 40), (5, 10)),
    ("mnist1d_mlp", {"num_classes": 4}, (5, 40), (5, 4)),
    ("mnist1d_cnn", {}, (5, 40), (5, 10)),
    ("mnist1d_gru", {}, (5, 40), (5, 10)),
])
def test_output_shapes(name, kwargs, input_shape, expected):
    assert output_shape(get_model(name, **kwargs), input_shape) == expected


def test_count_params_works_on_shapes_and_arrays():
    model = get_model("mlp", widths=(3,), num_classes=2)
    abstract = jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 4), jnp.float32))
    assert count_params(abstract) == count_params(init_params(model, (1, 4))) == 4 * 3 + 3 + 3 * 2 + 2


def test_json_lists_are_accepted_and_give_hashable_models():
    from_lists = get_model("cnn1d", conv_layers=[[25, 5, 2, 1], [25, 3, 2, [1, 1]]], head_widths=[7])
    from_tuples = get_model("cnn1d", conv_layers=((25, 5, 2, 1), (25, 3, 2, (1, 1))), head_widths=(7,))
    assert hash(from_lists) == hash(from_tuples)
    shapes = lambda m: jax.tree_util.tree_map(jnp.shape, init_params(m, (1, 40)))
    assert shapes(from_lists) == shapes(from_tuples)
    assert hash(get_model("mlp", widths=[4, 4])) == hash(get_model("mlp", widths=(4, 4)))


# --- the MNIST-1D paper models: parameter counts by hand ------------------------------------

def gru_direction_params(inputs, hidden):
    """flax GRUCell: ir, iz, in are Dense(inputs->hidden) with bias; hr, hz without bias; hn with bias."""
    return 3 * (inputs * hidden + hidden) + 2 * hidden * hidden + (hidden * hidden + hidden)


def test_paper_preset_parameter_counts():
    assert count_params(param_shapes(get_model("mnist1d_logistic"), (1, 40))) == 40 * 10 + 10
    assert count_params(param_shapes(get_model("mnist1d_mlp"), (1, 40))) == (
        40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10)
    assert count_params(param_shapes(get_model("mnist1d_cnn"), (1, 40))) == (
        1 * 25 * 5 + 25 + 2 * (25 * 25 * 3 + 25) + 125 * 10 + 10)
    assert count_params(param_shapes(get_model("mnist1d_gru"), (1, 40))) == (
        2 * gru_direction_params(1, 6) + 2 * 6 * 40 * 10 + 10)
    assert gru_direction_params(1, 6) == 150  # 18 + 18 + 72 + 42


def test_lstm_parameter_count():
    # flax OptimizedLSTMCell: 4 input Dense without bias, 4 recurrent Dense with bias
    inputs, hidden = 3, 5
    per_direction = 4 * inputs * hidden + 4 * (hidden * hidden + hidden)
    model = get_model("lstm", hidden_size=hidden, bidirectional=True, readout="last", num_classes=2)
    assert count_params(param_shapes(model, (1, 9, inputs))) == 2 * per_direction + 2 * hidden * 2 + 2


def test_presets_overridable():
    assert output_shape(get_model("mnist1d_cnn", num_classes=4), (2, 40)) == (2, 4)
    assert get_model("mnist1d_gru", hidden_size=3).hidden_size == 3


# --- the MNIST-1D paper models: forward passes by hand ---------------------------------------

def test_paper_mlp_is_relu_residual_relu_linear():
    model = get_model("mnist1d_mlp")
    params = init_params(model, (1, 40))
    x = np.asarray(jax.random.normal(jax.random.key(1), (4, 40)))
    p = jax.tree_util.tree_map(np.asarray, params)
    h = relu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
    h = h + relu(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
    expected = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-4)


def test_residual_changes_function_and_zero_branch_gives_plain_path():
    residual, plain = get_model("mlp", widths=(8, 8), residual=True), get_model("mlp", widths=(8, 8))
    params = init_params(residual, (1, 5))
    x = jax.random.normal(jax.random.key(2), (6, 5))
    assert not np.allclose(residual.apply({"params": params}, x), plain.apply({"params": params}, x), atol=1e-3)
    # with the second layer's branch zeroed, h = h + relu(0) = h: a one-hidden-layer network
    zeroed = {**params, "hidden_1": jax.tree_util.tree_map(jnp.zeros_like, params["hidden_1"])}
    shallow = get_model("mlp", widths=(8,))
    shallow_params = {"hidden_0": params["hidden_0"], "head": params["head"]}
    np.testing.assert_allclose(residual.apply({"params": zeroed}, x), shallow.apply({"params": shallow_params}, x),
                               rtol=1e-5, atol=1e-6)


def torch_style_conv1d(x, kernel, bias, stride, padding):
    """x (N, L, C), kernel (K, C, F): out[t] = sum_k x_padded[t * stride + k] @ kernel[k] + bias."""
    x = np.pad(x, [(0, 0), (padding, padding), (0, 0)])
    size = kernel.shape[0]
    length = (x.shape[1] - size) // stride + 1
    return np.stack([sum(x[:, t * stride + k] @ kernel[k] for k in range(size)) + bias
                     for t in range(length)], axis=1)


@pytest.mark.parametrize("conv_impl", ["patch", "xla"])
def test_paper_cnn_matches_hand_convolutions(conv_impl):
    model = get_model("mnist1d_cnn", conv_impl=conv_impl)
    params = init_params(model, (1, 40))
    p = jax.tree_util.tree_map(np.asarray, params)
    x = np.asarray(jax.random.normal(jax.random.key(3), (3, 40)))
    h = x[..., None]
    for index, stride_padding in enumerate([(2, 1), (2, 1), (2, 1)]):
        h = relu(torch_style_conv1d(h, p[f"conv_{index}"]["kernel"], p[f"conv_{index}"]["bias"], *stride_padding))
    assert h.shape == (3, 5, 25)  # lengths 40 -> 19 -> 10 -> 5
    expected = h.reshape(3, 125) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-4)


def test_conv_impls_agree_in_2d():
    layers = ((4, 5, 2, "SAME"), (3, 3, 1, ((1, 0), (0, 2))))
    patch = get_model("cnn2d", conv_layers=layers, pooling=None)
    xla = get_model("cnn2d", conv_layers=layers, pooling=None, conv_impl="xla")
    params = init_params(xla, (2, 9, 9, 2))
    x = jax.random.normal(jax.random.key(4), (2, 9, 9, 2))
    np.testing.assert_allclose(patch.apply({"params": params}, x), xla.apply({"params": params}, x),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling, reduce", [("max", np.max), ("avg", np.mean)])
def test_pooling_by_hand(pooling, reduce):
    """1x1 identity conv, identity head: the logits are the pooled image itself."""
    model = get_model("cnn2d", conv_layers=((1, 1, 1, 0),), pooling=pooling, pool_window=2, head_widths=(),
                      num_classes=4)
    params = {"conv_0": {"kernel": jnp.ones((1, 1, 1, 1)), "bias": jnp.zeros(1)},
              "head": {"kernel": jnp.eye(4), "bias": jnp.zeros(4)}}
    x = np.abs(np.asarray(jax.random.normal(jax.random.key(5), (2, 4, 4, 1))))  # relu is the identity here
    expected = reduce(x[..., 0].reshape(2, 2, 2, 2, 2), axis=(2, 4)).reshape(2, 4)
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5)


# --- dropout ---------------------------------------------------------------------------------

DROPOUT_MODELS = [("mlp", {"widths": (16, 16)}, (4, 12)),
                  ("cnn1d", {"conv_layers": ((4, 3, 1, 1),), "head_widths": (8,)}, (4, 12)),
                  ("cnn2d", {"conv_layers": ((4, 3),)}, (4, 6, 6, 1)),
                  ("gru", {"hidden_size": 4}, (4, 12)),
                  ("lstm", {"hidden_size": 4, "readout": "last"}, (4, 12))]


@pytest.mark.parametrize("name, kwargs, shape", DROPOUT_MODELS)
def test_dropout_rate_zero_is_eval_and_array_rates_vmap(name, kwargs, shape):
    model = get_model(name, num_classes=3, **kwargs)
    params = init_params(model, shape)
    x = jax.random.normal(jax.random.key(6), shape)
    rngs = {"dropout": jax.random.key(7)}
    evaluated = model.apply({"params": params}, x)
    at_zero = model.apply({"params": params}, x, train=True, dropout_rate=jnp.float32(0.0), rngs=rngs)
    np.testing.assert_allclose(at_zero, evaluated, rtol=1e-6)

    def run(rate):
        return model.apply({"params": params}, x, train=True, dropout_rate=rate, rngs=rngs)

    outs = jax.jit(jax.vmap(run))(jnp.array([0.0, 0.5, 0.9]))
    np.testing.assert_allclose(outs[0], evaluated, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[1], evaluated, atol=1e-3)
    assert not np.allclose(outs[2], outs[1], atol=1e-3)
    # eval ignores the rate
    np.testing.assert_allclose(model.apply({"params": params}, x, dropout_rate=jnp.float32(0.9)), evaluated)


def test_module_dropout_rate_is_default_and_override_wins():
    model = get_model("mlp", widths=(32,), dropout_rate=0.5, num_classes=3)
    params = init_params(model, (8, 5))
    x = jax.random.normal(jax.random.key(8), (8, 5))
    rngs = {"dropout": jax.random.key(9)}
    evaluated = model.apply({"params": params}, x)
    assert not np.allclose(model.apply({"params": params}, x, train=True, rngs=rngs), evaluated, atol=1e-3)
    np.testing.assert_allclose(model.apply({"params": params}, x, train=True, dropout_rate=0.0, rngs=rngs),
                               evaluated, rtol=1e-6)


def test_models_without_dropout_accept_the_keywords():
    model = get_model("linear", num_classes=2)
    params = init_params(model, (3, 4))
    x = jnp.ones((3, 4))
    np.testing.assert_allclose(model.apply({"params": params}, x, train=True, dropout_rate=jnp.float32(0.7)),
                               model.apply({"params": params}, x))


# --- recurrent models ------------------------------------------------------------------------

def test_gru_last_state_matches_hand_recurrence():
    model = get_model("gru", hidden_size=3, readout="last", num_classes=2)
    params = init_params(model, (1, 7, 2))
    p = jax.tree_util.tree_map(np.asarray, params["rnn_0"]["cell"])
    x = np.asarray(jax.random.normal(jax.random.key(10), (2, 7, 2)))
    h = np.zeros((2, 3))
    dense = lambda name, v: v @ p[name]["kernel"] + p[name].get("bias", 0.0)
    for t in range(7):
        r = sigmoid(dense("ir", x[:, t]) + dense("hr", h))
        z = sigmoid(dense("iz", x[:, t]) + dense("hz", h))
        n = np.tanh(dense("in", x[:, t]) + r * dense("hn", h))
        h = (1 - z) * n + z * h
    expected = h @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bidirectional_adds_a_backward_pass(cell):
    hidden = 4
    bi = get_model(cell, hidden_size=hidden, bidirectional=True, readout="mean", num_classes=3)
    uni = get_model(cell, hidden_size=hidden, readout="mean", num_classes=3)
    params = init_params(bi, (1, 9))
    x = jax.random.normal(jax.random.key(11), (5, 9))
    uni_params = {"rnn_0": params["rnn_0"]["forward_rnn"],
                  "head": {"kernel": params["head"]["kernel"][:hidden], "bias": params["head"]["bias"]}}
    uni_out = uni.apply({"params": uni_params}, x)
    assert not np.allclose(bi.apply({"params": params}, x), uni_out, atol=1e-3)
    # silencing the backward half of the head leaves exactly the unidirectional model
    silenced = {**params, "head": {"kernel": params["head"]["kernel"].at[hidden:].set(0.0),
                                   "bias": params["head"]["bias"]}}
    np.testing.assert_allclose(bi.apply({"params": silenced}, x), uni_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell, readout", [("gru", "mean"), ("gru", "last"), ("lstm", "last")])
def test_reversing_the_sequence_swaps_directions(cell, readout):
    """Swap forward/backward weights (and the head's halves): f(reversed x) must equal f(x)."""
    hidden = 3
    model = get_model(cell, hidden_size=hidden, bidirectional=True, readout=readout, num_classes=2)
    params = init_params(model, (1, 8, 2))
    x = jax.random.normal(jax.random.key(12), (4, 8, 2))
    kernel = params["head"]["kernel"]
    swapped = {"rnn_0": {"forward_rnn": params["rnn_0"]["backward_rnn"],
                         "backward_rnn": params["rnn_0"]["forward_rnn"]},
               "head": {"kernel": jnp.concatenate([kernel[hidden:], kernel[:hidden]]), "bias": params["head"]["bias"]}}
    original = model.apply({"params": params}, x)
    np.testing.assert_allclose(model.apply({"params": swapped}, x[:, ::-1]), original, rtol=1e-4, atol=1e-5)
    # without the swap, reversing the input changes the output (the model is order-sensitive)
    assert not np.allclose(model.apply({"params": params}, x[:, ::-1]), original, atol=1e-3)


# --- training --------------------------------------------------------------------------------

def test_paper_mlp_learns_a_separable_problem():
    keys = jax.random.split(jax.random.key(13), 3)
    directions = jax.random.normal(keys[0], (40, 4))
    x = jax.random.normal(keys[1], (256, 40))
    y = jnp.argmax(x @ directions, axis=-1)
    model = get_model("mnist1d_mlp", num_classes=4)
    params = model.init(keys[2], x[:1])["params"]
    optimizer = optax.adam(1e-3)

    def loss_fn(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    start_accuracy = jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=200)
    accuracy = jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)
    assert start_accuracy < 0.5 and accuracy > 0.95


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, match", [
    ("mlp", {"widths": (8, 0)}, r"'widths\[1\]' has value 0"),
    ("mlp", {"widths": 8}, "'widths' has value 8"),
    ("mlp", {"num_classes": -2}, "'num_classes' has value -2"),
    ("mlp", {"activation": "softplus"}, "'activation' has value 'softplus'.*leaky_relu.*relu.*swish"),
    ("mlp", {"dropout_rate": 1.5}, "'dropout_rate' has value 1.5"),
    ("linear", {"num_classes": 0}, "'num_classes' has value 0"),
    ("cnn1d", {"pooling": "median"}, "'pooling' has value 'median'.*'max', 'avg'"),
    ("cnn1d", {"conv_layers": ((0, 3),)}, r"'conv_layers\[0\].features' has value 0"),
    ("cnn1d", {"conv_layers": ((4, 3, 1, -1),)}, r"'conv_layers\[0\].padding' has value -1"),
    ("cnn1d", {"conv_layers": ((4, 3, 0),)}, r"'conv_layers\[0\].stride\[0\]' has value 0"),
    ("cnn1d", {"conv_layers": ()}, "'conv_layers' has value"),
    ("cnn1d", {"conv_layers": ({"features": 4, "size": 3},)}, r"'conv_layers\[0\]'.*allowed keys"),
    ("cnn2d", {"conv_layers": ((4, (3, 3, 3)),)}, r"'conv_layers\[0\].kernel_size' has value \(3, 3, 3\)"),
    ("cnn2d", {"pool_window": 0}, "'pool_window' has value 0"),
    ("cnn2d", {"conv_impl": "cudnn"}, "'conv_impl' has value 'cudnn'"),
    ("gru", {"hidden_size": 0}, "'hidden_size' has value 0"),
    ("lstm", {"readout": "first"}, "'readout' has value 'first'.*'flatten', 'last', 'mean'"),
    ("mnist1d_cnn", {"activation": "nope"}, "'activation' has value 'nope'"),
])
def test_invalid_configs_name_field_and_value(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_model(name, **kwargs)


def test_unknown_field_is_a_type_error_naming_the_model():
    with pytest.raises(TypeError, match="model 'mlp'.*depth"):
        get_model("mlp", depth=3)


def test_shape_errors_at_call_time():
    with pytest.raises(ValueError, match=r"'conv_layers\[1\].kernel_size' has value 5.*padded input length 4"):
        output_shape(get_model("cnn1d", conv_layers=((4, 3, 2, 0), (4, 5, 1, 0))), (2, 9))
    with pytest.raises(ValueError, match="'pool_window' has value 4"):
        output_shape(get_model("cnn1d", conv_layers=((4, 3, 1, 0),), pooling="max", pool_window=4), (2, 5))
    with pytest.raises(ValueError, match=r"cnn2d expects inputs of rank 4.*\(2, 40\)"):
        output_shape(get_model("cnn2d"), (2, 40))
    with pytest.raises(ValueError, match=r"cnn1d expects sequences.*\(2, 8, 8, 1\)"):
        output_shape(get_model("cnn1d"), (2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"gru expects sequences.*\(2, 4, 4, 1\)"):
        output_shape(get_model("gru"), (2, 4, 4, 1))
