"""Multi-host JAX: one process per host (TPU VM worker, GPU node), all devices in one global mesh.

    import vhjax.distributed
    vhjax.distributed.initialize()          # before anything else touches JAX devices
    mesh = vhjax.parallel.population_mesh() # every device of every process
    result = fit_population(config, members, workdir, mesh=mesh)

`initialize()` with no arguments lets JAX detect the cluster (TPU pod slices; Slurm; Open MPI);
otherwise the coordinator `host:port`, the number of processes and this process's id come from
the arguments or from the environment (`VHJAX_COORDINATOR`, `VHJAX_NUM_PROCESSES`,
`VHJAX_PROCESS_ID`). On CPU, cross-process collectives use gloo.

What each process does in the loop (`vhjax.population.loop.on_mesh`): it holds the same
in-memory data and the same initial population (both are built from seeds); the training
chunk is one program over the global mesh (each process computes its members' shards); after
the chunk the population is copied to every device, so every process evaluates, runs the hooks
and checkpoints the same values (orbax writes from every process, into one shared folder).
Progress lines and the metrics log come from process 0 only (`is_main_process`).
`host_local_batch` assembles a global array from per-process slices
(`jax.make_array_from_process_local_data`) for data each host loads only its share of.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "VHJAX_COORDINATOR", "VHJAX_NUM_PROCESSES", "VHJAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    if not value.lstrip("-").isdigit():
        raise ValueError(f"environment variable {name} has value {value!r}; allowed: an integer")
    return int(value)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, local_device_ids: Any = None, initialization_timeout: int = 300) -> None:
    """Start (or join) the multi-process JAX runtime; call it first, before any JAX computation.

    With every argument None and no VHJAX_* variables, JAX detects the cluster (TPU VM pod
    slices, Slurm, Open MPI). Calling it again in the same process does nothing.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError(f"coordinator {coordinator!r} needs num_processes and process_id too (arguments or "
                         f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
    if num_processes is not None and (num_processes < 1 or process_id is None or not 0 <= process_id < num_processes):
        raise ValueError(f"process_id has value {process_id!r}; allowed: 0 <= process_id < num_processes "
                         f"({num_processes})")
    if jax.distributed.is_initialized():
        return
    # gloo: cross-process collectives on CPU (the default in recent jaxlib; set for older ones)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)


def shutdown() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def process_index() -> int:
    """This process's index (0 without `initialize`). Cheap: does not start a backend needlessly."""
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """Process 0: the one that prints progress and writes the metrics log."""
    return jax.process_index() == 0


def host_local_batch(local: Any, mesh: Any, spec: Any = None) -> Any:
    """A global array from this process's slice of a batch: `local` holds the rows for this
    process's devices along the sharded axis (`spec`, default the mesh's `data` axis on axis 0,
    or `members` when the mesh has no data split). Every leaf of a pytree is assembled."""
    from jax.sharding import NamedSharding, PartitionSpec

    from vhjax import parallel

    if spec is None:
        spec = PartitionSpec(parallel.DATA if mesh.shape[parallel.DATA] > 1 else parallel.MEMBERS)
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), local)


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's `data` on every process (the others pass None); `data` itself with one process."""
    if jax.process_count() == 1:
        return data
    from jax.experimental import multihost_utils

    main = is_main_process()
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if main else 0)))
    buffer = np.zeros(max(length, 1), np.uint8)
    if main:
        buffer[:length] = np.frombuffer(data, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes()[:length]


def process_slice(size: int) -> slice:
    """The rows `[start, stop)` of `size` that this process loads for `host_local_batch` (equal
    contiguous shares, in process order)."""
    count, index = jax.process_count(), jax.process_index()
    if size % count:
        raise ValueError(f"size has value {size}; allowed: a multiple of the {count} processes")
    share = size // count
    return slice(index * share, (index + 1) * share)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vhjax.distributed SCRIPT ARGS` (or `-m MODULE ARGS`): initialize, then run the
    script as `__main__` in this process (what the TPU and Slurm launchers start on every worker)."""
    import runpy
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        print("usage: python -m vhjax.distributed SCRIPT [ARGS...] | -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    initialize()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
