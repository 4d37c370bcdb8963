"""Fine-tuning modes as member settings, and training a population that starts from transferred weights.

    source = load_source("runs/pretrain")
    members = [{**mode_config(m, source), "seed": 0} for m in ("feature_extractor", "fine_tune_last", "full")]
    result = fit_from(config, source, members)                 # every member starts from the source

A mode is a dict of config fields (`freeze` globs, `lr_multipliers`), so it is a member of
`fit_population`. These fields are static (they shape the optimizer), so members with different
modes are different buckets: one compiled program per mode, all run by one call (and one loop,
`vhjax.population.loop.run_loop`); members of the same mode (e.g. over learning rate or seed)
share a program.

Modes in one program: a member `{**mode_member("layerwise_lr", decay=0.5), "seed": 0}` of
`fit_from` is the same mode as per-member data: `fit_from` turns it into the member's
`update_scale` (one multiplier of the updates per parameter tensor, 0 = frozen; `mode_scale`),
so members of any modes share ONE bucket and compiled program. Scaling a tensor's final update
by m is exactly what `lr_multipliers` does (and 0 what `freeze` does), so the result equals the
static path's.

    members = [{**mode_member(m), "seed": 0} for m in ("direct", "feature_extractor", "full")]
    result = fit_from(config, source, members)                 # one bucket

Gradual unfreezing in one program: `mode_member("gradual", stage_steps=k)` also gives the member an
`update_start` (the step from which each parameter tensor updates; `mode_start`): the head trains
from step 0 and each earlier layer joins k steps after the next one (ULMFiT). A tensor's update is
multiplied by `step >= start` (times its `update_scale`), so a 'gradual' member shares the bucket of
every other mode; with k = 0 it is exactly 'full' (with `decay=`, exactly 'layerwise_lr'). Like
ULMFiT's own procedure it is one run with one optimizer: the optimizer state is not restarted when
a layer joins (and it advances for a waiting layer too: only its update is zeroed, so Adam's moments
are warm when it joins), nor is the data order. `gradual_unfreezing` is the other reading, kept as
it was: a sequence of runs, one per stage, each restarting the optimizer state and the data order.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from vhjax.config import TrainConfig
from vhjax.models.utils import abstract_variables
from vhjax.population.fit import (PopulationResult, bucket_members, bucket_task, fit_population, stack_dynamic,
                                  with_config_loss_weights)
from vhjax.population.members import STEP_LIMIT, parameter_tensors
from vhjax.transfer.weights import COLLECTIONS_KEY, as_variables, layer_names, load_source, transfer_params
from vhjax.validation import check_choice, check_int, invalid

STATIC_MODES = ("direct", "feature_extractor", "fine_tune_last", "freeze", "full", "layerwise_lr")
MODES = (*STATIC_MODES, "gradual")  # 'gradual': per-member data only (`update_start`), no static fields
MODE_OPTIONS = ("last", "frozen", "decay", "layers", "stage_steps")
GRADUAL_OPTIONS = ("stage_steps", "decay", "layers")
MODE_KEYS = ("mode", "mode_options")


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
    'gradual' has no static fields (its layers join at different steps of one run): it is a
    `mode_member` of `fit_from` (or the staged `gradual_unfreezing`).
    """
    if mode == "gradual":
        raise invalid("mode", mode, f"one of {', '.join(map(repr, STATIC_MODES))} (mode 'gradual' has no static "
                      "config fields: use mode_member('gradual', stage_steps=...) in fit_from, or gradual_unfreezing)")
    check_choice("mode", mode, STATIC_MODES)
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


def mode_scale(mode: str, tensors: Sequence[str], **options: Any) -> list[float]:
    """One multiplier of the updates per parameter tensor (`tensors`: paths in `parameter_tensors`
    order) for `mode` (options as in `mode_config`; `layers` default the tensors' layers in
    `layer_names` order): 0 where `mode_config`'s `freeze` globs match, else the first matching
    `lr_multipliers` glob's value, else 1 (the rules of `vhjax.train.controls.layerwise`).
    'gradual': 1 everywhere, or 'layerwise_lr''s multipliers when `decay` is given (its start
    steps are `mode_start`'s)."""
    check_options(mode, options)
    tensors = list(tensors)
    if mode == "gradual":  # every tensor trains once started: at 1, or at layerwise_lr's multipliers
        static = "layerwise_lr" if "decay" in options else "full"
        return mode_scale(static, tensors, **{k: v for k, v in options.items() if k in ("decay", "layers")})
    options = dict(options)
    layers = options.pop("layers", None)
    layers = list(layer_names({path.split("/")[0]: {} for path in tensors}) if layers is None else layers)
    fields = mode_config(mode, {layer: {} for layer in layers}, layers=layers, **options)
    freeze, multipliers = tuple(fields.get("freeze", ())), dict(fields.get("lr_multipliers", {}))
    for pattern in (*freeze, *multipliers):
        if not any(fnmatch.fnmatchcase(path, pattern) for path in tensors):
            raise invalid(f"mode {mode!r}", pattern, f"globs matching the model's parameters ({tensors[:12]})")

    def scale(path: str) -> float:
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in freeze):
            return 0.0
        return next((float(v) for p, v in multipliers.items() if fnmatch.fnmatchcase(path, p)), 1.0)

    return [scale(path) for path in tensors]


