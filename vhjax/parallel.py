"""Device meshes and shardings for populations: members (and data) spread over devices."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MEMBERS, DATA = "members", "data"


def population_mesh(devices: Sequence[jax.Device] | None = None, data_parallel: int = 1) -> Mesh:
    """A 2-D mesh (members, data) over `devices` (default: all), `data_parallel` devices per member group."""
    devices = list(jax.devices() if devices is None else devices)
    if data_parallel < 1 or len(devices) % data_parallel:
        raise ValueError(f"data_parallel {data_parallel!r} must be a positive divisor of the {len(devices)} devices")
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // data_parallel, data_parallel)
    return Mesh(grid, (MEMBERS, DATA))


def shard_members(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf's leading (member) axis over the mesh's `members` axis."""
    size = mesh.shape[MEMBERS]

    def place(leaf):
        if leaf.ndim == 0 or leaf.shape[0] % size:
            raise ValueError(f"a population of {leaf.shape[:1]} members does not divide over {size} devices; "
                             f"choose a population size that is a multiple of {size}")
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(MEMBERS)))

    return jax.tree.map(place, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every leaf to every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
