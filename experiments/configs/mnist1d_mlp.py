"""MNIST-1D paper MLP (Greydanus 2020): Adam lr 1e-2, batch 100, 6000 steps.

Command:  vhjax train experiments/configs/mnist1d_mlp.py --workdir runs/mnist1d_mlp
Hardware: any CPU; about a minute on 2 cores.
Expected: test accuracy about 0.65-0.68 (paper 68, reference notebook about 65).
"""

from vhjax.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(dataset="mnist1d", model="mnist1d_mlp", optimizer="adam", learning_rate=1e-2,
                       batch_size=100, steps=6000, eval_every=500, eval_split="test")
