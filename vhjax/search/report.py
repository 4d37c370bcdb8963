"""`vhjax report WORKDIR`: one self-contained HTML page about a finished (or running) search.

The page holds a leaderboard (the best trials with their params and metrics), the plots of
`SearchResult` (search history, best so far, Pareto front, lineage when trials have parents) as
embedded base64 PNGs, and the parameter importance: Optuna's default evaluator
(`optuna.importance.get_param_importances`, fANOVA) on an in-memory Optuna study rebuilt from the
completed trials and the space's distributions; where that cannot run (fewer than two completed
trials, no stored space, or an Optuna error) the page says so and shows the absolute Spearman rank
correlation of each numeric parameter with the fitness instead.

    from vhjax.search.report import write_report
    write_report("runs/demo")  # -> runs/demo/report.html

A workdir of `vhjax.search.tune` (`vhjax demo`) holds an Optuna study (`study.db`) instead of
`trials.sqlite`; its trials are read with Optuna (pruned trials shown as 'pruned').
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vhjax.search import storage as storage_lib
from vhjax.search.results import SearchResult, TrialTable, figures, fitness_label
from vhjax.search.storage import Trial
from vhjax.validation import check_int, invalid

REPORT_FILENAME = "report.html"
OPTUNA_FILENAME = "study.db"  # the Optuna study of vhjax.search.tune (and `vhjax demo`)


# ----------------------------------------------------------------------------- loading


def stored_config(workdir: str | os.PathLike, study: str = storage_lib.DEFAULT_STUDY,
                  filename: str = storage_lib.SQLITE_FILENAME) -> tuple[list[Trial], dict]:
    """(trials, search configuration) of the study stored in `workdir` (in `filename`: a vhjax
    search's `trials.sqlite`, or the `study.db` of `tune`'s PBT method); clear errors when there is none."""
    from vhjax.search.driver import FINGERPRINT_KEY

    path = Path(workdir) / filename
    if not path.is_file():
        raise invalid("workdir", os.fspath(workdir), f"a search workdir holding {storage_lib.SQLITE_FILENAME} "
                      f"(vhjax.search / vhjax search) or {OPTUNA_FILENAME} (vhjax.search.tune / vhjax demo)",
                      FileNotFoundError)
    with storage_lib.open_store(storage=path, study=study) as store:
        trials = store.trials()
        stored = store.get_meta(FINGERPRINT_KEY)
    if not trials:
        raise invalid("workdir", os.fspath(workdir), f"a workdir whose study {study!r} holds trials "
                      f"({path} has none)")
    return trials, json.loads(stored) if stored else {}


def _optuna_trial(trial: Any) -> Trial:
    """An Optuna FrozenTrial as a vhjax `Trial` (pruned trials: status 'pruned', fidelity = last step)."""
    state = trial.state.name.lower()
    status = {"complete": "complete", "fail": "failed", "running": "running", "waiting": "running"}.get(state, state)
    metrics = {k: v for k, v in trial.user_attrs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    steps = max(trial.intermediate_values, default=None)
    return Trial(trial_id=trial.number, generation=0, slot=0, params=dict(trial.params), u=(), status=status,
                 fitness=trial.value if status == "complete" else None, metrics=metrics,
                 fidelity=None if steps is None else float(steps))


def load_optuna_study(workdir: str | os.PathLike, study: str | None = None) -> tuple[SearchResult, dict[str, Any]]:
    """(result, distributions) of the Optuna study in `workdir/study.db` (`study`, or its only study)."""
    import optuna

    url = f"sqlite:///{(Path(workdir) / OPTUNA_FILENAME).absolute()}"
    loaded = optuna.load_study(study_name=optuna_study_name(workdir, study), storage=url)
    if not loaded.trials:
        raise invalid("workdir", os.fspath(workdir), f"a workdir whose study {study!r} holds trials")
    direction = loaded.direction.name.lower()
    distributions = {k: v for t in loaded.trials for k, v in t.distributions.items()}
    result = SearchResult(trials=TrialTable([_optuna_trial(t) for t in loaded.trials]), direction=direction,
                          objectives={(loaded.metric_names or ["value"])[0]: direction},
                          workdir=os.fspath(workdir), study=study)
    return result, distributions


def optuna_study_name(workdir: str | os.PathLike, study: str | None) -> str:
    """`study` if `workdir/study.db` holds it, else that file's only study (else a clear error)."""
    import optuna

    url = f"sqlite:///{(Path(workdir) / OPTUNA_FILENAME).absolute()}"
    from vhjax.search.tune_pbt import is_restart_study

    names = [summary.study_name for summary in optuna.get_all_study_summaries(url)]
    names = [name for name in names if name == study or not is_restart_study(name)]  # tune PBT's restarts go along
    if study not in names:
        if len(names) != 1:
            raise invalid("study", study, f"one of the studies in {url}: {names}")
        study = names[0]
    return study


