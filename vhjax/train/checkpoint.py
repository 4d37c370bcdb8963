"""Orbax checkpoints of a state pytree plus a small JSON record of the loop's own state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, loop record) pairs under `directory`, keyed by step.

    Saving is synchronous: orbax writes into a temporary folder and renames it when complete, so a
    process killed mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restore the state at `step` with the structure, shapes and dtypes of `template`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["record"])

    def close(self) -> None:
        self._manager.close()
