"""`fit_population`: train many members, grouped into buckets of equal shapes, one program per bucket."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import parallel
from vhjax.augment import pipeline_from_config
from vhjax.config import TrainConfig
from vhjax.population.engine import default_member_chunk, init_population, make_population_eval
from vhjax.population.exploit import get_member_hparams, set_member_hparams
from vhjax.population.runner import ISOLATION_MODES, make_population_runner
from vhjax.population.state import PopulationState
from vhjax.train import controls
from vhjax.train.checkpoint import Checkpointer
from vhjax.train.loop import chunk_lengths, prepare_workdir, save_preprocessing
from vhjax.train.metrics_log import MetricsLog, print_progress
from vhjax.train.task import STATIC_ZERO_NAMES, Task, build_task, with_member_hparams

# Member fields that are arrays inside one compiled program. Every other TrainConfig field is
# static: members that differ in one are trained in different buckets (programs).
DYNAMIC_FIELDS = ("learning_rate", "weight_decay", "l1", "l2", "elastic_net", "dropout_rate",
                  "aug_strength", "aug_prob", "mixing_strength", "arch", "loss_weights")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclasses.dataclass
class PopulationResult:
    """Per-member results in the order the members were given, and each bucket's final state."""

    members: list[dict]
    states: list[PopulationState]

    def best(self, metric: str = "accuracy", split: str = "eval", mode: str = "max") -> dict:
        alive = [m for m in self.members if m["diverged_step"] is None]
        key = lambda m: m[split][metric]
        return max(alive, key=key) if mode == "max" else min(alive, key=key)

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
    """(static config overrides, dynamic hyperparameters) of one member; unknown fields raise."""
    static, dynamic = {}, {}
    for name, value in member.items():
        if name == "loss_weights":  # the loss terms are static, their weights arrays
            if not isinstance(value, Mapping) or not value:
                raise ValueError(f"member {index}: field 'loss_weights' has value {value!r}; allowed: a dict "
                                 "loss name -> weight, e.g. {'cross_entropy': 1.0, 'huber': 0.1}")
            static["loss_weights"] = {term: 0.0 for term in sorted(value)}
            dynamic["loss_weights"] = [value[term] for term in sorted(value)]
        elif name in DYNAMIC_FIELDS:
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
            allowed = ", ".join(sorted({*DYNAMIC_FIELDS, *CONFIG_FIELDS}))
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
    """name -> per-member values for the bucket; members that omit a name get the bucket default."""
    dynamic = [split_member(i, members[i])[1] for i in indices]
    names = sorted({n for d in dynamic for n in d})
    missing = [(indices[j], n) for j, d in enumerate(dynamic) for n in names if n not in d]
    if missing:
        index, name = missing[0]
        raise ValueError(f"member {index}: sets no {name!r} while others in its bucket do; give every "
                         "member of a bucket the same hyperparameter names")
    stacked = {}
    for name in names:
        values = [d[name] for d in dynamic]
        stacked[name] = jax.tree.map(lambda *leaves: np.stack(leaves), *values) if name == "arch" else np.asarray(values)
    return stacked


