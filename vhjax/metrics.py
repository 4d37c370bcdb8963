"""Classification metrics on arrays, all jit-able: `(outputs, labels) -> metrics`; `auroc` for scores;
`psnr` and `ssim` for generated or reconstructed images against references.

Labels are integer class ids, or one-hot / soft rows (one more axis than the ids), which are
reduced with argmax. Predictions are logits (argmax over the last axis) or integer class ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vhjax import validation


def predicted_classes(logits_or_preds: jax.Array) -> jax.Array:
    """Class ids: integer input is returned as is, float logits are reduced with argmax."""
    logits_or_preds = jnp.asarray(logits_or_preds)
    if jnp.issubdtype(logits_or_preds.dtype, jnp.integer):
        return logits_or_preds
    return jnp.argmax(logits_or_preds, axis=-1)


def label_classes(labels: jax.Array, predictions: jax.Array) -> jax.Array:
    """Integer labels matching `predictions` (class ids); one-hot labels are argmax-ed."""
    labels = jnp.asarray(labels)
    if labels.ndim == predictions.ndim + 1:
        return jnp.argmax(labels, axis=-1)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels shape {labels.shape} fits neither integer labels {predictions.shape} "
            f"nor one-hot labels {predictions.shape + ('C',)}"
        )
    return labels


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose predicted class equals the label (scalar float32)."""
    predictions = predicted_classes(logits)
    return jnp.mean(predictions == label_classes(labels, predictions), dtype=jnp.float32)


def confusion_matrix(logits_or_preds: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """(C, C) int32 counts; row = true class, column = predicted class (sklearn's layout).

    Ids outside [0, num_classes) are not counted.
    """
    validation.check_int("num_classes", num_classes, minimum=1)
    predictions = predicted_classes(logits_or_preds).reshape(-1)
    truth = label_classes(labels, predicted_classes(logits_or_preds)).reshape(-1)
    valid = (truth >= 0) & (truth < num_classes) & (predictions >= 0) & (predictions < num_classes)
    counts = jnp.zeros((num_classes, num_classes), jnp.int32)
    rows = jnp.clip(truth, 0, num_classes - 1)
    columns = jnp.clip(predictions, 0, num_classes - 1)
    return counts.at[rows, columns].add(valid.astype(jnp.int32))


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is 0 (no NaN, also in gradients)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0.0)


def precision_recall_f1(logits: jax.Array, labels: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    """Per-class precision, recall and F1 (C,), and their unweighted mean `macro_f1`.

    A class never predicted has precision 0, a class never present has recall 0, and F1 is 0
    where precision + recall is 0 (sklearn's `zero_division=0`). `macro_f1` averages all C
    classes, as sklearn does with `labels=range(C)`.
    """
    counts = confusion_matrix(logits, labels, num_classes).astype(jnp.float32)
    true_positives = jnp.diagonal(counts)
    precision = _safe_divide(true_positives, counts.sum(axis=0))
    recall = _safe_divide(true_positives, counts.sum(axis=1))
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "macro_f1": jnp.mean(f1)}


def auroc(scores_negative: jax.Array, scores_positive: jax.Array) -> jax.Array:
    """Area under the ROC curve for telling positives (higher score) from negatives.

    The Mann-Whitney U statistic: the probability that a random positive scores higher than a
    random negative, ties counting one half. Used for out-of-distribution detection with an
    uncertainty score (positives = OOD inputs). O(N log N) via ranks of the pooled scores.
    """
    negative = jnp.ravel(jnp.asarray(scores_negative, jnp.float32))
    positive = jnp.ravel(jnp.asarray(scores_positive, jnp.float32))
    if negative.size == 0 or positive.size == 0:
        raise ValueError(f"auroc needs both classes; got {negative.size} negative and {positive.size} positive scores")
    pooled = jnp.concatenate([negative, positive])
    ordered = jnp.sort(pooled)
    # average rank (1-based) of each score, ties sharing the mean of their ranks
    low = jnp.searchsorted(ordered, pooled, side="left")
    high = jnp.searchsorted(ordered, pooled, side="right")
    ranks = (low + high + 1) / 2.0
    n_neg, n_pos = negative.size, positive.size
    rank_sum = jnp.sum(ranks[n_neg:])
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_neg * n_pos)


# --- image fidelity (generated or reconstructed images against references) ---------------------------


def _images(name: str, images: jax.Array) -> jax.Array:
    """(N, H, W) or (N, H, W, C) -> (N, H, W, C) float32."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} has shape {images.shape}; allowed: images (N, H, W) or (N, H, W, C)")
    return images[..., None] if images.ndim == 3 else images


def _image_pair(a: jax.Array, b: jax.Array, max_value: float) -> tuple[jax.Array, jax.Array]:
    a, b = _images("images", a), _images("references", b)
    if a.shape != b.shape:
        raise ValueError(f"images have shape {a.shape}; allowed: the references' shape {b.shape}")
    validation.check_number("max_value", max_value, 0.0, low_inclusive=False)
    return a / max_value, b / max_value


def psnr(images: jax.Array, references: jax.Array, max_value: float = 1.0) -> jax.Array:
    """(N,) peak signal-to-noise ratio in dB of each image against its reference (`dm_pix.psnr`), pixel
    values in [0, max_value]: 10 log10(max_value^2 / MSE); higher is closer."""
    import dm_pix

    a, b = _image_pair(images, references, max_value)
    return dm_pix.psnr(a, b)


def ssim(images: jax.Array, references: jax.Array, max_value: float = 1.0, filter_size: int = 11) -> jax.Array:
    """(N,) structural similarity of each image against its reference (`dm_pix.ssim`, Wang et al. 2004:
    Gaussian window of `filter_size` pixels, sigma 1.5), pixel values in [0, max_value]; 1 = identical.
    `filter_size` must not exceed the image's height or width (e.g. 7 for 8x8 digits)."""
    import dm_pix

    a, b = _image_pair(images, references, max_value)
    validation.check_int("filter_size", filter_size, 1, min(a.shape[1], a.shape[2]))
    return dm_pix.ssim(a, b, max_val=1.0, filter_size=filter_size)