def load_result(workdir: str | os.PathLike, study: str = storage_lib.DEFAULT_STUDY) -> SearchResult:
    """The `SearchResult` of the search stored in `workdir` (as `vhjax.search` returned it), or of
    the Optuna study of `vhjax.search.tune` there (`study.db`)."""
    return _load(workdir, study)[0]


def _load(workdir: str | os.PathLike, study: str) -> tuple[SearchResult, dict[str, Any]]:
    """(result, Optuna distributions of its parameters)."""
    from vhjax.search.driver import pareto_trials

    from vhjax.search.tune_pbt import made_by_pbt, restart_studies

    filename = storage_lib.SQLITE_FILENAME
    if not (Path(workdir) / filename).is_file() and (Path(workdir) / OPTUNA_FILENAME).is_file():
        study = optuna_study_name(workdir, study)
        if not made_by_pbt(Path(workdir) / OPTUNA_FILENAME, study):
            return load_optuna_study(workdir, study)
        filename = OPTUNA_FILENAME  # tune's PBT method: a vhjax store, with lineage and the search's configuration
    trials, config = stored_config(workdir, study, filename)
    if filename == OPTUNA_FILENAME:  # tune PBT's restarts: their own studies in the file (store ids are unique in it)
        trials += [t for name in restart_studies(Path(workdir) / filename, study)
                   for t in stored_config(workdir, name, filename)[0]]
    objectives = dict(config.get("objectives") or {"fitness": "maximize"})
    table = TrialTable(trials)
    result = SearchResult(
        trials=table, direction=objectives[next(iter(objectives))], objectives=objectives,
        pareto_front=pareto_trials(table, objectives) if len(objectives) > 1 else None,
        workdir=os.fspath(workdir), study=study,
        # a PBT that kept each slot's best evaluated parameters picks among every round (as search_pbt returned it)
        top_fidelity_only=any(t.fidelity is not None for t in trials) and not kept_best(config),
    )
    return result, optuna_distributions((config.get("space") or {}).get("params"))


def kept_best(config: Mapping[str, Any]) -> bool:
    """Whether a stored search configuration trained with best-model keeping (or early stopping)."""
    train = config.get("train_config") or {}
    return bool(train.get("keep_best") or train.get("patience"))


# ----------------------------------------------------------------------------- importance


