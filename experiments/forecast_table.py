"""Time-series forecasting: LSTM vs GRU vs simple RNN vs MLP vs seq2seq vs the naive baselines, on
Mackey-Glass (tau=17) and a noisy two-season series with a trend; is the GRU the cheaper LSTM?

Per series: 3,000 steps, split chronologically 70/15/15 (`vhjax.forecast.split_series`; scaling fitted
on the training range), lookback 32, horizon 10 (direct multi-step; seq2seq decodes autoregressively),
errors per horizon step. Per architecture one program (`fit_forecasters`): learning rates 1e-3, 3e-3
and 1e-2 x 3 repeats (members differ in initialisation; all see the same batches), Adam, gradient
clipping at global norm 1, batch 64, MSE on the scaled series. Per repeat the learning rate with the
lowest validation RMSE is chosen and its test error reported: mean ± std over the 3 repeats, in the
series' original units, NRMSE = RMSE / std of the test targets. Hidden size 32 for the recurrent
models, two hidden layers of 64 for the MLP. Time: the fit's wall time (compilation, initialisation
and evaluation included) and the training step of the whole population (9 members) after the first
of 4 chunks (no compilation).

Command:  python experiments/forecast_table.py            (1,000 steps)
          python experiments/forecast_table.py --quick    (100 steps, 1 repeat: a smoke test)
Runtime:  2-core AMD EPYC CPU shared with other jobs: 243 s and 266 s (2026-12-07); --quick about 90 s.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from vhjax.forecast import ForecastResult, fit_forecasters, mackey_glass, seasonal_series, split_series
from vhjax.hardware import describe

LOOKBACK, HORIZON = 32, 10
RATES = (1e-3, 3e-3, 1e-2)
SIZES = {"lstm": (32, 1), "gru": (32, 1), "simple_rnn": (32, 1), "mlp": (64, 2), "seq2seq": (32, 1)}


def series() -> dict[str, tuple[np.ndarray, int | None]]:
    """name -> (series, season for the seasonal naive baseline)."""
    return {"mackey-glass": (mackey_glass(3000), None),
            "seasonal": (seasonal_series(3000, periods=(24.0, 168.0), amplitudes=(1.0, 0.5), trend=5e-4, noise=0.2),
                         24)}


def chosen(result: ForecastResult, repeats: int) -> list[int]:
    """Per repeat, the member with the lowest validation RMSE (diverged members left out)."""
    per = len(RATES)
    return [result.best(range(r * per, (r + 1) * per), metric="rmse") for r in range(repeats)]


def cell(values: np.ndarray, digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def run(name: str, values: np.ndarray, season: int | None, archs: list[str], steps: int, repeats: int) -> list[str]:
    data = split_series(values, LOOKBACK, HORIZON)
    lines = [f"### {name}: {len(values)} steps, lookback {LOOKBACK}, horizon {HORIZON}, {steps} training steps, "
             f"train/val/test windows {len(data.times['train'])}/{len(data.times['val'])}/{len(data.times['test'])}",
             "", "| model | params | chosen lr per repeat | test RMSE | test NRMSE | RMSE step 1 | RMSE step 10 | "
             "fit s (compile incl.) | ms / population step | diverged |", "|---|---|---|---|---|---|---|---|---|---|"]
    baselines = None
    for arch in archs:
        hidden, layers = SIZES[arch]
        result = fit_forecasters(data, arch, learning_rates=RATES, repeats=repeats, hidden_size=hidden,
                                 num_layers=layers, steps=steps, batch_size=64, clip_norm=1.0, season=season,
                                 chunks=4)
        best = [b for b in chosen(result, repeats) if b >= 0]
        test = {k: v[best] for k, v in result.test.items()}
        lines.append(f"| {arch} | {result.params} | {', '.join(f'{result.learning_rates[b]:g}' for b in best)} | "
                     f"{cell(test['rmse'])} | {cell(test['nrmse'])} | {cell(test['rmse_per_step'][:, 0])} | "
                     f"{cell(test['rmse_per_step'][:, -1])} | {result.seconds:.1f} | "
                     f"{1e3 * result.step_seconds:.1f} | {int(result.diverged.sum())}/{len(result.diverged)} |")
        print(f"{name}: {arch} done, {result.seconds:.0f} s", file=sys.stderr, flush=True)
        baselines = result.baselines
    for baseline, errors in (baselines or {}).items():
        test = errors["test"]
        lines.append(f"| {baseline} | 0 | - | {test['rmse']:.4f} | {test['nrmse']:.4f} | "
                     f"{test['rmse_per_step'][0]:.4f} | {test['rmse_per_step'][-1]:.4f} | - | - | - |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, 1 repeat (a smoke test)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", default="lstm,gru,simple_rnn,mlp,seq2seq")
    args = parser.parse_args()
    steps, repeats = (100, 1) if args.quick else (args.steps, args.repeats)
    archs = args.archs.split(",")
    print(f"hardware: {describe()}", flush=True)
    started = time.perf_counter()
    for name, (values, season) in series().items():
        lines = run(name, values, season, archs, steps, repeats)
        print("", *lines, "", sep="\n", flush=True)
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