def check_options(mode: str, options: Mapping[str, Any]) -> None:
    """Raise unless `options` are option names `mode` takes; 'gradual' needs `stage_steps`, an integer >= 0."""
    unknown = sorted(set(options) - set(MODE_OPTIONS))
    if unknown:
        raise invalid("mode_options", dict(options), f"keys among {list(MODE_OPTIONS)}; unknown: {unknown}")
    if mode != "gradual":
        if "stage_steps" in options:
            raise invalid("mode_options", dict(options), f"stage_steps only with mode 'gradual' (mode is {mode!r})")
        return
    other = sorted(set(options) - set(GRADUAL_OPTIONS))
    if other:
        raise invalid("mode_options", dict(options), f"keys among {list(GRADUAL_OPTIONS)} for mode 'gradual'; "
                      f"not: {other}")
    if "stage_steps" not in options:
        raise invalid("mode_options", dict(options), "stage_steps=<steps between two layers joining> (an integer "
                      ">= 0) for mode 'gradual'")
    check_int("stage_steps", options["stage_steps"], 0, STEP_LIMIT)


def mode_start(mode: str, tensors: Sequence[str], **options: Any) -> list[int] | None:
    """The step from which each parameter tensor (`tensors`: paths in `parameter_tensors` order)
    updates, for mode 'gradual' (None for the other modes: every tensor from step 0). Layer j of n
    (input to output, `layers` default the tensors' layers in `layer_names` order) starts at
    `(n - 1 - j) * stage_steps`: the head from step 0, each earlier layer `stage_steps` later
    (ULMFiT's gradual unfreezing). A tensor of no listed layer starts at 0."""
    check_options(mode, options)
    if mode != "gradual":
        return None
    tensors, stage_steps = list(tensors), options["stage_steps"]
    layers = options.get("layers")
    layers = list(layer_names({path.split("/")[0]: {} for path in tensors}) if layers is None else layers)
    starts = {layer: (len(layers) - 1 - j) * stage_steps for j, layer in enumerate(layers)}
    for layer, start in starts.items():
        if not any(fnmatch.fnmatchcase(path, f"{layer}/*") for path in tensors):
            raise invalid("mode 'gradual' layers", layer, f"layers of the model's parameters ({tensors[:12]})")
        if start > STEP_LIMIT:
            raise invalid("stage_steps", stage_steps, f"at most {STEP_LIMIT // max(len(layers) - 1, 1)} for "
                          f"{len(layers)} layers (the first layer's start step must fit the int32 step counter)")
    return [next((starts[layer] for layer in layers if fnmatch.fnmatchcase(path, f"{layer}/*")), 0)
            for path in tensors]


def mode_member(mode: str, **options: Any) -> dict[str, Any]:
    """A `fit_from` member's fields for `mode` as per-member data (`update_scale`, and for 'gradual'
    `update_start`, so members of different modes share one bucket): `{"mode": mode, "mode_options":
    options}`; `options` as in `mode_config` (last, frozen, decay, layers), and for 'gradual'
    `stage_steps` (required; `decay` optional: layerwise_lr's multipliers once started; see
    `mode_start`). Checked here (names and values)."""
    check_choice("mode", mode, MODES)
    check_options(mode, options)
    if mode == "gradual":
        names = list(options.get("layers") or ["layer_0", "layer_1"])
        if "decay" in options:
            mode_config("layerwise_lr", {name: {} for name in names}, decay=options["decay"], layers=names)
        return {"mode": mode, "mode_options": dict(options)}
    last = options.get("last", 1)
    count = min(last, 1024) + 1 if isinstance(last, int) and not isinstance(last, bool) else 2  # enough layers
    names = list(options.get("layers") or [f"layer_{i}" for i in range(count)])
    mode_config(mode, {name: {} for name in names}, **{**options, "layers": names})  # the options' values
    return {"mode": mode, "mode_options": dict(options)}


