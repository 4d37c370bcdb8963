"""Transfer masks: which source layers (or tensors) to copy, or to freeze, as per-member arrays.

    source = load_source("runs/pretrain")
    units = mask_units(source)                                   # ['hidden_0', 'hidden_1', 'hidden_2', 'head']
    result = fit_masked(config, source, ["1100", "1110", "0000"], policy="copy")   # one population
    objective = MaskObjective(config, source, policy="train")
    vhjax.search(objective, mask_space(units), "genetic", population=8, budget=32,
                 strategy_kwargs={"categorical_mutation": "flip", "population_size": 8})

A mask is one bit per unit: per layer (`granularity='layer'`, the source's `layer_names`), per
block (`'block'`, a group of layers the model defines: see `block_of`) or per parameter tensor
(`'tensor'`, e.g. 'hidden_0/kernel'). Two readings of the bits (`policy`):

- 'copy' (a): bit 1 copies the source's tensors, bit 0 keeps the target's fresh initialisation;
  every tensor trains.
- 'train' (b): every tensor is copied; bit 1 fine-tunes it, bit 0 freezes it.

Both are per-member data, so members with different masks are ONE bucket (one compiled program):
the copy bits are applied to each member's freshly initialised parameters by `fit_population`'s
`start` hook, and the train bits become the member's `update_scale` (one multiplier of the updates
per parameter tensor, 0 = frozen; a per-member array of `vhjax.hparams`). Every member starts
from the same seed (`config.seed`) and sees the same batches, so a mask's fitness depends on the
mask only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.config import TrainConfig
from vhjax.models.utils import abstract_variables
from vhjax.population.fit import PopulationResult, bucket_members, bucket_task, fit_population, stack_dynamic
from vhjax.population.members import parameter_tensors
from vhjax.transfer.weights import COLLECTIONS_KEY, as_variables, flatten, layer_names, transfer_params
from vhjax.validation import check_choice, check_number, invalid

POLICIES = ("copy", "train")
GRANULARITIES = ("layer", "block", "tensor")
BASELINES = ("scratch", "full", "head_only")
MAX_EXHAUSTIVE_UNITS = 12  # 4096 masks


@dataclasses.dataclass(frozen=True)
class TransferMask:
    """Per unit: copy the source (1) or keep the fresh init (0); train (1) or freeze (0)."""

    copy: tuple[int, ...]
    train: tuple[int, ...]
    name: str = ""

    def label(self) -> str:
        return self.name or f"copy {bits_string(self.copy)} train {bits_string(self.train)}"


def bits_string(bits: Sequence[int]) -> str:
    """(1, 0, 1) -> '101'."""
    return "".join(str(int(b)) for b in bits)


NUMBERED_GROUP = re.compile(r"^(.*?\d+)_.+$")  # 'stage1_block0' -> 'stage1', 'block_0_conv' -> 'block_0'
NUMBERED = re.compile(r"\d+$")


def block_of(path: str, layers: Sequence[str] = ()) -> str:
    """The block (a group of layers) a parameter path belongs to; `layers`: the model's top-level
    layers. The first rule that applies:

    1. a layer named `<group><number>_<rest>` belongs to block `<group><number>` (ResNet
       'stage1_block0' -> 'stage1': a stage; 'block_0_conv' -> 'block_0');
    2. a layer named `<other>_<rest>`, `<other>` another layer, joins `<other>`'s block
       ('stem_norm' -> 'stem');
    3. a path `<layer>/<child><number>/<module>/...` (a container of numbered sub-modules) belongs
       to block `<layer>/<child><number>` (transformer 'encoder/layer_0/attn/query/kernel' ->
       'encoder/layer_0'); the container's other children are block `<layer>` ('encoder/ln_out');
    4. otherwise the path's layer is a block of its own ('head', 'embed', 'hidden_0')."""
    parts = path.split("/")
    layer = parts[0]
    match = NUMBERED_GROUP.match(layer)
    if match:
        return match.group(1)
    owners = [other for other in layers if other != layer and layer.startswith(f"{other}_")]
    if owners:
        return max(owners, key=len)
    if len(parts) >= 4 and NUMBERED.search(parts[1]):
        return f"{layer}/{parts[1]}"
    return layer


