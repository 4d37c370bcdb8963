"""Fine-tune modes and simulated annealing over weights on the transfer-mask search's protocol (issue 13 §2/§5).

Source, target and fine-tune budget are those of experiments/transfer_mask_search.py (imported from
it): a 4-layer MLP trained on MNIST-1D (default generator) -> MNIST-1D from other generator
settings, 20 labelled signals per class, 500 validation signals, 1000 test signals, `steps`
fine-tune steps. Rows per training seed:

- scratch: the target model from its fresh initialisation (Adam, the config's learning rate);
- every mode of `vhjax.transfer.MODES`, the members of ONE `fit_from` population and one bucket
  (`mode_member`: the mode as per-member update scales and start steps): direct, feature_extractor,
  fine_tune_last (last 2 layers), freeze (hidden_0), full, layerwise_lr (decay 0.5), gradual
  (unfreezing in one run: the head from step 0, each earlier layer 50 steps after the next);
- SA over weights (`vhjax.transfer.anneal`): `--chains` chains as the members of one program, each
  step a gradient step of size `--step-size` plus Gaussian noise sqrt(2 * step_size * T) and
  Metropolis acceptance; energy = target validation error + `--source-weight` x source-domain
  error (500 MNIST-1D test signals of the source's generator); per-chain initial temperatures
  `--temperatures`, exponential cooling to `--final-fraction` of them at the last step; `steps`
  steps (the fine-tune budget). Reported: the test accuracy of the lowest best-energy chain's
  best-energy weights ("SA, best-energy weights"), and of the lowest final-energy chain's final
  weights ("SA, final weights");
- its ablation, plain fine-tuning from the same start with the same budget: the same chains as
  members of one `fit_from` population (plain SGD at learning rate `--step-size`, the chains'
  seeds and so their minibatches), no noise, no acceptance test; the member with the lowest final
  energy (same energy) is reported.

Values are mean +- std (ddof 0) of test accuracy over training seeds. The protocol is ours.

Command:  python experiments/transfer_weight_anneal.py            (full: 3 training seeds)
          python experiments/transfer_weight_anneal.py --quick    (smaller MLP, fewer steps, 1 seed)
          python experiments/transfer_weight_anneal.py --modes-only  (the fine-tune modes' rows only)
Runtime:  2-core AMD EPYC CPU, shared with other jobs (load average 14-17): full 18.6 minutes, --quick 3.4 minutes.
Results:  experiments/README.md, "Transfer-mask search" (sub-table "Fine-tune modes and SA over weights").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_mask_search import source_model, summary, target_splits  # noqa: E402

from vhjax.config import TrainConfig  # noqa: E402
from vhjax.population import fit_population  # noqa: E402
from vhjax.population.fit import bucket_task  # noqa: E402
from vhjax.train.step import apply_model  # noqa: E402
from vhjax.transfer import anneal, fit_from  # noqa: E402
from vhjax.transfer.annealing import energy_fn  # noqa: E402
from vhjax.transfer.modes import mode_member  # noqa: E402

MODE_ROWS = (("direct", {}), ("feature_extractor", {}), ("fine_tune_last", {"last": 2}),
             ("freeze", {"frozen": ["hidden_0"]}), ("full", {}), ("layerwise_lr", {"decay": 0.5}),
             ("gradual", {"stage_steps": 50}))
ROWS = ("scratch", *(mode for mode, _ in MODE_ROWS), "SA, best-energy weights", "SA, final weights",
        "plain SGD fine-tune (SA ablation)")


def target_config(seed: int, widths: tuple, steps: int, per_class: int = 20, val: int = 500) -> TrainConfig:
    """The mask search's target config for one training seed."""
    return TrainConfig(dataset=target_splits(seed, per_class, val), eval_split="val", test_split="test", model="mlp",
                       model_kwargs={"widths": widths, "num_classes": 10}, batch_size=min(50, 10 * per_class),
                       steps=steps, eval_every=steps, learning_rate=3e-3, seed=seed)


def ordered_params(result) -> dict:
    """A one-bucket `PopulationResult`'s params, leaves (members, ...) in member order."""
    order = np.array([record["position"] for record in result.members])
    return jax.tree.map(lambda leaf: np.asarray(leaf)[order], result.states[0].members.params)


