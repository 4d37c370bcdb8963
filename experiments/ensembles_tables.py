"""Ensembles, calibration, OOD detection and robustness on MNIST-1D and digits, from populations.

Per dataset and seed, ONE population (one compiled, vmapped program) holds 8 members with learning
rates log-spaced in [1e-3, 3e-2] and 5 identical members (learning rate 3e-3): the first 8 are a
small "search", the last 5 a deep ensemble (each member has its own initialisation and data order).
All members train with dropout 0.1 (so MC dropout applies). Splits: train[:90%] to train,
train[90%:] as validation (member selection, ensemble weights, stacking, temperature), test to report.
Bagging, snapshot and boosting ensembles run on `vhjax.ensemble.train_members` (the population engine),
as does adversarial training with a per-member epsilon.

Command:  python experiments/ensembles_tables.py --seeds 3
Hardware: 2-core CPU (shared). Writes experiments/results/ensembles_tables.md and
experiments/figures/ensembles_*.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import calibration, metrics, models
from vhjax.config import TrainConfig
from vhjax.data import load
from vhjax.ensemble import Ensemble, bagging, boosting, snapshot_ensemble, adversarial_training
from vhjax.hardware import describe
from vhjax.inspect import attributions as attr
from vhjax.inspect import plots, robust_accuracy_curve
from vhjax.population import fit_population

ROOT = Path(__file__).resolve().parent
DATASETS = {
    # name: (model, model_kwargs, steps, eps_linf, eps_l2, ood)
    "mnist1d": ("mnist1d_mlp", {}, 2000, (0.1, 0.2), (0.5, 1.0), "mnist1d_shuffled"),
    "digits": ("mlp", {"widths": (64,)}, 800, (0.05, 0.1), (0.5, 1.0), "uniform noise"),
}
LRS = list(np.geomspace(1e-3, 3e-2, 8))
# one module object per dataset, so the own-loop programs compile once and serve every seed
MODELS = {name: models.get_model(spec[0], **spec[1]) for name, spec in DATASETS.items()}
DEEP_LR, DEEP_SIZE = 3e-3, 5


def ensemble_logits_fn(ensemble: Ensemble):
    """log of the ensemble's probabilities as a differentiable function of the input (for attacks)."""
    group = ensemble.groups[0]

    def fn(x):
        logits = jax.vmap(lambda v: group.model.apply(v, x, train=False, dropout_rate=0.0))(group.variables)
        return jnp.log(jnp.mean(jax.nn.softmax(logits, -1), 0) + 1e-12)

    return fn


def member_logits_fn(group, index):
    variables = group.member(index)
    return lambda x: group.model.apply(variables, x, train=False, dropout_rate=0.0)


def scores(probs, y):
    m = calibration.calibration_metrics(probs, y)
    return {k: m[k] for k in ("accuracy", "nll", "ece")}


