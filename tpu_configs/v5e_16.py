"""TPU VM slice v5litepod-16: 16 v5e chips, 4 hosts x 4 chips.

    vhjax launch tpu_configs/v5e_16.py --dry-run -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
"""

import runpy
from pathlib import Path

common = runpy.run_path(str(Path(__file__).with_name("_common.py")))


def get_launch():
    return {
        "name": "vhjax-v5litepod-16",
        "accelerator_type": "v5litepod-16",
        "runtime_version": "v2-alpha-tpuv5-lite",
        "zone": "us-west4-a",
        "hosts": 4,
        "devices": 16,
        "mesh": "members=16,data=1",
        "population": 64,
        "batch_size": 128,
        "spot": True,
        "workdir": "/mnt/runs/v5e_16",
        "setup": common["setup"](),
    }
