"""Smoke test of experiments/transfer_digits_table.py: the data mapping, the splits, one tiny
exhaustive table and search run, and the report's rows (the --quick run is too slow for a test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "transfer_digits_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("transfer_digits_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(table):
    return table.domains()


def test_mnist_maps_to_the_digits_format(table, data):
    x, y = data["mnist"]["train"]
    d, _ = data["digits"]["train"]
    assert x.shape == (4000, 8, 8, 1) and d.shape[1:] == (8, 8, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # area averages of a binarised image: multiples of 1/25 (5x5 cells of the 40x40 upsample, 2x2 copies)
    assert np.allclose(np.round(x * 25), x * 25, atol=1e-4)
    # same framing: the mean ink per image is within a factor 1.5 of the digits'
    assert 1 / 1.5 < x.mean() / d.mean() < 1.5
    # a blank image stays blank, a full one stays full; wrong shapes are refused
    assert table.mnist_as_digits(np.zeros((1, 28, 28, 1))).max() == 0.0
    assert table.mnist_as_digits(np.ones((1, 28, 28, 1))).min() == 1.0
    with pytest.raises(ValueError, match="28, 28, 1"):
        table.mnist_as_digits(np.zeros((1, 8, 8, 1)))


def test_target_splits_draw_per_class_and_disjoint_validation(table, data):
    splits = table.target_splits(data["digits"], 10, seed=3, val=300)
    _, y = splits["train"]
    assert np.bincount(y, minlength=10).tolist() == [10] * 10
    assert len(splits["val"][1]) == 300 and splits["test"][1].shape == (360,)
    train_rows = {row.tobytes() for row in splits["train"][0]}
    assert not any(row.tobytes() in train_rows for row in splits["val"][0])
    other = table.target_splits(data["digits"], 10, seed=4, val=300)
    assert not np.array_equal(other["train"][0], splits["train"][0])


def test_tiny_exhaustive_table_and_search(table, data):
    from vhjax.transfer.masks import MaskObjective, exhaustive_table, optimum

    widths = (8, 8, 8)
    source, _ = table.source_model(data["mnist"], widths, steps=5)
    config = table.target_config(table.target_splits(data["digits"], 2, 0, 40), widths, steps=3, seed=0)
    objective = MaskObjective(config, source, policy="copy")
    exhaustive = exhaustive_table(objective)
    assert len(exhaustive) == 16 and all(0.0 <= row["test_accuracy"] <= 1.0 for row in exhaustive.values())
    _, best = optimum(exhaustive)
    runs = table.search_runs(objective, exhaustive, "genetic", budget=4, population=2, seeds=range(1))
    curve = runs[0]["best_so_far"]
    assert len(curve) == 2 and curve[1] >= curve[0] and curve[-1] <= best + 1e-6
    assert runs[0]["test_accuracy"] == exhaustive[runs[0]["mask"]]["test_accuracy"]


def test_report_has_every_row(table):
    search = {"test_accuracy": 0.5, "mask": "1111", "reached": True, "best_so_far": [0.4, 0.5]}
    entry = {"scratch": 0.3, "optimal_masks": ["1111"], "optimum_val": 0.5, "exhaustive optimum": 0.5,
             "searches": {label: [search] for label, _ in table.SEARCHES}}
    seed = {"modes": {mode: 0.4 for mode in [m for m, _ in table.MODE_ROWS] + ["gradual_unfreezing"]},
            "policies": {"copy": entry}}
    args = table.parse_args(["--quick"])
    results = {"sources": {"mnist": 0.9}, "wall_s": {"mnist->digits": 1.0}, "mnist->digits": {"10": {"seeds": [seed]}},
               "args": {**vars(args), "directions": ["mnist->digits"]}}
    text = table.report(results)
    for row in ("scratch", "direct", "feature_extractor", "fine_tune_last", "freeze", "full", "layerwise_lr",
                "gradual_unfreezing", "random (best of)", "GA", "SA", "exhaustive optimum"):
        assert f"| {row} |" in text
    assert "| GA | 0.500 | 1/1 | 12 |" in text
    with pytest.raises(ValueError, match="directions"):
        table.parse_args(["--directions", "mnist->mnist"])
