"""Probe (issue 11): compile seconds of `tune`'s programs for the time-to-quality bench's MNIST-1D
config, with per-member dropout and augmentation on or off, on 2 CPU devices or one.

Command (one variant per fresh process, about 15 s each on a 2-core CPU):
    for v in mesh single mesh_nodrop mesh_noaug mesh_nodrop_noaug; do
        PYTHONPATH=. python experiments/probe_tune_compile.py $v; done
Prints the wall time of a `tune` of 8 trials x 300 steps (8 slots) and the five programs that
took longest to compile. Results: experiments/README.md, "Rerun with 2, 4 and 8 slots".
"""

import sys
import time

VARIANTS = ("mesh", "single", "mesh_nodrop", "mesh_noaug", "mesh_nodrop_noaug")


def main(variant: str) -> None:
    if variant not in VARIANTS:
        raise SystemExit(f"variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if variant.startswith("mesh"):  # before JAX starts: one CPU device per core
        from vhjax.hardware import use_cpu_devices

        use_cpu_devices("auto")
    import dataclasses
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_time_to_quality import TASKS, vhjax_config
    from vhjax.compilation_cache import count_compilations
    from vhjax.search import Float, Space, tune

    config = vhjax_config(TASKS["mnist1d_cnn"], 300, 0)
    space = {"learning_rate": Float(1e-4, 3e-2, log=True), "weight_decay": Float(1e-5, 1e-1, log=True)}
    if "nodrop" in variant:
        config = dataclasses.replace(config, dropout_rate=0.0)
    else:
        space["dropout_rate"] = Float(0.0, 0.5)
    if "noaug" in variant:
        config = dataclasses.replace(config, augment=())
    else:
        space["aug_strength"] = Float(0.0, 0.25)
    with count_compilations() as compiled:
        started = time.perf_counter()
        tune(config, Space(space), trials=8, population=8, sampler="random", seed=0,
             mesh="auto" if variant.startswith("mesh") else None, verbose=False, compilation_cache=False)
    slowest = {name: round(seconds, 2) for name, seconds in compiled.seconds_by_function.most_common(5)}
    print(variant, f"wall {time.perf_counter() - started:.1f} s", slowest)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mesh")