def run_seed(name: str, seed: int, args, figures: bool, reused: dict | None = None) -> dict:
    model_name, kwargs, steps, eps_linf, eps_l2, ood_name = DATASETS[name]
    steps = args.steps or steps
    config = TrainConfig(dataset=name, model=model_name, model_kwargs=kwargs, steps=steps, eval_every=steps // 4,
                         batch_size=100, train_split="train[:90%]", eval_split="train[90%:]", test_split="test",
                         dropout_rate=0.1, seed=seed)
    members = [{"learning_rate": float(lr)} for lr in LRS] + [{"learning_rate": DEEP_LR}] * DEEP_SIZE
    out: dict = {"timing": {}}
    tick = time.time()
    workdir = Path(tempfile.mkdtemp(prefix=f"ens_{name}_{seed}_"))
    result = fit_population(config, members, workdir, same_batches=False, verbose=False)
    out["timing"]["population"] = time.time() - tick
    train, val, test = load(name, "train[:90%]"), load(name, "train[90%:]"), load(name, "test")
    population = Ensemble.from_population(result, config)
    alive = [int(n) for n in population.names]
    val_probs = population.member_probs(val.x)
    test_probs = population.member_probs(test.x)
    val_acc = np.asarray(jnp.mean(jnp.argmax(val_probs, -1) == val.y, axis=1))
    best = int(np.argmax(val_acc))  # best single member by validation accuracy
    deep_idx = [i for i, n in enumerate(alive) if n >= len(LRS)]
    rows = {}
    rows["best single member (val-selected)"] = scores(test_probs[best], test.y)
    deep_members = [scores(test_probs[i], test.y) for i in deep_idx]
    rows["deep-ensemble member (mean of 5)"] = {k: float(np.mean([d[k] for d in deep_members])) for k in deep_members[0]}
    deep = population.select(deep_idx)
    rows["deep ensemble (5, average)"] = scores(deep.combine(test_probs[np.asarray(deep_idx)]), test.y)
    rows["population average (13)"] = scores(population.combine(test_probs), test.y)
    for rule, label in (("weighted", "weighted average (val-fit)"), ("caruana", "Caruana selection (val)"),
                        ("stacking", "stacking (val meta-learner)"), ("vote", "majority vote")):
        fitted = population.fit(rule, val.x, val.y)
        rows[f"{label}"] = scores(fitted.combine(test_probs), test.y)
        if rule == "caruana":
            caruana = fitted
    key = jax.random.key(seed)
    best_only = population.select([best])
    mc = best_only.mc_dropout_proba(test.x, key, samples=20, dropout_rate=0.1)
    rows["MC dropout (best member, 20 samples)"] = scores(mc.mean(0), test.y)
    # ensembles through train_members: same model, Adam at the deep-ensemble rate, same steps
    model = MODELS[name]
    opts = dict(steps=steps, batch_size=100, learning_rate=DEEP_LR, dropout_rate=0.1)
    own_rows = ("bagging (5 bootstrap members)", "snapshot ensemble (5 cosine cycles, 1 run)",
                "SAMME boosting (up to 5 rounds)")
    if reused is not None:  # rows of an earlier run of this script (deterministic: same seeds, same code)
        for label in own_rows:
            rows[label] = reused["ensembles"][label]
        out["boosting_rounds"] = reused["boosting_rounds"]
        out["timing"]["own_loop_ensembles"] = reused["timing"]["own_loop_ensembles"]
    else:
        tick = time.time()
        bag = bagging(model, train.x, train.y, size=DEEP_SIZE, key=jax.random.fold_in(key, 1), **opts)
        rows[own_rows[0]] = scores(bag.predict_proba(test.x), test.y)
        snap, _ = snapshot_ensemble(model, train.x, train.y, cycles=DEEP_SIZE, steps_per_cycle=steps // DEEP_SIZE,
                                    key=jax.random.fold_in(key, 2), batch_size=100, learning_rate=DEEP_LR,
                                    dropout_rate=0.1)
        rows[own_rows[1]] = scores(snap.predict_proba(test.x), test.y)
        boost, info = boosting(model, train.x, train.y, rounds=DEEP_SIZE, key=jax.random.fold_in(key, 3), **opts)
        rows[own_rows[2]] = scores(boost.predict_proba(test.x), test.y)
        out["boosting_rounds"] = len(info["alpha"])
        out["timing"]["own_loop_ensembles"] = time.time() - tick
    out["ensembles"] = rows
    out["cost"] = {"deep ensemble (5)": deep.cost(test.x[:100], repeats=3),
                   "best member": best_only.cost(test.x[:100], repeats=3)}

    # calibration before / after temperature scaling (T fit on validation)
    cal = {}
    for label, ens in (("best single member", best_only), ("deep ensemble (5)", deep), ("Caruana selection", caruana)):
        scaled = ens.calibrate(val.x, val.y)
        before, after = ens.evaluate(test.x, test.y), scaled.evaluate(test.x, test.y)
        cal[label] = {"T": scaled.temperature, "nll_before": before["nll"], "nll_after": after["nll"],
                      "ece_before": before["ece"], "ece_after": after["ece"]}
        if figures and label == "best single member":
            calibration.reliability_diagram(ens.predict_proba(test.x), test.y,
                                            ROOT / "figures" / f"ensembles_reliability_{name}.png",
                                            title=f"{name}: best member, test",
                                            others={f"T={scaled.temperature:.2f}": scaled.predict_proba(test.x),
                                                    "deep ensemble": deep.predict_proba(test.x)})
    out["calibration"] = cal

    # OOD: in-distribution test vs the OOD set; score = uncertainty
    if ood_name == "uniform noise":
        ood_x = np.asarray(jax.random.uniform(jax.random.fold_in(key, 4), test.x.shape))
    else:
        ood_x = load(ood_name, "test").x
    ood = {}
    in_best, out_best = best_only.member_probs(test.x)[0], best_only.member_probs(ood_x)[0]
    ood["entropy, best member"] = metrics.auroc(calibration.predictive_entropy(in_best),
                                                calibration.predictive_entropy(out_best))
    ood["max-prob, best member"] = metrics.auroc(-in_best.max(-1), -out_best.max(-1))
    din, dout = deep.member_probs(test.x), deep.member_probs(ood_x)
    ood["entropy, deep ensemble"] = metrics.auroc(calibration.predictive_entropy(din.mean(0)),
                                                  calibration.predictive_entropy(dout.mean(0)))
    ood["mutual information, deep ensemble"] = metrics.auroc(calibration.mutual_information(din),
                                                             calibration.mutual_information(dout))
    mc_out = best_only.mc_dropout_proba(ood_x, jax.random.fold_in(key, 5), samples=20, dropout_rate=0.1)
    ood["mutual information, MC dropout"] = metrics.auroc(calibration.mutual_information(mc),
                                                          calibration.mutual_information(mc_out))
    out["ood"] = {k: float(v) for k, v in ood.items()}

    # robustness: clean vs FGSM / PGD accuracy (test), and adversarial training per epsilon
    x, y = jnp.asarray(test.x), jnp.asarray(test.y)
    best_fn = member_logits_fn(best_only.groups[0], 0)
    deep_fn = ensemble_logits_fn(deep)
    rob = {}
    linf = [0.0, *eps_linf]
    l2 = [0.0, *eps_l2]
    for label, fn in (("best member", best_fn), ("deep ensemble (5)", deep_fn)):
        rob[f"{label}, FGSM Linf"] = robust_accuracy_curve(fn, x, y, linf, attack="fgsm").tolist()
        rob[f"{label}, PGD-10 Linf"] = robust_accuracy_curve(fn, x, y, linf, attack="pgd", steps=10).tolist()
        rob[f"{label}, PGD-10 L2"] = robust_accuracy_curve(fn, x, y, l2, attack="pgd", norm="l2", steps=10).tolist()
    if reused is not None:
        for label, curve in reused["robustness"]["curves"].items():
            if label.startswith("adv. trained"):
                rob[label] = curve
        out["timing"]["adversarial_training"] = reused["timing"]["adversarial_training"]
    else:
        tick = time.time()
        adv = adversarial_training(model, train.x, train.y, epsilons=[0.0, *eps_linf],
                                   key=jax.random.fold_in(key, 6), attack="fgsm", **opts)
        out["timing"]["adversarial_training"] = time.time() - tick
        for i, eps in enumerate([0.0, *eps_linf]):
            fn = member_logits_fn(adv.group, i)
            rob[f"adv. trained eps={eps:g}, PGD-10 Linf"] = robust_accuracy_curve(fn, x, y, linf, attack="pgd",
                                                                                  steps=10).tolist()
    out["robustness"] = {"linf": linf, "l2": l2, "curves": rob}

    if figures:
        plots.robustness_figure(linf, {k: v for k, v in rob.items() if "Linf" in k and "PGD" in k},
                                ROOT / "figures" / f"ensembles_robustness_{name}.png",
                                title=f"{name}: PGD-10 L-inf, test")
        group = best_only.groups[0]
        apply_fn = lambda p, inputs: group.model.apply({"params": p}, inputs, train=False, dropout_rate=0.0)
        params = group.member(0)["params"]
        xs, ys = jnp.asarray(test.x[:4]), jnp.asarray(test.y[:4])
        maps = {"gradient": attr.vanilla_gradients(apply_fn, params, xs, ys),
                "integrated gradients": attr.integrated_gradients(apply_fn, params, xs, ys, steps=32),
                "SmoothGrad": attr.smoothgrad(apply_fn, params, xs, ys, key),
                "occlusion": attr.occlusion(apply_fn, params, xs, ys)}
        plots.attribution_figure(test.x[:4], maps, ROOT / "figures" / f"ensembles_attributions_{name}.png",
                                 labels=test.y[:4].tolist())
        plots.training_curves(workdir, "learning_rate", ROOT / "figures" / f"ensembles_curves_{name}.png")
    return out


