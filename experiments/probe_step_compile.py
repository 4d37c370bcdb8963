"""Probe (issue 11): what a population training chunk costs to compile and to run, piece by piece.

The bench's MNIST-1D paper CNN member (AdamW, batch 100, dropout 0.1, random shift 0.1, all
per-member traced values), one 150-step chunk of `classifier_runner` (the program `search_pbt`
and `tune` train with), on one JAX device. Variants switch pieces off: `nodrop` (no dropout),
`noaug` (no augmentation), `sgd` (plain SGD instead of AdamW), `fixidx` (a fixed batch-index
array instead of the in-program epoch permutation).

Command:  python experiments/probe_step_compile.py [--variants full nodrop noaug ...] [--sizes 16 1]
          (about 10 s per variant on a 2-core CPU; each variant runs in a fresh process)
Prints, per variant and population size: trace+lower and compile seconds, chunk seconds (mean of
3 after a warm-up run) and member-steps/s. Results: experiments/README.md, "Cheaper random
numbers in the training step".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 150
DEFAULT_VARIANTS = ("full", "nodrop", "noaug", "nodrop_noaug", "nodrop_noaug_sgd", "fixidx")


def measure(variant: str, size: int, group: int | None) -> str:
    """One variant in this process: compile and run one chunk; the result line."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import jax
    import jax.numpy as jnp
    import numpy as np

    import bench_time_to_quality as bench
    from vhjax.population.members import classifier_runner, init_population
    from vhjax.population.pbt import bucket_task

    config = bench.vhjax_config(bench.TASKS["mnist1d_cnn"], 1500, 0)
    values = {"learning_rate": 1e-3, "weight_decay": 1e-4, "dropout_rate": 0.1, "aug_strength": 0.1}
    for piece, change, field in (("nodrop", {"dropout_rate": 0.0}, "dropout_rate"),
                                 ("noaug", {"augment": ()}, "aug_strength"),
                                 ("sgd", {"optimizer": "sgd", "weight_decay": 0.0}, "weight_decay")):
        if piece in variant:
            config = dataclasses.replace(config, **change)
            values = {k: v for k, v in values.items() if k != field}
    task = bucket_task(config, set(values))
    population = init_population(task, size, {k: jnp.full((size,), v) for k, v in values.items()})
    indices = None
    if "fixidx" in variant:
        fixed = jnp.asarray(np.random.default_rng(0).integers(0, len(task.train), (CHUNK, config.batch_size)),
                            jnp.int32)
        indices = lambda population, length: fixed[:length]  # noqa: E731 (shared by all members)
    runner = classifier_runner(task, member_group=group, batch_indices=indices)
    data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    start = time.perf_counter()
    lowered = runner._free_chunk.lower(population, data, CHUNK, np.int32(CHUNK))
    traced = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(population, data, np.int32(CHUNK)))
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(compiled(population, data, np.int32(CHUNK)))
    chunk = (time.perf_counter() - start) / 3
    return (f"| {variant} | {size} | {group or 'all'} | {traced:.2f} | {compile_seconds:.2f} | {chunk:.3f} | "
            f"{size * CHUNK / chunk:,.0f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "SIZE", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        variant, size, group = args.one
        print(measure(variant, int(size), None if group == "all" else int(group)), flush=True)
        return
    import jax

    print(f"JAX {jax.__version__} on {jax.default_backend()}, one device; chunk of {CHUNK} steps")
    print("| variant | P | member group | trace+lower s | compile s | chunk s | member-steps/s |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for variant in args.variants:
            group = "8" if size > 8 else "all"
            out = subprocess.run([sys.executable, __file__, "--one", variant, str(size), group], capture_output=True,
                                 text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            print(out.stdout.strip() or out.stderr.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
