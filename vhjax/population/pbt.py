"""`fit_pbt`: population based training (Jaderberg et al. 2017) of one bucket of members.

Every `interval` steps all members are evaluated on the validation split; the bottom `fraction`
copy parameters, optimizer state and hyperparameters of a random member of the top `fraction`
(exploit), then the copied hyperparameters named in `explore` are multiplied by 0.8 or 1.2 and,
with `resample_probability`, redrawn from their range (explore). Training, evaluation, exploit
and explore all act on the whole population at once; nothing leaves the device but the scores.
Lineage (who copied whom, at which step) and each round's hyperparameters are kept, written to
the workdir and checkpointed with the population, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.config import TrainConfig
from vhjax.population.engine import default_member_chunk, init_population, make_population_eval
from vhjax.population.exploit import (copy_members, get_member_hparams, perturb, resample, set_member_hparams,
                                      truncation_sources)
from vhjax.population.fit import stack_dynamic
from vhjax.population.runner import make_population_runner
from vhjax.train.checkpoint import Checkpointer
from vhjax.train.loop import prepare_workdir
from vhjax.train.metrics_log import print_progress
from vhjax.train.task import build_task, with_member_hparams

Range = tuple[float, float, bool]  # (low, high, log scale)


@dataclasses.dataclass
class PBTResult:
    """Final metrics per member, the lineage of every exploit round and the hyperparameter history."""

    members: list[dict]
    lineage: list[dict]  # {"step", "parent": [P] (-1: kept its own state)}
    history: list[dict]  # {"step", "score": [P], hparam name: [P, ...]}

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
            raise ValueError(f"explore[{name!r}] = {tuple(spec)}; allowed: low < high (and low > 0 for log scale)")
        checked[name] = (float(low), float(high), bool(log))
    if not checked:
        raise ValueError("explore is empty; name at least one hyperparameter to perturb")
    return checked


def exploit_and_explore(key: jax.Array, population: Any, scores: jax.Array,
                        explore: tuple[tuple[str, Range], ...], fraction: float,
                        resample_probability: float) -> tuple[Any, jax.Array]:
    """One PBT round on the device: (new population, source index per member).

    `explore` is a tuple of (name, (low, high, log)) pairs (hashable: a static argument under jit).
    """
    explore = dict(explore)
    select_key, *keys = jax.random.split(key, 1 + 2 * len(explore))
    source = truncation_sources(select_key, scores, fraction)
    population = copy_members(population, source)
    copied = source != jnp.arange(source.shape[0])
    current = get_member_hparams(population)
    updates = {}
    for (name, (low, high, log)), perturb_key, resample_key in zip(explore.items(), keys[::2], keys[1::2]):
        values = current[name]
        moved = jnp.clip(perturb(perturb_key, values), low, high)
        moved = resample(resample_key, moved, low, high, resample_probability, log=log)
        mask = copied.reshape((-1,) + (1,) * (values.ndim - 1))
        updates[name] = jnp.where(mask, moved, values)
    return set_member_hparams(population, **updates), source


def fit_pbt(config: TrainConfig, members: Sequence[Mapping[str, Any]], explore: Mapping[str, Range], *,
            interval: int, fraction: float = 0.25, resample_probability: float = 0.25, metric: str = "accuracy",
            workdir: str | Path | None = None, same_batches: bool = False, verbose: bool = True) -> PBTResult:
    """Train `members` (dicts of dynamic hyperparameters, one bucket) with PBT for `config.steps` steps.

    `explore` maps hyperparameter names (e.g. 'learning_rate', 'weight_decay', 'dropout_rate',
    'aug_strength') to `(low, high[, log])`; `metric` (maximized) on the eval split ranks members.
    """
    if not isinstance(interval, int) or not 1 <= interval <= config.steps:
        raise ValueError(f"interval {interval!r}; allowed: an integer in 1..steps ({config.steps})")
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction {fraction!r}; allowed: in (0, 0.5]")
    if not members:
        raise ValueError("members is empty; give at least two members")
    hparams = stack_dynamic(list(range(len(members))), members)
    task = with_member_hparams(build_task(config), {*hparams, *dict(explore)})
    population = init_population(task, jax.random.key(config.seed), len(members), hparams, same_batches=same_batches)
    explore = check_explore(explore, list(get_member_hparams(population)))
    root = prepare_workdir(workdir, config)
    checkpointer = Checkpointer(root / "checkpoints") if root is not None else None
    lineage: list[dict] = []
    history: list[dict] = []
    step = 0
    if checkpointer is not None and checkpointer.latest_step() is not None:
        step = int(checkpointer.latest_step())
        population, record = checkpointer.restore(step, population)
        lineage, history = record["lineage"], record["history"]
        if verbose:
            print_progress(f"pbt: resumed from {root} at step {step}")
    data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    run_chunk = make_population_runner(task, default_member_chunk(len(members)))
    evaluate = jax.jit(make_population_eval(task))
    round_fn = jax.jit(exploit_and_explore, static_argnames=("explore", "fraction", "resample_probability"))
    frozen_explore = tuple(explore.items())
    while step < config.steps:
        length = min(interval, config.steps - step)
        population, _ = run_chunk(population, data, length)
        step += length
        scores = evaluate(population, *eval_data)[metric]
        scores = jnp.where(population.alive, scores, jnp.nan)
        history.append({"step": step, "score": np.asarray(scores).tolist(),
                        **{k: np.asarray(v).tolist() for k, v in get_member_hparams(population).items()
                           if k in explore}})
        if step < config.steps:
            key = jax.random.fold_in(jax.random.key(config.seed), step)
            population, source = round_fn(key, population, scores, frozen_explore, fraction,
                                          resample_probability)
            source = np.asarray(source)
            lineage.append({"step": step, "parent": np.where(source == np.arange(len(source)), -1, source).tolist()})
        if verbose:
            print_progress(f"pbt step {step}/{config.steps} | eval {metric} best {np.nanmax(scores):.4f} "
                           f"median {np.nanmedian(scores):.4f} | copied {sum(p >= 0 for p in lineage[-1]['parent']) if lineage else 0}")
        if checkpointer is not None:
            checkpointer.save(step, population, {"lineage": lineage, "history": history})
    final = {"eval": evaluate(population, *eval_data)}
    if task.test is not None:
        final["test"] = evaluate(population, jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    hparams = get_member_hparams(population)
    results = [{"member": i, **{split: {k: float(v[i]) for k, v in values.items()} for split, values in final.items()},
                "hparams": {k: np.asarray(hparams[k][i]).tolist() for k in explore},
                "diverged_step": None if int(population.diverged_step[i]) < 0 else int(population.diverged_step[i])}
               for i in range(len(members))]
    if checkpointer is not None:
        checkpointer.close()
    result = PBTResult(results, lineage, history)
    if root is not None:
        (root / "pbt.json").write_text(json.dumps(dataclasses.asdict(result), indent=1))
    return result

