"""DP-SGD on MNIST-1D: test accuracy against the privacy spent, every member in one program.

Members of one `fit_population` call (one compiled program): a non-private member (`dp_clip_norm`
0), one that clips without noise (epsilon infinite), and one per target epsilon whose noise
multiplier `vhjax.privacy.noise_for_epsilon` calibrates for the run's steps and sampling rate, each
with `--seeds` seeds. The MNIST-1D paper CNN, Adam, batch 100, `--steps` steps, train on
`train[:90%]` (3,600 examples, so q = 100/3600), clip norm `--clip`, final parameters, test
accuracy mean +- std over seeds; epsilon at delta 1e-5 (RDP accountant, Poisson-sampling convention:
docs/privacy.md). A second call trains the same members without DP-SGD in the config (the plain
step), to price the per-example gradients. A third sweeps learning rate x clip norm at one epsilon
(`--sweep-epsilon`), every (rate, clip, seed) a member of one program. `--poisson` trains the DP
members once more on Poisson batches (`dp_sampling='poisson'`, the accountant's own assumption) and
compares accuracy, time and epsilon (PLD accountant, truncated Poisson sampling).

Command:  python experiments/privacy_table.py              (3 seeds, 3000 steps, then the sweep)
          python experiments/privacy_table.py --quick      (1 seed, 200 steps: a smoke test)
          python experiments/privacy_table.py --poisson --no-sweep   (the members on shuffled and on
                                                          Poisson batches; privacy_mnist1d_poisson.md)
Runtime:  2-core AMD EPYC CPU: 238 s (75 s DP-SGD, 28 s plain, 132 s sweep; 2026-12-07); --quick about 20 s.
Results:  experiments/results/privacy_mnist1d.md; summary in experiments/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vhjax import privacy
from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.population import fit_population

TARGETS = (1.0, 2.0, 4.0, 8.0)  # epsilon at delta 1e-5


def base_config(steps: int, clip: float | None, sampling: str = "shuffle") -> TrainConfig:
    return TrainConfig(dataset="mnist1d", model="mnist1d_cnn", optimizer="adam", learning_rate=1e-3,
                       batch_size=100, steps=steps, eval_every=steps, train_split="train[:90%]",
                       eval_split="train[90%:]", test_split="test", dp_clip_norm=clip, dp_delta=1e-5,
                       dp_sampling=sampling)


def arms(steps: int, sample_rate: float) -> list[tuple[str, dict]]:
    """(label, member settings): not private, clipped only, then one per target epsilon."""
    rows = [("not private", {"dp_clip_norm": 0.0, "noise_multiplier": 0.0}), ("clipped, no noise", {})]
    for target in TARGETS:
        noise = privacy.noise_for_epsilon(target, sample_rate, steps, delta=1e-5)
        rows.append((f"epsilon {target:g}", {"noise_multiplier": round(noise, 4)}))
    return rows


def run(steps: int, seeds: int, clip: float, poisson: bool = False) -> tuple[list[str], float, float, list[str]]:
    """Markdown rows, seconds of the DP population, seconds of the same members' plain population,
    and with `poisson` the rows of the same members on Poisson batches (else [])."""
    config = base_config(steps, clip)
    train_size = len(load(config.dataset, config.train_split))
    settings = arms(steps, config.batch_size / train_size)
    members = [{**member, "seed": seed} for _, member in settings for seed in range(seeds)]
    started = time.perf_counter()
    result = fit_population(config, members, verbose=False)
    private_seconds = time.perf_counter() - started
    plain_members = [{"seed": seed} for _ in settings for seed in range(seeds)]
    started = time.perf_counter()
    fit_population(base_config(steps, None), plain_members, verbose=False)
    plain_seconds = time.perf_counter() - started
    lines = ["| member | noise multiplier | epsilon (delta 1e-5) | test accuracy | diverged |", "|---|---|---|---|---|"]
    tests = {}
    for number, (label, member) in enumerate(settings):
        records = result.members[number * seeds:(number + 1) * seeds]
        tests[label] = accuracy_cell(records)
        spent = records[0]["privacy"]
        noise = "-" if spent is None else f"{spent['noise_multiplier']:.3f}"
        epsilon = "- (no DP)" if spent is None else f"{spent['epsilon']:.2f}"
        lines.append(f"| {label} | {noise} | {epsilon} | {tests[label]} | {diverged(records)} |")
    return lines, private_seconds, plain_seconds, (
        poisson_rows(steps, clip, settings, members, tests, private_seconds) if poisson else [])


def accuracy_cell(records: list[dict]) -> str:
    test = [r["test"]["accuracy"] for r in records if r["diverged_step"] is None]
    return f"{np.mean(test):.4f} ± {np.std(test):.4f}" if test else "-"


def diverged(records: list[dict]) -> int:
    return sum(r["diverged_step"] is not None for r in records)


def poisson_rows(steps: int, clip: float, settings: list, members: list[dict], shuffled: dict[str, str],
                 shuffled_seconds: float) -> list[str]:
    """The same members (noise multipliers, seeds) on Poisson batches (`dp_sampling='poisson'`, padded
    to the default bound), against their shuffled-batch accuracies `shuffled` of the same run: what the
    accountant's assumption costs in accuracy and time, and its epsilon (PLD, truncated Poisson)."""
    config = base_config(steps, clip, "poisson")
    started = time.perf_counter()
    result = fit_population(config, members, verbose=False)
    seconds = time.perf_counter() - started
    seeds = len(members) // len(settings)
    lines = [f"Poisson batches: the same {len(members)} members, {seconds:.0f} s against {shuffled_seconds:.0f} s "
             f"with shuffled batches ({seconds / shuffled_seconds:.2f}x)", "",
             "| member | noise multiplier | epsilon, shuffled (PLD, Poisson convention) | "
             "epsilon, Poisson (PLD, truncated) | padded batch | test accuracy, shuffled | test accuracy, Poisson | "
             "diverged |",
             "|---|---|---|---|---|---|---|---|"]
    for number, (label, member) in enumerate(settings):
        records = result.members[number * seeds:(number + 1) * seeds]
        spent = records[0]["privacy"]
        if spent is None:
            noise = shuffle_epsilon = poisson_epsilon = bound = "-"
        else:
            noise, bound = f"{spent['noise_multiplier']:.3f}", str(spent["max_batch_size"])
            poisson_epsilon = f"{spent['epsilon']:.2f}"
            shuffled_spent = privacy.epsilon(spent["noise_multiplier"], spent["sample_rate"], steps, 1e-5, "pld")
            shuffle_epsilon = f"{shuffled_spent:.2f}"
        lines.append(f"| {label} | {noise} | {shuffle_epsilon} | {poisson_epsilon} | {bound} | {shuffled[label]} | "
                     f"{accuracy_cell(records)} | {diverged(records)} |")
    return lines


