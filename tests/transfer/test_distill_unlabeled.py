"""Semi-supervised distillation: a few labelled examples and unlabelled ones taught by the teacher alone."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vhjax import losses
from vhjax.config import TrainConfig
from vhjax.population import fit, fit_population
from vhjax.population.fit import bucket_task
from vhjax.transfer import distill
from vhjax.transfer.distill import distill_loss


def digits():
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    return {"train": (x[:600], y[:600]), "test": (x[1200:], y[1200:])}


DATA = digits()
FEW = {"train": (DATA["train"][0][:60], DATA["train"][1][:60]), "test": DATA["test"]}  # 6 labels per class
UNLABELED = DATA["train"][0][60:]
TEACHER_CONFIG = TrainConfig(dataset=DATA, model="mlp", model_kwargs={"widths": (64,), "num_classes": 10},
                             batch_size=32, steps=150, eval_every=150, seed=0)
STUDENT_CONFIG = TrainConfig(dataset=FEW, model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                             batch_size=20, steps=150, eval_every=150, seed=0)


@pytest.fixture(scope="module")
def teacher():
    return fit(TEACHER_CONFIG, verbose=False)


def member_params(result, index):
    member = result.members[index]
    return jax.tree.map(lambda leaf: np.asarray(leaf[member["position"]]),
                        result.states[member["bucket"]].members.params)


def test_unlabelled_rows_loss_by_hand():
    """Labelled rows: their mean; unlabelled rows: u times their sum over U, 0 below the confidence."""
    task = bucket_task(STUDENT_CONFIG)
    rng = np.random.default_rng(0)
    outputs = jnp.asarray(rng.normal(size=(5, 10)), jnp.float32)
    teacher_logits = jnp.asarray(rng.normal(size=(5, 10)) * np.array([[1], [1], [0.1], [8], [8]]), jnp.float32)
    labels = jnp.asarray([0, 3, 7, 9, 1])
    labelled = jnp.asarray([True, True, False, False, False])
    for weight, unlabeled_weight, confidence in ((0.0, 1.0, 0.0), (0.6, 0.5, 0.5), (1.0, 2.0, 0.0)):
        hp = {**task.default_hparams, "temperature": jnp.float32(2.0), "soft_weight": jnp.float32(weight),
              "distill_steps": jnp.float32(10), "unlabeled_weight": jnp.float32(unlabeled_weight),
              "confidence": jnp.float32(confidence)}
        state = types.SimpleNamespace(hparams=hp, step=jnp.int32(0))
        got = distill_loss(task)(state, outputs, labels, (None, labels, teacher_logits, labelled)).mean()
        plain = losses.distillation_loss(outputs, teacher_logits, labels, temperature=2.0, alpha=1.0 - weight)
        confident = jax.nn.softmax(teacher_logits).max(-1) >= confidence
        expected = plain[:2].mean() + unlabeled_weight * jnp.sum(jnp.where(confident, plain, 0.0)[2:]) / 3
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        if confidence > 0:
            assert 0 < int(confident[2:].sum()) < 3  # the threshold drops some unlabelled rows, not all
        late = distill_loss(task)(types.SimpleNamespace(hparams=hp, step=jnp.int32(10)), outputs, labels,
                                  (None, labels, teacher_logits, labelled)).mean()
        np.testing.assert_allclose(late, losses.cross_entropy(outputs[:2], labels[:2]).mean(), rtol=1e-5)


def test_unlabelled_weight_zero_is_the_student_trained_alone(teacher):
    """The labelled batches are the ones a plain run draws, and unlabelled rows at weight 0 change nothing."""
    result = distill(STUDENT_CONFIG, teacher, [{"seed": 3, "soft_weight": 0.0, "unlabeled_weight": 0.0}],
                     teacher_model=TEACHER_CONFIG, unlabeled=UNLABELED, verbose=False)
    alone = fit_population(STUDENT_CONFIG, [{"seed": 3}], verbose=False)
    for a, b in zip(jax.tree.leaves(member_params(result.population, 0)), jax.tree.leaves(member_params(alone, 0))):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert result.students[0]["kind"] == "alone"


def test_unlabelled_examples_taught_by_the_teacher_beat_the_few_labels_alone(teacher):
    students = [{"seed": 0, "soft_weight": 0.0, "unlabeled_weight": 0.0},                    # labels only
                {"seed": 0, "soft_weight": 1.0, "temperature": 2.0},                         # soft targets
                {"seed": 0, "soft_weight": 0.0, "unlabeled_weight": 1.0, "confidence": 0.8}]  # pseudo-labels
    result = distill(STUDENT_CONFIG, teacher, students, teacher_model=TEACHER_CONFIG, unlabeled=UNLABELED,
                     unlabeled_batch=40, verbose=False)
    alone, soft, pseudo = result.students
    assert len(result.population.states) == 1  # one compiled program for all three
    assert [alone["kind"], soft["kind"], pseudo["kind"]] == ["alone", "distilled", "distilled"]
    assert result.teacher["accuracy"] > 0.85
    assert soft["accuracy"] > alone["accuracy"] + 0.08
    assert pseudo["accuracy"] > alone["accuracy"] + 0.05
    assert soft["agreement"] > alone["agreement"]
    table = result.table()
    assert "| unlabelled weight | confidence |" in table and "| 0.8 |" in table


def test_unlabelled_split_name_equals_its_arrays(teacher):
    config = dataclasses.replace(STUDENT_CONFIG, dataset={**FEW, "pool": DATA["train"]}, steps=30, eval_every=30)
    students = [{"seed": 1, "soft_weight": 0.5}]
    by_name = distill(config, teacher, students, teacher_model=TEACHER_CONFIG, unlabeled="pool[60:]",
                      verbose=False)
    by_array = distill(config, teacher, students, teacher_model=TEACHER_CONFIG, unlabeled=UNLABELED,
                       same_batches=False, verbose=False)
    for a, b in zip(jax.tree.leaves(member_params(by_name.population, 0)),
                    jax.tree.leaves(member_params(by_array.population, 0))):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kwargs, student, message", [
    ({"unlabeled": np.zeros((50, 8), np.float32)}, {}, r"unlabeled has value 'inputs of shape \(50, 8\)'; allowed: "
                                                        r"inputs of shape \(N, 64\)"),
    ({"unlabeled": np.full((50, 64), np.nan, np.float32)}, {}, "unlabeled has value .* non-finite"),
    ({"unlabeled": UNLABELED[:10]}, {}, r"unlabeled has value '10 inputs'; allowed: at least unlabeled_batch = 20"),
    ({}, {"unlabeled_weight": 1.0}, r"student 0: field 'unlabeled_weight' has value 1.0; allowed: only with "
                                    "unlabelled inputs"),
    ({"unlabeled": UNLABELED}, {"unlabeled_weight": -1.0}, "student 0: field 'unlabeled_weight' has value -1.0"),
    ({"unlabeled": UNLABELED}, {"confidence": 1.5}, "student 0: field 'confidence' has value 1.5"),
    ({"unlabeled_batch": 10}, {}, "unlabeled_batch has value 10; allowed: None without unlabeled inputs"),
    ({"unlabeled": UNLABELED, "unlabeled_batch": 0}, {}, "unlabeled_batch has value 0"),
])
def test_bad_unlabelled_input_raises_before_compiling(teacher, kwargs, student, message, monkeypatch):
    from vhjax.population.engine import PopulationRunner

    monkeypatch.setattr(PopulationRunner, "__call__", lambda *a: pytest.fail("trained before checking"))
    with pytest.raises(ValueError, match=message):
        distill(STUDENT_CONFIG, teacher, [student], teacher_model=TEACHER_CONFIG, verbose=False, **kwargs)


def test_unlabelled_inputs_with_dp_sgd_are_refused(teacher):
    config = dataclasses.replace(STUDENT_CONFIG, dp_clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="unlabeled has value 'inputs'; allowed: None with DP-SGD"):
        distill(config, teacher, [{}], teacher_model=TEACHER_CONFIG, unlabeled=UNLABELED, verbose=False)


def test_workdir_refuses_other_unlabelled_inputs(teacher, tmp_path):
    config = dataclasses.replace(STUDENT_CONFIG, steps=20, eval_every=20)
    run = lambda unlabeled: distill(config, teacher, [{"seed": 0}], teacher_model=TEACHER_CONFIG,  # noqa: E731
                                    unlabeled=unlabeled, workdir=tmp_path, verbose=False)
    first = run(UNLABELED)
    again = run(UNLABELED)  # restored
    assert [r["accuracy"] for r in again.students] == [r["accuracy"] for r in first.students]
    with pytest.raises(ValueError, match=r"other distill inputs \(unlabeled"):
        run(UNLABELED[::-1])


def test_other_inputs_are_preprocessed_as_the_tasks_splits():
    """`preprocess_inputs` (unlabelled rows, target inputs) gives the task's own splits back from the raw
    inputs: outlier removal drops training rows, and is skipped for evaluation rows."""
    from vhjax.train.task import preprocess_inputs

    x = DATA["train"][0].copy()
    x[:5] += 40.0  # five outliers
    data = {"train": (x, DATA["train"][1]), "test": DATA["test"]}
    config = dataclasses.replace(STUDENT_CONFIG, dataset=data, eval_split="test",
                                 preprocess=({"name": "outliers"}, {"name": "standardize"}))
    task = bucket_task(config)
    assert len(task.train.x) <= len(x) - 5
    np.testing.assert_allclose(preprocess_inputs(task.preprocessing, x, drop_outliers=True), task.train.x, atol=1e-6)
    np.testing.assert_allclose(preprocess_inputs(task.preprocessing, DATA["test"][0], drop_outliers=False),
                               task.eval.x, atol=1e-6)
