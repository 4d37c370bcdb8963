"""vhjax.data: built-in datasets, the mnist1d cache, split slicing, TFDS round trip, fast failures."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from vhjax import data
from vhjax.data import DATASETS, builtin, from_arrays, load, parse_split, register_dataset, save_as_tfds
from vhjax.data.dataset import Dataset
from vhjax.data.splits import Rows

RNG_SEED_BEFORE_GENERATION = 7


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    """Generate MNIST-1D once for this module into a temporary cache; also record the global RNG afterwards."""
    directory = tmp_path_factory.mktemp("vhjax_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(builtin.CACHE_ENV, str(directory))
        np.random.seed(RNG_SEED_BEFORE_GENERATION)
        splits = {split: load("mnist1d", split) for split in ("train", "test")}
        rng_draw_after = np.random.random_sample()
    return directory, splits, rng_draw_after


@pytest.fixture
def cached(mnist1d_cache, monkeypatch):
    """The module's MNIST-1D cache as $VHJAX_CACHE; generating again would fail the test."""
    directory, _, _ = mnist1d_cache
    monkeypatch.setenv(builtin.CACHE_ENV, str(directory))

    def no_generation():
        raise AssertionError("mnist1d was generated again instead of read from the cache")

    monkeypatch.setattr(builtin, "generate_mnist1d", no_generation)
    return directory


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -- MNIST-1D ----------------------------------------------------------------------------------

def test_mnist1d_matches_paper_sizes(mnist1d_cache):
    _, splits, _ = mnist1d_cache
    train, test = splits["train"], splits["test"]
    assert train.x.shape == (4000, 40) and test.x.shape == (1000, 40)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert train.feature_shape == (40,) and len(train) == 4000 and len(test) == 1000
    assert train.num_classes == 10 and (train.name, train.split, test.split) == ("mnist1d", "train", "test")
    assert set(np.unique(train.y)) == set(range(10)) and set(np.unique(test.y)) == set(range(10))
    everything = np.concatenate([train.x, test.x])  # make_dataset standardizes the whole set
    assert abs(everything.mean()) < 1e-3 and abs(everything.std() - 1) < 1e-3


def test_mnist1d_generation_leaves_global_rngs_alone(mnist1d_cache):
    _, _, rng_draw_after = mnist1d_cache
    assert rng_draw_after == np.random.RandomState(RNG_SEED_BEFORE_GENERATION).random_sample()


def test_second_load_reads_cache(cached, mnist1d_cache):
    _, splits, _ = mnist1d_cache
    again = load("mnist1d", "train")  # would raise if it generated
    np.testing.assert_array_equal(again.x, splits["train"].x)
    np.testing.assert_array_equal(again.y, splits["train"].y)
    assert len(list(cached.glob("mnist1d-*.npz"))) == 1


def test_cache_written_once_and_data_dir_overrides_env(tmp_path, monkeypatch):
    calls = []

    def fake_generation():
        calls.append(1)
        x = np.arange(20 * 40, dtype=np.float32).reshape(20, 40)
        return {"x_train": x[:15], "y_train": np.arange(15) % 10, "x_test": x[15:], "y_test": np.arange(5)}

    monkeypatch.setattr(builtin, "generate_mnist1d", fake_generation)
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path / "env"))
    assert len(load("mnist1d", "train", data_dir=str(tmp_path / "explicit"))) == 15
    assert len(load("mnist1d", "test", data_dir=str(tmp_path / "explicit"))) == 5
    assert calls == [1]
    assert list((tmp_path / "explicit").glob("*.npz")) and not (tmp_path / "env").exists()


def test_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path))
    builtin.mnist1d_cache_path(tmp_path).write_bytes(b"half a file")
    x = np.ones((10, 40), np.float32)
    monkeypatch.setattr(builtin, "generate_mnist1d", lambda: {
        "x_train": x, "y_train": np.arange(10), "x_test": x[:2], "y_test": np.arange(2)})
    assert len(load("mnist1d", "train")) == 10


def test_shuffled_is_mnist1d_with_paper_permutation(cached, mnist1d_cache):
    _, splits, _ = mnist1d_cache
    state = np.random.get_state()
    np.random.seed(42)  # the recipe of notebooks/mnist1d-classification.ipynb
    notebook_order = np.random.permutation(40)
    np.random.set_state(state)
    order = data.paper_shuffle_permutation()
    np.testing.assert_array_equal(order, notebook_order)
    assert sorted(order) == list(range(40)) and not np.array_equal(order, np.arange(40))
    for split in ("train", "test"):
        shuffled = load("mnist1d_shuffled", split)
        np.testing.assert_array_equal(shuffled.x, splits[split].x[:, order])
        np.testing.assert_array_equal(shuffled.y, splits[split].y)
        assert shuffled.name == "mnist1d_shuffled" and not np.array_equal(shuffled.x, splits[split].x)


