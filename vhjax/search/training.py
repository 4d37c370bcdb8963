"""Objective kind (a): every generation's candidates are trained together by the population engine.

A decoded candidate is a dict of config fields. Dotted names nest: `arch.width` goes into the
member's `arch` (masked architectures, one compiled program for all members), `model_kwargs.x`
into `model_kwargs` (a different static shape: its own bucket), `optimizer_kwargs.b1` into the
injectable optimizer hyperparameters. Architecture fields that the candidate leaves out take the
model's full size; a scalar given for a per-layer field applies to every layer.

A member that diverges is isolated by the engine; its fitness is NaN, so the driver records the
trial as failed and the search goes on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vhjax.config import TrainConfig, validate
from vhjax.search.trial_states import TrialStates, carried_state, continue_members, static_signature

MemberFn = Callable[[Mapping[str, Any]], dict]
NESTED_FIELDS = ("arch", "model_kwargs", "optimizer_kwargs", "loss_weights")


def candidate_to_member(candidate: Mapping[str, Any]) -> dict:
    """`{'learning_rate': .., 'arch.depth': 2}` -> `{'learning_rate': .., 'arch': {'depth': 2}}`."""
    member: dict[str, Any] = {}
    for name, value in candidate.items():
        head, dot, tail = name.partition(".")
        if not dot:
            member[name] = value
            continue
        if head not in NESTED_FIELDS:
            raise ValueError(f"candidate parameter {name!r}: dotted names must start with one of "
                             f"{NESTED_FIELDS}")
        member.setdefault(head, {})[tail] = value
    if "model_kwargs" in member:
        member["model_kwargs"] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in member["model_kwargs"].items()}
    return member


def complete_arch(arch: Mapping[str, Any], full: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Fill fields missing from `arch` with the model's full architecture; broadcast scalars."""
    unknown = sorted(set(arch) - set(full))
    if unknown:
        raise ValueError(f"arch field(s) {unknown} unknown to the model; known: {sorted(full)}")
    completed = {}
    for name, default in full.items():
        default = np.asarray(default)
        value = np.asarray(arch.get(name, default))
        if value.dtype == bool:
            value = value.astype(default.dtype)
        completed[name] = np.broadcast_to(value, default.shape).astype(default.dtype)
    return completed


