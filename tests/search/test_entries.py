"""The feature matrix's search cells: a `vhjax.search` over a TrainingObjective and a multi-fidelity
search both train through `fit_population` and the one loop, so early stopping, plateau, resume
after a kill, augmentation strengths, loss weights and metrics logging work there too (the
training entries: tests/population/test_entries.py; tune: tests/search/test_tune.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import vhjax
from vhjax.config import TrainConfig
from vhjax.search import Categorical, Space, TrainingObjective, search_multifidelity

# a checkpoint every second evaluation (steps 20 and 40, where a promotion starts and a run ends), not
# every one: an orbax save costs more than the chunk it follows
CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     learning_rate=3e-3, batch_size=32, steps=40, eval_every=10, checkpoint_every=2, seed=0)
LEARNING_RATES = Space({"learning_rate": Categorical((3e-3, 1e-2))})
ENTRIES = ("search", "multifidelity")


def run_entry(entry: str, config: TrainConfig, root: Path | None, space: Space = LEARNING_RATES,
              continue_from_parent: bool = True) -> dict:
    """Search `space` (two candidates); returns {params tuple: fitness} of the completed trials
    (at their largest budget in a multi-fidelity search, where the promoted one continues from its
    rung-0 state unless `continue_from_parent` is False)."""
    training = None if root is None else root / "training"
    objective = TrainingObjective(config, metric="loss", workdir=training, continue_from_parent=continue_from_parent)
    store = None if root is None else root / "store"
    if entry == "search":
        result = vhjax.search(objective, space, "grid", budget=2, population=2, workdir=store,
                              direction="minimize", verbose=False)
    else:  # successive halving: both candidates at steps/2, the better one promoted to steps
        result = search_multifidelity(objective, space, "successive_halving", min_budget=config.steps // 2,
                                      max_budget=config.steps, max_trials=3, population=2, eta=2, generator="grid",
                                      direction="minimize", workdir=store, verbose=False)
    trials = sorted((t for t in result.trials if t.status == "complete"), key=lambda t: getattr(t, "fidelity", 0) or 0)
    return {tuple(sorted(t.params.items())): t.fitness for t in trials}


def eval_steps(root: Path) -> list[list[int]]:
    """The evaluated steps of every training run under `root` (one metrics.jsonl per population)."""
    runs = []
    for path in sorted(root.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        runs.append([r["step"] for r in rows if r["split"] == "eval"])
    return runs


def budget_of(path: Path) -> int:
    parts = [p for p in path.parts if p.startswith("budget_")]
    return int(parts[-1].split("_")[1]) if parts else CONFIG.steps


def start_of(path: Path) -> int:
    """The step a run started from: its parent's for a continued promotion (`budget_B_from_S`), else 0."""
    parts = [p for p in path.parts if p.startswith("budget_") and "_from_" in p]
    return int(parts[-1].split("_from_")[1]) if parts else 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_metrics_are_logged_at_every_evaluation(entry, tmp_path):
    run_entry(entry, CONFIG, tmp_path)
    paths = sorted((tmp_path / "training").rglob("metrics.jsonl"))
    assert paths
    for path, steps in zip(paths, eval_steps(tmp_path / "training")):
        assert steps == list(range(start_of(path) + 10, budget_of(path) + 1, 10))
    if entry == "multifidelity":  # the promoted run continued from its parent's step 20
        assert [start_of(path) for path in paths] == [0, 20]


@pytest.mark.parametrize("entry", ENTRIES)
def test_early_stopping_ends_the_run(entry, tmp_path):
    config = dataclasses.replace(CONFIG, patience=1, monitor="loss", monitor_mode="max")
    # from scratch, so the promoted 40-step run must stop after its second evaluation too
    run_entry(entry, config, tmp_path, continue_from_parent=False)
    runs = eval_steps(tmp_path / "training")
    assert runs and all(steps == [10, 20] for steps in runs)


@pytest.mark.parametrize("entry", ENTRIES)
def test_plateau_scales_the_learning_rate(entry, tmp_path):
    config = dataclasses.replace(CONFIG, plateau_patience=1, plateau_factor=0.5, monitor="loss", monitor_mode="max")
    run_entry(entry, config, tmp_path)
    for path in sorted((tmp_path / "training").rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        scales = [np.min(r["learning_rate_scale"]) for r in rows if r["split"] == "train"]
        assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.5 ** (len(scales) - 1))


@pytest.mark.parametrize("entry", ENTRIES)
def test_resume_after_a_kill_gives_the_same_result(entry, tmp_path, run_interrupted):
    full = run_entry(entry, CONFIG, tmp_path / "full")
    run_interrupted(lambda: run_entry(entry, CONFIG, tmp_path / "cut"), at_step=20)
    assert run_entry(entry, CONFIG, tmp_path / "cut") == full


@pytest.mark.parametrize("entry", ENTRIES)
def test_augmentation_strength_is_searched(entry):
    config = dataclasses.replace(CONFIG, steps=20, augment=({"name": "gaussian_noise", "strength": 0.0},))
    mild = run_entry(entry, config, None, Space({"aug_strength": Categorical((0.0, 0.3))}))
    noisy = run_entry(entry, config, None, Space({"aug_strength": Categorical((0.0, 0.9))}))
    if entry == "search":  # grid order: the same member slot trains with strength 0 in both
        assert noisy[(("aug_strength", 0.0),)] == mild[(("aug_strength", 0.0),)]
    assert sorted(noisy.values()) != sorted(mild.values())  # the strength reaches the training


@pytest.mark.parametrize("entry", ENTRIES)
def test_loss_weights_are_searched(entry):
    config = dataclasses.replace(CONFIG, steps=20, loss_weights={"cross_entropy": 1.0})
    name = "loss_weights.cross_entropy"
    half = run_entry(entry, config, None, Space({name: Categorical((1.0, 0.5))}))
    tenth = run_entry(entry, config, None, Space({name: Categorical((1.0, 0.1))}))
    if entry == "search":  # grid order: the same member slot trains with weight 1 in both
        assert tenth[((name, 1.0),)] == half[((name, 1.0),)]
    assert sorted(tenth.values()) != sorted(half.values())
