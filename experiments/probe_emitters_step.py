"""One population chunk's compile and step time for a zoo model, under this process's XLA_FLAGS.

MNIST-1D (or the dataset named third), 16 members, Adam(W) with weight decay, dropout 0.1 and random
shift (or the augmentation named fourth), chunks of 50 steps:
prints the first chunk (with its compilation) and the median of five more. Run it in alternating
processes with `XLA_FLAGS=--xla_cpu_use_fusion_emitters=true` and `=false` to compare XLA's newer
and older CPU fusion emitters (experiments/README.md, session 50):

    python experiments/probe_emitters_step.py resnet1d '{"widths": [16, 32]}'
    python experiments/probe_emitters_step.py cnn2d '{"conv_layers": [[16, 3, 1, "SAME"], [32, 3, 1, "SAME"]],
        "head_widths": [64]}' digits translate       # optional: dataset and augmentation
"""
import json
import os
import sys
import time

import jax
import numpy as np

from vhjax.config import TrainConfig
from vhjax.population import classifier_runner, init_population
from vhjax.train import build_task
model, kwargs = sys.argv[1], json.loads(sys.argv[2])
dataset = sys.argv[3] if len(sys.argv) > 3 else "mnist1d"
augmentation = sys.argv[4] if len(sys.argv) > 4 else "shift"
cfg = TrainConfig(dataset=dataset, model=model, model_kwargs=kwargs, optimizer="adamw", learning_rate=1e-3,
                  weight_decay=1e-4, dropout_rate=0.1, augment=({"name": augmentation, "strength": 0.1},),
                  batch_size=100, steps=1000, eval_every=50, seed=0)
task = build_task(cfg)
runner = classifier_runner(task)
data = jax.tree.map(jax.numpy.asarray, (task.train.x, task.train.y))
pop = init_population(task, 16, {})
t = time.perf_counter(); pop, m = runner(pop, data, 50); jax.block_until_ready(pop); first = time.perf_counter() - t
times = []
for _ in range(5):
    t = time.perf_counter(); pop, m = runner(pop, data, 50); jax.block_until_ready(pop); times.append(time.perf_counter() - t)
print(f"{model} flags={os.environ.get('XLA_FLAGS')}: first chunk (compile) {first:.2f} s, chunk median {np.median(times):.3f} s")
