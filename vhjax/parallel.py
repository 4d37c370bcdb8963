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


def resolve_mesh(mesh: Any, members: int | None = None) -> Mesh | None:
    """'auto': every device (a members-only mesh) when there are several, else None (one device),
    and None for a population of one `members` in one process (one member padded to a member per
    device computes the same on every device and waits for them); None: one device; a spec
    ('members=M,data=D') or a Mesh as given."""
    if isinstance(mesh, str):
        if mesh != "auto":
            return mesh_from_spec(mesh)
        alone = members == 1 and jax.process_count() == 1
        return population_mesh() if len(jax.devices()) > 1 and not alone else None
    return mesh


def member_shards(mesh: Mesh | None) -> int:
    """Devices on the mesh's members axis (1 without a mesh): the shards the members are split into."""
    return 1 if mesh is None else mesh.shape[MEMBERS]


def shard_members(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf's leading (member) axis over the mesh's `members` axis."""
    size = mesh.shape[MEMBERS]

    def place(leaf):
        if leaf.ndim == 0 or leaf.shape[0] % size:
            raise ValueError(f"a population of {leaf.shape[:1]} members does not divide over {size} devices; "
                             f"choose a population size that is a multiple of {size}")
        return put(leaf, NamedSharding(mesh, PartitionSpec(MEMBERS)))

    return jax.tree.map(place, tree)


def spans_processes(mesh: Mesh) -> bool:
    """Whether the mesh holds devices of other JAX processes (multi-host, `vhjax.distributed`)."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """`jax.device_put(leaf, sharding)`, also when the sharding spans several processes: a value
    held whole by this process (the same on every process: a NumPy array or a process-local
    jax.Array, PRNG keys included) becomes the global array's shards on this process's devices,
    without communication (`jax.make_array_from_callback`); a global array is resharded."""
    if sharding.is_fully_addressable:
        return spread(leaf, sharding)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return _reshard(sharding)(leaf)  # one program over every process
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        impl = jax.random.key_impl(leaf)
        return jax.random.wrap_key_data(put(jax.random.key_data(leaf), sharding), impl=impl)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def spread(leaf: Any, sharding: Any) -> Any:
    """`jax.device_put(leaf, sharding)` within this process; an array on one device that goes onto
    several is split on the host (JAX would compile a slicing program for every leaf shape)."""
    if not (isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) == 1 < len(sharding.device_set)):
        return jax.device_put(leaf, sharding)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(leaf)
        return jax.random.wrap_key_data(spread(jax.random.key_data(leaf), sharding), impl=impl)
    return jax.device_put(np.asarray(leaf), sharding)


def batch_placement(mesh: Mesh):
    """`place(batch, same_batches)`: a batch split over the mesh's data axis (its example axis),
    shared batches `(B, ...)` over `data`, per-member ones `(P, B, ...)` over (`members`, `data`).
    Under jit, XLA then reduces each member's gradient across its data devices."""

    def place(batch: Any, same_batches: bool) -> Any:
        spec = PartitionSpec(DATA) if same_batches else PartitionSpec(MEMBERS, DATA)

        def constrain(leaf):
            axis = 0 if same_batches else 1
            if leaf.ndim <= axis or leaf.shape[axis] % mesh.shape[DATA]:
                return leaf  # not divisible: left to XLA
            return jax.lax.with_sharding_constraint(leaf, NamedSharding(mesh, spec))

        return jax.tree.map(constrain, batch)

    return place


def mesh_from_spec(text: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from `members=4,data=2` (the CLI's --mesh); `members=-1` takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in (MEMBERS, DATA) or not value.lstrip("-").isdigit():
            raise ValueError(f"mesh has value {text!r}; allowed: 'members=M,data=D' (e.g. members=4,data=2)")
        sizes[name] = int(value)
    data = sizes.get(DATA, 1)
    members = sizes.get(MEMBERS, -1)
    if members == -1:
        members = len(devices) // max(data, 1)
    if members < 1 or data < 1 or members * data != len(devices):
        raise ValueError(f"mesh has value {text!r}; allowed: members x data equal to the {len(devices)} devices")
    return population_mesh(devices, data_parallel=data)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every leaf to every device of the mesh (over several processes: each process gives its
    own whole copy; see `put`)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda leaf: put(leaf, sharding), tree)


def gather_members(population: Any, metrics: dict, size: int, mesh: Mesh) -> tuple[Any, dict]:
    """The first `size` members (and their `(steps, P)` metrics) copied to every device of the mesh,
    in one program: over several processes each process can then read, evaluate and checkpoint the
    population; within one it drops the padding members (`loop.padded_on_mesh`)."""
    return _gather_program(size, NamedSharding(mesh, PartitionSpec()))(population, metrics)


_GATHER: dict = {}


def _gather_program(size: int, sharding: NamedSharding):
    key = (size, sharding)
    if key not in _GATHER:
        cut = lambda population, metrics: (jax.tree.map(lambda leaf: leaf[:size], population),
                                           {k: v[:, :size] for k, v in metrics.items()})
        _GATHER[key] = jax.jit(cut, out_shardings=sharding)
    return _GATHER[key]


_RESHARD: dict = {}


def _reshard(sharding: NamedSharding):
    if sharding not in _RESHARD:
        _RESHARD[sharding] = jax.jit(lambda leaf: leaf, out_shardings=sharding)
    return _RESHARD[sharding]
