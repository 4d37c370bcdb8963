"""Time-series forecasting with recurrent populations (CATALOG: "time-series forecasting: LSTM, GRU,
seq2seq"; "GRU as the cheaper LSTM").

Data, with no download: `seasonal_series` (sum of sines + a linear trend + Gaussian noise) and
`mackey_glass` (the Mackey-Glass delay differential equation, integrated with fixed-step RK4; tau=17
is the classic chaotic benchmark). `windows` cuts a series (T, F) into inputs (N, lookback, F) and
targets (N, horizon, F); `split_series` splits it chronologically into train / validation / test:
a window belongs to a split when all its targets lie in that split's time range (windows whose
targets straddle a boundary are dropped; inputs may look back across one, they are the known past),
and the scaling (per-feature standardization) is fitted on the training time range only.

Models for one member (`Forecaster`), all direct multi-step (the whole horizon at once) except
seq2seq: the zoo's 'lstm', 'gru' and 'simple_rnn' read the window and their Dense head (readout
'last') predicts horizon x features values; 'mlp' is the zoo's MLP on the flattened window;
'seq2seq' is an LSTM encoder whose final state starts an LSTM decoder cell that runs
autoregressively, its own previous prediction (first: the last observed value) as its next input.
The zoo's `RNNSeq2Seq` reads token ids through an embedding, so it does not fit real values;
'seq2seq' reuses flax's cells instead.

`fit_forecasters` trains a population (learning rates x repeats of one architecture and size) in one
compiled program (`population.members.fit_members`) and reports per member validation and test
errors in the original scale (MSE, MAE, RMSE, NRMSE = RMSE / std of the split's targets, RMSE per
horizon step), with the naive baselines on the same windows: persistence (the last value repeated)
and, given a `season`, seasonal naive. A member whose loss or parameters become non-finite is frozen
at its last finite state by the engine, and flagged (`diverged`); it does not stop the others.
With a `workdir` a killed fit resumes bit for bit and a finished one is restored.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.compile_options import light_jit
from vhjax.losses import get_loss
from vhjax.models import MODELS as ZOO, count_params
from vhjax.preprocess import get_preprocessor
from vhjax.validation import check_choice, check_int, check_number, invalid

MODELS = ("lstm", "gru", "simple_rnn", "mlp", "seq2seq")
RECURRENT = ("lstm", "gru", "simple_rnn")
LOSSES = ("mse", "mae", "huber")
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- series


def seasonal_series(length: int, *, periods: Sequence[float] = (24.0, 168.0), amplitudes: Sequence[float] = (1.0, 0.5),
                    trend: float = 1e-3, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """(length, 1) float32: sum_k a_k sin(2 pi t / p_k) + trend * t + noise * N(0, 1), t = 0, 1, ...
    (e.g. hourly data with a daily and a weekly season)."""
    check_int("length", length, 1)
    if len(periods) != len(amplitudes):
        raise invalid("amplitudes", list(amplitudes), f"one amplitude per period ({len(periods)})")
    for period in periods:
        check_number("periods", period, 0.0, low_inclusive=False)
    check_number("noise", noise, 0.0)
    t = np.arange(length, dtype=np.float64)
    y = sum(a * np.sin(2 * np.pi * t / p) for p, a in zip(periods, amplitudes)) + trend * t
    y = y + noise * np.random.default_rng(seed).standard_normal(length)
    return np.asarray(y, np.float32)[:, None]


def mackey_glass(length: int, *, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1, n: float = 10.0,
                 dt: float = 0.1, sample_step: float = 1.0, initial: float = 1.2, discard: float = 500.0) -> np.ndarray:
    """(length, 1) float32 samples, every `sample_step` time units after a transient of `discard`, of
    dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t), with x = `initial` on [-tau, 0],
    integrated by RK4 with step `dt` (the delayed value at a half step: the mean of its grid
    neighbours). tau / dt and sample_step / dt must be whole numbers."""
    check_int("length", length, 1)
    for field, value in (("tau", tau), ("dt", dt), ("sample_step", sample_step)):
        check_number(field, value, 0.0, low_inclusive=False)
    check_number("discard", discard, 0.0)
    delay, every, skip = (int(round(v / dt)) for v in (tau, sample_step, discard))
    for field, value, steps in (("tau", tau, delay), ("sample_step", sample_step, every)):
        if abs(steps * dt - value) > 1e-9 * max(1.0, value):
            raise invalid(field, value, f"a whole multiple of dt={dt}")

    def slope(x: float, delayed: float) -> float:
        return beta * delayed / (1.0 + delayed ** n) - gamma * x

    total = skip + (length - 1) * every
    x = np.empty(delay + total + 1)
    x[:delay + 1] = initial
    for i in range(delay, delay + total):
        past, next_past = x[i - delay], x[i - delay + 1]
        half = 0.5 * (past + next_past)
        k1 = slope(x[i], past)
        k2 = slope(x[i] + 0.5 * dt * k1, half)
        k3 = slope(x[i] + 0.5 * dt * k2, half)
        k4 = slope(x[i] + dt * k3, next_past)
        x[i + 1] = x[i] + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return np.asarray(x[delay + skip::every], np.float32)[:length, None]


def as_series(series: Any, field: str = "series") -> np.ndarray:
    """`series` as float32 (T, F) ((T,) becomes (T, 1)); non-finite values raise, naming the first."""
    values = np.asarray(series, np.float32)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.size == 0:
        raise invalid(field, f"an array of shape {np.shape(series)}", "a non-empty (time,) or (time, features) array")
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise invalid(field, f"{len(bad)} non-finite time steps (first: t={bad[0]}, {values[bad[0]].tolist()})",
                      "finite numbers only")
    return values


def windows(series: Any, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of `series` (T, F) (or (T,)), stride 1: inputs (N, lookback, F) = steps t..t+lookback-1
    and targets (N, horizon, F) = the next `horizon` steps, N = T - lookback - horizon + 1."""
    check_int("lookback", lookback, 1)
    check_int("horizon", horizon, 1)
    values = as_series(series)
    if len(values) < lookback + horizon:
        raise invalid("series", f"{len(values)} time steps", f"at least lookback + horizon = {lookback + horizon}")
    view = np.moveaxis(np.lib.stride_tricks.sliding_window_view(values, lookback + horizon, axis=0), -1, 1)
    return np.ascontiguousarray(view[:, :lookback]), np.ascontiguousarray(view[:, lookback:])


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class ForecastData:
    """Scaled windows per split (`inputs[split]` (N, lookback, F), `targets[split]` (N, horizon, F)),
    the time of each window's first target (`times[split]`), the split boundaries in time
    (`bounds[split]` = [start, end)) and the scaling fitted on the training range (`mean`, `std`)."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    bounds: dict[str, tuple[int, int]]
    mean: np.ndarray
    std: np.ndarray
    lookback: int
    horizon: int

    @property
    def features(self) -> int:
        return self.inputs["train"].shape[-1]

    def unscale(self, values: Any) -> np.ndarray:
        """Scaled values (..., F) back in the series' original units."""
        return np.asarray(values) * self.std + self.mean


