"""Ensembles trained on the one engine: bagging, boosting (SAMME), snapshot ensembles, adversarial
training with a per-member epsilon, and deep ensembles.

Every one of them is `fit_population` (`vhjax.population.fit`), so it gets the engine's chunks,
checkpoints and resume (`workdir`), divergence isolation (a diverging member is frozen and left
out of the ensemble, not fatal), hooks, precise BN, and the config's losses and augmentation
(`config={...}`: extra `TrainConfig` fields). `train_members` turns (model, x, y) and the old
options into a `TrainConfig` on those arrays (evaluated on them) plus one member dict per member,
and gives each bucket its own program (`BucketProgram`): the classifier step, or the step on
FGSM/PGD examples, and a batch-index function reading extra per-member state. Per member:
`learning_rate`, `weight_decay`, `dropout_rate`, the seed (initialisation and data order), and
- bagging: `rows`, its bootstrap sample (batches are epochs over those rows);
- boosting: `sample_logits`, the log of its example weights (batches drawn with them); one
  `fit_population` per round;
- adversarial training: `epsilon`, its attack budget (all budgets share one compiled program);
- snapshot ensembles: the `cosine_cycles` learning-rate schedule, and a loop hook that keeps the
  members' variables at every cycle end (chunks end there).
Deep ensembles are plain `fit_population` members that differ only in their seed (`deep_ensemble`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim, parallel, privacy, validation
from vhjax.config import TrainConfig
from vhjax.data import Dataset, from_arrays
from vhjax.ensemble.members import MemberGroup
from vhjax.ensemble.model import Ensemble
from vhjax.inspect import attacks
from vhjax.memo import Memo
from vhjax.population.engine import PopulationRunner
from vhjax.population.fit import BucketProgram, PopulationResult, fit_population, precise_members
from vhjax.population.loop import Hook, Report
from vhjax.population.members import classifier_runner, mesh_layout
from vhjax.population.state import PopulationState
from vhjax.train.step import apply_model, chunk_batch_indices, make_train_step
from vhjax.train.workdir import record_inputs
from vhjax.train.task import Task


@dataclasses.dataclass
class Trained:
    """A trained group (its members that did not diverge), its snapshots (one stacked variables
    tree per cycle end, diverged members left out), the mean training loss per chunk (chunks, M),
    the engine's result, {member name: step} of the members that diverged, and per snapshot the
    positions (into the members) it holds."""

    group: MemberGroup
    snapshots: list[dict]
    loss: np.ndarray
    result: PopulationResult | None = None
    diverged: dict[str, int] = dataclasses.field(default_factory=dict)
    snapshot_members: list[np.ndarray] = dataclasses.field(default_factory=list)  # per snapshot: positions kept


def _positive_int(name: str, value: Any) -> None:
    validation.check_int(name, value, minimum=1)


def _per_member(name: str, value: Any, size: int, *, minimum: float = 0.0, strict: bool = False) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, np.float64), (size,)) if np.ndim(value) == 0 else np.asarray(value)
    if array.shape != (size,):
        raise ValueError(f"{name} has shape {np.shape(value)}; allowed: a scalar or one value per member ({size},)")
    bad = ~np.isfinite(array) | (array <= minimum if strict else array < minimum)
    if np.any(bad):
        i = int(np.argmax(bad))
        op = ">" if strict else ">="
        raise ValueError(f"{name} has value {float(array[i])!r} at member {i}; allowed: finite values {op} {minimum}")
    return array.astype(np.float32)


def cosine_cycles(steps_per_cycle: int) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate multiplier of snapshot ensembles (Huang et al. 2017): cosine from 1 to 0 in each
    cycle; the `optim` schedule 'cosine_cycles' (what `snapshot_ensemble` trains with)."""
    _positive_int("steps_per_cycle", steps_per_cycle)
    return optim.make_schedule("cosine_cycles", {"steps_per_cycle": steps_per_cycle})


def seed_of(key: jax.Array) -> int:
    """A config seed drawn from a PRNG key (the old API takes keys, configs take seeds)."""
    return int(jax.random.randint(key, (), 0, 2 ** 31 - 1))


# ----------------------------------------------------------------------------- per-member programs


