"""Scaling, simulated on one machine: member-steps/s of one population over 1, 2, 4 and 8 forced
host (CPU) devices, each in its own process, and over 2 JAX processes (`vhjax.distributed` over
localhost, gloo collectives), as ratios against 1 device.

This is a SIMULATION of scale-out: forced host devices share this machine's CPU cores, so the
ratios measure vhjax's sharding and communication overhead, not the speed-up of real chips. On a
TPU slice or GPU cluster, run `experiments/population_on_slice.py` through `vhjax launch`.

    python experiments/bench_scaling.py            # 1, 2, 4, 8 devices and 2 processes x 2 devices
    python experiments/bench_scaling.py --quick    # 1, 2 devices and 2 processes x 1 device, few steps
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from vhjax.hardware import DEVICE_COUNT_FLAG

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, sys
    process_id, port, population, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if process_id != "single":
        import vhjax.distributed
        vhjax.distributed.initialize(f"localhost:{port}", 2, int(process_id))
    import jax
    from vhjax.config import TrainConfig
    from vhjax.parallel import population_mesh
    from vhjax.population import fit_population
    config = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (64, 64), "num_classes": 10},
                         learning_rate=3e-3, batch_size=64, steps=steps, eval_every=steps // 4, seed=0)
    members = [{"learning_rate": 1e-3 * (1 + i % 4)} for i in range(population)]
    mesh = population_mesh() if len(jax.devices()) > 1 else None
    result = fit_population(config, members, mesh=mesh, verbose=False)
    rows = [row for row in result.histories[0] if row["split"] == "train"]
    # the last of 4 chunks: every program (training, evaluation, resharding) compiled already
    print("RATE " + json.dumps({"rate": rows[-1]["member_steps_per_second"], "devices": len(jax.devices())}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def measure(devices_per_process: int, processes: int, population: int, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{DEVICE_COUNT_FLAG}={devices_per_process}"}
    port = free_port()
    ids = ["single"] if processes == 1 else [str(i) for i in range(processes)]
    runs = [subprocess.Popen([sys.executable, "-c", WORKER, i, str(port), str(population), str(steps)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in ids]
    outputs = [run.communicate(timeout=1800) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        if run.returncode:
            raise RuntimeError(f"benchmark process failed ({run.returncode}): {err[-2000:]}")
    return json.loads(outputs[0][0].split("RATE ")[1])["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke check: 1 and 2 devices, 2 x 1 processes")
    parser.add_argument("--population", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    population = args.population or (8 if args.quick else 32)
    steps = args.steps or (40 if args.quick else 400)
    setups = ([(1, 1), (2, 1), (1, 2)] if args.quick else [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2)])
    rates = {}
    for devices, processes in setups:
        rates[(devices, processes)] = measure(devices, processes, population, steps)
        print(f"{processes} process(es) x {devices} device(s): {rates[(devices, processes)]:.0f} member-steps/s",
              flush=True)
    base = rates[(1, 1)]
    lines = [f"Simulated scaling on {os.cpu_count()} CPU cores (forced host devices share them; not real chips): "
             f"population {population}, MLP 64-64 on digits, batch 64, {steps} steps, the last quarter timed.", "",
             "| processes | devices per process | devices | member-steps/s | ratio vs 1 device |", "|---|---|---|---|---|"]
    for (devices, processes), rate in rates.items():
        lines.append(f"| {processes} | {devices} | {devices * processes} | {rate:.0f} | {rate / base:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
