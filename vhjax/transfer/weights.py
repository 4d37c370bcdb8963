"""Pretrained weights: load a source model's variables and map them into a target model by layer path.

    source = load_source("runs/pretrain")                      # a fit workdir
    source = load_source("runs/pop", rank=0)                   # the best member of a fit_population workdir
    source = load_source("runs/pop", index=3)                  # member 3 of the members list
    source = load_source(result)                               # a PopulationResult / FitResult in memory
    source = load_source({"params": params})                   # plain Flax variables (or a bare params tree)
    merged, report = transfer_params(source, target)           # copies by path, a fresh head if classes differ

A path is a parameter's dict keys joined by '/', e.g. 'hidden_0/kernel' (as `freeze` and
`lr_multipliers` globs see them). Every check happens on shapes only, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from vhjax.population.export import MEMBER_FILE, choose_member, member_variables, restore_bucket

COLLECTIONS_KEY = "params"


def _is_variables(tree: Any) -> bool:
    return isinstance(tree, Mapping) and COLLECTIONS_KEY in tree and isinstance(tree[COLLECTIONS_KEY], Mapping)


def as_variables(tree: Any) -> dict:
    """`{"params": ..., other collections}` from Flax variables or a bare params tree (or a pretraining
    result's best encoder, see `vhjax.transfer.pretrain`)."""
    if callable(getattr(tree, "encoder_variables", None)):  # a PretrainResult: its encoder, without heads
        return tree.encoder_variables()
    if _is_variables(tree):
        return {name: value for name, value in tree.items()}
    if isinstance(tree, Mapping):
        return {COLLECTIONS_KEY: tree}
    raise ValueError(f"source has type {type(tree).__name__}; allowed: Flax variables {{'params': ...}}, a params "
                     "dict, a PopulationResult, a FitResult or a workdir path")


def _numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def load_source(source: Any, *, rank: int | None = None, index: int | None = None, metric: str = "accuracy",
                split: str = "eval", mode: str = "max") -> dict:
    """A source model's Flax variables (`{"params": ..., **model_state}`, numpy arrays).

    `source`: plain Flax variables or a params dict; a `FitResult`; a `PopulationResult` or a
    `fit_population` workdir (the member by `index` or by `rank` on `split` `metric`, 0 = best,
    chosen exactly as `vhjax.population.export_member` chooses it); a `fit` workdir (its latest
    checkpoint, or the kept best parameters when the run kept them); a folder written by
    `export_member` (plain orbax); a `PretrainResult` of `vhjax.transfer.pretrain` (a member's encoder,
    by `index` or by `rank` on its eval pretraining loss, 0 = lowest; no classifier head, no projection or
    decoder MLP, so a target keeps a fresh head)."""
    if rank is not None and index is not None:
        raise ValueError("rank and index are both given; allowed: one of them")
    if callable(getattr(source, "encoder_variables", None)):  # a PretrainResult
        return _numpy(source.encoder_variables(rank=rank, index=index))
    if hasattr(source, "members") and hasattr(source, "states"):  # PopulationResult
        member, _ = choose_member(source.members, rank, index, metric, split, mode)
        return _numpy(member_variables(source, member))
    if hasattr(source, "state") and hasattr(source, "metrics"):  # FitResult
        state = source.state
        return _numpy({COLLECTIONS_KEY: state.params, **dict(state.model_state or {})})
    if isinstance(source, (str, Path)):
        return _numpy(_load_path(Path(source), rank, index, metric, split, mode))
    return _numpy(as_variables(source))


def _load_path(path: Path, rank: int | None, index: int | None, metric: str, split: str, mode: str) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder; allowed: a fit or fit_population workdir, or a "
                                "folder written by export_member")
    if (path / MEMBER_FILE).is_file():  # export_member's plain orbax variables
        import orbax.checkpoint as ocp

        return ocp.StandardCheckpointer().restore(path.absolute())
    result_file = path / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    if isinstance(result, list):  # a fit_population workdir
        member, _ = choose_member(result, rank, index, metric, split, mode)
        return member_variables(path, member)
    if rank not in (None, 0) or index not in (None, 0):
        raise ValueError(f"{str(path)!r} is a fit workdir (one model); allowed: rank and index None or 0")
    state = restore_bucket(path)  # a fit workdir: a population of one, checkpointed as a bucket
    members = state["population"]["members"]
    params, model_state = members["params"], members.get("model_state") or {}
    best = state.get("hooks", {}).get("keep_best")
    if best is not None and int(np.asarray(best["step"])[0]) >= 0:  # the kept best parameters
        params, model_state = best["params"], best.get("model_state") or {}
    take = lambda tree: {k: take(v) for k, v in tree.items()} if isinstance(tree, Mapping) else np.asarray(tree)[0]
    return {COLLECTIONS_KEY: take(params), **take(dict(model_state))}


