"""A population trained over every device of a TPU slice / GPU cluster (or this machine).

    vhjax launch tpu_configs/v4_32.py -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
    python experiments/population_on_slice.py --population 8 --steps 200      # one host, all its devices

Members draw learning rates log-uniformly in [1e-3, 3e-2] (seeded); each member has its own seed.
Run under `python -m vhjax.distributed` (what the launchers start) the mesh spans every process;
rerunning with the same workdir resumes (SIGTERM checkpoints and exits 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).parent / "configs" / "mnist1d_mlp.py"))
    parser.add_argument("--mesh", default=os.environ.get("VHJAX_MESH", "auto"))
    parser.add_argument("--population", type=int, default=int(os.environ.get("VHJAX_POPULATION", 8)))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workdir", default=os.environ.get("VHJAX_WORKDIR"))
    args = parser.parse_args()

    from vhjax.population import fit_population

    config = runpy.run_path(args.config)["get_config"]()
    changes = {k: v for k, v in (("batch_size", args.batch_size), ("steps", args.steps)) if v is not None}
    config = dataclasses.replace(config, **changes)
    rates = np.exp(np.random.default_rng(0).uniform(np.log(1e-3), np.log(3e-2), args.population))
    members = [{"learning_rate": float(rate), "seed": index} for index, rate in enumerate(rates)]
    result = fit_population(config, members, args.workdir, mesh=None if args.mesh == "none" else args.mesh)
    from vhjax.train.metrics_log import is_main_process

    if is_main_process():
        print(result.table(split="eval", top=10))


if __name__ == "__main__":
    main()
