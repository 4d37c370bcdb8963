"""Orbax checkpoints of a state pytree plus a small JSON record of the loop's own state, checksummed.

Every save stores, in its record, a SHA-256 of the state's array bytes. A restore recomputes it: a
checkpoint whose bytes changed (a flipped bit), or that orbax cannot read at all, is skipped with a
warning and the previous good one is used; if none is good, a `CheckpointError` names the folder.
orbax is imported where it is used: about 0.16 s that a run without a workdir never pays.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vhjax import faults

CHECKSUM_KEY = "__state_sha256__"


class CheckpointError(RuntimeError):
    """No checkpoint in a folder could be restored intact."""


def state_checksum(state: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree order (PRNG keys by their data)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@functools.cache
def _faultable_temporary_path() -> type:
    """Orbax's temporary checkpoint folder (renamed to its step when complete), with the
    `checkpoint.before_rename` fault point just before a step folder's rename (not its items')."""
    from orbax.checkpoint.path import atomicity

    class FaultableTemporaryPath(atomicity.AtomicRenameTemporaryPath):
        async def finalize(self) -> None:
            if self._final_path.name.isdigit():  # the step folder; its items are named `state`, `record`
                faults.point("checkpoint.before_rename")
            await super().finalize()

    return FaultableTemporaryPath


class Checkpointer:
    """Saves and restores (state, loop record) pairs under `directory`, keyed by step.

    Saving is synchronous: orbax writes into a temporary folder and renames it when complete, so a
    process killed mid-save leaves the previous checkpoint intact; orbax ignores the leftover
    temporary folder and replaces it when that step is saved again.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               temporary_path_class=_faultable_temporary_path())
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict) -> None:
        faults.point("checkpoint.save")
        record = {**record, CHECKSUM_KEY: state_checksum(state)}
        import orbax.checkpoint as ocp

        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()
        faults.point("checkpoint.saved")

    def _restore_step(self, step: int, template: Any) -> tuple[Any, dict]:
        import orbax.checkpoint as ocp

        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        state, record = restored["state"], dict(restored["record"])
        expected = record.pop(CHECKSUM_KEY, None)
        if expected is not None and state_checksum(state) != expected:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} fails its checksum (its bytes changed)")
        return state, record

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restore `step` (with the structure, shapes and dtypes of `template`), or, if it is damaged,
        the newest earlier intact checkpoint, with a warning."""
        steps = sorted((s for s in self._manager.all_steps() if s <= step), reverse=True)
        problems = []
        for candidate in steps:
            try:
                with _quiet_orbax():
                    state, record = self._restore_step(candidate, template)
            except Exception as error:  # damaged files: orbax raises many kinds
                problems.append(f"step {candidate}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                continue
            if problems:
                warnings.warn(f"checkpoint folder {self.directory}: skipped damaged checkpoint(s) "
                              f"({'; '.join(problems)}); resuming from step {candidate}", RuntimeWarning, stacklevel=2)
                for damaged in (s for s in steps if s > candidate):  # the rerun saves these steps again
                    self._manager.delete(damaged)
            return state, record
        raise CheckpointError(f"no intact checkpoint in {self.directory} ({'; '.join(problems) or 'none saved'}); "
                              "remove the folder to start the run again")

    def close(self) -> None:
        self._manager.close()


class _quiet_orbax:
    """Silence orbax's and asyncio's error logging while a damaged checkpoint is tried."""

    names = ("absl", "orbax", "asyncio", "jax._src.distributed")

    def __enter__(self):
        self.levels = {name: logging.getLogger(name).level for name in self.names}
        for name in self.names:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