def accuracies(config: TrainConfig, params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy on (x, y) of each member of stacked params (no model state: the MLP has none)."""
    task = bucket_task(config)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)

    def one(p):
        outputs, _ = apply_model(task, p, {}, task.default_hparams, x, train=False)
        return jnp.mean(jnp.argmax(outputs, -1) == y)

    return np.asarray(jax.jit(jax.vmap(one))(params))


def energies(config: TrainConfig, params: dict, source_data: tuple, source_weight: float) -> np.ndarray:
    """`anneal`'s energy ('error': validation error + source_weight x source error) of stacked params."""
    task = bucket_task(config)
    energy = energy_fn(task, "error", [(task.eval.x, task.eval.y), source_data], [1.0, float(source_weight)])
    return np.asarray(jax.jit(jax.vmap(lambda p: energy(p, {})))(params))


def scratch_row(config: TrainConfig) -> float:
    result = fit_population(config, [{"seed": config.seed}], mesh=None, verbose=False)
    return float(result.members[0]["test"]["accuracy"])


def mode_rows(config: TrainConfig, source: dict) -> dict[str, float]:
    """Test accuracy of each fine-tune mode: one `fit_from` population, one bucket (checked)."""
    members = [{**mode_member(mode, **options), "seed": config.seed} for mode, options in MODE_ROWS]
    result = fit_from(config, source, members, verbose=False)
    if len(result.states) != 1:
        raise RuntimeError(f"the modes trained as {len(result.states)} buckets; expected one")
    return {mode: float(record["test"]["accuracy"]) for (mode, _), record in zip(MODE_ROWS, result.members)}


def anneal_rows(config: TrainConfig, source: dict, source_data: tuple, args) -> tuple[dict[str, float], dict]:
    """SA over weights and its plain-SGD ablation (same chains, seeds, start, step size and steps)."""
    temps = [float(t) for t in args.temperatures.split(",")]
    chains = len(temps)
    decay = args.final_fraction ** (1.0 / max(1, config.steps - 1))
    sa = anneal(config, source, chains, steps=config.steps, temperature=temps, step_size=args.step_size,
                schedule="exponential", decay=decay, energy="error", source_data=source_data,
                source_weight=args.source_weight)
    best = int(np.argmin(sa.best_energy))
    last = int(np.argmin(sa.energy[:, -1]))
    sgd = dataclasses.replace(config, optimizer="sgd", learning_rate=args.step_size)
    plain = fit_from(sgd, source, [{"seed": config.seed + c} for c in range(chains)], same_batches=False,
                     verbose=False)
    plain_params = ordered_params(plain)
    plain_energy = energies(config, plain_params, source_data, args.source_weight)
    chosen = int(np.argmin(plain_energy))
    pick = lambda b, f, p: np.concatenate([b[best:best + 1], f[last:last + 1], p[chosen:chosen + 1]])
    candidates = jax.tree.map(pick, sa.best_params, sa.params, plain_params)  # one evaluation for the three
    test = accuracies(config, candidates, *config.dataset["test"])
    rows = {"SA, best-energy weights": float(test[0]), "SA, final weights": float(test[1]),
            "plain SGD fine-tune (SA ablation)": float(test[2])}
    detail = {"start energy": float(sa.energy[0, 0]), "SA best energy": float(sa.best_energy[best]),
              "SA final energy": float(sa.energy[last, -1]), "SGD final energy": float(plain_energy[chosen]),
              "SA acceptance per chain": np.round(sa.acceptance_rate(), 2).tolist(),
              "SA best chain": best, "SGD chosen member": chosen}
    return rows, detail


def run_seed(config: TrainConfig, source: dict, source_data: tuple, args) -> tuple[dict[str, float], dict]:
    """Every row for one training seed (only the modes' with `--modes-only`), and the annealing's energies."""
    if args.modes_only:
        return mode_rows(config, source), {}
    rows = {"scratch": scratch_row(config), **mode_rows(config, source)}
    annealed, detail = anneal_rows(config, source, source_data, args)
    return {**rows, **annealed}, detail


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small MLP, few steps, 1 training seed")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds")
    parser.add_argument("--source-weight", type=float, default=0.1, help="weight of the source error in SA's energy")
    parser.add_argument("--temperatures", default="0.001,0.003,0.01,0.03",
                        help="comma-separated initial temperature per SA chain (their number = chains)")
    parser.add_argument("--final-fraction", type=float, default=0.01, help="T at the last step / T0 (exp. cooling)")
    parser.add_argument("--step-size", type=float, default=0.05, help="SA gradient step size = the ablation's SGD lr")
    parser.add_argument("--modes-only", action="store_true", help="only the fine-tune modes' rows (one population)")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, list[float]]:
    args = parse_args(argv)
    widths, source_steps, steps = ((100, 100, 100), 3000, 200) if not args.quick else ((32, 32, 32), 600, 60)
    if args.quick:
        args.seeds = 1
    started = time.perf_counter()
    source, source_data = source_model(widths, source_steps)
    rows: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        values, detail = run_seed(target_config(seed, widths, steps), source, source_data, args)
        for name, value in values.items():
            rows.setdefault(name, []).append(value)
        print(f"seed {seed}: {detail}; {time.perf_counter() - started:.0f}s", flush=True)
    print("\n| method | test accuracy |\n|---|---|")
    shown = [name for name in ROWS if name in rows]
    for name in shown:
        print(f"| {name} | {summary(rows[name])} |")
    print("per training seed: " + "; ".join(f"{name} {[round(v, 3) for v in rows[name]]}" for name in shown))
    print(f"\nwall time {time.perf_counter() - started:.0f}s ({'--quick' if args.quick else 'full'}: {args.seeds} "
          f"training seed(s), {steps} steps, chains T0 {args.temperatures}, step size {args.step_size})")
    return rows


if __name__ == "__main__":
    main()
