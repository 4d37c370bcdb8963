"""The population engine: any one-member step, vmapped over members, run in chunks of steps.

A *member step* is a pure function for ONE member, `step(member, batch) -> (member, metrics)`,
where `member` is a pytree with a `step` field (the built-in classifier's is a `TrainState`) and
`metrics` holds at least a scalar `"loss"`. The built-in classifier step
(`vhjax.train.step.make_train_step`) is one producer, `members.make_loss_step` (any model, any
loss) another; a GAN's alternating step or a user's own step are others.

The engine vmaps the member step over the population, keeps Python out of the inner loop with
a loop of steps inside one program (its bound traced: a shorter chunk runs in a full chunk's
program), and isolates divergence optimistically. Checking every member for non-finite values
after every step, and selecting between its old and new state, costs as much memory traffic as the
optimizer itself (on CPU a 512-wide MLP trained with Adam ran 25-30% slower with it). Divergence
is rare, so a chunk of steps runs optimistically:

1. every member trains for the whole chunk with no per-step checks (members that do not train
   any more, diverged or stopped, get their old state back at the end, by a small program run
   only when such a member's group trained);
2. if every training member ends the chunk with finite parameters and had a finite loss at every
   step, that is the result;
3. otherwise the chunk is run again from its start with the per-step isolated step: each
   diverging member is frozen at its last finite state and flagged with its step, exactly as if
   isolation had been on all along.

Step metrics of members that did not train at a step are NaN on both paths.

Batches: `batch_indices(population, length)` gives the chunk's per-step indices, shared
`(length, ...)` when `population.same_batches`, else `(length, P, ...)`; each step gathers its
batch from the device-resident `data` pytree (`gather(data, index)`, default: every leaf indexed
by `index`). On a CPU, members train in groups (`member_group`): each group trains through the
whole chunk before the next starts, so a group's parameters and activations stay in cache.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vhjax.compile_options import light_jit
from vhjax.population.state import PopulationState

MemberStep = Callable[[Any, Any], tuple[Any, dict]]
BatchIndices = Callable[[PopulationState, int], jax.Array]
Gather = Callable[[Any, jax.Array], Any]
ISOLATION_MODES = ("optimistic", "per_step")


def all_finite(tree: Any) -> jax.Array:
    """True if every floating-point leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def keep_where(condition: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `condition`, else `old`, leaf by leaf; `condition` is a scalar or one flag per
    member (leading axis). PRNG key leaves are taken from `new` (they never change in a step)."""

    def choose(a, b):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return a
        return jnp.where(condition.reshape(condition.shape + (1,) * (a.ndim - condition.ndim)), a, b)

    return jax.tree.map(choose, new, old)


def nan_where_frozen(training: jax.Array, metrics: dict, member_axis: int = 0) -> dict:
    """Step metrics with NaN for members that did not train; the member axis of the metrics is
    `member_axis` (0 for one step's metrics, 1 for a chunk's (steps, P, ...)); metrics may have
    per-member shapes of their own."""

    def mask(value):
        value = jnp.asarray(value)
        shape = [1] * value.ndim
        shape[member_axis] = training.shape[0]
        return jnp.where(training.reshape(shape), value, jnp.nan)

    return {name: mask(value) for name, value in metrics.items()}


def member_params(member: Any) -> Any:
    """What divergence is judged on: the member's `params` field, or the whole member."""
    return getattr(member, "params", member)


def gather_batch(data: Any, index: jax.Array) -> Any:
    """The default gather: every leaf of `data` indexed by `index` along its first axis."""
    return jax.tree.map(lambda leaf: leaf[index], data)


def take_batch(_: Any, batch: Any) -> Any:
    """The gather of a chunk whose batches were gathered before the program: the step's batch itself."""
    return batch


def make_population_step(member_step: MemberStep, *, isolate: bool = True
                         ) -> Callable[[PopulationState, Any], tuple[PopulationState, dict]]:
    """`step(population, batch) -> (population, metrics (P,))`: every member in one program.

    `batch` is one batch shared by all members when `population.same_batches`, else a batch per
    member (leading axis P). With `isolate`, a member whose loss or parameters become non-finite is
    frozen at its last finite state and flagged; without it nothing is checked (the optimistic
    chunks of `PopulationRunner`).
    """

    def isolated(member, training, alive, diverged_step, batch):
        new, metrics = member_step(member, batch)
        finite = jnp.isfinite(metrics["loss"]) & all_finite(member_params(new))
        ok = training & finite
        failed = training & ~finite
        return (keep_where(ok, new, member), alive & ~failed,
                jnp.where(failed, member.step + 1, diverged_step), metrics)

    def step(population: PopulationState, batch) -> tuple[PopulationState, dict]:
        batch_axis = None if population.same_batches else 0
        if not isolate:
            members, metrics = jax.vmap(member_step, in_axes=(0, batch_axis))(population.members, batch)
            return population.replace(members=members), metrics
        members, alive, diverged_step, metrics = jax.vmap(isolated, in_axes=(0, 0, 0, 0, batch_axis))(
            population.members, population.training, population.alive, population.diverged_step, batch)
        metrics = nan_where_frozen(population.training, metrics)
        return population.replace(members=members, alive=alive, diverged_step=diverged_step), metrics

    return step


def blank_like(shapes: Any, leading: tuple[int, ...] = ()) -> Any:
    """Arrays of `shapes` (`jax.ShapeDtypeStruct`s) with `leading` axes in front: NaN, 0 for
    integers (the metrics of steps or members that did not train)."""
    fill = lambda s: jnp.full((*leading, *s.shape), jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype)
    return jax.tree.map(fill, shapes)


def batch_step(step: Callable, gather: Gather = gather_batch, place: Callable | None = None) -> Callable:
    """`one(population, data, index) -> (population, metrics)`: gathers the step's batch from `data`
    (placed with `place`, e.g. a sharding constraint that splits it over a data axis) and trains one
    step. Jitted, so the traces of a chunk that use it (its metrics' shapes, the loop body, an idle
    group's branch) trace the step once; inside a program the call is inlined."""
    place = place or (lambda batch, same: batch)
    return jax.jit(lambda members, data, index: step(members, place(gather(data, index), members.same_batches)))


def traced_loop_bound() -> bool:
    """Whether a chunk program loops over a traced number of steps (`scan_steps`): yes, except on
    GPUs, where a while loop without a trip count known when compiling reads its predicate on the
    host every iteration (a synchronisation per step); there a chunk is a `lax.scan` of its length."""
    return jax.default_backend() != "gpu"


def scan_steps(one: Callable, population: PopulationState, data: Any, indices: Any, active: jax.Array):
    """The chunk's first `active` steps of `one` (`batch_step`; `active` a traced count, at most the
    `length` rows of `indices`). A loop with a traced bound (`traced_loop_bound`), so a chunk of any
    length up to `length` runs in the program compiled for `length`; metrics are `(length, ...)`,
    NaN (0 for integers) in the rows of steps not run. Without one (GPUs), `active` must be `length`."""
    if not traced_loop_bound():
        return lax.scan(lambda members, index: one(members, data, index), population, indices)
    row = lambda i: jax.tree.map(lambda leaf: lax.dynamic_index_in_dim(leaf, i, keepdims=False), indices)
    length = jax.tree.leaves(indices)[0].shape[0]
    rows = blank_like(jax.eval_shape(one, population, data, row(0))[1], (length,))

    def body(i, carry):
        members, rows = carry
        members, metrics = one(members, data, row(i))
        return members, jax.tree.map(lambda r, m: lax.dynamic_update_index_in_dim(r, m, i, 0), rows, metrics)

    return lax.fori_loop(0, active, body, (population, rows))


def default_member_group(size: int, shards: int = 1) -> int | None:
    """Members per group on a CPU, for any population size above 8: a group size in 4..16 (the
    working set of a group stays in cache) that needs the fewest padding members (a divisor of
    `size` needs none; see `run_in_groups`), then the one nearest 8; None (all at once) for 8
    members or fewer and on other backends. With `shards` (devices on a mesh's members axis) the
    group is chosen for one shard's members (`run_in_groups` takes a group from every shard)."""
    size = -(-size // shards)
    if jax.default_backend() != "cpu" or size <= 8:
        return None
    sizes = range(4, min(16, size - 1) + 1)
    return min(sizes, key=lambda d: (-size % d, abs(d - 8), -d))


def pad_leading(tree: Any, count: int, axis: int = 0) -> Any:
    """Every leaf with `count` copies of its last entry along `axis` appended."""
    def pad(leaf):
        last = lax.slice_in_dim(leaf, leaf.shape[axis] - 1, leaf.shape[axis], axis=axis)
        return jnp.concatenate([leaf, jnp.repeat(last, count, axis=axis)], axis=axis)

    return jax.tree.map(pad, tree)


def skipping_idle(run: Callable) -> Callable:
    """`run(group, indices)` that skips a group none of whose members trains (stopped or
    diverged): the group comes back unchanged, its step metrics NaN. A population whose stopped
    members fill whole groups then costs only its training members' compute."""

    def guarded(group: PopulationState, indices: Any):
        def idle(group, indices):
            return group, blank_like(jax.eval_shape(run, group, indices)[1])

        return lax.cond(jnp.any(group.training), run, idle, group, indices)

    return guarded


def run_in_groups(run: Callable, population: PopulationState, indices: jax.Array,
                  member_group: int | None, shards: int = 1) -> tuple[PopulationState, dict]:
    """`run(group, indices)` over groups of `member_group` members in turn (or all at once).

    A population whose size `member_group` does not divide is padded with copies of its last
    member (and, with own batches, of its batch indices) to fill the last group; the copies'
    results are dropped, and a copy computes exactly what its original does, so no member changes.
    `shards`: the members axis is split into that many contiguous shards (one per device of a
    mesh's members axis); group i then takes `member_group` members from every shard, so each
    device trains its own members in every iteration (groups cut along the shards would leave
    all devices but one idle). When the shards do not split into whole groups, all members
    train at once."""
    size = population.size
    if member_group is None or member_group * shards >= size:
        return run(population, indices)
    if shards > 1 and (size % shards or (size // shards) % member_group):
        return run(population, indices)
    extra = -size % member_group if shards == 1 else 0
    if extra:
        population = pad_leading(population, extra)
        if not population.same_batches:
            indices = pad_leading(indices, extra, axis=1)
    padded = size + extra
    groups = padded // (member_group * shards)
    width = member_group * shards  # members per iteration: member_group from each shard

    def split(leaf, axis=0):  # (..., P, ...) -> (groups, ..., width, ...)
        shape = leaf.shape
        leaf = leaf.reshape(*shape[:axis], shards, groups, member_group, *shape[axis + 1:])
        leaf = jnp.moveaxis(leaf, axis + 1, 0)  # (groups, ..., shards, member_group, ...)
        return leaf.reshape(groups, *shape[:axis], width, *shape[axis + 1:])

    def merge(leaf, axis=0):  # (groups, ..., width, ...) -> (..., P, ...), the inverse of split
        shape = leaf.shape[1:]
        leaf = leaf.reshape(groups, *shape[:axis], shards, member_group, *shape[axis + 1:])
        leaf = jnp.moveaxis(leaf, 0, axis + 1)  # (..., shards, groups, member_group, ...)
        return leaf.reshape(*shape[:axis], padded, *shape[axis + 1:])

    grouped = jax.tree.map(split, population)
    run = skipping_idle(run)
    if population.same_batches:
        finished, metrics = lax.map(lambda group: run(group, indices), grouped)
    else:  # indices (steps, P, ...) (or batches): each group takes its members' columns
        columns = jax.tree.map(lambda leaf: split(leaf, axis=1), indices)
        finished, metrics = lax.map(lambda pair: run(*pair), (grouped, columns))
    finished = jax.tree.map(lambda leaf: merge(leaf)[:size], finished)
    return finished, jax.tree.map(lambda m: merge(m, axis=1)[:, :size], metrics)


class PopulationRunner:
    """`runner(population, data, length) -> (population, metrics (length, P))`: one chunk of training;
    `runner(population, data, length, active)` trains only its first `active` steps in the same
    program (`run_loop` runs a chunk shorter than its `eval_every` so: one compilation per runner).

    Diverging members are isolated exactly as by the per-step isolated step (see the module
    docstring); `replayed_chunks` counts the chunks that were run again.
    `isolation='optimistic'` keeps the chunk's starting state until the chunk is known to be clean
    (two copies of the population's parameters and optimizer state in memory);
    `isolation='per_step'` checks every step and donates the input (one copy; slower).
    The input population must not be used afterwards (its buffers may be donated).
    `place(batch, same_batches) -> batch` places each gathered batch (`parallel.batch_placement`:
    split over a mesh's data axis, so each member's gradient is reduced across those devices).
    `run_batches(population, batches)` trains on a chunk's batches gathered outside the program
    (`vhjax.population.feed`: each process of a multi-host mesh gathers only its rows).
    `compiler_options` go to XLA for every chunk program (`compile_options.training_options`).
    """

    @property
    def accepts_active_steps(self) -> bool:
        """Whether a shorter chunk runs in a full one's program (`run_loop`; `traced_loop_bound`)."""
        return traced_loop_bound()

    def __init__(self, member_step: MemberStep, batch_indices: BatchIndices, *, member_group: int | None = None,
                 isolation: str = "optimistic", gather: Gather = gather_batch, place: Callable | None = None,
                 shards: int = 1, compiler_options: Mapping[str, Any] | None = None):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation={isolation!r}; allowed: {', '.join(map(repr, ISOLATION_MODES))}")
        self.isolation = isolation
        self.batch_indices, self.gather = batch_indices, gather
        free, isolated = make_population_step(member_step, isolate=False), make_population_step(member_step)

        def free_chunk(population: PopulationState, data, indices, take: Gather, active):
            one = batch_step(free, take, place)
            run = lambda group, group_indices: scan_steps(one, group, data, group_indices, active)
            end, metrics = run_in_groups(run, population, indices, member_group, shards)
            finite = jax.vmap(lambda m: all_finite(member_params(m)))(end.members)
            skipped = jnp.arange(metrics["loss"].shape[0]) >= active  # rows of steps not run: NaN
            finite = finite & jnp.all(jnp.isfinite(metrics["loss"]) | skipped[:, None], axis=0)
            clean = ~jnp.any(population.training & ~finite)
            # members that did not train but ran (their group trained): their old state comes back
            # in `restore_idle`, a program of its own run only then (in the chunk, its selects over
            # every leaf cost ~0.07 s of CPU compilation in every search, 4 alternating pairs)
            ran_idle = jnp.any(~population.training & (end.members.step != population.members.step))
            return end, nan_where_frozen(population.training, metrics, member_axis=1), clean, ran_idle

        def isolated_chunk(population: PopulationState, data, indices, take: Gather, active):
            one = batch_step(isolated, take, place)
            run = lambda group, group_indices: scan_steps(one, group, data, group_indices, active)
            return run_in_groups(run, population, indices, member_group, shards)

        # named programs: compile counts and profiles (`count_compilations().by_function`) name them
        def run_free(population: PopulationState, data, length: int, active):
            return free_chunk(population, data, batch_indices(population, length), gather, active)

        def run_isolated(population: PopulationState, data, length: int, active):
            return isolated_chunk(population, data, batch_indices(population, length), gather, active)

        def run_free_fed(population: PopulationState, batches, active):
            return free_chunk(population, None, batches, take_batch, active)

        def run_isolated_fed(population: PopulationState, batches, active):
            return isolated_chunk(population, None, batches, take_batch, active)

        self.compiler_options = options = dict(compiler_options or {})
        # the free chunk keeps its input (not donated): the restart point
        self._free_chunk = jax.jit(run_free, static_argnums=2, compiler_options=options)
        self._isolated_chunk = jax.jit(run_isolated, static_argnums=2, donate_argnums=0, compiler_options=options)
        self._free_fed = jax.jit(run_free_fed, compiler_options=options)
        self._isolated_fed = jax.jit(run_isolated_fed, donate_argnums=0, compiler_options=options)
        self.replayed_chunks = 0

    def __call__(self, population: PopulationState, data: Any, length: int,
                 active: int | None = None) -> tuple[PopulationState, dict]:
        """`active` (default `length`): train only the chunk's first `active` steps, in the program
        compiled for `length` (the rows of the other steps' metrics are NaN)."""
        return self._optimistic(self._free_chunk, self._isolated_chunk, population, data, length,
                                active_steps(active, length))

    def run_batches(self, population: PopulationState, batches: Any,
                    active: int | None = None) -> tuple[PopulationState, dict]:
        """One chunk on its batches, gathered already: every leaf `(length, B, ...)` shared by the
        members, or `(length, P, B, ...)` one per member (as `gather` would have built them);
        `active` as in `__call__`."""
        length = jax.tree.leaves(batches)[0].shape[0]
        return self._optimistic(self._free_fed, self._isolated_fed, population, batches, active_steps(active, length))

    def _optimistic(self, free_chunk: Callable, isolated_chunk: Callable, population: PopulationState, *args):
        if self.isolation == "per_step":
            return isolated_chunk(population, *args)
        end, metrics, clean, ran_idle = free_chunk(population, *args)
        clean, ran_idle = jax.device_get((clean, ran_idle))
        if clean:
            return (restore_idle(end, population) if ran_idle else end), metrics
        self.replayed_chunks += 1
        return isolated_chunk(population, *args)


@light_jit
def restore_idle(end: PopulationState, start: PopulationState) -> PopulationState:
    """`end` with the members that did not train in the chunk (`start.training` False: stopped or
    diverged) back at their `start` state."""
    return end.replace(members=keep_where(start.training, end.members, start.members))


def active_steps(active: int | None, length: int) -> np.int32:
    """The steps of a chunk of `length` to train (`active`, default all) as the chunk programs'
    traced count: one program serves every count."""
    active = length if active is None else int(active)
    if not 1 <= active <= length:
        raise ValueError(f"active has value {active}; allowed: 1..{length} (the chunk's length)")
    if active < length and not traced_loop_bound():
        raise ValueError(f"active has value {active}; allowed on {jax.default_backend()}: {length} (the chunk's "
                         "length: its loop has a fixed trip count here, see `traced_loop_bound`)")
    return np.int32(active)
