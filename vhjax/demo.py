"""The main job: a real search over MNIST-1D networks, each generation trained as one population.

Every generation asks `population` candidates that differ in learning rate, weight decay, dropout
rate and architecture (active width, depth and skip connections of a masked MLP); all of them are
trained together in one compiled program. Progress is printed per chunk and per generation; the
search resumes from its workdir; a leaderboard is printed at the end and plots are saved.
"""

from __future__ import annotations

from pathlib import Path

from vhjax.config import TrainConfig
from vhjax.search import Boolean, Float, Int, Space, TrainingObjective, search
from vhjax.search.results import SearchResult

LEADERBOARD_COLUMNS = {
    "trial_id": "trial", "params.learning_rate": "learning rate", "params.weight_decay": "weight decay",
    "params.dropout_rate": "dropout", "params.arch.width": "width", "params.arch.depth": "depth",
    "params.arch.skip": "skip", "metrics.accuracy": "val accuracy", "metrics.test_accuracy": "test accuracy",
}


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
                       optimizer="adam", learning_rate=1e-3, batch_size=100, steps=steps,
                       eval_every=max(1, steps // 3), train_split="train[:90%]", eval_split="train[90%:]",
                       test_split="test", seed=seed)


def run_demo(*, budget: int = 48, population: int = 16, steps: int = 1500, strategy: str = "regularized_evolution",
             workdir: str | Path | None = "runs/demo", seed: int = 0, verbose: bool = True) -> SearchResult:
    """Run the demo search and print its leaderboard; returns the SearchResult."""
    strategy_kwargs = ({"population_size": population, "tournament_size": max(2, population // 4)}
                       if strategy == "regularized_evolution" else {})
    training_dir = None if workdir is None else Path(workdir) / "training"
    objective = TrainingObjective(demo_config(steps, seed), workdir=training_dir, verbose=verbose)
    result = search(objective, demo_space(), strategy, budget=budget, population=population, workdir=workdir,
                    seed=seed, strategy_kwargs=strategy_kwargs, verbose=verbose)
    print()
    print(leaderboard(result))
    if workdir is not None:
        paths = result.plot()
        print(f"\ntrials: {Path(workdir) / 'trials.sqlite'}; plots: {', '.join(sorted(paths.values()))}")
    return result


def leaderboard(result: SearchResult, top: int = 10) -> str:
    """The best `top` trials of the demo with readable column names."""
    return result.leaderboard(top, LEADERBOARD_COLUMNS)
