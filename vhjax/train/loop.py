"""`fit`: chunks of scanned train steps, evaluation, early stopping, checkpoints, resuming."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vhjax.config import TrainConfig
from vhjax.train import controls
from vhjax.train.checkpoint import Checkpointer
from vhjax.train.metrics_log import MetricsLog, format_progress, print_progress
from vhjax.train.state import TrainState
from vhjax.train.step import chunk_batch_indices, init_state, make_eval_fn, make_train_step
from vhjax.train.task import Task, build_task


@dataclasses.dataclass
class FitResult:
    """The end of a run: final state, metrics on each split, and the logged history."""

    state: TrainState
    metrics: dict[str, dict[str, float]]
    history: list[dict]
    stopped_early: bool
    best_step: int | None


def make_chunk_runner(train_step: Callable, batch_indices: Callable) -> Callable:
    """`run(state, data, length)`: `length` train steps under one `lax.scan`, state donated.

    `batch_indices(state, length)` gives the (length, ...) example indices of the chunk's steps;
    each step gathers its batch from the device-resident `data` = (x, y).
    """

    def run(state, data, length: int):
        x_all, y_all = data
        step = lambda carry, index: train_step(carry, (x_all[index], y_all[index]))
        return lax.scan(step, state, batch_indices(state, length))

    return jax.jit(run, static_argnums=2, donate_argnums=0)


def member_batch_indices(task: Task) -> Callable:
    """The chunk's batch indices of one member, from its data key and step."""
    config, size = task.config, len(task.train)
    return lambda state, length: chunk_batch_indices(state.data_key, state.step, length, size,
                                                     config.batch_size, config.shuffle)


def first_non_finite(losses: np.ndarray) -> int | None:
    """Index of the first non-finite loss, or None."""
    bad = ~np.isfinite(losses)
    return int(np.argmax(bad)) if bad.any() else None


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


class EarlyStopping:
    """Patience on a monitored evaluation metric; its record is JSON for the checkpoint."""

    def __init__(self, monitor: str, mode: str, patience: int | None, record: dict | None = None):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        record = record or {}
        self.best_value = record.get("best_value")
        self.best_step = record.get("best_step")
        self.bad_evaluations = record.get("bad_evaluations", 0)

    def update(self, step: int, value: float) -> bool:
        """Record an evaluation; True if it is the best so far."""
        better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_step, self.bad_evaluations = value, step, 0
        else:
            self.bad_evaluations += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience

    def record(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "bad_evaluations": self.bad_evaluations}


