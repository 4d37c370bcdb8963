"""The one training loop: chunks of compiled steps, evaluation, hooks, checkpoints, resume.

    run_loop(population, runner, data, steps=..., eval_every=..., evaluate=..., hooks=[...])

Every chunk: the engine trains every member for `eval_every` steps (one compiled program), the
loop evaluates the population (`evaluate(population) -> {split: {metric: (P,)}}`), then each hook
sees a `Report` and may change the population (stop members, change their hyperparameters, copy
members). `fit`, `fit_population`, `fit_pbt` and `fit_kfold` are this loop plus hooks, so every
feature (resume, mesh, early stopping, plateau, best-model keeping, logging) works in each.

A hook is a small `(init, update)` pair in the spirit of optax's `GradientTransformation`:

    init(population) -> state
    update(state, population, report) -> (state, population)

Its state is a dict whose array entries are checkpointed with the population (orbax) and whose
`"record"` entry, if any, is JSON (lineage, history). With a workdir, the loop checkpoints the
population and every hook's state after each chunk (`checkpoint_every` chunks); running it again
on the same workdir resumes exactly, the metrics log cut back to the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vhjax import distributed, parallel, preemption
from vhjax.compilation_cache import compilations_text, count_compilations
from vhjax.population.state import PopulationState, training_mask
from vhjax.train.checkpoint import Checkpointer
from vhjax.train.metrics_log import MetricsLog, print_progress
from vhjax.train.progress import Progress
from vhjax.train.workdir import workdir_lock
from vhjax.train.writers import resolve_writers
from vhjax.validation import check_int


@dataclasses.dataclass
class Report:
    """What hooks see after a chunk. Arrays are per member, shape (P,)."""

    step: int
    total_steps: int
    length: int
    seconds: float
    train: dict[str, np.ndarray]  # the chunk's mean step metrics per member (NaN: did not train)
    eval: dict[str, dict[str, np.ndarray]]  # split -> metric -> values
    logs: dict[str, Any]  # extra values hooks add to the metrics log (e.g. learning_rate_scale)

    def metric(self, split: str, name: str) -> np.ndarray:
        """A monitored metric: `split` 'train' reads the chunk's step metrics, any other an evaluation."""
        table = self.train if split == "train" else self.eval.get(split)
        if table is None or name not in table:
            known = sorted({f"train/{k}" for k in self.train} | {f"{s}/{k}" for s, v in self.eval.items() for k in v})
            raise ValueError(f"monitored metric {split}/{name} was not computed; computed: {', '.join(known)}")
        return np.asarray(table[name])


class Hook(NamedTuple):
    """`init(population) -> state`; `update(state, population, report) -> (state, population)`."""

    name: str
    init: Callable[[PopulationState], dict]
    update: Callable[[dict, PopulationState, Report], tuple[dict, PopulationState]]


@dataclasses.dataclass
class LoopResult:
    """The population at the end, each hook's final state, the log and the per-step metrics."""

    population: PopulationState
    hook_states: dict[str, dict]
    history: list[dict]
    step_metrics: dict[str, np.ndarray]  # name -> (steps trained in this call, P)
    resumed_from: int | None
    batch_rows: int | None = None  # per-host batches: the batch rows this process gathered (`on_mesh`)
    cut_at: int | None = None  # the step a `stop` ended the loop at (None: it ran to its end)


def chunk_lengths(start: int, total: int, every: int) -> list[int]:
    """Chunk lengths from `start` to `total` with boundaries at multiples of `every`.

    Fixed boundaries mean a resumed run executes the same compiled chunks as an uninterrupted one.
    """
    lengths, step = [], start
    while step < total:
        length = min(every - step % every, total - step)
        lengths.append(length)
        step += length
    return lengths


def population_step(population: PopulationState) -> int:
    """The step the population has reached (the furthest member; stopped members lag behind)."""
    return int(np.max(np.asarray(population.members.step)))


def split_state(state: dict) -> tuple[dict, Any]:
    """(array part for orbax, JSON record) of a hook state."""
    return {k: v for k, v in state.items() if k != "record"}, state.get("record")


