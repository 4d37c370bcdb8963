"""Members as data: a model and its variables stacked on a leading member axis, and their predictions.

A `MemberGroup` is what a population bucket holds: one flax module (equal shapes) and M sets of
variables (`{'params': ..., **model_state}` with leading axis M), plus per-member `arch` arrays for
searchable models. Predictions are one vmapped `apply` over the member axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import models
from vhjax.compile_options import light_jit
from vhjax.memo import Memo


@dataclasses.dataclass
class MemberGroup:
    """M members sharing one module (one compiled apply).

    `variables`: `{'params': ..., **model_state}`, every leaf with leading axis M. `arch`: per-member
    architecture arrays for searchable models (leading axis M) or None. `model_spec`: the registry
    name and kwargs that rebuild `model` when loading (None for a module outside the registry).
    `names`: a label per member (e.g. the population member index).
    """

    model: Any
    variables: dict
    arch: Any = None
    model_spec: dict | None = None
    names: list[str] = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return int(jax.tree.leaves(self.variables["params"])[0].shape[0])

    def member(self, index: int) -> dict:
        """One member's variables (no member axis)."""
        return jax.tree.map(lambda leaf: leaf[index], self.variables)

    def take(self, indices: Sequence[int]) -> "MemberGroup":
        idx = np.asarray(indices, np.int32)
        arch = None if self.arch is None else jax.tree.map(lambda a: jnp.asarray(a)[idx], self.arch)
        names = [self.names[i] for i in idx] if self.names else []
        return dataclasses.replace(self, variables=jax.tree.map(lambda leaf: leaf[idx], self.variables),
                                   arch=arch, names=names)


def apply_member(model: Any, variables: dict, x: jax.Array, arch: Any = None, *, dropout_rate: Any = 0.0,
                 dropout_key: jax.Array | None = None) -> jax.Array:
    """One member's logits. With a `dropout_key` dropout is active (MC dropout); normalisation
    layers stay in inference mode only for models whose dropout does not depend on `train`."""
    kwargs: dict[str, Any] = {"dropout_rate": dropout_rate}
    if arch is not None:
        kwargs["arch"] = arch
    if dropout_key is None:
        return model.apply(variables, x, train=False, **kwargs)
    state = [name for name in variables if name != "params"]
    if state:  # batch statistics would be updated in train mode: discard the update
        return model.apply(variables, x, train=True, rngs={"dropout": dropout_key}, mutable=state, **kwargs)[0]
    return model.apply(variables, x, train=True, rngs={"dropout": dropout_key}, **kwargs)