def optuna_distributions(space_params: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Optuna distributions from a stored space description (`driver.space_description`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions = {}
    for entry in space_params or []:
        kind = entry.get("kind")
        if kind == "Float":
            distributions[entry["name"]] = FloatDistribution(entry["low"], entry["high"], log=bool(entry.get("log")),
                                                             step=entry.get("step"))
        elif kind == "Int":
            distributions[entry["name"]] = IntDistribution(int(entry["low"]), int(entry["high"]),
                                                           log=bool(entry.get("log")), step=int(entry.get("step", 1)))
        elif kind == "Categorical":
            choices = entry["choices"]
            choices = json.loads(choices) if isinstance(choices, str) else choices  # stored as JSON text
            distributions[entry["name"]] = CategoricalDistribution([optuna_value(c) for c in choices])
    return distributions


def optuna_value(value: Any) -> Any:
    """A parameter value as Optuna stores categorical choices (None, bool, int, float, str; others as JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _usable(trials: Sequence[Trial]) -> list[Trial]:
    return [t for t in trials if t.status == "complete" and t.fitness is not None and math.isfinite(t.fitness)]


def optuna_importance(trials: Sequence[Trial], distributions: Mapping[str, Any], direction: str) -> dict[str, float]:
    """`optuna.importance.get_param_importances` (fANOVA) on an in-memory study of the completed trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        study = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial in _usable(trials):
        params = {k: optuna_value(v) if isinstance(distributions[k], CategoricalDistribution) else v
                  for k, v in trial.params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=float(trial.fitness)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # the same page for the same trials
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_importance(trials: Sequence[Trial]) -> dict[str, float]:
    """|Spearman rank correlation| of each numeric parameter with the fitness, largest first."""
    usable = _usable(trials)
    names = sorted({k for t in usable for k, v in t.params.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    scores = {}
    for name in names:
        pairs = [(float(t.params[name]), float(t.fitness)) for t in usable
                 if isinstance(t.params.get(name), (int, float))]
        if len(pairs) < 2:
            continue
        x, y = (_ranks(np.asarray(column)) for column in zip(*pairs))
        if x.std() == 0 or y.std() == 0:
            scores[name] = 0.0
        else:
            scores[name] = abs(float(np.corrcoef(x, y)[0, 1]))
    return dict(sorted(scores.items(), key=lambda item: -item[1]))


def param_importance(result: SearchResult, distributions: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(method description, parameter -> importance): Optuna's fANOVA, else the Spearman fallback."""
    reason = "no stored space" if not distributions else "fewer than two completed trials"
    if distributions and len(_usable(result.trials)) >= 2:
        try:
            return ("optuna.importance.get_param_importances (fANOVA) on an in-memory Optuna study of the "
                    "completed trials", optuna_importance(result.trials, distributions, result.direction))
        except Exception as error:  # noqa: BLE001 (any Optuna failure falls back; the page says why)
            reason = f"Optuna failed: {type(error).__name__}: {error}"
    return (f"|Spearman rank correlation| of each numeric parameter with the fitness (fallback: {reason})",
            spearman_importance(result.trials))


# ----------------------------------------------------------------------------- HTML


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape("" if value is None else str(value))


def leaderboard_html(result: SearchResult, top: int = 10) -> str:
    """The best `top` trials as an HTML table (rank, trial, generation, fidelity, params, metrics)."""
    best = result.top(top)
    if not best:
        return "<p>No completed trial.</p>"
    params = sorted({k for t in best for k in t.params})
    shown = next(iter(result.objectives)) if len(result.objectives) == 1 else None  # already the fitness column
    metrics = sorted({k for t in best for k in t.metrics if k != shown})
    head = ["rank", "trial", "generation", "fidelity", fitness_label(result), *params, *metrics]
    rows = []
    for rank, trial in enumerate(best, 1):
        cells = [rank, trial.trial_id, trial.generation, trial.fidelity, trial.fitness,
                 *(trial.params.get(k) for k in params), *(trial.metrics.get(k) for k in metrics)]
        attributes = ' id="best-trial"' if rank == 1 else ""
        rows.append(f'<tr{attributes} data-trial-id="{trial.trial_id}">'
                    + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def importance_html(method: str, scores: Mapping[str, float]) -> str:
    """The importance table with a bar per parameter, and the method used."""
    if not scores:
        return f"<p>No parameter importance (method: {html.escape(method)}).</p>"
    rows = "".join(
        f'<tr><td>{html.escape(name)}</td><td>{value:.3f}</td><td><div class="bar" '
        f'style="width:{max(0.0, min(1.0, value)) * 300:.0f}px"></div></td></tr>'
        for name, value in scores.items())
    return (f"<p>Method: {html.escape(method)}.</p><table><thead><tr><th>parameter</th><th>importance</th>"
            f"<th></th></tr></thead><tbody>{rows}</tbody></table>")


def plots_html(result: SearchResult) -> str:
    """The `SearchResult` plots as `<img>` tags holding base64 PNGs."""
    import matplotlib.pyplot as plt

    parts = []
    for name, figure in figures(result).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        title = name.replace("_", " ")
        parts.append(f'<figure id="plot-{name}"><img alt="{title}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{title}</figcaption></figure>")
    return "".join(parts)


_STYLE = """body{font-family:sans-serif;margin:2em;color:#222;background:#fff}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#2c5d8f;color:#fff}tr#best-trial{background:#fff3b0}
.bar{height:12px;background:#2c8f5d}figure{display:inline-block;margin:0 1em 1em 0}"""


def report_html(result: SearchResult, importance: tuple[str, Mapping[str, float]], top: int = 10) -> str:
    """The whole page as a string."""
    done = len(result.trials.completed())
    failed = len(result.trials.where("failed"))
    best = result.best
    summary = (f"{len(result.trials)} trials ({done} complete, {failed} failed); objectives "
               f"{html.escape(str(result.objectives))}; best: "
               + (f"trial {best.trial_id}, {fitness_label(result)} {best.fitness:.6g}" if best else "none"))
    title = f"vhjax search report: {html.escape(result.workdir or '')} (study {html.escape(result.study)})"
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{title}</h1><p>{summary}</p>"
            f"<h2>Leaderboard</h2>{leaderboard_html(result, top)}"
            f"<h2>Parameter importance</h2>{importance_html(*importance)}"
            f"<h2>Plots</h2>{plots_html(result)}</body></html>\n")


def write_report(source: SearchResult | str | os.PathLike, out: str | os.PathLike | None = None, *,
                 study: str = storage_lib.DEFAULT_STUDY, top: int = 10) -> Path:
    """Write the HTML report of a search (a workdir or a `SearchResult` with one) to `out`
    (default `WORKDIR/report.html`); returns its path."""
    check_int("top", top, minimum=1)
    if isinstance(source, SearchResult):
        result, distributions = source, {}
        if source.workdir is not None and (Path(source.workdir) / storage_lib.SQLITE_FILENAME).is_file():
            distributions = _load(source.workdir, source.study)[1]  # the stored space
    else:
        result, distributions = _load(source, study)
    if result.workdir is None and out is None:
        raise invalid("out", out, "a path for the report (the search ran without a workdir)")
    path = Path(out) if out is not None else Path(result.workdir) / REPORT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(result, param_importance(result, distributions), top), encoding="utf-8")
    return path