# ---------------------------------------------------------------------------------------------
# Paths and layers.


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """path -> leaf, paths the dict keys joined by '/' (the order of the dicts)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = leaf
    return tree


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


INPUT_LAYERS = ("stem", "embed")  # the zoo's input side (ResNet, MobileNet, DenseNet, NB201; transformers)
OUTPUT_LAYERS = ("final", "head")  # the output side, in this order (DenseNet's final_norm; every classifier's head)


def _side(name: str, names: Sequence[str]) -> int:
    return next((i for i, n in enumerate(names) if name == n or name.startswith(f"{n}_")), -1)


def layer_order(name: str) -> tuple:
    """`layer_names`' sort key of a top-level module name: input side, middle (by name with numbers
    compared as numbers), output side."""
    inputs, outputs = _side(name, INPUT_LAYERS), _side(name, OUTPUT_LAYERS)
    side = (0, inputs) if inputs >= 0 else (2, outputs) if outputs >= 0 else (1, 0)
    return (*side, _natural(name))


def layer_names(params: Mapping) -> list[str]:
    """The top-level modules of a params tree, input to output (Flax stores them sorted by name, so the
    order comes from the names): first the input side ('stem', 'embed' and layers named `stem_...`, e.g.
    the ResNet's 'stem', 'stem_norm'), then the other layers by name with numbers compared as numbers
    (hidden_2 before hidden_10, stage0_block1 before stage1_block0), then `final_...` layers and 'head'.
    This is the forward order of the zoo's mlp, cnn, resnet, mobilenet and transformer; give `layers=`
    explicitly for a model whose names do not follow it (`forward_layers(model, x)`). A `PretrainResult` gives its model's layers,
    the head included (its encoders have no head)."""
    if callable(getattr(params, "encoder_layers", None)):
        return list(params.encoder_layers())
    params = as_variables(params)[COLLECTIONS_KEY]
    return sorted(params, key=layer_order)


def forward_layers(model: Any, x: Any) -> list[str]:
    """The model's top-level modules with parameters in the order its forward pass first calls them on
    input `x` (shapes only, nothing runs): the `layers=` of a model whose names `layer_names` cannot order
    (e.g. one whose norms 'norm_0', 'norm_1' follow convolutions 'conv_0', 'conv_1')."""
    order: list[str] = []

    def record(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
        path = context.module.scope.path if context.module.scope is not None else ()
        if path and path[0] not in order:
            order.append(path[0])
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return [name for name in order if name in variables.get(COLLECTIONS_KEY, {})]


def default_head(params: Mapping) -> str:
    """The last layer of `layer_names` (the module named 'head' in vhjax's models)."""
    return layer_names(params)[-1]


def _shape(leaf: Any) -> tuple:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, f"{p}/*") for p in patterns)


@dataclasses.dataclass
class TransferReport:
    """What `transfer_params` did, by parameter path (collection-qualified for non-params collections)."""

    copied: list[str]
    fresh: list[str]  # kept the target's initialisation: the new head and skipped paths
    ignored: list[str]  # source paths with no use in the target (skipped or the old head)

    def summary(self) -> str:
        return (f"copied {len(self.copied)} tensors; kept fresh {len(self.fresh)}: {', '.join(self.fresh) or '-'}; "
                f"ignored from the source {len(self.ignored)}: {', '.join(self.ignored) or '-'}")


