"""What a search returns: the trial table, the best candidates, the Pareto front, plots.

`TrialTable` is a read-only list of `storage.Trial` rows with exports:
`to_csv`, `to_markdown` and, when pandas is importable, `to_pandas`. Params and
metrics are flattened into `params.<name>` and `metrics.<name>` columns.

`SearchResult.plot(workdir)` writes PNGs with matplotlib (Agg backend): the
search history, the best-so-far curve, the Pareto front (multi-objective) and
the lineage of trials that have parents (PBT, evolution).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vhjax.search.storage import Trial

BASE_COLUMNS = ("trial_id", "generation", "slot", "status", "fitness", "fidelity", "parent_id")
DIRECTIONS = ("maximize", "minimize")


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return str(value)


class TrialTable(Sequence[Trial]):
    """Trials in id order, with CSV / markdown / pandas exports."""

    def __init__(self, trials: Sequence[Trial], *, keep_order: bool = False):
        self._trials = tuple(trials if keep_order else sorted(trials, key=lambda trial: trial.trial_id))

    def __len__(self) -> int:
        return len(self._trials)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TrialTable(self._trials[index])
        return self._trials[index]

    def __iter__(self) -> Iterator[Trial]:
        return iter(self._trials)

    def __repr__(self) -> str:
        return f"TrialTable({len(self)} trials)"

    def where(self, status: str) -> "TrialTable":
        return TrialTable([trial for trial in self._trials if trial.status == status])

    def completed(self) -> "TrialTable":
        return self.where("complete")

    def column(self, name: str) -> list[Any]:
        """Values of a base column, `params.<name>` or `metrics.<name>` (None where absent)."""
        return [_cell(trial, name) for trial in self._trials]

    def columns(self) -> list[str]:
        params = sorted({key for trial in self._trials for key in trial.params})
        metrics = sorted({key for trial in self._trials for key in trial.metrics})
        return [*BASE_COLUMNS, *(f"params.{k}" for k in params), *(f"metrics.{k}" for k in metrics)]

    def records(self) -> list[dict[str, Any]]:
        columns = self.columns()
        return [{name: _cell(trial, name) for name in columns} for trial in self._trials]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """CSV text (header + one line per trial); also written to `path` when given."""
        columns = self.columns()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for trial in self._trials:
            writer.writerow([_format(_cell(trial, name)) for name in columns])
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        return text

    def to_markdown(self, columns: Sequence[str] | None = None, max_rows: int | None = None) -> str:
        """A GitHub markdown table of the given columns (default: all)."""
        columns = list(columns or self.columns())
        trials = self._trials if max_rows is None else self._trials[:max_rows]
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        for trial in trials:
            cells = [_format(_cell(trial, name)).replace("|", "\\|") for name in columns]
            lines.append("| " + " | ".join(cells) + " |")
        if max_rows is not None and len(self._trials) > max_rows:
            lines.append(f"\n({len(self._trials) - max_rows} more trials not shown)")
        return "\n".join(lines) + "\n"

    def to_pandas(self):
        """A pandas DataFrame (pandas is optional)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("TrialTable.to_pandas needs pandas; use to_csv or records") from error
        return pandas.DataFrame.from_records(self.records(), columns=self.columns())


def _cell(trial: Trial, name: str) -> Any:
    if name.startswith("params."):
        return trial.params.get(name[len("params."):])
    if name.startswith("metrics."):
        return trial.metrics.get(name[len("metrics."):])
    if name in BASE_COLUMNS or name in ("started_at", "finished_at", "study", "u"):
        return getattr(trial, name)
    raise ValueError(f"unknown column {name!r}; columns are {BASE_COLUMNS} + params.* + metrics.*")


# ----------------------------------------------------------------------------- best


def _ranked_markdown(table: str, titles: Mapping[str, str]) -> str:
    """Replace a markdown table's header with `titles` and number its rows."""
    lines = table.rstrip("\n").split("\n")
    head = "| rank | " + " | ".join(titles.values()) + " |"
    rule = "|" + "|".join("---" for _ in range(len(titles) + 1)) + "|"
    rows = [f"| {i} {line}" for i, line in enumerate(lines[2:], 1)]
    return "\n".join([head, rule, *rows])