def split_series(series: Any, lookback: int, horizon: int, *, val_fraction: float = 0.15,
                 test_fraction: float = 0.15) -> ForecastData:
    """Chronological train / val / test split of `series`' windows (module docstring): the last
    `test_fraction` of the time steps are the test range, the `val_fraction` before it the validation
    range; standardized with the mean and std of the training range (per feature)."""
    check_int("lookback", lookback, 1)
    check_int("horizon", horizon, 1)
    check_number("val_fraction", val_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_number("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    if val_fraction + test_fraction >= 1.0:
        raise invalid("val_fraction + test_fraction", val_fraction + test_fraction, "less than 1")
    values = as_series(series)
    length = len(values)
    val_start = int(round(length * (1 - val_fraction - test_fraction)))
    test_start = int(round(length * (1 - test_fraction)))
    bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, length)}
    for split, (start, end) in bounds.items():
        need = lookback + horizon if split == "train" else horizon
        if end - start < need:
            raise invalid("series", f"{length} time steps", f"enough that the {split} range [{start}, {end}) holds "
                          f"one window's {'inputs and ' if split == 'train' else ''}targets ({need} steps; lookback="
                          f"{lookback}, horizon={horizon}, val_fraction={val_fraction}, test_fraction={test_fraction})")
    scaler = get_preprocessor("standardize", per="feature")
    fitted = scaler.fit(values[:val_start])
    scaled = np.asarray(scaler.transform(fitted, values), np.float32)
    inputs, targets = windows(scaled, lookback, horizon)
    first = np.arange(len(inputs)) + lookback
    member = {split: (first >= (start if split != "train" else lookback)) & (first + horizon <= end)
              for split, (start, end) in bounds.items()}
    return ForecastData({s: inputs[m] for s, m in member.items()}, {s: targets[m] for s, m in member.items()},
                        {s: first[m] for s, m in member.items()}, bounds,
                        np.asarray(fitted.arrays["mean"]).reshape(-1), np.asarray(fitted.arrays["std"]).reshape(-1),
                        lookback, horizon)


