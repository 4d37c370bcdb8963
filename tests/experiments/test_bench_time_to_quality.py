"""The pure pieces of experiments/bench_time_to_quality.py on synthetic timelines: best so far,
time to reach a target, the pick's test accuracy, speed-ups and the summary table."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "experiments" / "bench_time_to_quality.py"
spec = importlib.util.spec_from_file_location("bench_time_to_quality", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)

# (seconds, validation accuracy, test accuracy) per finished trial, deliberately out of order
OPTUNA = [(10.0, 0.50, 0.48), (30.0, 0.90, 0.86), (20.0, 0.80, 0.79), (40.0, 0.85, 0.99)]
FAST = [(8.0, 0.70, 0.71), (8.0, 0.89, 0.87), (16.0, math.nan, math.nan), (16.0, 0.92, 0.90)]
SLOW = [(50.0, 0.60, 0.61), (100.0, 0.88, 0.80)]


def run(contestant, seed, timeline, **extra):
    return {"contestant": contestant, "seed": seed, "timeline": timeline, "trials": len(timeline),
            "member_steps": 100 * len(timeline), "wall": max(t for t, _, _ in timeline),
            "compile_count": 3, "compile_seconds": 1.5, **extra}


def test_best_so_far_sorts_by_time_skips_nan_and_tracks_the_pick():
    assert bench.best_so_far(OPTUNA) == [(10.0, 0.5, 0.48), (20.0, 0.8, 0.79), (30.0, 0.9, 0.86), (30.0 + 10, 0.9, 0.86)]
    curve = bench.best_so_far(FAST)
    assert curve[-1] == (16.0, 0.92, 0.90) and curve[2][1:] == (0.89, 0.87)  # NaN never becomes the pick
    assert bench.final_pick(OPTUNA) == (0.9, 0.86)  # the test accuracy of the best-validation trial
    assert all(math.isnan(v) for v in bench.final_pick([(1.0, math.nan, 0.5)]))


def test_time_to_reach_targets():
    assert bench.time_to_reach(OPTUNA, 0.98 * 0.9) == 30.0
    assert bench.time_to_reach(OPTUNA, 0.9) == 30.0
    assert bench.time_to_reach(OPTUNA, 0.8) == 20.0
    assert bench.time_to_reach(FAST, 0.98 * 0.9) == 8.0   # 0.89 >= 0.882
    assert bench.time_to_reach(FAST, 0.9) == 16.0
    assert bench.time_to_reach(SLOW, 0.9) == math.inf
    assert bench.time_to_reach([], 0.1) == math.inf


def test_speedup_conventions():
    assert bench.speedup(30.0, 10.0) == 3.0
    assert bench.speedup(math.inf, 10.0) == math.inf
    assert bench.speedup(30.0, math.inf) == 0.0
    assert math.isnan(bench.speedup(math.inf, math.inf))


def test_summary_uses_the_same_seeds_reference_and_medians():
    runs = [run("optuna_tpe", 0, OPTUNA), run("vhjax_tpe", 0, FAST), run("optuna_random", 0, SLOW),
            # seed 1: the reference is worse, so the same contestant reaches it sooner
            run("optuna_tpe", 1, [(12.0, 0.70, 0.70)]), run("vhjax_tpe", 1, [(4.0, 0.75, 0.74)]),
            run("optuna_random", 1, [(60.0, 0.69, 0.69)])]
    summary = bench.summarize(runs, "optuna_tpe")
    assert list(summary) == ["optuna_tpe", "vhjax_tpe", "optuna_random"]
    tpe, ours, rand = summary["optuna_tpe"], summary["vhjax_tpe"], summary["optuna_random"]
    assert tpe["time_1"] == pytest.approx((30.0 + 12.0) / 2) and tpe["reached_1"] == 2
    assert ours["time_1"] == pytest.approx((16.0 + 4.0) / 2)
    assert ours["time_0.98"] == pytest.approx((8.0 + 4.0) / 2)
    assert ours["speedup_1_vs_optuna_tpe"] == pytest.approx(21.0 / 10.0)
    # optuna_random reaches 98% of 0.70 (0.686) in seed 1 only: the median over seeds is inf
    assert rand["reached_0.98"] == 1 and rand["time_0.98"] == math.inf
    assert rand["speedup_0.98_vs_optuna_tpe"] == 0.0
    assert ours["test"] == pytest.approx((0.90 + 0.74) / 2) and ours["best_val"] == pytest.approx((0.92 + 0.75) / 2)
    assert "speedup_1_vs_optuna_tpe_hb" not in ours  # no pruner contestant in these runs
    # the mean of per-seed speed-ups: seed 0 30/16, seed 1 12/4; optuna_random missed both (0 each)
    assert ours["mean_speedup_1"] == pytest.approx((30.0 / 16.0 + 12.0 / 4.0) / 2)
    assert rand["mean_speedup_1"] == 0.0 and tpe["mean_speedup_1"] == 1.0

    table = bench.markdown_table(summary, "optuna_tpe")
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "not reached (1/2)" in lines[4] and "2.10x" in lines[3]
    assert lines[4].rstrip(" |").endswith("not reached | 0.00x (0.00-0.00)")  # at 100%: never; mean of per-seed: 0
    # the interval of two seeds' ratios 1.875 and 3: resamples give the means 1.875, 2.4375 and 3
    assert lines[3].rstrip(" |").endswith("2.44x (1.88-3.00)")
    assert ours["mean_speedup_1_interval"] == pytest.approx((1.875, 3.0))


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_seeds():
    ratios = [0.0, 0.9, 1.5, 2.2, 3.1, 4.0, 4.6, 5.3]
    low, high = bench.bootstrap_interval(ratios)
    mean = sum(ratios) / len(ratios)
    assert low < mean < high and 0.0 <= low and high <= 5.3
    wide = high - low
    low, high = bench.bootstrap_interval(ratios * 6)  # six times the seeds, the same spread
    assert low < mean < high and high - low < wide / 2  # about 1/sqrt(6) as wide
    assert bench.bootstrap_interval([2.5] * 5) == (2.5, 2.5)
    assert bench.bootstrap_interval(ratios) == bench.bootstrap_interval(ratios)  # a fixed generator
    assert all(math.isnan(x) for x in bench.bootstrap_interval([]))


def test_pooled_runs_keep_each_seed_against_its_own_reference(tmp_path):
    import json

    first = [run("optuna_tpe", 0, OPTUNA), run("vhjax_tpe", 0, FAST)]
    second = [run("optuna_tpe", 0, [(12.0, 0.70, 0.70)]), run("vhjax_tpe", 0, [(4.0, 0.75, 0.74)])]  # seed 0 again
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, runs in zip(paths, (first, second)):
        path.write_text(json.dumps({"runs": runs}))
    pooled = bench.pooled_runs(paths)
    assert sorted({r["seed"] for r in pooled}) == ["a:0", "b:0"]
    ours = bench.summarize(pooled, "optuna_tpe")["vhjax_tpe"]
    assert ours["reached_1"] == 2 and ours["mean_speedup_1"] == pytest.approx((30.0 / 16.0 + 12.0 / 4.0) / 2)
    # an earlier name of the same run is pooled under today's, unless its file holds both names
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"runs": [run("vhjax_pbt_shrink", 0, FAST)]}))
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"runs": [run("vhjax_pbt_shrink", 0, FAST), run("vhjax_tune", 0, FAST)]}))
    assert [r["contestant"] for r in bench.pooled_runs([old, both])] == ["vhjax_tune", "vhjax_pbt_shrink", "vhjax_tune"]


def test_speedup_cells_say_who_reached():
    assert bench._fmt_speedup(2.1) == "2.10x"
    assert bench._fmt_speedup(bench.speedup(30.0, math.inf)) == "not reached"
    assert bench._fmt_speedup(bench.speedup(math.inf, 10.0)) == "only this one reached"
    assert bench._fmt_speedup(bench.speedup(math.inf, math.inf)) == "neither reached"


def test_summary_needs_the_reference():
    with pytest.raises(ValueError, match="reference contestant 'optuna_tpe'"):
        bench.summarize([run("vhjax_tpe", 0, FAST)], "optuna_tpe")


def test_contestant_registry_and_candidate_mapping():
    assert {"optuna_tpe", "optuna_random", "optuna_tpe_hb", "vhjax_tpe", "vhjax_random", "vhjax_pbt", "vhjax_pbt_best",
            "vhjax_pbt_shrink"} <= set(bench.CONTESTANTS)
    task = bench.TASKS["mnist1d_cnn"]
    member = bench.vhjax_member(task)({"learning_rate": 1e-3, "weight_decay": 1e-4, "dropout_rate": 0.2,
                                       "augment": 0.1})
    assert member == {"learning_rate": 1e-3, "weight_decay": 1e-4, "dropout_rate": 0.2,
                      "augment": ({"name": "shift", "strength": 0.1},)}
    assert [name for name, *_ in task.space] == ["learning_rate", "weight_decay", "dropout_rate", "augment"]


def test_another_round_fits_the_time_budget():
    assert bench.another_round_fits(100.0, 1, None)  # no budget: every seed runs
    assert bench.another_round_fits(100.0, 1, 200.0)  # 100 s + another 100 s round ends at the budget
    assert not bench.another_round_fits(100.0, 1, 199.0)
    assert bench.another_round_fits(200.0, 2, 300.0) and not bench.another_round_fits(200.0, 2, 299.0)


def test_conv_impl_reaches_only_the_vhjax_model():
    task = bench.TASKS["digits_cnn"]
    assert bench.vhjax_config(task, 100, 0).model_kwargs == task.model_kwargs  # 'auto': the model's default
    patch = bench.vhjax_config(task, 100, 0, "patch").model_kwargs
    assert patch == {**task.model_kwargs, "conv_impl": "patch"} and "conv_impl" not in task.model_kwargs


def test_pbt_member_steps_count_only_the_members_that_trained():
    fidelities = [float(step) for step, count in ((150, 32), (300, 32), (450, 16), (600, 16)) for _ in range(count)]
    assert bench.trained_member_steps(fidelities) == 150 * (32 + 32 + 16 + 16)


def test_the_first_run_alone_is_an_ablation_row_of_the_same_run():
    tune_run = {**run("vhjax_tune", 0, [(4.0, 0.60, 0.60), (9.0, 0.85, 0.84), (20.0, 0.92, 0.90)]),
                "first_run": {"trials": 2, "timeline": [(4.0, 0.60, 0.60), (9.0, 0.85, 0.84)], "member_steps": 50}}
    runs = [run("optuna_tpe", 0, OPTUNA), tune_run]
    rows = bench.first_run_rows(runs)
    assert [(r["contestant"], r["wall"], r["member_steps"]) for r in rows] == [("vhjax_tune_first_run", 9.0, 50)]
    summary = bench.summarize(runs + rows, "optuna_tpe")
    # TPE's best 0.90 (at 30 s): the whole call reaches it at 20 s (1.5x), its first run alone never
    assert summary["vhjax_tune"]["mean_speedup_1"] == pytest.approx(1.5)
    assert summary["vhjax_tune_first_run"]["reached_1"] == 0 and summary["vhjax_tune_first_run"]["mean_speedup_1"] == 0


def test_picks_at_a_fixed_time_give_the_others_as_long_as_the_timed_run_took():
    assert bench.pick_at(OPTUNA, 25.0) == (0.80, 0.79) and bench.pick_at(OPTUNA, 30.0) == (0.90, 0.86)
    assert all(math.isnan(x) for x in bench.pick_at(OPTUNA, 5.0))  # nothing finished yet
    timed = [(9.0, 0.88, math.nan), (20.0, 0.93, math.nan), (30.0, 0.95, 0.91)]  # its pick's test known at the end
    runs = [run("vhjax_tune_timeout", 0, timed), run("optuna_tpe", 0, OPTUNA),  # seed 0: ends at 30 s
            run("vhjax_tune_timeout", 1, [(12.0, 0.70, 0.65)]), run("optuna_tpe", 1, [(10.0, 0.75, 0.74)])]
    summary = bench.fixed_time_summary(runs, "vhjax_tune_timeout")
    tpe, ours = summary["optuna_tpe"], summary["vhjax_tune_timeout"]
    assert tpe["seconds"] == ours["seconds"] == pytest.approx(21.0)  # the timed runs' walls, 30 and 12 s
    assert tpe["best_val"] == pytest.approx((0.90 + 0.75) / 2) and tpe["test"] == pytest.approx((0.86 + 0.74) / 2)
    assert ours["test"] == pytest.approx((0.91 + 0.65) / 2)
    assert tpe["timed_lower_equal_higher"] == [1, 0, 1]  # seed 1: 0.65 < 0.74; seed 0: 0.91 > 0.86
    lines = bench.fixed_time_table(summary, "vhjax_tune_timeout").splitlines()
    assert lines[3].endswith("| 1 / 0 / 1 |") and lines[2].endswith("| - |")
    with pytest.raises(ValueError, match="no run of the timed contestant"):
        bench.fixed_time_summary([run("optuna_tpe", 0, OPTUNA)], "vhjax_tune_timeout")
