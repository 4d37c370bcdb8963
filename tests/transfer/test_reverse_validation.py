"""Reverse validation (`vhjax.transfer.reverse_validation`): each reverse member learns its own
member's pseudo-labels in one program, a broken member gets a high reverse risk, and no target
label is read."""

from __future__ import annotations

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from tests.transfer.test_adapt import CONFIG, TARGET
from vhjax.transfer import adapt, reverse_validation, select_member
from vhjax.transfer.reverse import LABEL_COLUMN, pseudo_label_loss


def test_each_reverse_member_learns_its_own_column():
    task = types.SimpleNamespace(loss_terms=(), loss_fn=lambda outputs, labels: -outputs[jnp.arange(len(labels)), labels])
    outputs = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    table = jnp.asarray([[0, 2], [1, 0]])  # example 0: member 0 says class 0, member 1 class 2
    loss = pseudo_label_loss(task)
    for column, expected in ((0, [-1.0, -5.0]), (1, [-3.0, -4.0])):
        state = types.SimpleNamespace(hparams={LABEL_COLUMN: jnp.float32(column)})
        np.testing.assert_allclose(loss(state, outputs, jnp.zeros(2, jnp.int32), (None, None, table)), expected)


@pytest.mark.slow  # two adapt populations and their reverse populations of 3 members, 150 steps each
def test_a_broken_member_has_a_high_reverse_risk_and_no_target_label_is_read():
    config = dataclasses.replace(CONFIG, steps=150, eval_every=150)
    members = [{"seed": 0}, {"seed": 0, "dann_weight": 1.0}, {"seed": 0, "learning_rate": 1e-9}]  # 2: barely trains
    rng = np.random.default_rng(0)
    relabelled = {"train": (TARGET["train"][0], rng.integers(0, 2, len(TARGET["train"][0]))),
                  "test": (TARGET["test"][0], rng.permutation(TARGET["test"][1]))}
    result = reverse_validation(adapt(config, members, target=TARGET, verbose=False), TARGET)
    other = reverse_validation(adapt(config, members, target=relabelled, verbose=False), relabelled)
    risks = [row["reverse_risk"] for row in result.rows]
    assert risks == [row["reverse_risk"] for row in other.rows]
    assert risks[2] > max(risks[:2]) + 0.1
    assert all(row["reverse_accuracy"] == pytest.approx(1.0 - row["reverse_risk"]) for row in result.rows)
    assert select_member(result, "reverse_risk")["member"] != 2
