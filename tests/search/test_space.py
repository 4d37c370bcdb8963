"""Search spaces: the unit-cube encoding, conditional parameters, grids, architecture spaces."""

import math

import jax
import numpy as np
import pytest

from vhjax.search.space import (
    NASBENCH201_OPS,
    Boolean,
    Categorical,
    Conditional,
    Float,
    Int,
    Space,
    cnn_space,
    mlp_space,
    nasbench201_arch_string,
    nasbench201_from_arch_string,
    nasbench201_space,
)


@pytest.fixture
def optimizer_space():
    return Space({
        "lr": Float(1e-4, 1e-1, log=True),
        "layers": Int(1, 5),
        "optimizer": Categorical(["sgd", "momentum", "adam"]),
        "momentum": Float(0.5, 0.99, condition=("optimizer", "momentum")),
        "nesterov": Conditional(Boolean(), "optimizer", ["momentum"]),
        "dropout": Float(0.0, 0.5),
    })


def test_shape_and_masks(optimizer_space):
    assert optimizer_space.dim == 6
    assert optimizer_space.names == ["lr", "layers", "optimizer", "momentum", "nesterov", "dropout"]
    np.testing.assert_array_equal(optimizer_space.cardinalities, [0, 0, 3, 0, 2, 0])
    np.testing.assert_array_equal(optimizer_space.is_categorical, [0, 0, 1, 0, 1, 0])
    u = optimizer_space.sample(jax.random.key(0), 7)
    assert u.shape == (7, 6) and float(u.min()) >= 0 and float(u.max()) <= 1


def test_float_linear_and_log_mapping():
    space = Space({"a": Float(2.0, 6.0), "lr": Float(1e-4, 1e-2, log=True)})
    decoded = space.decode(np.array([0.25, 0.5]))
    assert decoded["a"] == pytest.approx(3.0)
    assert decoded["lr"] == pytest.approx(1e-3, rel=1e-6)  # geometric midpoint
    assert space.decode(np.array([1.0, 1.0]))["lr"] == pytest.approx(1e-2)


def test_int_rounding_and_log_int():
    space = Space({"n": Int(1, 5), "width": Int(16, 256, log=True)})
    assert space.decode(np.array([0.0, 0.0])) == {"n": 1, "width": 16}
    assert space.decode(np.array([0.6, 0.5]))["n"] == 3  # 1 + 0.6 * 4 = 3.4 -> 3
    assert space.decode(np.array([0.7, 0.5])) == {"n": 4, "width": 64}  # 3.8 -> 4; sqrt(16*256)
    assert isinstance(space.decode(np.array([0.7, 0.5]))["n"], int)


def test_categorical_floor_mapping():
    space = Space({"c": Categorical(["a", "b", "c", "d"])})
    for u, expected in [(0.0, "a"), (0.2499, "a"), (0.25, "b"), (0.74, "c"), (0.99, "d"), (1.0, "d")]:
        assert space.decode(np.array([u]))["c"] == expected


def test_encode_decode_round_trip(optimizer_space):
    values = {"lr": 0.003, "layers": 4, "optimizer": "momentum", "momentum": 0.9,
              "nesterov": True, "dropout": 0.125}
    decoded = optimizer_space.decode(optimizer_space.encode(values))
    assert decoded.keys() == values.keys()
    assert decoded["lr"] == pytest.approx(0.003, rel=1e-5)
    assert decoded["momentum"] == pytest.approx(0.9, rel=1e-5)
    assert decoded["dropout"] == pytest.approx(0.125, rel=1e-5)
    assert {k: decoded[k] for k in ("layers", "optimizer", "nesterov")} == \
        {"layers": 4, "optimizer": "momentum", "nesterov": True}
    rows = optimizer_space.sample(jax.random.key(1), 20)
    for row in np.asarray(rows):  # decode -> encode -> decode is stable
        once = optimizer_space.decode(row)
        twice = optimizer_space.decode(optimizer_space.encode(once))
        assert once.keys() == twice.keys()
        for k in once:
            if isinstance(once[k], float):
                assert twice[k] == pytest.approx(once[k], rel=1e-4)
            else:
                assert twice[k] == once[k]


def test_conditional_parameters_dropped_when_inactive(optimizer_space):
    row = optimizer_space.encode({"lr": 0.01, "layers": 2, "optimizer": "adam", "dropout": 0.1})
    decoded = optimizer_space.decode(row)
    assert "momentum" not in decoded and "nesterov" not in decoded
    row[2] = 0.5  # optimizer -> momentum
    decoded = optimizer_space.decode(row)
    assert decoded["optimizer"] == "momentum" and "momentum" in decoded and "nesterov" in decoded
    batch = optimizer_space.decode_batch(np.stack([row, row]))
    assert batch == [decoded, decoded]


