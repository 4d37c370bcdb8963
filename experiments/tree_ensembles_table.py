"""Tree ensembles beside networks on MNIST-1D and digits: tuned trees, a deep ensemble, and both combined.

Protocol ours. Per dataset and seed: `train[:90%]` fits, `train[90%:]` is the validation split
(tree search, ensemble weights, stacking), `test` is reported.

- Trees: every kind of `vhjax.ensemble.trees` (random forest, extra trees, scikit-learn's histogram
  GBDT, LightGBM, XGBoost when installed) is tuned by `vhjax.search` with TPE over
  `tree_space(kind, size=...)` (a third of the budget random start-up trials), fitness = validation
  accuracy; the best trial is refitted (same seed: the same model) and scored on test.
- Networks: a deep ensemble of 5 members trained by `vhjax.ensemble.train.deep_ensemble` (one
  population): the MNIST-1D paper CNN (`mnist1d_cnn`) and a small 2-D CNN on digits (conv 16, conv 32,
  dense 64, as experiments/bench_time_to_quality.py's digits task); Adam, batch 100.
- Heterogeneous ensembles: the 5 tree picks and the 5 networks as 10 members of one `(M, N, C)` array
  (`trees.stack_probs`), combined by `vhjax.ensemble.combine`: average, `fit_weights`,
  `caruana_selection`, `fit_stacking`, all fitted on validation.

The networks alone are also combined by `fit_weights` and `fit_stacking` (on validation), so the
heterogeneous rows can be read against the same rule without trees.

Wall time per row: tree rows the search plus the refit; the deep-ensemble row the training of the 5
members; the combined rows only their combiner (fitting plus predicting; the members come from the
rows above).
Libraries run one thread each (`n_jobs=1`, `OMP_NUM_THREADS=1` unless set).

Command:  python experiments/tree_ensembles_table.py --seeds 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before scikit-learn / LightGBM load OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from vhjax import calibration, search  # noqa: E402
from vhjax.config import TrainConfig  # noqa: E402
from vhjax.data import load  # noqa: E402
from vhjax.ensemble import combine, trees  # noqa: E402
from vhjax.ensemble.train import deep_ensemble  # noqa: E402
from vhjax.hardware import describe  # noqa: E402
from vhjax.search.space import Float, Space  # noqa: E402

SPLITS = ("train[:90%]", "train[90%:]", "test")
NETWORKS = {  # dataset: (label, model, model_kwargs, steps, learning rate)
    "mnist1d": ("CNN (mnist1d_cnn)", "mnist1d_cnn", {}, 3000, 1e-2),
    "digits": ("CNN (2-D, conv 16/32)", "cnn2d",
               {"conv_layers": ((16, 3, 1, "SAME"), (32, 3, 1, "SAME")), "head_widths": (64,)}, 1000, 3e-3),
}
NAMES = {"random_forest": "random forest", "extra_trees": "extra trees", "gbdt": "HistGBDT (scikit-learn)",
         "lightgbm": "LightGBM", "xgboost": "XGBoost"}
NET_SIZE = 5


def scores(probs, y) -> dict[str, float]:
    m = calibration.calibration_metrics(np.asarray(probs, np.float32), y)
    return {k: m[k] for k in ("accuracy", "nll", "ece")}


def tune_trees(kind: str, train, val, test, seed: int, args) -> tuple[dict, trees.TreeModel, dict]:
    """TPE over the kind's default space; returns (test scores, the refitted pick, details)."""
    tick = time.time()
    threads = {} if kind == "gbdt" else {"n_jobs": 1}  # scikit-learn's GBDT has no n_jobs: OMP_NUM_THREADS
    objective = trees.TreeObjective(kind, train.x, train.y, val.x, val.y, seed=seed, classes=10, **threads)
    result = search(objective, trees.tree_space(kind, size=tuple(args.size)), "tpe", budget=args.budget,
                    population=args.population, seed=seed, verbose=False,
                    strategy_kwargs={"n_startup_trials": max(1, args.budget // 3)})
    model = objective.fit(result.best.params)
    seconds = time.time() - tick
    row = {**scores(model.predict_proba(test.x), test.y), "seconds": seconds}
    failed = sum(t.status == "failed" for t in result.trials)
    return row, model, {"params": result.best.params, "val_accuracy": result.best.fitness, "failed": failed}


def train_networks(name: str, seed: int) -> tuple[dict, object, float]:
    label, model, kwargs, steps, lr = NETWORKS[name]
    config = TrainConfig(dataset=name, model=model, model_kwargs=kwargs, steps=steps, eval_every=steps,
                         batch_size=100, learning_rate=lr, train_split=SPLITS[0], eval_split=SPLITS[1],
                         test_split=SPLITS[2], seed=seed)
    tick = time.time()
    ensemble, _ = deep_ensemble(config, NET_SIZE, Path(tempfile.mkdtemp(prefix=f"trees_{name}_{seed}_")))
    return {"label": label}, ensemble, time.time() - tick


def run_seed(name: str, seed: int, args) -> dict:
    train, val, test = (load(name, split) for split in SPLITS)
    rows, details = {}, {}
    models = []
    for kind in args.kinds:
        label = f"{NAMES[kind]} (TPE, {args.budget} trials)"
        rows[label], model, details[kind] = tune_trees(kind, train, val, test, seed, args)
        models.append(model)
        print(f"  {name} seed {seed} {kind}: test acc {rows[label]['accuracy']:.3f} "
              f"({rows[label]['seconds']:.0f} s) {details[kind]}", flush=True)
    tree_val, tree_test = trees.stack_probs(*models, x=val.x), trees.stack_probs(*models, x=test.x)
    tick = time.time()
    rows[f"trees: average of the {len(models)} picks"] = {**scores(combine.average(tree_test), test.y),
                                                         "seconds": time.time() - tick}
    info, networks, seconds = train_networks(name, seed)
    net_val, net_test = networks.member_probs(val.x), networks.member_probs(test.x)
    singles = [scores(p, test.y) for p in np.asarray(net_test)]
    rows[f"{info['label']}: one member (mean of {NET_SIZE})"] = {  # trained in the ensemble's run
        **{k: float(np.mean([s[k] for s in singles])) for k in singles[0]}, "seconds": None}
    rows[f"{info['label']}: deep ensemble ({NET_SIZE}, average)"] = {
        **scores(combine.average(np.asarray(net_test)), test.y), "seconds": seconds}
    print(f"  {name} seed {seed} networks: {NET_SIZE} members in {seconds:.0f} s", flush=True)
    tick = time.time()  # the same combiners on the networks alone: what the trees add
    cnn_weights = combine.fit_weights(net_val, val.y)
    rows[f"{info['label']}: weighted (val-fit)"] = {
        **scores(combine.weighted_average(net_test, cnn_weights), test.y), "seconds": time.time() - tick}
    tick = time.time()
    cnn_meta = combine.fit_stacking(net_val, val.y)
    rows[f"{info['label']}: stacking (val meta-learner)"] = {
        **scores(combine.stacking_predict(cnn_meta, net_test), test.y), "seconds": time.time() - tick}
    # heterogeneous: trees and networks on one member axis
    both_val, both_test = trees.stack_probs(tree_val, net_val), trees.stack_probs(tree_test, net_test)
    m = both_val.shape[0]
    tick = time.time()
    rows[f"trees + CNNs: average ({m})"] = {**scores(combine.average(both_test), test.y), "seconds": time.time() - tick}
    tick = time.time()
    weights = combine.fit_weights(both_val, val.y)
    rows["trees + CNNs: weighted (val-fit)"] = {**scores(combine.weighted_average(both_test, weights), test.y),
                                               "seconds": time.time() - tick}
    tick = time.time()
    caruana, _ = combine.caruana_selection(both_val, val.y)
    rows["trees + CNNs: Caruana selection (val)"] = {
        **scores(combine.weighted_average(both_test, caruana), test.y), "seconds": time.time() - tick}
    tick = time.time()
    meta = combine.fit_stacking(both_val, val.y)
    rows["trees + CNNs: stacking (val meta-learner)"] = {
        **scores(combine.stacking_predict(meta, both_test), test.y), "seconds": time.time() - tick}
    n_trees = len(models)
    details["weights_on_trees"] = {"weighted": float(weights[:n_trees].sum()),
                                   "caruana": float(caruana[:n_trees].sum())}
    details["stacking_l2"] = float(meta["l2"])
    return {"rows": rows, "details": details}


def mean_std(values) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def table(name: str, runs: list[dict]) -> str:
    labels = list(runs[0]["rows"])
    lines = [f"#### {name} ({len(runs)} seeds)", "",
             "| model | test accuracy | test NLL | test ECE | wall s |", "|---|---|---|---|---|"]
    for label in labels:
        cells = [mean_std([r["rows"][label][k] for r in runs]) for k in ("accuracy", "nll", "ece")]
        seconds = [r["rows"][label]["seconds"] for r in runs]
        wall = "(in the row below)" if None in seconds else f"{np.mean(seconds):.1f}"
        lines.append(f"| {label} | {' | '.join(cells)} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--kinds", nargs="+", default=list(trees.available_kinds()), choices=trees.KINDS)
    parser.add_argument("--budget", type=int, default=12, help="trials per tree search")
    parser.add_argument("--population", type=int, default=4, help="trials per search generation")
    parser.add_argument("--size", type=int, nargs=2, default=(8, 64), help="range of trees / boosting rounds")
    parser.add_argument("--out", default="/tmp/tree_ensembles_table.json")
    args = parser.parse_args()
    start = time.time()
    hardware = f"{describe()}; {platform.platform()}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    print(f"hardware: {hardware}", flush=True)
    # start JAX and the search machinery once, so the first tree row does not carry it
    search(lambda batch: np.zeros(len(batch)), Space({"u": Float(0.0, 1.0)}), "tpe", budget=2, verbose=False)
    results, tables = {}, []
    for name in args.datasets:
        results[name] = [run_seed(name, seed, args) for seed in range(args.seeds)]
        tables.append(table(name, results[name]))
        print(tables[-1], flush=True)
    wall = time.time() - start
    details = {name: [r["details"] for r in runs] for name, runs in results.items()}
    Path(args.out).write_text(json.dumps({"args": vars(args), "hardware": hardware, "wall_seconds": wall,
                                          "results": results}, indent=1, default=str))
    print("\n\n".join(tables))
    print(f"\ndetails: {json.dumps(details, default=str)}")
    print(f"\nhardware: {hardware}\nwall time: {wall:.0f} s ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
