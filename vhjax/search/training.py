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
      mesh: a `vhjax.parallel.population_mesh` to shard members over devices.
    """

    config: TrainConfig
    metric: str = "accuracy"
    split: str = "eval"
    workdir: str | Path | None = None
    to_member: MemberFn = candidate_to_member
    mesh: Any = None
    verbose: bool = False

    def __post_init__(self):
        validate(self.config)
        if self.split not in ("eval", "test"):
            raise ValueError(f"TrainingObjective: split {self.split!r}; allowed: 'eval', 'test'")
        if self.split == "test" and not self.config.test_split:
            raise ValueError("TrainingObjective: split 'test' needs config.test_split")
        self._full_arch = self._model_full_arch()

    @property
    def fitness_metric(self) -> str:
        return self.metric

    def fingerprint(self) -> dict[str, Any]:
        """What makes two objectives train alike: the training config, metric and split.

        The search driver stores it with the study, so a workdir is never resumed with another
        training config (e.g. `steps` 40 -> 8) and trials of the two are never ranked together.
        """
        return {"config": self.config.to_dict(), "metric": self.metric, "split": self.split}

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
        """Train the candidates as one population (one per budget in a multifidelity search).

        `candidates.parent_ids` name the trial a promoted (multi-fidelity) or exploiting (PBT)
        candidate would continue from. `fit_population` starts every member from scratch, so
        this objective trains such a candidate from scratch up to its budget: correct results,
        at the price of the parent's steps again.
        """
        members = self.members(list(candidates.params))
        config = dataclasses.replace(self.config, seed=self.config.seed + int(candidates.generation))
        workdir = None if self.workdir is None else Path(self.workdir) / f"generation_{candidates.generation:04d}"
        fidelity = getattr(candidates, "fidelity", None)
        if fidelity is None:
            return self._train(config, members, workdir)
        budgets = np.asarray(fidelity).astype(int)
        merged: dict[str, np.ndarray] = {}
        for budget in np.unique(budgets):
            where = np.flatnonzero(budgets == budget)
            steps_config = dataclasses.replace(config, steps=int(budget), eval_every=min(config.eval_every, int(budget)))
            part_dir = None if workdir is None else workdir / f"budget_{int(budget)}"
            part = self._train(steps_config, [members[i] for i in where], part_dir)
            for name, values in part.items():
                merged.setdefault(name, np.full(len(members), np.nan))[where] = values
        return merged

    def _train(self, config: TrainConfig, members: list[dict], workdir: Path | None) -> dict[str, np.ndarray]:
        from vhjax.population import fit_population

        result = fit_population(config, members, workdir, mesh=self.mesh, verbose=self.verbose)
        return member_metrics(result.members, self.metric, self.split)


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
    return out