def fit_population(config: TrainConfig, members: Sequence[Mapping[str, Any]], workdir: str | Path | None = None,
                   *, same_batches: bool = True, mesh: Any = None, isolation: str = "optimistic",
                   verbose: bool = True) -> PopulationResult:
    """Train every member; members with equal static config share one compiled, vmapped program.

    `members` are dicts of config fields: dynamic ones (learning rate, weight decay, regularizer
    coefficients, dropout rate, optimizer hyperparameters, augmentation strengths and
    probabilities, loss weights, `arch` masks) vary inside a program; any other field starts a
    new bucket.
    All validation happens before the first compilation. With a `mesh`
    (vhjax.parallel.population_mesh), members are sharded over its devices. `isolation`:
    'optimistic' (check divergence once per chunk, replay a chunk in which a member diverged) or
    'per_step' (check every step: one copy of the state in memory instead of two, slower).
    """
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation={isolation!r}; allowed: {', '.join(map(repr, ISOLATION_MODES))}")
    if not members:
        raise ValueError("members is empty; give at least one member (a dict of config fields)")
    members = [with_config_loss_weights(config, member) for member in members]
    buckets = bucket_members(config, members)
    tasks = [(bucket_task(bucket_config, stack_dynamic(indices, members)), indices)
             for bucket_config, indices in buckets]
    populations = [init_population(task, jax.random.key(bucket_config.seed), len(indices),
                                   stack_dynamic(indices, members), same_batches=same_batches)
                   for (task, indices), (bucket_config, _) in zip(tasks, buckets)]
    root = prepare_workdir(workdir, config)
    if root is not None:
        record_members(root / "members.json", members)
    results: list[dict | None] = [None] * len(members)
    states = []
    for number, ((task, indices), population) in enumerate(zip(tasks, populations)):
        label = f"bucket {number + 1}/{len(tasks)} ({task.config.model}, {len(indices)} members)"
        bucket_dir = root / f"bucket_{number}" if root is not None else None
        if bucket_dir is not None:
            bucket_dir.mkdir(parents=True, exist_ok=True)
            save_preprocessing(bucket_dir, task)
        population, final = train_bucket(task, population, bucket_dir, label, mesh=mesh, isolation=isolation,
                                         verbose=verbose)
        states.append(population)
        for position, index in enumerate(indices):
            diverged = int(population.diverged_step[position])
            results[index] = {
                "member": index, "bucket": number, "config": dict(members[index]),
                **{split: {k: float(v[position]) for k, v in values.items()} for split, values in final.items()},
                "diverged_step": None if diverged < 0 else diverged,
            }
    result = PopulationResult(results, states)
    if root is not None:
        (root / "result.json").write_text(json.dumps(results, default=lambda v: np.asarray(v).tolist(), indent=1))
    return result


def record_members(path: Path, members: Sequence[Mapping[str, Any]]) -> None:
    """Write the member list; refuse to resume a workdir whose members differ."""
    text = json.dumps([dict(m) for m in members], default=lambda v: np.asarray(v).tolist(), indent=1)
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        raise ValueError(f"workdir {str(path.parent)!r} holds a population with other members; "
                         "use a new workdir or the same members to resume")
    path.write_text(text)


def summary_line(label: str, step: int, total: int, member_steps_per_second: float,
                 evaluation: Mapping[str, np.ndarray], alive: np.ndarray) -> str:
    accuracy = np.where(alive, evaluation["accuracy"], np.nan)
    return (f"{label} | step {step}/{total} | {member_steps_per_second:9.0f} member-steps/s | "
            f"eval accuracy best {np.nanmax(accuracy):.4f} median {np.nanmedian(accuracy):.4f} | "
            f"diverged {int((~alive).sum())}")


_TASKS: dict[tuple[str, tuple[str, ...]], Task] = {}  # (config without seed, traced static zeros)
_PROGRAMS: dict[tuple[int, int | None, str], tuple] = {}  # (task id, member chunk, isolation)
_CACHE_SIZE = 8


def _remember(cache: dict, key: Any, make: Any) -> Any:
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def bucket_task(config: TrainConfig, member_names: Any = ()) -> Task:
    """The bucket's task, reused across calls whose configs differ at most in the seed (e.g. the
    generations of a search), so their jitted programs are compiled once. Validates on first build.
    `member_names`: the hyperparameters the members set (these are traced even if the config's are 0)."""
    traced = tuple(sorted(set(member_names) & set(STATIC_ZERO_NAMES)))
    key = (json.dumps({**config.to_dict(), "seed": None}, sort_keys=True), traced)
    return _remember(_TASKS, key, lambda: with_member_hparams(build_task(config), traced))


def compiled_programs(task: Task, member_chunk: int | None, isolation: str = "optimistic") -> tuple[Any, Any]:
    """(chunk runner, population evaluation) of a task, jitted once per task, member grouping and isolation."""
    key = (id(task), member_chunk, isolation)
    if key in _PROGRAMS and _PROGRAMS[key][0] is not task:  # an id reused by a newer task
        del _PROGRAMS[key]
    _, run_chunk, evaluate = _remember(_PROGRAMS, key, lambda: (
        task, make_population_runner(task, member_chunk, isolation=isolation),
        jax.jit(make_population_eval(task))))
    return run_chunk, evaluate


