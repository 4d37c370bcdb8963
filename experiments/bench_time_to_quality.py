"""Benchmark (issue 11): time to quality of a vhjax search against Optuna with a per-trial loop.

The task: hyperparameter search (learning rate, decoupled weight decay, dropout, augmentation
strength) for a fixed network, Adam, `--steps` steps of batch 100 per trial; every trial is
selected on a validation split carved from train (train[:90%] / train[90%:]) and the test
accuracy of the pick is reported. Tasks: `mnist1d_cnn` (the MNIST-1D paper CNN, random shift)
and `digits_cnn` (sklearn digits 8x8, a small 2-D CNN, random translation).

Contestants (`--contestants`, comma-separated; add one by adding a function to CONTESTANTS):
  optuna_tpe     Optuna TPE (multivariate), one trial at a time
  optuna_random  Optuna random sampling, one trial at a time
  optuna_tpe_hb  Optuna TPE + HyperbandPruner, validation accuracy reported every steps/10
  vhjax_tune     vhjax.search.tune(config, space, budget=N): the recommended search, one call. On this
                 space of Floats its 'auto' method is the shrinking keep_best PBT of N/2 members
                 (`vhjax.search.tune_pbt`; its first run is the same as vhjax_pbt_shrink), restarted
                 from new random members as long as the budget lasts (since session 41: three runs
                 for N=64; the first run alone before). Before 2026-12-05 (session 40) vhjax_tune
                 was the sampler-and-pruner method, now vhjax_tune_asha. The table adds
                 vhjax_tune_first_run: not a process of its own, the vhjax_tune run's rows up to its
                 first restart (its wall: the first run's last row), an ablation in the same run
  vhjax_tune_asha  tune(..., sampler='tpe'): Optuna TPE proposes, one running population of P slots,
                 ASHA rungs inside it, slots refilled; the compute of N full trials (pruned trials
                 count the steps they trained)
  vhjax_tune_random  the same with random sampling
  vhjax_tune_timeout  vhjax_tune with `timeout=--timeout` seconds: its pick when it ends against every
                 other contestant's pick among the trials it had finished by then (a second table:
                 what each gives you in the same time; `fixed_time_summary`)
  vhjax_pbt      vhjax.search.search_pbt: population based training of P members (default 32, half the
                 compute of 64 trials) drawn from the space, exploit/explore every steps/10 steps (or
                 --pbt-interval) on the validation accuracy; every member's final (validation, test)
                 counts, at the end
  vhjax_pbt_best the same with `keep_best=True`: each member slot returns its best evaluated
                 parameters, so every round's validation scores count when the callback reports them
                 (test: of the returned parameters)
  vhjax_pbt_shrink  vhjax_pbt_best as docs/tune.md recommends it for time to quality: about 30
                 rounds (`even_interval(steps, 30)`, a divisor of the steps; or --pbt-interval) and a
                 shrinking population (`shrink`): after 3/10 of the rounds only the best half of the
                 members trains on (the others stop; their compute is skipped). Before 2026-12-05
                 (session 37) it ran ten rounds unless --pbt-interval was given (pass --pbt-interval
                 STEPS/10 to rerun those tables)
  vhjax_tpe      vhjax.search(TrainingObjective(config), space, 'tpe', population=P)
  vhjax_random   the same with 'random'
  NAME:P         a vhjax contestant with population P (e.g. vhjax_tune_asha:16 beside vhjax_tune_asha)
The Optuna contestants are a competent user's trainer: a Flax/optax step jitted once, with every
hyperparameter a traced argument (`optax.inject_hyperparams(optax.adamw)`, dropout rate and
augmentation strength as arrays), data on the device, `lax.scan` over chunks of steps, the same
model and augmentation functions as vhjax.

Protocol: each (contestant, seed) runs in its own fresh Python process, in the order
seed 0: A, B, C, ...; seed 1: A, B, C, ... (interleaved, so slow drifts of a shared machine
spread over all contestants). Each process records, for every finished trial, (seconds since the
process started, validation accuracy, test accuracy): imports, data loading, compilation,
evaluation and search overhead are all inside the clock. Compilations are counted and timed with
`vhjax.compilation_cache.count_compilations` (JAX monitoring events).

Reported per contestant (over seeds): trials, member-steps, wall time, compile time and count,
best validation accuracy, test accuracy of the pick, time to reach 98% and 100% of Optuna TPE's
best validation accuracy of the same seed, and the speed-ups against Optuna TPE and against
TPE + pruner (their time / the contestant's time of the medians; > 1 means faster), and the mean
of the per-seed speed-ups against Optuna TPE at 100% (a missed seed counts 0) with its 95%
bootstrap interval over the seeds. Writes
experiments/results/time_to_quality[_TASK].{md,json} and experiments/figures/time_to_quality[_TASK].png.

Command:  python experiments/bench_time_to_quality.py [--task mnist1d_cnn] [--trials 64] [--steps 1500]
          [--seeds 3] [--first-seed 0] [--population 16] [--cpu-devices auto] [--contestants optuna_tpe,optuna_random,optuna_tpe_hb,vhjax_tpe,vhjax_random]
          [--conv-impl auto|patch|xla] [--pbt-interval STEPS] [--time-budget SECONDS] [--compilation-cache DIR] [--tag _NAME]
Smoke run (about a minute, writes *_quick.* files):  python experiments/bench_time_to_quality.py --quick
Pooled table of earlier runs (each seed against its own run's reference; runs nothing):
          python experiments/bench_time_to_quality.py --pool experiments/results/time_to_quality_session39_*.json
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: a worker's clock includes them

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Mapping, Sequence  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.98, 1.0)
DEFAULT_CONTESTANTS = "optuna_tpe,optuna_tpe_hb,vhjax_tune"
DEFAULT_PBT_POPULATION = 32  # vhjax_pbt: half the compute of the default 64 trials
REPORTS_PER_TRIAL = 10  # chunks per trial: the pruner's rungs, and the Optuna trainer's scan length


# --- tasks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: dataset, model, augmentation and the search space's ranges."""

    dataset: str
    model: str
    model_kwargs: dict
    augmentation: str
    # (name, low, high, log): the searched hyperparameters; `augment` is the augmentation strength
    space: tuple[tuple[str, float, float, bool], ...]
    describe: str


