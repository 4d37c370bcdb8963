"""Knowledge distillation: a population of students taught by one teacher, in one program per bucket.

    teacher = fit(teacher_config)                                   # or Flax variables, a workdir, ...
    result = distill(student_config, teacher, [
        {"temperature": t, "soft_weight": w, "seed": s}
        for t in (1.0, 4.0) for w in (0.0, 0.5, 0.9) for s in range(3)],   # w = 0: the student alone
        teacher_model=teacher_config)
    print(result.table())

The teacher's logits on the student's training set are computed once (batched, jitted) and carried
with the training data; a student's batch gathers its teacher logits by the same indices as its
inputs. Per example a student minimises

    w * T^2 * KL(softmax(teacher / T) || softmax(student / T))
      + (1 - w) * [(1 - h) * hard(student, label) + h * hard(student, argmax teacher)]

(`hard` is the config's loss, cross-entropy by default; the first term is `losses.distillation_loss`
with no labels). `temperature` T, `soft_weight` w, `teacher_labels` h (hard distillation: the weight
of the teacher's predicted labels in the hard term) and `distill_steps` are per-member
hyperparameters, so students over (T, w, h) share one compiled program. The "mixed" procedure
(distil, then fine-tune on the true labels only) is a member with `distill_steps=N` < `config.steps`:
after step N its w and h are 0. It is one continuous run: the optimizer state (and the learning-rate
schedule) carries on into the fine-tuning stage, nothing is reset. The teacher sees un-augmented inputs (offline distillation);
mixup/CutMix is refused (the teacher's logits would not match the mixed inputs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import losses, parallel
from vhjax.batching import map_in_batches
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.memo import Memo
from vhjax.models.cost import flops_per_example
from vhjax.models.utils import count_params, output_shape
from vhjax.population.engine import BatchIndices, PopulationRunner
from vhjax.population.fit import BucketProgram, PopulationResult, bucket_tasks, fit_population, with_config_loss_weights
from vhjax.population.members import batch_indices_from, classifier_runner, mesh_layout
from vhjax.population.state import PopulationState
from vhjax.train.poisson import uses_poisson
from vhjax.train.step import apply_model, chunk_batch_indices, make_train_step, per_example_loss
from vhjax.train.task import Task, call_keywords, load_split, preprocess_inputs, resolve_model
from vhjax.train.workdir import content_digest, record_inputs
from vhjax.transfer.weights import as_variables, load_source
from vhjax.validation import check_int, check_number, invalid

DISTILL_FIELDS = ("temperature", "soft_weight", "teacher_labels", "distill_steps")
DEFAULTS = {"temperature": 1.0, "soft_weight": 0.5, "teacher_labels": 0.0}
UNLABELED_FIELDS = ("unlabeled_weight", "confidence")  # per student, only with `distill(..., unlabeled=...)`
UNLABELED_DEFAULTS = {"unlabeled_weight": 1.0, "confidence": 0.0}
LABEL = "distill bucket {number}/{buckets} ({model}, {size} students) | "
UNLABELED_DRAW = 0x0A1B  # folded into a member's data key for its unlabelled rows' order


# ----------------------------------------------------------------------------- checks (before compiling)


def split_student(index: int, student: Mapping[str, Any], steps: int, unlabeled: bool = False
                  ) -> tuple[dict, dict]:
    """(the student's distillation values, its other config fields); raises on a value out of range.
    `unlabeled`: the call has unlabelled inputs, so `unlabeled_weight` and `confidence` are allowed."""
    if not isinstance(student, Mapping):
        raise invalid(f"student {index}", student, "a dict of config fields and temperature, soft_weight, "
                      "teacher_labels, distill_steps (and, with unlabeled inputs, unlabeled_weight, confidence)")
    if not unlabeled:
        for name in UNLABELED_FIELDS:
            if name in student:
                raise invalid(f"student {index}: field {name!r}", student[name],
                              "only with unlabelled inputs (distill(..., unlabeled=x))")
    names = DISTILL_FIELDS + (UNLABELED_FIELDS if unlabeled else ())
    fields = {**DEFAULTS, **(UNLABELED_DEFAULTS if unlabeled else {}), "distill_steps": steps,
              **{k: student[k] for k in names if k in student}}
    check_number(f"student {index}: field 'temperature'", fields["temperature"], 0.0, low_inclusive=False)
    check_number(f"student {index}: field 'soft_weight'", fields["soft_weight"], 0.0, 1.0)
    check_number(f"student {index}: field 'teacher_labels'", fields["teacher_labels"], 0.0, 1.0)
    check_int(f"student {index}: field 'distill_steps'", fields["distill_steps"], 0, steps)
    if unlabeled:
        check_number(f"student {index}: field 'unlabeled_weight'", fields["unlabeled_weight"], 0.0)
        check_number(f"student {index}: field 'confidence'", fields["confidence"], 0.0, 1.0)
    rest = {k: v for k, v in student.items() if k not in names}
    return {k: float(v) for k, v in fields.items()}, rest


def check_config(config: TrainConfig) -> None:
    if config.mixing is not None:
        raise invalid("config field 'mixing'", config.mixing, "None for distillation (the teacher's logits are "
                      "for the unmixed inputs)")


def output_classes(task: Task) -> int:
    """The student model's number of outputs (the classes the soft targets must cover)."""
    return output_shape(task.model, (2, *task.train.x.shape[1:]))[-1]


def teacher_output_shape(model: Any, variables: Mapping, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The teacher's output shape for one batch of 2 (shapes only); raises if the variables do not fit."""
    example = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), dict(variables))
    kwargs = {"train": False} if "train" in call_keywords(model) else {}
    try:
        return tuple(jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), shapes, example).shape)
    except Exception as error:
        raise ValueError(f"teacher variables do not fit teacher_model {type(model).__name__} on inputs of shape "
                         f"(batch, {', '.join(map(str, input_shape))}): {error}") from error