# -- splits ------------------------------------------------------------------------------------

def test_percent_slices_partition_train(cached, mnist1d_cache):
    _, splits, _ = mnist1d_cache
    head, tail = load("mnist1d", "train[:90%]"), load("mnist1d", "train[90%:]")
    assert (len(head), len(tail)) == (3600, 400)
    np.testing.assert_array_equal(np.concatenate([head.x, tail.x]), splits["train"].x)
    np.testing.assert_array_equal(np.concatenate([head.y, tail.y]), splits["train"].y)
    assert head.split == "train[:90%]"


def test_index_slices(cached, mnist1d_cache):
    _, splits, _ = mnist1d_cache
    train = splits["train"]
    np.testing.assert_array_equal(load("mnist1d", "train[:3000]").x, train.x[:3000])
    np.testing.assert_array_equal(load("mnist1d", "train[100:200]").y, train.y[100:200])
    np.testing.assert_array_equal(load("mnist1d", "train[-500:]").x, train.x[3500:])
    assert len(load("mnist1d", "test[:33%]")) == 330  # floor(1000 * 33 / 100)
    assert len(load("mnist1d", "test[-10%:]")) == 100


def test_percent_bounds_round_to_the_closest_example_as_tfds():
    sizes = {"train": 1437}
    assert parse_split("train[:10%]").resolve(sizes) == (Rows("train", 0, 144),)  # 143.7 -> 144
    assert parse_split("train[10%:]").resolve(sizes) == (Rows("train", 144, 1437),)
    assert parse_split("train").resolve({"train": 7}) == (Rows("train", 0, 7),)
    # the two cases issue 15 reports: the hand-written parser gave 722 and 99
    assert len(load((np.zeros((803, 2)), np.arange(803) % 3), "train[:90%]")) == 723
    assert len(load((np.zeros((997, 2)), np.arange(997) % 3), "train[-10%:]")) == 100


def tfds_split_dict(sizes):
    """A TFDS SplitDict with the given shard lengths per split (no files: TFDS only computes on it)."""
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(data_dir="/nonexistent", dataset_name="d", split="train",
                                             filetype_suffix="array_record")
    return tfds.core.SplitDict([tfds.core.SplitInfo(name=name, shard_lengths=list(shards), num_bytes=0,
                                                    filename_template=template.replace(split=name))
                                for name, shards in sizes.items()])


SPECS = ["train", "test", "all", "train[:90%]", "train[90%:]", "train[-10%:]", "train[:-10%]", "train[33%:67%]",
         "train[1%:2%]", "train[50%:]", "train[:50%]", "train[12.5%:87.5%]", "train[-0.5%:]", "train[5:]",
         "train[:5]", "train[-5:]", "train[2:-2]", "train[-3:-1]", "train[10:50%]", "train+test", "test + train",
         "train[:10%]+test[-5:]", "test+train[25%:75%]", "train[:1]+train[-1:]", "train[50%:10%]"]


def test_split_counts_and_rows_equal_tfds_for_many_sizes():
    """Every form against TFDS's own reading of the split (SplitDict -> file instructions, a separate
    code path of TFDS from the ReadInstruction.to_absolute that vhjax calls), for many sizes."""
    import tensorflow_datasets as tfds

    checked = 0
    for n in list(range(1, 230)) + [401, 803, 997, 1000, 1437, 4000]:
        sizes = {"train": n, "test": 1 + (7 * n) % 211}
        splits = tfds_split_dict({name: [size] for name, size in sizes.items()})
        for spec in SPECS:
            try:
                absolute = tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits)
            except ValueError:  # TFDS refuses it (a bound beyond the split): so must vhjax
                with pytest.raises(ValueError, match="does not fit its base splits"):
                    parse_split(spec).resolve(sizes)
                continue
            # start after stop: TFDS's code paths disagree (file instructions then read a wrong or negative
            # count, e.g. 'train[2:-2]' of 3 -> 1 example); vhjax, as Python slicing, selects none and raises
            spans = [(a.from_ or 0, sizes[a.splitname] if a.to is None else a.to) for a in absolute]
            tfds_rows = [(i.filename.split("-")[1].split(".")[0], i.skip, i.skip + i.take)
                         for i in splits[spec].file_instructions]
            if any(lo > hi for lo, hi in spans) or not tfds_rows:
                assert all(lo >= hi for lo, hi in spans), (n, spec)
                with pytest.raises(ValueError, match="selects no examples"):
                    parse_split(spec).resolve(sizes)
                continue
            ours = [(r.base, r.start, r.stop) for r in parse_split(spec).resolve(sizes) if len(r)]
            assert ours == tfds_rows, (n, spec)
            checked += 1
    assert checked > 5000