def summarize_chunk(metrics: dict) -> dict[str, np.ndarray]:
    """Per-member means over the chunk's steps (NaN where a member did not train)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of frozen members
        return {name: np.nanmean(np.asarray(values, np.float64), axis=0) if np.ndim(values) >= 2
                else np.asarray(values) for name, values in metrics.items()}


def progress_line(label: str, report: Report, population: PopulationState, compiled: Any = None) -> str:
    """One line per chunk: step, rate, train loss, the first evaluation metric, divergence, and the
    programs compiled since the loop started (`compiled`: a `count_compilations` record)."""
    alive = np.asarray(population.alive)
    stopped = np.asarray(population.stopped)
    parts = [f"{label}step {report.step}/{report.total_steps}",
             f"{population.size * report.length / max(report.seconds, 1e-9):9.0f} member-steps/s"]
    loss = report.train.get("loss")
    if loss is not None and np.isfinite(loss).any():
        parts.append(f"train loss {np.nanmedian(loss):.4f}" if loss.size > 1 else f"train loss {float(loss[0]):.4f}")
    for split, values in report.eval.items():
        for name, value in values.items():
            value = np.where(alive, value, np.nan)
            if not np.isfinite(value).any():
                continue
            parts.append(f"{split} {name} {float(value[0]):.4f}" if value.size == 1 else
                         f"{split} {name} best {np.nanmax(value):.4f} median {np.nanmedian(value):.4f}")
            break
    if population.size > 1:
        parts.append(f"diverged {int((~alive).sum())}" + (f" stopped {int((stopped & alive).sum())}" if stopped.any() else ""))
    elif not alive[0]:
        parts.append("diverged")
    if compiled is not None:
        parts.append(compilations_text(compiled))
    return " | ".join(parts)


def pad_members(population: PopulationState, multiple: int) -> PopulationState:
    """The population padded to a multiple of `multiple` members with inert copies of member 0
    (stopped: never trained; the runner's caller drops them again)."""
    extra = -population.size % multiple
    if not extra:
        return population
    pad = lambda leaf: jnp.concatenate([leaf, jnp.repeat(leaf[:1], extra, axis=0)])
    padded = jax.tree.map(pad, population)
    return padded.replace(stopped=padded.stopped.at[population.size:].set(True))


def padded_on_mesh(population: PopulationState, multiple: int, mesh: Any) -> PopulationState:
    """The population padded to a multiple of `multiple` members (`pad_members`) and sharded over
    the mesh's members axis. A population on the mesh's devices already (every chunk after the
    first) is padded in one program: leaf by leaf, a chunk's padding and cutting were dozens of
    small asynchronous programs with collectives, which on a 2-core host with 4 CPU devices filled
    a device's queue of in-flight computations (XLA's CPU client allows 32) while its 4 worker
    threads waited in a collective for that device: a deadlock (tests/test_distributed.py)."""
    if population.size % multiple == 0:
        return parallel.shard_members(population, mesh)  # no copy once the members are sharded so
    devices = set(mesh.devices.flat)
    if all(isinstance(leaf, jax.Array) and leaf.sharding.device_set == devices for leaf in jax.tree.leaves(population)):
        return _padding_program(multiple, NamedSharding(mesh, PartitionSpec(parallel.MEMBERS)))(population)
    return parallel.shard_members(pad_members(population, multiple), mesh)


@functools.cache
def _padding_program(multiple: int, sharding: NamedSharding) -> Callable:
    return jax.jit(functools.partial(pad_members, multiple=multiple), out_shardings=sharding)


def feeds_per_host(runner: Callable, mesh: Any) -> bool:
    """Whether each process gathers only its own rows of every batch (`vhjax.population.feed`): on a
    mesh that spans processes, with a runner whose batches are rows of the data."""
    from vhjax.population import feed

    return mesh is not None and parallel.spans_processes(mesh) and feed.can_feed(runner)


def on_mesh(runner: Callable, mesh: Any) -> Callable:
    """`runner` with the members sharded over the mesh's members axis; any population size works:
    it is padded with inert members for the chunk and cut back after (they are never reported).
    On a mesh that spans processes (`feeds_per_host`), `data` stays in host memory and each process
    gathers only its rows of each chunk's batches; `run.batch_rows` counts them (else None). Before
    each chunk the processes agree (`distributed.agree`): one that failed (`report_failure`) makes
    the others raise `PeerFailed` instead of waiting in the chunk's collectives."""
    from vhjax.population import feed

    multiple = mesh.shape[parallel.MEMBERS]
    fed = feeds_per_host(runner, mesh)

    def run(population: PopulationState, data: Any, length: int, active: int | None = None):
        if parallel.spans_processes(mesh):  # a process that failed would never join the chunk's collectives
            distributed.agree("training chunk")
        size = population.size
        padded = padded_on_mesh(population, multiple, mesh)
        if fed:
            end, metrics, rows = feed.run_fed(runner, padded, data, length, mesh)
            run.batch_rows += rows
        else:
            end, metrics = runner(padded, data, length, *(() if active is None else (active,)))
        # across processes every process reads, evaluates and checkpoints the whole population; padding
        # members are cut off in one program (see `padded_on_mesh`)
        if parallel.spans_processes(mesh) or padded.size != size:
            return parallel.gather_members(end, metrics, size, mesh)
        return end, metrics

    run.batch_rows = 0 if fed else None
    run.accepts_active_steps = accepts_active_steps(runner) and not fed  # per-host batches: each length its own
    return run


def accepts_active_steps(runner: Callable) -> bool:
    """Whether `runner(population, data, length, active)` trains the first `active` steps of a chunk
    of `length` in that length's program (`engine.PopulationRunner` and, unless its batches are
    gathered per host, `on_mesh` of one do)."""
    return bool(getattr(runner, "accepts_active_steps", False))


def run_chunk(runner: Callable, population: PopulationState, data: Any, length: int,
              full: int) -> tuple[PopulationState, dict[str, np.ndarray]]:
    """A chunk of `length` steps; one shorter than the loop's `full` chunks (a last chunk that
    `eval_every` does not divide, the first after a start between boundaries) runs in the full
    chunks' program when the runner can (`accepts_active_steps`), so a run compiles its training
    chunk once. Metrics come back on the host, one row per step trained."""
    if length < full and accepts_active_steps(runner):
        population, metrics = runner(population, data, full, length)
    else:
        population, metrics = runner(population, data, length)
    return population, {k: np.asarray(v)[:length] for k, v in metrics.items()}


def run_loop(population: PopulationState, runner: Callable, data: Any, *, steps: int, eval_every: int,
             evaluate: Callable[[PopulationState], dict] | None = None, hooks: Sequence[Hook] = (),
             workdir: str | Path | None = None, checkpoint_every: int = 1, mesh: Any = None,
             label: str = "", verbose: bool = True, log: MetricsLog | None = None, writers: Any = "auto",
             hparams: Sequence[dict] | None = None, stop: Callable[[], bool] | None = None) -> LoopResult:
    """Train `population` to `steps` with `runner` (an engine chunk runner) on `data`; see the module
    docstring. Returns when every member reached `steps`, or stopped, or diverged.
    `stop() -> bool` (e.g. a deadline) is asked after each chunk's hooks; once true the loop ends
    after that chunk, checkpointed as it is (no member marked stopped), and `cut_at` in the result
    is its step: running the loop again on the workdir continues it to `steps` exactly as an uncut
    run. It is not a hook: it keeps no state, so a run resumes whether or not the rerun passes one
    (`stop_requested`).

    `writers` get every row of the metrics log (`vhjax.train.writers`): 'auto' writes TensorBoard
    event files under `workdir/tensorboard` when there is a workdir; None writes none. `hparams`:
    per member, values shown in the HParams dashboard besides its per-member hyperparameters.
    `verbose`: a progress bar (stderr a terminal) or a line per chunk with the ETA."""
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    names = [hook.name for hook in hooks]
    if len(set(names)) != len(names):
        raise ValueError(f"hooks have value {names!r}; allowed: distinct hook names")
    workdir = Path(workdir) if workdir is not None else None
    with workdir_lock(workdir), preemption.watch(enabled=workdir is not None), _reported(mesh):
        return _run_locked(population, runner, data, steps=steps, eval_every=eval_every, evaluate=evaluate,
                           hooks=hooks, workdir=workdir, checkpoint_every=checkpoint_every, mesh=mesh, label=label,
                           verbose=verbose, log=log, writers=writers, hparams=hparams, stop=stop)


def stop_requested(stop: Callable[[], bool] | None, mesh: Any) -> bool:
    """`stop()`, as process 0 answers it when the mesh spans processes (so all end the same chunk)."""
    if stop is None:
        return False
    if mesh is None or not parallel.spans_processes(mesh):
        return bool(stop())
    mine = (b"1" if stop() else b"0") if distributed.is_main_process() else None
    return distributed.broadcast_bytes(mine) == b"1"


@contextlib.contextmanager
def _reported(mesh: Any):
    """On a mesh that spans processes, an error of this process is reported to the others
    (`distributed.report_failure`), which raise `PeerFailed` before their next chunk."""
    try:
        yield
    except distributed.PeerFailed:  # another process's failure, reported already
        raise
    except Exception as error:
        if mesh is not None and parallel.spans_processes(mesh):
            distributed.report_failure(error)
        raise


def _run_locked(population: PopulationState, runner: Callable, data: Any, *, steps: int, eval_every: int,
                evaluate: Callable | None, hooks: Sequence[Hook], workdir: Path | None, checkpoint_every: int,
                mesh: Any, label: str, verbose: bool, log: MetricsLog | None, writers: Any = "auto",
                hparams: Sequence[dict] | None = None, stop: Callable[[], bool] | None = None) -> LoopResult:
    log = log or MetricsLog(workdir / "metrics.jsonl" if workdir else None)
    hook_states = {hook.name: hook.init(population) for hook in hooks}
    checkpointer = Checkpointer(workdir / "checkpoints") if workdir else None
    resumed_from = None
    if checkpointer is not None and checkpointer.latest_step() is not None:
        template = {"population": population, "hooks": {k: split_state(v)[0] for k, v in hook_states.items()}}
        restored, record = checkpointer.restore(checkpointer.latest_step(), template)
        population = restored["population"]
        hook_states = {k: {**restored["hooks"][k], **({"record": record["hooks"][k]} if record["hooks"].get(k) is not None
                                                       else {})} for k in hook_states}
        resumed_from = int(record["step"])
    log.truncate_after(resumed_from or 0)  # rows past the checkpoint (or of a run killed before one)
    writers = resolve_writers(writers, workdir)
    if writers:
        writers.start(population.size, member_hparams(population, hparams), resumed_from)
    if mesh is not None:  # per-host batches: the data stays in host memory, else a copy on every device
        data = jax.tree.map(np.asarray, data) if feeds_per_host(runner, mesh) else parallel.replicate(data, mesh)
        runner = on_mesh(runner, mesh)
    step = resumed_from if resumed_from is not None else population_step(population)
    progress = Progress(steps, step, label, verbose)
    if resumed_from is not None:
        progress.message(f"{label}resumed from {workdir} at step {resumed_from}")
    collected: list[dict] = []
    full = min(eval_every, steps)  # the length of a chunk program
    cut = False
    with count_compilations() as compiled:  # the progress lines name the programs compiled
        for chunk_number, length in enumerate(chunk_lengths(step, steps, eval_every)):
            if not bool(np.any(training_mask(population))):
                break
            tick = time.perf_counter()
            population, metrics = run_chunk(runner, population, data, length, full)
            evaluation = {split: {k: np.asarray(v) for k, v in values.items()}
                          for split, values in (evaluate(population) if evaluate else {}).items()}
            step += length
            collected.append(metrics)
            report = Report(step, steps, length, time.perf_counter() - tick, summarize_chunk(metrics), evaluation, {})
            for hook in hooks:
                hook_states[hook.name], population = hook.update(hook_states[hook.name], population, report)
            last = step >= steps or not bool(np.any(training_mask(population)))
            cut = not last and stop_requested(stop, mesh)
            write_logs(log, report, population, writers)
            preempted = checkpointer is not None and preemption.requested()
            if checkpointer is not None and ((chunk_number + 1) % checkpoint_every == 0 or last or cut or preempted):
                arrays = {k: split_state(v)[0] for k, v in hook_states.items()}
                records = {k: split_state(v)[1] for k, v in hook_states.items()}
                checkpointer.save(step, {"population": population, "hooks": arrays}, {"step": step, "hooks": records})
            progress.update(length, progress_line(label, report, population, compiled))
            if preempted:  # SIGTERM/SIGINT: the checkpoint is written, exit 0 (the rerun resumes)
                progress.close()
                writers.close()
                checkpointer.close()
                print_progress(f"{label}{preemption.message(step, steps, workdir)}")
                raise preemption.Preempted(preemption.message(step, steps, workdir))
            if cut:
                progress.message(f"{label}stopped at step {step} of {steps} (a stop was requested)"
                                 + ("; running again on the workdir continues" if workdir else ""))
                break
    progress.close()
    writers.close()
    if checkpointer is not None:
        checkpointer.close()
    step_metrics = {k: np.concatenate([m[k] for m in collected]) for k in (collected[0] if collected else {})}
    return LoopResult(population, hook_states, log.read(), step_metrics, resumed_from,
                      getattr(runner, "batch_rows", None), step if cut else None)


def member_hparams(population: PopulationState, extra: Sequence[dict] | None = None) -> list[dict]:
    """Per member: its scalar per-member hyperparameters (learning rate, ...; in a population those
    that differ between members) and `extra`'s entries."""
    from vhjax.population.exploit import get_member_hparams

    try:
        values = {k: np.asarray(v) for k, v in get_member_hparams(population).items()}
    except ValueError:  # a member step of one's own, with no injectable optimizer hyperparameters
        values = {}
    scalars = {k: v for k, v in values.items() if v.shape == (population.size,)
               and (population.size == 1 or np.unique(v).size > 1)}
    rows = [{k: v[i].item() for k, v in scalars.items()} for i in range(population.size)]
    if extra is not None:
        rows = [{**row, **dict(more)} for row, more in zip(rows, extra)]
    return rows


def write_logs(log: MetricsLog, report: Report, population: PopulationState, writers: Any = None) -> None:
    """A 'train' row (chunk means, rate, hook logs) and one row per evaluated split. Values are per
    member lists, or plain numbers for a population of one (`fit`)."""
    single = population.size == 1
    value = lambda v: (np.asarray(v).reshape(-1)[0] if np.size(v) == 1 else v) if single else v
    rate = population.size * report.length / max(report.seconds, 1e-9)
    train = {**{k: value(v) for k, v in report.train.items()}, **{k: value(v) for k, v in report.logs.items()},
             "member_steps_per_second": rate}
    log.write(report.step, "train", train)
    for split, values in report.eval.items():
        extra = {} if single else {"alive": np.asarray(population.alive),
                                   "diverged_step": np.asarray(population.diverged_step),
                                   "stopped": np.asarray(population.stopped)}
        log.write(report.step, split, {**{k: value(v) for k, v in values.items()}, **extra})
    if writers:
        writers.write(report.step, "train", {**report.train, **report.logs, "member_steps_per_second": rate})
        for split, values in report.eval.items():
            writers.write(report.step, split, values)
        from vhjax.population.exploit import get_member_hparams

        # per member: the learning rate and the hyperparameters that differ between members (PBT changes them)
        hparams = {k: np.asarray(v) for k, v in get_member_hparams(population).items()}
        shown = {k: v for k, v in hparams.items() if v.shape == (population.size,)
                 and (k == "learning_rate" or np.unique(v).size > 1)}
        writers.write(report.step, "hparams", shown)
        writers.flush()
