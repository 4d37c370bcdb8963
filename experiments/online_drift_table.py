"""Online learning under concept drift: prequential accuracy of learning rates on a drifting
MNIST-1D stream, every (learning rate, seed) a member of one program.

The stream (`vhjax.online.drifting_stream`): 4 segments of 20,000 MNIST-1D training signals (5
shuffled passes over the 4,000), each segment with its own concept: 'labels' permutes the 10 classes
per segment (the same signals mean other digits), 'inputs' gives each segment its own gain and
offset (strength 1). The paper CNN, Adam, batch 32, one pass over the stream (2,500 steps), scored
prequentially (each batch predicted before it is learnt) per window of 25 steps
(`vhjax.online.prequential`); per member the mean over the stream, per segment, and the windows
after each drift until the accuracy is back at the last window's before it. Mean over 2 seeds.

Command:  python experiments/online_drift_table.py            (both drifts)
          python experiments/online_drift_table.py --quick    (1 seed, 2 segments of 2,000: a smoke test)
Runtime:  2-core AMD EPYC CPU: 12 s for both drifts (2026-12-07); --quick about 5 s.
Results:  experiments/results/online_drift_mnist1d.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


from vhjax import online
from vhjax.config import TrainConfig

RATES = (3e-4, 1e-3, 3e-3, 1e-2)


def run(kind: str, seeds: int, segments: int, segment_size: int) -> tuple[list[str], float]:
    stream = online.stream_from("mnist1d", segments=segments, segment_size=segment_size, kind=kind, seed=0)
    config = TrainConfig(model="mnist1d_cnn", optimizer="adam", batch_size=32, eval_metrics=("accuracy",))
    grid = [(lr, seed) for lr in RATES for seed in range(seeds)]
    started = time.perf_counter()
    result = online.prequential(config, [{"learning_rate": lr, "seed": seed} for lr, seed in grid], stream, window=25)
    seconds = time.perf_counter() - started
    lines = ["| learning rate | prequential accuracy | " + " | ".join(f"segment {s}" for s in range(segments))
             + " | windows to recover, per drift and seed |", "|---|---|" + "---|" * (segments + 1)]
    for lr in RATES:
        rows = [i for i, (rate, _) in enumerate(grid) if rate == lr]
        recovered = "; ".join(", ".join("never" if r is None else str(r) for r in result.recovery[i]) for i in rows)
        lines.append(f"| {lr:g} | {result.mean[rows].mean():.4f} | "
                     + " | ".join(f"{v:.4f}" for v in result.per_segment[rows].mean(axis=0)) + f" | {recovered} |")
    steps = len(stream.x) // config.batch_size
    header = (f"drift '{kind}': {segments} segments of {segment_size}, {steps} steps, {len(grid)} members in one "
              f"program, {seconds:.0f} s")
    return [header, "", *lines], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 segments of 2,000 (a smoke test)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for online_drift_mnist1d.md (default: experiments/results, "
                        "not written with --quick)")
    args = parser.parse_args()
    seeds, segments, size = (1, 2, 2000) if args.quick else (args.seeds, 4, 20000)
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    text = ["# Online learning under concept drift: MNIST-1D", ""]
    for kind in online.DRIFTS:
        lines, _ = run(kind, seeds, segments, size)
        print(*lines, "", sep="\n", flush=True)
        text += [*lines, ""]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "online_drift_mnist1d.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
