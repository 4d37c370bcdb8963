"""Members: building a population's stacked members, and the member steps that train them.

Two producers of members and member steps:
- the built-in classifier, from a `Task` (`init_population`, `classifier_runner`,
  `population_batch_indices`, `make_population_eval`);
- any model with any loss, from two functions written for ONE member (`init_members`,
  `make_loss_step`): `init_fn(key) -> params` and
  `loss_fn(params, batch, key, hparams) -> loss` (or `(loss, metrics)`); every optimizer
  hyperparameter and every entry of `hparams` (a KL weight, a dropout rate) is a per-member array.
Both give a `PopulationState` whose members are `TrainState`s, trained by the one engine
(`engine.PopulationRunner`) and the one loop (`loop.run_loop`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax import optim, parallel
from vhjax.compile_options import light_jit, training_options
from vhjax.memo import Memo
from vhjax.models.utils import abstract_variables
from vhjax.population.engine import (BatchIndices, Gather, MemberStep, PopulationRunner, default_member_group,
                                     gather_batch)
from vhjax.population.hparams import (check_hparam_names, check_not_static_zero, check_private_members,
                                     known_hparams, member_arrays, per_member_values)
from vhjax.population.state import PopulationState, new_population
from vhjax.train import poisson
from vhjax.train.state import TrainState
from vhjax.train.step import chunk_batch_indices, init_state, make_eval_fn, make_train_step
from vhjax.train.task import Task
from vhjax.validation import check_int

DATA_KEY_TAG = 0x5EED


def member_seeds(base_seed: int, size: int, seeds: Sequence[int] | None = None) -> np.ndarray:
    """Each member's seed: `seeds` if given, else base_seed + i for member i (so member i of a
    population is the model `fit(seed=base_seed + i)` trains)."""
    if seeds is None:
        return np.arange(size, dtype=np.int64) + int(base_seed)
    seeds = np.asarray(seeds)
    if seeds.shape != (size,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seeds {seeds.tolist()!r}; allowed: {size} integers, one per member")
    return seeds


def member_keys(seeds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(init keys, own data keys) of members with these seeds: member i's init key is `key(seed_i)`,
    exactly as `fit(seed=seed_i)` initialises."""
    keys = jax.vmap(jax.random.key)(seeds)
    return keys, jax.vmap(lambda k: jax.random.fold_in(k, DATA_KEY_TAG))(keys)


def init_population(task: Task, size: int, hparams: Mapping[str, Any] | None = None, *,
                    seeds: Sequence[int] | None = None, same_batches: bool = True,
                    data_seed: int | None = None) -> PopulationState:
    """P members of the task's classifier with their own seeds, keys and hyperparameters.

    `hparams` maps a hyperparameter name (state or optimizer) to P values or one shared value.
    `seeds`: one per member (default: data_seed + i). With `same_batches`, every member sees the
    batches of `data_seed`'s data order at every step (a fair comparison); otherwise member i has
    its own data order, that of `fit(seed=seeds[i])`. `data_seed` defaults to the task config's
    seed; callers that reuse one task across seeds (`bucket_task` ignores the seed) pass theirs. Everything is checked first, then one jitted
    program (compiled once per task and population size) builds the whole population.
    """
    check_int("population size", size, 1)
    data_seed = task.config.seed if data_seed is None else data_seed
    seeds = member_seeds(data_seed, size, seeds)
    check_member_archs(task, size, (hparams or {}).get("arch"))
    if (hparams or {}).get("update_scale") is not None:
        hparams = {**hparams, "update_scale": member_update_scale(task, size, hparams["update_scale"])}
    if (hparams or {}).get("update_start") is not None:
        hparams = {**hparams, "update_start": member_update_start(task, size, hparams["update_start"])}
    init_program, optimizer_defaults = _init_programs(task)
    state_hparams, optimizer_hparams = member_arrays(size, hparams or {}, task.default_hparams, optimizer_defaults)
    check_not_static_zero(task.static_zero, state_hparams)
    check_private_members(state_hparams)
    return init_program(np.asarray(seeds, np.uint32), np.uint32(data_seed), state_hparams, optimizer_hparams,
                        same_batches)


_INIT_PROGRAMS: Memo[tuple[Callable, dict]] = Memo(8)

