"""Training-curve diagnosis: divergence, plateau, over-fitting and under-fitting, with reasons.

Reads the rows `fit` writes to `metrics.jsonl` (`{"step", "split": "train" | "eval", "loss",
"accuracy", ...}`; non-finite numbers are stored as the strings "nan", "inf", "-inf") or the same
rows as a list of dicts, and applies the rules of the catalogue's curve diagnosis (S3 §8):

- divergence: a non-finite loss, or a train loss that explodes above `explode_factor` times its
  first value (the learning rate is too high);
- plateau: the train loss stops improving (by more than `plateau_tol` of its best) for the last
  `patience` rows while still above `high_loss_fraction` of its first value;
- over-fitting: the eval loss rises from its minimum by more than `overfit_margin` (relative)
  while the train loss keeps falling, or a train-eval accuracy gap above `gap`;
- under-fitting: the final train accuracy is below `low_accuracy`, or train and eval losses both
  stay above `high_loss_fraction` of the first train loss.

Thresholds are keyword arguments of `diagnose`; defaults suit classification losses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

KINDS = ("divergence", "plateau", "overfitting", "underfitting")
SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem: its kind, why it was flagged, and the steps it spans (inclusive)."""

    kind: str
    reason: str
    start_step: int
    end_step: int

    def __str__(self) -> str:
        return f"{self.kind} (steps {self.start_step}-{self.end_step}): {self.reason}"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """All findings of one run; `kinds` is ('none',) for a clean run."""

    findings: tuple[Finding, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(f.kind for f in self.findings) or ("none",)

    def __str__(self) -> str:
        return "\n".join(map(str, self.findings)) or "none: no divergence, plateau, over- or under-fitting found"


@dataclasses.dataclass(frozen=True)
class Curve:
    """One split's metric over steps, sorted by step."""

    steps: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.steps)


# ---------------------------------------------------------------------------------------------
# Reading.


def _number(value: Any, field: str, row_index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"row {row_index} field {field!r} has value {value!r}; allowed: a number")
    try:
        return float(value)  # also parses the "nan" / "inf" strings MetricsLog writes
    except ValueError:
        raise ValueError(f"row {row_index} field {field!r} has value {value!r}; allowed: a number") from None


