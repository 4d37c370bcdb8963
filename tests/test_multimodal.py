"""Multimodal fusion (`vhjax.multimodal`): the two fusions with modalities missing, modality dropout
masks, robustness to a missing modality learnt only with dropout, pairing by class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.datasets import tiny_classification
from vhjax.multimodal import Encoder, FusionNet, drop_modalities, fit_multimodal, paired_by_class

(X, Y), (XT, YT) = tiny_classification(rows=1000, features=8, classes=4).values()


def two_views(x, seed):
    """A clean modality (every feature) and a noisy one (the class's features plus noise of std 0.6)."""
    rng = np.random.default_rng(seed)
    return (x, x[:, :4] + 0.6 * rng.normal(size=(len(x), 4)))


@pytest.mark.parametrize("fusion", ["features", "late"])
def test_a_missing_modality_contributes_nothing(fusion):
    model = FusionNet((Encoder((8,)), Encoder((8,))), 3, fusion)
    inputs = (jnp.ones((2, 4)), jnp.full((2, 5), 2.0))
    params = model.init(jax.random.key(0), inputs)["params"]
    only_first = model.apply({"params": params}, inputs, jnp.asarray([[1, 0], [1, 0]]))
    changed = model.apply({"params": params}, (inputs[0], inputs[1] * 7.0), jnp.asarray([[1, 0], [1, 0]]))
    np.testing.assert_allclose(only_first, changed)  # the absent modality's values do not matter
    if fusion == "late":  # the first modality's own head
        features = Encoder((8,)).apply({"params": params["encoders_0"]}, inputs[0])
        expected = features @ params["head_0"]["kernel"] + params["head_0"]["bias"]
        np.testing.assert_allclose(only_first, expected, rtol=1e-5)


def test_dropout_masks_keep_at_least_one_modality():
    mask = np.asarray(drop_modalities(jax.random.key(0), 4000, 2, jnp.float32(0.5)))
    assert mask.any(axis=1).all()
    assert 0.3 < 1 - mask.mean() < 0.4  # half dropped, minus the examples given one back (1/4 of them)
    assert np.asarray(drop_modalities(jax.random.key(1), 100, 3, jnp.float32(0.0))).all()


def test_modality_dropout_makes_the_weaker_modality_usable_alone():
    model = FusionNet((Encoder((32,)), Encoder((32,))), 4, "features")
    result = fit_multimodal(model, (two_views(X, 0), Y), (two_views(XT, 1), YT), [0.0, 0.5], steps=600,
                            learning_rate=3e-3)
    plain, dropped = result.alone
    assert result.accuracy.min() > 0.85  # both classify with both modalities
    # trained with both, the plain member leans on the clean modality: the noisy one alone is far
    # worse than after training with modalities dropped
    assert dropped[1] > plain[1] + 0.1


def test_pairs_share_their_class_and_bad_inputs_are_refused():
    a = (np.arange(20, dtype=np.float32)[:, None], np.arange(20) % 4)
    b = (100 + np.arange(12, dtype=np.float32)[:, None], np.arange(12) % 4)
    (xa, xb), y = paired_by_class([a, b], 50, seed=0)
    assert np.all(xa[:, 0] % 4 == y) and np.all((xb[:, 0] - 100) % 4 == y)
    model = FusionNet((Encoder((4,)), Encoder((4,))), 4)
    with pytest.raises(ValueError, match="modality_dropout"):
        fit_multimodal(model, ((xa, xb), y), ((xa, xb), y), [1.0], steps=2)
    with pytest.raises(ValueError, match="modalities"):
        fit_multimodal(model, ((xa,), y), ((xa,), y), [0.0], steps=2)