def table_batch_indices(task: Task) -> Callable:
    """Batch indices (length, P, B): member i's epochs run over its own rows (`hparams['rows']`)."""
    config = task.config

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members

        def one(data_key, step, rows):
            positions = chunk_batch_indices(data_key, step, length, rows.shape[0], config.batch_size,
                                            config.shuffle, config.drop_remainder)
            return rows[positions]

        return jnp.swapaxes(jax.vmap(one)(members.data_key, members.step, members.hparams["rows"]), 0, 1)

    return indices


def weighted_batch_indices(task: Task) -> Callable:
    """Batch indices (length, P, B): member i's examples drawn with its weights (`hparams['sample_logits']`,
    log-weights), with replacement; step s's batch is a function of (data key, s)."""
    size = task.config.batch_size

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members

        def one(data_key, step, logits):
            draw = lambda s: jax.random.categorical(jax.random.fold_in(data_key, s), logits, shape=(size,))
            return jax.vmap(draw)(step + jnp.arange(length))

        return jnp.swapaxes(jax.vmap(one)(members.data_key, members.step, members.hparams["sample_logits"]), 0, 1)

    return indices


def adversarial_step(task: Task, attack: str, norm: str, attack_steps: int) -> Callable:
    """The classifier step on FGSM or PGD examples of the member's budget `hparams['epsilon']` (0:
    clean), attacked in evaluation mode with the member's current weights."""
    train_step = make_train_step(task)

    def step(state, batch):
        x, y = batch[0], batch[1]
        logits = lambda inputs: apply_model(task, state.params, state.model_state, state.hparams, inputs,
                                            train=False)[0]
        epsilon = state.hparams["epsilon"]
        if attack == "fgsm":
            x = attacks.fgsm(logits, x, y, epsilon, norm=norm)
        else:
            key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 0xA77)
            x = attacks.pgd(logits, x, y, epsilon, norm=norm, steps=attack_steps, key=key)
        return train_step(state, (jax.lax.stop_gradient(x), y, *batch[2:]))

    return step


_RUNNERS: Memo[PopulationRunner] = Memo(8)


def member_runner(task: Task, size: int, sampling: str, adversarial: tuple | None,
                  mesh: Any = None) -> PopulationRunner:
    """The bucket's chunk runner, built once per (task, size, sampling, attack, mesh): boosting rounds
    and repeated calls on the same arrays reuse its compilation."""

    def build() -> PopulationRunner:
        step = make_train_step(task) if adversarial is None else adversarial_step(task, *adversarial)
        drawn = {"tables": table_batch_indices, "weights": weighted_batch_indices}
        indices = drawn[sampling](task) if sampling in drawn else None  # 'uniform': the classifier's own batches
        return classifier_runner(task, batch_indices=indices, member_step=step, **mesh_layout(mesh, size))

    return _RUNNERS.get((task, mesh), build, settings=(size, sampling, adversarial))


def with_extra_state(population: PopulationState, extra: Mapping[str, np.ndarray]) -> PopulationState:
    """The members with `extra` (name -> (P, ...) arrays) added to their hparams."""
    members = population.members
    arrays = {name: jnp.asarray(value) for name, value in extra.items()}
    return population.replace(members=members.replace(hparams={**members.hparams, **arrays}))


def snapshot_hook(every: int, count: int) -> Hook:
    """Keep every member's variables at steps every, 2 * every, ..., count * every (chunks end there);
    the state (count, P, ...) is checkpointed with the population, so a resumed run keeps them."""

    def init(population: PopulationState) -> dict:
        members = population.members
        empty = lambda leaf: jnp.zeros((count, *leaf.shape), leaf.dtype)
        return {"params": jax.tree.map(empty, members.params),
                "model_state": jax.tree.map(empty, members.model_state)}

    def update(state: dict, population: PopulationState, report: Report):
        if report.step % every or not 0 < report.step <= count * every:
            return state, population
        index = report.step // every - 1
        put = lambda stack, leaf: stack.at[index].set(leaf)
        members = population.members
        return {"params": jax.tree.map(put, state["params"], members.params),
                "model_state": jax.tree.map(put, state["model_state"], members.model_state)}, population

    return Hook("snapshots", init, update)


# ----------------------------------------------------------------------------- train_members


_DATASETS: Memo[Dataset] = Memo(8)


