"""The trainers built on `fit_members` (multi-task, multimodal, meta-learning) resume from a workdir:
killed after a checkpoint, rerun, they end where an uninterrupted run ends; a finished workdir is
restored, not retrained; other inputs there are refused."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.datasets import tiny_classification
from vhjax.models import get_model
from vhjax.multimodal import Encoder, FusionNet, fit_multimodal
from vhjax.multitask import MultiTaskNet, Trunk, fit_multitask
from vhjax.transfer import meta

(X, Y), (XT, YT) = tiny_classification(rows=200, features=8, classes=4).values()
STEPS, CUT = 40, 20  # checkpoints every 4 steps (a tenth); the kill comes after step 20


def multitask(workdir, learning_rate=3e-3):
    labels = lambda y: np.stack([y, y % 2], axis=1).astype(np.int32)  # noqa: E731
    result = fit_multitask(MultiTaskNet(Trunk((16,)), (4, 2)), (X, labels(Y)), (XT, labels(YT)),
                           [[1.0, 0.5], [0.5, 1.0]], steps=STEPS, learning_rate=learning_rate, workdir=workdir)
    return result.population.members.params


def multimodal(workdir, learning_rate=3e-3):
    model = FusionNet((Encoder((8,)), Encoder((8,))), 4, "features")
    result = fit_multimodal(model, ((X, X[:, :4]), Y), ((XT, XT[:, :4]), YT), [0.0, 0.5], steps=STEPS,
                            learning_rate=learning_rate, workdir=workdir)
    return result.population.members.params


def meta_learning(workdir, learning_rate=3e-3):
    tasks = tuple(a.reshape(STEPS, 2, *a.shape[1:]) for a in meta.sinusoid_tasks(jax.random.key(1), 2 * STEPS, 5, 5))
    result = meta.meta_train(get_model("mlp", widths=(16,), num_classes=1), tasks, method="fomaml",
                             inner_lr=0.01, meta_lr=learning_rate, size=2, workdir=workdir)
    return result.population.members.params


@pytest.mark.parametrize("train, name", [(multitask, "multitask"), (multimodal, "multimodal"),
                                         (meta_learning, "meta")])
def test_killed_run_resumes_and_a_finished_one_is_restored(train, name, tmp_path, run_interrupted, monkeypatch):
    from vhjax.population.engine import PopulationRunner

    full = train(tmp_path / "full")
    run_interrupted(lambda: train(tmp_path / "cut"), at_step=CUT)
    resumed = train(tmp_path / "cut")
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(PopulationRunner, "__call__", lambda *a: pytest.fail("a finished workdir trained again"))
    for a, b in zip(jax.tree.leaves(train(tmp_path / "cut")), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=rf"holds a run with other {name} inputs"):
        train(tmp_path / "cut", learning_rate=1e-2)
