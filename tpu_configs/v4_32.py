"""TPU VM slice v4-32: 16 chips, 4 hosts x 4 chips.

    vhjax launch tpu_configs/v4_32.py --dry-run -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
"""

import runpy
from pathlib import Path

common = runpy.run_path(str(Path(__file__).with_name("_common.py")))


def get_launch():
    return {
        "name": "vhjax-v4-32",
        "accelerator_type": "v4-32",
        "runtime_version": "tpu-ubuntu2204-base",
        "zone": "us-central2-b",
        "hosts": 4,
        "devices": 16,
        "mesh": "members=8,data=2",
        "population": 32,
        "batch_size": 256,
        "spot": True,
        "workdir": "/mnt/runs/v4_32",
        "setup": common["setup"](),
    }