def arrays_dataset(model: Any, x: np.ndarray, y: np.ndarray) -> Dataset:
    """(x, y) as a Dataset with the model's number of outputs as its classes (at least max(y) + 1),
    one object per (x, y, model), so the engine's task and programs are reused across calls (the
    rounds of boosting, repeated ensembles on the same arrays)."""

    def build() -> Dataset:
        outputs = jax.eval_shape(lambda v: model.apply(v, jnp.asarray(x[:2])),
                                 jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x[:2])))
        classes = max(int(outputs.shape[-1]), int(y.max(initial=0)) + 1)
        return from_arrays(x, y, num_classes=classes)

    return _DATASETS.get((x, y, model), build)


def ensemble_config(model: Any, x: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int, optimizer: str,
                    momentum: float, seed: int, eval_every: int, schedule: str, schedule_kwargs: Mapping,
                    fields: Mapping[str, Any] | None) -> TrainConfig:
    """The TrainConfig of `train_members`: (x, y) as the training and evaluation split, the model
    object, 'adamw' (Adam with decoupled weight decay) or 'momentum' SGD, and `fields` on top."""
    name, kwargs = ("adamw", {}) if optimizer == "adam" else ("momentum", {"momentum": float(momentum)})
    config = TrainConfig(dataset=arrays_dataset(model, x, y), train_split="train", eval_split="train", model=model,
                         steps=steps, batch_size=batch_size, optimizer=name, optimizer_kwargs=kwargs, seed=seed,
                         eval_every=eval_every, eval_metrics=("loss", "accuracy"), schedule=schedule,
                         schedule_kwargs=dict(schedule_kwargs))
    if fields:
        if not isinstance(fields, Mapping):
            raise ValueError(f"config has value {fields!r}; allowed: a dict of TrainConfig fields")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"config has fields {unknown}; allowed: TrainConfig fields ({', '.join(sorted(known))})")
        config = dataclasses.replace(config, **dict(fields))
    return config


def check_sampling(index_tables: Any, example_weights: Any, size: int, n: int) -> tuple[str, dict]:
    """('tables' | 'weights' | 'uniform', the per-member extra state it reads), checked."""
    if index_tables is not None and example_weights is not None:
        raise ValueError("give index_tables or example_weights, not both")
    if index_tables is not None:
        tables = np.asarray(index_tables)
        if tables.ndim != 2 or tables.shape[0] != size or tables.size == 0 or tables.min() < 0 or tables.max() >= n:
            raise ValueError(f"index_tables has shape {tables.shape}; allowed: ({size}, K) row ids in [0, {n})")
        return "tables", {"rows": tables.astype(np.int32)}
    if example_weights is not None:
        weights = np.asarray(example_weights, np.float64)
        if weights.shape != (size, n) or np.any(weights < 0) or not np.all(weights.sum(1) > 0):
            raise ValueError(f"example_weights has shape {weights.shape}; allowed: ({size}, {n}) "
                             "non-negative weights, each row with a positive sum")
        with np.errstate(divide="ignore"):
            logits = np.log(weights / weights.sum(1, keepdims=True))
        return "weights", {"sample_logits": np.maximum(logits, -1e30).astype(np.float32)}
    return "uniform", {}