def transfer_params(source: Any, target: Any, *, skip: Sequence[str] = (), new_head: bool = True,
                    head: str | None = None, member_axis: bool = False) -> tuple[dict, TransferReport]:
    """Copy the source's tensors into the target by path; returns (merged, report).

    `source`, `target`: Flax variables or params dicts (the result has the target's form). A path
    copied must have the same shape in both. `skip`: globs of paths (or layer names) kept as the
    target initialised them. With `new_head`, the head layer (`head`, default the last layer, see
    `layer_names`) is kept fresh when its shapes differ (e.g. another number of classes); it is
    copied when they are equal. Any other path missing on one side or mis-shaped raises one
    ValueError listing each (path, source shape, target shape), before anything compiles.
    `member_axis`: the target's leaves have a leading members axis (a population's params); each
    member gets the same copied tensors and keeps its own fresh ones.
    """
    source_vars, target_vars = as_variables(source), as_variables(target)
    head = default_head(target_vars) if head is None else head
    skip = tuple(skip)
    for pattern in skip:
        if not isinstance(pattern, str):
            raise ValueError(f"skip has pattern {pattern!r}; allowed: glob strings over parameter paths")
    merged: dict = {}
    copied, fresh, ignored, problems = [], [], [], []
    for collection, target_tree in target_vars.items():
        if not isinstance(target_tree, Mapping):
            merged[collection] = target_tree
            continue
        prefix = "" if collection == COLLECTIONS_KEY else f"{collection}:"
        target_flat = flatten(target_tree)
        source_flat = flatten(source_vars.get(collection) or {})
        if collection != COLLECTIONS_KEY and not source_flat:  # e.g. batch_stats the source lacks: keep fresh
            merged[collection] = target_tree
            fresh.extend(prefix + p for p in target_flat)
            continue
        shape = lambda leaf: _shape(leaf)[1:] if member_axis else _shape(leaf)
        head_differs = any(shape(target_flat[p]) != _shape(source_flat[p])
                           for p in target_flat if _matches(p, (head,)) and p in source_flat) or \
            {p for p in target_flat if _matches(p, (head,))} != {p for p in source_flat if _matches(p, (head,))}
        out = {}
        for path, leaf in target_flat.items():
            is_head = _matches(path, (head,))
            if _matches(path, skip) or (is_head and new_head and head_differs):
                out[path] = leaf
                fresh.append(prefix + path)
            elif path not in source_flat:
                problems.append((prefix + path, None, shape(leaf)))
            elif _shape(source_flat[path]) != shape(leaf):
                problems.append((prefix + path, _shape(source_flat[path]), shape(leaf)))
            else:
                value = np.asarray(source_flat[path]).astype(np.dtype(leaf.dtype))
                out[path] = np.broadcast_to(value, _shape(leaf)).copy() if member_axis else value
                copied.append(prefix + path)
        for path, leaf in source_flat.items():
            if path in target_flat:
                continue
            if _matches(path, skip) or (_matches(path, (head,)) and new_head):
                ignored.append(prefix + path)
            else:
                problems.append((prefix + path, _shape(leaf), None))
        merged[collection] = unflatten(out) if not problems else None
    if problems:
        lines = "\n".join(f"  {path}: source {'missing' if s is None else s}, target {'missing' if t is None else t}"
                          for path, s, t in problems)
        raise ValueError(f"the source does not fit the target model at {len(problems)} parameter(s) (head {head!r}, "
                         f"new_head={new_head}, skip={list(skip)}):\n{lines}\nallowed: equal shapes on every path "
                         "copied; pass skip=[...] for layers to keep fresh, or head=... for the layer whose classes "
                         "differ")
    if not _is_variables(target):
        return merged[COLLECTIONS_KEY], TransferReport(copied, fresh, ignored)
    return merged, TransferReport(copied, fresh, ignored)
