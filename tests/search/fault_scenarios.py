"""Tiny runs for the fault-injection tests and the soak script (`experiments/soak_faults.py`).

`run(name, workdir)` runs one scenario and returns its outcome as plain JSON data in a form that is
the same for an uninterrupted run and a killed-then-resumed one when nothing was lost or duplicated
(trial ids are left out: a generation cut before its commit is inserted again under new ids; a
trial's parent is named by its (generation, slot)). `python -m tests.search.fault_scenarios NAME
kill:WORKDIR:POINT` runs one in a fresh process that kills itself at POINT (see `main`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

# steps, eval_every and the interval keep every run to a few compiled chunks on a CPU
_TRAIN = dict(model="mlp", model_kwargs={"widths": (8,), "num_classes": 10}, learning_rate=3e-3,
              batch_size=32, steps=20, eval_every=10, seed=0)
SCENARIOS = ("search", "multifidelity", "fit", "population", "pbt")


def _space():
    from vhjax.search import Categorical, Float, Int, Space

    return Space({"x": Float(-2.0, 2.0), "n": Int(1, 8), "kind": Categorical(["a", "b", "c"])})


def _objective(batch):
    import numpy as np

    return np.asarray([-(c["x"] - 0.3) ** 2 - 0.1 * c["n"] + (c["kind"] == "b") for c in batch])


def _budgeted(batch, budgets):
    import numpy as np

    return np.asarray([-(c["x"] - 0.3) ** 2 + 0.01 * b for c, b in zip(batch, budgets)])


def trials_outcome(result) -> dict[str, Any]:
    """The stored trials in (generation, slot) order, parents as (generation, slot); plus checks."""
    trials = list(result.trials)
    where = {t.trial_id: (t.generation, t.slot) for t in trials}
    rows = sorted(((t.generation, t.slot, t.params, t.status, t.fitness, t.fidelity,
                    None if t.parent_id is None else list(where.get(t.parent_id, (-1, -1))))
                   for t in trials), key=lambda row: row[:2])
    return {"rows": json.loads(json.dumps(rows)), "count": len(trials),
            "running": sum(t.status == "running" for t in trials),
            "distinct": len({(t.generation, t.slot) for t in trials})}


def _history(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("member_steps_per_second", "time", "wall_time")}
            for row in rows]


def run(name: str, workdir: str) -> dict[str, Any]:
    from vhjax.config import TrainConfig
    from vhjax.search import search, search_multifidelity, search_pbt

    from tests.datasets import tiny_classification  # not the digits: no second spent loading them

    config = TrainConfig(**_TRAIN, dataset=tiny_classification())
    if name == "search":
        result = search(_objective, _space(), "random", budget=12, population=3,
                                     workdir=workdir, seed=1, verbose=False)
        return trials_outcome(result)
    if name == "multifidelity":
        result = search_multifidelity(_budgeted, _space(), "hyperband", min_budget=1, max_budget=9,
                                      max_trials=14, population=4, workdir=workdir, seed=2, verbose=False)
        return trials_outcome(result)
    if name == "fit":
        from vhjax.train import fit

        result = fit(config, workdir, verbose=False)
        return {"metrics": result.metrics, "history": _history(result.history)}
    if name == "population":
        from vhjax.population.fit import fit_population

        result = fit_population(config, [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}], workdir, verbose=False)
        return {"members": [{k: m[k] for k in ("eval", "diverged_step")} for m in result.members],
                "history": [_history(h) for h in result.histories]}
    if name == "pbt":
        from vhjax.search import Float, Space

        space = Space({"learning_rate": Float(1e-4, 1e-1, log=True)})
        result = search_pbt(config, space, population=4, interval=10, workdir=workdir, verbose=False)
        return trials_outcome(result)
    raise ValueError(f"scenario {name!r} is unknown; allowed: {SCENARIOS}")


def legacy_cut(workdir: str) -> None:
    """Leave a PBT store as the per-round writes of earlier versions could when killed: the last
    round missing, the one before left `running`, and no marker that the rounds were stored."""
    import sqlite3
    from pathlib import Path

    from vhjax.search.storage import SQLITE_FILENAME, open_store

    with open_store(workdir) as store:
        trials = store.trials()
    last = max(t.generation for t in trials)
    cut = [t.trial_id for t in trials if t.generation == last]
    reopened = [t.trial_id for t in trials if t.generation == last - 1]
    with sqlite3.connect(Path(workdir) / SQLITE_FILENAME) as db:  # Optuna's tables
        db.execute("DELETE FROM study_system_attributes WHERE key = 'vhjax:meta:pbt_rounds_stored'")
        for table in ("trial_values", "trial_params", "trial_system_attributes", "trial_user_attributes", "trials"):
            db.execute(f"DELETE FROM {table} WHERE trial_id IN ({','.join(map(str, cut))})")
        db.execute(f"DELETE FROM trial_values WHERE trial_id IN ({','.join(map(str, reopened))})")
        db.execute(f"UPDATE trials SET state = 'RUNNING', datetime_complete = NULL "
                   f"WHERE trial_id IN ({','.join(map(str, reopened))})")


def main(argv: list[str]) -> None:
    """`NAME [--cache DIR] STEP...`, the steps done in order in this one process:

    - `run:DIR`: run the scenario in DIR and print its outcome as one JSON line;
    - `kill:DIR:POINT[@N]`: run it in DIR with `VHJAX_FAULT=POINT[@N]`: the process kills itself there;
    - `legacycut:DIR`: `legacy_cut(DIR)` (PBT only).

    --cache: JAX's persistent compilation cache in DIR, so only the first process compiles.
    """
    import argparse
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=SCENARIOS)
    parser.add_argument("steps", nargs="+")
    parser.add_argument("--cache")
    args = parser.parse_args(argv)
    if args.cache:
        from vhjax import compilation_cache

        compilation_cache.enable(args.cache)
    os.environ.pop("VHJAX_FAULT", None)
    for step in args.steps:
        action, _, rest = step.partition(":")
        if action == "run":
            print(json.dumps(run(args.name, rest)), flush=True)
        elif action == "kill":
            workdir, _, os.environ["VHJAX_FAULT"] = rest.rpartition(":")
            run(args.name, workdir)
            raise SystemExit(f"fault {os.environ['VHJAX_FAULT']} was never reached")
        elif action == "legacycut":
            legacy_cut(rest)
        else:
            raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