def mask_units(source: Any, granularity: str = "layer") -> list[str]:
    """The units a mask has one bit for, input to output: the source's layers, its blocks (`block_of`;
    a ValueError when every block would be a single layer, e.g. an MLP), or its parameter tensors
    ('hidden_0/bias', 'hidden_0/kernel', ...) layer by layer."""
    check_choice("granularity", granularity, GRANULARITIES)
    layers = layer_names(source)
    if granularity == "layer":
        return layers
    params = flatten(as_variables(source)[COLLECTIONS_KEY])
    tensors = [path for layer in layers for path in sorted(params) if path.split("/")[0] == layer]
    if granularity == "tensor":
        return tensors
    blocks = list(dict.fromkeys(block_of(path, layers) for path in tensors))
    if blocks == layers:
        raise invalid("granularity", granularity, f"'layer' or 'tensor' for this model: it has no blocks (no layer "
                      f"named <group><n>_..., none named after another layer, no numbered sub-modules; its "
                      f"layers: {layers})")
    return blocks


def check_bits(mask: Any, units: Sequence[str], field: str = "mask") -> tuple[int, ...]:
    """A mask as a tuple of 0/1, one per unit; from a '0101' string, a sequence of bools or 0/1, or a
    dict unit -> bit naming every unit. Raises ValueError naming the field, value and what is allowed."""
    units = list(units)
    allowed = (f"{len(units)} bits (a '0'/'1' string, a list of 0/1 or bools, or a dict naming each unit), one per "
               f"unit {units}")
    if isinstance(mask, Mapping):
        unknown = [name for name in mask if name not in units]
        if unknown:
            raise invalid(field, dict(mask), f"unit names among {units}; unknown: {unknown}")
        missing = [name for name in units if name not in mask]
        if missing:
            raise invalid(field, dict(mask), f"a bit for every unit of {units}; missing: {missing}")
        values = [mask[name] for name in units]
    elif isinstance(mask, str):
        if set(mask) - {"0", "1"}:
            raise invalid(field, mask, allowed)
        values = [int(c) for c in mask]
    else:
        try:
            values = list(np.asarray(mask).reshape(-1).tolist()) if not isinstance(mask, (list, tuple)) else list(mask)
        except (TypeError, ValueError):
            raise invalid(field, mask, allowed) from None
    if len(values) != len(units):
        raise invalid(field, mask, allowed)
    if any(isinstance(v, (str, bytes)) or v not in (0, 1) for v in values):  # True == 1, False == 0
        raise invalid(field, mask, allowed)
    return tuple(int(v) for v in values)


def mask_from_bits(bits: Any, units: Sequence[str], policy: str = "copy", field: str = "mask") -> TransferMask:
    """The mask one bit string means under `policy` ('copy': copy bits, all train; 'train': all copied,
    train bits)."""
    check_choice("policy", policy, POLICIES)
    if isinstance(bits, TransferMask):
        check_bits(bits.copy, units, f"{field}.copy")
        check_bits(bits.train, units, f"{field}.train")
        return bits
    bits = check_bits(bits, units, field)
    ones = (1,) * len(units)
    return TransferMask(bits, ones) if policy == "copy" else TransferMask(ones, bits)


def baseline_mask(name: str, units: Sequence[str], head: str | None = None) -> TransferMask:
    """'scratch' (nothing copied, all trains), 'full' (all copied, all trains: full fine-tuning),
    'head_only' (all copied, only the head trains: a feature extractor). `head`: the head layer
    (default the last layer of `units`' layers)."""
    check_choice("baseline", name, BASELINES)
    n = len(units)
    if name == "scratch":
        return TransferMask((0,) * n, (1,) * n, name)
    if name == "full":
        return TransferMask((1,) * n, (1,) * n, name)
    head = units[-1].split("/")[0] if head is None else head
    train = tuple(int(unit.split("/")[0] == head) for unit in units)
    if not any(train):
        raise invalid("head", head, f"a layer among the units {list(units)}")
    return TransferMask((1,) * n, train, name)


def all_masks(units: Sequence[str]) -> list[tuple[int, ...]]:
    """Every bit string over `units` (2^n of them), '00..0' first; n at most 12."""
    if len(units) > MAX_EXHAUSTIVE_UNITS:
        raise invalid("units", list(units), f"at most {MAX_EXHAUSTIVE_UNITS} units for an exhaustive search "
                      f"(2^{len(units)} masks asked)")
    return list(itertools.product((0, 1), repeat=len(units)))


def mask_space(units: Sequence[str]):
    """A search space with one Boolean per unit; a decoded candidate is a dict unit -> bool."""
    from vhjax.search.space import Boolean, Space

    return Space({unit: Boolean() for unit in units})


# ---------------------------------------------------------------------------------------------
# Units -> per-tensor rows of the target model.


