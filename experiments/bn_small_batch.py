"""BatchNorm with small batches: evaluation with running averages vs recomputed ("precise") statistics.

Trains the 1-D ResNet of Wang et al. (2017) on MNIST-1D with batch size 8 (adam, constant learning
rate) for several learning rates, BatchNorm momenta, running-variance rules and seeds, then evaluates the same weights twice on the test
split: with the running averages (`batch_stats` as trained) and with
`vhjax.models.batchnorm.recompute_batch_stats` over one pass of the training split (batches of 8,
as in training). The gap between the two is the error of the running averages.

    PYTHONPATH=. python experiments/bn_small_batch.py --steps 1500 --seeds 1 --widths 16,32,32

CPU, a few minutes at the defaults; results are recorded in docs/models_data.md.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.data import load
from vhjax.models import get_model
from vhjax.models.batchnorm import recompute_batch_stats


def run(momentum: float, running_var: str, lr: float, seed: int, args) -> dict:
    train, test = load("mnist1d", "train"), load("mnist1d", "test")
    model = get_model("resnet1d", widths=tuple(args.widths), num_classes=10, norm_momentum=momentum,
                      norm_running_var=running_var, shortcut=args.shortcut, zero_init_residual=not args.no_zero_init)
    key = jax.random.key(seed)
    variables = model.init(key, jnp.zeros((args.batch,) + train.feature_shape))
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    tx = optax.adam(lr)
    opt = tx.init(params)
    x_train, y_train = jnp.asarray(train.x), jnp.asarray(train.y)

    def loss_fn(params, state, x, y):
        logits, new_state = model.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    def step(carry, index):
        params, state, opt = carry
        x, y = x_train[index], y_train[index]
        (_, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), state, opt), None

    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(args.steps * args.batch // len(train) + 1)])
    indices = jnp.asarray(order[: args.steps * args.batch].reshape(args.steps, args.batch))
    started = time.time()
    (params, state, opt), _ = jax.jit(lambda c, i: jax.lax.scan(step, c, i))((params, state, opt), indices)

    def accuracy(state):
        logits = model.apply({"params": params, **state}, jnp.asarray(test.x))
        return float((logits.argmax(-1) == jnp.asarray(test.y)).mean())

    usable = len(train) // args.batch * args.batch
    batches = x_train[:usable].reshape(-1, args.batch, *train.feature_shape)
    precise = jax.jit(lambda p, s, xb: recompute_batch_stats(model, {"params": p, **s}, xb))(params, state, batches)
    return {"momentum": momentum, "running_var": running_var, "lr": lr, "batch": args.batch, "seed": seed, "running": accuracy(state), "precise": accuracy(precise),
            "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 1e-2])
    parser.add_argument("--running-vars", type=lambda s: s.split(","), default=["batch", "total"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[16, 32, 32])
    parser.add_argument("--momenta", type=lambda s: [float(m) for m in s.split(",")], default=[0.5, 0.7, 0.9, 0.99])
    parser.add_argument("--shortcut", default="norm")
    parser.add_argument("--no-zero-init", action="store_true")
    args = parser.parse_args()
    for lr in args.lrs:
        for momentum in args.momenta:
            for running_var in args.running_vars:
                for seed in range(args.seeds):
                    print(json.dumps(run(momentum, running_var, lr, seed, args)), flush=True)


if __name__ == "__main__":
    main()
