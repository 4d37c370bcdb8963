"""Does a PBT pick's schedule reproduce from scratch? `tune`'s PBT pick, replayed over seeds.

For each search seed: `tune(config, space, budget=64)` on the time-to-quality benchmark's task (its
PBT method: 32 members, 30 rounds, restarts), then
  - replay: `replay_pbt(config, result, seeds=R)`: the pick's hyperparameter schedule (its ancestry,
    round by round) trained again from scratch on R new seeds, in one population, to the pick's step;
  - replay to the end: the same with `until=config.steps` (the last round's values held after it);
  - constant: the pick's final values (what `result.best()["params"]` shows) as a constant
    configuration, trained as long as the pick was, on the same R seeds (one population).
The pick's own test accuracy is one model's, selected on the validation split among ~1,000
evaluated rounds; the replays say what its schedule is worth on fresh seeds. With --tpe, the same
for the benchmark's Optuna TPE contestant (64 trials, its own trainer): its best configuration
retrained with vhjax on the same fresh seeds, for the full steps.

Command:  python experiments/pbt_replay_table.py --searches 4 --replays 3 [--tpe]
          [--task mnist1d_cnn] [--budget 64] [--steps 1500] [--first-seed 0]
Hardware: 2-core CPU, about 70 s per search seed (160 s with --tpe). Writes
experiments/results/pbt_replay_table.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_time_to_quality as bench  # noqa: E402  (the task, its config and space)


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(bench.TASKS), default="mnist1d_cnn")
    parser.add_argument("--searches", type=int, default=4, help="search seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--replays", type=int, default=3, help="seeds each pick is replayed on")
    parser.add_argument("--budget", type=float, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--tpe", action="store_true", help="also Optuna TPE's best configuration, retrained")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pbt_replay_table.md"))
    args = parser.parse_args()

    from vhjax.hardware import cpu_name, use_cpu_devices

    use_cpu_devices("auto")  # before JAX starts: one device per core, as the benchmark's vhjax contestants
    from vhjax.population import fit_population
    from vhjax.search import replay_pbt, tune

    import jax

    task = bench.TASKS[args.task]
    space = bench.vhjax_space(task)
    started = time.perf_counter()
    rows, totals = [], {"pick": [], "replay": [], "constant": []}
    for seed in range(args.first_seed, args.first_seed + args.searches):
        config = bench.vhjax_config(task, args.steps, seed)
        clock = time.perf_counter()
        result = tune(config, space, budget=args.budget, seed=seed, verbose=False, compilation_cache=False)
        search_seconds = time.perf_counter() - clock
        best = result.best()
        seeds = [10_000 + 100 * seed + i for i in range(args.replays)]  # none of the searches' own seeds
        clock = time.perf_counter()
        replay = replay_pbt(config, result, seeds=seeds, verbose=False)
        replay_seconds = time.perf_counter() - clock
        to_end = replay_pbt(config, result, seeds=seeds, until=config.steps, verbose=False)
        pick = replay.picks[0]
        constant = fit_population(dataclasses.replace(config, steps=pick.schedule[-1].end, eval_every=pick.schedule[-1].end),
                                  [{**best["params"], "seed": s} for s in seeds], verbose=False)
        replayed = [m["test"]["accuracy"] for m in replay.members]
        fixed = [m["test"]["accuracy"] for m in constant.members]
        totals["pick"].append(best["test"])
        totals["replay"].append(float(np.mean(replayed)))
        totals["constant"].append(float(np.mean(fixed)))
        totals.setdefault("to_end", []).append(float(np.mean([m["test"]["accuracy"] for m in to_end.members])))
        tpe_cells = ""
        if args.tpe:
            run = bench.run_optuna(argparse.Namespace(task=args.task, steps=args.steps, seed=seed, trials=int(args.budget)),
                                   "tpe", False)
            tpe_pick = max(run["timeline"], key=lambda row: row[1])  # (seconds, val, test) of its best trial
            member = {("aug_strength" if k == "augment" else k): float(v) for k, v in run["best_params"].items()}
            tpe = fit_population(config, [{**member, "seed": s} for s in seeds], verbose=False)
            tpe_test = [m["test"]["accuracy"] for m in tpe.members]
            totals.setdefault("tpe_pick", []).append(tpe_pick[2])
            totals.setdefault("tpe", []).append(float(np.mean(tpe_test)))
            tpe_cells = (f" {tpe_pick[1]:.4f} | {tpe_pick[2]:.4f} | {mean_std([m['eval']['accuracy'] for m in tpe.members])} | "
                         f"{mean_std(tpe_test)} |")
        lr = [r.params["learning_rate"] for r in pick.schedule]
        rows.append(f"| {seed} | {best['value']:.4f} | {best['test']:.4f} | {len(pick.schedule)} ({pick.schedule[-1].end}) | "
                    f"{min(lr):.2g}-{max(lr):.2g} | {mean_std([m['eval']['accuracy'] for m in replay.members])} | "
                    f"{mean_std(replayed)} | {mean_std([m['test']['accuracy'] for m in to_end.members])} | "
                    f"{mean_std([m['eval']['accuracy'] for m in constant.members])} | "
                    f"{mean_std(fixed)} | {search_seconds:.0f} s, {replay_seconds:.1f} s |{tpe_cells}")
        print(rows[-1], flush=True)
    header = ("| search seed | pick val | pick test | rounds (steps) | pick's learning rates | replay val | replay test | "
              "replay to the end: test | "
              "constant val | constant test | wall: search, replay |"
              + (" TPE pick val | TPE pick test | TPE config retrained val | TPE config retrained test |" if args.tpe else "")
              + "\n|" + "---|" * (15 if args.tpe else 11))
    summary = (f"Over {args.searches} searches: pick test {mean_std(totals['pick'])}, replay test (mean of each "
               f"search's {args.replays} seeds) {mean_std(totals['replay'])}, to the end {mean_std(totals['to_end'])}, "
               f"constant final values "
               f"{mean_std(totals['constant'])}."
               + (f" Optuna TPE: pick test {mean_std(totals['tpe_pick'])}, its configuration retrained on the same "
                  f"seeds {mean_std(totals['tpe'])}." if args.tpe else ""))
    text = "\n".join([f"# PBT pick replays ({args.task}, budget {args.budget:g}, {args.steps} steps)", "",
                      f"`python experiments/pbt_replay_table.py --searches {args.searches} --first-seed {args.first_seed} "
                      f"--replays {args.replays}{' --tpe' if args.tpe else ''}`; {cpu_name()}, {len(jax.devices())} JAX device(s); "
                      f"{time.perf_counter() - started:.0f} s in all.", "", header, *rows, "", summary, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
