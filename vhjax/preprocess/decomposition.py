"""Linear projections fitted on training data: PCA, PCA/ZCA whitening, truncated SVD, LDA.

Inputs `(N, ...)` are flattened to `(N, D)`. PCA follows the recipe covariance -> eigenvectors
-> projection onto the leading ones; whitening then rescales every direction to unit variance
(PCA whitening stays in the rotated basis, ZCA rotates back so the result looks like the input).
Eigenvector signs are fixed (largest entry positive) so refits give the same arrays.
"""

from __future__ import annotations

import jax
import numpy as np

from vhjax.preprocess.base import (Arrays, Preprocessor, as_float32, check_choice, check_float, check_int, flat,
                                   make_preprocessor, register_preprocessor)


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Columns flipped so that each one's largest-magnitude entry is positive."""
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    return vectors * np.where(largest < 0, -1.0, 1.0)


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), variances (D,) descending, eigenvectors (D, D) as columns) of flat x."""
    data = flat(x)
    mean = data.mean(axis=0)
    centred = data - mean
    covariance = centred.T @ centred / max(data.shape[0] - 1, 1)
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1]
    return mean, np.maximum(variances[order], 0.0), fix_signs(vectors[:, order])


def _components(name: str, n_components: int | None, available: int) -> int:
    if n_components is not None and n_components > available:
        raise ValueError(f"preprocessor {name!r} option 'n_components' has value {n_components}; "
                         f"allowed: at most {available} for this data")
    return available if n_components is None else n_components


@register_preprocessor("pca")
def pca(n_components: int | None = None) -> Preprocessor:
    """Project centred data onto the top `n_components` principal axes (None: all), giving
    (N, n_components); `inverse_transform` maps back (exact with all components)."""
    n_components = check_int("pca", "n_components", n_components, 1, optional=True)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        mean, variances, vectors = principal_axes(x)
        keep = _components("pca", n_components, vectors.shape[1])
        return {"mean": as_float32(mean.reshape(x.shape[1:])), "components": as_float32(vectors[:, :keep]),
                "variances": as_float32(variances[:keep])}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return flat(x - arrays["mean"]) @ arrays["components"]

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return (z @ arrays["components"].T).reshape((-1,) + arrays["mean"].shape) + arrays["mean"]

    return make_preprocessor("pca", {"n_components": n_components}, fit_arrays, apply, inverse=inverse)


@register_preprocessor("pca_whiten")
def pca_whiten(n_components: int | None = None, eps: float = 1e-5) -> Preprocessor:
    """PCA, then divide each component by sqrt(variance + eps): the result has (about) identity
    covariance on the training data."""
    n_components = check_int("pca_whiten", "n_components", n_components, 1, optional=True)
    eps = check_float("pca_whiten", "eps", eps, 0.0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        mean, variances, vectors = principal_axes(x)
        keep = _components("pca_whiten", n_components, vectors.shape[1])
        return {"mean": as_float32(mean.reshape(x.shape[1:])), "components": as_float32(vectors[:, :keep]),
                "scale": as_float32(np.sqrt(variances[:keep] + eps))}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return flat(x - arrays["mean"]) @ arrays["components"] / arrays["scale"]

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return ((z * arrays["scale"]) @ arrays["components"].T).reshape((-1,) + arrays["mean"].shape) + arrays["mean"]

    return make_preprocessor("pca_whiten", {"n_components": n_components, "eps": eps}, fit_arrays, apply,
                             inverse=inverse)


@register_preprocessor("zca_whiten")
def zca_whiten(eps: float = 1e-5) -> Preprocessor:
    """ZCA whitening: (x - mean) @ U diag(1 / sqrt(variance + eps)) U^T, reshaped to x's shape.
    The training covariance becomes (about) the identity while images still look like images."""
    eps = check_float("zca_whiten", "eps", eps, 0.0)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        mean, variances, vectors = principal_axes(x)
        matrix = (vectors / np.sqrt(variances + eps)) @ vectors.T
        unwhiten = (vectors * np.sqrt(variances + eps)) @ vectors.T
        return {"mean": as_float32(mean.reshape(x.shape[1:])), "matrix": as_float32(matrix),
                "inverse": as_float32(unwhiten)}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return (flat(x - arrays["mean"]) @ arrays["matrix"]).reshape(x.shape)

    def inverse(arrays: Arrays, z: jax.Array) -> jax.Array:
        return (flat(z) @ arrays["inverse"]).reshape(z.shape) + arrays["mean"]

    return make_preprocessor("zca_whiten", {"eps": eps}, fit_arrays, apply, inverse=inverse)


@register_preprocessor("truncated_svd")
def truncated_svd(n_components: int = 2) -> Preprocessor:
    """Project (uncentred) data onto its top `n_components` right singular vectors, giving
    (N, n_components); unlike PCA nothing is subtracted, so sparse or count data stays as is."""
    n_components = check_int("truncated_svd", "n_components", n_components, 1)

    def fit_arrays(x: np.ndarray, y: None) -> Arrays:
        data = flat(x)
        keep = _components("truncated_svd", n_components, min(data.shape))
        _, singular, right = np.linalg.svd(data, full_matrices=False)
        return {"components": as_float32(fix_signs(right[:keep].T)), "singular_values": as_float32(singular[:keep])}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return flat(x) @ arrays["components"]

    return make_preprocessor("truncated_svd", {"n_components": n_components}, fit_arrays, apply)


@register_preprocessor("lda")
def lda(n_components: int | None = None, solver: str = "svd") -> Preprocessor:
    """Linear discriminant analysis (scikit-learn), fitted with labels: project onto the
    `n_components` (default: classes - 1, at most D) most class-discriminative directions."""
    n_components = check_int("lda", "n_components", n_components, 1, optional=True)
    check_choice("lda", "solver", solver, ("svd", "eigen"))

    def fit_arrays(x: np.ndarray, y: np.ndarray) -> Arrays:
        data = flat(x)
        available = min(np.unique(y).size - 1, data.shape[1])
        keep = _components("lda", n_components, available)
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # imported when used: slow

        model = LinearDiscriminantAnalysis(solver=solver, n_components=keep).fit(data, y)
        centre = model.xbar_ if solver == "svd" else np.zeros(data.shape[1])
        return {"centre": as_float32(centre), "scalings": as_float32(model.scalings_[:, :keep])}

    def apply(arrays: Arrays, x: jax.Array) -> jax.Array:
        return (flat(x) - arrays["centre"]) @ arrays["scalings"]

    return make_preprocessor("lda", {"n_components": n_components, "solver": solver}, fit_arrays, apply,
                             needs_labels=True)

