"""Anomaly detection with autoencoders (CATALOG 1.18, "anomaly detection and dimensionality reduction via
autoencoders"): a population of autoencoders trained on normal data only, in one program, each example
scored by its reconstruction error.

    detectors = fit_autoencoders(Autoencoder(data_shape=(8, 8), latent_dim=4), x_normal,
                                 learning_rate=[1e-3, 3e-3], noise=[0.0, 0.2], steps=2000)
    scores = reconstruction_errors(detectors, x_test)            # (members, N): higher = more anomalous
    report = detection_report(scores[:, normal], scores[:, anomalous],
                              validation=reconstruction_errors(detectors, x_val_normal))

Members differ in learning rate, input noise (a denoising autoencoder: Gaussian noise of that std on
the inputs, the clean input the target) and seed; they share the architecture (another latent size is
another call). `detection_report` gives each member's AUROC, average precision, and the detection
rate and false-alarm rate at a threshold set on normal validation data only (its `quantile`), and
names the member a user without labelled anomalies would pick: the lowest mean reconstruction error
on normal validation data. `pca_errors` is the linear baseline (principal components' reconstruction
error, `vhjax.preprocess`'s PCA).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import metrics, optim
from vhjax.batching import map_in_batches
from vhjax.compile_options import light_jit
from vhjax.memo import Memo
from vhjax.validation import check_int, check_number, invalid


@dataclasses.dataclass
class AnomalyDetectors:
    """Autoencoders trained on normal data: the model, the members' stacked parameters, their
    hyperparameters (learning_rate, noise, seed per member) and (steps, P) training losses."""

    model: nn.Module
    params: Any
    members: list[dict]
    losses: np.ndarray

    @property
    def size(self) -> int:
        return len(self.members)


def _per_member(name: str, value: Any, size: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.ndim != 1 or len(values) not in (1, size):
        raise invalid(name, value, f"a number or a sequence of {size} numbers (one per member)")
    return np.broadcast_to(values, (size,)).copy()


def _size(*values: Any) -> int:
    lengths = {len(v) for v in values if np.ndim(v) == 1 and len(v) > 1}
    if len(lengths) > 1:
        raise invalid("learning_rate, noise, seeds", f"sequences of lengths {sorted(lengths)}",
                      "numbers or sequences of one common length (one entry per member)")
    return lengths.pop() if lengths else 1


def check_inputs(name: str, x: Any, data_shape: Sequence[int] | None = None) -> np.ndarray:
    """`x` as float32 (N, ...) with N >= 1, finite, and of the model's data shape when given."""
    array = np.asarray(x, np.float32)
    if array.ndim < 2 or len(array) == 0 or not np.all(np.isfinite(array)):
        raise invalid(name, f"an array of shape {array.shape}", "finite inputs of shape (N, ...), N >= 1")
    if data_shape is not None and tuple(array.shape[1:]) != tuple(data_shape):
        raise invalid(name, f"inputs of shape {array.shape}",
                      f"inputs of shape (N, {', '.join(map(str, data_shape))}), the model's data_shape")
    return array


def reconstruction_loss(model: nn.Module):
    """`loss_fn(params, batch, key, hparams)`: mean squared error of reconstructing the clean batch from
    the batch plus Gaussian noise of the member's `noise` std."""

    def loss_fn(params, batch, key, hparams):
        (x,) = batch
        noisy = x + hparams["noise"] * jax.random.normal(key, x.shape, x.dtype)
        return jnp.mean((model.apply({"params": params}, noisy) - x) ** 2)

    return loss_fn


def fit_autoencoders(model: nn.Module, x_normal: Any, *, learning_rate: float | Sequence[float] = 1e-3,
                     noise: float | Sequence[float] = 0.0, seeds: int | Sequence[int] = 0, steps: int = 1000,
                     batch_size: int = 64, key: jax.Array | None = None, workdir: str | Path | None = None,
                     checkpoint_every: int | None = None, mesh: Any = "auto") -> AnomalyDetectors:
    """Train one autoencoder per member on `x_normal` (normal data only) in one program (the population
    engine, Adam). `learning_rate`, `noise` (the std of the Gaussian input noise: a denoising
    autoencoder) and `seeds` (initialisation) are a number for every member or one entry per member;
    members see the same batches. `workdir`: checkpoints every `checkpoint_every` steps (default a
    tenth), a rerun resumes and a finished run is restored; other inputs there are refused
    (`population.members.resumable`). Everything is checked before anything compiles.
    `mesh`: the members over every local device ('auto', the default; None: one device), as `fit_population`."""
    from vhjax.population.members import fit_members, init_members, per_step_batches, resumable

    x = check_inputs("x_normal", x_normal, getattr(model, "data_shape", None))
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1, len(x))
    seed_values = np.atleast_1d(np.asarray(seeds))
    size = _size(np.atleast_1d(learning_rate), np.atleast_1d(noise), seed_values)
    rates, noises = _per_member("learning_rate", learning_rate, size), _per_member("noise", noise, size)
    if not np.issubdtype(seed_values.dtype, np.integer) or len(seed_values) not in (1, size):
        raise invalid("seeds", seeds, f"an integer or a sequence of {size} integers (one per member)")
    seed_values = np.broadcast_to(seed_values, (size,))
    for index in range(size):
        check_number(f"member {index}: learning_rate", float(rates[index]), 0.0, low_inclusive=False)
        check_number(f"member {index}: noise", float(noises[index]), 0.0)
    key = jax.random.key(0) if key is None else key
    example = jnp.asarray(x[:1])
    optimizer = optim.make_optimizer("adam", learning_rate=float(rates[0]))
    seed_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seed_values, jnp.int32))
    population = init_members(lambda k: model.init(k, example)["params"], optimizer, key, size,
                              hparams={"noise": jnp.asarray(noises, jnp.float32)},
                              optimizer_hparams={"learning_rate": jnp.asarray(rates, jnp.float32)},
                              init_keys=seed_keys)  # a member's initialisation is its seed's
    batches = per_step_batches((x,), steps, batch_size, seed=int(seed_values[0]))
    saving = resumable(workdir, "autoencoders", {"model": repr(model), "x_normal": x, "learning_rate": rates.tolist(),
                                                 "noise": noises.tolist(), "seeds": seed_values.tolist(),
                                                 "steps": steps, "batch_size": batch_size,
                                                 "key": np.asarray(jax.random.key_data(key)).tolist()},
                       steps, checkpoint_every)
    trained, losses = fit_members(population, reconstruction_loss(model), optimizer, batches, steps, mesh=mesh,
                                  **saving)
    members = [{"learning_rate": float(r), "noise": float(n), "seed": int(s)}
               for r, n, s in zip(rates, noises, seed_values)]
    return AnomalyDetectors(model, trained.members.params, members, np.asarray(losses))


