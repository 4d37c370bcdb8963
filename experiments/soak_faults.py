"""Soak test of the reliability guarantees: kill -9 at random points over many reruns, and bad inputs.

Each round takes a tiny scenario of `tests/search/fault_scenarios.py` (a search, a multi-fidelity
search, `fit`, a population, PBT), runs it in a fresh workdir in a child process and kills that
process 1-3 times, each time either at a random fault point (`VHJAX_FAULT`, a random visit) or at a
random moment (SIGKILL from here after a random delay), then reruns it to the end and compares it with
an uninterrupted run: trials lost, duplicated, left `running`, and whether the outcome is identical.
Then it tries random bad inputs (spaces, TrainConfig values, member dicts, objective outputs) and
counts, by kind, those refused with a clear ValueError/TypeError naming the field, those accepted,
and anything else (a raw error).

    python experiments/soak_faults.py --quick          # a search only, 2 rounds, 200 bad inputs
    python experiments/soak_faults.py --rounds 50      # every scenario

Prints one summary table and writes it as JSON (--out). Child processes share a persistent
compilation cache, so only the first run of each scenario compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.search.fault_scenarios import SCENARIOS  # noqa: E402

POINTS = {
    "search": ("store.add", "store.finish", "search.evaluated"),
    "multifidelity": ("store.add", "store.finish", "search.evaluated"),
    "fit": ("checkpoint.save", "checkpoint.before_rename", "checkpoint.saved"),
    "population": ("checkpoint.save", "checkpoint.before_rename", "checkpoint.saved"),
    "pbt": ("checkpoint.save", "checkpoint.before_rename", "checkpoint.saved", "store.rounds"),
}


def child(name: str, cache: Path, *steps: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VHJAX_FAULT", None)
    return subprocess.Popen([sys.executable, "-m", "tests.search.fault_scenarios", name, "--cache", str(cache),
                             *steps], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, list[dict], str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def soak_round(name: str, expected: dict, seconds: float, cache: Path, rng: random.Random, root: Path,
               totals: Counter) -> None:
    workdir = root / f"{name}_{totals['rounds']}"
    totals["rounds"] += 1
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:  # at a fault point, on a random visit
            fault = f"{rng.choice(POINTS[name])}@{rng.randint(1, 3)}"
            totals["kills tried (fault point)"] += 1
            code, _, err = finish(child(name, cache, f"kill:{workdir}:{fault}"))
        else:  # at a random moment
            totals["kills tried (random time)"] += 1
            process = child(name, cache, f"run:{workdir}")
            time.sleep(rng.uniform(0.0, seconds))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            code, _, err = finish(process)
        if code == -signal.SIGKILL:
            totals["kills landed"] += 1
        elif code not in (0, 1) or (code == 1 and "was never reached" not in err):
            totals["runs failed"] += 1
            print(f"[soak] {name}: run failed (rc {code}): {err[-1500:]}", flush=True)
    code, outcomes, err = finish(child(name, cache, f"run:{workdir}"))
    if code != 0 or not outcomes:
        totals["runs failed"] += 1
        print(f"[soak] {name}: final run failed (rc {code}): {err[-1500:]}", flush=True)
        return
    outcome = outcomes[0]
    if "rows" in expected:
        totals["trials expected"] += expected["count"]
        totals["trials lost"] += max(0, expected["count"] - outcome["distinct"])
        totals["trials duplicated"] += outcome["count"] - outcome["distinct"]
        totals["trials left running"] += outcome["running"]
    totals["results identical"] += outcome == expected
    totals["results compared"] += 1


# ----------------------------------------------------------------------------- bad inputs

ODD = [math.nan, math.inf, -math.inf, -1, 0, 0.0, 1e300, -1e-300, True, False, None, "0.01", "", [], [1.0], {},
       (1, 2), complex(1, 1), 2**70]


def bad_inputs(count: int, rng: random.Random) -> dict[str, Counter]:
    import numpy as np

    from vhjax.config import TrainConfig, validate
    from vhjax.search.driver import metrics_from_output, trial_results
    from vhjax.search.space import Categorical, Float, Int, Space

    base = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (8,), "num_classes": 10})
    fields = [f.name for f in dataclasses.fields(TrainConfig)
              if f.name not in ("dataset", "model", "model_kwargs", "optimizer", "name")]

    def space():
        kind = rng.choice([Float, Int, Categorical])
        if kind is Categorical:
            return Space({"c": Categorical(rng.choice([ODD, [rng.choice(ODD)], rng.choice(ODD)]))}), ("choices",)
        return Space({"p": kind(rng.choice(ODD), rng.choice(ODD + [1, 2.5]), log=rng.choice([True, False] + ODD))}), (
            "low", "high", "log")

    def config():
        field = rng.choice(fields)
        validate(dataclasses.replace(base, **{field: rng.choice(ODD)}))
        return None, (field,)

    def member():
        from vhjax.population.hparams import member_arrays
        from vhjax.population.fit import split_member

        name = rng.choice(["learning_rate", "weight_decay", "dropout_rate", "l2", "seed", "lr"])
        value = rng.choice(ODD)
        split_member(0, {name: value})
        if name in ("learning_rate", "weight_decay", "l2"):
            member_arrays(1, {name: [value]}, {"l2": np.float32(0)}, {"learning_rate": np.float32(1e-3),
                                                                          "weight_decay": np.float32(0)})
        return None, (name, "member")

    def output():
        n = rng.randint(1, 3)
        shape = rng.choice([(n,), (n, 2), (n + 1,), (), (n, 1)])
        value = rng.choice([np.full(shape, rng.choice([0.5, math.nan, math.inf])), rng.choice(ODD),
                            {"fitness": np.zeros(shape)}, {"accuracy": [1] * n}, {"fitness": [0.0] * n,
                                                                                 "parent_id": [rng.choice(ODD)] * n},
                            ["x"] * n])
        trial_results(list(range(n)), metrics_from_output(value, n, ["fitness"], "objective 'f'"), ["fitness"])
        return None, ("objective 'f'",)

    tallies: dict[str, Counter] = defaultdict(Counter)
    makers = {"space": space, "config": config, "member dict": member, "objective output": output}
    for _ in range(count):
        kind = rng.choice(list(makers))
        tallies[kind]["tried"] += 1
        names = {"space": ("low", "high", "log", "choices"), "config": tuple(fields),
                 "member dict": ("member", "learning_rate", "weight_decay", "dropout_rate", "l2", "seed", "lr"),
                 "objective output": ("objective 'f'",)}[kind]
        try:
            makers[kind]()
            tallies[kind]["accepted"] += 1
        except (ValueError, TypeError) as error:
            clear = any(name in str(error) for name in names)
            tallies[kind]["clear error" if clear else "unclear error"] += 1
            if not clear:
                print(f"[soak] unclear {kind} error: {type(error).__name__}: {error}", flush=True)
        except Exception as error:  # noqa: BLE001 - counted: a raw error
            tallies[kind]["raw error"] += 1
            print(f"[soak] raw {kind} error: {type(error).__name__}: {error}", flush=True)
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a search only, 2 rounds, 200 bad inputs")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--bad-inputs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    args = parser.parse_args()
    scenarios = ["search"] if args.quick else args.scenarios.split(",")
    rounds = 2 if args.quick else args.rounds
    rng = random.Random(args.seed)
    start = time.perf_counter()
    totals: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="vhjax_soak_") as temporary:
        root = Path(temporary)
        cache = root / "jax_cache"
        expected, seconds = {}, {}
        for name in scenarios:
            tick = time.perf_counter()
            code, outcomes, err = finish(child(name, cache, f"run:{root / ('reference_' + name)}"))
            if code != 0:
                raise SystemExit(f"reference run of {name} failed: {err[-2000:]}")
            expected[name], seconds[name] = outcomes[0], time.perf_counter() - tick
        for number in range(rounds):
            name = scenarios[number % len(scenarios)]
            soak_round(name, expected[name], seconds[name], cache, rng, root, totals)
    tallies = bad_inputs(200 if args.quick else args.bad_inputs, rng)
    order = ("rounds", "kills tried (fault point)", "kills tried (random time)", "kills landed", "trials expected",
             "trials lost", "trials duplicated", "trials left running", "results compared", "results identical",
             "runs failed")
    summary = {"scenarios": scenarios, "seconds": round(time.perf_counter() - start, 1),
               **{key: totals[key] for key in order},
               "bad inputs": {kind: dict(counts) for kind, counts in sorted(tallies.items())}}
    for key, value in summary.items():
        print(f"{key:28s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    bad = totals["trials lost"] + totals["trials duplicated"] + totals["trials left running"] + totals["runs failed"]
    bad += totals["results compared"] - totals["results identical"]
    bad += sum(c["raw error"] + c["unclear error"] for c in tallies.values())
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
