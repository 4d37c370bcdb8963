"""Population based training (Jaderberg et al. 2017): the one loop plus the PBT hook.

Every `interval` steps all members are evaluated on the validation split; the bottom `fraction`
copy parameters, optimizer state and hyperparameters of a random member of the top `fraction`
(exploit), then the copied hyperparameters named in `explore` are perturbed and, with
`resample_probability`, redrawn from their range (explore), with the one set of PBT primitives
(`population.exploit`). Training, evaluation and the copy act on the whole population at once on
the device; the round's decision (who copies whom, the explored values: a few numbers per member,
`pbt_decision`) is made on the host from the scores, so it compiles nothing (as a compiled program
it cost 0.5 s of compilation on a CPU and 4.4 s on a GPU, more than all its rounds' work). Lineage
(who copied whom, at which step) and each round's hyperparameters are the hook's record,
checkpointed with the population, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import parallel
from vhjax.atomic_files import write_text_atomically
from vhjax.compile_options import light_jit
from vhjax.config import TrainConfig
from vhjax.population.exploit import (Range, array_namespace, copy_members, explore_draws, explore_values_with,
                                      get_member_hparams, set_member_hparams, shrink_sources,
                                      truncation_select_with)
from vhjax.population.fit import bucket_members, bucket_seeds, bucket_task, compiled_programs, stack_dynamic
from vhjax.population.hooks import best_members, config_hooks
from vhjax.population.loop import Hook, Report, run_loop
from vhjax.population.members import init_population
from vhjax.population.pbt_guide import guided_explore, score_changes
from vhjax.population.engine import default_member_group
from vhjax.population.state import PopulationState
from vhjax.train.workdir import prepare_workdir
from vhjax.validation import check_int, check_number


MAX_CANDIDATES = 64  # explore draws per copied member (`fit_pbt`'s `candidates`)


@dataclasses.dataclass
class PBTResult:
    """Final metrics per member, the lineage of every exploit round and the hyperparameter history."""

    members: list[dict]
    lineage: list[dict]  # {"step", "parent": [P] (-1: kept its own state)}
    history: list[dict]  # {"step", "score": [P], hparam name: [P, ...]}
    cut_at: int | None = None  # the step a `stop` ended the run at (None: it trained to the end)

    def best(self, split: str = "eval", metric: str = "accuracy") -> dict:
        return max(self.members, key=lambda m: m[split][metric])


def check_explore(explore: Mapping[str, Range], known: Sequence[str]) -> dict[str, Range]:
    """Validate `name -> (low, high, log)` ranges before anything compiles."""
    checked = {}
    for name, spec in explore.items():
        if name not in known:
            raise ValueError(f"explore: unknown hyperparameter {name!r}; known for this task: {', '.join(sorted(known))}")
        low, high, log = (*spec, False)[:3] if len(spec) == 2 else spec
        if not low < high or (log and low <= 0):
            raise ValueError(f"explore[{name!r}] has value {tuple(spec)}; allowed: low < high (and low > 0 for log scale)")
        checked[name] = (float(low), float(high), bool(log))
    if not checked:
        raise ValueError("explore has value {}; allowed: at least one hyperparameter to perturb")
    return checked


def pbt_decision(uniforms: Any, scores: Any, hparams: Mapping[str, Any], stopped: Any,
                 explore: Mapping[str, Range], fraction: float, resample_probability: float,
                 kept_slots: Any | None = None, guide: Callable | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """One PBT round decided from its `uniforms` (`pbt_draws` of them, in [0, 1)): `(origin (P,),
    stopped (P,), explored hparams)`, where slot i's state comes from member `origin[i]`.

    Stopped members take no part. `kept_slots` (P,) bool, a shrinking round: the best members move
    into these slots (`shrink_sources`) and the others stop, before the exploit among those kept;
    `origin` covers both moves. `hparams` holds the current values of (at least) the explored
    hyperparameters; the result holds them after the copy and the explore. NumPy arrays in, NumPy
    out, nothing compiled (the PBT hook); JAX arrays inside a program (`exploit_and_explore`).
    `guide(copied (P,), values after the copy, explored values) -> explored values` may replace the
    copied slots' explored values (the host hook's guided explore, `pbt_guide`).
    """
    xp = array_namespace(uniforms, scores, stopped)
    size = scores.shape[0]
    select_u, explore_u = uniforms[:size], uniforms[size:]
    moved = xp.arange(size, dtype=np.int32)  # no shrinking in this round: nobody moves before the exploit
    if kept_slots is not None:
        moved, stopped = shrink_sources(scores, ~stopped, kept_slots), stopped | ~xp.asarray(kept_slots, bool)
    source = truncation_select_with(select_u, scores[moved], fraction, maximize=True, eligible=~stopped)[0]
    origin = moved[source]
    copied = source != xp.arange(size)
    current = {name: xp.asarray(hparams[name])[origin] for name in explore}
    explored = explore_values_with(explore_u, current, explore, resample_probability=resample_probability)
    if guide is not None:
        explored = guide(copied, current, explored)
    updates = {name: xp.where(copied.reshape((-1,) + (1,) * (values.ndim - 1)), explored[name], values)
               for name, values in current.items()}
    return origin, stopped, updates


def pbt_draws(size: int, hparams: Mapping[str, Any], explore: Mapping[str, Range]) -> int:
    """The uniforms one round's `pbt_decision` takes: a donor draw per member, then the explore's."""
    return size + explore_draws({name: hparams[name] for name in explore})


def apply_values(population: PopulationState, stopped: Any, hparams: Mapping[str, Any]) -> PopulationState:
    """The population with `stopped` set and the named hyperparameters replaced (a round's values:
    PBT's explored ones, a replayed schedule's)."""
    return set_member_hparams(population.replace(stopped=stopped), **hparams)


def apply_decision(population: PopulationState, origin: Any, stopped: Any,
                   hparams: Mapping[str, Any]) -> PopulationState:
    """A decided round on the population: every slot's state copied from `origin`, `stopped` set,
    the explored `hparams` set (one gather per state leaf)."""
    return apply_values(copy_members(population, origin), stopped, hparams)


def exploit_and_explore(key: jax.Array, population: PopulationState, scores: jax.Array,
                        explore: tuple[tuple[str, Range], ...], fraction: float, resample_probability: float,
                        kept_slots: jax.Array | None = None) -> tuple[PopulationState, jax.Array]:
    """One PBT round inside a program: `pbt_decision` on one uniform draw from `key`, applied;
    returns (new population, origin per member). `explore` is a tuple of (name, (low, high, log))
    pairs (hashable: a static argument under jit)."""
    explore = dict(explore)
    hparams = get_member_hparams(population)
    uniforms = jax.random.uniform(key, (pbt_draws(scores.shape[0], hparams, explore),))
    origin, stopped, explored = pbt_decision(uniforms, jnp.asarray(scores), hparams, population.stopped, explore,
                                             fraction, resample_probability, kept_slots)
    return apply_decision(population, origin, stopped, explored), origin


def round_uniforms(seed: int, step: int, count: int) -> np.ndarray:
    """The host-side round's uniforms: float32 in [0, 1) from NumPy's generator seeded by (seed,
    step), so a resumed run draws them again."""
    return np.random.default_rng([seed % 2 ** 32, step]).random(count, dtype=np.float32)


def kept_slot_mask(size: int, kept: int, shards: int = 1) -> np.ndarray:
    """The `kept` slots a shrinking population keeps training: the first `kept / shards` of each
    device's contiguous block of members when both divide evenly (so every device keeps the same
    load and the stopped members fill whole member groups, which the engine skips), else the first
    `kept` slots."""
    mask = np.zeros(size, bool)
    share = kept_per_shard(size, kept, shards)
    if share is None:
        mask[:kept] = True
    else:
        for shard in range(shards):
            mask[shard * (size // shards): shard * (size // shards) + share] = True
    return mask


def kept_per_shard(size: int, kept: int, shards: int) -> int | None:
    """Each device's share of `kept` members, or None where they do not split evenly."""
    return kept // shards if size % shards == 0 and kept % shards == 0 else None


