"""Metric writers the loop feeds next to `metrics.jsonl`: TensorBoard event files (no TensorFlow),
and optional Weights & Biases / MLflow writers behind extras.

A writer has three methods, all called by `run_loop`:

    start(size, hparams, resumed_from)   # once; hparams: one dict of hyperparameters per member
    write(step, split, values)           # after every chunk; values: name -> (P,) array or number
    close()

`TensorBoardWriter(logdir)` writes one TensorBoard run per member (`logdir/member_03/`, tags
`eval/accuracy`, `train/loss`, `hparams/learning_rate`, ...; a population of one writes into
`logdir` itself) and population-wide values (`train/member_steps_per_second`) into `logdir`. Each
member's run also holds an HParams session (its hyperparameters), so TensorBoard's HParams
dashboard lists every member with its hyperparameters and its last logged metrics. Runs on the same
logdir after a resume hide the events past the checkpoint (a SessionLog START at the resumed step),
as `metrics.jsonl` is cut back.

    tensorboard --logdir runs
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

# entries of the eval rows that describe members rather than measure them
SKIPPED = frozenset({"alive", "stopped", "diverged_step"})
_COUNTER = itertools.count()


def hparam_value(value: Any) -> Any:
    """A value the HParams dashboard can show: a number, a bool or a short string (None: leave out)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    try:
        text = json.dumps(value)
    except TypeError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


