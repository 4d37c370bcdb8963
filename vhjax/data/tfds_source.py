"""TFDS datasets prepared locally in array_record format, read without TensorFlow.

Reading goes through `tfds.builder_from_directory(...).as_data_source(split)` (the same
ArrayRecordDataSource that `tfds.data_source` returns, but built from the folder's own
features.json, so no registered builder code runs and nothing is fetched from GCS) and a
`grain.MapDataset` into NumPy arrays. The example features map to `Dataset` as:
x = 'image', else 'x', else the first Image/Tensor feature; y = 'label', else 'y', else the first
ClassLabel, whose `num_classes` is the class count. Image features (uint8) are scaled to [0, 1];
Tensor features are converted to float32 unchanged.

Nothing is ever downloaded: a dataset that is not prepared raises FileNotFoundError at once,
saying how to prepare it. `save_as_tfds` writes user arrays as such a dataset; tensorflow_datasets
is imported on first use only (it takes 1-2 s), so `import vhjax.data` stays cheap.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vhjax.data.dataset import Dataset
from vhjax.data.splits import SplitSpec

TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
READ_BATCH = 4096
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_NAME_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*){0,2}$")
_SAVE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tfds_root(data_dir: str | None) -> Path:
    """The TFDS data folder: `data_dir`, else `$TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
    return Path(data_dir or os.environ.get(TFDS_DATA_DIR_ENV) or "~/tensorflow_datasets").expanduser()


def version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.name.split("."))


def dataset_path(name: str) -> str:
    """TFDS's 'NAME[/CONFIG]:VERSION' (as `tfds.load` takes it) -> the folder path 'NAME[/CONFIG]/VERSION';
    other names unchanged."""
    if ":" in name:
        base, version = name.rsplit(":", 1)
        if not _VERSION.match(version) or ":" in base:
            raise ValueError(f"TFDS dataset name {name!r} is not allowed; allowed: 'NAME[/CONFIG]:MAJOR.MINOR.PATCH', "
                             "e.g. 'mnist:3.0.1'")
        return f"{base}/{version}"
    return name


def well_formed(name: str) -> bool:
    return bool(_NAME_PATH.match(name)) and ".." not in name.split("/")


def find_prepared(name: str, data_dir: str | None) -> Path | None:
    """Folder of prepared 'NAME', 'NAME:VERSION', 'NAME/VERSION' or 'NAME/CONFIG[:VERSION]' (newest
    version when none is given); None if absent."""
    name = dataset_path(name)
    if not well_formed(name):
        raise ValueError(f"TFDS dataset name {name!r} is not allowed; allowed: 'NAME', 'NAME:VERSION', "
                         "'NAME/CONFIG' or 'NAME/CONFIG:VERSION' (letters, digits, '_', '.', '-'; "
                         "'/VERSION' works for ':VERSION')")
    base = tfds_root(data_dir) / name
    if (base / "dataset_info.json").is_file():
        return base
    if not base.is_dir():
        return None
    versions = [child for child in base.iterdir()
                if _VERSION.match(child.name) and (child / "dataset_info.json").is_file()]
    return max(versions, key=version_key) if versions else None


def missing_dataset_message(name: str, data_dir: str | None) -> str:
    """How to prepare a dataset that is not on disk (vhjax never downloads)."""
    root = tfds_root(data_dir)
    return (
        f"TFDS dataset {name!r} is not prepared under data_dir {str(root)!r} (looked for "
        f"{str(root / dataset_path(name))}/<version>/dataset_info.json); vhjax reads prepared datasets only and never "
        f"downloads. To prepare it: from arrays, call vhjax.data.save_as_tfds({name!r}, "
        f"{{'train': (x, y), 'test': (x, y)}}, data_dir={str(root)!r}, num_classes=K); or, on a machine "
        f"with network and TensorFlow, run `tfds build {name} --data_dir {root} --file_format array_record` "
        f"and copy the folder here. Then pass data_dir={str(root)!r}.")


def is_prepared(name: str, data_dir: str | None) -> bool:
    """Whether `name` is a well-formed dataset name prepared under `data_dir`."""
    try:
        path = dataset_path(name)
    except ValueError:
        return False
    return well_formed(path) and find_prepared(path, data_dir) is not None


def pick_features(features: Any, name: str) -> tuple[str, str, int, bool]:
    """(x key, y key, num_classes, x is an Image) from a FeaturesDict; ValueError listing features if none fit."""
    import tensorflow_datasets as tfds

    described = {key: type(feature).__name__ for key, feature in features.items()}
    labels = [key for key, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    inputs = [key for key, f in features.items()
              if isinstance(f, (tfds.features.Image, tfds.features.Tensor))
              and not isinstance(f, tfds.features.ClassLabel)]
    y_key = next((key for key in ("label", "y") if key in labels), labels[0] if labels else None)
    x_key = next((key for key in ("image", "x") if key in inputs), inputs[0] if inputs else None)
    if x_key is None or y_key is None:
        raise ValueError(f"TFDS dataset {name!r} has features {described}; allowed: an Image or Tensor input "
                         "('image', 'x' or the first one) and a ClassLabel ('label', 'y' or the first one)")
    shape = features[x_key].shape
    if any(size is None for size in shape):
        raise ValueError(f"TFDS dataset {name!r} feature {x_key!r} has shape {shape}; allowed: a fixed shape")
    return x_key, y_key, int(features[y_key].num_classes), isinstance(features[x_key], tfds.features.Image)


def read_rows(source: Any, start: int, stop: int, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Records `start:stop` of a random-access source, stacked into arrays with grain."""
    import grain

    rows = (grain.MapDataset.source(source)[start:stop]
            .map(lambda example: (example[x_key], example[y_key]))
            .batch(READ_BATCH))
    xs, ys = zip(*rows)
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds(name: str, spec: SplitSpec, data_dir: str | None) -> Dataset:
    """Load split `spec` of the prepared TFDS dataset `name` from `data_dir`."""
    directory = find_prepared(name, data_dir)
    if directory is None:
        raise FileNotFoundError(missing_dataset_message(name, data_dir))
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(directory))
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"TFDS dataset {name!r} in {str(directory)!r} is stored as {builder.info.file_format}; allowed: "
            f"array_record (rebuild it with `tfds build {name} --file_format array_record`)")
    rows = spec.resolve(builder.info.splits, name)  # TFDS's own resolution, shard lengths included
    x_key, y_key, num_classes, is_image = pick_features(builder.info.features, name)
    parts = [read_rows(builder.as_data_source(split=r.base), r.start, r.stop, x_key, y_key) for r in rows if len(r)]
    x, y = parts[0] if len(parts) == 1 else tuple(np.concatenate(arrays) for arrays in zip(*parts))
    x = x.astype(np.float32) / 255.0 if is_image else x
    return Dataset(x, y, num_classes, name, spec.text)


@functools.cache
def array_record_builder_class() -> type:
    """A GeneratorBasedBuilder writing given arrays as array_record, defined on first use (lazy tfds import).

    Written by hand because tfds's own `store_as_tfds_dataset` (AdhocBuilder) needs TensorFlow:
    it checks `isinstance(data, tf.data.Dataset)`, and its `code_path` needs the missing
    `importlib_resources` backport; this builder overrides `code_path` and never touches tf.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import utils

    class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        def __init__(self, *, name: str, version: str, datasets: Mapping[str, Dataset], **kwargs):
            self.name = name
            self.VERSION = tfds.core.Version(version)
            self._datasets = datasets
            super().__init__(file_format="array_record", **kwargs)

        @utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def _info(self):
            first = next(iter(self._datasets.values()))
            features = tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=first.feature_shape, dtype=np.float32),
                "y": tfds.features.ClassLabel(num_classes=first.num_classes),
            })
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("x", "y"),
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(data) for split, data in self._datasets.items()}

        def _generate_examples(self, data: Dataset):
            for index in range(len(data)):
                yield index, {"x": data.x[index], "y": int(data.y[index])}

    return ArrayRecordBuilder


def validated_splits(name: str, splits: Mapping[str, tuple[Any, Any]], num_classes: int) -> dict[str, Dataset]:
    """The splits as Datasets (checking dtypes, lengths, labels) with one shared example shape."""
    if not _SAVE_NAME.match(name):
        raise ValueError(f"save_as_tfds name {name!r} is not allowed; allowed: snake_case such as 'my_data'")
    if not splits:
        raise ValueError("save_as_tfds 'splits' is empty; allowed: a mapping such as {'train': (x, y)}")
    datasets = {}
    for split, pair in splits.items():
        if not isinstance(split, str) or not _SPLIT_NAME.match(split):
            raise ValueError(f"save_as_tfds split name {split!r} is not allowed; allowed: names such as 'train'")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"save_as_tfds split {split!r} is {type(pair).__name__}; allowed: a pair (x, y)")
        datasets[split] = Dataset(pair[0], pair[1], num_classes, name, split)
    shapes = {split: data.feature_shape for split, data in datasets.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"save_as_tfds splits have different example shapes {shapes}; allowed: one shape")
    return datasets


def save_as_tfds(name: str, splits: Mapping[str, tuple[Any, Any]], data_dir: str | os.PathLike,
                 num_classes: int, *, version: str = "1.0.0", overwrite: bool = False) -> Path:
    """Store arrays as TFDS dataset `name` (array_record, features x: float32 Tensor, y: ClassLabel).

    `splits` maps split names to `(x, y)`; example order is kept. Returns the dataset folder
    `data_dir/name/version`; `load('tfds:' + name, split, data_dir=data_dir)` reads it back.
    Raises FileExistsError if that folder exists, unless `overwrite`.
    """
    datasets = validated_splits(name, splits, num_classes)
    if not _VERSION.match(version):
        raise ValueError(f"save_as_tfds version {version!r} is not allowed; allowed: 'MAJOR.MINOR.PATCH'")
    target = Path(data_dir).expanduser() / name / version
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"TFDS dataset {name!r} already exists at {str(target)!r}; "
                                  "pass overwrite=True to replace it")
        shutil.rmtree(target)
    import tensorflow_datasets as tfds

    builder = array_record_builder_class()(name=name, version=version, datasets=datasets,
                                           data_dir=str(Path(data_dir).expanduser()))
    with tempfile.TemporaryDirectory() as downloads:  # keeps tfds's empty downloads/ out of data_dir
        builder.download_and_prepare(download_dir=downloads,
                                     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return target