@dataclasses.dataclass
class TrainingObjective:
    """Train each generation's candidates as one population; fitness is a metric of each member.

    Args:
      config: the base training config every candidate overrides.
      metric: the fitness metric (`accuracy`, `loss`, ...) on `split` ('eval' or 'test').
      workdir: keeps each generation's population checkpoints (`generation_0000/`, ...), so a
        search killed in the middle of a generation resumes its training, not only its trials.
      to_member: candidate dict -> member dict (default `candidate_to_member`).
      mesh: as `fit_population`'s: 'auto' (default) shards members over every device when there
        are several, None keeps one device, or a `vhjax.parallel.population_mesh`.
      continue_from_parent: a candidate with a parent trial (a multi-fidelity promotion, a PBT
        child) whose saved state has the same static config continues from it instead of
        retraining from scratch (`vhjax.search.trial_states`; states under `workdir/trial_states`,
        in memory without a workdir). With a constant schedule continuing equals training the
        parent's run on; a schedule spans each trial's own budget, so a decaying one is read at
        the continued steps of the longer horizon.
    """

    config: TrainConfig
    metric: str = "accuracy"
    split: str = "eval"
    workdir: str | Path | None = None
    to_member: MemberFn = candidate_to_member
    mesh: Any = "auto"
    verbose: bool = False
    continue_from_parent: bool = True

    def __post_init__(self):
        validate(self.config)
        if self.split not in ("eval", "test"):
            raise ValueError(f"TrainingObjective: split {self.split!r}; allowed: 'eval', 'test'")
        if self.split == "test" and not self.config.test_split:
            raise ValueError("TrainingObjective: split 'test' needs config.test_split")
        self._full_arch = self._model_full_arch()
        self._states = TrialStates(None if self.workdir is None else Path(self.workdir) / "trial_states")

    @property
    def fitness_metric(self) -> str:
        return self.metric

    def fingerprint(self) -> dict[str, Any]:
        """What makes two objectives train alike: the training config, metric and split.

        The search driver stores it with the study, so a workdir is never resumed with another
        training config (e.g. `steps` 40 -> 8) and trials of the two are never ranked together.
        """
        return {"config": self.config.to_dict(), "metric": self.metric, "split": self.split,
                "continue_from_parent": self.continue_from_parent}

    def _model_full_arch(self) -> dict | None:
        from vhjax.train.task import resolve_model

        model = resolve_model(self.config)
        return model.full_arch() if hasattr(model, "full_arch") else None

    def members(self, candidates: list[Mapping[str, Any]]) -> list[dict]:
        """The population-engine members of a batch of decoded candidates."""
        members = [self.to_member(c) for c in candidates]
        if self._full_arch is not None and any("arch" in m for m in members):
            for member in members:
                member["arch"] = complete_arch(member.get("arch", {}), self._full_arch)
        return members

    def evaluate(self, candidates: Any) -> dict[str, np.ndarray]:
        """Train the candidates as one population per (budget, starting step) group.

        Without fidelities every candidate trains `config.steps`. A candidate whose parent trial
        (`candidates.parent_ids`: a multi-fidelity promotion, a PBT child) left a state with the
        same static config continues from it (`continue_from_parent`): it trains only from the
        parent's step to its budget. Each candidate's `trained_steps` is reported with its metrics.
        """
        members = self.members(list(candidates.params))
        config = dataclasses.replace(self.config, seed=self.config.seed + int(candidates.generation))
        workdir = None if self.workdir is None else Path(self.workdir) / f"generation_{candidates.generation:04d}"
        fidelity = getattr(candidates, "fidelity", None)
        budgets = np.full(len(members), config.steps) if fidelity is None else np.asarray(fidelity).astype(int)
        parents = list(getattr(candidates, "parent_ids", None) or [None] * len(members))
        signatures = [self._signature(config, member) for member in members]
        starts = [self._parent_step(parent, signature, int(budget))
                  for parent, signature, budget in zip(parents, signatures, budgets)]
        merged: dict[str, np.ndarray] = {}
        for budget, start in sorted({(int(b), s) for b, s in zip(budgets, starts)}):
            where = [i for i in range(len(members)) if budgets[i] == budget and starts[i] == start]
            part_config = dataclasses.replace(config, steps=budget, eval_every=min(config.eval_every, budget))
            part_dir = None if workdir is None else (
                workdir if fidelity is None and start == 0 else
                workdir / (f"budget_{budget}" + (f"_from_{start}" if start else "")))
            continue_from = None if start == 0 else [parents[i] for i in where]
            part = self._train(part_config, [members[i] for i in where], part_dir, continue_from,
                               [candidates.trial_ids[i] for i in where], [signatures[i] for i in where])
            part["trained_steps"] = np.full(len(where), float(budget - start))
            for name, values in part.items():
                merged.setdefault(name, np.full(len(members), np.nan))[where] = values
        return merged

    def _signature(self, config: TrainConfig, member: Mapping[str, Any]) -> str:
        from vhjax.population.fit import bucket_members, with_config_loss_weights

        return static_signature(bucket_members(config, [with_config_loss_weights(config, member)])[0][0])

    def _parent_step(self, parent: int | None, signature: str, budget: int) -> int:
        """The step a candidate starts from: its parent's, when it can continue from it; else 0."""
        if parent is None or not self.continue_from_parent:
            return 0
        step = self._states.step(int(parent), signature)
        return step if step is not None and 0 < step < budget else 0

    def _train(self, config: TrainConfig, members: list[dict], workdir: Path | None,
               continue_from: list[int] | None, trial_ids: list[int], signatures: list[str]) -> dict[str, np.ndarray]:
        from vhjax.population import fit_population

        start = None if continue_from is None else self._starter(config, members, continue_from)
        result = fit_population(config, members, workdir, mesh=self.mesh, verbose=self.verbose, start=start)
        for trial_id, signature, member in zip(trial_ids, signatures, result.members):
            if self.continue_from_parent and member["diverged_step"] is None:
                state = carried_state(result.states[member["bucket"]].members, member["position"])
                self._states.put(int(trial_id), signature, state)
        return member_metrics(result.members, self.metric, self.split)

    def _starter(self, config: TrainConfig, members: list[dict], parents: list[int]) -> Callable:
        """A `fit_population(start=...)` that puts each member's parent state into its bucket's population."""
        from vhjax.population.fit import bucket_members, with_config_loss_weights

        buckets = iter(bucket_members(config, [with_config_loss_weights(config, m) for m in members]))

        def start(task: Any, population: Any) -> Any:
            _, indices = next(buckets)
            states = [self._states.restore(parents[i], carried_state(population.members, position))
                      for position, i in enumerate(indices)]
            return continue_members(population, states)

        return start


def member_metrics(members: list[dict], metric: str, split: str) -> dict[str, np.ndarray]:
    """Per-member metric arrays for the driver: fitness metric first, NaN for diverged members."""
    alive = np.array([m["diverged_step"] is None for m in members])
    out: dict[str, np.ndarray] = {}
    for where in ("eval", "test"):
        names = sorted({k for m in members for k in m.get(where, {})})
        for name in names:
            values = np.array([m.get(where, {}).get(name, np.nan) for m in members], np.float64)
            key = name if where == split else f"{where}_{name}"
            out[key] = np.where(alive, values, np.nan)
    if metric not in out:
        known = sorted({k for m in members for k in m.get(split, {})})
        raise ValueError(f"TrainingObjective: metric {metric!r} is not reported on split {split!r}; "
                         f"known: {known}")
    out["diverged_step"] = np.array([-1 if m["diverged_step"] is None else m["diverged_step"]
                                     for m in members], np.float64)
    if any("privacy" in m for m in members):  # DP-SGD: the epsilon each spent (inf: not private)
        out["epsilon"] = np.array([m["privacy"]["epsilon"] if m.get("privacy") else np.inf for m in members],
                                  np.float64)
    return out