SWEEP_RATES, SWEEP_CLIPS = (1e-3, 3e-3, 1e-2, 3e-2), (0.1, 0.5, 1.0)


def sweep(steps: int, seeds: int, target: float) -> tuple[list[str], float]:
    """At one epsilon (one noise multiplier), every (learning rate, clip norm, seed) as a member of
    one program: DP-SGD's own hyperparameters, which the non-private defaults do not answer."""
    config = base_config(steps, 1.0)
    sample_rate = config.batch_size / len(load(config.dataset, config.train_split))
    noise = round(privacy.noise_for_epsilon(target, sample_rate, steps, delta=1e-5), 4)
    grid = [(lr, clip, seed) for lr in SWEEP_RATES for clip in SWEEP_CLIPS for seed in range(seeds)]
    members = [{"learning_rate": lr, "dp_clip_norm": clip, "noise_multiplier": noise, "seed": seed}
               for lr, clip, seed in grid]
    started = time.perf_counter()
    result = fit_population(config, members, verbose=False)
    seconds = time.perf_counter() - started
    lines = ["| learning rate | " + " | ".join(f"clip {clip:g}" for clip in SWEEP_CLIPS) + " |",
             "|---|" + "---|" * len(SWEEP_CLIPS)]
    for lr in SWEEP_RATES:
        cells = []
        for clip in SWEEP_CLIPS:
            test = [r["test"]["accuracy"] for (l, c, _), r in zip(grid, result.members)
                    if l == lr and c == clip and r["diverged_step"] is None]
            cells.append(f"{np.mean(test):.4f} ± {np.std(test):.4f}" if test else "diverged")
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    header = (f"At epsilon {target:g} (noise multiplier {noise:g}, delta 1e-5): {len(members)} members in one "
              f"program, {seconds:.0f} s")
    return [header, "", *lines], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--sweep-epsilon", type=float, default=4.0, help="the epsilon of the learning rate x "
                        "clip norm sweep")
    parser.add_argument("--poisson", action="store_true", help="also train the members on Poisson batches "
                        "(dp_sampling='poisson') and compare")
    parser.add_argument("--no-sweep", action="store_true", help="skip the learning rate x clip norm sweep")
    parser.add_argument("--out", default=None, help="folder for privacy_mnist1d.md (default: experiments/results, "
                        "not written with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 200
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    lines, private_seconds, plain_seconds, poisson = run(args.steps, args.seeds, args.clip, args.poisson)
    members = (2 + len(TARGETS)) * args.seeds
    header = (f"MNIST-1D paper CNN, Adam 1e-3, {args.steps} steps, batch 100, clip norm {args.clip:g}, {args.seeds} "
              f"seeds, {members} members in one program: {private_seconds:.0f} s with DP-SGD, "
              f"{plain_seconds:.0f} s for the same members without it ({private_seconds / plain_seconds:.2f}x)")
    print(header, *lines, "", *poisson, "", sep="\n", flush=True)
    swept = [] if args.no_sweep else sweep(args.steps, args.seeds, args.sweep_epsilon)[0]
    print(*swept, "", sep="\n", flush=True)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        name = "privacy_mnist1d.md" if not args.poisson and not args.no_sweep else "privacy_mnist1d_poisson.md"
        (Path(out) / name).write_text(
            "\n".join(["# DP-SGD on MNIST-1D", "", header, "", *lines, "", *poisson, "", *swept]) + "\n")


if __name__ == "__main__":
    main()
