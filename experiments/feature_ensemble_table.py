"""Feature ensembles against decision-level ensembles on MNIST-1D; the L1 path on digits pixels.

MNIST-1D (protocol ours): per seed ONE population (`fit_population`, one compiled program) of 6
MNIST-1D MLPs (`mnist1d_mlp`, 40-100-100 residual-10) with diverse hyperparameters (learning rate
3e-4..3e-2, dropout 0..0.2, weight decay 0 or 1e-4), 2000 steps, batch 100, Adam. Splits:
train[:80%] trains the members, train[80%:] (800 examples) fits every combiner (stacking's
meta-learner, the feature ensembles and their CV-chosen penalties) and picks the best member, test
(1000) is reported. Feature ensembles: a multinomial logistic regression on the members'
penultimate features (the input of 'head', 100 per member, 600 in all; `vhjax.ensemble.features`),
without penalty, with L1 (selects features) and with group lasso (selects members), the penalty
chosen by 5-fold CV on the 800 examples over 12 values (lowest NLL, or '1se': the sparsest within
one standard error), 1000 proximal-gradient steps; and, as a control, the best member's 100
features alone with L1 (a new head for one member). Stacking (decision level) is
`Ensemble.fit('stacking', ...)`.

Digits (interpretability): the same fusion on raw 8x8 pixels (one pseudo-member, 64 features),
fit on the training split (1437), the L1 path (one vmapped program) reported on the test split
(360): accuracy vs pixels kept. The fit is convex and deterministic: one run. The kept pixels at
a sparse point of the path and at the CV choice are drawn to experiments/figures/.

Command:  python experiments/feature_ensemble_table.py             (3 seeds)
          python experiments/feature_ensemble_table.py --quick     (1 seed, 300 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU (shared): 485 s (session 56); --quick about 2 min.
Writes feature_ensemble.md into --out (if given) and experiments/figures/feature_ensemble_digits_pixels.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vhjax import calibration
from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.ensemble import Ensemble
from vhjax.ensemble import features as F
from vhjax.hardware import describe
from vhjax.population import fit_population

ROOT = Path(__file__).resolve().parent
MEMBERS = [{"learning_rate": 3e-4, "dropout_rate": 0.0}, {"learning_rate": 1e-3, "dropout_rate": 0.1},
           {"learning_rate": 3e-3, "dropout_rate": 0.0}, {"learning_rate": 3e-3, "dropout_rate": 0.2,
                                                          "weight_decay": 1e-4},
           {"learning_rate": 1e-2, "dropout_rate": 0.1}, {"learning_rate": 3e-2, "dropout_rate": 0.0}]
STEPS_FIT = 1000  # proximal-gradient steps of every fusion fit (500 leave a few more features at small l1)
GRID = 12  # l1 values per CV, geometric from l1_max down to 1e-3 of it


def scores(probs, y) -> dict[str, float]:
    m = calibration.calibration_metrics(probs, y)
    return {"accuracy": float(m["accuracy"]), "nll": float(m["nll"])}


def run_seed(seed: int, steps: int) -> dict:
    config = TrainConfig(dataset="mnist1d", model="mnist1d_mlp", steps=steps, eval_every=steps // 4, batch_size=100,
                         train_split="train[:80%]", eval_split="train[80%:]", test_split="test", dropout_rate=0.1,
                         seed=seed)
    val, test = load("mnist1d", "train[80%:]"), load("mnist1d", "test")
    timing: dict[str, float] = {}
    tick = time.perf_counter()
    result = fit_population(config, MEMBERS, Path(tempfile.mkdtemp(prefix=f"featens_{seed}_")), same_batches=False,
                            verbose=False)
    timing["population"] = time.perf_counter() - tick
    ensemble = Ensemble.from_population(result, config)
    val_probs, test_probs = ensemble.member_probs(val.x), ensemble.member_probs(test.x)
    val_acc = np.mean(np.argmax(np.asarray(val_probs), -1) == val.y, axis=1)
    rows: dict[str, dict] = {}
    rows["best single member (val-selected)"] = scores(test_probs[int(np.argmax(val_acc))], test.y)
    rows["average (decision level)"] = scores(ensemble.combine(test_probs), test.y)
    tick = time.perf_counter()
    stacked = ensemble.fit("stacking", val.x, val.y)
    rows["stacking (decision level, CV L2)"] = scores(stacked.combine(test_probs), test.y)
    timing["stacking"] = time.perf_counter() - tick
    tick = time.perf_counter()
    val_feats, test_feats = F.ensemble_features(ensemble, val.x), F.ensemble_features(ensemble, test.x)
    timing["features"] = time.perf_counter() - tick
    total = sum(f.shape[1] for f in val_feats)
    best = int(np.argmax(val_acc))
    fits = {"features of the best member alone, L1 (CV min NLL)": dict(group=False, members=[best]),
            "feature fusion, no penalty": dict(l1=0.0),
            "feature fusion, L1 (CV min NLL)": dict(group=False),
            "feature fusion, L1 (CV 1se)": dict(group=False, cv_rule="1se"),
            "feature fusion, group lasso (CV min NLL)": dict(group=True),
            "feature fusion, group lasso (CV 1se)": dict(group=True, cv_rule="1se")}
    shares = {}
    for label, options in fits.items():
        tick = time.perf_counter()
        keep = options.pop("members", range(len(val_feats)))
        fit_feats, eval_feats = [val_feats[i] for i in keep], [test_feats[i] for i in keep]
        meta = F.fit_feature_ensemble(fit_feats, val.y, steps=STEPS_FIT, grid=GRID, seed=seed, **options)
        timing[label] = time.perf_counter() - tick
        row = scores(F.feature_ensemble_predict(meta, eval_feats), test.y)
        row["features"] = int(F.selected(meta).sum())
        row["members"] = int(np.sum(F.member_shares(meta) > 0))
        row["l1"] = float(meta["l1"])
        rows[label] = row
        shares[label] = F.member_shares(meta) if len(keep) == len(val_feats) else None
    for label in rows:
        rows[label].setdefault("features", None)
    rows["average (decision level)"]["members"] = rows["stacking (decision level, CV L2)"]["members"] = len(val_feats)
    rows["best single member (val-selected)"]["members"] = 1
    return {"rows": rows, "timing": timing, "total_features": total, "val_acc": val_acc.tolist(),
            "test_acc": np.mean(np.argmax(np.asarray(test_probs), -1) == test.y, axis=1).tolist(), "shares": shares}


def cell(values, digits=3) -> str:
    values = np.asarray([v for v in values if v is not None], np.float64)
    return "–" if values.size == 0 else f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def mnist1d_table(runs: list[dict]) -> list[str]:
    total = runs[0]["total_features"]
    lines = [f"| combiner | test accuracy | test NLL | features kept (of {total}) | members kept (of {len(MEMBERS)}) |",
             "|---|---|---|---|---|"]
    for label in runs[0]["rows"]:
        rows = [r["rows"][label] for r in runs]
        lines.append(f"| {label} | {cell([r['accuracy'] for r in rows])} | {cell([r['nll'] for r in rows])} | "
                     f"{cell([r['features'] for r in rows], 1)} | {cell([r.get('members') for r in rows], 1)} |")
    return lines


def member_lines(runs: list[dict]) -> list[str]:
    lines = ["| member | hyperparameters | test accuracy alone | share of weight, L1 (CV min) | "
             "share of weight, group lasso (CV 1se) |", "|---|---|---|---|---|"]
    for m, member in enumerate(MEMBERS):
        hp = ", ".join(f"{k} {v:g}" for k, v in member.items())
        lines.append(f"| {m} | {hp} | {cell([r['test_acc'][m] for r in runs])} | "
                     f"{cell([r['shares']['feature fusion, L1 (CV min NLL)'][m] for r in runs])} | "
                     f"{cell([r['shares']['feature fusion, group lasso (CV 1se)'][m] for r in runs])} |")
    return lines


def digits_path(figure: Path | None) -> tuple[list[str], dict]:
    train, test = load("digits", "train"), load("digits", "test")
    x, x_test = train.x.reshape(len(train.y), -1), test.x.reshape(len(test.y), -1)
    tick = time.perf_counter()
    top = F.l1_max(x, train.y)
    values = [float(v) for v in top * np.geomspace(1.0, 1e-3, 19)[1:]] + [0.0]
    path = F.feature_path(x, train.y, values, steps=STEPS_FIT)
    chosen = F.fit_feature_ensemble(x, train.y, steps=STEPS_FIT, grid=GRID)
    seconds = time.perf_counter() - tick
    lines = ["| l1 | pixels kept (of 64) | test accuracy | test NLL |", "|---|---|---|---|"]
    points = []
    for meta in path + [chosen]:
        s = scores(F.feature_ensemble_predict(meta, x_test), test.y)
        kept = int(F.selected(meta).sum())
        label = f"{float(meta['l1']):.4g}" + (" (CV min NLL)" if meta is chosen else "")
        lines.append(f"| {label} | {kept} | {s['accuracy']:.3f} | {s['nll']:.3f} |")
        points.append((kept, s["accuracy"], meta))
    sparse = min((p for p in points[:-1] if p[0] >= 8), key=lambda p: p[0])
    info = {"seconds": seconds, "sparse": sparse[:2], "chosen": points[-1][:2],
            "key": F.key_features(sparse[2], top=8)}
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
        axes[0].imshow(x.mean(0).reshape(8, 8), cmap="gray_r")
        axes[0].set_title("mean training digit", fontsize=8)
        for ax, (kept, acc, meta) in zip(axes[1:], (sparse, points[-1])):
            ax.imshow(np.linalg.norm(meta["kernel"], axis=1).reshape(8, 8), cmap="viridis")
            ax.set_title(f"{kept} pixels kept, test acc {acc:.3f}", fontsize=8)
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle("L1 feature ensemble on digits pixels: weight norm per pixel (0 = dropped)", fontsize=8)
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=120)
        plt.close(fig)
        info["figure"] = str(figure.relative_to(ROOT.parent))
    return lines, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 steps (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=None, help="folder for feature_ensemble.md (not written if not given)")
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 300
    started = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args.steps))
        timing = runs[-1]["timing"]
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()), flush=True)
    figure = None if args.no_figure or args.quick else ROOT / "figures" / "feature_ensemble_digits_pixels.png"
    digits_lines, info = digits_path(figure)
    wall = time.perf_counter() - started
    timing = {k: np.mean([r["timing"][k] for r in runs]) for k in runs[0]["timing"]}
    out = [f"Hardware: {describe()}. Wall time {wall:.0f} s for {args.seeds} seed(s) and the digits path.", "",
           f"MNIST-1D, {len(MEMBERS)} members x {args.steps} steps in one population per seed, mean ± std over "
           f"{args.seeds} seed(s); combiners fit on train[80%:] (800), reported on test (1000):", "",
           *mnist1d_table(runs), "", "Members (share of the fusion's weight norm per member):", "",
           *member_lines(runs), "",
           "Mean seconds per seed: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()), "",
           f"Digits raw pixels (L1 path fit on 1437 training images, reported on 360 test; {info['seconds']:.1f} s "
           "incl. compilation):", "", *digits_lines, "",
           f"Sparse point with {info['sparse'][0]} pixels: top pixels (row, col, weight) "
           + ", ".join(f"({k['feature'] // 8}, {k['feature'] % 8}, {k['weight']:.2f})" for k in info["key"])
           + (f". Figure: {info['figure']}" if "figure" in info else ""), ""]
    print("\n".join(out), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "feature_ensemble.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
