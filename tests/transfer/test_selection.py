"""Unsupervised model selection for domain adaptation: DEV and IWCV by hand, DEV's lower variance,
`select_member` reading no target labels and ranking an adapted member above a broken one."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from tests.transfer.test_adapt import CONFIG, TARGET
from vhjax.transfer import adapt, select_member
from vhjax.transfer.adapt import dev_risk, iwcv_risk


def test_dev_and_iwcv_by_hand():
    losses = np.array([[1.0, 2.0, 0.5, 3.0], [0.2, 0.1, 0.4, 0.3]])
    ratios = np.array([0.5, 1.5, 2.0, 0.4])
    weighted = losses * ratios
    np.testing.assert_allclose(iwcv_risk(losses, ratios), weighted.mean(1))
    for member in range(2):
        eta = -np.cov(weighted[member], ratios)[0, 1] / np.var(ratios, ddof=1)
        assert dev_risk(losses, ratios)[member] == pytest.approx(weighted[member].mean() + eta * ratios.mean() - eta)
    centred = ratios / ratios.mean()  # mean 1: the control variate adds nothing
    np.testing.assert_allclose(dev_risk(losses, centred), iwcv_risk(losses, centred))


def test_dev_estimates_the_target_risk_with_less_variance_than_iwcv():
    # source N(0, 1), target N(1, 1): p_t / p_s = exp(x - 1/2); loss x^2 has target risk 1 + 1 = 2
    rng = np.random.default_rng(0)
    iwcv, dev = [], []
    for _ in range(400):
        x = rng.normal(size=200)
        losses, ratios = (x**2)[None], np.exp(x - 0.5)
        iwcv.append(iwcv_risk(losses, ratios)[0])
        dev.append(dev_risk(losses, ratios)[0])
    assert abs(np.mean(iwcv) - 2.0) < 0.1 and abs(np.mean(dev) - 2.0) < 0.1
    assert np.std(dev) < 0.8 * np.std(iwcv)


def test_select_member_leaves_out_oracle_and_diverged_members():
    rows = [{"member": 0, "oracle": 1.0, "diverged_step": None, "dev_risk": 0.1, "iwcv_risk": 0.1},
            {"member": 1, "oracle": 0.0, "diverged_step": 5, "dev_risk": 0.2, "iwcv_risk": 0.2},
            {"member": 2, "oracle": 0.0, "diverged_step": None, "dev_risk": 0.5, "iwcv_risk": 0.3},
            {"member": 3, "oracle": 0.0, "diverged_step": None, "dev_risk": 0.4, "iwcv_risk": 0.6}]
    result = types.SimpleNamespace(rows=rows)
    assert select_member(result)["member"] == 3
    assert select_member(result, "iwcv_risk")["member"] == 2
    with pytest.raises(ValueError, match="criterion has value 'accuracy'; allowed: one of 'dev_risk', 'iwcv_risk'"):
        select_member(result, "accuracy")
    with pytest.raises(ValueError, match="none selectable"):
        select_member(types.SimpleNamespace(rows=rows[:2]))


@pytest.mark.slow  # about 40 s on 2 shared cores: two populations of 3 members, 150 steps
def test_selection_reads_no_target_labels_and_ranks_adapted_above_broken():
    config = dataclasses.replace(CONFIG, steps=150, eval_every=150)
    members = [{"seed": 0}, {"seed": 0, "dann_weight": 1.0}, {"seed": 0, "learning_rate": 1e-9}]  # 2: barely trains
    rng = np.random.default_rng(0)
    relabelled = {"train": (TARGET["train"][0], rng.integers(0, 2, len(TARGET["train"][0]))),
                  "test": (TARGET["test"][0], rng.permutation(TARGET["test"][1]))}
    result = adapt(config, members, target=TARGET, verbose=False)
    other = adapt(config, members, target=relabelled, verbose=False)
    assert [r["target_accuracy"] for r in result.rows] != [r["target_accuracy"] for r in other.rows]
    for name in ("dev_risk", "iwcv_risk"):
        assert [r[name] for r in result.rows] == [r[name] for r in other.rows]
    assert select_member(result)["member"] == select_member(other)["member"] != 2
    dev = [row["dev_risk"] for row in result.rows]
    print([(r["method"], r["dev_risk"], r["iwcv_risk"], r["target_accuracy"]) for r in result.rows])
    assert dev[2] > max(dev[0], dev[1]) + 0.1
    assert result.rows[2]["source_accuracy"] < 0.7 < min(r["source_accuracy"] for r in result.rows[:2])
