"""Streaming a prepared TFDS dataset in batches with grain, sharded across hosts.

`load` reads a whole split into memory (what the population engine wants for small data).
For data that should not be read whole, or for multi-host training, `stream_tfds` yields
`(x, y)` NumPy batches from `tfds.data_source` through a grain `DataLoader`; each host (JAX
process) reads its own shard (`grain.python.ShardByJaxProcess` by default), shuffled per epoch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from vhjax.data.splits import parse_split
from vhjax.data.tfds_source import find_prepared, missing_dataset_message, pick_features


def stream_tfds(name: str, split: str, *, data_dir: str | None = None, batch_size: int, shuffle: bool = True,
                seed: int = 0, num_epochs: int = 1, shard_index: int | None = None, shard_count: int | None = None,
                drop_remainder: bool = True, worker_count: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches `(x (B, ...) float32, y (B,) int32)` of this host's shard of `split` (TFDS split syntax).

    Shards default to one per JAX process; pass `shard_index` and `shard_count` to choose them.
    """
    import grain.python as grain
    import tensorflow_datasets as tfds

    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r}; allowed: a positive integer")
    name = name.removeprefix("tfds:")
    directory = find_prepared(name, data_dir)
    if directory is None:
        raise FileNotFoundError(missing_dataset_message(name, data_dir))
    builder = tfds.builder_from_directory(str(directory))
    parse_split(split).resolve(builder.info.splits, name)  # clear errors before TFDS reads the split
    x_key, y_key, _, is_image = pick_features(builder.info.features, name)
    source = builder.as_data_source(split=split)  # TFDS split syntax: 'train[:90%]', 'train+test', ...
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither (one shard per JAX process)")
    if shard_count is None:
        shard_options = grain.ShardByJaxProcess(drop_remainder=True)
    else:
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index!r}; allowed: 0..{shard_count - 1}")
        shard_options = grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options, shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    scale = 1.0 / 255.0 if is_image else 1.0

    def to_arrays(example):
        return np.asarray(example[x_key], np.float32) * scale, np.asarray(example[y_key], np.int32)

    class ToArrays(grain.MapTransform):
        def map(self, element):
            return to_arrays(element)

    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              operations=[ToArrays(), grain.Batch(batch_size=batch_size, drop_remainder=drop_remainder)])
    for x, y in loader:
        yield x, y
