"""Distillation: students over (temperature, soft weight) in one program, the mixed procedure, bad input."""

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
from vhjax.transfer import Teacher, distill
from vhjax.transfer.distill import distill_loss


def digits(train: int = 600):
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    return {"train": (x[:train], y[:train]), "test": (x[1200:], y[1200:])}


DATA = digits()
TEACHER_CONFIG = TrainConfig(dataset=DATA, model="mlp", model_kwargs={"widths": (64,), "num_classes": 10},
                             batch_size=32, steps=120, eval_every=120, seed=0)
STUDENT_CONFIG = TrainConfig(dataset=DATA, model="mlp", model_kwargs={"widths": (8,), "num_classes": 10},
                             batch_size=32, steps=40, eval_every=20, seed=0)


@pytest.fixture(scope="module")
def teacher():
    return fit(TEACHER_CONFIG, verbose=False)


def member_params(result, index):
    member = result.members[index]
    return jax.tree.map(lambda leaf: np.asarray(leaf[member["position"]]),
                        result.states[member["bucket"]].members.params)


def test_soft_weight_zero_is_the_student_trained_alone(teacher):
    result = distill(STUDENT_CONFIG, teacher, [{"seed": 3, "soft_weight": 0.0, "temperature": 4.0}],
                     teacher_model=TEACHER_CONFIG, verbose=False)
    alone = fit_population(STUDENT_CONFIG, [{"seed": 3}], verbose=False)
    for name in ("accuracy", "loss"):
        assert result.population.members[0]["eval"][name] == pytest.approx(alone.members[0]["eval"][name], abs=1e-5)
    for a, b in zip(jax.tree.leaves(member_params(result.population, 0)), jax.tree.leaves(member_params(alone, 0))):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert result.students[0]["kind"] == "alone"


def test_loss_term_matches_distillation_loss_by_hand():
    task = bucket_task(STUDENT_CONFIG)
    rng = np.random.default_rng(0)
    outputs, teacher_logits = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    labels = jnp.asarray([0, 3, 7, 9])
    data_loss = distill_loss(task)
    for temperature, weight in ((3.0, 1.0), (2.0, 0.3)):
        hp = {**task.default_hparams, "temperature": jnp.float32(temperature), "soft_weight": jnp.float32(weight),
              "distill_steps": jnp.float32(10)}
        state = types.SimpleNamespace(hparams=hp, step=jnp.int32(0))
        got = data_loss(state, outputs, labels, (None, labels, teacher_logits))
        expected = losses.distillation_loss(outputs, teacher_logits, labels, temperature=temperature,
                                            alpha=1.0 - weight)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        by_hand = weight * temperature**2 * jnp.sum(
            jax.nn.softmax(teacher_logits / temperature) * (jax.nn.log_softmax(teacher_logits / temperature)
                                                            - jax.nn.log_softmax(outputs / temperature)), -1)
        by_hand = by_hand + (1 - weight) * -jax.nn.log_softmax(outputs)[jnp.arange(4), labels]
        np.testing.assert_allclose(got, by_hand, rtol=1e-5)
        # after distill_steps the member fine-tunes on hard labels only
        late = data_loss(types.SimpleNamespace(hparams=hp, step=jnp.int32(10)), outputs, labels,
                         (None, labels, teacher_logits))
        np.testing.assert_allclose(late, losses.cross_entropy(outputs, labels), rtol=1e-5)


def test_students_over_temperature_share_one_program_and_differ(teacher):
    students = [{"seed": 0, "soft_weight": 0.9, "temperature": t} for t in (1.0, 4.0)]
    students.append({"seed": 0, "soft_weight": 0.9, "temperature": 4.0, "distill_steps": 20})  # mixed
    result = distill(STUDENT_CONFIG, teacher, students, teacher_model=TEACHER_CONFIG, verbose=False)
    assert len(result.population.states) == 1  # one bucket: one compiled program
    first, second, mixed = (member_params(result.population, i) for i in range(3))
    assert not np.allclose(first["hidden_0"]["kernel"], second["hidden_0"]["kernel"])
    assert not np.allclose(second["hidden_0"]["kernel"], mixed["hidden_0"]["kernel"])
    assert [row["kind"] for row in result.students] == ["distilled", "distilled", "mixed"]
    assert result.teacher["params"] > result.students[0]["params"]
    assert result.teacher["flops"] > result.students[0]["flops"] > 0
    assert "teacher" in result.table() and "mixed" in result.table()


