"""The main job: a real search over MNIST-1D networks with vhjax's recommended search (`tune`).

Candidates differ in learning rate, weight decay, dropout rate and architecture (active width,
depth and skip connections of a masked MLP). `population` of them train at once as the slots of
one compiled program; every evaluation reaches the Optuna study at once, successive halving stops
weak candidates at its rungs inside the running program and their slots are refilled with new
ones. Progress is printed as trials finish; the search resumes from its workdir (`study.db`, a
plain Optuna study); a leaderboard is printed at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vhjax.config import TrainConfig
from vhjax.search.space import Boolean, Float, Int, Space
from vhjax.search.tune import TuneResult, tune


def demo_space(max_width: int = 256, max_depth: int = 3) -> Space:
    return Space({
        "learning_rate": Float(1e-4, 3e-2, log=True),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "dropout_rate": Float(0.0, 0.5),
        "arch.width": Int(16, max_width, log=True),
        "arch.depth": Int(1, max_depth),
        "arch.skip": Boolean(),
    })


def demo_config(steps: int = 1500, seed: int = 0, max_width: int = 256, max_depth: int = 3) -> TrainConfig:
    """MNIST-1D, 90/10 train/validation split of the training set, test set held out."""
    return TrainConfig(dataset="mnist1d", model="masked_mlp",
                       model_kwargs={"max_width": max_width, "max_depth": max_depth},
                       optimizer="adamw", learning_rate=1e-3, batch_size=100, steps=steps,
                       eval_every=max(1, steps // 3), train_split="train[:90%]", eval_split="train[90%:]",
                       test_split="test", seed=seed)


def run_demo(*, budget: float = 16, population: int | None = None, steps: int = 1500, strategy: str = "tpe",
             workdir: str | Path | None = "runs/demo", seed: int = 0, mesh: Any = "auto",
             verbose: bool = True, timeout: float | None = None) -> TuneResult:
    """Run the demo search and print its leaderboard; returns the TuneResult. `timeout`: seconds
    after which the search ends at its next evaluation (`tune`)."""
    result = tune(demo_config(steps, seed), demo_space(), budget=budget, population=population, sampler=strategy,
                  workdir=workdir, seed=seed, mesh=mesh, verbose=verbose, timeout=timeout)
    print()
    print(result.leaderboard(10))
    best = result.best()
    print(f"\nbest trial {best['trial']}: validation accuracy {best['value']:.4f}, test accuracy {best['test']:.4f}; "
          f"{len(result.timeline)} trials in {result.seconds:.0f} s")
    if workdir is not None:
        print(f"study: {Path(workdir) / 'study.db'} (optuna-dashboard sqlite:///{Path(workdir) / 'study.db'})")
    return result