def group_logits(group: MemberGroup, x: Any, *, batch_size: int = 1000) -> jax.Array:
    """(M, N, C) logits of every member on `x`, in batches of `batch_size` examples."""
    fn = _logits_fn(group.model, group.arch is not None)
    x = jnp.asarray(x)
    outs = [fn(group.variables, group.arch, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return jnp.concatenate(outs, axis=1)


_LOGITS_CACHE: Memo[Callable] = Memo(8)


def _logits_fn(model: Any, has_arch: bool):
    def one(variables, arch, x):
        return apply_member(model, variables, x, arch if has_arch else None)

    return _LOGITS_CACHE.get((model,), lambda: light_jit(jax.vmap(one, in_axes=(0, 0 if has_arch else None, None))),
                             settings=has_arch)


def mc_dropout_probs(group: MemberGroup, x: Any, key: jax.Array, *, samples: int = 20,
                     dropout_rate: float = 0.1) -> jax.Array:
    """(M * samples, N, C) probabilities with dropout active at test time (Gal & Ghahramani 2016).

    Every member is sampled `samples` times with independent dropout masks at `dropout_rate`;
    average them for the MC-dropout prediction, or pass them to `calibration.mutual_information`.
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples has value {samples!r}; allowed: a positive integer")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate has value {dropout_rate!r}; allowed: [0, 1)")
    keys = jax.random.split(key, group.size * samples).reshape(group.size, samples)
    run = _mc_dropout_fn(group.model, group.arch is not None)
    probs = run(group.variables, group.arch, keys, jnp.asarray(x), jnp.float32(dropout_rate))
    return probs.reshape(-1, *probs.shape[2:])


_MC_DROPOUT_CACHE: Memo[Callable] = Memo(8)


def _mc_dropout_fn(model: Any, has_arch: bool) -> Callable:
    """Jitted (variables, arch, keys (M, S), x, rate) -> (M, S, N, C) probabilities, once per model:
    a new rate, input or key compiles nothing new."""
    def one(variables, arch, key, x, rate):
        return jax.nn.softmax(apply_member(model, variables, x, arch if has_arch else None, dropout_rate=rate,
                                           dropout_key=key), axis=-1)

    def run(variables, arch, keys, x, rate):
        per_member = jax.vmap(lambda v, a, ks: jax.vmap(lambda k: one(v, a, k, x, rate))(ks),
                              in_axes=(0, 0 if has_arch else None, 0))
        return per_member(variables, arch, keys)

    return _MC_DROPOUT_CACHE.get((model,), lambda: jax.jit(run), settings=has_arch)


def groups_from_population(result: Any, config: Any, *, members: Sequence[int] | None = None,
                           alive_only: bool = True) -> list[MemberGroup]:
    """One MemberGroup per bucket of a `fit_population` result, members named by their index.

    `config` is the TrainConfig given to fit_population (a member's own `model`/`model_kwargs`
    override it, as they do in training). `members` keeps only those member indices. Diverged
    members are dropped unless `alive_only=False`; ValueError if no member is left.
    """
    if not result.members:
        raise ValueError("population result has no members; allowed: a fit_population result with >= 1 member")
    wanted = None if members is None else {int(i) for i in members}
    if wanted is not None:
        unknown = sorted(wanted - {m["member"] for m in result.members})
        if unknown:
            raise ValueError(f"members has value {sorted(wanted)}; members {unknown} are not in the population "
                             f"(0..{len(result.members) - 1})")
    groups = []
    for bucket, state in enumerate(result.states):
        rows = [m for m in result.members if m["bucket"] == bucket]
        rows.sort(key=lambda m: m.get("position", m["member"]))  # bucket position order
        alive = np.asarray(state.alive)
        keep = [pos for pos, m in enumerate(rows)
                if (wanted is None or m["member"] in wanted) and (alive[pos] or not alive_only)]
        if not keep:
            continue
        member_config = rows[0]["config"]
        name = member_config.get("model", config.model)
        kwargs = dict(member_config.get("model_kwargs", config.model_kwargs))
        model = models.get_model(name, **kwargs)
        variables = {"params": state.members.params, **dict(state.members.model_state)}
        arch = state.members.hparams.get("arch") if isinstance(state.members.hparams, Mapping) else None
        group = MemberGroup(model, variables, arch, {"name": name, "kwargs": kwargs},
                            [str(m["member"]) for m in rows])
        groups.append(group.take(keep))
    if not groups:
        dead = [m["member"] for m in result.members if m["diverged_step"] is not None]
        raise ValueError(f"no member left to ensemble: members {dead} diverged"
                         + ("" if wanted is None else f" and members={sorted(wanted)} was asked for"))
    return groups


def members_from_search(result: Any, top: int = 5, objective: Any = None) -> list[dict]:
    """The `top` best trials of a `vhjax.search` result as member dicts for `fit_population`.

    A search keeps scores and configs, not weights: train these members as one population and build
    the ensemble from that result (`Ensemble.from_population`). With the search's
    `TrainingObjective`, its `members()` turns candidates into members (arch masks completed).
    """
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top has value {top!r}; allowed: a positive integer")
    trials = result.top(top)
    if not trials:
        raise ValueError("search result has no completed trials to ensemble")
    candidates = [dict(t.params) for t in trials]
    return objective.members(candidates) if objective is not None else candidates


def param_count(group: MemberGroup) -> int:
    """Parameters of one member of the group."""
    return models.count_params(jax.tree.map(lambda leaf: leaf[0], group.variables["params"]))