def unit_of(path: str, units: Sequence[str], granularity: str = "layer", layers: Sequence[str] = ()) -> str | None:
    """The unit a parameter path belongs to: itself (tensor units), its block (`granularity='block'`,
    `layers`: the model's top-level layers) or its layer; None if none is a unit."""
    if path in units:
        return path
    if granularity == "block":
        block = block_of(path, layers)
        return block if block in units else None
    layer = path.split("/")[0]
    return layer if layer in units else None


def tensor_rows(mask: TransferMask, units: Sequence[str], tensors: Sequence[str], granularity: str = "layer"
                ) -> tuple[np.ndarray, np.ndarray]:
    """(copy (T,), train (T,)) over the target's parameter tensors (in `parameter_tensors` order);
    a target tensor outside every unit (e.g. a layer the source lacks) is fresh and trains."""
    index = {unit: i for i, unit in enumerate(units)}
    layers = list(dict.fromkeys(path.split("/")[0] for path in tensors))
    copy, train = np.zeros(len(tensors), bool), np.ones(len(tensors), np.float32)
    for t, path in enumerate(tensors):
        unit = unit_of(path, units, granularity, layers)
        if unit is not None:
            copy[t], train[t] = bool(mask.copy[index[unit]]), float(mask.train[index[unit]])
    return copy, train


def _task_key(config: TrainConfig) -> str:
    return json.dumps({**config.to_dict(), "seed": None}, sort_keys=True)


def _copy_by_rows(population: Any, source: Mapping, transfer: Mapping[str, Any], copy: np.ndarray) -> Any:
    """The population with each member's tensors copied from the source where its row of `copy
    (P, T)` says so, and its own fresh initialisation elsewhere. Other collections (batch_stats)
    follow their layer: copied when the member copies any tensor of it."""
    members = population.members
    target = {COLLECTIONS_KEY: members.params, **dict(members.model_state or {})}
    merged, _ = transfer_params(source, target, member_axis=True, **transfer)
    fresh, treedef = jax.tree.flatten(members.params)
    copied = jax.tree.leaves(merged[COLLECTIONS_KEY])
    pick = lambda bits, new, old: jnp.asarray(np.where(bits.reshape(-1, *[1] * (np.ndim(old) - 1)), new, old))
    params = jax.tree.unflatten(treedef, [pick(copy[:, t], c, f) for t, (c, f) in enumerate(zip(copied, fresh))])
    model_state = members.model_state
    if model_state:
        tensors = ["/".join(str(getattr(k, "key", k)) for k in path)
                   for path, _ in jax.tree_util.tree_flatten_with_path(members.params)[0]]
        layers = np.array([path.split("/")[0] for path in tensors])

        def layer_bits(path) -> np.ndarray:
            layer = str(getattr(path[1], "key", path[1])) if len(path) > 1 else ""
            where = layers == layer
            return copy[:, where].any(axis=1) if where.any() else np.ones(len(copy), bool)

        new_state = {k: v for k, v in merged.items() if k != COLLECTIONS_KEY}
        model_state = jax.tree_util.tree_map_with_path(
            lambda path, new, old: pick(layer_bits(path), new, old), {**new_state},
            {k: model_state[k] for k in new_state})
    return population.replace(members=members.replace(params=params, model_state=model_state))


def masked_members(config: TrainConfig, source: Any, masks: Sequence[TransferMask], units: Sequence[str],
                   member: Mapping[str, Any] | None = None, *, transfer: Mapping[str, Any] | None = None,
                   granularity: str = "layer") -> tuple[list[dict], dict[str, np.ndarray]]:
    """(members for `fit_population`, copy rows by bucket key): member i is `member`'s fields with
    `seed = config.seed` and `update_scale` = mask i's train bits over the target's tensors.
    Checks the source against every bucket's model on shapes (no compiling)."""
    base = dict(member or {})
    for reserved in ("seed", "update_scale", "freeze"):
        if reserved in base:
            raise invalid(f"member field {reserved!r}", base[reserved], "no value: the mask sets it")
    members = [{**base, "seed": config.seed} for _ in masks]
    buckets = bucket_members(config, members)
    copy_rows: dict[str, np.ndarray] = {}
    for bucket_config, indices in buckets:
        task = bucket_task(bucket_config, stack_dynamic(indices, members))
        shapes = abstract_variables(task.model, (2, *task.train.x.shape[1:]))
        transfer_params(source, {k: v for k, v in shapes.items() if k != "dropout"}, **dict(transfer or {}))
        tensors = parameter_tensors(task)
        rows = [tensor_rows(masks[i], units, tensors, granularity) for i in indices]
        copy_rows[_task_key(bucket_config)] = np.stack([c for c, _ in rows])
        for i, (_, train) in zip(indices, rows):
            members[i]["update_scale"] = train.tolist()
    return members, copy_rows


