"""Benchmark: the cost of per-member randomness in a population step (dropout masks, augmentation).

(a) dropout masks of the MNIST-1D paper CNN's first layer (batch 100, 20 positions, 25 channels)
    for P members at once, with each PRNG implementation JAX offers (`jax_default_prng_impl`:
    threefry2x32, the default; rbg; unsafe_rbg), plus threefry drawing 8 bits per unit instead of
    a 32-bit float (a quarter of the hashing; the keep rate is rounded to 1/256), and the whole
    population train step of the paper CNN with dropout 0.1 under each implementation;
(b) random shift augmentation of P members' batches (100 x 40): one key split per example and a
    vmapped per-example shift (vhjax before issue 11) against one draw for the batch and one
    batched gather (`vhjax.augment` now).
Variants are timed in turns (A, B, C, A, B, C, ...) in one process and the best of `--repeats`
is reported, so a shared machine disturbs the ratios less than the absolute times.

Command:  python experiments/bench_rng.py [--members 8] [--repeats 20] [--train-steps 100]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from vhjax.augment import get_augmentation
from vhjax.augment.compose import per_example
from vhjax.augment.sequence import max_offset, random_offset, shift_axis

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def best_time(fn, args, repeats: int) -> float:
    """Seconds of one call of the compiled `fn(*args)` (after a warm-up), best of `repeats`."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """Best seconds per call of each `name -> (fn, args)`, timing the variants in turns."""
    times = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, (fn, args) in variants.items():
            times[name] = min(times[name], best_time(fn, args, 1))
    return times


def dropout_variant(impl: str, members: int, shape: tuple[int, ...], eight_bit: bool = False):
    """A jitted P-member dropout of activations `shape` with keys of PRNG implementation `impl`."""
    keys = jax.random.split(jax.random.key(0, impl=impl), members)
    x = jnp.ones(shape, jnp.float32)
    rates = jnp.linspace(0.05, 0.3, members, dtype=jnp.float32)

    def dropout(key, x, rate):
        keep = 1.0 - rate
        return jnp.where(jax.random.uniform(key, x.shape) < keep, x / keep, 0.0)

    def dropout_8bit(key, x, rate):  # a quarter of the hashing: 4 bytes of each 32-bit word, rate rounded to 1/256
        keep = 1.0 - rate
        threshold = jnp.round(keep * 256.0).astype(jnp.uint16)
        words = jax.random.bits(key, (-(-x.size // 4),), jnp.uint32)
        random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:x.size].reshape(x.shape)
        return jnp.where(random_bytes.astype(jnp.uint16) < threshold, x / keep, 0.0)

    fn = dropout_8bit if eight_bit else dropout
    return jax.jit(jax.vmap(fn, in_axes=(0, None, 0))), (keys, x, rates)


def old_shift(key, x, strength):
    """vhjax's shift before issue 11: a key per example, a vmapped per-example shift."""
    limit = max_offset(strength, x.shape[1])
    shifted = per_example(key, x, lambda k, xi: shift_axis(xi, random_offset(k, limit), 0, "zero"))
    return jnp.where(strength == 0, x, shifted)


def shift_variants(members: int) -> dict:
    keys = jax.random.split(jax.random.key(0), members)
    x = jax.random.normal(jax.random.key(1), (100, 40))
    strengths = jnp.linspace(0.05, 0.2, members, dtype=jnp.float32)
    new = get_augmentation("shift")
    return {name: (jax.jit(jax.vmap(fn, in_axes=(0, None, 0))), (keys, x, strengths))
            for name, fn in (("per-example keys + vmap (before)", old_shift), ("one draw + one gather (now)", new))}


def train_step_rate(impl: str, members: int, steps: int) -> float:
    """Member-steps/s of the paper CNN population (dropout 0.1) with PRNG implementation `impl`."""
    from bench_population import population_runner  # experiments/ is on sys.path when run as a script
    from vhjax.config import TrainConfig
    from vhjax.train import build_task

    jax.config.update("jax_default_prng_impl", impl)
    try:
        config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", optimizer="adam", learning_rate=1e-3,
                             batch_size=100, steps=steps, dropout_rate=0.1)
        task = build_task(config)
        data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
        timed = population_runner(task, data, members, steps)
        return max(timed() for _ in range(3))
    finally:
        jax.config.update("jax_default_prng_impl", "threefry2x32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=100, help="0 skips the train-step measurement")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); P = {args.members} members\n")

    print("| dropout mask, P x (100, 20, 25) | µs per call | vs threefry2x32 |")
    print("|---|---|---|")
    variants = {impl: dropout_variant(impl, args.members, (100, 20, 25)) for impl in IMPLS}
    variants["threefry2x32, 8-bit draws"] = dropout_variant("threefry2x32", args.members, (100, 20, 25), eight_bit=True)
    times = interleaved(variants, args.repeats)
    for name, seconds in times.items():
        print(f"| {name} | {1e6 * seconds:,.0f} | {times['threefry2x32'] / seconds:.2f}x |")

    print("\n| shift augmentation, P x (100, 40) | µs per call | speed-up |")
    print("|---|---|---|")
    times = interleaved(shift_variants(args.members), args.repeats)
    before = times["per-example keys + vmap (before)"]
    for name, seconds in times.items():
        print(f"| {name} | {1e6 * seconds:,.0f} | {before / seconds:.2f}x |")

    if args.train_steps:
        print(f"\n| paper CNN population step, dropout 0.1, P = {args.members} | member-steps/s |")
        print("|---|---|")
        for impl in IMPLS:
            print(f"| {impl} | {train_step_rate(impl, args.members, args.train_steps):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