SPACE_COMMON = (("learning_rate", 1e-4, 3e-2, True), ("weight_decay", 1e-5, 1e-1, True),
                ("dropout_rate", 0.0, 0.5, False))
TASKS = {
    "mnist1d_cnn": Task("mnist1d", "mnist1d_cnn", {}, "shift", SPACE_COMMON + (("augment", 0.0, 0.25, False),),
                        "MNIST-1D (3600 fit / 400 validation / 1000 test), the paper CNN "
                        "(3 conv layers of 25 channels), random shift"),
    "digits_cnn": Task("digits", "cnn2d", {"conv_layers": ((16, 3, 1, "SAME"), (32, 3, 1, "SAME")),
                                           "head_widths": (64,)},
                       "translate", SPACE_COMMON + (("augment", 0.0, 0.25, False),),
                       "sklearn digits 8x8 (1293 fit / 144 validation / 360 test), small 2-D CNN "
                       "(conv 16, conv 32, max pool, dense 64), random translation"),
    "mnist1d_mlp": Task("mnist1d", "mnist1d_mlp", {}, "shift", SPACE_COMMON + (("augment", 0.0, 0.25, False),),
                        "MNIST-1D (3600 fit / 400 validation / 1000 test), the paper MLP "
                        "(40-100-100 residual-10), random shift"),
}
SPLITS = ("train[:90%]", "train[90%:]", "test")


# --- pure pieces: timelines, time to quality, ratios (tested in tests/test_bench_time_to_quality.py)


def best_so_far(timeline: Sequence[Sequence[float]]) -> list[tuple[float, float, float]]:
    """(time, best validation so far, test accuracy of that pick) after each finished trial.

    `timeline` holds (seconds, validation accuracy, test accuracy) per trial in any order;
    NaN validations (diverged trials) never become the pick; ties keep the earlier trial.
    """
    out, best, test = [], -math.inf, math.nan
    for seconds, val, tst in sorted(timeline, key=lambda row: row[0]):
        if not math.isnan(val) and val > best:
            best, test = val, tst
        out.append((float(seconds), best, test))
    return out


def time_to_reach(timeline: Sequence[Sequence[float]], target: float) -> float:
    """Seconds until the best validation accuracy first reaches `target`; inf if never."""
    for seconds, best, _ in best_so_far(timeline):
        if best >= target - 1e-12:
            return seconds
    return math.inf


