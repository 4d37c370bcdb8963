"""XLA's older against its newer CPU fusion emitters, for a whole `tune` run: alternating pairs.

For each seed the benchmark's worker (`bench_time_to_quality.py --worker ...`) runs twice in fresh
processes, once with `XLA_FLAGS=--xla_cpu_use_fusion_emitters=false` and once with `=true` (an
option named there is left to the user for every program, `vhjax.compile_options`), the order
alternating from seed to seed. Both runs compute the same scores, so what differs is when they
arrive: printed per pair are the first score, the time the run reaches its own best (or, with
`--reference`, the Optuna TPE contestant's best validation accuracy of that seed in a stored
benchmark JSON), the compile time, and the mean over the timeline's rows of the newer run's time
over the older run's (above 1: the older emitters are sooner).

    python experiments/probe_emitters_pairs.py --task mnist1d_cnn --worker vhjax_tune_timeout \\
        --seeds 216-227 --reference experiments/results/time_to_quality_session49_seeds216.json

about 13 minutes on 2 cores (24 runs of ~32 s: the worker `vhjax_tune_timeout` ends at 30 s).
Results: experiments/README.md, "Older fusion emitters for convolutional training programs".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_time_to_quality.py"
VARIANTS = {"older": "--xla_cpu_use_fusion_emitters=false", "newer": "--xla_cpu_use_fusion_emitters=true"}


def seed_list(text: str) -> list[int]:
    """'216-227' or '216,219' -> the seeds."""
    if "-" in text:
        first, last = map(int, text.split("-"))
        return list(range(first, last + 1))
    return [int(seed) for seed in text.split(",")]


def reference_bests(path: str | None) -> dict[int, float]:
    """Seed -> the Optuna TPE contestant's best validation accuracy in a benchmark JSON."""
    if path is None:
        return {}
    runs = json.loads(Path(path).read_text())["runs"]
    return {run["seed"]: max(value for _, value, _ in run["timeline"]) for run in runs
            if run["contestant"] == "optuna_tpe"}


def first_reach(timeline: list, target: float) -> float:
    return next((seconds for seconds, value, _ in timeline if value >= target), float("inf"))


def run_once(args, seed: int, variant: str, folder: Path) -> dict:
    record = folder / f"{args.task}_{seed}_{variant}.json"
    env = {**os.environ, "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), VARIANTS[variant]]))}
    subprocess.run([sys.executable, str(BENCH), "--worker", args.worker, "--task", args.task, "--steps", str(args.steps),
                    "--timeout", str(args.timeout), "--seed", str(seed), "--record", str(record)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(record.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist1d_cnn")
    parser.add_argument("--worker", default="vhjax_tune_timeout", help="a bench_time_to_quality.py contestant")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--timeout", type=float, default=30.0, help="for the *_timeout workers")
    parser.add_argument("--seeds", default="216-227")
    parser.add_argument("--reference", default=None, metavar="JSON", help="a benchmark JSON with optuna_tpe runs")
    args = parser.parse_args()
    bests = reference_bests(args.reference)
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for index, seed in enumerate(seed_list(args.seeds)):
            order = ("newer", "older") if index % 2 == 0 else ("older", "newer")
            runs = {variant: run_once(args, seed, variant, Path(folder)) for variant in order}
            for variant in order:
                timeline = runs[variant]["timeline"]
                target = bests.get(seed, max(value for _, value, _ in timeline))
                print(f"seed {seed} {variant}: first score {timeline[0][0]:.1f} s, reaches {target:.4f} at "
                      f"{first_reach(timeline, target):.1f} s, compile {runs[variant]['compile_seconds']:.2f} s "
                      f"(training chunk {runs[variant]['compile_seconds_by_function'].get('jit(run_free)')})", flush=True)
            pairs = list(zip(runs["newer"]["timeline"], runs["older"]["timeline"]))
            ratios.append(statistics.mean(newer[0] / older[0] for newer, older in pairs))
            print(f"  newer / older, mean over {len(pairs)} rows: {ratios[-1]:.3f}", flush=True)
    print(f"{args.task}: newer / older over {len(ratios)} seeds: mean {statistics.mean(ratios):.3f}, "
          f"median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