def pbt_rounds(steps: int, interval: int) -> int:
    """Evaluated rounds of a PBT run: one every `interval` steps and one at the end."""
    return -(-steps // interval)


def check_shrink(shrink: Mapping[int, int] | None, population: int, rounds: int) -> dict[int, int]:
    """`shrink` as `{round: members kept}`, checked before anything compiles: rounds are integers in
    [0, rounds - 2] (the last round has no exploit), sizes integers in [2, population - 1] that
    fall as the rounds rise."""
    if shrink is None:
        return {}
    if not isinstance(shrink, Mapping) or (shrink and population < 3):
        raise ValueError(f"shrink has value {shrink!r}; allowed: a mapping {{round: members kept}} or None "
                         f"(None for a population of fewer than 3 members)")
    checked = {}
    in_order = sorted(shrink.items(), key=lambda item: item[0] if isinstance(item[0], (int, np.integer)) else -1)
    for round_index, kept in in_order:
        check_int(f"shrink round {round_index!r}", round_index, 0, rounds - 2)
        check_int(f"shrink[{round_index}]", kept, 2, population - 1)
        if checked and kept >= min(checked.values()):
            raise ValueError(f"shrink[{round_index}] has value {kept}; allowed: fewer members than the "
                             f"{min(checked.values())} kept at an earlier round")
        checked[int(round_index)] = int(kept)
    return checked


def shrink_member_group(size: int, shards: int, kept_sizes: Sequence[int]) -> int | None:
    """The engine's member group for a population that shrinks to each of `kept_sizes`: the default
    group cut down to divide every device's share of the kept members, so the stopped members fill
    whole groups (which the engine skips)."""
    group = default_member_group(size, shards)
    for kept in kept_sizes:
        share = kept_per_shard(size, kept, shards)
        if group is not None and share is not None:
            group = math.gcd(group, share)
    return group


def placed_as(value: np.ndarray, like: jax.Array) -> Any:
    """A host array placed as `like` is (committed to its sharding, or left for the program to place
    where `like` is uncommitted), so one compiled program serves every round."""
    return parallel.put(value, like.sharding) if like.committed else value


def pbt_hook(explore: Mapping[str, Range], *, seed: int, fraction: float = 0.25, resample_probability: float = 0.25,
             split: str = "eval", metric: str = "accuracy", on_round: Callable[[dict], None] | None = None,
             shrink: Mapping[int, int] | None = None, shards: int = 1, candidates: int = 1) -> Hook:
    """Exploit/explore after every evaluation but the last; lineage and history in the record.
    `on_round(entry)` receives each round's history entry, with its index as `round`, as soon as
    the round is evaluated. `shrink` maps a round index to the members kept training from then on
    (`kept_slot_mask` with `shards` places them). `candidates` > 1: each copied member's explored
    values are the best of that many explore draws by a Gaussian process of recent rounds
    (`pbt_guide`)."""
    explore = dict(explore)
    apply = light_jit(apply_decision, run_once=True)  # ~1 ms of work a round, optimised or not
    shrink = dict(shrink or {})

    def init(population: PopulationState) -> dict:
        return {"record": {"lineage": [], "history": []}}

    def update(state: dict, population: PopulationState, report: Report):
        stopped = np.asarray(population.stopped)
        scores = np.where(np.asarray(population.alive) & ~stopped, report.metric(split, metric), np.nan)
        hparams = get_member_hparams(population)
        current = {name: np.asarray(hparams[name]) for name in explore}
        lineage, history = list(state["record"]["lineage"]), list(state["record"]["history"])
        history.append({"step": report.step, "score": scores.tolist(),
                        **{name: value.tolist() for name, value in current.items()}, "stopped": stopped.tolist()})
        if on_round is not None:
            on_round({**history[-1], "round": len(history) - 1})
        copied = 0
        if report.step < report.total_steps:
            size = len(scores)
            kept = kept_slot_mask(size, shrink.get(len(history) - 1, size), shards) if shrink else None
            draws = pbt_draws(size, current, explore)  # the same first draws whatever `candidates` is
            uniforms = round_uniforms(seed, report.step, draws + (candidates - 1) * explore_draws(current))
            data = score_changes(history, lineage, explore) if candidates > 1 else None
            guide = guided_explore(uniforms[draws:], data, explore, resample_probability, candidates)
            source, now_stopped, explored = pbt_decision(uniforms[:draws], scores.astype(np.float32), current, stopped,
                                                         explore, fraction, resample_probability, kept, guide)
            like = (population.stopped, population.stopped, {name: hparams[name] for name in explore})
            decision = jax.tree.map(placed_as, (source, now_stopped, explored), like)
            population = apply(population, *decision)
            parents = np.where(source == np.arange(len(source)), -1, source)
            lineage.append({"step": report.step, "parent": parents.tolist()})
            copied = int((parents >= 0).sum())
        report.logs["pbt_copied"] = copied
        return {"record": {"lineage": lineage, "history": history}}, population

    return Hook("pbt", init, update)


def fit_pbt(config: TrainConfig, members: Sequence[Mapping[str, Any]], explore: Mapping[str, Range], *,
            interval: int, fraction: float = 0.25, resample_probability: float = 0.25, metric: str = "accuracy",
            workdir: str | Path | None = None, same_batches: bool = False, mesh: Any = "auto",
            on_round: Callable[[dict], None] | None = None, shrink: Mapping[int, int] | None = None,
            candidates: int = 1, verbose: bool = True, stop: Callable[[], bool] | None = None) -> PBTResult:
    """Train `members` (dicts of per-member fields, one bucket) with PBT for `config.steps` steps.

    `explore` maps hyperparameter names (e.g. 'learning_rate', 'weight_decay', 'dropout_rate',
    'aug_strength') to `(low, high[, log])`; `metric` (maximized) on the eval split ranks members.
    The config's early stopping, plateau and best-model keeping work here too; best-model keeping
    sees each evaluated member before exploit/explore replaces it, so `keep_best` returns each
    member slot's best evaluated parameters (`best_step` in the result: the round they were
    evaluated at; `hparams`: those of that round).
    `on_round(entry)` receives each round's `history` entry (and its index as `round`) as soon as
    it is evaluated (rounds a resumed run had finished are not sent again).
    `shrink` (`{round: members}`): after that round's evaluation the best `members` move into slots
    that fill whole member groups on every device and the others stop; a stopped member (by a
    shrink or by early stopping) takes no further part in exploit/explore, and on a CPU the engine
    skips its group's compute. History entries say which members were stopped (`stopped`); their
    scores are NaN from then on.
    `candidates` (1: plain PBT): explore draws per copied member, of which a Gaussian process of the
    last rounds' score changes keeps the one of the highest upper confidence bound (after PB2; see
    `vhjax.population.pbt_guide`).
    `stop() -> bool` (e.g. a deadline) is asked after each round; once true the run ends there, each
    slot returning its kept (else last) parameters, with `cut_at` its step (`run_loop`'s `stop`);
    called again with the same workdir, the run continues from there as an uncut run trains.
    """
    check_int("interval", interval, 1, config.steps)
    check_int("candidates", candidates, 1, MAX_CANDIDATES)
    check_number("fraction", fraction, 0.0, 0.5, low_inclusive=False)
    check_number("resample_probability", resample_probability, 0.0, 1.0)
    if len(members) < 2:
        raise ValueError(f"members has {len(members)} entries; allowed: at least two members")
    if config.dp_clip_norm is not None:
        from vhjax.privacy import NOT_FOR_PBT

        raise ValueError(f"config field 'dp_clip_norm' has value {config.dp_clip_norm!r}; allowed: None for PBT "
                         f"({NOT_FOR_PBT}; search DP-SGD members with vhjax.search or tune(method='asha'))")
    shrink = check_shrink(shrink, len(members), pbt_rounds(config.steps, interval))
    config = dataclasses.replace(config, eval_every=interval)
    buckets = bucket_members(config, members)
    if len(buckets) != 1:
        raise ValueError(f"members have value {list(members)!r}; allowed: members that differ only in per-member "
                         "fields (hyperparameters, augmentation strengths, seed): PBT trains one program")
    bucket_config, indices = buckets[0]
    hparams = stack_dynamic(indices, members)
    task = bucket_task(bucket_config, {*hparams, *dict(explore)})
    population = init_population(task, len(members), hparams, seeds=bucket_seeds(config, indices, members),
                                 same_batches=same_batches, data_seed=config.seed)
    explore = check_explore(explore, list(get_member_hparams(population)))
    root = prepare_workdir(workdir, config)
    mesh = parallel.resolve_mesh(mesh)
    shards = parallel.member_shards(mesh)
    run_chunk, evaluate = compiled_programs(task, shrink_member_group(len(members), shards, shrink.values()),
                                            mesh=mesh)
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    pbt = pbt_hook(explore, seed=config.seed, fraction=fraction, resample_probability=resample_probability,
                   metric=metric, on_round=on_round, shrink=shrink, shards=shards, candidates=candidates)
    extra = config_hooks(bucket_config)  # keep_best before PBT's copies: it keeps what was evaluated
    hooks = [*[h for h in extra if h.name == "keep_best"], pbt, *[h for h in extra if h.name != "keep_best"]]
    outcome = run_loop(population, run_chunk, (jnp.asarray(task.train.x), jnp.asarray(task.train.y)),
                       steps=config.steps, eval_every=interval, evaluate=lambda p: {"eval": evaluate(p, *eval_data)},
                       hooks=hooks, workdir=root, checkpoint_every=config.checkpoint_every, mesh=mesh, label="pbt | ",
                       verbose=verbose, stop=stop)
    population = outcome.population
    best_steps = [None] * len(members)
    if "keep_best" in outcome.hook_states:
        population = best_members(population, outcome.hook_states["keep_best"])
        best_steps = [None if step < 0 else int(step) for step in np.asarray(outcome.hook_states["keep_best"]["step"])]
    final = {"eval": evaluate(population, *eval_data)}
    if task.test is not None:
        final["test"] = evaluate(population, jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    record = outcome.hook_states["pbt"]["record"]
    # on the host once: indexing device arrays member by member dispatches (and compiles) a gather each
    final, current, diverged = jax.device_get((final, get_member_hparams(population), population.diverged_step))
    hparams = returned_hparams(current, record["history"], best_steps, explore)
    results = [{"member": i, **{split: {k: float(v[i]) for k, v in values.items()} for split, values in final.items()},
                "hparams": hparams[i], "diverged_step": None if int(diverged[i]) < 0 else int(diverged[i]),
                "best_step": best_steps[i]}
               for i in range(len(members))]
    result = PBTResult(results, record["lineage"], record["history"], outcome.cut_at)
    if root is not None:
        write_text_atomically(root / "pbt.json", json.dumps(dataclasses.asdict(result), indent=1))
    return result


def returned_hparams(current: Mapping[str, Any], history: Sequence[dict], best_steps: Sequence[int | None],
                     explore: Mapping[str, Range]) -> list[dict]:
    """Each returned member's hyperparameters: those it was evaluated with at its kept round
    (keep_best), else its current ones."""
    rounds = {entry["step"]: entry for entry in history}
    return [{k: (np.asarray(current[k][i]).tolist() if step is None else rounds[step][k][i]) for k in explore}
            for i, step in enumerate(best_steps)]