def test_shard_slices_use_tfds_shard_lengths():
    splits = tfds_split_dict({"train": [4, 6, 5]})
    assert parse_split("train[1shard]").resolve(splits) == (Rows("train", 4, 10),)
    assert parse_split("train[1shard:]").resolve(splits) == (Rows("train", 4, 15),)
    assert parse_split("train[0shard]").resolve({"train": 9}) == (Rows("train", 0, 9),)  # built-ins: one shard


def test_plus_and_all_concatenate_in_order():
    train, test = load("digits", "train"), load("digits", "test")
    both = load("digits", "train+test")
    assert both.split == "train+test" and len(both) == 1797
    np.testing.assert_array_equal(both.x, np.concatenate([train.x, test.x]))
    np.testing.assert_array_equal(load("digits", "all").y, both.y)
    mixed = load("digits", "test[-5:]+train[:1%]")
    np.testing.assert_array_equal(mixed.y, np.concatenate([test.y[-5:], train.y[:14]]))


@pytest.mark.parametrize("bad", ["", "train[", "train[1:2:3]", "train[a:]", "train[:150%]", "tr ain",
                                 "train[:90%", "train[1.5:]", "train[5]", "all[:10%]", "train++test", None])
def test_bad_split_strings_name_value_and_forms(bad):
    with pytest.raises(ValueError, match="allowed") as error:
        parse_split(bad)
    assert repr(bad) in str(error.value)


def test_bad_split_error_lists_allowed_forms():
    with pytest.raises(ValueError, match=r"'train\[1:2:3\]'.*'train\[:90%\]'"):
        load("digits", "train[1:2:3]")


@pytest.mark.parametrize("split,match", [
    ("validation", "available splits: test, train"),
    ("train[:5000]", r"does not fit its base splits \(train: 1437, test: 360\).*incompatible with 1437"),
    ("train+validation", "base split 'validation' is unknown; available splits: test, train"),
    ("train[50%:10%]", "selects no examples"),
])
def test_split_not_in_dataset(split, match):
    with pytest.raises(ValueError, match=match):
        load("digits", split)


# -- digits ------------------------------------------------------------------------------------

def test_digits_shapes_range_and_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load("digits", "train"), load("digits", "test")
    assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)
    assert train.feature_shape == (8, 8, 1) and train.num_classes == 10
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert train.x.min() == 0.0 and train.x.max() == 1.0 and test.x.max() <= 1.0
    everything = load_digits()
    assert np.bincount(np.concatenate([train.y, test.y])).tolist() == np.bincount(everything.target).tolist()
    assert np.all(np.abs(np.bincount(test.y, minlength=10) - 0.2 * np.bincount(everything.target)) <= 1)
    rows = lambda x, y: sorted(map(tuple, np.column_stack([x.reshape(len(x), -1), y])))
    assert rows(np.concatenate([train.x, test.x]) * 16, np.concatenate([train.y, test.y])) == rows(
        everything.images.astype(np.float32), everything.target)
    np.testing.assert_array_equal(load("digits", "train").y, train.y)  # deterministic


def test_digits_split_is_made_once_and_read_back_from_the_cache(tmp_path, monkeypatch):
    made = builtin.split_digits()
    calls = []
    monkeypatch.setattr(builtin, "split_digits", lambda: calls.append(1) or made)
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path))
    first = load("digits", "train")
    assert calls == [1] and builtin.digits_cache_path(tmp_path).exists()
    assert "sklearn" in builtin.digits_cache_path(tmp_path).name  # a new scikit-learn splits anew

    def no_split():
        raise AssertionError("the digits were split again instead of read from the cache")

    monkeypatch.setattr(builtin, "split_digits", no_split)
    again, test = load("digits", "train"), load("digits", "test")
    for got, want in ((again.x, made["x_train"]), (again.y, made["y_train"]), (test.x, made["x_test"]),
                      (test.y, made["y_test"]), (first.x, made["x_train"])):
        np.testing.assert_array_equal(got, want)
    builtin.digits_cache_path(tmp_path).write_bytes(b"half a file")  # a damaged cache is made again
    monkeypatch.setattr(builtin, "split_digits", lambda: calls.append(1) or made)
    assert len(load("digits", "test")) == 360 and calls == [1, 1]