class _EventFile:
    """One TensorBoard event file written synchronously (no writer thread), flushed per chunk."""

    def __init__(self, directory: Path):
        from tensorboardX.proto.event_pb2 import Event

        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.{next(_COUNTER)}"
        self.path = directory / name
        self._pending: list[bytes] = []
        self.add(Event(wall_time=time.time(), step=0, file_version="brain.Event:2"))

    def add(self, event: Any) -> None:
        self._pending.append(event.SerializeToString())

    def add_summary(self, summary: Any, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self.add(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        if not self._pending:
            return
        import struct

        from tensorboardX.record_writer import masked_crc32c

        with self.path.open("ab") as handle:  # TFRecord framing: length, its CRC, data, its CRC
            for data in self._pending:
                header = struct.pack("Q", len(data))
                handle.write(header + struct.pack("I", masked_crc32c(header)) + data
                             + struct.pack("I", masked_crc32c(data)))
        self._pending = []


class TensorBoardWriter:
    """TensorBoard event files under `logdir`: a run per member, the HParams dashboard, see the module
    docstring. `names`: the member runs' names (default `member_00`, `member_01`, ...)."""

    def __init__(self, logdir: str | Path, names: Sequence[str] | None = None):
        try:
            import tensorboardX  # noqa: F401
        except ImportError as error:  # a core dependency; only a broken install lands here
            raise ImportError("the TensorBoard writer needs tensorboardX: pip install tensorboardX") from error
        self.logdir = Path(logdir)
        self.names = list(names) if names is not None else None
        self._root: _EventFile | None = None
        self._members: list[_EventFile] = []

    def start(self, size: int, hparams: Sequence[Mapping[str, Any]] = (), resumed_from: int | None = None) -> None:
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        names = self.names or ([] if size == 1 else [f"member_{i:02d}" for i in range(size)])
        if names and len(names) != size:
            raise ValueError(f"names has {len(names)} entries; allowed: one per member ({size})")
        self._root = _EventFile(self.logdir)
        self._members = [_EventFile(self.logdir / name) for name in names] or [self._root]
        for file in {id(f): f for f in [self._root, *self._members]}.values():
            if resumed_from is not None:  # TensorBoard hides the events past the checkpoint
                file.add(Event(wall_time=time.time(), step=resumed_from + 1,
                               session_log=SessionLog(status=SessionLog.START)))
        if resumed_from is None:
            for file, values in zip(self._members, hparams):
                self.write_hparams(file, values)
        self.flush()

    @staticmethod
    def write_hparams(file: _EventFile, values: Mapping[str, Any]) -> None:
        from tensorboardX.summary import hparams as hparams_summary

        shown = {k: v for k, v in ((k, hparam_value(v)) for k, v in values.items()) if v is not None}
        if shown:
            _, session_start, _ = hparams_summary(shown, {})
            file.add_summary(session_start, 0)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        from tensorboardX.summary import scalar

        size = len(self._members)
        for name, value in values.items():
            if name in SKIPPED:
                continue
            array = np.asarray(value)
            if array.dtype.kind not in "fiu":
                continue
            array = array.astype(np.float64)
            tag = f"{split}/{name}"
            if array.ndim == 0 or (array.shape == (1,) and size == 1 and self._members[0] is self._root):
                if not np.isnan(array).all():
                    self._root.add_summary(scalar(tag, float(array.reshape(-1)[0])), step)
            elif array.shape == (size,):
                for file, member_value in zip(self._members, array):
                    if not np.isnan(member_value):  # NaN: the member did not train this chunk
                        file.add_summary(scalar(tag, float(member_value)), step)

    def flush(self) -> None:
        for file in {id(f): f for f in [self._root, *self._members] if f is not None}.values():
            file.flush()

    def close(self) -> None:
        self.flush()


class WandbWriter:
    """Weights & Biases: one run, scalars `member_03/eval/accuracy` (extra `wandb`). `init` goes to
    `wandb.init` (project, name, mode='offline', ...)."""

    def __init__(self, **init: Any):
        try:
            import wandb
        except ImportError as error:
            raise ImportError("WandbWriter needs the wandb package: pip install 'vhjax[wandb]'") from error
        self._wandb, self._init, self._run, self._size = wandb, init, None, 1

    def start(self, size: int, hparams: Sequence[Mapping[str, Any]] = (), resumed_from: int | None = None) -> None:
        config = {f"member_{i:02d}": {k: hparam_value(v) for k, v in h.items()} for i, h in enumerate(hparams)}
        self._run, self._size = self._wandb.init(config=config, **self._init), size

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        self._run.log(flat_scalars(split, values, self._size), step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()


class MLflowWriter:
    """MLflow: one run, metrics `member_03/eval/accuracy` (extra `mlflow`). `tracking_uri`,
    `experiment` and `run_name` as MLflow takes them."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None):
        try:
            import mlflow
        except ImportError as error:
            raise ImportError("MLflowWriter needs the mlflow package: pip install 'vhjax[mlflow]'") from error
        self._mlflow, self._size = mlflow, 1
        self._options = (tracking_uri, experiment, run_name)

    def start(self, size: int, hparams: Sequence[Mapping[str, Any]] = (), resumed_from: int | None = None) -> None:
        tracking_uri, experiment, run_name = self._options
        if tracking_uri:
            self._mlflow.set_tracking_uri(tracking_uri)
        if experiment:
            self._mlflow.set_experiment(experiment)
        self._mlflow.start_run(run_name=run_name)
        self._size = size
        self._mlflow.log_params({f"member_{i:02d}.{k}": hparam_value(v) for i, h in enumerate(hparams)
                                 for k, v in h.items() if hparam_value(v) is not None})

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        self._mlflow.log_metrics(flat_scalars(split, values, self._size), step=step)

    def close(self) -> None:
        self._mlflow.end_run()


def flat_scalars(split: str, values: Mapping[str, Any], size: int) -> dict[str, float]:
    """{'member_03/eval/accuracy': value, 'train/member_steps_per_second': value} of one row."""
    out = {}
    for name, value in values.items():
        array = np.asarray(value)
        if name in SKIPPED or array.dtype.kind not in "fiu":
            continue
        array = array.astype(np.float64)
        if array.ndim == 0 or size == 1:
            out[f"{split}/{name}"] = float(array.reshape(-1)[0])
        elif array.shape == (size,):
            out.update({f"member_{i:02d}/{split}/{name}": float(v) for i, v in enumerate(array) if not np.isnan(v)})
    return out


class Writers:
    """Several writers as one."""

    def __init__(self, writers: Sequence[Any]):
        self.writers = list(writers)

    def __bool__(self) -> bool:  # no writers: the loop skips building their rows
        return bool(self.writers)

    def start(self, size: int, hparams: Sequence[Mapping[str, Any]] = (), resumed_from: int | None = None) -> None:
        for writer in self.writers:
            writer.start(size, hparams, resumed_from)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write(step, split, values)

    def flush(self) -> None:
        for writer in self.writers:
            getattr(writer, "flush", lambda: None)()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def resolve_writers(writers: Any, workdir: Path | None) -> Writers:
    """`writers` of `run_loop`: 'auto' (TensorBoard under workdir/tensorboard when there is a workdir),
    None (none), one writer, or a list (a TensorBoardWriter is added with a workdir unless one is given
    or the list contains 'no_tensorboard')."""
    from vhjax.train.metrics_log import is_main_process

    if writers is None or not is_main_process():  # in a multi-process run, process 0 writes
        return Writers([])
    if writers == "auto":
        writers = []
    items = list(writers) if isinstance(writers, (list, tuple)) else [writers]
    plain = [w for w in items if not isinstance(w, str)]
    if workdir is not None and "no_tensorboard" not in items and not any(isinstance(w, TensorBoardWriter) for w in plain):
        plain.insert(0, TensorBoardWriter(workdir / "tensorboard"))
    return Writers(plain)
