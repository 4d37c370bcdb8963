"""Training core for one member: TrainState, the one-member steps, the task, checkpoints.

`fit` (one model) runs on the population engine with a population of one:
`vhjax.population.fit.fit`, re-exported here and as `vhjax.fit`.
"""

from typing import Any

from vhjax.train.checkpoint import Checkpointer
from vhjax.train.state import TrainState
from vhjax.train.step import chunk_batch_indices, init_state, make_eval_fn, make_train_step
from vhjax.train.task import Task, build_task, check_model_fits_data


def fit(*args: Any, **kwargs: Any):
    """`vhjax.population.fit.fit`: train one model (imported on first use: population sits above train)."""
    from vhjax.population.fit import fit as fit_one

    return fit_one(*args, **kwargs)


__all__ = ["Checkpointer", "Task", "TrainState", "chunk_batch_indices", "build_task", "check_model_fits_data",
           "fit", "init_state", "make_eval_fn", "make_train_step"]
