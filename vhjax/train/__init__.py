"""Training core: TrainState, the one-member steps, and the scan-chunked `fit` loop."""

from vhjax.train.checkpoint import Checkpointer
from vhjax.train.loop import FitResult, fit, fit_task
from vhjax.train.state import TrainState
from vhjax.train.step import chunk_batch_indices, init_state, make_eval_fn, make_train_step
from vhjax.train.task import Task, build_task, check_model_fits_data

__all__ = ["Checkpointer", "FitResult", "Task", "TrainState", "chunk_batch_indices", "build_task",
           "check_model_fits_data", "fit", "fit_task", "init_state", "make_eval_fn", "make_train_step"]
