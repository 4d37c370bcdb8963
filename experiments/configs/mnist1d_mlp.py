"""MNIST-1D paper MLP (Greydanus 2020): Adam lr 1e-2, batch 100, 6000 steps.

Command:  vhjax train --config experiments/configs/mnist1d_mlp.py --workdir runs/mnist1d_mlp
          (override any field: --config.optimizer.learning_rate=3e-3 --config.loop.steps=2000)
Hardware: any CPU; about a minute on 2 cores.
Expected: test accuracy about 0.65-0.68 (paper 68, reference notebook about 65).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = dict(dataset="mnist1d", train_split="train", eval_split="test")
    config.model = dict(model="mnist1d_mlp")
    config.optimizer = dict(optimizer="adam", learning_rate=1e-2)
    config.loop = dict(batch_size=100, steps=6000, seed=0)
    config.evaluation = dict(eval_every=500)
    return config