# The init program runs once per search but is large (a threefry draw and a truncated normal per
# parameter tensor: ~2,000 HLO lines for the MNIST-1D CNN); XLA's CPU backend spent 3.5-4.7 s
# optimising it, more than it then saved (0.35 s unoptimised; it runs in 6 ms instead of 1 ms):
# a light program run once (`vhjax.compile_options`). Every population, fit() and search
# initialises through this one program, so members stay equal across entry points and population
# sizes.


def check_task_hparams(task: Task, names: Sequence[str]) -> None:
    """Refuse per-member hyperparameter names `task` does not have, as `init_population` would, but
    before a caller stores or prints anything (a search checks its space's names here first)."""
    check_hparam_names(names, known_hparams(task.default_hparams, _init_programs(task)[1]))


def _init_programs(task: Task) -> tuple[Callable, dict]:
    """(the jitted program that initialises a whole population, the optimizer's default
    hyperparameters), built once per task: not ~100 small operations run one by one."""
    return _INIT_PROGRAMS.get((task,), lambda: _build_init_programs(task))


def _build_init_programs(task: Task) -> tuple[Callable, dict]:
    def init(seeds, data_seed, state_hparams, optimizer_hparams, same_batches):
        keys, own_data_keys = member_keys(seeds)
        if same_batches:
            data_keys = jnp.broadcast_to(member_keys(data_seed[None])[1][0], seeds.shape)
        else:
            data_keys = own_data_keys
        members = jax.vmap(lambda k, dk: init_state(task, k, data_key=dk))(keys, data_keys)
        members = members.replace(hparams=state_hparams,
                                  opt_state=optim.set_hyperparams(members.opt_state, **optimizer_hparams))
        return new_population(members, same_batches=same_batches, static_zero=task.static_zero)

    params = jax.eval_shape(lambda: init_state(task, jax.random.key(0)).params)
    defaults = jax.jit(lambda: optim.get_hyperparams(task.optimizer.init(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params))))()
    defaults = {name: np.asarray(value) for name, value in defaults.items()}
    return light_jit(init, run_once=True, static_argnums=4), defaults


def check_member_archs(task: Task, size: int, arch: Any) -> None:
    """Each member's `arch` must fit the model's maximum shape (checked before compiling)."""
    if arch is None:
        return
    if not hasattr(task.model, "check_arch"):
        raise ValueError(f"model {task.config.model!r} has no searchable architecture; members cannot "
                         "set 'arch' (use a searchable model such as 'masked_mlp')")
    for member in range(size):
        task.model.check_arch(jax.tree.map(lambda leaf: np.asarray(leaf)[member], arch), member=member)


def parameter_tensors(task: Task) -> list[str]:
    """The model's parameter paths ('hidden_0/kernel', ...) in `jax.tree.leaves` order: the order of
    the entries of a member's `update_scale`."""
    params = abstract_variables(task.model, (2, *task.train.x.shape[1:]))["params"]
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


STEP_LIMIT = 2**31 - 1  # the member's step counter is int32


def whole_steps(row: Any, count: int) -> np.ndarray | None:
    """`row` as `count` int32 steps, or None unless it is `count` whole numbers in [0, STEP_LIMIT]."""
    try:
        numbers = np.asarray(row)
        values = numbers.astype(np.float64)
    except (TypeError, ValueError):
        return None
    if numbers.dtype == bool or values.shape != (count,):
        return None
    ok = np.isfinite(values) & (values >= 0) & (values <= STEP_LIMIT) & (values == np.round(values))
    return values.astype(np.int32) if ok.all() else None


def _shown(row: Any) -> Any:
    return np.asarray(row).tolist() if isinstance(row, np.ndarray) else row


def per_tensor_rows(name: str, task: Task, size: int, values: Any, default: float, dtype: Any,
                    convert: Any, allowed: str, meaning: str) -> np.ndarray:
    """(size, T) rows of a per-member, per-parameter-tensor hyperparameter (T: `parameter_tensors`),
    a member given None gets `default` everywhere; `convert(row, T)` returns the checked row or None,
    which raises a ValueError naming the member, the value, `allowed` and the values' `meaning`."""
    tensors = parameter_tensors(task)
    rows = list(values) if isinstance(values, (list, tuple)) else list(np.atleast_1d(np.asarray(values)))
    if len(rows) != size:
        raise ValueError(f"hyperparameter {name!r} has {len(rows)} rows; allowed: {size} (one per member)")
    out = np.full((size, len(tensors)), default, dtype)
    for member, row in enumerate(rows):
        if row is None:
            continue
        checked = convert(row, len(tensors))
        if checked is None:
            raise ValueError(f"member {member}: hyperparameter {name!r} has value {_shown(row)!r}; allowed: "
                             f"{len(tensors)} {allowed}, one per parameter tensor {tensors} ({meaning})")
        out[member] = checked
    return out


