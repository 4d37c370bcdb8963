"""Forecasting (`vhjax.forecast`): windows and chronological splits by hand, the naive baselines by
hand, Mackey-Glass against its equation, a GRU population that beats persistence on a sine wave
(learning rates differ, rate 0 stays at its initialisation), a diverging member isolated, and bad
input refused before anything compiles."""

import jax
import numpy as np
import pytest

from vhjax.compilation_cache import count_compilations
from vhjax.forecast import (MODELS, Forecaster, fit_forecasters, forecast_errors, mackey_glass, persistence,
                            seasonal_naive, seasonal_series, split_series, windows)
from vhjax.models import output_shape

SINE = np.sin(2 * np.pi * np.arange(600) / 20.0)


def test_windows_by_hand():
    series = np.arange(10.0)
    inputs, targets = windows(series, lookback=3, horizon=2)
    assert inputs.shape == (6, 3, 1) and targets.shape == (6, 2, 1)
    np.testing.assert_array_equal(inputs[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(targets[0, :, 0], [3, 4])
    np.testing.assert_array_equal(inputs[-1, :, 0], [5, 6, 7])
    np.testing.assert_array_equal(targets[-1, :, 0], [8, 9])
    two = np.stack([series, -series], axis=1)
    np.testing.assert_array_equal(windows(two, 3, 2)[1][2], [[5, -5], [6, -6]])


def test_splits_are_chronological_do_not_overlap_and_scale_on_train_only():
    series = np.arange(100.0) ** 1.5
    data = split_series(series, lookback=5, horizon=3, val_fraction=0.2, test_fraction=0.2)
    assert data.bounds == {"train": (0, 60), "val": (60, 80), "test": (80, 100)}
    for split, (start, end) in data.bounds.items():
        first = data.times[split]
        assert first.min() >= (start if split != "train" else 5) and first.max() + 3 <= end  # targets inside
        targets = data.unscale(data.targets[split])[..., 0]
        np.testing.assert_allclose(targets, series[first[:, None] + np.arange(3)], rtol=1e-5)
        inputs = data.unscale(data.inputs[split])[..., 0]
        np.testing.assert_allclose(inputs, series[first[:, None] - 5 + np.arange(5)], rtol=1e-5, atol=1e-3)
    # every window whose targets fit in a range, none across a boundary: 60-5-3+1, 20-3+1, 20-3+1
    assert [len(data.times[s]) for s in ("train", "val", "test")] == [53, 18, 18]
    last_target = {s: data.times[s].max() + 2 for s in data.times}
    assert last_target["train"] < data.times["val"].min() and last_target["val"] < data.times["test"].min()
    np.testing.assert_allclose(data.mean, [series[:60].mean()], rtol=1e-6)
    np.testing.assert_allclose(data.std, [series[:60].std()], rtol=1e-5)


def test_naive_baselines_and_errors_by_hand():
    inputs = np.asarray([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])[..., None]
    np.testing.assert_array_equal(persistence(inputs, 3)[..., 0], [[4, 4, 4], [8, 8, 8]])
    # season 2: step h repeats x[t + h - 2 ceil(h / 2)]: h=1 -> x[t-1], h=2 -> x[t], h=3 -> x[t-1]
    np.testing.assert_array_equal(seasonal_naive(inputs, 3, 2)[..., 0], [[3, 4, 3], [7, 8, 7]])
    np.testing.assert_array_equal(seasonal_naive(inputs, 3, 1), persistence(inputs, 3))
    targets = np.asarray([[5.0, 6.0, 7.0], [8.0, 8.0, 8.0]])[..., None]
    errors = forecast_errors(persistence(inputs, 3), targets)  # errors 1, 2, 3 and 0, 0, 0
    assert errors["mse"] == pytest.approx(14 / 6) and errors["mae"] == pytest.approx(1.0)
    np.testing.assert_allclose(errors["rmse_per_step"], np.sqrt([0.5, 2.0, 4.5]))
    assert errors["rmse"] == pytest.approx(np.sqrt(14 / 6))
    assert errors["nrmse"] == pytest.approx(np.sqrt(14 / 6) / np.std(targets))


def test_mackey_glass_follows_its_delay_equation():
    step, tau = 0.5, 17.0
    x = mackey_glass(400, tau=tau, sample_step=step, discard=300.0)[:, 0].astype(np.float64)
    assert 0.2 < x.min() and x.max() < 1.5 and np.ptp(x) > 0.5  # the chaotic attractor, not a fixed point
    lag, i = int(tau / step), np.arange(int(tau / step) + 1, len(x) - 1)
    slope = (x[i + 1] - x[i - 1]) / (2 * step)
    for delay, close in ((lag, True), (lag - 4, False)):  # a wrong delay does not fit
        rhs = 0.2 * x[i - delay] / (1 + x[i - delay] ** 10) - 0.1 * x[i]
        assert (np.abs(slope - rhs).max() < 2e-3) == close
    np.testing.assert_array_equal(mackey_glass(50), mackey_glass(50))


def test_seasonal_series_is_its_formula_plus_noise():
    y = seasonal_series(500, periods=(10.0,), amplitudes=(2.0,), trend=0.01, noise=0.0)[:, 0]
    t = np.arange(500)
    np.testing.assert_allclose(y, 2 * np.sin(2 * np.pi * t / 10) + 0.01 * t, atol=1e-5)
    noisy = seasonal_series(500, periods=(10.0,), amplitudes=(2.0,), trend=0.01, noise=0.5, seed=1)[:, 0]
    assert np.std(noisy - y) == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_maps_windows_to_the_horizon(kind):
    assert output_shape(Forecaster(kind, horizon=4, features=2, hidden_size=8), (3, 16, 2)) == (3, 4, 2)


def test_a_gru_population_beats_persistence_and_its_learning_rates_differ():
    data = split_series(SINE, lookback=16, horizon=4)
    result = fit_forecasters(data, "gru", learning_rates=[0.0, 3e-3, 1e-2], hidden_size=16, steps=300, chunks=2)
    frozen, slow, fast = range(3)
    assert not result.diverged.any() and result.losses.shape == (300, 3)
    # a rate of 0: the member is its initialisation
    assert result.val["mse"][frozen] == result.initial_val_mse[frozen]
    assert result.val["mse"][slow] < result.initial_val_mse[slow] / 100
    initial = jax.vmap(lambda k: result.model.init(k, data.inputs["train"][:1])["params"])(
        jax.random.split(jax.random.split(jax.random.key(0))[0], 3))  # fit_forecasters' keys
    trained = result.population.members.params
    for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(trained)):
        np.testing.assert_allclose(before[frozen], after[frozen], rtol=1e-6, atol=1e-7)
        assert not np.allclose(before[slow], after[slow])
    assert result.val["mse"][slow] != result.val["mse"][fast]
    persistence_rmse = result.baselines["persistence"]["test"]["rmse"]
    best = result.best()
    assert best in (slow, fast) and result.test["rmse"][best] < persistence_rmse / 20
    assert result.test["rmse_per_step"].shape == (3, 4) and result.step_seconds > 0 and result.params > 0


def test_a_diverging_member_is_frozen_and_flagged_while_the_other_trains():
    data = split_series(SINE, lookback=8, horizon=2)
    result = fit_forecasters(data, "mlp", learning_rates=[3e-2, 1e6], optimizer="sgd", hidden_size=16, steps=60,
                             loss="huber", season=20 // 4)
    assert result.diverged.tolist() == [False, True] and result.diverged_step[1] > 0
    assert np.isnan(result.losses[-1, 1]) and np.isfinite(result.losses[:, 0]).all()
    assert result.val["mse"][0] < result.initial_val_mse[0] and result.best() == 0
    assert set(result.baselines) == {"persistence", "seasonal_naive_5"}


def test_a_seq2seq_population_of_nine_members_initialises_and_trains():
    # a jitted, vmapped init of two LSTMs of 32 hung XLA's CPU runtime (jax 0.10.2) for 9 members (and
    # for 6, not 4); fit_forecasters initialises one member at a time
    data = split_series(SINE[:200], lookback=8, horizon=2)
    result = fit_forecasters(data, "seq2seq", learning_rates=[1e-3, 1e-2, 3e-2], repeats=3, hidden_size=32, steps=2)
    assert result.losses.shape == (2, 9) and len(set(result.val["mse"].tolist())) == 9


def test_an_interrupted_fit_resumes_from_its_workdir(tmp_path, run_interrupted, monkeypatch):
    from vhjax.population.engine import PopulationRunner

    data = split_series(SINE[:300], lookback=8, horizon=2)
    run = lambda workdir, rates=(1e-2, 3e-3): fit_forecasters(data, "mlp", learning_rates=rates,  # noqa: E731
                                                            hidden_size=8, steps=20, workdir=workdir)
    full = run(tmp_path / "full")
    run_interrupted(lambda: run(tmp_path / "cut"), at_step=10)  # killed after the checkpoint at step 10 of 20
    resumed = run(tmp_path / "cut")
    params = [result.population.members.params for result in (resumed, full)]
    for a, b in zip(*map(jax.tree.leaves, params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(PopulationRunner, "__call__", lambda *a: pytest.fail("a finished workdir trained again"))
    np.testing.assert_array_equal(run(tmp_path / "cut").test["rmse"], full.test["rmse"])
    with pytest.raises(ValueError, match=r"other forecast inputs \(learning_rates"):
        run(tmp_path / "cut", rates=(1e-2, 1e-3))


@pytest.mark.parametrize("kwargs, match", [
    ({"lookback": 0}, "lookback has value 0; allowed: an integer >= 1"),
    ({"horizon": 0}, "horizon has value 0; allowed: an integer >= 1"),
    ({"series": SINE[:12]}, "series has value '12 time steps'; allowed: enough that the train range"),
    ({"series": np.where(np.arange(600) == 7, np.nan, SINE)},
     r"series has value '1 non-finite time steps \(first: t=7"),
    ({"val_fraction": 0.6, "test_fraction": 0.4}, "val_fraction \\+ test_fraction has value 1.0"),
])
def test_bad_series_or_windows_raise_before_compiling(kwargs, match):
    arguments = {"series": SINE, "lookback": 8, "horizon": 2, **kwargs}
    with count_compilations() as compiled:
        with pytest.raises(ValueError, match=match):
            split_series(arguments.pop("series"), **arguments)
    assert compiled.count == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "transformer"}, "model has value 'transformer'; allowed: one of 'lstm', 'gru', 'simple_rnn'"),
    ({"learning_rates": [1e-3, -1.0]}, "learning_rates has value -1.0; allowed: a finite number >= 0"),
    ({"learning_rates": []}, "learning_rates has value"),
    ({"season": 9}, r"season has value 9; allowed: an integer in \[1, 8\]"),
    ({"loss": "l2"}, "loss has value 'l2'; allowed: one of 'mse', 'mae', 'huber'"),
    ({"hidden_size": 0}, "hidden_size has value 0"),
    ({"steps": 0}, "steps has value 0"),
    ({"model": "seq2seq", "num_layers": 2}, r"num_layers has value 2; allowed: an integer in \[1, 1\]"),
])
def test_bad_fit_arguments_raise_before_compiling(kwargs, match):
    data = split_series(SINE, lookback=8, horizon=2)
    with count_compilations() as compiled:
        with pytest.raises(ValueError, match=match):
            fit_forecasters(data, **{"steps": 10, **kwargs})
    assert compiled.count == 0
