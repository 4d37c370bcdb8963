"""Per-host batches: on a mesh that spans processes, each process gathers only its rows of a chunk.

A chunk's batch indices are computed once per chunk (one small program, the same on every process:
they follow from the members' data keys and steps); each process then gathers, from its host copy
of the training data, only the rows its devices hold of every batch (its part of the mesh's `data`
axis, and with a batch per member its part of the `members` axis too), and the global batches are
assembled with `jax.make_array_from_process_local_data`. The training data itself is never copied
to the devices. The chunk trains on these batches (`PopulationRunner.run_batches`), so its members
end exactly as with the batches gathered inside the program.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vhjax import parallel
from vhjax.memo import Memo
from vhjax.population.engine import PopulationRunner, gather_batch
from vhjax.population.state import PopulationState


def can_feed(runner: Any) -> bool:
    """Whether `runner` can train on batches gathered outside its program: a `PopulationRunner`
    whose batches are rows of the data (the default gather)."""
    return isinstance(runner, PopulationRunner) and runner.gather is gather_batch


def batch_spec(mesh: Mesh, same_batches: bool, batch_size: int) -> PartitionSpec:
    """Of chunk batches `(length, B, ...)` (shared) or `(length, P, B, ...)` (per member): B over the
    mesh's data axis (when it divides B), P over its members axis."""
    data = parallel.DATA if mesh.shape[parallel.DATA] > 1 and batch_size % mesh.shape[parallel.DATA] == 0 else None
    return PartitionSpec(None, data) if same_batches else PartitionSpec(None, parallel.MEMBERS, data)


def local_box(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of a global array of `shape` that this process's devices hold (its shards'
    bounding box; with a (members, data) mesh the shards of a process are one block)."""
    boxes = [tuple(index) for index in sharding.addressable_devices_indices_map(shape).values()]
    box = []
    for axis, size in enumerate(shape):
        parts = [part[axis].indices(size)[:2] if axis < len(part) else (0, size) for part in boxes]
        box.append(slice(min(p[0] for p in parts), max(p[1] for p in parts)))
    return tuple(box)


def local_rows(leaf: np.ndarray, indices: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The block `box` of the gathered batches `leaf[indices]`, reading only the rows it needs."""
    head = box[:indices.ndim]
    return np.asarray(leaf[indices[head]])[(slice(None),) * len(head) + box[indices.ndim:]]


def chunk_batches(data: Any, indices: np.ndarray, mesh: Mesh, same_batches: bool) -> tuple[Any, int]:
    """(global chunk batches, batch rows this process gathered): every leaf of `data` (host arrays)
    at `indices` (`(length, B)` or `(length, P, B)`; or step numbers into data of whole batches),
    each process giving only its block."""
    rows = 0
    out = []
    leaves, tree = jax.tree.flatten(data)
    for leaf in leaves:
        shape = indices.shape + leaf.shape[1:]
        batch_size = shape[1] if same_batches else shape[2]
        sharding = NamedSharding(mesh, batch_spec(mesh, same_batches, batch_size))
        box = local_box(sharding, shape)
        local = local_rows(leaf, indices, box)
        rows = max(rows, int(np.prod(local.shape[:2 if same_batches else 3])))
        out.append(jax.make_array_from_process_local_data(sharding, local, shape))
    return jax.tree.unflatten(tree, out), rows


_INDICES: Memo[Callable] = Memo(16)


def chunk_indices(runner: PopulationRunner, population: PopulationState, length: int, mesh: Mesh) -> np.ndarray:
    """The chunk's batch indices on every process (one jitted program per runner, mesh and length)."""
    program = _INDICES.get((runner,), lambda: jax.jit(lambda p: runner.batch_indices(p, length),
                                                      out_shardings=NamedSharding(mesh, PartitionSpec())),
                           settings=(mesh, length))
    return np.asarray(program(population))


def run_fed(runner: PopulationRunner, population: PopulationState, data: Any, length: int,
            mesh: Mesh) -> tuple[PopulationState, dict, int]:
    """One chunk with per-host batches: (population, metrics, batch rows this process gathered)."""
    indices = chunk_indices(runner, population, length, mesh)
    batches, rows = chunk_batches(data, indices, mesh, population.same_batches)
    end, metrics = runner.run_batches(population, batches)
    return end, metrics, rows
