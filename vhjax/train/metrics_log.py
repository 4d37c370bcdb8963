"""Metrics written into the workdir as JSON lines, and progress lines on the terminal."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping


def to_python(value: Any) -> Any:
    """Arrays and NumPy scalars -> plain floats/lists for JSON."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends `{"step": s, "split": ..., metric: value}` lines to `workdir/metrics.jsonl`.

    `truncate_after(step)` drops lines written after the step a run resumes from, so a resumed
    run's log reads as an uninterrupted one's. With several JAX processes only process 0 writes
    the file (the others keep their rows in memory).
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.rows: list[dict] = []  # kept in memory when there is no workdir

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        line = {"step": int(step), "split": split, **{k: to_python(v) for k, v in values.items()}}
        if self.path is None or not is_main_process():
            self.rows.append(line)
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    def read(self) -> list[dict]:
        if self.path is None or not is_main_process():
            return list(self.rows)
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        if self.path is None:
            return
        if not is_main_process():
            self.rows = [row for row in self.rows if row["step"] <= step]
            return
        if not self.path.exists():
            return
        kept = [row for row in self.read() if row["step"] <= step]
        from vhjax.atomic_files import write_text_atomically

        write_text_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))


def format_progress(step: int, total: int, steps_per_second: float, train: Mapping[str, float],
                    evaluation: Mapping[str, float]) -> str:
    width = len(str(total))
    parts = [f"step {step:>{width}}/{total}", f"{steps_per_second:8.1f} steps/s",
             f"train loss {train['loss']:.4f}"]
    parts += [f"eval {name} {value:.4f}" for name, value in evaluation.items()]
    return " | ".join(parts)


def is_main_process() -> bool:
    """Process 0 of a multi-process JAX run (always true in a single process)."""
    import jax

    return jax.process_index() == 0


def print_progress(line: str) -> None:
    """Print a progress line (from JAX process 0 only: the others train the same run)."""
    if is_main_process():
        print(line, file=sys.stdout, flush=True)