def reconstruction_errors(detectors: AnomalyDetectors, x: Any, batch_size: int = 1000) -> np.ndarray:
    """(P, N) mean squared reconstruction error of every member on every example (evaluation: no noise)."""
    data = check_inputs("x", x, getattr(detectors.model, "data_shape", None))
    return np.asarray(_errors_program(detectors.model, min(batch_size, len(data)))(detectors.params,
                                                                                    jnp.asarray(data)))


_PROGRAMS: Memo = Memo(8)  # per model and batch size: repeated scoring compiles nothing new


def _errors_program(model: nn.Module, batch_size: int):
    """`errors(params (P, ...), x (N, ...)) -> (P, N)`, jitted once per model and batch size."""

    def build():
        def errors(params, x):
            def one(member):
                def batch_errors(xb):
                    out = model.apply({"params": member}, xb)
                    return jnp.mean((out - xb).reshape(xb.shape[0], -1) ** 2, axis=1)

                return map_in_batches(batch_errors, x, batch_size)

            return jax.vmap(one)(params)

        return light_jit(errors)

    return _PROGRAMS.get((), build, settings=(model, batch_size))


def pca_errors(x_normal: Any, x: Any, components: int) -> np.ndarray:
    """(N,) squared reconstruction error per example (mean over features) from the top `components`
    principal axes of `x_normal`: the linear baseline of an autoencoder with a `components`-wide code."""
    from vhjax.preprocess import get_preprocessor

    normal, data = check_inputs("x_normal", x_normal), check_inputs("x", x)
    if tuple(normal.shape[1:]) != tuple(data.shape[1:]):
        raise invalid("x", f"inputs of shape {data.shape}", f"the shape of x_normal's inputs {normal.shape[1:]}")
    check_int("components", components, 1, int(np.prod(normal.shape[1:])))
    pca = get_preprocessor("pca", n_components=components)
    fitted = pca.fit(normal.reshape(len(normal), -1))
    flat = data.reshape(len(data), -1)
    rebuilt = np.asarray(pca.inverse_transform(fitted, pca.transform(fitted, flat)))
    return np.mean((rebuilt.reshape(len(data), -1) - flat) ** 2, axis=1)


def average_precision(scores_negative: np.ndarray, scores_positive: np.ndarray) -> float:
    """Average precision of ranking positives (higher score) above negatives: the mean, over positives,
    of the precision among the examples scored at least as high (ties broken against the positives)."""
    scores = np.concatenate([scores_negative, scores_positive])
    positive = np.concatenate([np.zeros(len(scores_negative), bool), np.ones(len(scores_positive), bool)])
    order = np.lexsort((positive, -scores))  # descending score; among ties negatives first (pessimistic)
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def detection_report(normal: Any, anomalous: Any, *, validation: Any, quantile: float = 0.95) -> dict:
    """Per member (rows of the (P, N) score arrays): `auroc` (`metrics.auroc`), `average_precision`, and at
    the threshold that keeps `quantile` of the normal `validation` scores below it (a false-alarm rate
    of about 1 - quantile, set without anomalies): `detection_rate` (anomalies flagged) and
    `false_alarm_rate` (test normal flagged); `chosen`: the member with the lowest mean validation
    score (error on normal data), the pick that needs no labelled anomalies; `best`: the highest AUROC."""
    normal, anomalous, validation = (np.atleast_2d(np.asarray(a, np.float64)) for a in (normal, anomalous, validation))
    if not (normal.shape[0] == anomalous.shape[0] == validation.shape[0]):
        raise invalid("normal, anomalous, validation", f"{normal.shape[0]}, {anomalous.shape[0]} and "
                      f"{validation.shape[0]} members", "the same members (rows) in all three")
    check_number("quantile", quantile, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    thresholds = np.quantile(validation, quantile, axis=1)
    finite = np.all(np.isfinite(validation), axis=1)
    report = {
        "auroc": np.array([float(metrics.auroc(n, a)) for n, a in zip(normal, anomalous)]),
        "average_precision": np.array([average_precision(n, a) for n, a in zip(normal, anomalous)]),
        "detection_rate": np.mean(anomalous > thresholds[:, None], axis=1),
        "false_alarm_rate": np.mean(normal > thresholds[:, None], axis=1),
        "validation_error": np.where(finite, validation.mean(axis=1), np.inf),
    }
    report["chosen"] = int(np.argmin(report["validation_error"]))
    report["best"] = int(np.nanargmax(report["auroc"]))
    return report


__all__ = ["AnomalyDetectors", "average_precision", "detection_report", "fit_autoencoders", "pca_errors",
           "reconstruction_errors", "reconstruction_loss"]
