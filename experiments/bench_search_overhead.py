"""Search overhead: vhjax ask/tell against Optuna's own ask/tell loop, same problem.

Problem: minimize the sphere `sum((x - 0.3)^2)` over a 20-dimensional unit cube (its cost
is negligible, so the timings are the search machinery only). One generation = ask a
population of candidates, evaluate them, tell the results.

- vhjax: `make_strategy(name, space)`; one `ask(state, key, n)` returns all n candidates
  as an array and one `tell` takes all n fitness values. `random` is a jitted JAX function;
  the TPE bridge wraps Optuna's TPESampler behind the same ask/tell.
- Optuna: `study.ask(distributions)` n times, then `study.tell(trial, value)` n times
  (the way users run it today), with RandomSampler / TPESampler.

Population 1,024 for random search. TPE's cost grows with the number of completed trials
(each ask fits Parzen estimators on the history), so TPE runs with a smaller population
(`--tpe-population`, default 128) and says so in the output.

Command:  python experiments/bench_search_overhead.py
Hardware: any; prints the device. Times are medians over `--repeats` generations after a
warm-up generation (compilation excluded).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.hardware import cpu_name

DIM = 20
TARGET = 0.3



def make_space(dim: int):
    """A `dim`-dimensional space of floats in [0, 1] (vhjax.search.space)."""
    from vhjax.search import space as space_lib

    return space_lib.Space({f"x{i}": space_lib.Float(0.0, 1.0) for i in range(dim)})


def sphere(u) -> jax.Array:
    return jnp.sum((jnp.asarray(u) - TARGET) ** 2, axis=-1)


def time_vhjax(name: str, population: int, generations: int) -> tuple[float, float]:
    """(median seconds per generation, best fitness) for a vhjax strategy."""
    from vhjax.search.strategies import make_strategy

    strategy = make_strategy(name, make_space(DIM))
    state = strategy.init(jax.random.key(0))
    times, best = [], np.inf
    for g in range(generations + 1):  # generation 0 is the warm-up (compilation)
        began = time.perf_counter()
        state, proposals = strategy.ask(state, jax.random.key(g + 1), population)
        fitness = sphere(proposals.u)
        state, _ = strategy.tell(state, proposals, fitness)
        jax.block_until_ready((state, fitness))
        if g > 0:
            times.append(time.perf_counter() - began)
        best = min(best, float(jnp.min(fitness)))
    return float(np.median(times)), best


def time_optuna(sampler_name: str, population: int, generations: int) -> tuple[float, float]:
    """(median seconds per generation, best fitness) for Optuna's ask/tell loop."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {"random": optuna.samplers.RandomSampler,
               "tpe": optuna.samplers.TPESampler}[sampler_name](seed=0)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    distributions = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(DIM)}
    times = []
    for g in range(generations + 1):
        began = time.perf_counter()
        trials = [study.ask(distributions) for _ in range(population)]
        for trial in trials:
            x = np.asarray([trial.params[f"x{i}"] for i in range(DIM)])
            study.tell(trial, float(np.sum((x - TARGET) ** 2)))
        if g > 0:
            times.append(time.perf_counter() - began)
    return float(np.median(times)), float(study.best_value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--tpe-population", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations")
    parser.add_argument("--tpe-strategy", default="tpe", help="vhjax name of the TPE bridge")
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), CPU: {cpu_name()}")
    print(f"problem: sphere, {DIM} dims; one generation = ask n + evaluate + tell n; "
          f"median of {args.repeats} generations after 1 warm-up")
    rows = []
    for label, vhjax_name, optuna_name, n in (
        ("random", "random", "random", args.population),
        ("TPE", args.tpe_strategy, "tpe", args.tpe_population),
    ):
        ours, ours_best = time_vhjax(vhjax_name, n, args.repeats)
        theirs, theirs_best = time_optuna(optuna_name, n, args.repeats)
        rows.append((label, n, ours, theirs, theirs / ours, ours_best, theirs_best))
    print()
    print("| sampler | population | vhjax s/generation | Optuna s/generation | Optuna / vhjax "
          "| best (vhjax) | best (Optuna) |")
    print("|---|---|---|---|---|---|---|")
    for label, n, ours, theirs, ratio, ours_best, theirs_best in rows:
        print(f"| {label} | {n} | {ours:.4f} | {theirs:.4f} | {ratio:.1f}x | {ours_best:.3f} "
              f"| {theirs_best:.3f} |")
    if args.tpe_population != args.population:
        print(f"\nTPE ran with population {args.tpe_population} (not {args.population}): its "
              "cost per ask grows with the history, in both implementations.")


if __name__ == "__main__":
    main()
