"""Benchmark: population training against what users run today, one trial at a time.

(a) baseline: each trial is trained alone by a Python loop of jitted train steps (the
    Optuna-style way: one `jax.jit(step)` call per step, one trial after another);
(b) vhjax: P members in one compiled program (`classifier_runner`: vmapped step in a loop
    of steps inside the program, members in groups of 8 on CPU, divergence isolation checked per chunk); with
    `--cpu-devices D` the CPU is split into D JAX devices and the members are sharded over them
    (`on_mesh`; groups cut within each device's shard), while the baseline stays on one device.
Both use the same model, optimizer, batch size and data, on the device this runs on.
Reported: member-steps/s of each, the ratio b/a, and vhjax's achieved FLOP/s as a fraction of the
device's float32 matmul peak, measured in the same run.

The baseline's rate does not depend on P (trials run one after another), so it is measured on
min(P, 4) trials.

Command:  python experiments/bench_population.py [--steps 200] [--sizes 1 8 64 256] [--repeats 5]
          [--models "paper CNN with dropout + weight decay + augmentation" ...] [--cpu-devices 2]
(`--help` lists the models; the default is the first five, the realistic members first (what a
search trains: dropout, weight decay and augmentation on), the others split the realistic CNN row
into its parts and choose its convolution: vhjax's patch convolution or XLA's native one.)
The "with dropout + weight decay + augmentation" rows give every member dropout 0.1, weight decay
1e-4 and random shifts of up to 10% of the length (traced per-member values, as in a search).
Baseline and population runs alternate `--repeats` times after a warm-up run (A, B, A, B: single runs
on a shared VM vary by 10-20%, and a host that slows down for a while slows both); each rate is the
best of its runs, the ratio the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.config import TrainConfig
from vhjax.population import classifier_runner, init_population
from vhjax.hardware import use_cpu_devices
from vhjax.parallel import population_mesh
from vhjax.population.engine import default_member_group
from vhjax.population.loop import on_mesh
from vhjax.train import build_task, init_state, make_train_step
from vhjax.train.step import chunk_batch_indices

# Realistic members (DESIGN.md): per-member dropout, decoupled weight decay and shift augmentation.
REGULARIZED = {"dropout_rate": 0.1, "weight_decay": 1e-4, "augment": ({"name": "shift", "strength": 0.1},)}
MODELS = {  # label -> (registry name, model kwargs, config overrides); the members searches train first
    "paper CNN with dropout + weight decay + augmentation": ("mnist1d_cnn", {}, REGULARIZED),
    "paper MLP with dropout + weight decay + augmentation": ("mnist1d_mlp", {}, REGULARIZED),
    "paper MLP": ("mnist1d_mlp", {}, {}),
    "paper CNN": ("mnist1d_cnn", {}, {}),
    "MLP 512x3": ("mlp", {"widths": (512, 512, 512), "num_classes": 10}, {}),
    # Not run by default: what a realistic CNN step's cost is made of, and the convolution choice on a
    # GPU ('auto' is vhjax's patch convolution on CPU, XLA's native one elsewhere; models/patch_conv.py)
    "paper CNN with dropout": ("mnist1d_cnn", {}, {"dropout_rate": REGULARIZED["dropout_rate"]}),
    "paper CNN with augmentation": ("mnist1d_cnn", {}, {"augment": REGULARIZED["augment"]}),
    "paper CNN, patch conv": ("mnist1d_cnn", {"conv_impl": "patch"}, {}),
    "paper CNN, patch conv, with dropout + weight decay + augmentation": ("mnist1d_cnn", {"conv_impl": "patch"},
                                                                         REGULARIZED),
    "paper CNN, XLA conv, with dropout + weight decay + augmentation": ("mnist1d_cnn", {"conv_impl": "xla"},
                                                                       REGULARIZED),
}
DEFAULT_MODELS = list(MODELS)[:5]  # the realistic rows first, then the three without regularization


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matmul FLOP/s of the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    multiply = jax.jit(lambda a, b: a @ b)
    multiply(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = multiply(a, b)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def step_flops(task, data) -> float:
    """FLOPs of one member's train step, from XLA's cost analysis."""
    state = init_state(task, jax.random.key(0))
    batch = (data[0][: task.config.batch_size], data[1][: task.config.batch_size])
    analysis = jax.jit(make_train_step(task)).lower(state, batch).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", float("nan")))


def baseline_runner(task, data, trials: int, steps: int):
    """A timed run of the baseline: a Python loop of jitted steps, trials one after another.
    Returns a function that trains `trials` trials and gives member-steps/s (compiled here)."""
    step = jax.jit(make_train_step(task))
    x_all, y_all = data
    size, batch_size = len(task.train), task.config.batch_size

    def train_trial(seed: int) -> None:
        state = init_state(task, jax.random.key(seed))
        indices = chunk_batch_indices(state.data_key, 0, steps, size, batch_size, True)
        for index in indices:
            state, metrics = step(state, (x_all[index], y_all[index]))
        jax.block_until_ready(metrics["loss"])

    def timed() -> float:
        start = time.perf_counter()
        for seed in range(trials):
            train_trial(seed)
        return trials * steps / (time.perf_counter() - start)

    train_trial(100)  # compile
    return timed


def population_runner(task, data, size: int, steps: int):
    """A timed run of vhjax's population: one scanned, vmapped program (groups of members; on several
    devices the members are sharded over them, groups cut within each device's shard, as
    fit_population and tune do). Returns a function that gives member-steps/s (compiled here)."""
    if jax.device_count() > 1:
        shards = jax.device_count()
        run = on_mesh(classifier_runner(task, default_member_group(size, shards), shards=shards), population_mesh())
    else:
        run = classifier_runner(task, default_member_group(size))
    state = {"population": init_population(task, size, {"learning_rate": np.geomspace(1e-3, 1e-2, size).astype(np.float32)})}

    def timed() -> float:
        start = time.perf_counter()
        state["population"], metrics = run(state["population"], data, steps)
        jax.block_until_ready(metrics["loss"])
        return size * steps / (time.perf_counter() - start)

    timed()  # compile and warm up
    return timed


def paired_rates(baseline, population, repeats: int) -> tuple[float, float, float]:
    """Alternate baseline and population runs `repeats` times (A, B, A, B: a host that slows down for
    a while slows both); return (best baseline rate, best population rate, median of the per-pair
    ratios)."""
    pairs = [(baseline(), population()) for _ in range(repeats)]
    return (max(base for base, _ in pairs), max(ours for _, ours in pairs),
            float(np.median([ours / base for base, ours in pairs])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS), metavar="MODEL",
                        help=f"rows to measure (default: the first five); known: {'; '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternating (baseline, population) pairs per row; rates: best, ratio: median of pairs")
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="split the CPU into this many JAX devices (vhjax.hardware.use_cpu_devices); the "
                             "population is sharded over them, the one-trial baseline runs on one")
    args = parser.parse_args()
    use_cpu_devices(args.cpu_devices)

    device = jax.devices()[0]
    peak = matmul_peak()
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| model | P | baseline member-steps/s | vhjax member-steps/s | ratio | vhjax GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for label in args.models:
        name, kwargs, overrides = MODELS[label]
        config = TrainConfig(dataset="mnist1d", model=name, model_kwargs=kwargs, optimizer="adamw",
                             learning_rate=1e-3, batch_size=100, steps=args.steps, **overrides)
        task = build_task(config)
        data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
        flops = step_flops(task, data)
        for size in args.sizes:
            base, ours, ratio = paired_rates(baseline_runner(task, data, min(size, 4), args.steps),
                                             population_runner(task, data, size, args.steps), args.repeats)
            achieved = ours * flops
            print(f"| {label} | {size} | {base:,.0f} | {ours:,.0f} | {ratio:.1f} | "
                  f"{achieved / 1e9:.1f} | {100 * achieved / peak:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