def fmt(values, digits=3):
    values = np.asarray(values, np.float64)
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def tables(name: str, runs: list[dict], args, wall: float) -> str:
    _, _, steps, *_ = DATASETS[name]
    steps = args.steps or steps
    lines = [f"#### {name} ({len(runs)} seeds, {steps} steps per member)", "",
             "| ensemble | test accuracy | test NLL | test ECE |", "|---|---|---|---|"]
    for label in runs[0]["ensembles"]:
        cells = [[r["ensembles"][label][k] for r in runs] for k in ("accuracy", "nll", "ece")]
        if label.startswith("SAMME"):
            label += " (rounds kept per seed: " + ", ".join(str(r["boosting_rounds"]) for r in runs) + ")"
        lines.append(f"| {label} | {fmt(cells[0])} | {fmt(cells[1])} | {fmt(cells[2])} |")
    c = runs[0]["cost"]
    lines += ["", f"Cost on 100 test examples (seed 0): deep ensemble {c['deep ensemble (5)']['params']} parameters, "
              f"{c['deep ensemble (5)']['flops_per_example']:.0f} FLOPs/example, "
              f"{1e3 * c['deep ensemble (5)']['latency_s']:.2f} ms; best member {c['best member']['params']} parameters, "
              f"{c['best member']['flops_per_example']:.0f} FLOPs/example, {1e3 * c['best member']['latency_s']:.2f} ms.",
              "", "Temperature scaling (T fit on validation, reported on test):", "",
              "| model | T | NLL before | NLL after | ECE before | ECE after |", "|---|---|---|---|---|---|"]
    for label in runs[0]["calibration"]:
        v = {k: [r["calibration"][label][k] for r in runs] for k in runs[0]["calibration"][label]}
        lines.append(f"| {label} | {fmt(v['T'], 2)} | {fmt(v['nll_before'])} | {fmt(v['nll_after'])} | "
                     f"{fmt(v['ece_before'])} | {fmt(v['ece_after'])} |")
    ood_name = DATASETS[name][5]
    lines += ["", f"OOD detection, test set ({name}) vs {ood_name}: AUROC of the uncertainty score", "",
              "| score | AUROC |", "|---|---|"]
    for label in runs[0]["ood"]:
        lines.append(f"| {label} | {fmt([r['ood'][label] for r in runs])} |")
    rob = runs[0]["robustness"]
    lines += ["", "Robust test accuracy (columns: epsilon; L-inf in input units, L2 per example):", "",
              "| model, attack | " + " | ".join(f"eps {e:g}" for e in rob["linf"]) + " |",
              "|---|" + "---|" * len(rob["linf"])]
    for label in rob["curves"]:
        eps = rob["l2"] if "L2" in label else rob["linf"]
        cols = [fmt([r["robustness"]["curves"][label][j] for r in runs]) for j in range(len(eps))]
        tag = " (L2 eps " + ", ".join(f"{e:g}" for e in eps) + ")" if "L2" in label else ""
        lines.append(f"| {label}{tag} | " + " | ".join(cols) + " |")
    t = {k: np.mean([r["timing"][k] for r in runs]) for k in runs[0]["timing"]}
    lines += ["", "Time per seed: population of 13 (one program) " + f"{t['population']:.0f} s, "
              f"bagging + snapshot + boosting {t['own_loop_ensembles']:.0f} s, adversarial training "
              f"{t['adversarial_training']:.0f} s (compilation included).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=None, help="override the steps per member")
    parser.add_argument("--reuse", default=None, help="JSON of an earlier run: copy its bagging, snapshot, "
                        "boosting and adversarial-training results instead of retraining them")
    parser.add_argument("--out", default=str(ROOT / "results" / "ensembles_tables.md"))
    args = parser.parse_args()
    start = time.time()
    parts = []
    raw = {}
    for name in args.datasets:
        tick = time.time()
        runs = []
        for seed in range(args.seeds):
            reused = json.loads(Path(args.reuse).read_text())[name][seed] if args.reuse else None
            runs.append(run_seed(name, seed, args, figures=seed == 0, reused=reused))
            print(f"{name} seed {seed} done ({time.time() - tick:.0f} s)", flush=True)
        raw[name] = runs
        parts.append(tables(name, runs, args, time.time() - tick))
    wall = time.time() - start
    command = "python experiments/ensembles_tables.py --seeds " + str(args.seeds) + \
        (f" --steps {args.steps}" if args.steps else "") + \
        (f" --datasets {' '.join(args.datasets)}" if args.datasets != list(DATASETS) else "") + \
        (f" --reuse {args.reuse}" if args.reuse else "")
    text = "\n".join(parts) + f"\nCommand: `{command}`  \nHardware: {describe()} (2-core CPU, shared)  \n" \
        f"Wall time: {wall:.0f} s\n"
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
