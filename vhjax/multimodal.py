"""Multimodal fusion: one classifier over several input modalities, with members that differ in how
often a modality is dropped while training, in one program (CATALOG 1.12/1.14, "multimodal fusion").

`FusionNet(encoders, num_classes, fusion)` encodes each modality with its own module, then fuses:
'features' concatenates the encoders' features into one Dense head (intermediate fusion); 'late'
gives each modality its own head and averages the logits of the modalities present (decision
fusion). A missing modality (mask 0) contributes zeros to 'features' and nothing to 'late'.
`fit_multimodal` trains one member per `modality_dropout` rate: while training, each modality of each
example is dropped with that probability (at least one is kept), so a member learns to classify
from whatever arrives. Test accuracy is reported with every modality and with each one alone.
`paired_by_class` builds multimodal examples from single-modality datasets of the same classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vhjax import optim
from vhjax.models.generative import MLPStack as Encoder  # a plain MLP encoder: Encoder(widths)
from vhjax.validation import check_choice, check_int, check_number

FUSIONS = ("features", "late")


class FusionNet(nn.Module):
    """One encoder per modality, fused by 'features' (concatenate, one head) or 'late' (a head per
    modality, logits averaged over the modalities present)."""

    encoders: Sequence[nn.Module]
    num_classes: int
    fusion: str = "features"

    @nn.compact
    def __call__(self, inputs: Sequence[jax.Array], present: jax.Array | None = None) -> jax.Array:
        batch = inputs[0].shape[0]
        present = jnp.ones((batch, len(inputs))) if present is None else present.astype(jnp.float32)
        features = [encoder(x.reshape(batch, -1)) * present[:, m:m + 1]
                    for m, (encoder, x) in enumerate(zip(self.encoders, inputs))]
        if self.fusion == "features":
            return nn.Dense(self.num_classes, name="head")(jnp.concatenate(features, axis=1))
        logits = jnp.stack([nn.Dense(self.num_classes, name=f"head_{m}")(f) for m, f in enumerate(features)], axis=1)
        weights = present / jnp.maximum(present.sum(axis=1, keepdims=True), 1.0)
        return jnp.einsum("bmc,bm->bc", logits, weights)


def drop_modalities(key: jax.Array, batch: int, modalities: int, rate: jax.Array) -> jax.Array:
    """(batch, modalities) presence mask: each entry dropped with probability `rate`; an example that
    would lose every modality keeps one drawn at random."""
    k_drop, k_keep = jax.random.split(key)
    present = jax.random.uniform(k_drop, (batch, modalities)) >= rate
    keep = jax.nn.one_hot(jax.random.randint(k_keep, (batch,), 0, modalities), modalities) > 0
    return jnp.where(present.any(axis=1, keepdims=True), present, keep)


def fusion_loss(model: FusionNet):
    """`loss_fn(params, batch, key, hparams)`: cross-entropy with modalities dropped at the member's
    `modality_dropout` rate."""

    def loss_fn(params, batch, key, hparams):
        inputs, labels = batch[:-1], batch[-1]
        present = drop_modalities(key, labels.shape[0], len(inputs), hparams["modality_dropout"])
        logits = model.apply({"params": params}, inputs, present)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    return loss_fn


@dataclasses.dataclass
class MultimodalResult:
    """Per member: test accuracy with every modality (`accuracy`) and with each modality alone
    (`alone`, members x modalities); the trained population."""

    accuracy: np.ndarray
    alone: np.ndarray
    population: Any


def fit_multimodal(model: FusionNet, train: tuple, test: tuple, modality_dropout: Sequence[float], *, steps: int,
                   batch_size: int = 64, learning_rate: float = 1e-3, key: jax.Array | None = None,
                   workdir: str | Path | None = None, checkpoint_every: int | None = None,
                   mesh: Any = "auto") -> MultimodalResult:
    """Train one member per `modality_dropout` rate on `train` = ((x_1, ..., x_M), y), Adam, every
    member on the same batches, one program; accuracy on `test` with all and with single modalities.
    `workdir`: checkpoints every `checkpoint_every` steps (default a tenth), a rerun resumes, a finished
    run is restored, other inputs are refused (`population.members.resumable`).
    `mesh`: the members over every local device ('auto', the default; None: one device), as `fit_population`."""
    from vhjax.population.members import fit_members, init_members, per_step_batches, resumable

    check_choice("fusion", model.fusion, FUSIONS)
    inputs, y = tuple(np.asarray(x, np.float32) for x in train[0]), np.asarray(train[1], np.int32)
    if len(inputs) != len(model.encoders) or any(len(x) != len(y) for x in inputs):
        raise ValueError(f"train inputs have {len(inputs)} modalities of {[len(x) for x in inputs]} examples; allowed: "
                         f"{len(model.encoders)} (one per encoder), each with the {len(y)} labels' examples")
    rates = np.asarray(modality_dropout, np.float32)
    for rate in rates:
        check_number("modality_dropout", float(rate), 0.0, 1.0, high_inclusive=False)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1, len(y))
    key = jax.random.key(0) if key is None else key
    optimizer = optim.make_optimizer("adam", learning_rate=learning_rate)
    init_fn = lambda k: model.init(k, tuple(jnp.asarray(x[:1]) for x in inputs))["params"]  # noqa: E731
    population = init_members(init_fn, optimizer, key, len(rates), hparams={"modality_dropout": rates})
    batches = per_step_batches((*inputs, y), steps, batch_size)
    saving = resumable(workdir, "multimodal", {"model": repr(model), "train": (inputs, y), "modality_dropout": rates,
                                               "steps": steps, "batch_size": batch_size,
                                               "learning_rate": learning_rate,
                                               "key": np.asarray(jax.random.key_data(key))}, steps, checkpoint_every)
    trained, _ = fit_members(population, fusion_loss(model), optimizer, batches, steps, mesh=mesh, **saving)
    test_inputs = tuple(jnp.asarray(x, jnp.float32) for x in test[0])
    test_y = np.asarray(test[1])

    members_logits = jax.jit(jax.vmap(lambda p, mask: model.apply({"params": p}, test_inputs, mask),
                                      in_axes=(0, None)))  # one program for every presence mask

    def accuracy(present):
        mask = jnp.broadcast_to(jnp.asarray(present, jnp.float32), (len(test_y), len(test_inputs)))
        logits = members_logits(trained.members.params, mask)
        return (np.asarray(logits).argmax(-1) == test_y[None]).mean(axis=1)

    modalities = len(test_inputs)
    alone = np.stack([accuracy(np.eye(modalities)[m]) for m in range(modalities)], axis=1)
    return MultimodalResult(accuracy(np.ones(modalities)), alone, trained)


def paired_by_class(datasets: Sequence[tuple[np.ndarray, np.ndarray]], size: int, seed: int = 0) -> tuple:
    """((x_1, ..., x_M), y): `size` examples, each a random example of one class from every dataset
    (the datasets share their classes); the class is drawn uniformly."""
    rng = np.random.default_rng(seed)
    classes = sorted(set.intersection(*(set(np.unique(y).tolist()) for _, y in datasets)))
    if not classes:
        raise ValueError("datasets share no class; allowed: datasets labelled with the same classes")
    labels = rng.choice(classes, size)
    pools = [{c: np.flatnonzero(y == c) for c in classes} for _, y in datasets]
    inputs = tuple(np.stack([x[rng.choice(pool[c])] for c in labels]) for (x, _), pool in zip(datasets, pools))
    return inputs, labels.astype(np.int32)


__all__ = ["Encoder", "FUSIONS", "FusionNet", "MultimodalResult", "drop_modalities", "fit_multimodal", "fusion_loss",
           "paired_by_class"]