# ----------------------------------------------------------------------------- baselines and errors


def persistence(inputs: Any, horizon: int) -> np.ndarray:
    """The naive forecast: each window's last value repeated, (N, horizon, F)."""
    check_int("horizon", horizon, 1)
    last = np.asarray(inputs)[:, -1:]
    return np.repeat(last, horizon, axis=1)


def seasonal_naive(inputs: Any, horizon: int, season: int) -> np.ndarray:
    """The seasonal naive forecast: step h (1-based) repeats the value one or more whole seasons
    before it, x[t + h - season * ceil(h / season)], t the window's last step; (N, horizon, F).
    `season` must be in [1, lookback] (season 1 is persistence)."""
    inputs = np.asarray(inputs)
    check_int("horizon", horizon, 1)
    check_int("season", season, 1, inputs.shape[1])
    h = np.arange(1, horizon + 1)
    return inputs[:, inputs.shape[1] - 1 + h - season * -(-h // season)]


def forecast_errors(predictions: Any, targets: Any) -> dict[str, np.ndarray]:
    """Errors of `predictions` (..., N, horizon, F) against `targets` (N, horizon, F), over windows and
    features: 'mse', 'mae', 'rmse', 'nrmse' (RMSE / std of the targets) of shape (...), and
    'rmse_per_step' (..., horizon)."""
    error = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    mse_per_step = np.mean(error ** 2, axis=(-3, -1))
    rmse = np.sqrt(np.mean(mse_per_step, axis=-1))
    return {"mse": np.mean(mse_per_step, axis=-1), "mae": np.mean(np.abs(error), axis=(-3, -2, -1)), "rmse": rmse,
            "nrmse": rmse / np.std(np.asarray(targets, np.float64)), "rmse_per_step": np.sqrt(mse_per_step)}


# ----------------------------------------------------------------------------- models


class Seq2SeqForecaster(nn.Module):
    """LSTM encoder; its final state starts an LSTM decoder cell run `horizon` steps autoregressively
    (input: the previous prediction, first the window's last value), a Dense head per step."""

    hidden_size: int = 32
    horizon: int = 1
    features: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        carry, _ = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size, parent=None), return_carry=True, name="encoder")(x)
        cell = nn.OptimizedLSTMCell(self.hidden_size, name="decoder")
        head = nn.Dense(self.features, name="head")
        value, outputs = x[:, -1], []
        for _ in range(self.horizon):  # a short loop, unrolled: every step shares the cell and head
            carry, hidden = cell(carry, value)
            value = head(hidden)
            outputs.append(value)
        return jnp.stack(outputs, axis=1)


class Forecaster(nn.Module):
    """One member: `kind` (one of MODELS, module docstring) mapping windows (N, lookback, F) to
    forecasts (N, horizon, F). `hidden_size` is the recurrent state size or the MLP's width;
    `num_layers` the recurrent layers or the MLP's hidden layers (seq2seq: one layer)."""

    kind: str = "gru"
    horizon: int = 1
    features: int = 1
    hidden_size: int = 32
    num_layers: int = 1

    def __post_init__(self):
        check_choice("model", self.kind, MODELS)
        check_int("horizon", self.horizon, 1)
        check_int("hidden_size", self.hidden_size, 1)
        check_int("num_layers", self.num_layers, 1, 1 if self.kind == "seq2seq" else None)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        outputs = self.horizon * self.features
        if self.kind == "seq2seq":
            return Seq2SeqForecaster(self.hidden_size, self.horizon, self.features, name="body")(x)
        if self.kind == "mlp":
            body = ZOO.get("mlp")(widths=(self.hidden_size,) * self.num_layers, num_classes=outputs, name="body")
        else:
            body = ZOO.get(self.kind)(hidden_size=self.hidden_size, num_layers=self.num_layers, readout="last",
                             num_classes=outputs, name="body")
        return body(x).reshape(x.shape[0], self.horizon, self.features)