def check_teacher_classes(teacher_classes: int, student_classes: int, model_name: str) -> None:
    if teacher_classes != student_classes:
        raise ValueError(f"teacher outputs have value {teacher_classes} classes; allowed: {student_classes}, the "
                         f"classes of student model {model_name!r} (soft targets need one logit per student class)")


def unlabeled_inputs(task: Task, unlabeled: Any) -> np.ndarray:
    """The unlabelled inputs as the task's training inputs are: a split of the config's dataset (e.g.
    'train[10%:]'), a `Dataset` or an array (labels, if any, ignored), with the task's fitted
    preprocessing applied (outlier removal drops rows, as it does on the training split). Raises, naming
    the field, when they do not fit the task's inputs."""
    x = load_split(task.config, unlabeled).x if isinstance(unlabeled, str) else getattr(unlabeled, "x", unlabeled)
    try:
        x = np.asarray(x, np.float32)
    except (TypeError, ValueError) as error:
        raise invalid("unlabeled", type(unlabeled).__name__, f"inputs as an array (N, ...): {error}") from error
    if x.ndim < 2 or len(x) == 0 or not np.all(np.isfinite(x)):
        raise invalid("unlabeled", f"inputs of shape {x.shape}" + ("" if x.size == 0 or np.all(np.isfinite(x))
                                                                   else " with non-finite values"),
                      "finite inputs of shape (N, ...) with N >= 1")
    try:
        x = preprocess_inputs(task.preprocessing, x, drop_outliers=True)
    except Exception as error:
        raise invalid("unlabeled", f"inputs of shape {x.shape}", "the raw inputs of the config's dataset (the "
                      f"config's preprocessing could not be applied: {error})") from error
    if tuple(x.shape[1:]) != tuple(task.train.x.shape[1:]):
        raise invalid("unlabeled", f"inputs of shape {x.shape}",
                      f"inputs of shape (N, {', '.join(map(str, task.train.x.shape[1:]))}), the training inputs'")
    return x


