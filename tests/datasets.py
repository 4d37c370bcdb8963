"""Small in-memory datasets for tests' child processes: a child that trains on the built-in digits
spends about a second importing scikit-learn and loading them, more than its tiny run trains."""

from __future__ import annotations

import numpy as np


def tiny_classification(rows: int = 400, features: int = 16, classes: int = 10, seed: int = 0) -> dict:
    """{'train': (x, y), 'test': (x, y)}, 80/20: the label is the largest of the first `classes`
    features (learnable, not at once)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = np.argmax(x[:, :classes], axis=1).astype(np.int32)
    cut = rows * 4 // 5
    return {"train": (x[:cut], y[:cut]), "test": (x[cut:], y[cut:])}
