"""Stacking on a k-fold population: a meta-learner fit on out-of-fold predictions.

`fit_kfold` trains every (candidate, fold) pair as one population. Each training example is held
out by exactly one fold, so `out_of_fold_probs` predicts it with the one model per candidate that
did not train on it: a level-1 training set as large as the training split, with no leakage.
`stack_kfold` fits `combine.fit_stacking` on it. At test time each candidate is the average of its
K fold models (no refit on all data), and the meta-learner combines the candidates.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from vhjax.ensemble import combine
from vhjax.ensemble.members import MemberGroup
from vhjax.ensemble.model import Ensemble


def check_stack_candidates(result: Any, candidates: Sequence[int] | None) -> list[int]:
    """The candidate indices to stack: at least two, none with a diverged fold model."""
    from vhjax.population.kfold import _check_result

    result = _check_result(result)
    count, k = len(result.candidates), result.k
    chosen = list(range(count)) if candidates is None else [int(c) for c in candidates]
    if candidates is not None and (len(set(chosen)) != len(chosen) or not all(0 <= c < count for c in chosen)):
        raise ValueError(f"candidates has value {list(candidates)!r}; allowed: distinct indices in 0..{count - 1}")
    if len(chosen) < 2:
        value = f"{len(chosen)} candidate(s)" if candidates is None else repr(chosen)
        raise ValueError(f"{'result.' if candidates is None else ''}candidates has value {value}; allowed: at least 2 "
                         "(stacking combines candidates; fit_kfold with several candidates)")
    alive = np.asarray(result.population.alive)[:count * k].reshape(count, k)
    dead = [c for c in chosen if not alive[c].all()]
    if dead:
        raise ValueError(f"candidates {dead} have diverged fold models (alive per fold: "
                         f"{[alive[c].tolist() for c in dead]}); allowed: candidates whose k fold models all "
                         "trained (pass candidates= without them)")
    return chosen


def kfold_group(result: Any, candidates: Sequence[int]) -> MemberGroup:
    """The fold models of `candidates` as one MemberGroup, candidate-major (c0f0, c0f1, ..., c1f0, ...)."""
    k, config = result.k, result.task.config
    rows = np.asarray([c * k + f for c in candidates for f in range(k)])
    members = jax.tree.map(lambda leaf: leaf[rows], result.population.members)
    hparams = members.hparams
    arch = hparams.get("arch") if hasattr(hparams, "get") else None
    spec = ({"name": config.model, "kwargs": dict(config.model_kwargs)} if isinstance(config.model, str) else None)
    return MemberGroup(result.task.model, {"params": members.params, **dict(members.model_state)}, arch, spec,
                       [f"c{c}f{f}" for c in candidates for f in range(k)])


def stack_kfold(result: Any, *, candidates: Sequence[int] | None = None, l2: float | Sequence[float] | None = None,
                folds: int = 5, steps: int = 500, learning_rate: float = 0.01, seed: int = 0) -> Ensemble:
    """An `Ensemble` (rule 'stacking') of a `fit_kfold` result's candidates.

    The meta-learner (`combine.fit_stacking`, options passed on) is fit on the candidates'
    out-of-fold predictions of the training split and its labels. Members are all fold models;
    `candidate_of` averages each candidate's K fold models before the meta-learner. Inputs to
    `predict_proba`/`evaluate` are preprocessed like `result.task`'s splits (e.g. `result.task.eval.x`).
    """
    from vhjax.population.kfold import out_of_fold_probs

    chosen = check_stack_candidates(result, candidates)
    oof = out_of_fold_probs(result)[np.asarray(chosen)]
    meta = combine.fit_stacking(oof, result.task.train.y, l2=l2, folds=folds, steps=steps,
                                learning_rate=learning_rate, seed=seed)
    return Ensemble([kfold_group(result, chosen)], rule="stacking", meta=meta,
                    candidate_of=np.repeat(np.arange(len(chosen)), result.k))