def train_members(model: Any, x: Any, y: Any, *, size: int, key: jax.Array, steps: int, batch_size: int = 100,
                  learning_rate: Any = 1e-2, optimizer: str = "adam", momentum: float = 0.9, weight_decay: Any = 0.0,
                  dropout_rate: Any = 0.0, index_tables: Any = None, example_weights: Any = None,
                  epsilon: Any = None, attack: str = "fgsm", norm: str = "linf", attack_steps: int = 5,
                  schedule: str = "constant", schedule_kwargs: Mapping[str, Any] | None = None,
                  snapshot_every: int | None = None, log_every: int = 50, names: Sequence[str] | None = None,
                  model_spec: dict | None = None, workdir: str | Path | None = None,
                  config: Mapping[str, Any] | None = None, verbose: bool = False,
                  require_alive: bool = True, mesh: Any = "auto") -> Trained | None:
    """Train `size` members of `model` on (x, y) with `fit_population` and return them as a MemberGroup.

    Per member (scalar or (M,)): `learning_rate`, `weight_decay`, `dropout_rate`, `epsilon`.
    Data per member: `index_tables` (M, K) runs each member's epochs over its own rows (bagging);
    `example_weights` (M, N) draws its batches with those probabilities (boosting by resampling);
    else every member has its own data order. `epsilon`: adversarial training on FGSM
    (`attack='fgsm'`) or PGD examples of that budget under `norm` (0 = clean training).
    `schedule`/`schedule_kwargs`: an `optim` schedule (a learning-rate multiplier); `snapshot_every`
    keeps the members' variables at every multiple of it. Chunks of `log_every` steps (or
    `snapshot_every`) end in an evaluation on (x, y). `workdir`: checkpoints, resume. `config`:
    more TrainConfig fields (augment, loss, clip_norm, precise_bn_batches, ...). Diverging members
    are isolated by the engine and left out of the group (`Trained.diverged`); if all diverge,
    ValueError (None when not `require_alive`). `mesh`: as `fit_population`'s ('auto': the members
    sharded over every local device when there are several). Everything is checked before compiling.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    _positive_int("size", size)
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("log_every", log_every)
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape}; allowed: ({n},) labels for x of shape {x.shape}")
    if batch_size > n:
        raise ValueError(f"batch_size has value {batch_size}; allowed: at most the {n} training examples")
    validation.check_choice("optimizer", optimizer, ("adam", "sgd"))
    lr = _per_member("learning_rate", learning_rate, size, strict=True)
    wd = _per_member("weight_decay", weight_decay, size)
    rate = _per_member("dropout_rate", dropout_rate, size)
    if np.any(rate >= 1):
        raise ValueError(f"dropout_rate has value {rate.tolist()}; allowed: [0, 1)")
    eps = None if epsilon is None else _per_member("epsilon", epsilon, size)
    adversarial = None
    if eps is not None:
        attacks.check_norm(norm)
        validation.check_choice("attack", attack, ("fgsm", "pgd"))
        _positive_int("attack_steps", attack_steps)
        adversarial = (attack, norm, int(attack_steps) if attack == "pgd" else 0)
    sampling, extra = check_sampling(index_tables, example_weights, size, n)
    if index_tables is not None and batch_size > extra["rows"].shape[1]:
        raise ValueError(f"batch_size has value {batch_size}; allowed: at most the {extra['rows'].shape[1]} rows "
                         "of a member's index table")
    if eps is not None:
        extra["epsilon"] = eps
    if snapshot_every is not None:
        _positive_int("snapshot_every", snapshot_every)
    names = list(names) if names is not None else [str(i) for i in range(size)]
    if len(names) != size:
        raise ValueError(f"names has {len(names)} entries; allowed: {size}, one per member")
    seed = seed_of(key)
    mesh = parallel.resolve_mesh(mesh, size)
    train_config = ensemble_config(model, x, y, steps=steps, batch_size=batch_size, optimizer=optimizer,
                                   momentum=momentum, seed=seed, eval_every=snapshot_every or log_every,
                                   schedule=schedule, schedule_kwargs=schedule_kwargs or {}, fields=config)
    if eps is not None:
        privacy.refuse_own_step(train_config, "adversarial training (epsilon)")
    members = []
    for i in range(size):
        member = {"seed": seed + i, "learning_rate": float(lr[i])}
        if np.any(wd > 0):
            member["weight_decay"] = float(wd[i])
        if np.any(rate > 0):
            member["dropout_rate"] = float(rate[i])
        members.append(member)
    count = 0 if snapshot_every is None else steps // snapshot_every
    tasks: list[Task] = []

    def program(task: Task, population: PopulationState, indices: list[int]) -> BucketProgram:
        tasks.append(task)
        rows = {name: value[np.asarray(indices)] for name, value in extra.items()}
        hooks = [snapshot_hook(snapshot_every, count)] if count else []
        data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
        return BucketProgram(with_extra_state(population, rows),
                             runner=member_runner(task, len(indices), sampling, adversarial, mesh),
                             train_data=data, extras=[{"name": names[i]} for i in indices], hooks=hooks)

    # per-member data (bootstrap rows, example weights, epsilons) is not in config.json / members.json
    record_inputs(workdir, "ensemble", {**{name: np.asarray(value) for name, value in extra.items()},
                                        "sampling": sampling, "adversarial": adversarial, "names": names})
    result = fit_population(train_config, members, workdir, same_batches=False, mesh=mesh, verbose=verbose,
                            program=program, label=f"ensemble ({size} members) | ")
    return trained_from(result, tasks[0], model, names, model_spec, require_alive=require_alive)


def trained_from(result: PopulationResult, task: Task, model: Any, names: list[str], spec: dict | None, *,
                 require_alive: bool = True) -> Trained | None:
    """A `Trained` of `train_members`' one-bucket result: alive members, snapshots taken before a
    member diverged (with precise BN statistics, as the final members have), chunk losses. When
    every member diverged: ValueError, or None if not `require_alive`."""
    state = result.states[0]
    alive = np.asarray(state.alive)
    diverged_step = np.asarray(state.diverged_step)
    diverged = {names[i]: int(diverged_step[i]) for i in range(len(names)) if not alive[i]}
    if not alive.any():
        if not require_alive:
            return None
        raise ValueError(f"every member diverged (steps {diverged}); lower the learning rate or add clip_norm "
                         "(config={'clip_norm': 1.0})")
    keep = np.flatnonzero(alive)
    members = state.members
    group = MemberGroup(model, {"params": members.params, **dict(members.model_state)}, None, spec, names).take(keep)
    snapshots = []
    stored = result.hook_states[0].get("snapshots")
    if stored is not None:
        every = task.config.eval_every
        for index in range(jax.tree.leaves(stored["params"])[0].shape[0]):
            taken = np.flatnonzero(alive | (diverged_step > (index + 1) * every))
            snapshot = members.replace(params=jax.tree.map(lambda s: s[index], stored["params"]),
                                       model_state=jax.tree.map(lambda s: s[index], stored["model_state"]))
            snapshot = precise_members(task)(snapshot) if "batch_stats" in snapshot.model_state else snapshot
            variables = {"params": snapshot.params, **dict(snapshot.model_state)}
            snapshots.append((jax.tree.map(lambda leaf: leaf[taken], variables), taken))
    rows = [row for row in result.histories[0] if row["split"] == "train" and "loss" in row]
    loss = np.asarray([np.reshape(row["loss"], -1) for row in rows], np.float64).reshape(len(rows), -1)
    return Trained(group, [variables for variables, _ in snapshots], loss, result, diverged,
                   [taken for _, taken in snapshots])


def bootstrap_tables(key: jax.Array, size: int, n: int, fraction: float = 1.0) -> np.ndarray:
    """(size, round(fraction * n)) row ids drawn with replacement: one bootstrap sample per member."""
    _positive_int("size", size)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction has value {fraction!r}; allowed: (0, 1]")
    return np.asarray(jax.random.randint(key, (size, max(1, round(fraction * n))), 0, n))


def bagging(model: Any, x: Any, y: Any, *, size: int, key: jax.Array, fraction: float = 1.0,
            **train_options: Any) -> Ensemble:
    """Bagging (Breiman 1996): each member trains on its own bootstrap sample (its per-member row
    table); predictions averaged. Members that diverged are left out. `train_options`: `train_members`'."""
    k_tables, k_train = jax.random.split(key)
    tables = bootstrap_tables(k_tables, size, len(np.asarray(y)), fraction)
    trained = train_members(model, x, y, size=size, key=k_train, index_tables=tables, **train_options)
    return Ensemble([trained.group])


