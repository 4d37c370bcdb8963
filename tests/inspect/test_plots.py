"""Figures: attributions for sequences and images, population training curves by hyperparameter."""

from __future__ import annotations

import numpy as np
import pytest

from vhjax import TrainConfig
from vhjax.inspect import plots
from vhjax.population import fit_population

PNG = b"\x89PNG\r\n\x1a\n"


def test_attribution_figures(tmp_path):
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(3, 40)).astype(np.float32)
    img = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    path = plots.attribution_figure(seq, {"gradients": seq * 2, "ig": seq}, tmp_path / "seq.png", labels=[1, 2, 3])
    assert path.read_bytes()[:8] == PNG
    path = plots.attribution_figure(img, {"gradients": img}, tmp_path / "img.png", examples=2)
    assert path.read_bytes()[:8] == PNG
    path = plots.robustness_figure([0, 0.1], {"a": [0.9, 0.5]}, tmp_path / "rob.png")
    assert path.read_bytes()[:8] == PNG


def test_training_curves_coloured_by_hyperparameter(tmp_path):
    config = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,)}, steps=40, eval_every=20,
                         batch_size=64, train_split="train[:90%]", eval_split="train[90%:]")
    members = [{"learning_rate": lr} for lr in (1e-3, 1e-2, 3e-2)]
    fit_population(config, members, tmp_path / "pop", verbose=False)
    curves = plots.population_curves(tmp_path / "pop")
    assert [c["config"]["learning_rate"] for c in curves] == [1e-3, 1e-2, 3e-2]
    assert curves[0]["history"]["eval"]["step"] == [20, 40]
    assert curves[0]["history"]["eval"]["accuracy"] != curves[2]["history"]["eval"]["accuracy"]
    path = plots.training_curves(tmp_path / "pop", "learning_rate", tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="hparam 'dropout_rate' is not a scalar field"):
        plots.training_curves(tmp_path / "pop", "dropout_rate", tmp_path / "x.png")