def copy_tree(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def checkpoint_tree(state: TrainState, best_params: Any | None) -> dict:
    """What a checkpoint holds: the state, and the best parameters when early stopping keeps them."""
    return {"state": state} if best_params is None else {"state": state, "best_params": best_params}


def prepare_workdir(workdir: str | Path | None, config: TrainConfig) -> Path | None:
    """Create the workdir; refuse to resume one that was made with a different config."""
    if workdir is None:
        return None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    current = config.to_dict()
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            raise ValueError(
                f"workdir {str(workdir)!r} holds a run with a different config (fields {', '.join(changed)}); "
                "use a new workdir or the same config to resume")
    else:
        config_path.write_text(json.dumps(current, indent=2))
    return workdir


def save_preprocessing(workdir: Path | None, task: Task) -> None:
    """Store the fitted preprocessors with the run (`workdir/preprocess_<i>.json`)."""
    if workdir is None:
        return
    from vhjax import preprocess

    for index, fitted in enumerate(task.preprocessing):
        (workdir / f"preprocess_{index}.json").write_text(preprocess.to_json(fitted))


def fit(config: TrainConfig, workdir: str | Path | None = None, *, verbose: bool = True) -> FitResult:
    """Train one model as `config` says; resume from `workdir` if it holds a checkpoint."""
    return fit_task(build_task(config), workdir, verbose=verbose)


def fit_task(task: Task, workdir: str | Path | None = None, *, verbose: bool = True) -> FitResult:
    config = task.config
    workdir = prepare_workdir(workdir, config)
    log = MetricsLog(workdir / "metrics.jsonl" if workdir else None)
    checkpointer = Checkpointer(workdir / "checkpoints") if workdir else None
    state = init_state(task, jax.random.key(config.seed))
    stopper = EarlyStopping(config.monitor, config.monitor_mode, config.patience)
    best_params = copy_tree(state.params) if config.patience else None
    plateau = (controls.reduce_on_plateau(mode=config.monitor_mode, factor=config.plateau_factor,
                                          patience=config.plateau_patience) if config.plateau_patience else None)
    plateau_state = plateau.init() if plateau else None
    if checkpointer is not None and checkpointer.latest_step() is not None:
        restored, record = checkpointer.restore(checkpointer.latest_step(), checkpoint_tree(state, best_params))
        state, best_params = restored["state"], restored.get("best_params")
        stopper = EarlyStopping(config.monitor, config.monitor_mode, config.patience, record)
        if plateau and record.get("plateau"):
            plateau_state = controls.restore_plateau(plateau, record["plateau"])
        log.truncate_after(int(state.step))
        if verbose:
            print_progress(f"resumed from {workdir} at step {int(state.step)}")

    save_preprocessing(workdir, task)
    train_data = (jnp.asarray(task.train.x), jnp.asarray(task.train.y))
    eval_data = (jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    run_chunk = make_chunk_runner(make_train_step(task), member_batch_indices(task))
    evaluate = jax.jit(make_eval_fn(task))

    start = int(state.step)
    stopped_early = stopper.should_stop
    for length in ([] if stopped_early else chunk_lengths(start, config.steps, config.eval_every)):
        chunk_start, tick = int(state.step), time.perf_counter()
        state, chunk_metrics = run_chunk(state, train_data, length)
        losses = np.asarray(chunk_metrics["loss"])
        bad = first_non_finite(losses)
        if bad is not None:
            raise FloatingPointError(
                f"non-finite training loss {losses[bad]} at step {chunk_start + bad + 1} "
                f"(model {config.model!r}, learning_rate {config.learning_rate}); lower the learning rate "
                "or add gradient clipping (clip_norm)")
        steps_per_second = length / (time.perf_counter() - tick)
        step = int(state.step)
        train_summary = {name: float(np.mean(values)) for name, values in chunk_metrics.items()}
        eval_summary = {k: float(v) for k, v in evaluate(state, *eval_data).items()}
        if plateau is not None:  # reduce the learning rate on a plateau of the monitored metric
            plateau_state = plateau.update(plateau_state, eval_summary[config.monitor])
            state = state.replace(opt_state=controls.scaled_learning_rate(
                state.opt_state, config.learning_rate, plateau_state.scale))
            train_summary["learning_rate_scale"] = float(plateau_state.scale)
        log.write(step, "train", {**train_summary, "steps_per_second": steps_per_second})
        log.write(step, "eval", eval_summary)
        if stopper.update(step, eval_summary[config.monitor]) and best_params is not None:
            best_params = copy_tree(state.params)  # the state's buffers are donated to the next chunk
        if checkpointer is not None:
            record = stopper.record()
            if plateau_state is not None:
                record["plateau"] = [float(v) for v in plateau_state]
            checkpointer.save(step, checkpoint_tree(state, best_params), record)
        if verbose:
            print_progress(format_progress(step, config.steps, steps_per_second, train_summary, eval_summary))
        if stopper.should_stop:
            stopped_early = True
            if verbose:
                print_progress(f"early stopping at step {step}: no {config.monitor} improvement in "
                               f"{config.patience} evaluations (best {stopper.best_value:.4f} at step {stopper.best_step})")
            break

    final_state = state if best_params is None else state.replace(params=best_params)
    final = {"eval": evaluate(final_state, *eval_data)}
    if task.test is not None:
        final["test"] = evaluate(final_state, jnp.asarray(task.test.x), jnp.asarray(task.test.y))
    final = {split: {k: float(v) for k, v in values.items()} for split, values in final.items()}
    result = FitResult(state, final, log.read(), stopped_early, stopper.best_step)
    if workdir is not None:
        (workdir / "result.json").write_text(json.dumps(
            {"metrics": final, "steps": int(state.step), "stopped_early": stopped_early,
             "best_step": stopper.best_step}, indent=2))
    if checkpointer is not None:
        checkpointer.close()
    return result