def test_distilled_student_moves_towards_the_teacher(teacher):
    student = [{"seed": 0, "soft_weight": 1.0, "temperature": 2.0}]
    short = distill(dataclasses.replace(STUDENT_CONFIG, steps=1, eval_every=1), teacher, student,
                    teacher_model=TEACHER_CONFIG, verbose=False)
    long = distill(dataclasses.replace(STUDENT_CONFIG, steps=80), teacher, student,
                   teacher_model=TEACHER_CONFIG, verbose=False)
    assert long.students[0]["agreement"] > short.students[0]["agreement"] + 0.2
    steps, soft = long.population.curve(0, split="train", metric="data_loss")  # w = 1: the soft loss alone
    assert soft[-1] < soft[0]


def test_hard_distillation_term_is_the_loss_on_the_teachers_labels_by_hand():
    task = bucket_task(STUDENT_CONFIG)
    rng = np.random.default_rng(1)
    outputs, teacher_logits = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    labels = jnp.asarray([0, 3, 7, 9])
    ce = lambda targets: -jax.nn.log_softmax(outputs)[jnp.arange(4), targets]  # noqa: E731
    soft = losses.distillation_loss(outputs, teacher_logits, None, temperature=2.0)
    for weight, by_teacher in ((0.0, 1.0), (0.4, 0.5)):
        hp = {**task.default_hparams, "temperature": jnp.float32(2.0), "soft_weight": jnp.float32(weight),
              "teacher_labels": jnp.float32(by_teacher), "distill_steps": jnp.float32(10)}
        state = types.SimpleNamespace(hparams=hp, step=jnp.int32(0))
        got = distill_loss(task)(state, outputs, labels, (None, labels, teacher_logits))
        hard = (1 - by_teacher) * ce(labels) + by_teacher * ce(jnp.argmax(teacher_logits, -1))
        np.testing.assert_allclose(got, weight * soft + (1 - weight) * hard, rtol=1e-5)
        late = distill_loss(task)(types.SimpleNamespace(hparams=hp, step=jnp.int32(10)), outputs, labels,
                                  (None, labels, teacher_logits))
        np.testing.assert_allclose(late, ce(labels), rtol=1e-5)  # after distill_steps: the true labels only


def test_a_poisson_batchs_row_weights_are_not_read_as_labelled_rows():
    """With DP-SGD on Poisson batches the batch is (x, y, teacher logits, row weights): the weights
    (applied by the private step) must not switch the loss to its semi-supervised form."""
    task = bucket_task(dataclasses.replace(STUDENT_CONFIG, dp_clip_norm=1.0, dp_sampling="poisson"))
    rng = np.random.default_rng(2)
    outputs, teacher_logits = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    labels = jnp.asarray([1, 2, 5, 9])
    hp = {**task.default_hparams, "temperature": jnp.float32(2.0), "soft_weight": jnp.float32(0.5),
          "distill_steps": jnp.float32(10)}
    state = types.SimpleNamespace(hparams=hp, step=jnp.int32(0))
    weights = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    plain = distill_loss(task)(state, outputs, labels, (None, labels, teacher_logits))
    weighted = distill_loss(task)(state, outputs, labels, (None, labels, teacher_logits, weights))
    np.testing.assert_allclose(weighted, plain, rtol=1e-6)


def test_hard_distilled_student_learns_a_random_teachers_labels_not_the_true_ones():
    """A teacher that was never trained labels the digits at random (for them); a student trained on
    its labels (soft weight 0, teacher_labels 1) agrees with it and loses accuracy, next to the same
    student on the true labels in the same program."""
    model = bucket_task(TEACHER_CONFIG).model
    untrained = Teacher(model, {"params": model.init(jax.random.key(6), DATA["train"][0][:2])["params"]})
    config = dataclasses.replace(STUDENT_CONFIG, steps=120, eval_every=120)
    result = distill(config, untrained, [{"seed": 0, "soft_weight": 0.0},
                                         {"seed": 0, "soft_weight": 0.0, "teacher_labels": 1.0}], verbose=False)
    alone, hard = result.students
    assert len(result.population.states) == 1 and [alone["kind"], hard["kind"]] == ["alone", "distilled"]
    assert result.teacher["accuracy"] < 0.3
    assert hard["agreement"] > alone["agreement"] + 0.3
    assert hard["accuracy"] < alone["accuracy"] - 0.3
    assert "| teacher labels |" in result.table()


