"""Small data, small batches: the 1-D FCN and ResNet before and after issue 17, 10 seeds as one population.

Compared (each a `fit_population` of 10 members that differ only in `seed`: one bucket, one program):

- before: the old behaviour reproduced by settings: BatchNorm momentum 0.9, identity shortcut in
  `resnet1d` (`shortcut='identity'`), evaluation with the running averages (no precise BN);
- after: the current defaults (momentum 0.7, `resnet1d`'s BN shortcut), evaluation with the
  running averages; and the same trained weights evaluated with precise BN (statistics recomputed
  over `--precise-batches` training batches, `TrainConfig.precise_bn_batches`), computed here
  after training with the library's own eval function.

Accuracy runs use `conv_impl='patch'` in both arms (the same arithmetic as 'xla', the old default);
`--time-steps` times one vmapped training step of the 10 members with 'xla' (old default) and
'auto' (new default, 'patch' on CPU) instead.

Settings: MNIST-1D (4000 training series, batch 16) and a small-data MNIST-1D (`train[:10%]`, 400
series, batch 8); test accuracy on the 1000 test series, mean ± std over the 10 seeds.

    PYTHONPATH=. python experiments/small_data_bn.py --steps 300

Runtime: 677 s (11 min) on a 2-core CPU shared with other jobs at `--steps 300`. Writes
experiments/results/small_data_bn.json; the table is in experiments/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.models import get_model
from vhjax.population import fit_population
from vhjax.population.fit import bucket_task
from vhjax.train.step import make_eval_fn

SETTINGS = {"mnist1d": ("train", 16), "mnist1d_10pct": ("train[:10%]", 8)}  # name -> (train split, batch)
WIDTHS = {"fcn1d": (32, 64, 32), "resnet1d": (16, 32, 32)}
SEEDS = 10


def model_kwargs(model: str, arm: str, conv_impl: str = "patch") -> dict[str, Any]:
    """The model's fields in one arm: 'before' reproduces the old defaults, 'after' keeps today's."""
    kwargs: dict[str, Any] = {"widths": WIDTHS[model], "conv_impl": conv_impl}
    if arm == "before":
        kwargs["norm_momentum"] = 0.9
        if model == "resnet1d":
            kwargs["shortcut"] = "identity"
    return kwargs


def config(model: str, setting: str, arm: str, steps: int) -> TrainConfig:
    split, batch = SETTINGS[setting]
    return TrainConfig(dataset="mnist1d", train_split=split, eval_split="test", model=model,
                       model_kwargs=model_kwargs(model, arm), batch_size=batch, steps=steps, eval_every=steps,
                       eval_metrics=("accuracy",))


def evaluate_members(cfg: TrainConfig, members: Any, precise_batches: int) -> np.ndarray:
    """Test accuracy of every member (stacked TrainState) with `precise_batches` of precise BN (0: off)."""
    task = bucket_task(dataclasses.replace(cfg, precise_bn_batches=precise_batches))
    evaluate = jax.jit(jax.vmap(make_eval_fn(task), in_axes=(0, None, None)))
    metrics = evaluate(members, jnp.asarray(task.eval.x), jnp.asarray(task.eval.y))
    return np.asarray(metrics["accuracy"])


def run(model: str, setting: str, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(model, setting, arm, args.steps)
    started = time.time()
    result = fit_population(cfg, [{"seed": s} for s in range(SEEDS)], verbose=False)
    seconds = time.time() - started
    if len(result.states) != 1:
        raise RuntimeError(f"{len(result.states)} buckets; the seeds should be one")
    running = np.asarray([m["eval"]["accuracy"] for m in result.members])
    row = {"model": model, "setting": setting, "arm": arm, "steps": args.steps, "seconds": round(seconds, 1),
           "running": running.tolist()}
    if arm == "after":
        members = result.states[0].members
        check = evaluate_members(cfg, members, 0)
        if not np.allclose(check, running, atol=1e-6):
            raise RuntimeError(f"post-hoc evaluation {check} differs from fit_population's {running}")
        row["precise"] = evaluate_members(cfg, members, args.precise_batches).tolist()
    return row


def step_seconds(model: str, conv_impl: str, batch: int, repeats: int) -> float:
    """Seconds per jitted, vmapped (10 members) Adam step of the model with `conv_impl`."""
    net = get_model(model, **model_kwargs(model, "after", conv_impl))
    data = load("mnist1d", "train")
    x, y = jnp.asarray(data.x[:batch]), jnp.asarray(data.y[:batch])
    variables = jax.vmap(lambda k: net.init(k, x))(jax.random.split(jax.random.key(0), SEEDS))
    tx = optax.adam(1e-2)

    def member_step(variables, opt_state):
        def loss(params):
            logits, state = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

        grads, state = jax.grad(loss, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state)
        return {**state, "params": optax.apply_updates(variables["params"], updates)}, opt_state

    step = jax.jit(jax.vmap(member_step))
    opt_state = jax.vmap(tx.init)(variables["params"])
    variables, opt_state = jax.block_until_ready(step(variables, opt_state))  # compile
    started = time.time()
    for _ in range(repeats):
        variables, opt_state = step(variables, opt_state)
    jax.block_until_ready(variables)
    return (time.time() - started) / repeats


def summary(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | setting | before | after | after + precise BN | wall s (before / after) |",
             "|---|---|---|---|---|---|"]
    for model in WIDTHS:
        for setting in SETTINGS:
            arms = {r["arm"]: r for r in rows if r["model"] == model and r["setting"] == setting}
            if set(arms) != {"before", "after"}:
                continue
            before, after = arms["before"], arms["after"]
            lines.append(f"| {model} | {setting} | {summary(before['running'])} | {summary(after['running'])} | "
                         f"{summary(after['precise'])} | {before['seconds']} / {after['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--precise-batches", type=int, default=50)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(WIDTHS))
    parser.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS))
    parser.add_argument("--time-steps", type=int, default=5, help="repeats of the conv_impl step timing (0: skip)")
    parser.add_argument("--out", default="experiments/results/small_data_bn.json")
    args = parser.parse_args()
    started = time.time()
    rows, timings = [], []
    for model in args.models:
        for setting in args.settings:
            for arm in ("before", "after"):
                rows.append(run(model, setting, arm, args))
                print(json.dumps(rows[-1]), flush=True)
    if args.time_steps:
        for model in args.models:
            for impl in ("xla", "auto"):
                timings.append({"model": model, "conv_impl": impl, "batch": 16,
                                "step_seconds": round(step_seconds(model, impl, 16, args.time_steps), 4)})
                print(json.dumps(timings[-1]), flush=True)
    print(table(rows))
    print(f"total wall time {time.time() - started:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "timings": timings, "seconds": round(time.time() - started, 1)}, indent=1))


if __name__ == "__main__":
    main()