def read_rows(source: str | Path | Iterable[Mapping[str, Any]]) -> list[dict]:
    """Rows from a metrics.jsonl path or an iterable of dicts; each needs 'step' and 'split'."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"metrics file {str(path)!r} does not exist; allowed: a metrics.jsonl path or a list of dicts")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = [dict(row) for row in source]
    for index, row in enumerate(rows):
        if "step" not in row or row.get("split") not in SPLITS:
            raise ValueError(f"row {index} {row!r} needs 'step' and 'split' in {list(SPLITS)}")
    return rows


def curve(rows: Sequence[Mapping[str, Any]], split: str, metric: str) -> Curve:
    """The `metric` of `split` over steps (rows without the metric are skipped)."""
    points = sorted((int(row["step"]), _number(row[metric], metric, index))
                    for index, row in enumerate(rows) if row["split"] == split and metric in row)
    return Curve(tuple(s for s, _ in points), tuple(v for _, v in points))


# ---------------------------------------------------------------------------------------------
# Rules.


def find_divergence(train_loss: Curve, eval_loss: Curve, explode_factor: float) -> Finding | None:
    """First non-finite loss (train or eval), or first train loss above explode_factor * first."""
    candidates = []
    for name, c in (("train", train_loss), ("eval", eval_loss)):
        bad = next((i for i, v in enumerate(c.values) if not math.isfinite(v)), None)
        if bad is not None:
            candidates.append((c.steps[bad], f"{name} loss is {c.values[bad]} at step {c.steps[bad]}", c.steps[-1]))
    if train_loss and math.isfinite(train_loss.values[0]):
        first = train_loss.values[0]
        limit = explode_factor * abs(first)
        high = next((i for i, v in enumerate(train_loss.values) if math.isfinite(v) and v > limit), None)
        if high is not None:
            low = min(train_loss.values[: high + 1])
            candidates.append((train_loss.steps[high],
                               f"train loss exploded to {train_loss.values[high]:.4g} at step {train_loss.steps[high]} "
                               f"(> {explode_factor} x its first value {first:.4g}; lowest before {low:.4g}): "
                               "the learning rate is too high", train_loss.steps[-1]))
    if not candidates:
        return None
    start, reason, end = min(candidates)
    return Finding("divergence", reason, start, end)


def find_plateau(train_loss: Curve, patience: int, plateau_tol: float, high_loss_fraction: float) -> Finding | None:
    """The run ends with `patience`+ rows that do not beat the best train loss by plateau_tol (relative)."""
    if len(train_loss) < patience + 1:
        return None
    best, best_index = math.inf, 0
    for i, value in enumerate(train_loss.values):
        if value < best - plateau_tol * abs(best) or best == math.inf:
            best, best_index = value, i
    stalled = len(train_loss) - 1 - best_index
    level = high_loss_fraction * abs(train_loss.values[0])
    if stalled < patience or best <= level:
        return None
    return Finding("plateau",
                   f"train loss has not improved by more than {plateau_tol:.0%} for {stalled} evaluations "
                   f"and stays at {best:.4g}, above {high_loss_fraction} x its first value "
                   f"{train_loss.values[0]:.4g}: lower the learning rate or change the model",
                   train_loss.steps[best_index], train_loss.steps[-1])


def _value_at(c: Curve, step: int) -> float:
    """The value of `c` at the last logged step <= `step` (its first value if none)."""
    index = max([i for i, s in enumerate(c.steps) if s <= step], default=0)
    return c.values[index]


def find_overfitting(train_loss: Curve, eval_loss: Curve, train_acc: Curve, eval_acc: Curve,
                     overfit_margin: float, gap: float) -> Finding | None:
    """Eval loss up from its minimum by a margin while train loss fell; or a large accuracy gap."""
    if len(eval_loss) >= 2 and train_loss:
        low_index = min(range(len(eval_loss)), key=lambda i: eval_loss.values[i])
        low_step, low = eval_loss.steps[low_index], eval_loss.values[low_index]
        last = eval_loss.values[-1]
        train_then, train_now = _value_at(train_loss, low_step), train_loss.values[-1]
        if last > low + overfit_margin * abs(low) and train_now < train_then:
            return Finding("overfitting",
                           f"eval loss rose from its minimum {low:.4g} at step {low_step} to {last:.4g} "
                           f"(> {overfit_margin:.0%} above) while train loss fell from {train_then:.4g} to "
                           f"{train_now:.4g}: add data, regularization or dropout, or stop earlier",
                           low_step, eval_loss.steps[-1])
    if train_acc and eval_acc:
        difference = train_acc.values[-1] - eval_acc.values[-1]
        if difference > gap:
            start = next((s for s in eval_acc.steps if _value_at(train_acc, s) - _value_at(eval_acc, s) > gap),
                         eval_acc.steps[-1])
            return Finding("overfitting",
                           f"train accuracy {train_acc.values[-1]:.4g} exceeds eval accuracy {eval_acc.values[-1]:.4g} "
                           f"by {difference:.4g} (> {gap}): add data, regularization or dropout",
                           start, eval_acc.steps[-1])
    return None


def find_underfitting(train_loss: Curve, eval_loss: Curve, train_acc: Curve,
                      low_accuracy: float, high_loss_fraction: float) -> Finding | None:
    """Final train accuracy below `low_accuracy`, or train and eval losses both still high."""
    steps = train_loss.steps or train_acc.steps
    if not steps:
        return None
    reasons = []
    if train_acc and train_acc.values[-1] < low_accuracy:
        reasons.append(f"final train accuracy {train_acc.values[-1]:.4g} is below {low_accuracy}")
    if train_loss and eval_loss:
        level = high_loss_fraction * abs(train_loss.values[0])
        if train_loss.values[-1] > level and eval_loss.values[-1] > level:
            reasons.append(f"train loss {train_loss.values[-1]:.4g} and eval loss {eval_loss.values[-1]:.4g} both "
                           f"stay above {high_loss_fraction} x the first train loss {train_loss.values[0]:.4g}")
    if not reasons:
        return None
    return Finding("underfitting", "; ".join(reasons) + ": increase capacity, train longer or raise the learning rate",
                   steps[0], steps[-1])


def diagnose(
    source: str | Path | Iterable[Mapping[str, Any]],
    *,
    loss: str = "loss",
    accuracy: str = "accuracy",
    explode_factor: float = 2.0,
    patience: int = 5,
    plateau_tol: float = 0.01,
    high_loss_fraction: float = 0.5,
    overfit_margin: float = 0.1,
    gap: float = 0.15,
    low_accuracy: float = 0.6,
) -> Diagnosis:
    """Diagnose a run from its metrics.jsonl (path) or rows (see the module docstring).

    A diverged run reports only its divergence: the other rules read finite curves.
    """
    for field, value in (("explode_factor", explode_factor), ("plateau_tol", plateau_tol),
                         ("high_loss_fraction", high_loss_fraction), ("overfit_margin", overfit_margin),
                         ("gap", gap), ("low_accuracy", low_accuracy)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{field}={value!r} is not allowed; allowed: a number >= 0")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience={patience!r} is not allowed; allowed: an int >= 1")
    rows = read_rows(source)
    train_loss, eval_loss = curve(rows, "train", loss), curve(rows, "eval", loss)
    if not train_loss:
        raise ValueError(f"no train rows with metric {loss!r}; allowed: rows with split 'train' and a {loss!r} field")
    divergence = find_divergence(train_loss, eval_loss, explode_factor)
    if divergence is not None:
        return Diagnosis((divergence,))
    train_acc, eval_acc = curve(rows, "train", accuracy), curve(rows, "eval", accuracy)
    findings = (
        find_plateau(train_loss, patience, plateau_tol, high_loss_fraction),
        find_overfitting(train_loss, eval_loss, train_acc, eval_acc, overfit_margin, gap),
        find_underfitting(train_loss, eval_loss, train_acc, low_accuracy, high_loss_fraction),
    )
    return Diagnosis(tuple(f for f in findings if f is not None))
