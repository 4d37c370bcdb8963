"""Online learning on a drifting stream (`vhjax.online`): the stream's concepts, prequential
(test-then-train) accuracy in one program, and the drop and recovery at a drift."""

import numpy as np
import pytest

from tests.datasets import tiny_classification
from vhjax import online
from vhjax.config import TrainConfig

X, Y = tiny_classification(rows=2000, features=8, classes=4)["train"]
CONFIG = TrainConfig(model="mlp", model_kwargs={"widths": (32,), "num_classes": 4}, optimizer="adam", batch_size=20,
                     eval_metrics=("accuracy",))


def test_label_drift_permutes_classes_per_segment_and_input_drift_moves_only_inputs():
    stream = online.drifting_stream(X, Y, segments=3, segment_size=500, kind="labels", seed=1)
    assert stream.starts == (0, 500, 1000) and stream.x.shape == (1500, 8)
    np.testing.assert_array_equal(stream.x, X[stream.rows])
    original = Y[stream.rows]
    np.testing.assert_array_equal(stream.y[:500], original[:500])  # the first concept is the data's
    for start in (500, 1000):
        old, new = original[start:start + 500], stream.y[start:start + 500]
        mapping = {o: n for o, n in zip(old, new)}
        assert all(mapping[o] == n for o, n in zip(old, new))  # one permutation of the classes
        assert sorted(mapping.values()) == sorted(mapping) and mapping != {c: c for c in mapping}
    shifted = online.drifting_stream(X, Y, segments=2, segment_size=500, kind="inputs", strength=2.0, seed=1)
    np.testing.assert_array_equal(shifted.y, Y[shifted.rows])  # the labels keep their concept
    np.testing.assert_array_equal(shifted.x[:500], X[shifted.rows[:500]])
    source, moved = X[shifted.rows[500:]].ravel(), shifted.x[500:].ravel()
    gain, offset = np.polyfit(source, moved, 1)  # one gain and offset for the whole segment
    np.testing.assert_allclose(moved, gain * source + offset, atol=1e-4)
    assert abs(gain - 1) + abs(offset) > 0.1


def test_segments_longer_than_the_data_pass_over_it_again():
    stream = online.drifting_stream(X[:100], Y[:100], segments=1, segment_size=250, seed=0)
    counts = np.bincount(stream.rows, minlength=100)
    assert set(counts) == {2, 3}  # two full passes, then half of a third


def test_prequential_accuracy_drops_at_a_label_drift_and_a_frozen_member_stays_flat():
    stream = online.drifting_stream(X, Y, segments=2, segment_size=1000, kind="labels", seed=0)
    result = online.prequential(CONFIG, [{"learning_rate": 1e-2}, {"learning_rate": 1e-9}], stream, window=10)
    assert result.curves.shape == (2, 10) and list(result.steps) == list(range(10, 101, 10))
    learner, frozen = result.curves
    last_before, first_after = learner[4], learner[5]  # windows 0-4: segment 0; 5-9: segment 1
    assert last_before > 0.6 and first_after < last_before - 0.3  # learnt, then the concept changed
    assert learner[9] > first_after + 0.2  # and it learns the new one
    assert np.ptp(frozen[:5]) < 0.15 and np.ptp(frozen[5:]) < 0.15  # a model that does not learn stays flat
    np.testing.assert_allclose(result.per_segment[0], [learner[:5].mean(), learner[5:].mean()])
    assert result.recovery[0] == [next((i + 1 for i in range(5) if learner[5 + i] >= last_before), None)]
    # each window scores the stream's examples in order: the frozen member's final model on them
    from vhjax.ensemble import Ensemble

    ensemble = Ensemble.from_population(result.population, online.stream_config(CONFIG, stream, 10))
    correct = np.asarray(ensemble.member_logits(stream.x)).argmax(-1)[1] == stream.y
    np.testing.assert_allclose(frozen, correct.reshape(10, 200).mean(axis=1), atol=1e-6)


def test_recovery_counts_windows_after_each_drift():
    curves = np.asarray([[0.5, 0.8, 0.2, 0.6, 0.9, 0.3, 0.4]])
    segments = np.asarray([0, 0, 1, 1, 1, 2, 2])
    assert online.recovery_windows(curves, segments) == [[3, None]]  # 0.9 >= 0.8 on the third; 0.4 < 0.9


def test_a_window_longer_than_the_stream_is_refused():
    stream = online.drifting_stream(X, Y, segments=1, segment_size=100, seed=0)
    with pytest.raises(ValueError, match="window"):
        online.stream_config(CONFIG, stream, window=6)  # 100 examples: 5 steps of 20