@functools.partial(light_jit, static_argnums=0)
def predict(model: Forecaster, params: Any, inputs: jax.Array) -> jax.Array:
    """Forecasts (P, N, horizon, F) of P members (`params` stacked on a leading axis) for `inputs`."""
    return jax.vmap(lambda p: model.apply({"params": p}, inputs))(params)


# ----------------------------------------------------------------------------- the population


@dataclasses.dataclass
class ForecastResult:
    """Per member (P = repeats x learning rates; member i has `learning_rates[i]`, `repeat[i]`):
    errors in the original scale per split (`val`, `test`: name -> (P,) or (P, horizon) for
    'rmse_per_step'), the naive baselines' errors (`baselines[name][split]`), the validation MSE at
    initialisation, the training losses (steps, P; NaN after a member diverged), divergence flags,
    parameters per member, the wall time of the fit (compilation included) and, when it ran in two
    or more chunks, the seconds per training step of the whole population after the first chunk."""

    model: Forecaster
    learning_rates: np.ndarray
    repeat: np.ndarray
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    baselines: dict[str, dict[str, dict[str, np.ndarray]]]
    initial_val_mse: np.ndarray
    losses: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    params: int
    seconds: float
    step_seconds: float | None
    population: Any

    def best(self, members: Sequence[int] | None = None, metric: str = "mse") -> int:
        """The member (among `members`, default all) with the lowest validation `metric`, diverged
        members left out; -1 if every one diverged."""
        candidates = [int(i) for i in (range(len(self.diverged)) if members is None else members)
                      if not self.diverged[i]]
        if not candidates:
            return -1
        return candidates[int(np.argmin([self.val[metric][i] for i in candidates]))]


def check_learning_rates(learning_rates: Any) -> np.ndarray:
    """Learning rates as a (K,) float32 array of finite numbers >= 0."""
    rates = np.atleast_1d(np.asarray(learning_rates, dtype=object))
    if rates.ndim != 1 or len(rates) == 0:
        raise invalid("learning_rates", learning_rates, "a number or a non-empty list of numbers >= 0")
    for rate in rates:
        check_number("learning_rates", rate, 0.0)
    return rates.astype(np.float32)


