"""Each finished trial's member state, kept so that a child trial continues from it.

A multi-fidelity promotion (successive halving, Hyperband, ASHA) or a PBT child names a parent
trial. `TrainingObjective` saves every trained member's state here under its trial id: its step,
parameters, model state (batch statistics), optimizer state and PRNG keys, plus the static part
of its config. A child whose static config equals its parent's starts from that state and trains
only the steps from the parent's step to its own budget; its own per-member hyperparameters
replace the parent's (PBT's explore). Because a member's batches and dropout are pure functions of
(its keys, step), continuing is the same computation as training the parent's run on to the new
budget.

With a directory, states are `.npz` files written atomically (`trial_000042.npz`), so a resumed
search still finds them; without one, the most recent `capacity` states are kept in memory.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.atomic_files import replace_atomically

CARRIED_FIELDS = ("step", "params", "model_state", "opt_state", "key", "data_key")
_UNSTATIC = ("seed", "steps", "eval_every")  # config fields that may differ between a parent and its child


def static_signature(bucket_config: Any) -> str:
    """The part of a member's bucket config that must equal its parent's for the state to carry over."""
    fields = {k: v for k, v in bucket_config.to_dict().items() if k not in _UNSTATIC}
    return json.dumps(fields, sort_keys=True, default=str)


def carried_state(members: Any, position: int) -> dict[str, Any]:
    """One member's carried fields (host arrays; PRNG keys as their raw data) from a stacked population."""
    take = lambda leaf: np.asarray(jax.random.key_data(leaf[position])
                                   if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf[position])
    return {name: jax.tree.map(take, getattr(members, name)) for name in CARRIED_FIELDS}


class TrialStates:
    """Trial id -> (signature, step, carried member state), on disk under `directory` or in memory."""

    def __init__(self, directory: str | Path | None = None, capacity: int = 256):
        self.directory = None if directory is None else Path(directory)
        self.capacity = capacity
        self._memory: OrderedDict[int, tuple[str, int, str, list]] = OrderedDict()

    def _path(self, trial_id: int) -> Path:
        return self.directory / f"trial_{trial_id:06d}.npz"

    def put(self, trial_id: int, signature: str, state: Mapping[str, Any]) -> None:
        """Keep one member's carried state (`carried_state`) under its trial id."""
        leaves, treedef = jax.tree.flatten(dict(state))
        step = int(np.asarray(state["step"]))
        if self.directory is None:
            self._memory[trial_id] = (signature, step, str(treedef), leaves)
            self._memory.move_to_end(trial_id)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)
            return
        replace_atomically(self._path(trial_id), lambda file: np.savez(
            file, __signature__=np.asarray(signature), __step__=np.asarray(step), __treedef__=np.asarray(str(treedef)),
            **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}), binary=True)

    def _get(self, trial_id: int) -> tuple[str, int, str, list] | None:
        if self.directory is None:
            return self._memory.get(trial_id)
        path = self._path(trial_id)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as saved:
            count = sum(name.startswith("leaf_") for name in saved.files)
            return (str(saved["__signature__"]), int(saved["__step__"]), str(saved["__treedef__"]),
                    [saved[f"leaf_{i}"] for i in range(count)])

    def step(self, trial_id: int, signature: str) -> int | None:
        """The parent's step when its state exists and was trained under `signature`, else None."""
        found = self._get(trial_id)
        return None if found is None or found[0] != signature else found[1]

    def restore(self, trial_id: int, template: Mapping[str, Any]) -> dict[str, Any]:
        """The carried state of `trial_id`, as the tree of `template` (one member's carried fields)."""
        found = self._get(trial_id)
        structure = jax.tree.structure(dict(template))
        if found is None or found[2] != str(structure):
            raise ValueError(f"trial {trial_id} has no saved state that fits the child's model")
        return jax.tree.unflatten(structure, found[3])


def continue_members(population: Any, parents: list[Mapping[str, Any]]) -> Any:
    """`population` whose member i carries `parents[i]` (step, weights, optimizer state, keys) and keeps
    its own hyperparameters: state ones and the optimizer's injected ones."""
    child = population.members

    def stack(name: str, template_leaf: Any, *leaves: Any) -> Any:
        stacked = jnp.stack([jnp.asarray(leaf) for leaf in leaves])
        if jax.dtypes.issubdtype(template_leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(stacked, impl=jax.random.key_impl(template_leaf))
        return stacked.astype(template_leaf.dtype)

    carried = {name: jax.tree.map(lambda t, *l, n=name: stack(n, t, *l), getattr(child, name),
                                  *[parent[name] for parent in parents]) for name in CARRIED_FIELDS}
    own = optim.get_hyperparams(child.opt_state)
    carried["opt_state"] = optim.set_hyperparams(carried["opt_state"], **own)
    return population.replace(members=child.replace(**carried))
