"""Anomaly detection with autoencoders on scikit-learn digits: nine classes normal, the held-out one anomalous.

Novel-class detection on the 8x8 digits: for each digit c, autoencoders are trained on the training
images of the nine other digits only (80%; the other 20% are normal validation data, which sets the
detection threshold and picks the member), and score the 360 test images by reconstruction error: the
test images of c (about 36) are the anomalies, all others normal. (The one-class protocol of Ruff et al.
2018, one digit normal and nine anomalous, is easy here: in a 200-step smoke run every setting had
AUROC 0.988-0.994 and PCA 0.991.)
Per latent size, one `vhjax.anomaly.fit_autoencoders` call per class trains 12 members in one program:
learning rate {1e-3, 3e-3} x input noise {0, 0.2} (denoising) x 3 seeds. Rows: the member picked without
labelled anomalies (lowest reconstruction error on normal validation images), the best member by test
AUROC (an oracle), each (learning rate, noise) setting, and PCA with as many components as the latent
size (the linear baseline). AUROC and average precision are means over the 10 classes; mean ± std over the
3 seeds. The normal test images' reconstruction PSNR and SSIM (`vhjax.metrics`, 7x7 window) say how well
each picked autoencoder rebuilds what it knows.
The protocol is ours (8x8 digits, our splits and sizes); no published numbers exist for it.

Command:  python experiments/anomaly_table.py            (latent sizes 4, 8 and 16, 2000 steps)
          python experiments/anomaly_table.py --quick    (latent 4, 200 steps: a smoke test)
Runtime:  2-core AMD EPYC CPU shared with other jobs: --quick 138 s, the full command 408 s (2026-12-07).
Results:  experiments/README.md ("Anomaly detection with autoencoders").
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from vhjax import metrics
from vhjax.anomaly import detection_report, fit_autoencoders, pca_errors, reconstruction_errors
from vhjax.data import load
from vhjax.hardware import describe
from vhjax.models import Autoencoder

RATES, NOISES, SEEDS = (1e-3, 3e-3), (0.0, 0.2), (0, 1, 2)
SETTINGS = list(itertools.product(RATES, NOISES))
MEMBERS = [(rate, noise, seed) for seed in SEEDS for rate, noise in SETTINGS]  # member index -> values


def normal_split(train_x, train_y, digit: int, seed: int = 0):
    """(train, validation) images of every digit but `digit`: 80/20 by a permutation."""
    images = train_x[train_y != digit]
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    return images[order[:cut]], images[order[cut:]]


def one_class(digit: int, latent: int, steps: int, data) -> dict:
    (train_x, train_y), (test_x, test_y) = data
    fit_x, val_x = normal_split(train_x, train_y, digit)
    model = Autoencoder(data_shape=(8, 8, 1), latent_dim=latent, widths=(64,), output_activation="sigmoid")
    detectors = fit_autoencoders(model, fit_x, learning_rate=[m[0] for m in MEMBERS], noise=[m[1] for m in MEMBERS],
                                 seeds=[m[2] for m in MEMBERS], steps=steps, batch_size=64)
    errors = reconstruction_errors(detectors, test_x)
    normal, anomalous = test_y != digit, test_y == digit
    validation = reconstruction_errors(detectors, val_x)
    rows = {}
    for seed in SEEDS:  # the members of one seed: a user's run
        members = [i for i, m in enumerate(MEMBERS) if m[2] == seed]
        report = detection_report(errors[members][:, normal], errors[members][:, anomalous],
                                  validation=validation[members])
        chosen = members[report["chosen"]]
        rebuilt = np.asarray(model.apply({"params": _member(detectors.params, chosen)}, test_x[normal]))
        rows[seed] = {"chosen": report["auroc"][report["chosen"]], "chosen_ap": report["average_precision"][
            report["chosen"]], "best": report["auroc"].max(),
            "psnr": float(np.mean(metrics.psnr(rebuilt, test_x[normal]))),
            "ssim": float(np.mean(metrics.ssim(rebuilt, test_x[normal], filter_size=7))),
            **{f"setting {k}": report["auroc"][k] for k in range(len(SETTINGS))}}
    pca = pca_errors(fit_x, test_x, latent)
    pca_auroc = float(metrics.auroc(pca[normal], pca[anomalous]))
    return {"seeds": rows, "pca": pca_auroc}


def _member(params, index: int):
    import jax

    return jax.tree.map(lambda leaf: leaf[index], params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    latents, steps = ([4], 200) if args.quick else (args.latents, args.steps)
    train, test = load("digits", "train"), load("digits", "test")
    data = ((train.x, train.y), (test.x, test.y))
    started = time.perf_counter()
    print("| latent | row | AUROC | average precision | normal PSNR (dB) | normal SSIM |")
    print("|---|---|---|---|---|---|")
    for latent in latents:
        begun = time.perf_counter()
        per_class = [one_class(digit, latent, steps, data) for digit in range(10)]

        def over_seeds(name: str) -> np.ndarray:  # (seeds,) means over the classes
            return np.array([np.mean([c["seeds"][s][name] for c in per_class]) for s in SEEDS])

        def cell(name: str) -> str:
            values = over_seeds(name)
            return f"{values.mean():.3f} ± {values.std():.3f}"

        print(f"| {latent} | picked on normal validation error | {cell('chosen')} | {cell('chosen_ap')} "
              f"| {cell('psnr')} | {cell('ssim')} |")
        print(f"| {latent} | best member by test AUROC (oracle) | {cell('best')} | | | |")
        for k, (rate, noise) in enumerate(SETTINGS):
            print(f"| {latent} | learning rate {rate:g}, noise {noise:g} | {cell(f'setting {k}')} | | | |")
        print(f"| {latent} | PCA, {latent} components | {np.mean([c['pca'] for c in per_class]):.3f} | | | |")
        print(f"|  | ({time.perf_counter() - begun:.0f} s for this latent size) | | | | |", flush=True)
    print(f"\n{len(latents)} latent sizes x 10 classes x 12 members, {steps} steps; "
          f"total {time.perf_counter() - started:.0f} s; {describe()}")


if __name__ == "__main__":
    main()
