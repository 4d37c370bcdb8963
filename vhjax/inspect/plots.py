"""Figures: attribution maps for sequences and images, population training curves coloured by a
hyperparameter, robust-accuracy curves. Matplotlib (Agg), one PNG per call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def attribution_figure(x: Any, maps: Mapping[str, Any], path: str | Path, *, labels: Sequence[Any] | None = None,
                       examples: int = 4) -> Path:
    """One row per example, one column for the input and one per method.

    Sequences (x of shape (B, L) or (B, L, C)): the signal as a line over a bar of |attribution|
    (channels summed). Images (B, H, W, C): the image and |attribution| heat maps (channels summed).
    """
    plt = _plt()
    x = np.asarray(x)
    rows = min(examples, x.shape[0])
    image = x.ndim == 4
    cols = 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False)
    for r in range(rows):
        example = x[r]
        ax = axes[r, 0]
        if image:
            ax.imshow(example.mean(-1), cmap="gray")
            ax.set_xticks([]), ax.set_yticks([])
        else:
            signal = example if example.ndim == 1 else example.mean(-1)
            ax.plot(signal, color="k", lw=1)
            ax.set_xticks([])
        ax.set_title("input" + (f" (y={labels[r]})" if labels is not None else ""), fontsize=8)
        for c, (name, values) in enumerate(maps.items(), start=1):
            attr = np.abs(np.asarray(values)[r])
            attr = attr.sum(-1) if (image or attr.ndim == 2) else attr
            ax = axes[r, c]
            if image:
                ax.imshow(attr, cmap="inferno")
                ax.set_xticks([]), ax.set_yticks([])
            else:
                signal = example if example.ndim == 1 else example.mean(-1)
                ax.imshow(attr[None, :], aspect="auto", cmap="inferno",
                          extent=(-0.5, len(attr) - 0.5, signal.min(), signal.max()))
                ax.plot(signal, color="w", lw=1)
                ax.set_xticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    return _save(fig, path)


def population_curves(workdir: str | Path) -> list[dict]:
    """Per member of a `fit_population` workdir: its config and eval metric histories.

    Reads `members.json`, `result.json` (member -> bucket) and `bucket_*/metrics.jsonl`.
    """
    root = Path(workdir)
    result = json.loads((root / "result.json").read_text())
    out = []
    positions: dict[int, int] = {}
    for row in sorted(result, key=lambda m: m["member"]):
        bucket = row["bucket"]
        position = positions.get(bucket, 0)
        positions[bucket] = position + 1
        lines = [json.loads(line) for line in (root / f"bucket_{bucket}" / "metrics.jsonl").read_text().splitlines()
                 if line.strip()]
        history: dict[str, dict[str, list]] = {}
        for line in lines:
            split = history.setdefault(line["split"], {"step": []})
            split["step"].append(line["step"])
            for name, value in line.items():
                if isinstance(value, list):
                    split.setdefault(name, []).append(value[position])
        out.append({"member": row["member"], "config": row["config"], "history": history})
    return out


def training_curves(workdir: str | Path, hparam: str, path: str | Path, *, metric: str = "accuracy",
                    split: str = "eval", log: bool = True) -> Path:
    """Every member's `split` `metric` over steps, coloured by its value of `hparam` (colour bar)."""
    plt = _plt()
    curves = population_curves(workdir)
    values = [c["config"].get(hparam) for c in curves]
    if any(v is None or not np.isscalar(v) for v in values):
        raise ValueError(f"hparam {hparam!r} is not a scalar field of every member; members set "
                         f"{sorted({k for c in curves for k in c['config']})}")
    values = np.asarray(values, np.float64)
    from matplotlib import colors, cm

    norm = (colors.LogNorm if log and np.all(values > 0) else colors.Normalize)(values.min(), values.max())
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for curve, value in zip(curves, values):
        hist = curve["history"].get(split, {})
        if metric not in hist:
            raise ValueError(f"metric {metric!r} not logged for split {split!r}; logged: {sorted(hist)}")
        ax.plot(hist["step"], hist[metric], color=cmap(norm(value)), lw=1.2)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=hparam)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{len(curves)} members coloured by {hparam}", fontsize=9)
    return _save(fig, path)


def robustness_figure(epsilons: Sequence[float], curves: Mapping[str, Any], path: str | Path, *,
                      title: str = "") -> Path:
    """Robust accuracy against the budget epsilon, one line per model (name -> accuracies)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    for name, acc in curves.items():
        ax.plot(epsilons, np.asarray(acc), "o-", ms=3, label=name)
    ax.set_xlabel("epsilon")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title or "robust accuracy", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