def final_pick(timeline: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(best validation accuracy, test accuracy of that trial); NaNs when nothing finished."""
    curve = best_so_far(timeline)
    if not curve or curve[-1][1] == -math.inf:
        return math.nan, math.nan
    return curve[-1][1], curve[-1][2]


def pick_at(timeline: Sequence[Sequence[float]], seconds: float) -> tuple[float, float]:
    """(best validation accuracy, test accuracy of that trial) among the trials finished within
    `seconds` of the process's start; NaNs when none had."""
    return final_pick([row for row in timeline if row[0] <= seconds])


def fixed_time_summary(runs: Sequence[dict], timed: str) -> dict[str, dict]:
    """Per contestant: the picks each had when the `timed` contestant's process ended (per seed: that
    run's wall time, so every other contestant gets at least as long): mean best validation, mean
    and std of the test accuracy of the pick, and against `timed` the seeds whose pick tested lower,
    equal and higher. `timed` is the contestant given a `timeout`, whose pick is its final one."""
    ends = {run["seed"]: run["wall"] for run in runs if run["contestant"] == timed}
    if not ends:
        raise ValueError(f"no run of the timed contestant {timed!r}; contestants: "
                         f"{sorted({r['contestant'] for r in runs})}")
    picks = {(run["contestant"], run["seed"]): (final_pick(run["timeline"]) if run["contestant"] == timed
                                                 else pick_at(run["timeline"], ends[run["seed"]]))
             for run in runs if run["seed"] in ends}
    summary = {}
    for name in dict.fromkeys(contestant for contestant, _ in picks):
        seeds = [seed for contestant, seed in picks if contestant == name]
        vals = [picks[name, seed][0] for seed in seeds]
        tests = [picks[name, seed][1] for seed in seeds]
        against = [np.sign(picks[timed, seed][1] - picks[name, seed][1]) for seed in seeds]
        summary[name] = {"seeds": len(seeds), "seconds": float(np.median([ends[s] for s in seeds])),
                         "best_val": float(np.nanmean(vals)), "test": float(np.nanmean(tests)),
                         "test_std": float(np.nanstd(tests, ddof=1)) if len(tests) > 1 else 0.0,
                         "timed_lower_equal_higher": [int(sum(a < 0 for a in against)),
                                                      int(sum(a == 0 for a in against)),
                                                      int(sum(a > 0 for a in against))]}
    return summary


def fixed_time_table(summary: dict[str, dict], timed: str) -> str:
    """`fixed_time_summary` as a markdown table."""
    lines = ["| contestant | seeds | at s (median) | best val. | test of pick | "
             f"{timed}'s pick tests lower / equal / higher |", "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        lower, equal, higher = row["timed_lower_equal_higher"]
        lines.append(f"| {name} | {row['seeds']} | {_fmt(row['seconds'], 1)} | {_fmt(row['best_val'], 3)} | "
                     f"{_fmt(row['test'], 3)} ± {_fmt(row['test_std'], 3)} | "
                     + ("-" if name == timed else f"{lower} / {equal} / {higher}") + " |")
    return "\n".join(lines)


def median_or_inf(values: Sequence[float]) -> float:
    """The median; inf when half or more of the values are inf (never reached)."""
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else math.nan


def speedup(reference_seconds: float, seconds: float) -> float:
    """reference / contestant (> 1: the contestant is faster); 0 if only the reference got
    there, inf if only the contestant did, NaN if neither did."""
    if math.isinf(reference_seconds) and math.isinf(seconds):
        return math.nan
    if math.isinf(seconds):
        return 0.0
    return reference_seconds / seconds


def bootstrap_interval(values: Sequence[float], level: float = 0.95, draws: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (seeds resampled with replacement,
    `draws` times, from a fixed generator so a table is reproducible); NaNs for no values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    means = np.random.default_rng(seed).choice(values, size=(draws, values.size), replace=True).mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(runs: Sequence[dict], reference: str, fractions: Sequence[float] = FRACTIONS) -> dict[str, dict]:
    """Per contestant: aggregates over seeds, and times to reach `fractions` of the reference
    contestant's best validation accuracy of the same seed.

    `runs` are worker records (`contestant`, `seed`, `timeline`, `trials`, `member_steps`,
    `wall`, `compile_count`, `compile_seconds`). Times are medians over seeds (inf when the
    contestant missed the target in half the seeds or more); `reached` counts the seeds;
    `mean_speedup_<f>` is the mean over seeds of each seed's speed-up against the reference (a
    seed the contestant missed counts 0), the "mean over seeds" of issue 11's targets, and
    `mean_speedup_<f>_interval` its 95% bootstrap interval over the seeds (`bootstrap_interval`).
    """
    targets, reference_times = {}, {}
    for run in runs:
        if run["contestant"] == reference:
            targets[run["seed"]] = final_pick(run["timeline"])[0]
            reference_times[run["seed"]] = {f: time_to_reach(run["timeline"], f * targets[run["seed"]]) for f in fractions}
    if not targets:
        raise ValueError(f"no run of the reference contestant {reference!r}; contestants: "
                         f"{sorted({r['contestant'] for r in runs})}")
    summary: dict[str, dict] = {}
    for name in dict.fromkeys(run["contestant"] for run in runs):
        mine = [run for run in runs if run["contestant"] == name and run["seed"] in targets]
        picks = [final_pick(run["timeline"]) for run in mine]
        row = {
            "seeds": len(mine),
            "trials": float(np.mean([run["trials"] for run in mine])),
            "member_steps": float(np.mean([run["member_steps"] for run in mine])),
            "wall": median_or_inf([run["wall"] for run in mine]),
            "compile_seconds": median_or_inf([run["compile_seconds"] for run in mine]),
            "compile_count": float(np.median([run["compile_count"] for run in mine])),
            "best_val": float(np.nanmean([p[0] for p in picks])),
            "test": float(np.nanmean([p[1] for p in picks])),
            "test_std": float(np.nanstd([p[1] for p in picks], ddof=1)) if len(picks) > 1 else 0.0,
        }
        for fraction in fractions:
            times = [time_to_reach(run["timeline"], fraction * targets[run["seed"]]) for run in mine]
            row[f"time_{fraction:g}"] = median_or_inf(times)
            row[f"reached_{fraction:g}"] = int(sum(math.isfinite(t) for t in times))
            per_seed = [speedup(reference_times[run["seed"]][fraction], t) for run, t in zip(mine, times)]
            per_seed = [x for x in per_seed if not math.isnan(x)]
            row[f"mean_speedup_{fraction:g}"] = float(np.mean(per_seed)) if per_seed else math.nan
            row[f"mean_speedup_{fraction:g}_interval"] = bootstrap_interval(per_seed)
        summary[name] = row
    for name, row in summary.items():
        for other in (reference, "optuna_tpe_hb"):
            if other in summary:
                for fraction in fractions:
                    key = f"time_{fraction:g}"
                    row[f"speedup_{fraction:g}_vs_{other}"] = speedup(summary[other][key], row[key])
    return summary


def _fmt(value: float, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "not reached"
    return f"{value:,.{digits}f}{suffix}"


def _fmt_speedup(value: float) -> str:
    """A speed-up cell, `speedup`'s conventions in words: inf -> only this contestant reached the
    level, 0 -> only the other one did, NaN -> neither."""
    if isinstance(value, float) and math.isinf(value):
        return "only this one reached"
    if value == 0.0:
        return "not reached"
    if isinstance(value, float) and math.isnan(value):
        return "neither reached"
    return _fmt(value, 2, "x")


def markdown_table(summary: dict[str, dict], reference: str, fractions: Sequence[float] = FRACTIONS) -> str:
    """The per-contestant table (times in seconds, medians over seeds)."""
    others = [o for o in (reference, "optuna_tpe_hb") if o in summary]
    head = ["contestant", "seeds", "trials", "member-steps", "wall s", "compile s", "compilations",
            "best val.", "test of pick"]
    for fraction in fractions:
        head.append(f"s to {100 * fraction:g}% of {reference} best (reached)")
    head += [f"speed-up vs {o} at {100 * f:g}%" for o in others for f in fractions]
    head.append(f"mean of per-seed speed-ups vs {reference} at 100% (misses 0; 95% bootstrap interval)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary.items():
        cells = [name, str(row["seeds"]), _fmt(row["trials"]), _fmt(row["member_steps"]), _fmt(row["wall"], 1),
                 _fmt(row["compile_seconds"], 1), _fmt(row["compile_count"]), _fmt(row["best_val"], 3),
                 f"{_fmt(row['test'], 3)} ± {_fmt(row['test_std'], 3)}"]
        for fraction in fractions:
            cells.append(f"{_fmt(row[f'time_{fraction:g}'], 1)} ({row[f'reached_{fraction:g}']}/{row['seeds']})")
        cells += [_fmt_speedup(row[f"speedup_{f:g}_vs_{o}"]) for o in others for f in fractions]
        low, high = row["mean_speedup_1_interval"]
        cells.append(f"{_fmt(row['mean_speedup_1'], 2, 'x')} ({_fmt(low, 2)}-{_fmt(high, 2)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the Optuna contestants: a competent user's per-trial trainer --------------------------------


def load_splits(task: Task):
    from vhjax.data import load

    return [load(task.dataset, split) for split in SPLITS]


class OptunaTrainer:
    """Train one trial at a time: one jitted chunk of `lax.scan`ned Adam steps, compiled once,
    every hyperparameter a traced argument; data on the device."""

    def __init__(self, task: Task, steps: int, batch_size: int = 100):
        import jax
        import jax.numpy as jnp
        import optax

        from vhjax.augment import get_augmentation
        from vhjax.models import get_model

        train, val, test = load_splits(task)
        self.steps, self.batch_size, self.size = steps, batch_size, len(train.y)
        self.chunk = max(1, steps // REPORTS_PER_TRIAL)
        self.train_data = (jnp.asarray(train.x), jnp.asarray(train.y))
        self.val, self.test = (jnp.asarray(val.x), jnp.asarray(val.y)), (jnp.asarray(test.x), jnp.asarray(test.y))
        model = get_model(task.model, **task.model_kwargs)
        augment = get_augmentation(task.augmentation)
        tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4)
        example = self.train_data[0][:1]

        @jax.jit
        def init(key, learning_rate, weight_decay):
            params = model.init({"params": key}, example, train=False)["params"]
            opt_state = tx.init(params)
            opt_state.hyperparams["learning_rate"] = learning_rate
            opt_state.hyperparams["weight_decay"] = weight_decay
            return params, opt_state

        @jax.jit
        def train_chunk(params, opt_state, key, data, indices, dropout_rate, strength):
            x_all, y_all = data

            def step(carry, batch_indices):
                params, opt_state, key = carry
                key, augment_key, dropout_key = jax.random.split(key, 3)
                x = augment(augment_key, x_all[batch_indices], strength)
                y = y_all[batch_indices]

                def loss(p):
                    logits = model.apply({"params": p}, x, train=True, dropout_rate=dropout_rate,
                                         rngs={"dropout": dropout_key})
                    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

                grads = jax.grad(loss)(params)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state, key), None

            (params, opt_state, key), _ = jax.lax.scan(step, (params, opt_state, key), indices)
            return params, opt_state, key

        @jax.jit
        def accuracy(params, data):
            x, y = data
            return jnp.mean(jnp.argmax(model.apply({"params": params}, x, train=False), -1) == y)

        self._init, self._train_chunk, self._accuracy = init, train_chunk, accuracy

    def batch_indices(self, seed: int) -> np.ndarray:
        """(steps, batch) example indices: a fresh permutation every epoch."""
        rng = np.random.default_rng(seed)
        needed = self.steps * self.batch_size
        orders = [rng.permutation(self.size) for _ in range(-(-needed // self.size))]
        return np.concatenate(orders)[:needed].reshape(self.steps, self.batch_size).astype(np.int32)

    def run(self, params_dict: dict, seed: int, report: Callable[[int, float], None] | None = None) -> tuple[float, float, int]:
        """Train one trial; `report(step, val_acc)` after every chunk (may raise to prune).
        Returns (validation accuracy, test accuracy, steps trained)."""
        import jax
        import jax.numpy as jnp

        key = jax.random.key(seed)
        init_key, key = jax.random.split(key)
        f32 = jnp.float32
        params, opt_state = self._init(init_key, f32(params_dict["learning_rate"]), f32(params_dict["weight_decay"]))
        indices = self.batch_indices(seed)
        done = 0
        for start in range(0, self.steps, self.chunk):
            chunk = indices[start:start + self.chunk]
            params, opt_state, key = self._train_chunk(params, opt_state, key, self.train_data, chunk,
                                                       f32(params_dict["dropout_rate"]), f32(params_dict["augment"]))
            done += len(chunk)
            if report is not None:
                report(done, float(self._accuracy(params, self.val)))
        return float(self._accuracy(params, self.val)), float(self._accuracy(params, self.test)), done


def run_optuna(args, sampler_name: str, pruner: bool) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = TASKS[args.task]
    trainer = OptunaTrainer(task, args.steps)
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=args.seed, multivariate=True),
                "random": lambda: optuna.samplers.RandomSampler(seed=args.seed)}
    chunk = trainer.chunk
    study = optuna.create_study(
        direction="maximize", sampler=samplers[sampler_name](),
        pruner=(optuna.pruners.HyperbandPruner(min_resource=chunk, max_resource=chunk * (args.steps // chunk),
                                               reduction_factor=3) if pruner else optuna.pruners.NopPruner()))
    timeline, counters = [], {"member_steps": 0, "pruned": 0}

    def objective(trial):
        params = {name: trial.suggest_float(name, low, high, log=log) for name, low, high, log in task.space}
        trained = [0]

        def report(step: int, val: float) -> None:
            trained[0] = step
            trial.report(val, step)
            if trial.should_prune():
                counters["member_steps"] += step
                counters["pruned"] += 1
                raise optuna.TrialPruned()

        val, test, steps = trainer.run(params, seed=1000 * args.seed + trial.number,
                                       report=report if pruner else None)
        counters["member_steps"] += steps
        timeline.append((time.perf_counter() - PROCESS_START, val, test))
        return val

    study.optimize(objective, n_trials=args.trials)
    done = [t for t in study.trials if t.value is not None]
    return {"trials": args.trials, "completed": len(timeline), "pruned": counters["pruned"],
            "member_steps": counters["member_steps"], "timeline": timeline,
            "best_params": max(done, key=lambda t: t.value).params if done else None}


# --- the vhjax contestants -----------------------------------------------------------------------


def vhjax_config(task: Task, steps: int, seed: int, conv_impl: str = "auto"):
    """The vhjax contestants' training config; `conv_impl` other than 'auto' picks the model's
    convolution (vhjax.models.patch_conv: 'patch' or XLA's native 'xla')."""
    from vhjax.config import TrainConfig

    model_kwargs = {**task.model_kwargs, **({} if conv_impl == "auto" else {"conv_impl": conv_impl})}
    return TrainConfig(dataset=task.dataset, model=task.model, model_kwargs=model_kwargs, optimizer="adamw",
                       learning_rate=1e-3, weight_decay=1e-4, dropout_rate=0.1,
                       augment=({"name": task.augmentation, "strength": 0.1},),
                       batch_size=100, steps=steps, eval_every=steps, train_split=SPLITS[0],
                       eval_split=SPLITS[1], test_split=SPLITS[2], seed=seed)


def vhjax_member(task: Task) -> Callable[[dict], dict]:
    """Candidate {'learning_rate', 'weight_decay', 'dropout_rate', 'augment'} -> population member."""

    def to_member(candidate: dict) -> dict:
        member = {k: float(v) for k, v in candidate.items() if k != "augment"}
        member["augment"] = ({"name": task.augmentation, "strength": float(candidate["augment"])},)
        return member

    return to_member


class TimedObjective:
    """Wraps a TrainingObjective: records (seconds, val, test) for every trained member."""

    def __init__(self, inner, timeline: list):
        self.inner, self.timeline = inner, timeline

    @property
    def fitness_metric(self) -> str:
        return self.inner.fitness_metric

    def evaluate(self, candidates):
        out = self.inner.evaluate(candidates)
        now = time.perf_counter() - PROCESS_START
        self.timeline.extend((now, float(v), float(t)) for v, t in zip(out["accuracy"], out["test_accuracy"]))
        return out


def run_vhjax(args, strategy: str) -> dict:
    import vhjax
    from vhjax.search import Float, Space, TrainingObjective

    task = TASKS[args.task]
    space = Space({name: Float(low, high, log=log) for name, low, high, log in task.space})
    objective = TrainingObjective(vhjax_config(task, args.steps, args.seed, args.conv_impl),
                                  to_member=vhjax_member(task))
    timeline: list = []
    vhjax.search(TimedObjective(objective, timeline), space, strategy, budget=args.trials,
                 population=args.population or 16, seed=args.seed, verbose=False)
    return {"trials": args.trials, "completed": len(timeline), "pruned": 0,
            "member_steps": args.trials * args.steps, "timeline": timeline}


def vhjax_space(task: Task):
    """The task's search space as a vhjax `Space` of per-member fields (`augment` is `aug_strength`)."""
    from vhjax.search import Float, Space

    names = {"augment": "aug_strength"}
    return Space({names.get(name, name): Float(low, high, log=log) for name, low, high, log in task.space})


def run_vhjax_tune(args, sampler: str | None = None) -> dict:
    """vhjax's recommended search: `tune(config, space, budget=N)`. On this space of Floats its
    'auto' method is PBT (`vhjax.search.tune_pbt`: N/2 members, 30 rounds, the best half after 3/10
    of them, each slot's best evaluated parameters kept); with a `sampler` (`vhjax_tune_asha`,
    `vhjax_tune_random`) it is the sampler-and-pruner method (Optuna proposes, one running
    population, ASHA in program). A trial counts when the callback reports it; its test value is
    the stored one (PBT: of the returned parameters)."""
    from vhjax.search import tune

    task = TASKS[args.task]
    space = vhjax_space(task)
    seconds: dict = {}

    def record(row: dict) -> None:
        seconds[row["trial"]] = time.perf_counter() - PROCESS_START

    result = tune(vhjax_config(task, args.steps, args.seed, args.conv_impl), space, budget=args.trials,
                  population=args.population, sampler=sampler, seed=args.seed, callback=record, mesh="auto",
                  verbose=False, compilation_cache=args.compilation_cache or False,  # cold unless the bench turns it on for all
                  timeout=args.timeout if args.worker.startswith("vhjax_tune_timeout") else None)
    done = [row for row in result.timeline if row["state"] == "COMPLETE"]
    timeline = [(seconds[row["trial"]], row["value"], math.nan if row["test"] is None else row["test"]) for row in done]
    if result.method == "pbt":
        fidelities = [row["steps"] for row in result.timeline]
        members = sum(row["steps"] == fidelities[0] for row in result.timeline)  # every run's first round
        population = sum(row["steps"] == fidelities[0] and row["restart"] == 0 for row in result.timeline)
        first = [row for row in result.timeline if row["restart"] == 0]  # the first run's trials come first
        return {"population": population, "trials": members, "completed": members, "pruned": 0,
                "member_steps": trained_member_steps(fidelities), "timeline": timeline,
                "first_run": {"trials": population, "timeline": timeline[:sum(r["state"] == "COMPLETE" for r in first)],
                              "member_steps": trained_member_steps([row["steps"] for row in first])}}
    states = [row["state"] for row in result.timeline]
    from vhjax import parallel
    from vhjax.search.tune import default_population

    population = args.population or default_population(parallel.resolve_mesh("auto"))
    return {"population": population, "trials": len(states), "completed": len(done), "pruned": states.count("PRUNED"),
            "member_steps": int(sum(row["steps"] for row in result.timeline)), "timeline": timeline}


def run_vhjax_pbt(args, keep_best: bool = False, shrink: bool = False) -> dict:
    """Population based training, `vhjax.search.search_pbt`: P members drawn from the task's space,
    `steps` steps each in one compiled program, exploit/explore every steps/10 steps.

    keep_best=False (`vhjax_pbt`, the documented default): only the members' final (validation,
    test) count, when the run ends. keep_best=True (`vhjax_pbt_best`): every member slot returns its
    best evaluated parameters, so a round's validation score counts when `search_pbt`'s callback
    reports it (the search holds those parameters from then on); the test accuracy is that of the
    returned parameters (the trial of each slot's kept round). shrink=True (`vhjax_pbt_shrink`,
    with keep_best): what docs/tune.md recommends for time to quality, about 30 rounds
    (`even_interval(steps, 30)`, unless --pbt-interval) and `P // 2` members kept after 3/10 of them.
    """
    from vhjax.population.pbt import pbt_rounds
    from vhjax.search import search_pbt
    from vhjax.search.pbt_search import default_interval, even_interval
    from vhjax.search.tune_pbt import ROUNDS, halving

    task = TASKS[args.task]
    space = vhjax_space(task)
    population = args.population or DEFAULT_PBT_POPULATION
    config = dataclasses.replace(vhjax_config(task, args.steps, args.seed, args.conv_impl), keep_best=keep_best)
    rounds: list = []

    def record(row: dict) -> None:
        rounds.append((time.perf_counter() - PROCESS_START, row["round"], row["member"], row["value"]))

    interval = args.pbt_interval or (even_interval(args.steps, ROUNDS) if shrink else default_interval(args.steps))
    kept = halving(pbt_rounds(args.steps, interval), population) if shrink else None  # as tune's PBT method
    result = search_pbt(config, space, population=population, interval=interval,
                        seed=args.seed, callback=record, verbose=False,
                        compilation_cache=args.compilation_cache or False,  # cold unless the bench turns it on for all
                        shrink=kept or None)
    now = time.perf_counter() - PROCESS_START
    if keep_best:
        tests = {(t.generation, t.slot): t.metrics["test_accuracy"] for t in result.trials
                 if "test_accuracy" in t.metrics}
        timeline = [(seconds, math.nan if value is None else value, tests.get((round_index, member), math.nan))
                    for seconds, round_index, member, value in rounds]
    else:
        final = [trial for trial in result.trials.completed() if trial.fidelity == args.steps]
        timeline = [(now, trial.fitness, trial.metrics["test_accuracy"]) for trial in final]
    return {"population": population, "trials": population, "completed": population, "pruned": 0,
            "member_steps": trained_member_steps(t.fidelity for t in result.trials), "timeline": timeline}


def first_run_rows(runs: Sequence[dict]) -> list[dict]:
    """`vhjax_tune_first_run` rows: each `vhjax_tune` run's first PBT run alone (its trials up to
    the first restart; what `tune` ran before session 41), an ablation measured in the same process."""
    rows = []
    for run in runs:
        if run["contestant"] == "vhjax_tune" and run.get("first_run"):
            first = run["first_run"]
            rows.append({**{k: v for k, v in run.items() if k != "first_run"}, "contestant": "vhjax_tune_first_run",
                         "trials": first["trials"], "completed": first["trials"], "member_steps": first["member_steps"],
                         "timeline": first["timeline"], "wall": max(t for t, *_ in first["timeline"])})
    return rows


def trained_member_steps(fidelities) -> int:
    """Member-steps a PBT run trained, from its trials' fidelities (steps): each round's trials (the
    members that trained in it; fewer after a shrink) times the steps since the round before."""
    fidelities = [int(f) for f in fidelities]
    steps = sorted(set(fidelities))
    count = {step: fidelities.count(step) for step in steps}
    return sum(count[step] * (step - previous) for previous, step in zip([0, *steps], steps))


CONTESTANTS: dict[str, Callable[[Any], dict]] = {
    "vhjax_pbt": run_vhjax_pbt,
    "vhjax_pbt_best": lambda args: run_vhjax_pbt(args, keep_best=True),
    "vhjax_pbt_shrink": lambda args: run_vhjax_pbt(args, keep_best=True, shrink=True),
    "vhjax_tune": run_vhjax_tune,
    "vhjax_tune_asha": lambda args: run_vhjax_tune(args, "tpe"),
    "vhjax_tune_random": lambda args: run_vhjax_tune(args, "random"),
    "vhjax_tune_timeout": run_vhjax_tune,  # tune(..., timeout=--timeout): see `fixed_time_summary`
    "optuna_tpe": lambda args: run_optuna(args, "tpe", pruner=False),
    "optuna_random": lambda args: run_optuna(args, "random", pruner=False),
    "optuna_tpe_hb": lambda args: run_optuna(args, "tpe", pruner=True),
    "vhjax_tpe": lambda args: run_vhjax(args, "tpe"),
    "vhjax_random": lambda args: run_vhjax(args, "random"),
}


# --- processes -------------------------------------------------------------------------------------


def worker(args) -> None:
    """One contestant, one seed, in this (fresh) process; writes its record to --record."""
    if args.worker.startswith("vhjax") and args.cpu_devices != "1":  # before JAX starts: vhjax's recommended setup
        from vhjax.hardware import use_cpu_devices

        use_cpu_devices(args.cpu_devices if args.cpu_devices == "auto" else int(args.cpu_devices))
    if args.compilation_cache:
        from vhjax import compilation_cache

        compilation_cache.enable(args.compilation_cache)
    from vhjax.compilation_cache import count_compilations

    with count_compilations() as compiled:
        name, _, population = args.worker.partition(":")  # 'vhjax_tune:16': that contestant, population 16
        if population:
            args.population = int(population)
        record = CONTESTANTS[name](args)
    import jax

    record.update(contestant=args.worker, seed=args.seed, devices=len(jax.devices()), task=args.task, steps=args.steps,
                  wall=time.perf_counter() - PROCESS_START, compile_count=compiled.count,
                  compile_seconds=compiled.seconds, cache_hits=compiled.cache_hits,
                  compiled_functions=dict(compiled.by_function.most_common(12)),
                  compile_seconds_by_function={name: round(seconds, 2) for name, seconds
                                               in compiled.seconds_by_function.most_common(6)})
    Path(args.record).write_text(json.dumps(record))


def run_worker(args, contestant: str, seed: int, record: Path) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", contestant, "--seed", str(seed),
               "--record", str(record), "--task", args.task, "--trials", str(args.trials),
               "--steps", str(args.steps), "--cpu-devices", args.cpu_devices, "--conv-impl", args.conv_impl]
    if args.pbt_interval is not None:
        command += ["--pbt-interval", str(args.pbt_interval)]
    if args.population is not None:
        command += ["--population", str(args.population)]
    if args.compilation_cache:
        command += ["--compilation-cache", args.compilation_cache]
    if args.timeout is not None:
        command += ["--timeout", str(args.timeout)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    run = json.loads(record.read_text())
    print(f"  {contestant:14s} seed {seed}: {run['completed']}/{run['trials']} trials completed, "
          f"best val {final_pick(run['timeline'])[0]:.3f}, {run['wall']:.1f} s in process "
          f"({time.perf_counter() - started:.1f} s with start-up), {run['devices']} device(s)"
          f"{', population ' + str(run['population']) if 'population' in run else ''}, {run['compile_count']} compilations "
          f"({run['compile_seconds']:.1f} s)", flush=True)
    return run


def another_round_fits(elapsed: float, rounds_done: int, budget: float | None) -> bool:
    """Whether one more seed's round, as long as the mean round so far, ends within `budget` seconds."""
    return budget is None or elapsed + elapsed / rounds_done <= budget


# the same run under an earlier name: since session 40 `vhjax_tune` is the shrinking keep_best PBT
POOL_NAMES = {"vhjax_pbt_shrink": "vhjax_tune"}


def pooled_runs(paths: Sequence[str | Path], names: Mapping[str, str] = POOL_NAMES) -> list[dict]:
    """The worker records of earlier runs' result files, each seed named `<file stem>:<seed>`, so
    that every seed keeps the target of its own run (the reference's best in that run). Contestants
    are renamed by `names` (a file that holds both names keeps its own)."""
    runs = []
    for path in paths:
        records = json.loads(Path(path).read_text())["runs"]
        present = {run["contestant"] for run in records}
        for run in records:
            name = names.get(run["contestant"], run["contestant"])
            runs.append({**run, "seed": f"{Path(path).stem}:{run['seed']}",
                         "contestant": run["contestant"] if name in present else name})
    return runs


def plot(runs: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for run in runs:
        curve = [(t, b) for t, b, _ in best_so_far(run["timeline"]) if b > -math.inf]
        if not curve:
            continue
        name = run["contestant"]
        color = colors.setdefault(name, f"C{len(colors)}")
        curve.append((max(run["wall"], curve[-1][0]), curve[-1][1]))  # hold the best until the process ends
        t, b = zip(*curve)
        ax.step(t, b, where="post", color=color, alpha=0.8, label=name if name not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("wall time since process start (s)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="mnist1d_cnn")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST .. FIRST + SEEDS - 1 (fresh seeds confirm a setting chosen on others)")
    parser.add_argument("--population", type=int, default=None,
                        help="vhjax: candidates trained together (default: tune's own default, "
                             "4 per CPU device; vhjax_tpe/vhjax_random: 16; vhjax_pbt: 32)")
    parser.add_argument("--contestants", default=DEFAULT_CONTESTANTS)
    parser.add_argument("--reference", default="optuna_tpe", help="whose best validation accuracy sets the targets")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 trials of 100 steps, 1 seed, population 2")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="start another seed's round only if the rounds so far say it ends within SECONDS "
                             "of the benchmark's start (a device lease); the table covers the seeds finished")
    parser.add_argument("--tag", default="", help="suffix of the results' file names (keep an earlier run's tables)")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="enable JAX's persistent compilation cache in DIR in every process (default: off)")
    parser.add_argument("--cpu-devices", default="auto",
                        help="vhjax contestants: split the CPU into this many JAX devices ('auto': one per core, "
                             "vhjax.hardware.use_cpu_devices; '1': one device); the Optuna contestants train one "
                             "trial at a time on one device either way")
    parser.add_argument("--pbt-interval", type=int, default=None, metavar="STEPS",
                        help="vhjax_pbt, vhjax_pbt_best, vhjax_pbt_shrink: steps between exploit/explore rounds "
                             "(default: search_pbt's, about a tenth of --steps; vhjax_pbt_shrink about a thirtieth)")
    parser.add_argument("--conv-impl", choices=("auto", "patch", "xla"), default="auto",
                        help="vhjax contestants' convolution ('auto': vhjax's patch convolution on CPU, XLA's "
                             "native one on GPU/TPU); the Optuna trainer keeps 'auto'")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="vhjax_tune_timeout: tune(..., timeout=SECONDS); the run then also gets a table of "
                             "every contestant's pick when that process ended (`fixed_time_summary`)")
    parser.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                        help="run nothing: print the table of earlier runs' result files pooled, each seed "
                             "against its own run's reference (e.g. experiments/results/time_to_quality_session39_*.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--record", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.pool:
        runs = pooled_runs(args.pool)
        print(f"{len({run['seed'] for run in runs})} seeds from {len(args.pool)} file(s)\n")
        print(markdown_table(summarize(runs, args.reference), args.reference))
        return
    if args.quick:
        args.trials, args.steps, args.seeds, args.population = 4, 100, 1, 2
    if args.steps % REPORTS_PER_TRIAL or args.steps <= 0:
        parser.error(f"--steps {args.steps}: must be a positive multiple of {REPORTS_PER_TRIAL} (the pruner's rungs)")
    contestants = [c.strip() for c in args.contestants.split(",") if c.strip()]
    unknown = [c for c in contestants if c.split(":")[0] not in CONTESTANTS
               or (":" in c and not (c.startswith("vhjax") and c.split(":")[1].isdigit()))]
    if unknown:
        parser.error(f"unknown contestant(s) {unknown}; known: {', '.join(CONTESTANTS)}")
    if args.reference not in contestants:
        parser.error(f"--reference {args.reference!r} must be one of the contestants {contestants}")
    if ("vhjax_tune_timeout" in contestants) != (args.timeout is not None):
        parser.error("--timeout and the contestant vhjax_tune_timeout go together (one without the other: "
                     f"--timeout {args.timeout}, contestants {contestants})")

    stem = ("time_to_quality" + ("" if args.task == "mnist1d_cnn" else f"_{args.task}") + ("_quick" if args.quick else "")
            + args.tag)
    results_dir, figures_dir = ROOT / "experiments" / "results", ROOT / "experiments" / "figures"
    results_dir.mkdir(parents=True, exist_ok=True)
    task = TASKS[args.task]
    from vhjax.search.pbt_search import default_interval, even_interval
    from vhjax.search.tune_pbt import ROUNDS

    print(f"{args.task}: {task.describe}; {args.trials} trials x {args.steps} steps, {args.seeds} seed(s), "
          f"vhjax population {args.population or 'default'}", flush=True)
    started = time.perf_counter()
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        done = seed - args.first_seed
        if done and not another_round_fits(time.perf_counter() - started, done, args.time_budget):
            print(f"stopping after {done} seed(s): another round would pass --time-budget {args.time_budget:g} s",
                  flush=True)
            break
        for contestant in contestants:  # interleaved: A, B, ... for seed 0, then seed 1, ...
            runs.append(run_worker(args, contestant, seed, results_dir / f".{stem}_{contestant}_{seed}.json"))
            (results_dir / f".{stem}_{contestant}_{seed}.json").unlink()
    seeds_run = len({run["seed"] for run in runs})
    runs += first_run_rows(runs)
    summary = summarize(runs, args.reference)
    table = markdown_table(summary, args.reference)
    if args.timeout is not None:
        table += (f"\n\nPicks when vhjax_tune_timeout (--timeout {args.timeout:g}) ended, each seed at that process's "
                  "wall time; the others' picks among the trials they had finished by then:\n\n"
                  + fixed_time_table(fixed_time_summary(runs, "vhjax_tune_timeout"), "vhjax_tune_timeout"))
    import jax

    header = (f"Task {args.task}: {task.describe}. Searched: " + ", ".join(
        f"{n} in [{lo:g}, {hi:g}]{' (log)' if log else ''}" for n, lo, hi, log in task.space)
        + f". {args.trials} trials x {args.steps} Adam steps (batch 100) per contestant and seed, {seeds_run} seed(s); "
        f"vhjax population {args.population or f'default (tune: half the trials, its PBT method; tune_asha: 4 per CPU device, 16 on an accelerator; pbt: {DEFAULT_PBT_POPULATION})'}, vhjax CPU devices {args.cpu_devices}, vhjax convolution {args.conv_impl}, PBT interval {args.pbt_interval or f'default ({default_interval(args.steps)} steps; vhjax_pbt_shrink {even_interval(args.steps, ROUNDS)})'}, seeds {args.first_seed}-{args.first_seed + seeds_run - 1}. Times are medians over seeds, from each process's start "
        f"(imports, data, compilation, evaluation included). JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPU(s). Total wall time {time.perf_counter() - started:.0f} s.\n\n"
        f"Command: `python experiments/bench_time_to_quality.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    compiled = "\n".join(
        f"- {run['contestant']}: " + ", ".join(f"{name} x{count}" for name, count in run.get("compiled_functions", {}).items())
        + "; seconds: " + ", ".join(f"{name} {sec:.1f}" for name, sec in run.get("compile_seconds_by_function", {}).items())
        for run in runs if run["seed"] == args.first_seed)
    (results_dir / f"{stem}.md").write_text(header + "\n" + table + f"\n\nMost compiled functions (seed {args.first_seed}, top 12; "
                                            "compile seconds of the top 6):\n\n" + compiled + "\n")
    (results_dir / f"{stem}.json").write_text(json.dumps({"args": vars(args), "runs": runs, "summary": summary},
                                                         default=str))
    plot(runs, figures_dir / f"{stem}.png", f"{args.task}: best validation accuracy vs wall time")
    print("\n" + table)
    print(f"\nwrote {results_dir / (stem + '.md')}, {results_dir / (stem + '.json')}, {figures_dir / (stem + '.png')}")


if __name__ == "__main__":
    main()