# -- Dataset and names -------------------------------------------------------------------------

def test_dataset_validates_fields():
    x = np.zeros((4, 3))
    assert Dataset(x, np.arange(4), 4, "d", "train").x.dtype == np.float32
    with pytest.raises(ValueError, match=r"labels span \[0, 3\].*num_classes=3"):
        Dataset(x, np.arange(4), 3, "d", "train")
    with pytest.raises(ValueError, match="same N"):
        Dataset(x, np.arange(3), 4, "d", "train")
    with pytest.raises(TypeError, match="'y' has dtype float"):
        Dataset(x, np.zeros(4), 4, "d", "train")


def test_unknown_name_lists_builtins_and_how_to_register():
    with pytest.raises(ValueError, match="'no_such_dataset'.*digits, mnist1d, mnist1d_shuffled") as error:
        load("no_such_dataset", "train")
    assert "register_dataset('no_such_dataset', loader)" in str(error.value)
    assert "from_arrays(x, y)" in str(error.value)


@pytest.fixture
def scratch_registry(monkeypatch):
    """DATASETS as a copy, so registrations in a test do not leak."""
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))


def test_register_dataset_same_loader_twice_is_fine_a_different_one_needs_overwrite(scratch_registry):
    rng = np.random.default_rng(0)
    arrays = {"train": from_arrays(rng.normal(size=(10, 3)), np.arange(10) % 2)}

    def toy(data_dir=None):
        return arrays

    register_dataset("toy", toy)
    register_dataset("toy", toy)  # e.g. a module imported twice
    assert len(load("toy", "train[:30%]")) == 3

    def toy(data_dir=None):  # noqa: F811  the same definition run again (a notebook cell)
        return {"train": arrays["train"].rows(0, 4, "train")}

    register_dataset("toy", toy)
    assert len(load("toy", "train")) == 4

    def other(data_dir=None):
        return arrays

    with pytest.raises(ValueError, match="'toy' is already registered.*overwrite=True"):
        register_dataset("toy", other)
    register_dataset("toy", other, overwrite=True)
    assert len(load("toy", "train")) == 10
    with pytest.raises(ValueError, match="'digits' is already registered"):
        register_dataset("digits")(other)
    with pytest.raises(ValueError, match="not starting with 'tfds:'"):
        register_dataset("tfds:x", other)
    register_dataset("broken", lambda data_dir: [1, 2])
    with pytest.raises(TypeError, match="'broken' loader returned list"):
        load("broken", "train")


def test_from_arrays_and_in_memory_sources():
    x, y = np.arange(20.0).reshape(10, 2), np.array([0, 1, 2, 1, 0, 2, 1, 0, 2, 1])
    data = from_arrays(x, y, name="mine")
    assert (data.name, data.split, data.num_classes, data.x.dtype, data.y.dtype) == (
        "mine", "train", 3, np.float32, np.int32)
    assert from_arrays(x, y, num_classes=5).num_classes == 5
    assert from_arrays(x, y.astype(float)).y.dtype == np.int32  # whole-number float labels are accepted
    with pytest.raises(TypeError, match="from_arrays 'y' has dtype float64"):
        from_arrays(x, y + 0.5)
    with pytest.raises(ValueError, match=r"labels span \[0, 2\].*num_classes=2"):
        from_arrays(x, y, num_classes=2)
    np.testing.assert_array_equal(load(data, "train[-30%:]").x, x[7:])
    np.testing.assert_array_equal(load((x, y), "train[:2]").y, y[:2])
    splits = {"train": (x[:6], y[:6]), "test": from_arrays(x[6:], y[6:] % 2)}
    both = load(splits, "train+test")
    np.testing.assert_array_equal(both.x, x)
    assert both.num_classes == 3 and load(splits, "test").num_classes == 3  # one class count for every split
    with pytest.raises(ValueError, match="base split 'validation' is unknown; available splits: test, train"):
        load(splits, "validation")
    with pytest.raises(ValueError, match="an \\(x, y\\) pair"):
        load((x, y, y), "train")


# -- TFDS --------------------------------------------------------------------------------------

