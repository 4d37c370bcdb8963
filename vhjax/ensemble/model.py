"""`Ensemble`: members plus a combination rule, used as one model (predict, evaluate, save, load, cost)."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import calibration, models
from vhjax.ensemble import combine
from vhjax.ensemble.members import MemberGroup, group_logits, groups_from_population, mc_dropout_probs, param_count

FORMAT_VERSION = 1



@functools.partial(jax.jit, static_argnames=("rule", "count", "scaled"))
def _combined_probs(member_probs: jax.Array, candidate_of: Any, weights: Any, meta: Any, temperature: jax.Array, *,
                    rule: str, count: int, scaled: bool) -> jax.Array:
    """`Ensemble.combine` as one program: pool per candidate, the rule, then the temperature."""
    probs = member_probs if candidate_of is None else combine.pool_members(member_probs, candidate_of, count)
    probs = combine.combine_probs(rule, probs, weights, meta)
    if scaled:
        probs = jax.nn.softmax(jnp.log(jnp.clip(probs, 1e-12, 1.0)) / temperature, axis=-1)
    return probs


@jax.jit
def _disagreement(member_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean predictive entropy of the members' average and mean mutual information, (M, N, C) -> scalars."""
    return (calibration.predictive_entropy(member_probs.mean(0)).mean(),
            calibration.mutual_information(member_probs).mean())