def training_data(task: Task, teacher_logits: np.ndarray, unlabeled: np.ndarray | None = None,
                  unlabeled_logits: np.ndarray | None = None) -> tuple[jax.Array, ...]:
    """The students' training data: (x, y, teacher logits), and with unlabelled inputs their rows appended
    (label: the teacher's prediction) and a fourth array, True on the labelled rows."""
    x, y, logits = task.train.x, task.train.y, teacher_logits
    if unlabeled is None:
        return jnp.asarray(x), jnp.asarray(y), jnp.asarray(logits)
    labelled = np.concatenate([np.ones(len(x), bool), np.zeros(len(unlabeled), bool)])
    return (jnp.asarray(np.concatenate([x, unlabeled])),
            jnp.asarray(np.concatenate([y, unlabeled_logits.argmax(-1).astype(y.dtype)])),
            jnp.asarray(np.concatenate([logits, unlabeled_logits])), jnp.asarray(labelled))


# ----------------------------------------------------------------------------- the teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained model to distil from: `model.apply(variables, x)` gives its logits."""

    model: Any
    variables: dict

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return teacher_output_shape(self.model, self.variables, input_shape)

    def logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits on every example of `x`, in jitted batches (computed once, on the host as numpy)."""
        return np.asarray(batched_apply(self.model, self.variables, jnp.asarray(x), batch_size))


def teacher_fingerprint(teacher: Teacher) -> dict[str, str]:
    """What identifies a teacher in a workdir: its model's class and a digest of its variables."""
    model = teacher.model
    return {"model": f"{type(model).__module__}.{type(model).__qualname__}",
            "variables": content_digest(teacher.variables)}


def as_teacher(teacher: Any, teacher_model: Any = None, **source: Any) -> Teacher:
    """A `Teacher` from one, or from anything `load_source` takes plus its model (a flax Module, a
    registered model name, or the TrainConfig it was trained with)."""
    if isinstance(teacher, Teacher):
        return teacher
    if teacher_model is None:
        raise invalid("teacher_model", None, "the teacher's flax Module, registered model name or TrainConfig "
                      "(needed to run its variables)")
    if isinstance(teacher_model, TrainConfig):
        model = resolve_model(teacher_model)
    elif isinstance(teacher_model, str):
        model = resolve_model(TrainConfig(model=teacher_model))
    else:
        model = teacher_model
    return Teacher(model, as_variables(load_source(teacher, **source)))


def batched_apply(model: Any, variables: Mapping, x: jax.Array, batch_size: int) -> jax.Array:
    """`model.apply(variables, x, train=False)` over `x` in fixed-size batches (one jitted program)."""
    kwargs = {"train": False} if "train" in call_keywords(model) else {}

    @light_jit
    def run(variables, x):
        return map_in_batches(lambda xb: model.apply(variables, xb, **kwargs), x, batch_size)

    return run(dict(variables), x)


# ----------------------------------------------------------------------------- the member step


