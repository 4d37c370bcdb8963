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
in-memory data (on the host) and the same initial population (both are built from seeds); it
gathers only its own rows of each chunk's batches (`vhjax.population.feed`); the training
chunk is one program over the global mesh (each process computes its members' shards); after
the chunk the population is copied to every device, so every process evaluates, runs the hooks
and checkpoints the same values (orbax writes from every process, into one shared folder).
Progress lines and the metrics log come from process 0 only (`is_main_process`).
Before each chunk the processes agree (`agree`); one that failed has reported it
(`report_failure`), so the others raise `PeerFailed` instead of waiting in a collective.
`host_local_batch` assembles a global array from per-process slices
(`jax.make_array_from_process_local_data`) for data each host loads only its share of.
"""

from __future__ import annotations

import os
import time
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


FAILED_KEY, ARRIVED_KEY = "vhjax/failed/", "vhjax/arrived/"
_ARRIVALS: dict[str, int] = {}


class PeerFailed(RuntimeError):
    """Another process of this run reported a failure (`report_failure`); raised by `agree`."""

    def __init__(self, process: int, error: str):
        super().__init__(f"process {process} failed: {error}")
        self.process, self.error = process, error


def _client() -> Any:
    from jax._src.distributed import global_state

    return global_state.client


def report_failure(error: BaseException) -> None:
    """Tell the other processes that this one failed with `error` (the coordination service's
    key-value store, no collective): they raise `PeerFailed` at their next `agree` instead of
    waiting in a collective this process never joins. A failure is final for the runtime: every
    later `agree` of the other processes raises it too (start new processes to run again), so its
    key (one per process at most) stays in the store."""
    if jax.process_count() == 1:
        return
    try:
        _client().key_value_set(f"{FAILED_KEY}{jax.process_index()}", f"{type(error).__name__}: {error}"[:2000])
    except Exception:  # reported already (the first failure is the one the others see)
        pass


def agree(stage: str, timeout: float = 600.0) -> None:
    """Wait until every process has reached `stage` (its n-th `agree(stage)`) or one of them has
    reported a failure: then `PeerFailed` names it and its error. Called before collectives that a
    failed process would never join (the loop before each chunk on a mesh spanning processes, a
    search after each evaluation). With one process it returns at once."""
    count, me = jax.process_count(), jax.process_index()
    if count == 1:
        return
    _ARRIVALS[stage] = _ARRIVALS.get(stage, 0) + 1
    wait_for_all(_client(), stage, _ARRIVALS[stage], me, count, timeout)


def _arrival_prefix(stage: str, round_: int) -> str:
    return f"{ARRIVED_KEY}{stage}/{round_}/"


def wait_for_all(client: Any, stage: str, round_: int, me: int, count: int, timeout: float) -> None:
    """`agree`'s round `round_` of `stage` for process `me` of `count`, on a coordination-service
    `client` (key_value_set, key_value_dir_get, key_value_delete). Once every process has arrived at
    this round, all have left the previous one, so this process deletes its key of that round: the
    store holds at most two rounds of keys per stage however long the run."""
    prefix = _arrival_prefix(stage, round_)
    client.key_value_set(f"{prefix}{me}", "1")
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        failed = sorted((int(key.rsplit("/", 1)[1]), value) for key, value in client.key_value_dir_get(FAILED_KEY))
        failed = [(process, error) for process, error in failed if process != me]
        if failed:
            raise PeerFailed(*failed[0])
        arrived = {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(prefix)}
        if len(arrived) == count:
            if round_ > 1:
                client.key_value_delete(f"{_arrival_prefix(stage, round_ - 1)}{me}")
            return
        if time.monotonic() > deadline:
            missing = sorted(set(range(count)) - arrived)
            raise TimeoutError(f"processes {missing} did not reach {stage!r} within {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


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
