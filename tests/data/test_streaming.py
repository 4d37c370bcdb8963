"""Streaming a locally built TFDS dataset with grain, sharded across hosts."""

from __future__ import annotations

import numpy as np
import pytest

from vhjax.data import save_as_tfds
from vhjax.data.streaming import stream_tfds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    x = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    y = (np.arange(24) % 4).astype(np.int64)
    save_as_tfds("stream_tiny", {"train": (x, y)}, directory, num_classes=4)
    return directory, x, y


def test_shards_partition_the_split_and_batches_have_the_right_shape(tiny):
    directory, x, y = tiny
    seen = []
    for shard in range(2):
        batches = list(stream_tfds("stream_tiny", "train", data_dir=str(directory), batch_size=4, shuffle=False,
                                   shard_index=shard, shard_count=2))
        assert len(batches) == 3 and all(b[0].shape == (4, 3) and b[1].dtype == np.int32 for b in batches)
        seen.append(np.concatenate([b[0][:, 0] for b in batches]))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen).tolist()) == sorted(x[:, 0].tolist())
    first = next(stream_tfds("stream_tiny", "train", data_dir=str(directory), batch_size=24, shuffle=False))
    np.testing.assert_array_equal(first[1], y)


def test_shuffling_is_seeded(tiny):
    directory, _, _ = tiny
    order = lambda seed: next(stream_tfds("tfds:stream_tiny", "train", data_dir=str(directory), batch_size=24,
                                          seed=seed))[0][:, 0].tolist()
    assert order(0) == order(0) and order(0) != order(1)


def test_missing_dataset_and_bad_split(tiny, tmp_path):
    directory, _, _ = tiny
    with pytest.raises(FileNotFoundError):
        next(stream_tfds("no_such_set", "train", data_dir=str(tmp_path), batch_size=2))
    with pytest.raises(ValueError, match="split .validation.*available splits: train"):
        next(stream_tfds("stream_tiny", "validation", data_dir=str(directory), batch_size=2))