def fitness_sign(direction: str) -> float:
    """+1 for 'maximize', -1 for 'minimize': `sign * fitness` is always 'higher is better'."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    return 1.0 if direction == "maximize" else -1.0


def was_tested(trial: Trial) -> bool:
    """Whether the trial carries a test-split value (PBT with keep_best: the round whose parameters
    a member returned, which the search then evaluated on every split)."""
    return any(key.startswith("test_") and value is not None for key, value in trial.metrics.items())


def rank_order(value: float, tested: bool, direction: str) -> tuple[float, bool]:
    """The ranking rule, best first: by value, and among equal values the tested ones first;
    callers break the remaining ties by order (the lower trial id or number)."""
    return -fitness_sign(direction) * value, not tested


def rank_key(trial: Trial, direction: str) -> tuple[float, bool]:
    """`rank_order` of a trial: its fitness, and whether it was tested (`was_tested`)."""
    return rank_order(trial.fitness, was_tested(trial), direction)


def rank_trials(trials: Sequence[Trial], direction: str) -> list[Trial]:
    """Completed trials with a finite fitness, best first (`rank_key`; then the lower trial id)."""
    fitness_sign(direction)  # a bad direction is an error even with nothing to rank
    scored = [t for t in trials if t.status == "complete" and t.fitness is not None
              and math.isfinite(t.fitness)]
    return sorted(scored, key=lambda t: (*rank_key(t, direction), t.trial_id))


def best_so_far(trials: Sequence[Trial], direction: str) -> np.ndarray:
    """Best fitness after each trial (in id order); NaN until the first completed trial."""
    sign = fitness_sign(direction)
    best, curve = -math.inf, []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        if trial.status == "complete" and trial.fitness is not None and math.isfinite(trial.fitness):
            best = max(best, sign * trial.fitness)
        curve.append(sign * best if math.isfinite(best) else math.nan)
    return np.asarray(curve, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Outcome of `vhjax.search.driver.search`.

    `best` is the best completed trial (None if every trial failed);
    `pareto_front` lists the non-dominated trials of a multi-objective search
    (None for a single objective); `objectives` maps objective metric names to
    their directions.
    """

    trials: TrialTable
    direction: str
    objectives: dict[str, str]
    pareto_front: list[Trial] | None = None
    workdir: str | None = None
    study: str = "default"
    top_fidelity_only: bool = False  # multifidelity: rank only trials at the largest budget reached
    compilations: dict | None = None  # search_pbt: its training's XLA programs (`compilations_record`)
    cut_at: int | None = None  # search_pbt: the step a `stop` ended its run at (None: it trained to the end)
    timed_out: bool = False  # search: its `timeout` passed, so it ended before its budget
    stopped: bool = False  # search, search_pbt: a callback returned True, so it ended before its budget

    def _ranked(self) -> list[Trial]:
        trials = list(self.trials)
        if self.top_fidelity_only:
            budgets = [t.fidelity for t in trials if t.status == "complete" and t.fidelity is not None]
            if budgets:
                trials = [t for t in trials if t.fidelity is not None and t.fidelity >= max(budgets)]
        return rank_trials(trials, self.direction)

    @property
    def best(self) -> Trial | None:
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def top(self, k: int) -> list[Trial]:
        """The k best completed trials, best first (at the top budget in a multifidelity search)."""
        return self._ranked()[:k]

    @property
    def best_params(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best.params

    @property
    def best_fitness(self) -> float | None:
        return None if self.best is None else self.best.fitness

    @property
    def best_metrics(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best.metrics

    def best_so_far(self) -> np.ndarray:
        return best_so_far(self.trials, self.direction)

    def ancestry(self, trial: Trial | None = None) -> list[Trial]:
        """`trial` (default: the best) and the trials it continued from, oldest first: a PBT pick's
        hyperparameter schedule (one trial per round, with its step as fidelity), a promoted
        configuration's rungs."""
        trial = self.best if trial is None else trial
        return [] if trial is None else trial_ancestry(self.trials, trial)

    def leaderboard(self, top: int = 10, columns: Mapping[str, str] | Sequence[str] | None = None) -> str:
        """The best `top` completed trials as markdown; `columns` are table columns or column -> title."""
        best = TrialTable(self.top(top), keep_order=True)
        if columns is None:
            columns = ["trial_id", *(c for c in best.columns() if c.startswith("params.")), "fitness"]
        titles = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
        return _ranked_markdown(best.to_markdown(columns=list(titles)), titles)

    def plot(self, workdir: str | os.PathLike | None = None) -> dict[str, str]:
        """Save PNG plots under `workdir` (default: the search's workdir); returns name -> path."""
        target = workdir if workdir is not None else self.workdir
        if target is None:
            raise ValueError("plot needs a workdir: the search ran without one, pass plot(workdir)")
        return save_plots(self, os.fspath(target))


def trial_ancestry(trials: Sequence[Trial], trial: Trial) -> list[Trial]:
    """`trial` and its parents (`parent_id`, followed while the parent is among `trials`), oldest first."""
    by_id = {t.trial_id: t for t in trials}
    chain, seen = [trial], {trial.trial_id}
    while chain[-1].parent_id is not None and chain[-1].parent_id in by_id and chain[-1].parent_id not in seen:
        chain.append(by_id[chain[-1].parent_id])
        seen.add(chain[-1].trial_id)
    return chain[::-1]


# ----------------------------------------------------------------------------- plots


def figures(result: SearchResult) -> dict[str, Any]:
    """The plots as matplotlib figures, name -> Figure (plots that do not apply are left out);
    close them with `matplotlib.pyplot.close` when done."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    drawn = {name: draw(result, plt) for name, draw in _PLOTS}
    return {name: figure for name, figure in drawn.items() if figure is not None}


def save_plots(result: SearchResult, workdir: str) -> dict[str, str]:
    import matplotlib.pyplot as plt

    os.makedirs(workdir, exist_ok=True)
    paths = {}
    for name, figure in figures(result).items():
        path = os.path.join(workdir, f"{name}.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        paths[name] = path
    return paths


def fitness_label(result: SearchResult) -> str:
    """The fitness axis label: the metric's name and direction ('accuracy (maximize)'); a
    multi-objective search's fitness is its own scalar."""
    if len(result.objectives) == 1:
        name, direction = next(iter(result.objectives.items()))
        return f"{name} ({direction})"
    return f"fitness ({result.direction})"


def _plot_history(result: SearchResult, plt):
    trials = result.trials
    figure, axis = plt.subplots(figsize=(6, 4))
    done = [t for t in trials if t.status == "complete" and t.fitness is not None]
    failed = [t for t in trials if t.status == "failed"]
    axis.scatter([t.trial_id for t in done], [t.fitness for t in done], s=10, label="complete")
    if failed:
        low = min((t.fitness for t in done), default=0.0)
        axis.scatter([t.trial_id for t in failed], [low] * len(failed), marker="x", c="red",
                     s=15, label="failed")
    axis.set(xlabel="trial id", ylabel=fitness_label(result), title="search history")
    axis.legend()
    return figure


def _plot_best_so_far(result: SearchResult, plt):
    figure, axis = plt.subplots(figsize=(6, 4))
    curve = result.best_so_far()
    axis.plot(np.arange(1, len(curve) + 1), curve, drawstyle="steps-post")  # the best changes only at a trial
    axis.set(xlabel="trials", ylabel=f"best {fitness_label(result)}", title="best so far")
    _integer_ticks(axis.xaxis)
    return figure


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _plot_pareto(result: SearchResult, plt):
    names = list(result.objectives)
    if result.pareto_front is None or len(names) < 2:
        return None
    x_name, y_name = names[:2]
    figure, axis = plt.subplots(figsize=(5, 5))
    done = result.trials.completed()
    axis.scatter(done.column(f"metrics.{x_name}"), done.column(f"metrics.{y_name}"), s=8,
                 c="lightgray", label="trials")
    front = sorted(result.pareto_front, key=lambda t: t.metrics[x_name])
    axis.plot([t.metrics[x_name] for t in front], [t.metrics[y_name] for t in front], "o-",
              c="C3", label="Pareto front")
    axis.set(xlabel=f"{x_name} ({result.objectives[x_name]})",
             ylabel=f"{y_name} ({result.objectives[y_name]})", title="Pareto front")
    axis.legend()
    return figure


def _plot_lineage(result: SearchResult, plt):
    trials = {t.trial_id: t for t in result.trials}
    children = [t for t in trials.values() if t.parent_id is not None and t.parent_id in trials]
    if not children:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for child in children:
        parent = trials[child.parent_id]
        axis.plot([parent.generation, child.generation], [parent.slot, child.slot], c="C0",
                  alpha=0.5, lw=0.8)
    points = axis.scatter([t.generation for t in trials.values()], [t.slot for t in trials.values()],
                          c=[t.fitness if t.fitness is not None else np.nan for t in trials.values()],
                          s=12, cmap="viridis", plotnonfinite=True)
    figure.colorbar(points, ax=axis, label=fitness_label(result))
    axis.set(xlabel="generation", ylabel="slot", title="lineage (parent -> child)")
    _integer_ticks(axis.xaxis)
    _integer_ticks(axis.yaxis)
    return figure


_PLOTS = (
    ("history", _plot_history),
    ("best_so_far", _plot_best_so_far),
    ("pareto_front", _plot_pareto),
    ("lineage", _plot_lineage),
)
