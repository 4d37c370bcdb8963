"""Export one member of a population as plain Flax variables saved with orbax.

    export_member(result_or_workdir, "exported/best")            # the best member (rank 0)
    export_member("runs/pop", "exported/third", rank=2)          # from a fit_population workdir
    export_member(result, "exported/m5", index=5)                # member 5 of the members list

    variables = ocp.StandardCheckpointer().restore("exported/best")   # plain orbax, no vhjax
    logits = model.apply(variables, x)                                 # {"params": ..., "batch_stats": ...}

The saved tree is what `model.apply` takes: `{"params": ...}` plus the model's other collections
(e.g. `batch_stats`). The member's parameters are its final ones, or its best ones when the run kept
them (`patience` or `keep_best`), as `PopulationResult` reports. A `vhjax_member.json` beside the
arrays (in the same folder) records the member's index, rank, config and metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from vhjax.validation import check_choice

MEMBER_FILE = "vhjax_member.json"


def rank_members(members: Sequence[Mapping[str, Any]], metric: str, split: str, mode: str) -> list[Mapping]:
    """Members that did not diverge and have a finite metric, best first."""
    check_choice("mode", mode, ("max", "min"))
    alive = [m for m in members if m.get("diverged_step") is None and np.isfinite(m.get(split, {}).get(metric, np.nan))]
    return sorted(alive, key=lambda m: m[split][metric], reverse=mode == "max")


def choose_member(members: Sequence[Mapping[str, Any]], rank: int | None, index: int | None, metric: str, split: str,
                  mode: str) -> tuple[Mapping, int | None]:
    """(the member, its rank) by `index` (position in the members list) or by `rank` (0 = best)."""
    ranked = rank_members(members, metric, split, mode)
    if index is not None:
        if not 0 <= index < len(members):
            raise ValueError(f"index has value {index}; allowed: 0 to {len(members) - 1} (the population's members)")
        member = next(m for m in members if m["member"] == index)
        position = [m["member"] for m in ranked].index(index) if member in ranked else None
        return member, position
    rank = 0 if rank is None else rank
    if not ranked:
        raise ValueError(f"every member of the population of {len(members)} diverged or has a non-finite {split} "
                         f"{metric}; there is no member to rank")
    if not 0 <= rank < len(ranked):
        raise ValueError(f"rank has value {rank}; allowed: 0 to {len(ranked) - 1} (members that did not diverge)")
    return ranked[rank], rank


def member_variables(source: Any, member: Mapping[str, Any]) -> dict:
    """`{"params": ..., **model_state}` of one member of a PopulationResult or a workdir."""
    bucket, position = member["bucket"], member["position"]
    take = lambda leaf: np.asarray(leaf[position])
    if isinstance(source, (str, Path)):
        state = restore_bucket(Path(source) / f"bucket_{bucket}")
        members = state["population"]["members"]
        params, model_state = members["params"], members.get("model_state") or {}
        best = state.get("hooks", {}).get("keep_best")
        if best is not None and int(np.asarray(best["step"])[position]) >= 0:  # the kept best parameters
            params, model_state = best["params"], best.get("model_state") or {}
    else:
        members = source.states[bucket].members
        params, model_state = members.params, members.model_state
    return {"params": jax.tree.map(take, params), **jax.tree.map(take, dict(model_state or {}))}


def restore_bucket(bucket_dir: Path) -> dict:
    """The latest checkpoint of a bucket as plain arrays (no template needed)."""
    import orbax.checkpoint as ocp

    directory = (bucket_dir / "checkpoints").absolute()
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{str(bucket_dir)!r} holds no checkpoint; allowed: a fit_population workdir")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"]


def export_member(source: Any, path: str | Path, *, rank: int | None = None, index: int | None = None,
                  metric: str = "accuracy", split: str = "eval", mode: str = "max") -> Path:
    """Save one member's Flax variables at `path` with orbax (see the module docstring); returns the
    path. `source`: a `PopulationResult` or a `fit_population` workdir; the member is chosen by
    `index` (its position in the members list) or by `rank` on `split` `metric` (0 = best, default)."""
    import orbax.checkpoint as ocp

    if rank is not None and index is not None:
        raise ValueError("rank and index are both given; allowed: one of them")
    if isinstance(source, (str, Path)):
        result_file = Path(source) / "result.json"
        if not result_file.is_file():
            raise FileNotFoundError(f"{str(result_file)!r} does not exist; allowed: the workdir of a finished "
                                    "fit_population (it writes result.json)")
        members = json.loads(result_file.read_text())
    else:
        members = source.members
    member, position = choose_member(members, rank, index, metric, split, mode)
    variables = member_variables(source, member)
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{str(path)!r} exists; allowed: a new path")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()
    record = {"member": member["member"], "rank": position, "ranked_by": f"{split}/{metric} ({mode})",
              "config": member.get("config"), **{s: member[s] for s in ("eval", "test") if s in member}}
    (path / MEMBER_FILE).write_text(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))
    return path
