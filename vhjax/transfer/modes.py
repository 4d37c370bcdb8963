"""Fine-tuning modes as member settings, and training a population that starts from transferred weights.

    source = load_source("runs/pretrain")
    members = [{**mode_config(m, source), "seed": 0} for m in ("feature_extractor", "fine_tune_last", "full")]
    result = fit_from(config, source, members)                 # every member starts from the source

A mode is a dict of config fields (`freeze` globs, `lr_multipliers`), so it is a member of
`fit_population`. These fields are static (they shape the optimizer), so members with different
modes are different buckets: one compiled program per mode, all run by one call (and one loop,
`vhjax.population.loop.run_loop`); members of the same mode (e.g. over learning rate or seed)
share a program.
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
from vhjax.population.fit import (PopulationResult, bucket_members, bucket_seeds, bucket_task, record_members,
                                  stack_dynamic, train_bucket, with_config_loss_weights)
from vhjax.population.members import init_population
from vhjax.train.workdir import prepare_workdir, save_preprocessing
from vhjax.transfer.weights import COLLECTIONS_KEY, as_variables, layer_names, load_source, transfer_params
from vhjax.validation import check_choice, check_int

MODES = ("direct", "feature_extractor", "fine_tune_last", "freeze", "full", "layerwise_lr")


def _globs(layers: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{layer}/*" for layer in layers)


def mode_config(mode: str, params: Any, *, last: int = 1, frozen: Sequence[str] = (), decay: float = 0.5,
                layers: Sequence[str] | None = None) -> dict[str, Any]:
    """The config fields of one fine-tuning mode for a model with these params (target or source).

    - 'direct': every parameter frozen (the source as is; its evaluation is the direct transfer);
    - 'feature_extractor': every layer but the head frozen;
    - 'fine_tune_last': the last `last` layers train (the head counts as one), the rest frozen;
    - 'freeze': the layers (or globs) in `frozen` frozen, the rest trains;
    - 'full': everything trains at the config's learning rate;
    - 'layerwise_lr': everything trains, layer j of n (0 = input side) at learning-rate multiplier
      `decay ** (n - 1 - j)` (the head at 1; discriminative fine-tuning).
    `layers`: the layer names input to output (default `layer_names(params)`).
    """
    check_choice("mode", mode, MODES)
    layers = list(layer_names(params) if layers is None else layers)
    if mode == "direct":
        return {"freeze": ("*",)}
    if mode == "feature_extractor":
        return {"freeze": _globs(layers[:-1])} if len(layers) > 1 else {}
    if mode == "fine_tune_last":
        check_int("last", last, 1)
        if last > len(layers):
            raise ValueError(f"last has value {last}; allowed: 1 to {len(layers)} (the model's layers: {layers})")
        body = layers[:-last]
        return {"freeze": _globs(body)} if body else {}
    if mode == "freeze":
        if not frozen:
            raise ValueError("mode 'freeze' needs frozen=[layer names or globs]; allowed: e.g. frozen=['hidden_0']")
        return {"freeze": tuple(f if "*" in f or "/" in f else f"{f}/*" for f in frozen)}
    if mode == "full":
        return {}
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay has value {decay!r}; allowed: 0 to 1 (the head's multiplier is 1)")
    n = len(layers)
    return {"lr_multipliers": {f"{layer}/*": float(decay ** (n - 1 - j)) for j, layer in enumerate(layers[:-1])}}


def _with_source(population: Any, source: Mapping, transfer: Mapping[str, Any]) -> Any:
    """The population with the source's tensors copied into every member (each keeps its own fresh head)."""
    members = population.members
    target = {COLLECTIONS_KEY: members.params, **dict(members.model_state or {})}
    merged, _ = transfer_params(source, target, member_axis=True, **transfer)
    params = jax.tree.map(jnp.asarray, merged.pop(COLLECTIONS_KEY))
    model_state = jax.tree.map(jnp.asarray, merged) if members.model_state else members.model_state
    return population.replace(members=members.replace(params=params, model_state=model_state))