def distill_loss(task: Task):
    """`data_loss(state, outputs, targets, batch)` for `make_train_step`: batch = (x, y, teacher logits) or,
    with unlabelled rows, (x, y, teacher logits, labelled); the member's hparams hold temperature,
    soft_weight, teacher_labels, distill_steps and, with unlabelled rows, unlabeled_weight and confidence.
    An unlabelled row's label is the teacher's prediction; its loss is weighted by unlabeled_weight while
    the student is taught, and by 0 where the teacher's top probability is below `confidence`."""

    poisson = uses_poisson(task.config)  # a Poisson batch's last entry is each row's weight, not `labelled`

    def data_loss(state, outputs, targets, batch):
        hp = state.hparams
        teacher = batch[2]
        taught = state.step < hp["distill_steps"]
        weight = jnp.where(taught, hp["soft_weight"], 0.0)
        soft = losses.distillation_loss(outputs, teacher.astype(outputs.dtype), None, temperature=hp["temperature"])
        hard = per_example_loss(task, hp, outputs, targets)
        if "teacher_labels" in hp:  # a bucket where some student learns the teacher's labels
            by_teacher = jnp.where(taught, hp["teacher_labels"], 0.0)
            labels = jnp.argmax(teacher, axis=-1).astype(targets.dtype)
            hard = (1.0 - by_teacher) * hard + by_teacher * per_example_loss(task, hp, outputs, labels)
        loss = weight * soft + (1.0 - weight) * hard
        if len(batch) > 3 and not poisson:  # B labelled rows, then U unlabelled: mean over B + u * (sum over U) / U
            labelled = batch[3]
            share = jnp.mean(labelled.astype(jnp.float32))  # B / (B + U)
            confident = jax.nn.softmax(teacher.astype(jnp.float32), axis=-1).max(-1) >= hp["confidence"]
            unlabeled = jnp.where(taught & confident, hp["unlabeled_weight"], 0.0)
            loss = loss * jnp.where(labelled, 1.0 / share, unlabeled / (1.0 - share)).astype(loss.dtype)
        return loss

    return data_loss


_RUNNERS: Memo[PopulationRunner] = Memo(4)  # per task and size: a rerun (resume, other students) compiles nothing


def distill_runner(task: Task, size: int, mesh: Any = None, unlabeled: tuple[int, int] | None = None
                   ) -> PopulationRunner:
    """The engine's chunk runner of the distillation step on data (x, y, teacher logits[, labelled]), one
    per task, population size, mesh (None: one device; the teacher's logits are data, the students'
    values state) and `unlabeled` (None, or (unlabelled rows, unlabelled batch): each step then takes
    the labelled batch and that many unlabelled rows, `semi_supervised_batch_indices`)."""
    batch_indices = None if unlabeled is None else semi_supervised_batch_indices(task, *unlabeled)
    return _RUNNERS.get((task, mesh), lambda: classifier_runner(
        task, member_step=make_train_step(task, distill_loss(task)), batch_indices=batch_indices,
        **mesh_layout(mesh, size)), settings=(size, unlabeled))


def semi_supervised_batch_indices(task: Task, unlabeled_rows: int, unlabeled_batch: int) -> BatchIndices:
    """Each step's rows of the training data (labelled rows, then unlabelled ones): the labelled batch
    `population_batch_indices` would draw, then `unlabeled_batch` unlabelled rows in epochs of their
    own (a key folded from the member's data key): (length, B + U), or (length, P, B + U)."""
    config, labelled_rows = task.config, len(task.train)

    def sample(key: jax.Array, step: jax.Array, length: int) -> jax.Array:
        labelled = chunk_batch_indices(key, step, length, labelled_rows, config.batch_size, config.shuffle,
                                       config.drop_remainder)
        unlabeled = chunk_batch_indices(jax.random.fold_in(key, UNLABELED_DRAW), step, length, unlabeled_rows,
                                        unlabeled_batch, config.shuffle, config.drop_remainder)
        return jnp.concatenate([labelled, labelled_rows + unlabeled], axis=-1)

    return batch_indices_from(sample)


def used_fields(values: Sequence[dict]) -> list[str]:
    """The distillation values a bucket's program reads: all but `teacher_labels` where no student
    learns the teacher's labels (its program, state and checkpoints are then as they were before
    that value existed), and the unlabelled rows' values where the call has them."""
    return [name for name in DISTILL_FIELDS + UNLABELED_FIELDS if name in values[0]
            and (name != "teacher_labels" or any(v[name] > 0 for v in values))]


def with_distill_hparams(population: PopulationState, values: Sequence[dict]) -> PopulationState:
    """The population with each member's temperature, soft_weight, distill_steps and (where used,
    `used_fields`) teacher_labels in its hparams."""
    arrays = {name: jnp.asarray([v[name] for v in values], jnp.float32) for name in used_fields(values)}
    members = population.members
    return population.replace(members=members.replace(hparams={**members.hparams, **arrays}))


