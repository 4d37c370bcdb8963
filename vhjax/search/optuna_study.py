"""How a vhjax search looks as an Optuna study: distributions, directions, trial attributes.

Every vhjax trial is one Optuna trial: its parameters with the Optuna distributions of the
vhjax space (so `optuna.importance` and `optuna.visualization` work), its objective value(s),
its state (RUNNING, COMPLETE, FAIL), and vhjax's own fields (unit-cube point, generation, slot,
parent, fidelity, metrics) in the system attribute `vhjax:trial`. Metrics and lineage are
copied to user attributes so that optuna-dashboard shows them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

TRIAL_ATTR = "vhjax:trial"  # the trial's vhjax fields (JSON), the source of truth when read back
STATE_ATTR = "vhjax:state"  # study: {"generation": g, "state": base64 msgpack}
META_PREFIX = "vhjax:meta:"  # study: key/value pairs (the config fingerprint, ...)
OBJECTIVES_ATTR = "vhjax:objectives"  # study: objective metric names, in the order of the values
FAIL_REASON = "objective value not finite (the trial failed or diverged)"
_PRIMITIVE = (bool, int, float, str, type(None))


def distributions(space: Any) -> dict[str, Any]:
    """Optuna distributions of a vhjax `Space`'s parameters (name -> distribution).

    Float -> FloatDistribution, Int -> IntDistribution (log and step kept), Categorical ->
    CategoricalDistribution when its choices are plain values (None, bool, int, float, str);
    other parameters (and spaces that are not a vhjax `Space`) have none: Optuna does not see them,
    vhjax still stores them.
    """
    import optuna.distributions as od

    from vhjax.search.space import Categorical, Float, Int

    out: dict[str, Any] = {}
    params = getattr(space, "params", None)
    if not isinstance(params, Mapping):
        return out
    for name, param in params.items():
        if isinstance(param, Int):
            step = int(param.step or 1)
            out[name] = od.IntDistribution(int(param.low), int(param.high), log=bool(param.log), step=step)
        elif isinstance(param, Float):
            step = None if param.step is None else float(param.step)
            out[name] = od.FloatDistribution(float(param.low), float(param.high), log=bool(param.log), step=step)
        elif isinstance(param, Categorical) and _plain_choices(param.choices):
            out[name] = od.CategoricalDistribution(tuple(param.choices))
    return out


def _plain_choices(choices: Any) -> bool:
    """Choices Optuna stores as they are: distinct None / bool / int / float / str values."""
    return all(type(c) in _PRIMITIVE for c in choices) and len(set(map(repr, choices))) == len(choices)


def optuna_params(params: Mapping[str, Any], dists: Mapping[str, Any]) -> tuple[dict, dict]:
    """(params, distributions) of the candidate values Optuna can hold (inactive ones left out)."""
    values, used = {}, {}
    for name, value in params.items():
        dist = dists.get(name)
        if dist is None:
            continue
        value = value.item() if isinstance(value, np.generic) else value
        try:
            internal = dist.to_internal_repr(value)
        except (ValueError, TypeError):
            continue
        if not dist._contains(internal):  # a value the distribution does not hold: vhjax-only
            continue
        values[name], used[name] = value, dist
    return values, used


def directions(objectives: Mapping[str, str] | None) -> list[str]:
    """Optuna directions of vhjax objectives (name -> 'maximize'/'minimize'); default maximize."""
    return list(objectives.values()) if objectives else ["maximize"]


def dashboard_attrs(fields: Mapping[str, Any]) -> dict[str, Any]:
    """User attributes shown by optuna-dashboard: numeric metrics, then generation, slot, parent, fidelity."""
    attrs = {}
    for name, value in (fields.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attrs[str(name)] = value
    for name in ("generation", "slot", "parent_id", "fidelity"):
        if fields.get(name) is not None:
            attrs[name] = fields[name]
    return attrs