def test_grid_size_and_no_duplicates(optimizer_space):
    space = Space({"x": Float(0.0, 1.0), "n": Int(1, 3), "c": Categorical(["a", "b"])})
    grid = space.grid(points_per_float=4)
    assert grid.shape == (4 * 3 * 2, 3)
    np.testing.assert_allclose(sorted({space.decode(r)["x"] for r in grid}), [0, 1 / 3, 2 / 3, 1],
                               atol=1e-6)
    # conditional columns collapse: sgd and adam rows carry no momentum/nesterov variation
    grid = optimizer_space.grid(points_per_float=2)
    non_momentum = 2 * 2 * 2 * 2  # lr x layers(2 points) x {sgd, adam} x dropout
    momentum = 2 * 2 * 1 * 2 * 2 * 2  # ... x momentum x nesterov
    assert grid.shape == (non_momentum + momentum, 6)
    decoded = [repr(sorted(optimizer_space.decode(r).items())) for r in grid]
    assert len(set(decoded)) == len(decoded)


def test_nasbench201_arch_string_round_trip():
    space = nasbench201_space()
    assert space.dim == 6 and list(space.cardinalities) == [5] * 6
    arch = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
            "|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    decoded = nasbench201_from_arch_string(arch)
    assert decoded["3<-2"] == "skip_connect" and decoded["2<-1"] == "avg_pool_3x3"
    assert nasbench201_arch_string(decoded) == arch
    assert nasbench201_arch_string(space.decode(space.encode(decoded))) == arch
    # u -> op by floor(u * 5), in edge order
    row = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 0.99])
    assert nasbench201_arch_string(space.decode(row)) == (
        f"|{NASBENCH201_OPS[0]}~0|+|{NASBENCH201_OPS[1]}~0|{NASBENCH201_OPS[2]}~1|+"
        f"|{NASBENCH201_OPS[3]}~0|{NASBENCH201_OPS[4]}~1|{NASBENCH201_OPS[4]}~2|")
    with pytest.raises(ValueError, match="3 nodes"):
        nasbench201_from_arch_string("|none~0|")
    with pytest.raises(ValueError, match="conv_7x7"):
        nasbench201_from_arch_string(arch.replace("nor_conv_3x3~1", "conv_7x7~1"))


def test_model_space_helpers():
    mlp, cnn = mlp_space(), cnn_space()
    assert set(mlp.decode(np.full(4, 0.5))) == {"depth", "width", "activation", "dropout"}
    decoded = cnn.decode(np.array([0.0, 1.0, 0.9, 0.1]))
    assert decoded == {"depth": 1, "channels": 128, "kernel_size": 5, "pooling": "max"}


def test_a_step_quantizes_floats_and_ints_and_grids_list_exactly_its_values():
    space = Space({"dropout": Float(0.0, 0.5, step=0.1), "width": Int(16, 128, step=16), "lr": Float(1e-3, 1e-1)})
    u = np.random.default_rng(0).random((200, 3))
    decoded = [space.decode(row) for row in u]
    assert {d["dropout"] for d in decoded} == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}  # as written: no 0.30000000000000004
    assert {d["width"] for d in decoded} == set(range(16, 129, 16))
    assert len({d["lr"] for d in decoded}) == 200  # no step: continuous as before
    assert space.decode(space.encode({"dropout": 0.3, "width": 64, "lr": 0.01}))["dropout"] == 0.3
    grid = space.grid(points_per_float=50)
    assert sorted({row["dropout"] for row in map(space.decode, grid)}) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert sorted({row["width"] for row in map(space.decode, grid)}) == list(range(16, 129, 16))
    assert Int(1, 10, step=3).decode(0.55) == 7 and Int(1, 64, log=True, step=1).decode(0.5) == 8


