"""MNIST-1D paper CNN (Greydanus 2020): Adam lr 1e-2, batch 100, 6000 steps, random shifts.

Command:  vhjax train --config experiments/configs/mnist1d_cnn.py --workdir runs/mnist1d_cnn
Hardware: any CPU; a few minutes on 2 cores (a GPU: seconds).
Expected: test accuracy about 0.90-0.94 (paper 94 with the CNN); not re-measured for this file.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = dict(dataset="mnist1d", train_split="train", eval_split="test")
    config.model = dict(model="mnist1d_cnn")
    config.augmentation = dict(augment=[dict(name="shift", strength=0.1)])
    config.optimizer = dict(optimizer="adam", learning_rate=1e-2)
    config.loop = dict(batch_size=100, steps=6000, seed=0)
    config.evaluation = dict(eval_every=500)
    return config
