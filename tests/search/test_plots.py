"""Search plots: the metric's name on the axes, best-so-far as steps, the lineage plot with a colour
bar and integer generation ticks (checked on the returned matplotlib figures); the lineage of one
trial as a list (`SearchResult.ancestry`)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vhjax.search.results import SearchResult, TrialTable, figures  # noqa: E402
from vhjax.search.storage import Trial  # noqa: E402

FITNESS = [0.5, 0.7, 0.6, 0.65, 0.8, 0.75, 0.72, 0.9, 0.4]


def result() -> SearchResult:
    trials = [Trial(trial_id=i, generation=i // 3, slot=i % 3, params={"x": float(i)}, u=(0.0,), status="complete",
                    fitness=value, metrics={"accuracy": value}, parent_id=None if i < 3 else i - 3)
              for i, value in enumerate(FITNESS)]
    return SearchResult(trials=TrialTable(trials), direction="maximize", objectives={"accuracy": "maximize"})


def test_axes_name_the_metric_and_best_so_far_is_a_step_plot():
    drawn = figures(result())
    try:
        assert set(drawn) == {"history", "best_so_far", "lineage"}
        history = drawn["history"].axes[0]
        assert history.get_ylabel() == "accuracy (maximize)"
        best = drawn["best_so_far"].axes[0]
        assert best.get_ylabel() == "best accuracy (maximize)" and "fitness" not in best.get_ylabel()
        line = best.get_lines()[0]
        assert line.get_drawstyle() == "steps-post"
        np.testing.assert_allclose(line.get_ydata(), np.maximum.accumulate(FITNESS))
    finally:
        for figure in drawn.values():
            plt.close(figure)


def test_lineage_has_a_colour_bar_and_integer_generation_ticks():
    drawn = figures(result())
    try:
        lineage = drawn["lineage"]
        axis, colour_bar = lineage.axes  # the plot and its colour bar
        assert colour_bar.get_ylabel() == "accuracy (maximize)"
        lineage.canvas.draw()
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert axis.get_xlabel() == "generation"
    finally:
        for figure in drawn.values():
            plt.close(figure)


def test_ancestry_follows_parents_oldest_first_and_stops_at_a_missing_parent():
    searched = result()
    assert [t.trial_id for t in searched.ancestry()] == [1, 4, 7]  # the best (0.9) and its parents
    assert [t.trial_id for t in searched.ancestry(searched.trials[5])] == [2, 5]
    cut = SearchResult(trials=TrialTable(list(searched.trials)[3:]), direction="maximize",
                       objectives={"accuracy": "maximize"})
    assert [t.trial_id for t in cut.ancestry()] == [4, 7]  # trial 1 is not among these trials
