"""TPU VM slice v4-8: 4 chips (v4 megacore: one JAX device per chip), 1 host.

    vhjax launch tpu_configs/v4_8.py --dry-run -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
"""

import runpy
from pathlib import Path

common = runpy.run_path(str(Path(__file__).with_name("_common.py")))


def get_launch():
    return {
        "name": "vhjax-v4-8",
        "accelerator_type": "v4-8",
        "runtime_version": "tpu-ubuntu2204-base",
        "zone": "us-central2-b",
        "hosts": 1,
        "devices": 4,
        "mesh": "members=4,data=1",
        "population": 16,
        "batch_size": 128,
        "spot": True,
        "workdir": "/mnt/runs/v4_8",
        "setup": common["setup"](),
    }
