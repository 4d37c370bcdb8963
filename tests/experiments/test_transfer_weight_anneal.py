"""Smoke test of experiments/transfer_weight_anneal.py: one tiny training seed gives every row, the
modes train as one bucket, 'direct' is the source as is, and the energies agree with `anneal`'s."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "transfer_weight_anneal.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("transfer_weight_anneal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_one_tiny_seed_gives_every_row(script, monkeypatch):
    from vhjax.models import MLP

    widths = (8, 8, 8)
    config = script.target_config(0, widths, steps=4, per_class=3, val=40)
    x, y = config.dataset["test"]
    source = {"params": jax.tree.map(np.asarray, MLP(widths=widths, num_classes=10).init(jax.random.key(1),
                                                                                           x[:2])["params"])}
    source_data = (x[:30], y[:30])
    args = script.parse_args(["--temperatures", "0,0.01", "--step-size", "0.05"])
    monkeypatch.setattr(script, "scratch_row", lambda config: 0.5)  # plain fit_population: saves a compile
    rows, detail = script.run_seed(config, source, source_data, args)
    assert list(rows) == list(script.ROWS)
    assert all(0.0 <= value <= 1.0 for value in rows.values())
    stacked = jax.tree.map(lambda leaf: leaf[None], source["params"])
    # direct = every tensor frozen: the source as is on the target's test split
    assert rows["direct"] == pytest.approx(float(script.accuracies(config, stacked, x, y)[0]), abs=1e-6)
    # the script's energy of the start weights is anneal's start energy
    start = script.energies(config, stacked, source_data, args.source_weight)[0]
    assert detail["start energy"] == pytest.approx(float(start), abs=1e-6)
    assert detail["SA best energy"] <= detail["start energy"] and len(detail["SA acceptance per chain"]) == 2