@dataclasses.dataclass
class MemberPlateau:
    """Reduce-LR-on-plateau per member: one plateau state per member on the monitored metric, and
    each member's learning rate = its base learning rate x its own scale."""

    control: controls.Control
    state: controls.PlateauState  # leaves of shape (P,)
    base_learning_rate: jax.Array  # (P,)

    @classmethod
    def create(cls, config: TrainConfig, population: PopulationState, record: dict | None) -> "MemberPlateau | None":
        if not config.plateau_patience:
            return None
        control = controls.reduce_on_plateau(mode=config.monitor_mode, factor=config.plateau_factor,
                                             patience=config.plateau_patience)
        if record and "plateau" in record:  # resuming: the saved states and base rates
            saved = record["plateau"]
            return cls(control, controls.restore_plateau(control, saved["state"]),
                       jnp.asarray(saved["base_learning_rate"], jnp.float32))
        state = jax.vmap(lambda _: control.init())(jnp.arange(population.size))
        return cls(control, state, get_member_hparams(population)["learning_rate"])

    def update(self, population: PopulationState, monitored: np.ndarray) -> PopulationState:
        self.state = jax.vmap(self.control.update)(self.state, jnp.asarray(monitored))
        return set_member_hparams(population, learning_rate=self.base_learning_rate * self.state.scale)

    def record(self) -> dict:
        return {"state": [np.asarray(v).tolist() for v in self.state],
                "base_learning_rate": np.asarray(self.base_learning_rate).tolist()}


def train_bucket(task: Task, population: PopulationState, workdir: Path | None, label: str, *,
                 mesh: Any = None, isolation: str = "optimistic", verbose: bool = True
                 ) -> tuple[PopulationState, dict]:
    """The chunked loop for one bucket: scan-compiled steps, evaluation, checkpoints, resume."""
    config = task.config
    log = MetricsLog(workdir / "metrics.jsonl" if workdir else None)
    checkpointer, record = None, None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(workdir / "checkpoints")
        if checkpointer.latest_step() is not None:
            population, record = checkpointer.restore(checkpointer.latest_step(), population)
            log.truncate_after(int(population.members.step.max()))
            if verbose:
                print_progress(f"{label}: resumed from {workdir} at step {int(population.members.step.max())}")
    train_data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    if mesh is not None:
        population = parallel.shard_members(population, mesh)
        train_data, eval_data = parallel.replicate(train_data, mesh), parallel.replicate(eval_data, mesh)
    run_chunk, evaluate = compiled_programs(task, default_member_chunk(population.size) if mesh is None else None,
                                            isolation)
    step = int(checkpointer.latest_step() or 0) if checkpointer else 0
    plateau = MemberPlateau.create(config, population, record)
    for length in chunk_lengths(step, config.steps, config.eval_every):
        tick = time.perf_counter()
        population, chunk_metrics = run_chunk(population, train_data, length)
        evaluation = {k: np.asarray(v) for k, v in evaluate(population, *eval_data).items()}
        rate = population.size * length / (time.perf_counter() - tick)
        step += length
        alive = np.asarray(population.alive)
        train_summary = {"loss": np.asarray(chunk_metrics["loss"]).mean(axis=0), "member_steps_per_second": rate}
        if plateau is not None:  # reduce each member's learning rate on a plateau of its monitored metric
            population = plateau.update(population, evaluation[config.monitor])
            train_summary["learning_rate_scale"] = np.asarray(plateau.state.scale)
        log.write(step, "train", train_summary)
        log.write(step, "eval", {**evaluation, "alive": alive, "diverged_step": np.asarray(population.diverged_step)})
        if checkpointer is not None:
            checkpointer.save(step, population, {"step": step, **({"plateau": plateau.record()} if plateau else {})})
        if verbose:
            print_progress(summary_line(label, step, config.steps, rate, evaluation, alive))
    final = {"eval": evaluate(population, *eval_data)}
    if task.test is not None:
        final["test"] = evaluate(population, jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    if checkpointer is not None:
        checkpointer.close()
    return population, {split: {k: np.asarray(v) for k, v in values.items()} for split, values in final.items()}