def _nonnegative_floats(row: Any, count: int) -> np.ndarray | None:
    try:
        row = np.asarray(row, np.float32)
    except (TypeError, ValueError):
        return None
    return row if row.shape == (count,) and np.all(np.isfinite(row) & (row >= 0)) else None


def member_update_scale(task: Task, size: int, values: Any) -> np.ndarray:
    """(size, T) multipliers of each member's parameter updates, T = the model's parameter tensors
    (`parameter_tensors`); a member given None gets ones (every tensor trains). Checked here, before
    anything compiles: shape, finite and >= 0."""
    return per_tensor_rows("update_scale", task, size, values, 1.0, np.float32, _nonnegative_floats,
                           "finite numbers >= 0", "0 freezes it")


def member_update_start(task: Task, size: int, values: Any) -> np.ndarray:
    """(size, T) int32 steps from which each member's parameter tensors update (tensor t's update is
    multiplied by `step >= start`), T = the model's parameter tensors (`parameter_tensors`); a member
    given None gets zeros (every tensor updates from step 0). Checked here, before anything compiles:
    shape, and whole numbers in [0, 2**31 - 1]."""
    return per_tensor_rows("update_start", task, size, values, 0, np.int32, whole_steps,
                           f"whole numbers in [0, {STEP_LIMIT}]",
                           "the step from which the tensor updates; 0: from the start")


def population_batch_indices(task: Task) -> BatchIndices:
    """Batch indices of a chunk: (length, B) shared by all members, or (length, P, B) when each has its own.
    With Poisson batches (`dp_sampling='poisson'`) B is the padded size, padding rows N
    (`vhjax.train.poisson`)."""
    config, size = task.config, len(task.train)
    if poisson.uses_poisson(config):
        bound = poisson.padded_size(config, size)
        return batch_indices_from(lambda key, step, length: poisson.chunk_poisson_indices(
            key, step, length, size, config.batch_size, bound))
    return batch_indices_from(lambda key, step, length: chunk_batch_indices(
        key, step, length, size, config.batch_size, config.shuffle, config.drop_remainder))


def batch_indices_from(sample: Callable[[jax.Array, jax.Array, int], jax.Array]) -> BatchIndices:
    """The chunk's batch indices from `sample(data_key, first_step, length) -> (length, B)`: the first
    member's draw shared by all when the population has the same batches, else one per member
    (length, P, B)."""

    def indices(population: PopulationState, length: int) -> jax.Array:
        members = population.members
        if population.same_batches:
            # training members share the step count; the others ignore their batch
            return sample(members.data_key[0], jnp.max(members.step), length)
        return jnp.swapaxes(jax.vmap(lambda key, step: sample(key, step, length))(members.data_key, members.step),
                            0, 1)

    return indices


def classifier_runner(task: Task, member_group: int | None = None, batch_indices: BatchIndices | None = None,
                      isolation: str = "optimistic", place: Callable | None = None,
                      shards: int = 1, member_step: MemberStep | None = None,
                      gather: Gather = gather_batch) -> PopulationRunner:
    """The engine's chunk runner for the task's classifier step, or for `member_step` (another step
    that trains `task.model`: ensembles' adversarial step, distillation's loss, pretraining with a
    projection head, domain adaptation, ADDA, annealing over the weights), compiled with the model's
    options (`compile_options.training_options`, chosen here for all of them; see
    `engine.PopulationRunner`)."""
    if poisson.uses_poisson(task.config):  # the sample and each row's weight come from the Poisson gather
        if batch_indices is not None or gather is not gather_batch:
            raise ValueError("config field 'dp_sampling' has value 'poisson'; allowed: 'shuffle' for an entry point "
                             "that draws its own batches (bagging, boosting, k-fold, semi-supervised "
                             "distillation): Poisson batches are those of fit, fit_population, searches, "
                             "fit_from, fit_masked, distill and snapshot ensembles")
        gather = poisson.poisson_gather
    return PopulationRunner(member_step or make_train_step(task), batch_indices or population_batch_indices(task),
                            member_group=member_group, isolation=isolation, gather=gather, place=place,
                            shards=shards, compiler_options=training_options(task.model))