# ----------------------------------------------------------------------------- the report


def predict(task: Task, population: PopulationState, x: jax.Array) -> np.ndarray:
    """(P, N, classes) logits of every member on `x` (evaluation mode)."""
    batch_size = task.config.eval_batch_size

    def one(member):
        apply = lambda xb: apply_model(task, member.params, member.model_state, member.hparams, xb, train=False)[0]
        return map_in_batches(apply, x, batch_size)

    return np.asarray(light_jit(jax.vmap(one))(population.members))


def model_cost(model: Any, input_shape: Sequence[int], params: Any) -> dict[str, float]:
    """Parameter count and matmul FLOPs per example (NaN when the model cannot be traced with train=False)."""
    try:
        flops = flops_per_example(model, tuple(input_shape), count="matmul")
    except Exception:  # a user's Module without train=: the size is still known
        flops = float("nan")
    return {"params": count_params(params), "flops": float(flops)}


def kind(values: Mapping[str, float], steps: int) -> str:
    """'alone' (nothing from the teacher: no soft targets, no teacher labels, no unlabelled rows),
    'distilled' (taught throughout) or 'mixed' (distil, then fine-tune on the true labels)."""
    taught = values["soft_weight"] > 0 or values["teacher_labels"] > 0 or values.get("unlabeled_weight", 0) > 0
    if not taught or values["distill_steps"] == 0:
        return "alone"
    return "distilled" if values["distill_steps"] >= steps else "mixed"


@dataclasses.dataclass
class DistillResult:
    """The students (a `PopulationResult`, members in the order given) and a report against the teacher."""

    population: PopulationResult
    teacher: dict  # accuracy, agreement (1.0), params, flops on `split`
    students: list[dict]  # per student: kind, temperature, soft_weight, distill_steps, accuracy, agreement, ...
    split: str

    def best(self, which: str = "distilled", metric: str = "eval_accuracy") -> dict:
        """The student of this kind ('alone', 'distilled', 'mixed') with the highest `metric` (default
        the eval split's accuracy: with a separate test split, choose on eval and report test)."""
        rows = [row for row in self.students if row["kind"] == which]
        if not rows:
            raise ValueError(f"which has value {which!r}; allowed: a kind present among the students "
                             f"({sorted({r['kind'] for r in self.students})})")
        return max(rows, key=lambda row: row[metric])

    def table(self) -> str:
        """Markdown: the teacher, then every student with its accuracy against the alone students of its
        architecture (mean over them), its size and FLOPs."""
        semi = bool(self.students) and "unlabeled_weight" in self.students[0]
        extra = ["unlabelled weight", "confidence"] if semi else []
        header = ["model", "kind", "T", "soft weight", "teacher labels", "distil steps", *extra,
                  f"{self.split} accuracy", "vs alone", "agreement", "params", "FLOPs/example"]
        t = self.teacher
        blank = "| " * len(extra)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                 f"| teacher | teacher | | | | {blank}| {t['accuracy']:.4f} | | 1.0000 | {t['params']} "
                 f"| {t['flops']:.4g} |"]
        for row in self.students:
            alone = row["alone_accuracy"]
            delta = f"{row['accuracy'] - alone:+.4f}" if np.isfinite(alone) else "(no alone student)"
            semi_cells = f"| {row['unlabeled_weight']:g} | {row['confidence']:g} " if semi else ""
            lines.append(f"| student {row['member']} | {row['kind']} | {row['temperature']:g} | {row['soft_weight']:g} "
                         f"| {row['teacher_labels']:g} | {row['distill_steps']} {semi_cells}| {row['accuracy']:.4f} "
                         f"| {delta} | {row['agreement']:.4f} | {row['params']} | {row['flops']:.4g} |")
        return "\n".join(lines)


