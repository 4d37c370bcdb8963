"""Plain against guided PBT explore (`search_pbt(..., candidates=K)`), as `tune`'s first run, per seed.

Each seed runs in a fresh process: `search_pbt` with the settings `tune(config, space, budget=64)`
gives its first run (32 members, a round every 50 steps, the best 16 after round 8, keep_best),
on the time-to-quality benchmark's MNIST-1D task. Targets are Optuna TPE's best validation accuracy
per seed from earlier benchmark runs (`--targets`, results JSON of bench_time_to_quality.py). Prints,
per candidate count: seeds reaching the target, mean best validation accuracy, the pick's test
accuracy, the median seconds to the target (process start to the round that reached it), and seeds
with a higher / lower best than the first count's.

    python experiments/pbt_guide_seeds.py --candidates 1 8 --seeds 132-179 \\
        --targets experiments/results/time_to_quality_session4{2_seeds132,2_seeds144,3_seeds156,3_seeds168}.json

Runtime: about 24 s per seed and count on a 2-core CPU (48 seeds x 2 counts: about 40 minutes).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(seed: int, candidates: int) -> dict:
    """One first run in this process: its rounds' (seconds, value), the pick's val/test."""
    from vhjax.hardware import use_cpu_devices

    use_cpu_devices("auto")  # before JAX starts, as the benchmark's vhjax workers
    import bench_time_to_quality as bench
    from vhjax.search import search_pbt
    from vhjax.search.tune_pbt import pbt_schedule, run_config

    task = bench.TASKS["mnist1d_cnn"]
    config = run_config(bench.vhjax_config(task, 1500, seed), "accuracy")
    interval, shrink = pbt_schedule(config.steps, 32)
    rows = []

    def record(row: dict) -> None:
        if row["state"] == "COMPLETE":
            rows.append((time.perf_counter() - PROCESS_START, row["value"]))

    result = search_pbt(config, bench.vhjax_space(task), population=32, interval=interval, seed=seed, shrink=shrink,
                        candidates=candidates, callback=record, compilation_cache=False, mesh="auto", verbose=False)
    return {"seed": seed, "candidates": candidates, "rows": rows, "best": result.best.fitness,
            "test": result.best.metrics.get("test_accuracy"), "wall": time.perf_counter() - PROCESS_START}


def tpe_targets(paths: list[str]) -> dict[int, float]:
    """Optuna TPE's best validation accuracy per seed in benchmark results files."""
    import bench_time_to_quality as bench

    targets = {}
    for path in paths:
        for run in json.loads(Path(path).read_text())["runs"]:
            if run["contestant"] == "optuna_tpe":
                targets[int(run["seed"])] = bench.final_pick(run["timeline"])[0]
    return targets


def summary(runs: list[dict], targets: dict[int, float], reference: dict[int, float] | None) -> str:
    reached = [r for r in runs if r["best"] >= targets[r["seed"]] - 1e-9]
    seconds = [next(s for s, v in r["rows"] if v >= targets[r["seed"]] - 1e-9) for r in reached]
    tests = [r["test"] for r in runs]
    line = (f"candidates {runs[0]['candidates']}: reached TPE's best in {len(reached)} of {len(runs)}; mean best val "
            f"{statistics.mean(r['best'] for r in runs):.4f}; test of pick {statistics.mean(tests):.3f} ± "
            f"{statistics.pstdev(tests):.3f}; median s to target {statistics.median(seconds) if seconds else float('nan'):.1f}")
    if reference is not None:
        higher = sum(r["best"] > reference[r["seed"]] + 1e-9 for r in runs)
        lower = sum(r["best"] < reference[r["seed"]] - 1e-9 for r in runs)
        line += f"; best higher than the first count's in {higher}, lower in {lower}"
    return line


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seeds", type=seed_range, default=seed_range("132-179"))
    parser.add_argument("--targets", nargs="+", required=True)
    parser.add_argument("--out", default=None, help="JSON lines of every run (default: experiments/results/...)")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("SEED", "CANDIDATES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    targets = tpe_targets(args.targets)
    missing = [seed for seed in args.seeds if seed not in targets]
    if missing:
        raise SystemExit(f"--seeds has seeds {missing} with no Optuna TPE run in --targets")
    out = Path(args.out or ROOT / "experiments" / "results" / "pbt_guide_seeds.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs: dict[int, list[dict]] = {count: [] for count in args.candidates}
    with out.open("w") as log:
        for seed in args.seeds:
            for count in args.candidates:  # alternating, one fresh process each
                done = subprocess.run([sys.executable, __file__, "--targets", *args.targets, "--worker", str(seed),
                                       str(count)], env=env, check=True, capture_output=True, text=True)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                runs[count].append(run)
                log.write(json.dumps(run) + "\n")
                print(f"seed {seed} candidates {count}: best {run['best']:.4f} (TPE {targets[seed]:.4f}), "
                      f"test {run['test']:.3f}, {run['wall']:.1f} s", flush=True)
    reference = {r["seed"]: r["best"] for r in runs[args.candidates[0]]}
    for count in args.candidates:
        print(summary(runs[count], targets, None if count == args.candidates[0] else reference))


if __name__ == "__main__":
    main()
