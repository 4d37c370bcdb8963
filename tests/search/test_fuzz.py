"""Property-based fuzzing (hypothesis) of what users hand vhjax: spaces, TrainConfig values, member
dicts and objective outputs. Every input is either accepted (and then works) or refused with a
ValueError/TypeError whose message names the field; never another exception, never a hang.
Nothing here compiles a training program (validation runs before any compilation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from vhjax.config import TrainConfig, validate  # noqa: E402
from vhjax.search.driver import metrics_from_output, minimized, trial_results  # noqa: E402
from vhjax.search.space import Categorical, Float, Int, Space  # noqa: E402

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

odd_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.booleans(), st.none(),
    st.text(max_size=4), st.sampled_from(["0.01", "1e-3", "nan", [], [1.0], {}, (1, 2), np.float32(0.5),
                                          np.int64(3), complex(1, 1), np.nan]))


def assert_clear(error: Exception, *names: str) -> None:
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), f"message does not name {names}: {error}"


# ----------------------------------------------------------------------------- spaces


@FUZZ
@given(kind=st.sampled_from([Float, Int]), low=odd_numbers, high=odd_numbers, log=st.one_of(st.booleans(), odd_numbers),
       u=st.floats(0, 1))
def test_numeric_parameters(kind, low, high, log, u):
    try:
        param = kind(low, high, log=log)
        space = Space({"p": param})
    except Exception as error:  # noqa: BLE001 - the property is about which exceptions
        assert_clear(error, "low", "high", "log")
        return
    value = space.decode(np.asarray([u]))["p"]
    assert float(param.low) <= value <= float(param.high)
    assert np.all((0 <= space.encode({"p": value})) & (space.encode({"p": value}) <= 1))


@FUZZ
@given(choices=st.one_of(st.lists(odd_numbers, max_size=5), odd_numbers), u=st.floats(0, 1))
def test_categorical_parameters(choices, u):
    try:
        space = Space({"c": Categorical(choices)})
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "choices")
        return
    assert space.decode(np.asarray([u]))["c"] in list(choices)


@FUZZ
@given(names=st.lists(st.one_of(st.text(max_size=3), odd_numbers), min_size=0, max_size=3),
       condition=st.one_of(st.none(), st.tuples(st.text(max_size=3), odd_numbers), odd_numbers))
def test_spaces_of_odd_names_and_conditions(names, condition):
    try:
        # a name that cannot be a dict key (a list) is not something a user can hand Space
        params = {name: Float(0.0, 1.0) for name in names if isinstance(name, Hashable)}
        params["child"] = Int(1, 4, condition=condition)
        space = Space(params)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "condition", "name", "parameter", "params", "Space")
        return
    assert len(space.decode(np.full(space.dim, 0.5))) >= 0


# ----------------------------------------------------------------------------- TrainConfig

BASE = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (8,), "num_classes": 10}, steps=10,
                   eval_every=5, batch_size=16)
FIELDS = ("learning_rate", "weight_decay", "batch_size", "steps", "eval_every", "seed", "clip_norm", "clip_value",
          "max_norm", "dropout_rate", "l2", "l1_ratio", "patience", "plateau_factor", "label_smoothing",
          "checkpoint_every", "grad_accumulation", "keep_best", "shuffle", "monitor_mode", "loss_weights",
          "optimizer_kwargs", "lr_multipliers", "eval_metrics")


@FUZZ
@given(field=st.sampled_from([f for f in FIELDS if f in {x.name for x in dataclasses.fields(TrainConfig)}]),
       value=odd_numbers)
def test_train_config_values(field, value):
    try:
        validate(dataclasses.replace(BASE, **{field: value}))
    except Exception as error:  # noqa: BLE001
        assert_clear(error, field)


@FUZZ
@given(kwargs=st.dictionaries(st.sampled_from(["b1", "b2", "eps", "momentum", "nesterov"]), odd_numbers, max_size=2))
def test_optimizer_kwargs(kwargs):
    try:
        validate(dataclasses.replace(BASE, optimizer_kwargs=kwargs))
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "optimizer_kwargs")


# ----------------------------------------------------------------------------- member dicts


@pytest.fixture(scope="module")
def check_members():
    """fit_population's checks, up to (not including) building the population's program."""
    from vhjax.population.fit import (bucket_members, bucket_seeds, bucket_task, stack_dynamic,
                                      with_config_loss_weights)
    from vhjax.population.hparams import member_arrays
    from vhjax.population.members import _init_programs, check_member_archs

    def check(members):
        members = [with_config_loss_weights(BASE, member) for member in members]
        for bucket_config, indices in bucket_members(BASE, members):
            hparams = stack_dynamic(indices, members)
            task = bucket_task(bucket_config, hparams)
            bucket_seeds(BASE, indices, members)
            check_member_archs(task, len(indices), hparams.get("arch"))
            member_arrays(len(indices), hparams, task.default_hparams, _init_programs(task)[1])

    check([{}])  # loads the data set once, outside the examples' deadline
    return check


@FUZZ
@given(members=st.lists(st.dictionaries(
    st.sampled_from(["learning_rate", "weight_decay", "dropout_rate", "l2", "seed", "lr", "batch_size"]),
    odd_numbers, max_size=2), min_size=1, max_size=3))
def test_member_dicts(check_members, members):
    try:
        check_members(members)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, *{name for member in members for name in member}, "member")


# ----------------------------------------------------------------------------- objective outputs

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)
arrays = (hnp.arrays(np.float64, shapes, elements=st.floats(allow_nan=True, allow_infinity=True))
          | hnp.arrays(np.int64, shapes, elements=st.integers(-5, 2**62)))
outputs = st.recursive(
    st.one_of(odd_numbers, st.lists(st.floats(allow_nan=True), max_size=4), arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["fitness", "accuracy", "parent_id", "fidelity", 7]),
                                            inner, max_size=3)),
    max_leaves=12)


def outputs_for(n: int):
    """Outputs an objective might return for n candidates: mostly of leading length n, some not."""
    rows = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3).map(lambda shape: (n, *shape))
    shaped = (hnp.arrays(np.float64, rows, elements=st.floats(allow_nan=True, allow_infinity=True))
              | hnp.arrays(np.int64, rows, elements=st.integers(-5, 2**62))
              | st.lists(odd_numbers, min_size=n, max_size=n))
    leaf = shaped | outputs
    return leaf | st.dictionaries(st.sampled_from(["fitness", "accuracy", "parent_id", "fidelity", 7]), leaf,
                                  max_size=4)


@settings(FUZZ, max_examples=300)
@given(data=st.data(), n=st.integers(1, 3), objectives=st.sampled_from([["fitness"], ["fitness", "accuracy"]]))
def test_objective_outputs(data, n, objectives):
    output = data.draw(outputs_for(n), label="output")
    try:
        metrics = metrics_from_output(output, n, objectives, "objective 'f'")
        results = trial_results(list(range(n)), metrics, objectives)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "objective 'f'")
        return
    assert len(results) == n
    values = minimized(results, {name: "maximize" for name in objectives})
    assert values.shape == (n, len(objectives))
    for result in results:
        assert result.status in ("complete", "failed")
        assert result.fitness is None or math.isfinite(result.fitness)
        assert result.parent_id is None or (isinstance(result.parent_id, int) and 0 <= result.parent_id < 2**63)
        assert result.fidelity is None or (math.isfinite(result.fidelity) and result.fidelity >= 0)
