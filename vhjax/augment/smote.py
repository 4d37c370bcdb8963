"""SMOTE (Chawla et al., 2002): oversample minority classes with synthetic examples.

Each synthetic example lies on the segment between a minority example and one of its k nearest
neighbours of the same class: `x_i + u * (x_j - x_i)`, u ~ U[0, 1]. This runs once on a
training set (host-side, NumPy and scikit-learn's nearest neighbours), so it is not an
`fn(key, x, strength)` augmentation and is not in the AUGMENTATIONS registry.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vhjax import validation


def _generator(seed: Any) -> np.random.Generator:
    """A NumPy generator from an int seed or a JAX PRNG key (same seed, same result)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    if isinstance(seed, jax.Array):
        return np.random.default_rng([int(word) for word in np.asarray(jax.random.bits(seed, (4,)))])
    raise ValueError(f"smote field 'seed' has value {seed!r}; allowed: an int or a jax.random key")


def _check_inputs(x: np.ndarray, y: np.ndarray, k: Any, target_count: Any) -> None:
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"smote got x of shape {x.shape} and y of shape {y.shape}; allowed: x (N, ...) with labels y (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"smote field 'y' has dtype {y.dtype}; allowed: integer class labels")
    validation.check_int("smote field 'k'", k, minimum=1)
    if target_count is not None:
        validation.check_int("smote field 'target_count'", target_count, minimum=1)


def synthesize(rng: np.random.Generator, members: np.ndarray, count: int, k: int) -> np.ndarray:
    """`count` SMOTE points (count, D) from the examples `members` (M, D) of one class; with a
    single member the points are copies of it (there is no segment to sample)."""
    from sklearn.neighbors import NearestNeighbors  # imported here: `import vhjax.augment` stays light

    if members.shape[0] == 1:
        return np.repeat(members, count, axis=0)
    neighbours = min(k, members.shape[0] - 1)
    index = NearestNeighbors(n_neighbors=neighbours + 1).fit(members).kneighbors(members, return_distance=False)
    base = rng.integers(0, members.shape[0], count)
    partner = index[base, rng.integers(1, neighbours + 1, count)]  # column 0 is the point itself
    gap = rng.uniform(0.0, 1.0, (count, 1))
    return members[base] + gap * (members[partner] - members[base])


def smote(x: np.ndarray, y: np.ndarray, *, k: int = 5, seed: Any = 0,
          target_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with synthetic examples appended so that every class has at least `target_count`
    examples (default: as many as the largest class). x is `(N, ...)` (flattened for the
    neighbour search, reshaped back), y `(N,)` integer labels. The originals come first, in
    order; dtypes are kept. `seed` is an int or a jax.random key."""
    x, y = np.asarray(x), np.asarray(y)
    _check_inputs(x, y, k, target_count)
    rng = _generator(seed)
    classes, counts = np.unique(y, return_counts=True)
    goal = int(counts.max()) if target_count is None else int(target_count)
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    new_x, new_y = [x], [y]
    for label, count in zip(classes, counts):
        if count >= goal:
            continue
        points = synthesize(rng, flat[y == label], goal - int(count), int(k))
        new_x.append(points.reshape((-1,) + x.shape[1:]).astype(x.dtype))
        new_y.append(np.full(points.shape[0], label, y.dtype))
    return np.concatenate(new_x), np.concatenate(new_y)
