"""`fit_population` and `fit`: buckets of equal static config, each one program trained by the one loop.

`fit(config)` is a population of one member (seed `config.seed`, its own data order); member i of
a population with `same_batches=False` and seed s is exactly the model `fit(seed=s)` trains. That is
the default when members set their `seed` (`same_batches='auto'`): a population of seeds is one
program whose member i is `fit(seed=i)`, initialisation and data order alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import diffs, parallel, privacy
from vhjax.compile_options import light_jit
from vhjax.augment import pipeline_from_config
from vhjax.config import TrainConfig
from vhjax.hparams import PER_MEMBER_NAMES, STATIC_ZERO_NAMES
from vhjax.memo import Memo
from vhjax.population.engine import ISOLATION_MODES, default_member_group
from vhjax.population.hooks import best_members, config_hooks
from vhjax.population.loop import LoopResult, run_loop
from vhjax.population.members import classifier_runner, init_population, make_population_eval, mesh_layout
from vhjax.population.state import PopulationState
from vhjax.train import poisson
from vhjax.train.state import TrainState
from vhjax.train.step import precise_statistics
from vhjax.train.task import Task, build_task, with_member_hparams
from vhjax.atomic_files import write_text_atomically
from vhjax.train.workdir import prepare_workdir, save_preprocessing
from vhjax.train.writers import TensorBoardWriter
from vhjax.validation import check_choice, check_int

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
MEMBER_ONLY_FIELDS = ("seed",)  # per member, never a bucket of its own


@dataclasses.dataclass
class PopulationResult:
    """Per-member results in the order the members were given, each bucket's final state and log."""

    members: list[dict]
    states: list[PopulationState]
    histories: list[list[dict]] = dataclasses.field(default_factory=list)  # per bucket: metrics log rows
    hook_states: list[dict] = dataclasses.field(default_factory=list)  # per bucket: each hook's final state
    # per bucket: the training-batch rows this process gathered on a mesh spanning processes (each
    # process its own share of every batch, `vhjax.population.feed`); None where the data is on device
    batch_rows: list[int | None] = dataclasses.field(default_factory=list)

    def best(self, metric: str = "accuracy", split: str = "eval", mode: str = "max") -> dict:
        """The best member that did not diverge; raises if every member diverged."""
        check_choice("mode", mode, ("max", "min"))
        recorded = sorted({f"{name}/{key}" for m in self.members for name, values in m.items()
                           if isinstance(values, dict) and name != "config" for key in values})
        if any(metric not in (m.get(split) or {}) for m in self.members if m["diverged_step"] is None):
            raise ValueError(f"split/metric has value {split + '/' + metric!r}; allowed: one every member "
                             f"records, among {recorded}")
        alive = [m for m in self.members if m["diverged_step"] is None and np.isfinite(m[split][metric])]
        if not alive:
            raise ValueError(f"every member of the population of {len(self.members)} diverged or has a non-finite "
                             f"{split} {metric}; there is no best member")
        key = lambda m: m[split][metric]
        return max(alive, key=key) if mode == "max" else min(alive, key=key)

    def curve(self, member: int, split: str = "eval", metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one member's logged metric: its learning curve."""
        bucket, position = self.members[member]["bucket"], self.members[member]["position"]
        rows = [row for row in self.histories[bucket] if row["split"] == split and metric in row]
        values = [np.reshape(row[metric], -1)[position] if np.ndim(row[metric]) else row[metric] for row in rows]
        return np.asarray([row["step"] for row in rows]), np.asarray(values, np.float64)

    def table(self, metric: str = "accuracy", split: str = "eval", top: int | None = None) -> str:
        """A markdown leaderboard, best first; diverged members last."""
        rows = sorted(self.members, key=lambda m: (m["diverged_step"] is not None, -m[split].get(metric, -np.inf)))
        rows = rows[:top] if top else rows
        names = sorted({k for m in rows for k in m["config"]})
        header = ["rank", "member", *names, f"{split} {metric}", "status"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, m in enumerate(rows, 1):
            status = "ok" if m["diverged_step"] is None else f"diverged at step {m['diverged_step']}"
            cells = [str(rank), str(m["member"]), *(format_value(m["config"].get(n, "")) for n in names),
                     f"{m[split].get(metric, float('nan')):.4f}", status]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclasses.dataclass
class FitResult:
    """The end of one run: final state, metrics on each split, and the logged history."""

    state: TrainState
    metrics: dict[str, dict[str, float]]
    history: list[dict]
    stopped_early: bool
    best_step: int | None
    # with DP-SGD (`dp_clip_norm`): the (epsilon, delta) spent, `vhjax.privacy.member_privacy`'s record
    privacy: dict | None = None


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)


def augment_entry(entry: Any) -> dict:
    """A config augmentation entry as a dict (tuples are (name, strength[, prob]))."""
    if isinstance(entry, Mapping):
        return dict(entry)
    return dict(zip(("name", "strength", "prob"), entry))


def with_config_loss_weights(config: TrainConfig, member: Mapping[str, Any]) -> Mapping[str, Any]:
    """A member's `loss_weights` completed by the config's (a member may give only the weights it changes)."""
    if "loss_weights" not in member or not isinstance(member["loss_weights"], Mapping):
        return member
    return {**member, "loss_weights": {**dict(config.loss_weights), **dict(member["loss_weights"])}}


def split_member(index: int, member: Mapping[str, Any]) -> tuple[dict, dict]:
    """(static config overrides, dynamic hyperparameters) of one member; unknown fields raise.

    Dynamic: the per-member names of `vhjax.hparams` (and optimizer_kwargs, which are injectable
    arrays); `augment` is split into its static names/options and its dynamic strengths and
    probabilities; `seed` is per member; everything else is static and starts a new bucket.
    """
    if not isinstance(member, Mapping):
        raise ValueError(f"member {index} has value {member!r}; allowed: a dict of config fields")
    static, dynamic = {}, {}
    for name, value in member.items():
        if name in MEMBER_ONLY_FIELDS:
            continue
        if name == "loss_weights":  # the loss terms are static, their weights arrays
            if not isinstance(value, Mapping) or not value:
                raise ValueError(f"member {index}: field 'loss_weights' has value {value!r}; allowed: a dict "
                                 "loss name -> weight, e.g. {'cross_entropy': 1.0, 'huber': 0.1}")
            static["loss_weights"] = {term: 0.0 for term in sorted(value)}
            dynamic["loss_weights"] = [value[term] for term in sorted(value)]
        elif name in PER_MEMBER_NAMES:
            dynamic[name] = value
        elif name == "optimizer_kwargs":
            dynamic.update(value)  # optimizer hyperparameters are injectable arrays
        elif name == "augment":
            # names and options (e.g. mode) are static; strengths and probabilities are arrays
            _, strengths, probs = pipeline_from_config(list(value))
            static["augment"] = tuple({**dict(e), "strength": 0.0, "prob": 1.0} for e in map(augment_entry, value))
            dynamic["aug_strength"], dynamic["aug_prob"] = strengths.tolist(), probs.tolist()
        elif name in CONFIG_FIELDS:
            static[name] = value
        else:
            allowed = ", ".join(sorted({*PER_MEMBER_NAMES, *CONFIG_FIELDS}))
            raise ValueError(f"member {index}: unknown field {name!r}; allowed: {allowed}")
    return static, dynamic


def bucket_members(config: TrainConfig, members: Sequence[Mapping[str, Any]]) -> list[tuple[TrainConfig, list[int]]]:
    """Group member indices by their static config: one bucket (compiled program) per group."""
    groups: dict[str, tuple[TrainConfig, list[int]]] = {}
    for index, member in enumerate(members):
        static, _ = split_member(index, member)
        bucket_config = dataclasses.replace(config, **static)
        key = json.dumps(bucket_config.to_dict(), sort_keys=True)
        groups.setdefault(key, (bucket_config, []))[1].append(index)
    return list(groups.values())


def stack_dynamic(indices: list[int], members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """name -> per-member values for the bucket; a member that omits a name gets None there, which
    `init_population` fills with the bucket's default (the config's value)."""
    dynamic = [split_member(i, members[i])[1] for i in indices]
    names = sorted({n for d in dynamic for n in d})
    stacked = {}
    for name in names:
        values = [d.get(name) for d in dynamic]
        if name == "arch":
            if any(v is None for v in values):
                index = indices[[v is None for v in values].index(True)]
                raise ValueError(f"member {index} sets no 'arch' while others in its bucket do; allowed: every "
                                 "member of a searchable model's bucket gives its arch")
            stacked[name] = jax.tree.map(lambda *leaves: np.stack(leaves), *values)
        elif name in ("update_scale", "update_start"):  # rows checked against the model by `init_population`
            stacked[name] = values
        else:
            stacked[name] = values if any(v is None for v in values) else np.asarray(values)
    return stacked


def resolve_same_batches(same_batches: bool | str, members: Sequence[Mapping[str, Any]]) -> bool:
    """'auto' -> False (each member its own seed's data order) when any member sets `seed`, else True."""
    if same_batches == "auto":
        return not any("seed" in member for member in members)
    return bool(same_batches)


def bucket_seeds(config: TrainConfig, indices: list[int], members: Sequence[Mapping[str, Any]]) -> list[int]:
    """Member i's seed: its own `seed` field, else config.seed + i."""
    seeds = []
    for index in indices:
        seed = members[index].get("seed", config.seed + index)
        check_int(f"member {index}: field 'seed'", seed, 0)
        seeds.append(int(seed))
    return seeds


_TASKS: Memo[Task] = Memo(8)  # per (config without seed, traced static zeros) and the user's objects in it
_PROGRAMS: Memo[tuple] = Memo(8)  # per (task, mesh) and (member group, isolation)
_PRECISE: Memo[Callable] = Memo(8)  # per task


def bucket_task(config: TrainConfig, member_names: Any = ()) -> Task:
    """The bucket's task, reused across calls whose configs differ at most in the seed (e.g. the
    generations of a search), so their jitted programs are compiled once. Validates on first build.
    `member_names`: the hyperparameters the members set (these are traced even if the config's are 0)."""
    traced = tuple(sorted(set(member_names) & set(STATIC_ZERO_NAMES)))
    objects = tuple(getattr(config, name) for name in ("model", "loss", "dataset")
                    if not isinstance(getattr(config, name), str))  # the user's own model, loss or data
    settings = (json.dumps({**config.to_dict(), "seed": None}, sort_keys=True), traced)
    return _TASKS.get(objects, lambda: with_member_hparams(build_task(config), traced), settings=settings)


def compiled_programs(task: Task, member_group: int | None, isolation: str = "optimistic",
                      mesh: Any = None) -> tuple[Any, Any]:
    """(chunk runner, population evaluation) of a task, jitted once per task, member grouping,
    isolation and mesh (a mesh with a data axis splits each member's batch over it)."""
    return _PROGRAMS.get((task, mesh), lambda: (
        classifier_runner(task, isolation=isolation, **mesh_layout(mesh, member_group=member_group)),
        light_jit(make_population_eval(task))), settings=(member_group, isolation))


def precise_members(task: Task) -> Callable:
    """Jitted `members -> members` with precise-BN statistics (`train.step.precise_statistics`),
    once per task (a bounded cache like `compiled_programs`)."""
    return _PRECISE.get((task,), lambda: jax.jit(jax.vmap(precise_statistics(task))))


def train_bucket(task: Task, population: PopulationState, workdir: Path | None, label: str, *,
                 mesh: Any = None, isolation: str = "optimistic", member_group: int | str | None = "auto",
                 verbose: bool = True, writers: Any = "auto",
                 hparams: Sequence[dict] | None = None, runner: Any = None,
                 train_data: Any = None, hooks: Sequence[Any] = (),
                 evaluate: Callable[[PopulationState], dict] | None = None) -> tuple[PopulationState, dict, LoopResult]:
    """One bucket through the one loop with the config's hooks; returns the final population (each
    member's best parameters when they are kept), its metrics per split and the loop's result.
    `runner` and `train_data` replace the classifier's chunk runner and its (x, y) training data
    (e.g. `vhjax.transfer.distill`: a step that also reads a teacher's logits); `hooks` run after
    the config's (e.g. `vhjax.ensemble` snapshots at cycle ends); `evaluate(population) -> {split:
    {metric: (P,)}}` replaces the classifier's evaluation on the eval / test splits, periodic and final
    (e.g. `vhjax.transfer.pretrain`: the pretraining loss on held-out inputs)."""
    config = task.config
    group = default_member_group(population.size, parallel.member_shards(mesh)) if member_group == "auto" \
        else member_group
    run_chunk, classify = compiled_programs(task, group, isolation, mesh)
    run_chunk = run_chunk if runner is None else runner
    if poisson.uses_poisson(task.config) and mesh is not None and parallel.spans_processes(mesh):
        raise ValueError("config field 'dp_sampling' has value 'poisson'; allowed: 'shuffle' on a mesh that spans "
                         "processes (each process gathers its rows of shuffled batches; Poisson batches are "
                         "gathered inside the program, on one process's devices)")
    if train_data is None:  # on a mesh spanning processes each process gathers its batch rows on the host
        to_array = np.asarray if mesh is not None and parallel.spans_processes(mesh) else jnp.asarray
        train_data = (to_array(task.train.x), to_array(task.train.y))
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    hooks = [*config_hooks(config), *hooks]
    outcome = run_loop(population, run_chunk, train_data, steps=config.steps, eval_every=config.eval_every,
                       evaluate=evaluate or (lambda p: {"eval": classify(p, *eval_data)}), hooks=hooks,
                       workdir=workdir,
                       checkpoint_every=config.checkpoint_every, mesh=mesh, label=label, verbose=verbose,
                       writers=writers, hparams=hparams)
    population = outcome.population
    final_population = population
    if "keep_best" in outcome.hook_states:
        final_population = best_members(population, outcome.hook_states["keep_best"])
    if "batch_stats" in final_population.members.model_state:  # the returned models are the evaluated ones
        final_population = final_population.replace(members=precise_members(task)(final_population.members))
    if evaluate is not None:
        final = evaluate(final_population)
    else:
        final = {"eval": classify(final_population, *eval_data)}
        if task.test is not None:
            final["test"] = classify(final_population, jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    final = {split: {k: np.asarray(v) for k, v in values.items()} for split, values in final.items()}
    return final_population, final, outcome


BUCKET_LABEL = "bucket {number}/{buckets} ({model}, {size} members) | "


@dataclasses.dataclass(frozen=True)
class BucketProgram:
    """What one bucket of `fit_population` trains: its population and, where not None, its own chunk
    runner and training data (see `train_bucket`). `extras`: per member of the bucket (in its order),
    fields shown with its hyperparameters and added to its result record's config (empty: none).
    `hooks`: loop hooks run after the config's; their final states are the result's `hook_states`.
    `evaluate`: where not None, `evaluate(population) -> {split: {metric: (P,)}}` replaces the
    classifier's evaluation (periodic, and the result records' final metrics)."""

    population: PopulationState
    runner: Any = None
    train_data: Any = None
    extras: Sequence[Mapping[str, Any]] = ()
    hooks: Sequence[Any] = ()
    evaluate: Callable[[PopulationState], dict] | None = None


def bucket_tasks(config: TrainConfig, members: Sequence[Mapping[str, Any]]) -> list[tuple[Task, list[int]]]:
    """(task, member indices) per bucket of equal static config, in first-seen order (`bucket_task`'s
    tasks: reused across calls with the same configs)."""
    return [(bucket_task(bucket_config, stack_dynamic(indices, members)), indices)
            for bucket_config, indices in bucket_members(config, members)]


def fit_population(config: TrainConfig, members: Sequence[Mapping[str, Any]], workdir: str | Path | None = None,
                   *, same_batches: bool | str = "auto", mesh: Any = "auto", isolation: str = "optimistic",
                   member_group: int | str | None = "auto", verbose: bool = True,
                   start: Callable[[Task, PopulationState], PopulationState] | None = None,
                   program: Callable[[Task, PopulationState, list[int]], BucketProgram] | None = None,
                   label: str = BUCKET_LABEL) -> PopulationResult:
    """Train every member; members with equal static config share one compiled, vmapped program.

    `members` are dicts of config fields: the per-member ones of `vhjax.hparams` (learning rate,
    weight decay, regularizer coefficients, dropout rate, optimizer hyperparameters, augmentation
    strengths and probabilities, loss weights, `arch` masks) and `seed` vary inside a program;
    any other field starts a new bucket. Member i's seed defaults to config.seed + i.
    The config's early stopping (`patience`), plateau and best-model keeping act per member.
    `same_batches`: True: every member trains on config.seed's data order (a fair comparison of
    hyperparameters); False: member i has its own seed's data order, so it is exactly
    `fit(seed=...)`'s model; 'auto' (default): False when any member sets `seed`, else True.
    All validation happens before the first compilation. `mesh`: 'auto' (default) shards members
    over every local device when there are several (any population size: padded with inert
    members; one member alone stays on one device), None keeps one device, a
    `vhjax.parallel.population_mesh` (or 'members=M,data=D')
    is used as given; a data axis splits each member's batch over its devices. `isolation`:
    'optimistic' or 'per_step' (see `engine.PopulationRunner`); `member_group`: members trained
    together on a CPU ('auto': a divisor of the bucket size near 8; None: all at once).
    `start(task, population)`: applied to every bucket's freshly initialised population before any
    training (e.g. `vhjax.transfer.fit_from` copies pretrained weights in); a workdir's checkpoint,
    when there is one, still wins.
    `program(task, population, indices)`: called for each bucket just before it trains (after
    `start`), with the member indices (into `members`) of the bucket; its `BucketProgram` replaces
    the population and may give the bucket its own chunk runner, training data and per-member extras
    (e.g. `vhjax.transfer.distill`: a teacher's logits and the students' temperatures). `label`: the
    progress line's prefix, formatted with number, buckets, model and size.
    """
    check_choice("isolation", isolation, ISOLATION_MODES)
    check_choice("same_batches", same_batches, (True, False, "auto"))
    if not members:
        raise ValueError("members has value []; allowed: at least one member (a dict of config fields)")
    same_batches = resolve_same_batches(same_batches, members)
    if member_group not in ("auto", None):
        check_int("member_group", member_group, 1)
    members = [with_config_loss_weights(config, member) for member in members]
    mesh = parallel.resolve_mesh(mesh, len(members))
    tasks = bucket_tasks(config, members)
    if any(task.config.dp_clip_norm is not None for task, _ in tasks):
        privacy.require_accounting()
    populations = [init_population(task, len(indices), stack_dynamic(indices, members),
                                   seeds=bucket_seeds(config, indices, members), same_batches=same_batches,
                                   data_seed=config.seed)
                   for task, indices in tasks]
    if start is not None:
        populations = [start(task, population) for (task, _), population in zip(tasks, populations)]
    root = prepare_workdir(workdir, config)
    if root is not None:
        record_members(root / "members.json", members)
    results: list[dict | None] = [None] * len(members)
    states, histories, hook_states, batch_rows = [], [], [], []
    for number, ((task, indices), population) in enumerate(zip(tasks, populations)):
        bucket = BucketProgram(population) if program is None else program(task, population, list(indices))
        extras = bucket.extras or [{} for _ in indices]
        if len(extras) != len(indices):
            raise ValueError(f"program's extras have value {len(extras)} entries; allowed: {len(indices)}, one per "
                             f"member of bucket {number}")
        configs = [{**dict(members[i]), **dict(extra)} for i, extra in zip(indices, extras)]
        text = label.format(number=number + 1, buckets=len(tasks), model=task.config.model, size=len(indices))
        bucket_dir = root / f"bucket_{number}" if root is not None else None
        if bucket_dir is not None:
            bucket_dir.mkdir(parents=True, exist_ok=True)
            save_preprocessing(bucket_dir, task)
        writers = [TensorBoardWriter(bucket_dir / "tensorboard", names=[f"member_{i:02d}" for i in indices])] \
            if bucket_dir is not None else None  # runs named by the member's index in `members`
        hparams = [{**static_hparams(task.config), **c} for c in configs]
        population, final, outcome = train_bucket(task, bucket.population, bucket_dir, text, mesh=mesh,
                                                  isolation=isolation, member_group=member_group, verbose=verbose,
                                                  writers=writers, hparams=hparams, runner=bucket.runner,
                                                  train_data=bucket.train_data, hooks=bucket.hooks,
                                                  evaluate=bucket.evaluate)
        states.append(population)
        histories.append(outcome.history)
        hook_states.append(outcome.hook_states)
        batch_rows.append(outcome.batch_rows)
        spent = privacy_spent(task, population)
        for index, record in member_records(number, indices, configs, population, final, outcome).items():
            results[index] = record if spent is None else {**record, "privacy": spent[record["position"]]}
    result = PopulationResult(results, states, histories, hook_states, batch_rows)
    if root is not None:
        write_text_atomically(root / "result.json",
                              json.dumps(results, default=lambda v: np.asarray(v).tolist(), indent=1))
    return result


def member_records(number: int, indices: Sequence[int], configs: Sequence[dict], population: PopulationState,
                   final: dict, outcome: LoopResult) -> dict[int, dict]:
    """Member index -> its result record (metrics per split, divergence, stop, best step) in bucket `number`."""
    best_step = outcome.hook_states.get("keep_best", {}).get("step")
    diverged_steps, stopped = np.asarray(population.diverged_step), np.asarray(population.stopped)  # one transfer each
    best_step = None if best_step is None else np.asarray(best_step)
    records = {}
    for position, (index, config) in enumerate(zip(indices, configs)):
        diverged = int(diverged_steps[position])
        records[index] = {
            "member": index, "bucket": number, "position": position, "config": config,
            **{split: {k: float(v[position]) for k, v in values.items()} for split, values in final.items()},
            "diverged_step": None if diverged < 0 else diverged,
            "stopped": bool(stopped[position]),
            "best_step": None if best_step is None or int(best_step[position]) < 0 else int(best_step[position]),
        }
    return records


def privacy_spent(task: Any, population: PopulationState) -> list[dict | None] | None:
    """Each member's (epsilon, delta) for the steps it trained (`vhjax.privacy.member_privacy`;
    None for a member that is not private), or None when the task does not train with DP-SGD."""
    hparams = population.members.hparams
    if "dp_clip_norm" not in hparams:
        return None
    config = task.config
    padded = poisson.padded_size(config, len(task.train)) if poisson.uses_poisson(config) else None
    return privacy.member_privacy(np.asarray(hparams["dp_clip_norm"]), np.asarray(hparams["noise_multiplier"]),
                                  np.asarray(population.members.step), batch_size=config.batch_size,
                                  train_size=len(task.train), delta=config.dp_delta,
                                  sampling=config.dp_sampling, max_batch_size=padded)


def static_hparams(config: TrainConfig) -> dict[str, Any]:
    """The config fields shown in the HParams dashboard next to each member's own values."""
    return {name: getattr(config, name) for name in ("model", "optimizer", "batch_size", "steps", "schedule")}


def record_members(path: Path, members: Sequence[Mapping[str, Any]]) -> None:
    """Write the member list; refuse to resume a workdir whose members differ."""
    text = json.dumps([dict(m) for m in members], default=lambda v: np.asarray(v).tolist(), indent=1)
    changed = diffs.differences(json.loads(path.read_text()), json.loads(text)) if path.exists() else []
    if changed:
        raise ValueError(f"workdir {str(path.parent)!r} holds a population with other members "
                         f"({diffs.describe(changed, 'members')}); use a new workdir or the same members to resume")
    write_text_atomically(path, text)


def fit(config: TrainConfig, workdir: str | Path | None = None, *, mesh: Any = None,
        verbose: bool = True) -> FitResult:
    """Train one model as `config` says; resume from `workdir` if it holds a checkpoint.

    The one loop with a population of one: early stopping keeps the best parameters, plateau
    scales the learning rate, a non-finite loss raises `FloatingPointError` naming the step.
    """
    task = bucket_task(config)
    if config.dp_clip_norm is not None:
        privacy.require_accounting()
    root = prepare_workdir(workdir, config)
    save_preprocessing(root, task)
    population = init_population(task, 1, seeds=[config.seed], same_batches=False)
    population, final, outcome = train_bucket(task, population, root, "", mesh=parallel.resolve_mesh(mesh),
                                              member_group=None, verbose=verbose,
                                              hparams=[static_hparams(config)])
    if not bool(population.alive[0]):
        step = int(population.diverged_step[0])
        raise FloatingPointError(
            f"non-finite training loss at step {step} (model {config.model!r}, learning_rate {config.learning_rate}); "
            "lower the learning rate or add gradient clipping (clip_norm)")
    metrics = {split: {k: float(v[0]) for k, v in values.items()} for split, values in final.items()}
    state = jax.tree.map(lambda leaf: leaf[0], population.members)
    best = outcome.hook_states.get("keep_best")
    best_step = int(best["step"][0]) if best is not None and int(best["step"][0]) >= 0 else None
    stopped = bool(outcome.population.stopped[0])
    spent = (privacy_spent(task, population) or [None])[0]
    result = FitResult(state, metrics, outcome.history, stopped, best_step, spent)
    if root is not None:
        record = {"metrics": metrics, "steps": int(state.step), "stopped_early": stopped, "best_step": best_step}
        write_text_atomically(root / "result.json", json.dumps(
            record if spent is None else {**record, "privacy": spent}, indent=2))
    return result
