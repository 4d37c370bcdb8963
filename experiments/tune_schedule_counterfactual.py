"""What other run schedules of `tune`'s PBT method would have given, replayed from stored races.

`tune(config, space, budget=64)` on the time-to-quality task trains three independent runs of 624
trials each (32 members for rounds 1-9, the best 16 for rounds 10-30); a run's rows do not depend on
the runs before it (each restart draws its own first members), so ending a run earlier only moves
the later runs' rows earlier by the time the cut saved. From the rows of stored benchmark results
(`bench_time_to_quality.py` JSON files, contestant `vhjax_tune`, each seed against that file's
Optuna TPE best and time to it) this prints the mean of per-seed ratios (misses 0) and the seeds
reaching TPE's best for:

- every run cut after round R (`--cut`): exact, under the independence above;
- a run ended once its best has not improved for K rounds after round 10 (`--stall`): exact too;
- a second halving after round H (`--second`): only the 8 best rows' slots of round H go on, their
  later rows F times sooner (`--speed`, a round of 8 members against one of 16); approximate, since
  PBT's copies among 8 members would differ from those among 16 (a screen, not a measurement).

    python experiments/tune_schedule_counterfactual.py experiments/results/time_to_quality_session50_seeds2{28,40}.json

Results: experiments/README.md, session 51.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_time_to_quality as bench  # noqa: E402  (TPE's best, the time to it, the ratio)

RUN_ROWS, WIDE_ROUNDS, WIDE, NARROW = 624, 9, 32, 16  # tune's run for budget 64 on this task


def round_and_slot(row: int) -> tuple[int, int]:
    """The 1-based round and the position in it of a run's `row`-th trial."""
    if row < WIDE_ROUNDS * WIDE:
        return row // WIDE + 1, row % WIDE
    return WIDE_ROUNDS + 1 + (row - WIDE_ROUNDS * WIDE) // NARROW, (row - WIDE_ROUNDS * WIDE) % NARROW


def races(paths: list[str]) -> list[tuple[float, float, list]]:
    """(TPE's best, TPE's time to it, `tune`'s rows) per seed of the files."""
    out = []
    for path in paths:
        runs = json.loads(Path(path).read_text())["runs"]
        tpe = {run["seed"]: run["timeline"] for run in runs if run["contestant"] == "optuna_tpe"}
        for run in runs:
            if run["contestant"] == "vhjax_tune" and len(run["timeline"]) % RUN_ROWS == 0:
                best = bench.final_pick(tpe[run["seed"]])[0]
                out.append((best, bench.time_to_reach(tpe[run["seed"]], best), run["timeline"]))
    return out


def last_round(rows: list, cut: int, stall: int | None) -> int:
    """The round a run ends at: `cut`, or earlier where its best stalled for `stall` rounds after round 10."""
    if stall is None:
        return cut
    best_of: dict[int, float] = {}
    for index, (_, value, _) in enumerate(rows):
        round_index = round_and_slot(index)[0]
        best_of[round_index] = max(best_of.get(round_index, 0.0), value)
    best, improved = 0.0, 0
    for round_index in sorted(best_of):
        if best_of[round_index] > best:
            best, improved = best_of[round_index], round_index
        if round_index >= 10 and round_index - improved >= stall:
            return min(cut, round_index)
    return cut


def time_to(target: float, timeline: list, cut: int = 30, stall: int | None = None, second: int | None = None,
            speed: float = 0.55) -> float:
    """Seconds until a row reaches `target` under the schedule (inf if none does)."""
    saved = 0.0
    for start in range(0, len(timeline), RUN_ROWS):
        rows = timeline[start:start + RUN_ROWS]
        info = [(seconds, value, *round_and_slot(i)) for i, (seconds, value, _) in enumerate(rows)]
        end = last_round(rows, cut, stall)
        kept, at = None, None
        if second is not None:
            ranked = sorted(((value, slot) for _, value, r, slot in info if r == second), reverse=True)
            kept, at = {slot for _, slot in ranked[:8]}, max(s for s, _, r, _ in info if r == second)
        for seconds, value, round_index, slot in info:
            if round_index > end:
                break
            if kept is not None and round_index > second:
                if slot in kept and value >= target:
                    return at + (seconds - at) * speed - saved
            elif value >= target:
                return seconds - saved
        if kept is not None:
            saved += (rows[-1][0] - at) * (1 - speed)
        else:
            saved += rows[-1][0] - max(s for s, _, r, _ in info if r <= end)
    return float("inf")


def line(name: str, data: list, **schedule) -> str:
    ratios = [bench.speedup(seconds, time_to(best, rows, **schedule)) for best, seconds, rows in data]
    return f"| {name} | {np.mean(ratios):.2f}x | {np.median(ratios):.2f}x | {sum(r > 0 for r in ratios)} of {len(ratios)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="bench_time_to_quality.py JSON files")
    parser.add_argument("--cut", type=int, nargs="*", default=[27, 24, 20, 16])
    parser.add_argument("--stall", type=int, nargs="*", default=[4, 6, 8])
    parser.add_argument("--second", type=int, nargs="*", default=[10, 12, 14, 18])
    parser.add_argument("--speed", type=float, default=0.55)
    args = parser.parse_args()
    data = races(args.results)
    print("| schedule | mean of per-seed ratios | median | reached TPE's best |\n|---|---|---|---|")
    print(line("as run (30 rounds)", data))
    for cut in args.cut:
        print(line(f"every run cut after round {cut}", data, cut=cut))
    for stall in args.stall:
        print(line(f"a run ended after {stall} rounds without a better best", data, stall=stall))
    for second in args.second:
        print(line(f"the best 8 after round {second} (approximate)", data, second=second, speed=args.speed))


if __name__ == "__main__":
    main()