def fit_forecasters(data: ForecastData, model: str = "gru", *, learning_rates: float | Sequence[float] = 1e-3,
                    repeats: int = 1, hidden_size: int = 32, num_layers: int = 1, steps: int = 500,
                    batch_size: int = 32, loss: str = "mse", optimizer: str = "adam", clip_norm: float | None = None,
                    season: int | None = None, seed: int = 0, chunks: int = 1, workdir: str | Path | None = None,
                    checkpoint_every: int | None = None, mesh: Any = "auto") -> ForecastResult:
    """Train `repeats` x len(`learning_rates`) members of `model` (one of MODELS; one size: members
    of other sizes have other shapes, so they are another call) on `data`'s training windows, in one
    program: every member sees the same batches (`per_step_batches` with `seed`) and has its own
    initialisation. `loss`: 'mse', 'mae' or 'huber' (delta 1, on the scaled series), `optimizer`: a
    `vhjax.optim` name, gradient clipping by global norm `clip_norm`. `season`: also report the
    seasonal naive baseline with this period (in [1, lookback]). `chunks`: training runs in this
    many chunks of the one program, so `step_seconds` can be timed after the first (which compiles).
    `workdir`: checkpoints every `checkpoint_every` steps (default a tenth; the chunks then follow
    them), a rerun resumes, a finished run is restored, other inputs are refused
    (`population.members.resumable`). Everything is checked before anything compiles.
    `mesh`: the members over every local device ('auto', the default; None: one device), as `fit_population`."""
    from vhjax.population.members import fit_members, init_members, per_step_batches, resumable
    from vhjax.population.loop import Hook

    check_choice("model", model, MODELS)
    rates = check_learning_rates(learning_rates)
    check_int("repeats", repeats, 1)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_choice("loss", loss, LOSSES)
    check_int("chunks", chunks, 1, steps)
    if clip_norm is not None:
        check_number("clip_norm", clip_norm, 0.0, low_inclusive=False)
    if season is not None:
        check_int("season", season, 1, data.lookback)
    module = Forecaster(model, data.horizon, data.features, hidden_size, num_layers)
    optimizer_fn = optim.make_optimizer(optimizer, learning_rate=float(rates[0]), clip_norm=clip_norm)
    per_example = get_loss(loss)
    size = repeats * len(rates)
    member_rates = np.tile(rates, repeats)
    example = jnp.asarray(data.inputs["train"][:1])

    def init_fn(key: jax.Array) -> Any:
        return module.init(key, example)["params"]

    def loss_fn(params: Any, batch: tuple, key: jax.Array, hparams: dict) -> jax.Array:
        del key, hparams
        x, y = batch
        return jnp.mean(per_example(module.apply({"params": params}, x), y))

    saving = resumable(workdir, "forecast", {
        "model": repr(module), "train": (data.inputs["train"], data.targets["train"]), "mean": data.mean,
        "std": data.std, "learning_rates": rates.tolist(), "repeats": repeats, "steps": steps,
        "batch_size": batch_size, "loss": loss, "optimizer": optimizer, "clip_norm": clip_norm, "seed": seed},
        steps, checkpoint_every)
    started = time.perf_counter()
    shapes = jax.eval_shape(init_fn, jax.random.key(0))  # one member's, for its parameter count
    init_key, member_key = jax.random.split(jax.random.key(seed))
    population = init_members(init_fn, optimizer_fn, member_key, size, init_keys=jax.random.split(init_key, size))
    # the rates set here, not through init_members' checks (> 0): a rate of 0 is a frozen control member
    population = population.replace(members=population.members.replace(
        opt_state=optim.set_hyperparams(population.members.opt_state, learning_rate=member_rates)))
    initial = errors_by_split(data, module, population.members.params, ("val", "test"))["val"]  # the later program
    batches = per_step_batches((data.inputs["train"], data.targets["train"]), steps, batch_size, seed)
    chunk_seconds: list[tuple[int, float]] = []

    def record(state: dict, population: Any, report: Any) -> tuple[dict, Any]:
        chunk_seconds.append((report.length, report.seconds))
        return state, population

    trained, losses = fit_members(population, loss_fn, optimizer_fn, batches, steps, mesh=mesh,
                                  **{"eval_every": -(-steps // chunks), **saving},
                                  hooks=[Hook("chunk_seconds", lambda population: {}, record)])
    errors = errors_by_split(data, module, trained.members.params, ("val", "test"))
    seconds = time.perf_counter() - started
    later = chunk_seconds[1:]
    step_seconds = sum(s for _, s in later) / sum(n for n, _ in later) if later else None
    return ForecastResult(module, member_rates, np.repeat(np.arange(repeats), len(rates)), errors["val"],
                          errors["test"], baseline_errors(data, season), initial["mse"], np.asarray(losses),
                          ~np.asarray(trained.alive), np.asarray(trained.diverged_step),
                          count_params(shapes), seconds, step_seconds, trained)


def errors_by_split(data: ForecastData, model: Forecaster, params: Any, splits: Sequence[str]) -> dict[str, dict]:
    """Per split, `forecast_errors` (original scale) of every member (`params` stacked)."""
    inputs = np.concatenate([data.inputs[split] for split in splits])  # one program for every split
    forecasts = np.split(np.asarray(predict(model, params, jnp.asarray(inputs))),
                         np.cumsum([len(data.inputs[split]) for split in splits])[:-1], axis=1)
    return {split: forecast_errors(data.unscale(f), data.unscale(data.targets[split]))
            for split, f in zip(splits, forecasts)}


def baseline_errors(data: ForecastData, season: int | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Errors (original scale) of persistence and, with `season`, seasonal naive, on the val and test windows."""
    out: dict[str, dict] = {"persistence": {}}
    if season is not None:
        out[f"seasonal_naive_{season}"] = {}
    for split in ("val", "test"):
        inputs, targets = data.unscale(data.inputs[split]), data.unscale(data.targets[split])
        out["persistence"][split] = forecast_errors(persistence(inputs, data.horizon), targets)
        if season is not None:
            out[f"seasonal_naive_{season}"][split] = forecast_errors(seasonal_naive(inputs, data.horizon, season),
                                                                    targets)
    return out


__all__ = ["LOSSES", "MODELS", "ForecastData", "ForecastResult", "Forecaster", "Seq2SeqForecaster", "as_series",
           "baseline_errors", "errors_by_split", "fit_forecasters", "forecast_errors", "mackey_glass", "persistence",
           "predict", "seasonal_naive", "seasonal_series", "split_series", "windows"]