def student_rows(result: PopulationResult, values: Sequence[dict], tasks: Sequence[tuple[Task, list[int]]],
                 teacher_predictions: np.ndarray, split: str, steps: int) -> list[dict]:
    """One report row per student: accuracy on `split`, agreement with the teacher, size, FLOPs, and the
    mean accuracy of the alone students of its bucket (same architecture and training config)."""
    rows: list[dict] = [{} for _ in values]
    teacher_labels = teacher_predictions.argmax(-1)
    for number, (task, indices) in enumerate(tasks):
        state = result.states[number]
        data = task.test if split == "test" else task.eval
        agreement = (predict(task, state, jnp.asarray(data.x)).argmax(-1) == teacher_labels[None]).mean(axis=1)
        params = jax.tree.map(lambda leaf: leaf[0], state.members.params)
        cost = model_cost(task.model, task.train.x.shape[1:], params)
        for position, index in enumerate(indices):
            rows[index] = {"member": index, "bucket": number, "kind": kind(values[index], steps), **values[index],
                           "distill_steps": int(values[index]["distill_steps"]),
                           "accuracy": result.members[index][split]["accuracy"],
                           "eval_accuracy": result.members[index]["eval"]["accuracy"],
                           "agreement": float(agreement[position]), **cost}
        alone = [rows[i]["accuracy"] for i in indices if rows[i]["kind"] == "alone"]
        for index in indices:
            rows[index]["alone_accuracy"] = float(np.mean(alone)) if alone else float("nan")
    return rows


# ----------------------------------------------------------------------------- distill