@dataclasses.dataclass
class Ensemble:
    """Members (one or more `MemberGroup`s, e.g. one per population bucket) and how to combine them.

    `rule`: 'average', 'weighted', 'caruana', 'vote' or 'stacking' (see `vhjax.ensemble.combine`).
    `weights`: one per member over all groups in order ('weighted', 'caruana', optional for 'vote').
    `meta`: the stacking meta-learner. `temperature`: applied to the combined prediction's
    log-probabilities (fit with `calibrate`). `candidate_of`: optional, one candidate index per
    member; members of a candidate are averaged first and the rule combines candidates (weights
    and meta are then per candidate), e.g. the K fold models of each k-fold candidate (`stack_kfold`).
    """

    groups: list[MemberGroup]
    rule: str = "average"
    weights: np.ndarray | None = None
    meta: dict | None = None
    temperature: float = 1.0
    candidate_of: np.ndarray | None = None

    def __post_init__(self):
        if not self.groups:
            raise ValueError("groups is empty; allowed: at least one MemberGroup with >= 1 member")
        if self.rule not in combine.RULES:
            raise ValueError(f"rule has value {self.rule!r}; allowed: {', '.join(combine.RULES)}")
        if self.candidate_of is not None:
            self.candidate_of = check_candidate_of(self.candidate_of, self.size)
        if self.weights is not None:
            self.weights = combine.check_weights(self.weights, self.combined_size, normalized=self.rule != "vote")
        if self.rule in ("weighted", "caruana") and self.weights is None:
            raise ValueError(f"rule {self.rule!r} needs weights (fit them with Ensemble.fit)")
        if self.rule == "stacking" and self.meta is None:
            raise ValueError("rule 'stacking' needs meta (fit it with Ensemble.fit)")
        if not self.temperature > 0:
            raise ValueError(f"temperature has value {self.temperature!r}; allowed: a positive float")

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_population(cls, result: Any, config: Any, *, members: Sequence[int] | None = None,
                        rule: str = "average") -> "Ensemble":
        """All alive members of a `fit_population` result (or those in `members`), averaged."""
        return cls(groups_from_population(result, config, members=members), rule=rule)

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def combined_size(self) -> int:
        """How many inputs the rule combines: candidates if `candidate_of` is set, else members."""
        return self.size if self.candidate_of is None else int(self.candidate_of.max()) + 1

    def pool(self, member_probs: jax.Array) -> jax.Array:
        """Member probabilities (M, N, C) -> the rule's inputs: per-candidate means with `candidate_of`."""
        if self.candidate_of is None:
            return member_probs
        return combine.pool_members(member_probs, self.candidate_of, self.combined_size)

    @property
    def names(self) -> list[str]:
        return [n for g in self.groups for n in (g.names or [str(i) for i in range(g.size)])]

    # --- prediction -----------------------------------------------------------------------
    def member_logits(self, x: Any, batch_size: int = 1000) -> jax.Array:
        """(M, N, C) logits of every member; ValueError when groups disagree on the class count."""
        outs = [group_logits(g, x, batch_size=batch_size) for g in self.groups]
        classes = sorted({int(o.shape[-1]) for o in outs})
        if len(classes) > 1:
            raise ValueError(f"groups predict different class counts {classes}; allowed: the same classes")
        return jnp.concatenate(outs, axis=0)

    def member_probs(self, x: Any, batch_size: int = 1000) -> jax.Array:
        return jax.nn.softmax(self.member_logits(x, batch_size), axis=-1)

    def combine(self, member_probs: jax.Array) -> jax.Array:
        """Ensemble probabilities (N, C) from member probabilities (M, N, C), temperature applied."""
        return _combined_probs(jnp.asarray(member_probs), self.candidate_of, self.weights, self.meta,
                               jnp.float32(self.temperature), rule=self.rule, count=self.combined_size,
                               scaled=self.temperature != 1.0)

    def predict_proba(self, x: Any) -> jax.Array:
        return self.combine(self.member_probs(x))

    def predict(self, x: Any) -> jax.Array:
        return jnp.argmax(self.predict_proba(x), axis=-1)

    def mc_dropout_proba(self, x: Any, key: jax.Array, samples: int = 20, dropout_rate: float = 0.1) -> jax.Array:
        """(M * samples, N, C): every member with test-time dropout (see `members.mc_dropout_probs`)."""
        return jnp.concatenate([mc_dropout_probs(g, x, key, samples=samples, dropout_rate=dropout_rate)
                                for g in self.groups], axis=0)

    def evaluate(self, x: Any, y: Any, num_bins: int = 15) -> dict[str, Any]:
        """accuracy, nll, brier, ece of the ensemble; the same per member; mean predictive entropy
        and mutual information (disagreement) of the members."""
        member_probs = self.member_probs(x)
        y = jnp.asarray(y, jnp.int32)
        out = calibration.calibration_metrics(self.combine(member_probs), y, num_bins)
        out["members"] = {k: v.tolist() for k, v in combine.member_scores(member_probs, y).items()}
        if self.candidate_of is not None:
            out["candidates"] = {k: v.tolist() for k, v in combine.member_scores(self.pool(member_probs), y).items()}
        entropy, mutual_information = _disagreement(member_probs)
        out["entropy"], out["mutual_information"] = float(entropy), float(mutual_information)
        return out

    # --- fitting the combiner on validation data -----------------------------------------
    def fit(self, rule: str, x_val: Any, y_val: Any, **options: Any) -> "Ensemble":
        """A copy with the rule's parameters fit on validation data (weights, selection, meta-learner)."""
        probs = self.pool(self.member_probs(x_val))
        weights, meta = None, None
        if rule == "weighted":
            weights = combine.fit_weights(probs, y_val, **options)
        elif rule == "caruana":
            weights, _ = combine.caruana_selection(probs, y_val, **options)
        elif rule == "stacking":
            meta = combine.fit_stacking(probs, y_val, **options)
        elif rule == "vote":
            weights = options.get("weights")
        elif rule != "average":
            raise ValueError(f"rule has value {rule!r}; allowed: {', '.join(combine.RULES)}")
        return dataclasses.replace(self, rule=rule, weights=weights, meta=meta, temperature=1.0)

    def calibrate(self, x_val: Any, y_val: Any) -> "Ensemble":
        """A copy with temperature scaling of the combined prediction fit on validation data."""
        probs = combine.combine_probs(self.rule, self.pool(self.member_probs(x_val)), self.weights, self.meta)
        temperature = calibration.fit_temperature(jnp.log(jnp.clip(probs, 1e-12, 1.0)), y_val)
        return dataclasses.replace(self, temperature=temperature)

    def select(self, indices: Sequence[int]) -> "Ensemble":
        """A copy with only members `indices` (over all groups in order), rule 'average' (members of
        one candidate are still averaged first)."""
        indices = sorted(int(i) for i in indices)
        if not indices or indices[0] < 0 or indices[-1] >= self.size:
            raise ValueError(f"indices has value {indices}; allowed: a non-empty subset of 0..{self.size - 1}")
        groups, start = [], 0
        for g in self.groups:
            local = [i - start for i in indices if start <= i < start + g.size]
            if local:
                groups.append(g.take(local))
            start += g.size
        if self.candidate_of is None:
            return Ensemble(groups)
        _, renumbered = np.unique(self.candidate_of[indices], return_inverse=True)
        return Ensemble(groups, candidate_of=renumbered)

    # --- cost -----------------------------------------------------------------------------
    def cost(self, x: Any, *, repeats: int = 5) -> dict[str, Any]:
        """Parameters (per member and used in total), FLOPs per example (XLA's count, summed over
        used members) and the measured latency of `predict_proba` on `x` (median of `repeats`)."""
        x = jnp.asarray(x)
        weights = np.ones(self.combined_size) if self.weights is None or self.rule == "vote" else self.weights
        used = weights > 0 if self.candidate_of is None else weights[self.candidate_of] > 0
        per_member_params, per_member_flops = [], []
        for g in self.groups:
            n = param_count(g)
            try:
                flops = float(models.flops_per_example(g.model, x.shape[1:]))
            except Exception:  # a model the cost model cannot trace: report parameters only
                flops = float("nan")
            per_member_params += [n] * g.size
            per_member_flops += [flops] * g.size
        jax.block_until_ready(self.predict_proba(x))  # compile first
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            jax.block_until_ready(self.predict_proba(x))
            times.append(time.perf_counter() - tick)
        return {"members": int(used.sum()), "params_per_member": per_member_params,
                "params": int(np.sum(np.asarray(per_member_params)[used])),
                "flops_per_example": float(np.sum(np.asarray(per_member_flops)[used])),
                "latency_s": float(np.median(times)), "batch": int(x.shape[0])}

    # --- persistence: one npz of arrays and one json of everything else --------------------
    def save(self, path: str | Path) -> Path:
        """Write `path/ensemble.json` and `path/arrays.npz`; `Ensemble.load(path)` reads them back."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        groups = []
        for index, g in enumerate(self.groups):
            leaves, treedef = jax.tree_util.tree_flatten_with_path({"variables": g.variables, "arch": g.arch})
            keys = []
            for key_path, leaf in leaves:
                name = f"g{index}/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)
                arrays[name] = np.asarray(leaf)
                keys.append(name)
            groups.append({"model": g.model_spec, "names": g.names, "keys": keys})
        if self.meta is not None:
            arrays["meta/kernel"], arrays["meta/bias"] = np.asarray(self.meta["kernel"]), np.asarray(self.meta["bias"])
        np.savez(path / "arrays.npz", **arrays)
        record = {"format": FORMAT_VERSION, "rule": self.rule, "temperature": self.temperature,
                  "weights": None if self.weights is None else np.asarray(self.weights).tolist(),
                  "groups": groups,
                  "candidate_of": None if self.candidate_of is None else self.candidate_of.tolist()}
        (path / "ensemble.json").write_text(json.dumps(record, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> "Ensemble":
        """Read a saved ensemble; `model` is needed only for modules outside the registry."""
        path = Path(path)
        record = json.loads((path / "ensemble.json").read_text())
        if record.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {record.get('format')!r}; allowed: {FORMAT_VERSION}")
        with np.load(path / "arrays.npz") as data:
            arrays = {k: data[k] for k in data.files}
        groups = []
        for spec in record["groups"]:
            tree: dict = {}
            for key in spec["keys"]:
                parts = key.split("/")[1:]
                node = tree
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = jnp.asarray(arrays[key])
            if spec["model"] is None and model is None:
                raise ValueError(f"{path}: a group's model is not from the registry; pass model= to load")
            module = model if spec["model"] is None else models.get_model(spec["model"]["name"],
                                                                           **spec["model"]["kwargs"])
            groups.append(MemberGroup(module, tree["variables"], tree.get("arch"), spec["model"], spec["names"]))
        meta = ({"kernel": arrays["meta/kernel"], "bias": arrays["meta/bias"]} if "meta/kernel" in arrays else None)
        weights = None if record["weights"] is None else np.asarray(record["weights"])
        candidate_of = record.get("candidate_of")
        return cls(groups, record["rule"], weights, meta, record["temperature"],
                   None if candidate_of is None else np.asarray(candidate_of))


def check_candidate_of(candidate_of: Any, size: int) -> np.ndarray:
    """One candidate index per member, every candidate 0..max used at least once."""
    array = np.asarray(candidate_of)
    if array.shape != (size,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"candidate_of has shape {array.shape} ({array.dtype}); allowed: one integer per member, "
                         f"shape ({size},)")
    if array.min() < 0 or set(np.unique(array).tolist()) != set(range(int(array.max()) + 1)):
        raise ValueError(f"candidate_of has value {array.tolist()}; allowed: candidate indices 0..n-1, each used")
    return array.astype(np.int64)
