"""TPU VM slice v5p-64: 32 chips (v5p-N counts TensorCores, 2 per chip), 8 hosts x 4 chips.

    vhjax launch tpu_configs/v5p_64.py --dry-run -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
"""

import runpy
from pathlib import Path

common = runpy.run_path(str(Path(__file__).with_name("_common.py")))


def get_launch():
    return {
        "name": "vhjax-v5p-64",
        "accelerator_type": "v5p-64",
        "runtime_version": "v2-alpha-tpuv5",
        "zone": "us-east5-a",
        "hosts": 8,
        "devices": 32,
        "mesh": "members=16,data=2",
        "population": 64,
        "batch_size": 512,
        "spot": True,
        "workdir": "/mnt/runs/v5p_64",
        "setup": common["setup"](),
    }