def distill(config: TrainConfig, teacher: Any, students: Sequence[Mapping[str, Any]] = ({},), *,
            teacher_model: Any = None, source: Mapping[str, Any] | None = None, same_batches: bool | str = "auto",
            workdir: str | Path | None = None, verbose: bool = True, mesh: Any = "auto", unlabeled: Any = None,
            unlabeled_batch: int | None = None) -> DistillResult:
    """Train a population of students on `config`'s data with soft targets (or labels) from `teacher`.

    `teacher`: a `Teacher`, or anything `load_source` takes (a `fit` result, a population result or
    workdir, exported member, Flax variables) with `teacher_model` (its Module, registered model name or
    TrainConfig) and `source` (load_source's rank=/index=). Each student is a dict of config fields (as
    a `fit_population` member) plus `temperature` (> 0, default 1), `soft_weight` (the weight of the
    soft targets in [0, 1], default 0.5), `teacher_labels` (hard distillation: the weight, in [0, 1],
    of the teacher's predicted labels against the true ones in the hard term; default 0; with
    soft_weight 0, a student with neither is trained alone) and `distill_steps` (0 .. config.steps,
    default config.steps; fewer = the mixed procedure: the true labels only afterwards). Students with
    equal static config share one compiled program whatever their (T, w, h, steps).
    `workdir`: as `fit_population`'s (checkpoints after every evaluation, a rerun resumes, a finished
    run is restored), with the teacher (its model class and a digest of its variables) and the students'
    (T, w, h, steps) recorded in `workdir/distill.json`: another teacher or other values are refused.
    `mesh`: as `fit_population`'s (default 'auto': members sharded over the local devices).
    `unlabeled`: semi-supervised distillation: inputs without labels (a split of the config's dataset
    such as 'train[10%:]', a `Dataset` or an array; the task's preprocessing is applied) that the
    students learn from the teacher alone, their label being the teacher's prediction. Each step then
    takes the labelled batch (config.batch_size rows of the training split, as without them) and
    `unlabeled_batch` unlabelled rows (default config.batch_size); a student minimises the labelled
    batch's mean loss plus `unlabeled_weight` (per student, >= 0, default 1; 0: the labelled data only)
    times the unlabelled rows' mean loss, a row counting 0 where the teacher's top probability is below
    `confidence` (per student, in [0, 1], default 0). On unlabelled rows the loss is the same mix:
    soft_weight w of soft targets, 1 - w of the teacher's label (w = 0: pseudo-labelling).
    Everything, the teacher's classes and the unlabelled inputs' shape included, is checked before
    anything compiles.
    """
    check_config(config)
    if not students:
        raise invalid("students", [], "at least one student (a dict of config fields)")
    if unlabeled is not None and config.dp_clip_norm is not None:
        raise invalid("unlabeled", "inputs", "None with DP-SGD (config field 'dp_clip_norm' set): the step's "
                      "per-example gradients and the privacy records cover labelled rows only")
    if unlabeled_batch is not None:
        if unlabeled is None:
            raise invalid("unlabeled_batch", unlabeled_batch, "None without unlabeled inputs")
        check_int("unlabeled_batch", unlabeled_batch, 1)
    teacher = as_teacher(teacher, teacher_model, **dict(source or {}))
    split_up = [split_student(i, s, config.steps, unlabeled is not None) for i, s in enumerate(students)]
    values = [v for v, _ in split_up]
    members = [with_config_loss_weights(config, m) for _, m in split_up]
    for index, member in enumerate(members):
        if "mixing" in member and member["mixing"] is not None:
            raise invalid(f"student {index}: field 'mixing'", member["mixing"], "None for distillation")
    tasks = bucket_tasks(config, members)
    unlabeled_x: dict[int, np.ndarray] = {}  # per training set: the unlabelled inputs, preprocessed
    for task, _ in tasks:  # shapes only, before compiling
        check_teacher_classes(teacher.output_shape(task.train.x.shape[1:])[-1], output_classes(task),
                              str(task.config.model))
        if unlabeled is not None and id(task.train.x) not in unlabeled_x:
            unlabeled_x[id(task.train.x)] = unlabeled_inputs(task, unlabeled)
    per_step = None if unlabeled is None else (unlabeled_batch or config.batch_size)
    for x in unlabeled_x.values():
        if config.drop_remainder and len(x) < per_step:
            raise invalid("unlabeled", f"{len(x)} inputs", f"at least unlabeled_batch = {per_step} (or "
                          "drop_remainder=False in the config)")
    record_inputs(workdir, "distill", {"teacher": teacher_fingerprint(teacher),
                                       "students": [{k: v[k] for k in used_fields(values)} for v in values],
                                       **({} if unlabeled is None else {
                                           "unlabeled": [content_digest(x) for x in unlabeled_x.values()],
                                           "unlabeled_batch": per_step})})
    data: dict[int, tuple] = {}
    mesh = parallel.resolve_mesh(mesh, len(members))
    trained: list[tuple[Task, list[int]]] = []  # per bucket, as trained

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        key = id(task.train.x)
        if key not in data:  # once per training set
            extra = unlabeled_x.get(key)
            data[key] = training_data(task, teacher.logits(task.train.x, task.config.eval_batch_size), extra,
                                      None if extra is None else teacher.logits(extra, task.config.eval_batch_size))
        trained.append((task, indices))
        shape = None if per_step is None else (len(unlabeled_x[key]), per_step)
        return BucketProgram(with_distill_hparams(population, [values[i] for i in indices]),
                             runner=distill_runner(task, len(indices), mesh, shape), train_data=data[key],
                             extras=[values[i] for i in indices])

    result = fit_population(config, members, workdir, same_batches=same_batches, mesh=mesh, verbose=verbose,
                            program=program, label=LABEL)
    tasks = trained
    task0 = tasks[0][0]
    split = "test" if task0.test is not None else "eval"
    data = task0.test if split == "test" else task0.eval
    teacher_predictions = teacher.logits(data.x, task0.config.eval_batch_size)
    teacher_row = {"accuracy": float((teacher_predictions.argmax(-1) == data.y).mean()), "agreement": 1.0,
                   **model_cost(teacher.model, data.x.shape[1:], teacher.variables["params"])}
    rows = student_rows(result, values, tasks, teacher_predictions, split, config.steps)
    return DistillResult(result, teacher_row, rows, split)


__all__ = ["DISTILL_FIELDS", "DistillResult", "Teacher", "as_teacher", "distill", "distill_loss", "distill_runner"]