def fit_masked(config: TrainConfig, source: Any, masks: Sequence[Any], *, policy: str = "copy",
               granularity: str = "layer", member: Mapping[str, Any] | None = None, skip: Sequence[str] = (),
               new_head: bool = True, head: str | None = None, source_data: tuple[Any, Any] | None = None,
               verbose: bool = False, mesh: Any = "auto") -> PopulationResult:
    """Train one member per mask in ONE `fit_population` call (one program when the members share
    their static config). `masks`: bit strings (read by `policy`), `TransferMask`s (e.g.
    `baseline_mask(...)`) or a mix. `member`: extra config fields shared by every member (not
    `seed`, `update_scale` or `freeze`). Every mask is checked against `mask_units(source,
    granularity)` before anything compiles. Each member's record gets its `mask`, and with
    `source_data=(x, y)` (source-domain examples, same classes) its `source` accuracy after the
    fine-tune. `mesh`: as `fit_population`'s (default 'auto': members sharded over the local
    devices)."""
    source = as_variables(source)
    units = mask_units(source, granularity)
    check_choice("policy", policy, POLICIES)
    if not masks:
        raise invalid("masks", list(masks), "at least one mask")
    masks = [mask_from_bits(m, units, policy, field=f"masks[{i}]") for i, m in enumerate(masks)]
    transfer = {"skip": tuple(skip), "new_head": new_head, "head": head}
    members, copy_rows = masked_members(config, source, masks, units, member, transfer=transfer,
                                        granularity=granularity)
    tasks: list[Any] = []

    def start(task: Any, population: Any) -> Any:
        key = _task_key(task.config)
        if key not in copy_rows:  # fit_population's buckets are masked_members' buckets
            raise RuntimeError("fit_masked: a bucket of fit_population matches none of the masked members' buckets")
        tasks.append(task)
        return _copy_by_rows(population, source, transfer, copy_rows[key])

    result = fit_population(config, members, None, same_batches=True, mesh=mesh, verbose=verbose, start=start)
    for record, mask in zip(result.members, masks):
        record["mask"] = {"copy": bits_string(mask.copy), "train": bits_string(mask.train), "name": mask.name}
    if source_data is not None:
        for record, accuracy in zip(result.members, source_accuracy(result, tasks, source_data)):
            record["source"] = {"accuracy": float(accuracy)}
    return result


def source_accuracy(result: PopulationResult, tasks: Sequence[Any], data: tuple[Any, Any]) -> np.ndarray:
    """Each member's accuracy on source-domain data `(x, y)` after its fine-tune (`tasks`: the
    buckets' tasks, in bucket order)."""
    from vhjax.population.engine import default_member_group
    from vhjax.population.fit import compiled_programs

    x, y = jnp.asarray(data[0], jnp.float32), jnp.asarray(data[1], jnp.int32)
    accuracy = np.full(len(result.members), np.nan)
    for number, (task, state) in enumerate(zip(tasks, result.states)):
        _, evaluate = compiled_programs(task, default_member_group(state.size))
        values = np.asarray(evaluate(state, x, y)["accuracy"])
        for record in result.members:
            if record["bucket"] == number:
                accuracy[record["member"]] = values[record["position"]]
    return accuracy


# ---------------------------------------------------------------------------------------------
# The search objective.


