"""The workdir of a run: its config (refused if changed), fitted preprocessors."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from vhjax import diffs
from vhjax.atomic_files import write_text_atomically
from vhjax.config import TrainConfig

EXTENSIBLE_FIELDS = ("steps",)  # may be raised on an existing workdir: the run is extended
FREE_FIELDS = ("checkpoint_every",)  # may change on an existing workdir: how often a run saves, not what it computes


def prepare_workdir(workdir: str | Path | None, config: TrainConfig) -> Path | None:
    """Create the workdir; refuse to resume one that was made with a different config.

    Raising `steps` is allowed: the finished (or interrupted) run is extended from its last checkpoint.
    `checkpoint_every` may change (it sets how often the run saves, not what it computes).
    """
    if workdir is None:
        return None
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir has value {str(workdir)!r}, which is a file; allowed: a directory (new or existing)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    current = config.to_dict()
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        changed = diffs.differences(saved, current)
        allowed = {field for (field, *_), _, _ in changed
                   if field in FREE_FIELDS or (field in EXTENSIBLE_FIELDS and current[field] >= saved.get(field, 0))}
        refused = [(at, old, new) for at, old, new in changed if at[0] not in allowed]
        if refused:
            raise ValueError(
                f"workdir {str(workdir)!r} holds a run with a different config ({diffs.describe(refused)}); "
                "use a new workdir or the same config to resume (only 'steps' may be raised, to extend the run, "
                "and 'checkpoint_every' changed)")
        if allowed:  # the stored config is the one the run goes on with
            write_text_atomically(config_path, json.dumps(current, indent=2))
    else:
        write_text_atomically(config_path, json.dumps(current, indent=2))
    return workdir


def save_preprocessing(workdir: Path | None, task: Any) -> None:
    """Store the fitted preprocessors with the run (`workdir/preprocess_<i>.json`)."""
    if workdir is None:
        return
    from vhjax import preprocess

    for index, fitted in enumerate(task.preprocessing):
        write_text_atomically(workdir / f"preprocess_{index}.json", preprocess.to_json(fitted))


class WorkdirInUse(RuntimeError):
    """Another process is training in the same workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: Path | None) -> Iterator[None]:
    """Hold `workdir/.lock` (an exclusive, non-blocking flock) while a run writes there: a second
    process on the same workdir fails at once, naming the holder. The OS drops the lock when the
    holder dies (kill -9 included), so a crashed run never blocks its own resume."""
    if workdir is None:
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    import jax

    # the processes of one multi-process JAX run share the workdir: one lock each
    path = workdir / (".lock" if jax.process_index() == 0 else f".lock.{jax.process_index()}")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise WorkdirInUse(f"workdir {str(workdir)!r} is in use by another process (pid {holder}); wait for it to "
                           "finish or use another workdir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def content_digest(tree: Any) -> str:
    """A short digest of a pytree's structure and of every leaf's dtype, shape and contents (e.g. a
    teacher's variables or a source model's parameters in a workdir's fingerprint)."""
    import hashlib

    import jax
    import numpy as np

    leaves, treedef = jax.tree.flatten(tree)
    digest = hashlib.blake2b(str(treedef).encode(), digest_size=8)
    for leaf in leaves:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def record_inputs(workdir: str | Path | None, name: str, inputs: Any) -> None:
    """Write `workdir/<name>.json`, a JSON description of inputs that `config.json` and `members.json`
    do not hold (arrays by dtype, shape and a content digest); refuse a workdir whose file differs."""
    if workdir is None:
        return
    from vhjax.config import _describe

    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir has value {str(workdir)!r}, which is a file; allowed: a directory (new or existing)")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.json"
    text = json.dumps(inputs, default=_describe, sort_keys=True, indent=1)
    if path.exists():
        saved = json.loads(path.read_text())
        current = json.loads(text)
        changed = diffs.differences(saved, current)
        if changed:
            raise ValueError(f"workdir {str(workdir)!r} holds a run with other {name} inputs "
                             f"({diffs.describe(changed)}); use a new workdir or the same inputs to resume")
        return
    write_text_atomically(path, text)