def mesh_layout(mesh: Any, size: int = 0, member_group: int | str | None = "auto") -> dict[str, Any]:
    """`classifier_runner`'s `member_group`, `shards` and `place` on `mesh` (None: one device): the
    members split over its members axis, each batch over its data axis; `member_group` 'auto': the
    default group for one device's share of a bucket of `size` members (`default_member_group`)."""
    shards = parallel.member_shards(mesh)
    place = parallel.batch_placement(mesh) if mesh is not None and mesh.shape[parallel.DATA] > 1 else None
    group = default_member_group(size, shards) if member_group == "auto" else member_group
    return {"member_group": group, "shards": shards, "place": place}


def make_population_eval(task: Task) -> Callable[[PopulationState, jax.Array, jax.Array], dict]:
    """`evaluate(population, x, y) -> metrics`, each of shape (P,)."""
    evaluate = jax.vmap(make_eval_fn(task), in_axes=(0, None, None))
    return lambda population, x, y: evaluate(population.members, x, y)


# ----------------------------------------------------------------------------- any model, any loss


def init_members(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation, key: jax.Array,
                 size: int, hparams: Mapping[str, Any] | None = None,
                 optimizer_hparams: Mapping[str, Any] | None = None, *,
                 init_keys: jax.Array | None = None) -> PopulationState:
    """`size` members initialised by `init_fn` with their own keys; `optimizer_hparams` (e.g.
    learning_rate) go into the optimizer state of an optimizer from `vhjax.optim.make_optimizer`.
    `init_keys`: the (size,) keys `init_fn` gets (e.g. one per member's seed, so a member's
    initialisation is its seed's), else keys split from `key`. Values are checked first; the
    initialisation is one jitted program (run op by op it took seconds for a small recurrent net)."""
    check_int("population size", size, 1)
    member_hparams = per_member_values(hparams or {}, size)
    rates = per_member_values(optimizer_hparams, size) if optimizer_hparams else {}
    init_key, member_key = jax.random.split(key)
    if init_keys is None:
        init_keys = jax.random.split(init_key, size)
    elif getattr(init_keys, "shape", None) != (size,) or not jax.dtypes.issubdtype(init_keys.dtype,
                                                                                  jax.dtypes.prng_key):
        raise ValueError(f"init_keys has shape {getattr(init_keys, 'shape', None)}; allowed: {size} typed keys "
                         f"(jax.random.key), one per member")

    def initial(init_keys: jax.Array) -> tuple[Any, Any]:
        params = jax.vmap(init_fn)(init_keys)
        return params, jax.vmap(optimizer.init)(params)

    if rates:
        known = optim.get_hyperparams(jax.eval_shape(initial, init_keys)[1])  # traced, not compiled
        unknown = sorted(set(rates) - set(known))
        if unknown:
            raise ValueError(f"unknown optimizer hyperparameter(s) {unknown}; known: {sorted(known)}")
    params, opt_state = light_jit(initial, run_once=True)(init_keys)
    if rates:
        opt_state = optim.set_hyperparams(opt_state, **rates)
    keys = jax.random.split(member_key, size)
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, DATA_KEY_TAG))(keys)
    members = TrainState(step=jnp.zeros(size, jnp.int32), params=params, model_state={}, opt_state=opt_state,
                         hparams=member_hparams, key=keys, data_key=data_keys)
    return new_population(members, same_batches=True)


def make_loss_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """The member step of `loss_fn(params, batch, key, hparams) -> loss | (loss, metrics)`:
    value_and_grad, one optimizer update; the key is folded with the member's step."""

    def member_step(member: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(member.key, member.step)
        (loss, metrics), grads = jax.value_and_grad(_with_metrics(loss_fn), has_aux=True)(
            member.params, batch, key, member.hparams)
        updates, opt_state = optimizer.update(grads, member.opt_state, member.params)
        params = optax.apply_updates(member.params, updates)
        return member.replace(step=member.step + 1, params=params, opt_state=opt_state), {"loss": loss, **metrics}

    return member_step


def _with_metrics(loss_fn: Callable) -> Callable:
    def wrapped(params, batch, key, hparams):
        out = loss_fn(params, batch, key, hparams)
        return out if isinstance(out, tuple) else (out, {})

    return wrapped


def stepwise_batches(first_step: int = 0) -> BatchIndices:
    """Batch indices for data given per step (a pytree with a leading step axis): step s takes row
    s - first_step."""
    return lambda population, length: jnp.max(population.members.step) - first_step + jnp.arange(length)


def per_step_batches(arrays: Sequence[np.ndarray], steps: int, batch_size: int, seed: int = 0) -> tuple:
    """`fit_members`' batches from examples: `steps * batch_size` draws in which every example
    comes equally often (up to one), shuffled once by `seed`; each array (N, ...) becomes
    (steps, batch_size, ...)."""
    size = len(arrays[0])
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(size), steps * batch_size))
    return tuple(jnp.asarray(np.asarray(a)[order].reshape(steps, batch_size, *np.shape(a)[1:])) for a in arrays)


