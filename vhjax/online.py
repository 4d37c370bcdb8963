"""Online learning on a drifting stream: a population learns one pass over a stream whose concept
changes, scored prequentially (test, then train: each batch is predicted before the model learns
from it; Gama et al. 2013, "On evaluating stream learning algorithms"). CATALOG 1.12: online
learning for changing environments, concept drift.

`drifting_stream` builds a stream from a dataset: `segments` consecutive segments, each drawn from
the data with its own concept: 'labels' permutes the classes per segment (real drift: p(y | x)
changes), 'inputs' adds a per-segment offset and gain to the inputs (virtual drift: p(x) changes).
`prequential` trains members (any `fit_population` members: learning rates, optimizer numbers,
weight decay, ...) once over the stream in order, in one program, and reads each member's
prequential accuracy per window of steps from the training step's own accuracy, computed on the
incoming batch before the update. With dropout on, those predictions are made in training mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from vhjax.config import TrainConfig
from vhjax.data import Dataset, load
from vhjax.validation import check_choice, check_int, invalid

DRIFTS = ("labels", "inputs")


@dataclasses.dataclass(frozen=True)
class Stream:
    """Examples in stream order, the index where each segment starts (the first is 0), and the row
    of the source data each example was drawn from."""

    x: np.ndarray
    y: np.ndarray
    starts: tuple[int, ...]
    num_classes: int
    rows: np.ndarray


def drifting_stream(x: Any, y: Any, *, segments: int, segment_size: int, kind: str = "labels",
                    strength: float = 1.0, seed: int = 0) -> Stream:
    """`segments` segments of `segment_size` examples drawn from (x, y) (each segment runs through
    shuffled passes over the data, so an example repeats only after all others have come), each
    with its own concept (`kind`, module docstring). The first segment is the data
    as it is; `strength` scales the input drift (offset `strength` x a standard normal draw per
    segment, gain exp(0.3 x `strength` x a normal draw))."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    check_int("segments", segments, 1)
    check_int("segment_size", segment_size, 1)
    check_choice("kind", kind, DRIFTS)
    if len(y) != len(x):
        raise invalid("y", f"{len(y)} labels", f"one per example of x ({len(x)})")
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    xs, ys, drawn = [], [], []
    for segment in range(segments):
        passes = -(-segment_size // len(x))
        rows = np.concatenate([rng.permutation(len(x)) for _ in range(passes)])[:segment_size]
        sx, sy = x[rows], y[rows]
        if segment and kind == "labels":
            sy = rng.permutation(classes)[sy].astype(np.int32)
        if segment and kind == "inputs":
            sx = sx * np.float32(np.exp(0.3 * strength * rng.normal())) + np.float32(strength * rng.normal())
        xs.append(sx)
        ys.append(sy)
        drawn.append(rows)
    starts = tuple(segment * segment_size for segment in range(segments))
    return Stream(np.concatenate(xs), np.concatenate(ys), starts, classes, np.concatenate(drawn))


@dataclasses.dataclass
class OnlineResult:
    """Per member: prequential accuracy per window (`curves`, (members, windows)), its mean over the
    stream, per segment, and the windows it took after each drift to come back to its accuracy of
    the window before the drift (`recovery`, None where it never did); the population result."""

    steps: np.ndarray  # the last step of each window
    curves: np.ndarray
    mean: np.ndarray
    per_segment: np.ndarray  # (members, segments)
    recovery: list[list[int | None]]
    population: Any

    def table(self, labels: Sequence[str] | None = None) -> str:
        """Markdown: one row per member, its mean prequential accuracy, per segment, and recoveries."""
        segments = self.per_segment.shape[1]
        labels = list(labels) if labels is not None else [f"member {i}" for i in range(len(self.mean))]
        lines = ["| member | prequential accuracy | " + " | ".join(f"segment {s}" for s in range(segments))
                 + " | windows to recover per drift |", "|---|---|" + "---|" * (segments + 1)]
        for i, label in enumerate(labels):
            recovered = ", ".join("never" if r is None else str(r) for r in self.recovery[i]) or "-"
            lines.append(f"| {label} | {self.mean[i]:.4f} | " + " | ".join(f"{v:.4f}" for v in self.per_segment[i])
                         + f" | {recovered} |")
        return "\n".join(lines)


def stream_config(config: TrainConfig, stream: Stream, window: int) -> TrainConfig:
    """`config` trained once over `stream` in order: no shuffling, one step per batch, an evaluation
    (on the stream's last batch, a formality) and a log row every `window` steps."""
    batch = config.batch_size
    steps = len(stream.x) // batch
    if steps < 1:
        raise invalid("stream", f"{len(stream.x)} examples", f"at least one batch of {batch}")
    check_int("window", window, 1, steps)
    train = Dataset(stream.x, stream.y, stream.num_classes, "stream", "train")
    tail = Dataset(stream.x[-batch:], stream.y[-batch:], stream.num_classes, "stream", "eval")
    return dataclasses.replace(config, dataset={"train": train, "eval": tail}, train_split="train",
                               eval_split="eval", test_split=None, shuffle=False, drop_remainder=True, steps=steps,
                               eval_every=window, eval_batch_size=batch, patience=None, keep_best=False,
                               plateau_patience=None, monitor_split="eval")


def prequential(config: TrainConfig, members: Sequence[Mapping[str, Any]], stream: Stream, *, window: int = 10,
                mesh: Any = "auto", verbose: bool = False) -> OnlineResult:
    """Train `members` once over `stream` (one program; every member sees the same batches in
    stream order) and score them prequentially per window of `window` steps."""
    from vhjax.population import fit_population

    run_config = stream_config(config, stream, window)
    result = fit_population(run_config, members, same_batches=True, mesh=mesh, verbose=verbose)
    rows_by_bucket = [[row for row in history if row["split"] == "train"] for history in result.histories]
    steps = np.asarray([row["step"] for row in rows_by_bucket[0]])
    curves = np.stack([np.asarray([np.reshape(row["accuracy"], -1)[m["position"]]
                                   for row in rows_by_bucket[m["bucket"]]]) for m in result.members])
    window_start = steps - window  # the first step of each window
    segment_of = np.searchsorted(np.asarray(stream.starts) // config.batch_size, window_start, side="right") - 1
    per_segment = np.stack([[curves[i, segment_of == s].mean() if (segment_of == s).any() else np.nan
                             for s in range(len(stream.starts))] for i in range(len(curves))])
    return OnlineResult(steps, curves, curves.mean(axis=1), per_segment, recovery_windows(curves, segment_of),
                        result)


def recovery_windows(curves: np.ndarray, segment_of: np.ndarray) -> list[list[int | None]]:
    """Per member and drift: windows after the drift until the accuracy is back at the level of the
    last window before it (1: the first window after the drift already is)."""
    out = []
    for curve in curves:
        member = []
        for segment in range(1, int(segment_of.max()) + 1):
            first = int(np.argmax(segment_of == segment))
            if first == 0 or segment_of[first] != segment:
                continue
            before = curve[first - 1]
            after = np.nonzero(curve[first:][segment_of[first:] == segment] >= before)[0]
            member.append(int(after[0]) + 1 if len(after) else None)
        out.append(member)
    return out


def stream_from(dataset: Any, split: str = "train", **kwargs: Any) -> Stream:
    """`drifting_stream` over a registered dataset's split (e.g. 'mnist1d')."""
    data = load(dataset, split)
    return drifting_stream(data.x, data.y, **kwargs)


__all__ = ["DRIFTS", "OnlineResult", "Stream", "drifting_stream", "prequential", "recovery_windows", "stream_config",
           "stream_from"]