def split_modes(members: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[str, dict] | None]]:
    """(members without the mode keys, each member's (mode, options) or None)."""
    plain, modes = [], []
    for index, member in enumerate(members):
        member = dict(member)
        if "mode" not in member:
            if "mode_options" in member:
                raise invalid(f"members[{index}]['mode_options']", member["mode_options"], "no value without 'mode'")
            plain.append(member)
            modes.append(None)
            continue
        clash = [key for key in ("update_scale", "update_start", "freeze", "lr_multipliers") if key in member]
        if clash:
            raise invalid(f"members[{index}]", {k: member[k] for k in clash},
                          "no update_scale, update_start, freeze or lr_multipliers with 'mode' (the mode sets them)")
        mode, options = member.pop("mode"), dict(member.pop("mode_options", None) or {})
        check_choice(f"members[{index}]['mode']", mode, MODES)
        plain.append(member)
        modes.append((mode, options))
    return plain, modes


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
             head: str | None = None, same_batches: bool | str = "auto", verbose: bool = True,
             mesh: Any = "auto") -> PopulationResult:
    """`fit_population(config, members, workdir)` with every member starting from `source`'s weights.

    A member may give its fine-tuning mode as data, `{**mode_member(mode, **options), ...}`: it
    becomes the member's `update_scale` over its bucket's tensors (`mode_scale`), and for 'gradual'
    its `update_start` (`mode_start`), so members of different modes share one bucket (one
    compiled program).
    `source`: anything `load_source` returns (Flax variables or params); it is mapped into each
    bucket's model by `transfer_params(skip=, new_head=, head=)`, checked on shapes for every
    bucket before anything compiles. Each member keeps its own initialisation (its seed) where the
    source gives nothing (the new head, skipped paths). The optimizer state starts fresh. Training
    is `fit_population` itself (its `start` argument puts the source in); a workdir resumes from
    its checkpoints as usual (the checkpoint then wins over the source). `mesh`: as
    `fit_population`'s (default 'auto': members sharded over the local devices).
    """
    source = as_variables(source)
    transfer = {"skip": tuple(skip), "new_head": new_head, "head": head}
    if not members:
        raise ValueError("members has value []; allowed: at least one member (a dict of config fields)")
    members, modes = split_modes(members)
    members = [with_config_loss_weights(config, member) for member in members]
    buckets = bucket_members(config, members)
    tasks = [(bucket_task(bucket_config, stack_dynamic(indices, members)), indices)
             for bucket_config, indices in buckets]
    for task, indices in tasks:  # shapes only: a source that does not fit raises here, before compiling
        shapes = abstract_variables(task.model, (2, *task.train.x.shape[1:]))
        transfer_params(source, {k: v for k, v in shapes.items() if k not in ("dropout",)}, **transfer)
        with_mode = [i for i in indices if modes[i] is not None]
        tensors = parameter_tensors(task) if with_mode else []
        for i in with_mode:
            try:
                members[i]["update_scale"] = mode_scale(modes[i][0], tensors, **modes[i][1])
                start = mode_start(modes[i][0], tensors, **modes[i][1])
                if start is not None:
                    members[i]["update_start"] = start
            except ValueError as error:
                raise ValueError(f"members[{i}]: {error}") from None
    return fit_population(config, members, workdir, same_batches=same_batches, mesh=mesh, verbose=verbose,
                          start=lambda task, population: _with_source(population, source, transfer))


def gradual_unfreezing(config: TrainConfig, source: Any, stage_steps: int, *, member: Mapping[str, Any] | None = None,
                       layers: Sequence[str] | None = None, skip: Sequence[str] = (), new_head: bool = True,
                       head: str | None = None, verbose: bool = True) -> list[PopulationResult]:
    """Gradual unfreezing (ULMFiT-style) as stages: stage s trains the last s + 1 layers for `stage_steps`
    steps, starting from stage s - 1's parameters (stage 0 from `source`, mapped as in `fit_from`), until
    every layer trains. One member (`member`, a dict of config fields without `freeze`); returns each
    stage's result. Each stage is its own `fit_from` run: the optimizer state and the data order
    restart at every stage. The one-run version (ULMFiT's: one optimizer throughout), a member of a
    population next to other modes, is `mode_member("gradual", stage_steps=...)` in `fit_from`."""
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