def test_teacher_given_as_flax_variables_and_model(teacher):
    plain = Teacher(bucket_task(TEACHER_CONFIG).model, {"params": jax.tree.map(np.asarray, teacher.state.params)})
    result = distill(STUDENT_CONFIG, plain, [{"seed": 0}], verbose=False)
    assert result.teacher["accuracy"] == pytest.approx(teacher.metrics["eval"]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("student, message", [
    ({"temperature": 0.0}, "student 0: field 'temperature' has value 0.0; allowed: a finite number > 0"),
    ({"temperature": -1.0}, "'temperature' has value -1.0"),
    ({"soft_weight": 1.5}, "student 0: field 'soft_weight' has value 1.5; allowed: a finite number >= 0.0 and <= 1.0"),
    ({"soft_weight": -0.1}, "'soft_weight' has value -0.1"),
    ({"distill_steps": 41}, "'distill_steps' has value 41"),
    ({"teacher_labels": 1.5}, "student 0: field 'teacher_labels' has value 1.5; allowed: a finite number >= 0.0"),
])
def test_bad_distillation_values_raise_before_compiling(teacher, student, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        distill(STUDENT_CONFIG, teacher, [student], teacher_model=TEACHER_CONFIG, verbose=False)


def test_teacher_with_other_classes_raises_before_compiling(teacher):
    five = Teacher(bucket_task(TEACHER_CONFIG).model.clone(num_classes=5),
                   {"params": {"hidden_0": teacher.state.params["hidden_0"],
                               "head": {"kernel": np.zeros((64, 5), np.float32), "bias": np.zeros(5, np.float32)}}})
    with pytest.raises(ValueError, match=r"teacher outputs have value 5 classes; allowed: 10"):
        distill(STUDENT_CONFIG, five, [{}], verbose=False)


def test_teacher_needs_its_model(teacher):
    with pytest.raises(ValueError, match="teacher_model has value None"):
        distill(STUDENT_CONFIG, teacher, [{}], verbose=False)


def test_interrupted_distillation_resumes_from_its_workdir_and_refuses_another_teacher(teacher, tmp_path,
                                                                                      run_interrupted, monkeypatch):
    from vhjax.population.engine import PopulationRunner

    students = [{"seed": 0, "soft_weight": 0.9, "temperature": 4.0}, {"seed": 1, "soft_weight": 0.0}]
    run = lambda workdir, who=teacher: distill(STUDENT_CONFIG, who, students, teacher_model=TEACHER_CONFIG,
                                               workdir=workdir, verbose=False)
    full = run(tmp_path / "full")
    run_interrupted(lambda: run(tmp_path / "cut"), at_step=20)  # killed after the checkpoint at step 20 of 40
    resumed = run(tmp_path / "cut")
    assert resumed.students == full.students
    for index in range(2):
        for a, b in zip(jax.tree.leaves(member_params(resumed.population, index)),
                        jax.tree.leaves(member_params(full.population, index))):
            np.testing.assert_array_equal(a, b)

    def no_training(self, *args):
        raise AssertionError("a finished workdir trained again")

    monkeypatch.setattr(PopulationRunner, "__call__", no_training)
    assert run(tmp_path / "cut").students == full.students  # restored, not retrained
    other = Teacher(bucket_task(TEACHER_CONFIG).model,
                    {"params": jax.tree.map(lambda a: np.asarray(a) * 1.01, teacher.state.params)})
    with pytest.raises(ValueError, match=r"other distill inputs \(teacher[.\[:]"):
        run(tmp_path / "cut", other)
    with pytest.raises(ValueError, match=r"other distill inputs \(students\[0\]\.temperature: stored 4\.0, now 2\.0\)"):
        distill(STUDENT_CONFIG, teacher, [{**students[0], "temperature": 2.0}, students[1]],
                teacher_model=TEACHER_CONFIG, workdir=tmp_path / "cut", verbose=False)