def loss_runner(loss_fn: Callable, optimizer: optax.GradientTransformation, *, first_step: int = 0,
                member_group: int | None = None, isolation: str = "optimistic", shards: int = 1,
                place: Callable | None = None) -> PopulationRunner:
    """The engine's chunk runner for `make_loss_step(loss_fn, optimizer)` on per-step batches whose
    row 0 is step `first_step`; `shards` and `place` as `mesh_layout` gives them for a mesh."""
    return PopulationRunner(make_loss_step(loss_fn, optimizer), stepwise_batches(first_step),
                            member_group=member_group, isolation=isolation, shards=shards, place=place)


def fit_members(population: PopulationState, loss_fn: Callable, optimizer: optax.GradientTransformation,
                batches: Any, steps: int, *, mesh: Any = None, **loop_kwargs: Any) -> tuple[PopulationState, np.ndarray]:
    """Train members of any model on per-step `batches` (a pytree whose leaves have a leading axis
    of `steps`) with the one loop; returns the population and the (steps, P) losses (NaN where a
    member did not train, and for the steps a resumed run had trained before: `workdir` in
    `loop_kwargs`, see `resumable`). `mesh`: None (one device), 'auto' (the members over every local
    device when there are several; any population size, padded with inert members), a spec or a
    Mesh, as `fit_population`'s. `loop_kwargs` go to `loop.run_loop` (workdir, hooks, eval_every, ...)."""
    from vhjax.population.loop import run_loop  # the loop sits above the members

    check_int("steps", steps, 1)
    leading = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(batches)}
    if leading != {steps}:
        raise ValueError(f"batches have leading sizes {sorted(leading, key=str)}; allowed: a leading axis of length "
                         f"steps={steps} on every leaf")
    size = int(np.shape(population.members.step)[0])
    mesh = parallel.resolve_mesh(mesh, size)
    layout = mesh_layout(mesh, size, member_group=None)
    start = int(np.max(np.asarray(population.members.step)))
    runner = loss_runner(loss_fn, optimizer, first_step=start, isolation=loop_kwargs.pop("isolation", "optimistic"),
                         **layout)
    loop_kwargs = {"eval_every": steps, "verbose": False, **loop_kwargs}
    outcome = run_loop(population, runner, batches, steps=start + steps, mesh=mesh, **loop_kwargs)
    losses = np.full((steps, np.shape(population.members.step)[0]), np.nan, np.float32)
    trained = outcome.step_metrics.get("loss")  # the steps trained in this call: after a resume, the last ones
    if trained is not None and len(trained):
        losses[steps - len(trained):] = trained
    return outcome.population, losses


def resumable(workdir: Any, name: str, inputs: Mapping[str, Any], steps: int,
              checkpoint_every: int | None = None) -> dict[str, Any]:
    """`fit_members`' loop arguments for a run that checkpoints in `workdir` (None: {}, nothing saved):
    the inputs recorded in `workdir/<name>.json` (a rerun with other inputs is refused), a checkpoint
    every `checkpoint_every` steps (default a tenth of `steps`); a rerun resumes from the last one and a
    finished run is restored, not retrained."""
    if workdir is None:
        return {}
    from vhjax.train.workdir import record_inputs

    every = check_int("checkpoint_every", checkpoint_every if checkpoint_every is not None else max(1, steps // 10),
                      1, steps)
    record_inputs(workdir, name, dict(inputs))
    return {"workdir": workdir, "eval_every": every}


__all__ = ["fit_members", "check_member_archs", "classifier_runner", "default_member_group", "init_members", "init_population",
           "loss_runner", "make_loss_step", "make_population_eval", "member_seeds", "per_step_batches",
           "population_batch_indices", "batch_indices_from", "resumable", "stepwise_batches"]