def test_tfds_round_trip(tmp_path, no_network):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=30)
    folder = save_as_tfds("tiny_arrays", {"train": (x, y), "test": (x[:6], y[:6])}, tmp_path, num_classes=4)
    assert (folder / "dataset_info.json").is_file() and any(folder.glob("*.array_record-*"))
    train = load("tfds:tiny_arrays", "train", data_dir=str(tmp_path))
    np.testing.assert_array_equal(train.x, x)
    np.testing.assert_array_equal(train.y, y)
    assert (train.num_classes, train.name, train.feature_shape) == (4, "tiny_arrays", (5, 2))
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    part = load("tiny_arrays", "train[10:20]", data_dir=str(tmp_path))  # found without the prefix too
    np.testing.assert_array_equal(part.x, x[10:20])
    head, tail = load("tfds:tiny_arrays", "train[:90%]", data_dir=str(tmp_path)), load(
        "tfds:tiny_arrays", "train[90%:]", data_dir=str(tmp_path))
    np.testing.assert_array_equal(np.concatenate([head.y, tail.y]), y)
    np.testing.assert_array_equal(load("tfds:tiny_arrays", "test", data_dir=str(tmp_path)).x, x[:6])
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(folder))
    for split in ("train[:90%]+test[-50%:]", "test+train[-10%:]", "all", "train[1.5%:-33%]"):
        loaded = load("tfds:tiny_arrays", split, data_dir=str(tmp_path))
        source = builder.as_data_source(split=split)  # TFDS reading the same split string
        np.testing.assert_array_equal(loaded.x, np.stack([source[i]["x"] for i in range(len(source))]))
    for versioned in ("tfds:tiny_arrays:1.0.0", "tiny_arrays:1.0.0", "tfds:tiny_arrays/1.0.0"):
        np.testing.assert_array_equal(load(versioned, "train[:3]", data_dir=str(tmp_path)).y, y[:3])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load("tfds:tiny_arrays:2.0.0", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'NAME\\[/CONFIG\\]:MAJOR.MINOR.PATCH'"):
        load("tfds:tiny_arrays:latest", "train", data_dir=str(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_as_tfds("tiny_arrays", {"train": (x, y)}, tmp_path, num_classes=4)
    save_as_tfds("tiny_arrays", {"train": (x[:3], y[:3])}, tmp_path, num_classes=4, overwrite=True)
    assert len(load("tfds:tiny_arrays", "train", data_dir=str(tmp_path))) == 3


def test_tfds_image_and_label_features_scaled(tmp_path, no_network):
    """A dataset with tfds's usual 'image' (PNG) / 'label' features, named like a registered TFDS dataset."""
    import PIL.Image
    import tensorflow_datasets as tfds

    from vhjax.data.tfds_source import array_record_builder_class

    pixels = np.random.default_rng(1).integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8)

    class ImageBuilder(array_record_builder_class(), skip_registration=True):
        def _info(self):
            features = tfds.features.FeaturesDict({
                "id": tfds.features.Tensor(shape=(), dtype=np.int64),
                "image": tfds.features.Image(shape=(4, 4, 1)),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            })
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

        def _generate_examples(self, data):
            for index in range(len(pixels)):  # PIL images: encoding numpy images would need TensorFlow
                yield index, {"id": index, "image": PIL.Image.fromarray(pixels[index, ..., 0]), "label": index % 3}

    datasets = {"train": Dataset(np.zeros((6, 1)), np.zeros(6, int), 3, "mnist", "train")}
    ImageBuilder(name="mnist", version="3.0.1", datasets=datasets, data_dir=str(tmp_path)).download_and_prepare()
    loaded = load("tfds:mnist", "train", data_dir=str(tmp_path))
    np.testing.assert_allclose(loaded.x, pixels / 255.0, rtol=1e-6)
    assert loaded.y.tolist() == [0, 1, 2, 0, 1, 2] and loaded.num_classes == 3


def test_missing_tfds_dataset_fails_fast_with_how_to(tmp_path, no_network):
    started = time.monotonic()
    for name in ("tfds:mnist", "tfds:not_there"):
        with pytest.raises(FileNotFoundError, match=r"never downloads.*save_as_tfds.*tfds build") as error:
            load(name, "train", data_dir=str(tmp_path))
        assert str(tmp_path) in str(error.value)
    assert time.monotonic() - started < 2.0


def test_save_as_tfds_validates_inputs(tmp_path):
    x, y = np.zeros((4, 2), np.float32), np.arange(4)
    with pytest.raises(ValueError, match="labels span"):
        save_as_tfds("ok_name", {"train": (x, y)}, tmp_path, num_classes=2)
    with pytest.raises(ValueError, match="'Bad-Name'"):
        save_as_tfds("Bad-Name", {"train": (x, y)}, tmp_path, num_classes=4)
    with pytest.raises(ValueError, match="different example shapes"):
        save_as_tfds("ok_name", {"train": (x, y), "test": (np.zeros((4, 3)), y)}, tmp_path, num_classes=4)
    assert not list(tmp_path.iterdir())
