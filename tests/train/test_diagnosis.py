"""Training-curve diagnosis on synthetic curves, from rows and from a metrics.jsonl file."""

import math

import numpy as np
import pytest

from vhjax.train import diagnosis
from vhjax.train.metrics_log import MetricsLog

STEPS = list(range(100, 2100, 100))  # 20 evaluations


def rows(train_loss, eval_loss, train_acc=None, eval_acc=None):
    """metrics.jsonl-style rows for the given curves (accuracies default to a healthy 0.9)."""
    train_acc = train_acc or [0.9] * len(train_loss)
    eval_acc = eval_acc or [0.9] * len(eval_loss)
    out = []
    for step, tl, el, ta, ea in zip(STEPS, train_loss, eval_loss, train_acc, eval_acc):
        out.append({"step": step, "split": "train", "loss": tl, "accuracy": ta})
        out.append({"step": step, "split": "eval", "loss": el, "accuracy": ea})
    return out


def clean_curve():
    train = [2.3 * math.exp(-0.25 * i) + 0.05 for i in range(20)]
    return rows(train, [v * 1.05 + 0.02 for v in train],
                [min(0.98, 0.2 + 0.08 * i) for i in range(20)], [min(0.96, 0.2 + 0.075 * i) for i in range(20)])


def test_clean_curve_is_none():
    result = diagnosis.diagnose(clean_curve())
    assert result.kinds == ("none",), str(result)
    assert str(result).startswith("none")


def test_overfitting_curve_is_flagged_with_step_range():
    train = [2.3 * math.exp(-0.3 * i) for i in range(20)]
    evaluation = [2.3 * math.exp(-0.3 * i) + 0.3 if i <= 7 else 2.3 * math.exp(-2.1) + 0.3 + 0.08 * (i - 7)
                  for i in range(20)]
    result = diagnosis.diagnose(rows(train, evaluation))
    assert "overfitting" in result.kinds
    finding = next(f for f in result.findings if f.kind == "overfitting")
    assert finding.start_step == STEPS[int(np.argmin(evaluation))] and finding.end_step == STEPS[-1]
    assert "eval loss rose" in finding.reason


def test_accuracy_gap_is_overfitting():
    train = [2.3 * math.exp(-0.25 * i) for i in range(20)]
    result = diagnosis.diagnose(rows(train, train, [0.99] * 20, [0.7] * 20))
    assert result.kinds == ("overfitting",)
    assert "accuracy" in result.findings[0].reason


def test_divergence_nan_and_explosion():
    train = [2.3, 1.5, 1.0, 0.8] + [float("nan")] * 16
    result = diagnosis.diagnose(rows(train, train))
    assert result.kinds == ("divergence",)
    assert result.findings[0].start_step == STEPS[4]
    exploding = [2.3, 1.5, 1.0, 0.8, 1.5, 3.0, 7.0, 20.0] + [40.0] * 12
    finding = diagnosis.diagnose(rows(exploding, exploding)).findings[0]
    assert finding.kind == "divergence" and finding.start_step == STEPS[6] and "exploded" in finding.reason


def test_plateau_high_and_underfitting():
    train = [2.3, 1.8, 1.6] + [1.55] * 17
    result = diagnosis.diagnose(rows(train, [v + 0.05 for v in train], [0.3] * 20, [0.28] * 20))
    assert set(result.kinds) == {"plateau", "underfitting"}
    plateau = next(f for f in result.findings if f.kind == "plateau")
    assert plateau.start_step == STEPS[3] and plateau.end_step == STEPS[-1]


def test_converged_flat_curve_is_not_a_plateau():
    train = [2.3, 0.8, 0.3, 0.1] + [0.1] * 16
    assert diagnosis.diagnose(rows(train, train)).kinds == ("none",)


def test_reads_metrics_jsonl_written_by_metrics_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for row in rows([2.3, 1.0, float("inf")] + [1.0] * 17, [2.3] * 20):
        log.write(row["step"], row["split"], {k: v for k, v in row.items() if k not in ("step", "split")})
    assert '"inf"' in path.read_text()  # MetricsLog stores non-finite numbers as strings
    result = diagnosis.diagnose(path)
    assert result.kinds == ("divergence",) and result.findings[0].start_step == STEPS[2]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="split"):
        diagnosis.diagnose([{"step": 1, "split": "valid", "loss": 1.0}])
    with pytest.raises(ValueError, match="does not exist"):
        diagnosis.diagnose("/nonexistent/metrics.jsonl")
    with pytest.raises(ValueError, match="patience"):
        diagnosis.diagnose(clean_curve(), patience=0)
    with pytest.raises(ValueError, match="'loss'"):
        diagnosis.diagnose([{"step": 1, "split": "train", "loss": "high"}])