@dataclasses.dataclass
class MaskObjective:
    """A search objective over transfer masks: each generation's masks are one population.

    A candidate is a dict unit -> bool (`mask_space(units)`), read by `policy`. Metrics per
    candidate: the target's `metric` on `split` (default eval accuracy), `error` (1 - accuracy),
    `test_<metric>` when the config has a test split (for reporting; the search never sees it),
    and with `source_data=(x, y)` also `source_error` and `energy = error + source_weight *
    source_error` (for simulated annealing: `search(..., objectives='energy', direction='minimize')`).
    Diverged members get NaN (a failed trial).
    """

    config: TrainConfig
    source: Any
    policy: str = "copy"
    granularity: str = "layer"
    metric: str = "accuracy"
    split: str = "eval"
    source_data: tuple[Any, Any] | None = None
    source_weight: float = 0.0
    member: Mapping[str, Any] | None = None
    skip: Sequence[str] = ()
    new_head: bool = True
    head: str | None = None

    def __post_init__(self):
        self.source = as_variables(self.source)
        check_choice("policy", self.policy, POLICIES)
        self.units = mask_units(self.source, self.granularity)
        check_choice("split", self.split, ("eval", "test"))
        check_number("source_weight", self.source_weight, 0.0)
        if self.source_weight and self.source_data is None:
            raise invalid("source_weight", self.source_weight, "0 unless source_data=(x, y) is given")

    @property
    def fitness_metric(self) -> str:
        return self.metric

    def space(self):
        """`mask_space` over this objective's units."""
        return mask_space(self.units)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two objectives train alike (the driver refuses to resume a store with another)."""
        digest = hashlib.sha256()
        for path, leaf in sorted(flatten(self.source).items()):
            digest.update(path.encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
        return {"config": self.config.to_dict(), "policy": self.policy, "granularity": self.granularity,
                "metric": self.metric, "split": self.split, "source": digest.hexdigest(),
                "source_weight": self.source_weight, "member": dict(self.member or {})}

    def run(self, masks: Sequence[Any]) -> dict[str, np.ndarray]:
        """Train `masks` (bit strings, dicts unit -> bit, or `TransferMask`s) as one population;
        metric arrays, NaN for diverged members."""
        result = fit_masked(self.config, self.source, masks, policy=self.policy, granularity=self.granularity,
                            member=self.member, skip=self.skip, new_head=self.new_head, head=self.head,
                            source_data=self.source_data)
        alive = np.array([m["diverged_step"] is None for m in result.members])
        column = lambda split, name: np.where(alive, np.array([m[split].get(name, np.nan) for m in result.members],
                                                              np.float64), np.nan)
        out = {self.metric: column(self.split, self.metric), "error": 1.0 - column(self.split, "accuracy")}
        if self.split == "eval" and "test" in result.members[0]:  # reported, never the fitness
            out.update({f"test_{name}": column("test", name) for name in result.members[0]["test"]})
        if self.source_data is not None:
            out["source_error"] = 1.0 - column("source", "accuracy")
            out["energy"] = out["error"] + self.source_weight * out["source_error"]
        return out

    def evaluate(self, candidates: Any) -> dict[str, np.ndarray]:
        """The driver's protocol: `candidates.params` are decoded masks (dicts unit -> bool)."""
        return self.run([{unit: int(bool(bit)) for unit, bit in c.items()} for c in candidates.params])


# ---------------------------------------------------------------------------------------------
# Baselines and the exhaustive optimum.


def exhaustive_table(objective: MaskObjective, *, population: int | None = None, workdir: Any = None,
                     verbose: bool = False) -> dict[str, dict[str, float]]:
    """Every mask over the objective's units, trained through the search driver (strategy 'grid',
    `population` masks per generation, default all 2^n at once): bit string -> metrics."""
    from vhjax.search import search

    total = len(all_masks(objective.units))
    result = search(objective, objective.space(), "grid", budget=total, population=population or total,
                    workdir=workdir, verbose=verbose)
    table = {}
    for trial in result.trials:
        table[result_mask(trial.params, objective.units)] = {k: float(v) for k, v in trial.metrics.items()
                                                               if np.ndim(v) == 0}
    return table


def optimum(table: Mapping[str, Mapping[str, float]], metric: str = "accuracy",
            direction: str = "maximize") -> tuple[list[str], float]:
    """(the masks that reach the best value, that value) of an exhaustive table; ties all count."""
    check_choice("direction", direction, ("maximize", "minimize"))
    sign = 1.0 if direction == "maximize" else -1.0
    values = {bits: sign * row[metric] for bits, row in table.items() if np.isfinite(row[metric])}
    if not values:
        raise invalid("table", "every mask failed", "at least one mask with a finite metric")
    best = max(values.values())
    return sorted(bits for bits, v in values.items() if v == best), sign * best


def result_mask(trial_params: Mapping[str, Any], units: Sequence[str]) -> str:
    """A search trial's decoded candidate as a bit string over `units`."""
    return bits_string(int(bool(trial_params[u])) for u in units)


def reaches_optimum(found: str, table: Mapping[str, Mapping[str, float]], metric: str = "accuracy",
                    direction: str = "maximize", tolerance: float = 0.0) -> bool:
    """Whether mask `found` is optimal in the exhaustive table (within `tolerance` of the best)."""
    _, best = optimum(table, metric, direction)
    value = table[found][metric]
    return bool(value >= best - tolerance if direction == "maximize" else value <= best + tolerance)