def fit_from(config: TrainConfig, source: Any, members: Sequence[Mapping[str, Any]] = ({},),
             workdir: str | Path | None = None, *, skip: Sequence[str] = (), new_head: bool = True,
             head: str | None = None, same_batches: bool = True, verbose: bool = True) -> PopulationResult:
    """`fit_population(config, members, workdir)` with every member starting from `source`'s weights.

    `source`: anything `load_source` returns (Flax variables or params); it is mapped into each
    bucket's model by `transfer_params(skip=, new_head=, head=)`, checked on shapes for every
    bucket before anything compiles. Each member keeps its own initialisation (its seed) where the
    source gives nothing (the new head, skipped paths). The optimizer state starts fresh. Training
    is `fit_population`'s own bucket training (`train_bucket`, the one loop); a workdir resumes
    from its checkpoints as usual (the checkpoint then wins over the source).
    Single device, no TensorBoard writers (a first version; see docs/transfer.md).
    """
    source = as_variables(source)
    transfer = {"skip": tuple(skip), "new_head": new_head, "head": head}
    if not members:
        raise ValueError("members has value []; allowed: at least one member (a dict of config fields)")
    members = [with_config_loss_weights(config, member) for member in members]
    buckets = bucket_members(config, members)
    tasks = [(bucket_task(bucket_config, stack_dynamic(indices, members)), indices)
             for bucket_config, indices in buckets]
    for task, _ in tasks:  # shapes only: a source that does not fit raises here, before compiling
        example = jax.ShapeDtypeStruct((2, *task.train.x.shape[1:]), jnp.float32)
        shapes = jax.eval_shape(task.model.init, jax.random.key(0), example)
        transfer_params(source, {k: v for k, v in shapes.items() if k not in ("dropout",)}, **transfer)
    root = prepare_workdir(workdir, config)
    if root is not None:
        record_members(root / "members.json", members)
    results: list[dict | None] = [None] * len(members)
    states, histories = [], []
    for number, (task, indices) in enumerate(tasks):
        population = init_population(task, len(indices), stack_dynamic(indices, members),
                                     seeds=bucket_seeds(config, indices, members),
                                     same_batches=same_batches)
        population = _with_source(population, source, transfer)
        label = f"bucket {number + 1}/{len(tasks)} ({task.config.model}, {len(indices)} members, from source) | "
        bucket_dir = root / f"bucket_{number}" if root is not None else None
        if bucket_dir is not None:
            bucket_dir.mkdir(parents=True, exist_ok=True)
            save_preprocessing(bucket_dir, task)
        population, final, outcome = train_bucket(task, population, bucket_dir, label, mesh=None,
                                                                 verbose=verbose, writers=None)
        states.append(population)
        histories.append(outcome.history)
        best_step = outcome.hook_states.get("keep_best", {}).get("step")
        for position, index in enumerate(indices):
            diverged = int(population.diverged_step[position])
            results[index] = {
                "member": index, "bucket": number, "position": position, "config": dict(members[index]),
                **{split: {k: float(v[position]) for k, v in values.items()} for split, values in final.items()},
                "diverged_step": None if diverged < 0 else diverged,
                "stopped": bool(population.stopped[position]),
                "best_step": None if best_step is None or int(best_step[position]) < 0 else int(best_step[position]),
            }
    result = PopulationResult(results, states, histories)
    if root is not None:
        (root / "result.json").write_text(json.dumps(results, default=lambda v: np.asarray(v).tolist(), indent=1))
    return result


def gradual_unfreezing(config: TrainConfig, source: Any, stage_steps: int, *, member: Mapping[str, Any] | None = None,
                       layers: Sequence[str] | None = None, skip: Sequence[str] = (), new_head: bool = True,
                       head: str | None = None, verbose: bool = True) -> list[PopulationResult]:
    """Gradual unfreezing (ULMFiT-style) as stages: stage s trains the last s + 1 layers for `stage_steps`
    steps, starting from stage s - 1's parameters (stage 0 from `source`, mapped as in `fit_from`), until
    every layer trains. One member (`member`, a dict of config fields without `freeze`); returns each
    stage's result. The engine's freeze set is fixed within a run, so each stage is its own `fit_from`
    run: the optimizer state and the data order restart at every stage."""
    check_int("stage_steps", stage_steps, 1)
    member = dict(member or {})
    if "freeze" in member:
        raise ValueError("member sets 'freeze'; allowed: no freeze (gradual_unfreezing sets it per stage)")
    names = list(layer_names(source) if layers is None else layers)
    stage_config = dataclasses.replace(config, steps=stage_steps)
    results: list[PopulationResult] = []
    start, transfer = source, {"skip": skip, "new_head": new_head, "head": head}
    for stage in range(len(names)):
        fields = {**member, **mode_config("fine_tune_last", names, last=stage + 1, layers=names)}
        results.append(fit_from(stage_config, start, [fields], verbose=verbose, **transfer))
        start, transfer = load_source(results[-1], index=0), {}  # the next stage: this one's weights, all copied
    return results