def per_round(name: str, value: Any, rounds: int) -> list:
    """A boosting option given once or once per round."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != rounds:
            raise ValueError(f"{name} has {len(value)} values; allowed: one value, or one per round ({rounds})")
        return list(value)
    return [value] * rounds


def boosting(model: Any, x: Any, y: Any, *, rounds: int, key: jax.Array, num_classes: int | None = None,
             learning_rate: Any = 1e-2, workdir: str | Path | None = None,
             **train_options: Any) -> tuple[Ensemble, dict]:
    """Multi-class AdaBoost, SAMME (Zhu et al. 2009), by resampling: round t is one `fit_population`
    of one member whose batches are drawn with the current example weights w (its per-member
    `sample_logits`); with weighted error err, alpha = log((1 - err) / err) + log(K - 1);
    w *= exp(alpha * [misclassified]), renormalised.

    Stops early when a member is no better than chance (err >= 1 - 1/K), perfect, or diverged
    (the engine isolates it; the rounds before it are kept). `learning_rate`: one, or one per round.
    `workdir`: round t checkpoints under `workdir/round_t` (a rerun resumes). The ensemble is the
    alpha-weighted vote (`rule='vote'`). Returns (ensemble, {'alpha', 'error'} per round kept,
    'diverged': the round that diverged or None).
    """
    _positive_int("rounds", rounds)
    rates = per_round("learning_rate", learning_rate, rounds)
    for t, rate in enumerate(rates):
        _per_member(f"learning_rate of round {t}", rate, 1, strict=True)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    k = int(num_classes or (y.max() + 1))
    n = len(y)
    w = np.full(n, 1.0 / n)
    groups, alphas, errors, diverged = [], [], [], None
    for t, round_key in enumerate(jax.random.split(key, rounds)):
        round_dir = None if workdir is None else Path(workdir) / f"round_{t}"
        trained = train_members(model, x, y, size=1, key=round_key, example_weights=w[None], names=[f"round{t}"],
                                learning_rate=rates[t], workdir=round_dir, require_alive=False, **train_options)
        if trained is None:  # isolated by the engine: the rounds before it stand
            diverged = t
            break
        logits = model.apply(trained.group.member(0), jnp.asarray(x), train=False, dropout_rate=0.0)
        miss = np.asarray(jnp.argmax(logits, -1)) != y
        err = float(np.sum(w * miss))
        if err >= 1.0 - 1.0 / k:
            break  # no better than chance: SAMME discards it and stops
        err = max(err, 1e-10)
        alpha = math.log((1 - err) / err) + math.log(k - 1)
        groups.append(trained.group)
        alphas.append(alpha)
        errors.append(err)
        if err <= 1e-10:
            break
        w = w * np.exp(alpha * miss)
        w = w / w.sum()
    if not groups:
        reason = "diverged" if diverged == 0 else "is no better than chance"
        raise ValueError(f"boosting: the first member {reason}; nothing to ensemble")
    variables = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *[g.variables for g in groups])
    group = MemberGroup(model, variables, None, groups[0].model_spec, [g.names[0] for g in groups])
    return (Ensemble([group], rule="vote", weights=np.asarray(alphas)),
            {"alpha": alphas, "error": errors, "diverged": diverged})


def snapshot_ensemble(model: Any, x: Any, y: Any, *, cycles: int, steps_per_cycle: int, key: jax.Array,
                      size: int = 1, **train_options: Any) -> tuple[Ensemble, Trained]:
    """Snapshot ensemble (Huang et al. 2017): one run with the cyclic cosine learning rate (schedule
    'cosine_cycles'); the members are the weights at the end of every cycle, kept by a loop hook
    (`size` runs give size * cycles members; a run that diverged gives only its snapshots before)."""
    _positive_int("cycles", cycles)
    _positive_int("steps_per_cycle", steps_per_cycle)
    trained = train_members(model, x, y, size=size, key=key, steps=cycles * steps_per_cycle,
                            schedule="cosine_cycles", schedule_kwargs={"steps_per_cycle": steps_per_cycle},
                            snapshot_every=steps_per_cycle, **train_options)
    kept = [(c, r) for c, taken in enumerate(trained.snapshot_members) for r in taken]
    if not kept:
        raise ValueError(f"every run diverged before its first cycle ended (steps {trained.diverged}); nothing "
                         "to ensemble")
    variables = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trained.snapshots)
    names = [f"run{r}/cycle{c + 1}" for c, r in kept]
    return Ensemble([MemberGroup(model, variables, None, trained.group.model_spec, names)]), trained


def adversarial_training(model: Any, x: Any, y: Any, *, epsilons: Sequence[float], key: jax.Array,
                         **train_options: Any) -> Trained:
    """A population over epsilon: member i trains on adversarial examples of budget epsilons[i]
    (a per-member value: every budget in one compiled program)."""
    eps = np.asarray(epsilons, np.float64)
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"epsilons has value {np.asarray(epsilons).tolist()}; allowed: a non-empty list of budgets")
    return train_members(model, x, y, size=len(eps), key=key, epsilon=eps,
                         names=[f"eps={e:g}" for e in eps], **train_options)


def deep_ensemble(config: Any, size: int, workdir: Any = None, *, member: dict | None = None,
                  same_batches: bool = False, verbose: bool = False) -> tuple[Ensemble, Any]:
    """`size` members with identical hyperparameters trained by `fit_population` (each has its own
    initialisation key; with `same_batches=False` also its own data order): a deep ensemble
    (Lakshminarayanan et al. 2017). Returns (ensemble, population result)."""
    from vhjax.population import fit_population

    _positive_int("size", size)
    result = fit_population(config, [dict(member or {}) for _ in range(size)], workdir,
                            same_batches=same_batches, verbose=verbose)
    return Ensemble.from_population(result, config), result