@pytest.mark.parametrize("build, match", [
    (lambda: Float(0.0, 1.0, step=0.3), r"Float: high - low \(1.0\) is not a multiple of step 0.3; allowed: high = "
                                        r"low \+ k \* step, e.g. high=0.9"),
    (lambda: Float(1e-3, 1.0, log=True, step=0.1), r"step needs log=False"),
    (lambda: Float(0.0, 1.0, step=0.0), r"step must be > 0; got 0.0"),
    (lambda: Int(0, 10, step=2.5), r"Int: step must be an integer; got 2.5"),
    (lambda: Int(0, 10, step=3), r"Int: high - low \(10\) is not a multiple of step 3"),
    (lambda: Int(1, 64, log=True, step=2), r"step needs log=False"),
    (lambda: Space({}), "empty"),
    (lambda: Space({"x": Float(1.0, 1.0)}), r"low must be < high.*low=1.0"),
    (lambda: Float(0.0, 1.0, log=True), r"log=True needs low > 0.*low=0.0"),
    (lambda: Categorical([]), "choices must not be empty"),
    (lambda: Space({"m": Float(0.0, 1.0, condition=("opt", "sgd"))}), r"'m'.*unknown parameter 'opt'"),
    (lambda: Space({"depth": Int(1, 3), "w": Float(0.0, 1.0, condition=("depth", 7))}),
     r"'w': condition value\(s\) \[7\] of 'depth' are impossible; allowed: integers in \[1, 3\]"),
    (lambda: Space({"depth": Int(1, 3), "w": Float(0.0, 1.0, condition=("depth", [2, 2.5]))}),
     r"\[2.5\] of 'depth' are impossible"),
    (lambda: Space({"depth": Int(1, 3), "w": Float(0.0, 1.0, condition=("depth", True))}),
     r"\[True\] of 'depth' are impossible"),
    (lambda: Space({"opt": Categorical(["sgd"]), "m": Float(0.0, 1.0, condition=("opt", "adam"))}),
     r"'m'.*\['adam'\].*\['sgd'\]"),
    (lambda: Int(1.5, 4), "must be an integer"),
])
def test_validation_errors_name_the_problem(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_decode_and_encode_reject_bad_input(optimizer_space):
    with pytest.raises(ValueError, match="6 values"):
        optimizer_space.decode(np.zeros(3))
    with pytest.raises(ValueError, match="unknown parameter"):
        optimizer_space.encode({"lr": 0.01, "bogus": 1})
    with pytest.raises(ValueError, match="outside"):
        Space({"x": Float(0.0, 1.0)}).encode({"x": 2.0})
    with pytest.raises(ValueError, match="not one of"):
        Space({"c": Categorical(["a"])}).encode({"c": "z"})


def test_log_float_is_uniform_in_log_space():
    space = Space({"lr": Float(1e-5, 1e-1, log=True)})
    values = [space.decode(np.array([u]))["lr"] for u in np.linspace(0, 1, 5)]
    np.testing.assert_allclose(np.log10(values), [-5, -4, -3, -2, -1], atol=1e-6)
    assert math.isclose(space.encode({"lr": 1e-3})[0], 0.5, rel_tol=1e-6)


def test_resnet_and_transformer_spaces_build_working_models():
    import jax
    import jax.numpy as jnp

    from vhjax.models import get_model
    from vhjax.search.space import resnet_kwargs, resnet_space, transformer_kwargs, transformer_space

    for space, kwargs_of, name, x in [(resnet_space(), resnet_kwargs, "resnet", jnp.ones((2, 8, 8, 3))),
                                      (transformer_space(), transformer_kwargs, "transformer", jnp.ones((2, 12, 3)))]:
        for u in np.asarray(space.sample(jax.random.key(0), 2)):
            model = get_model(name, **kwargs_of(space.decode(u), num_classes=5))
            # traced with abstract arrays: every shape and argument the sampled architecture gets is
            # checked as by a real run, without compiling a 12-block ResNet (real forward passes of
            # both families: tests/models/test_zoo.py)
            variables = jax.eval_shape(model.init, jax.random.key(1), x)
            out = jax.eval_shape(model.apply, variables, x)
            assert out.shape == (2, 5) and jnp.issubdtype(out.dtype, jnp.floating)


def test_check_points_takes_partial_points_in_their_domains_and_names_what_does_not_fit():
    space = Space({"lr": Float(1e-4, 1e-1, log=True), "depth": Int(1, 4), "act": Categorical(["relu", "gelu"])})
    assert space.check_points([{"lr": 1e-3}, {"depth": 2, "act": "gelu"}, {}]) == [
        {"lr": 1e-3}, {"depth": 2, "act": "gelu"}, {}]
    for points, error, match in [
            ([{"depth": 2.5}], TypeError, r"enqueue\[0\]: parameter 'depth': value must be an integer; got 2.5"),
            ([{"act": "tanh"}], ValueError, r"enqueue\[0\]: parameter 'act': value 'tanh' is not one of"),
            ([{}, {"lr": 1.0}], ValueError, r"enqueue\[1\]: parameter 'lr': value 1.0 is outside \[0.0001, 0.1\]"),
            ([{"width": 8}], ValueError, r"enqueue\[0\]: unknown parameter\(s\) \['width'\]; allowed: \['lr', "),
            ([{}, {}, {}], ValueError, r"enqueue has 3 points; allowed: at most the population \(2\)"),
            ("lr", TypeError, r"enqueue has value 'lr'; allowed: a list of dicts")]:
        with pytest.raises(error, match=match):
            space.check_points(points, most=2, most_name="the population")
