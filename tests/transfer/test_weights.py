"""Pretrained weights: loading a source, mapping it into a target by layer path, fine-tuning modes."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vhjax.config import TrainConfig
from vhjax.population import export_member, fit, fit_population
from vhjax.models import MLP, get_model
from vhjax.transfer import fit_from, gradual_unfreezing, layer_names, load_source, mode_config, transfer_params
from vhjax.transfer.weights import forward_layers


def digits_task(classes, per_class=None):
    """Digits of `classes` relabelled 0..k-1: train (the first 1200 images, at most `per_class` each),
    test (the rest)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    splits = {}
    for split, part in (("train", slice(0, 1200)), ("test", slice(1200, None))):
        xs, ys = x[part], y[part]
        keep = np.isin(ys, classes)
        xs, ys = xs[keep], np.searchsorted(classes, ys[keep]).astype(np.int32)
        if split == "train" and per_class is not None:
            chosen = np.concatenate([np.flatnonzero(ys == c)[:per_class] for c in range(len(classes))])
            xs, ys = xs[np.sort(chosen)], ys[np.sort(chosen)]
        splits[split] = (xs, ys)
    return splits


LOW, HIGH = digits_task([0, 1, 2, 3, 4]), digits_task([5, 6, 7, 8, 9], per_class=5)
SOURCE_CONFIG = TrainConfig(dataset=LOW, model="mlp", model_kwargs={"widths": (32, 32), "num_classes": 5},
                            batch_size=32, steps=150, eval_every=50, learning_rate=1e-2, seed=0)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def member_params(result, index):
    member = result.members[index]
    params = result.states[member["bucket"]].members.params
    return jax.tree.map(lambda leaf: np.asarray(leaf[member["position"]]), params)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain")
    result = fit(SOURCE_CONFIG, workdir, verbose=False)
    return result, workdir


def test_load_source_from_fit_workdir_result_and_plain_tree(pretrained):
    result, workdir = pretrained
    from_dir, from_result = load_source(workdir), load_source(result)
    assert leaves_equal(from_dir["params"], result.state.params)
    assert leaves_equal(from_result["params"], result.state.params)
    assert leaves_equal(load_source(result.state.params)["params"], result.state.params)  # a bare params tree
    assert layer_names(from_dir) == ["hidden_0", "hidden_1", "head"]


def test_load_source_from_population_member_by_index_and_rank(tmp_path):
    config = dataclasses.replace(SOURCE_CONFIG, steps=20, eval_every=10)
    members = [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}]
    result = fit_population(config, members, tmp_path / "pop", verbose=False)
    assert leaves_equal(load_source(tmp_path / "pop", index=1)["params"], member_params(result, 1))
    best = result.best()["member"]
    assert leaves_equal(load_source(tmp_path / "pop", rank=0)["params"], member_params(result, best))
    assert leaves_equal(load_source(result, index=0)["params"], member_params(result, 0))
    exported = export_member(tmp_path / "pop", tmp_path / "exported", index=1)  # plain orbax, loaded back
    assert leaves_equal(load_source(exported)["params"], member_params(result, 1))
    with pytest.raises(ValueError, match="rank and index"):
        load_source(tmp_path / "pop", rank=0, index=1)


def test_fit_from_writes_a_workdir_whose_members_load_back(pretrained, tmp_path):
    source = load_source(pretrained[1])
    config = dataclasses.replace(SOURCE_CONFIG, dataset=HIGH, steps=4, eval_every=2, batch_size=8)
    result = fit_from(config, source, [{"seed": 0}, {"seed": 1, "learning_rate": 1e-3}], tmp_path / "run",
                      verbose=False)
    assert len(result.states) == 1  # seed and learning rate are per-member arrays: one program
    assert leaves_equal(load_source(tmp_path / "run", index=1)["params"], member_params(result, 1))
    assert (tmp_path / "run" / "result.json").is_file()


def test_copied_layers_equal_the_source_and_the_head_is_fresh_when_classes_differ(pretrained):
    source = load_source(pretrained[1])
    target_model = MLP(widths=(32, 32), num_classes=10)
    target = target_model.init(jax.random.key(7), np.zeros((2, 64), np.float32))
    merged, report = transfer_params(source, target)
    for layer in ("hidden_0", "hidden_1"):
        assert leaves_equal(merged["params"][layer], source["params"][layer])
    assert leaves_equal(merged["params"]["head"], target["params"]["head"])  # fresh, 10 classes
    assert merged["params"]["head"]["kernel"].shape == (32, 10)
    assert report.fresh == ["head/bias", "head/kernel"] or sorted(report.fresh) == ["head/bias", "head/kernel"]
    assert len(report.copied) == 4
    with pytest.raises(ValueError, match=r"head/kernel: source \(32, 5\), target \(32, 10\)"):
        transfer_params(source, target, new_head=False)


def test_mis_shaped_layers_raise_naming_path_and_both_shapes(pretrained):
    source = load_source(pretrained[1])
    wider = MLP(widths=(48, 32), num_classes=5)
    target = wider.init(jax.random.key(0), np.zeros((2, 64), np.float32))["params"]
    with pytest.raises(ValueError) as error:
        transfer_params(source, target)
    message = str(error.value)
    assert "hidden_0/kernel: source (64, 32), target (64, 48)" in message
    assert "hidden_1/kernel: source (32, 32), target (48, 32)" in message
    merged, report = transfer_params(source, target, skip=["hidden_0", "hidden_1/kernel"])  # skipped: kept fresh
    assert leaves_equal(merged["hidden_0"], target["hidden_0"])
    assert leaves_equal(merged["hidden_1"]["bias"], source["params"]["hidden_1"]["bias"])
    deeper = MLP(widths=(32, 32, 32), num_classes=5)
    with pytest.raises(ValueError, match=r"hidden_2/kernel: source missing, target \(32, 32\)"):
        transfer_params(source, deeper.init(jax.random.key(0), np.zeros((2, 64), np.float32)))
    # a source that does not fit raises in fit_from before anything trains
    with pytest.raises(ValueError, match="hidden_0/kernel"):
        fit_from(dataclasses.replace(SOURCE_CONFIG, model_kwargs={"widths": (48, 32), "num_classes": 5}), source,
                 verbose=False)


def test_mode_configs():
    params = {"hidden_0": {}, "hidden_1": {}, "hidden_2": {}, "hidden_10": {}, "head": {}}
    assert layer_names(params) == ["hidden_0", "hidden_1", "hidden_2", "hidden_10", "head"]
    assert mode_config("direct", params) == {"freeze": ("*",)}
    assert mode_config("full", params) == {}
    assert mode_config("feature_extractor", params) == {
        "freeze": ("hidden_0/*", "hidden_1/*", "hidden_2/*", "hidden_10/*")}
    assert mode_config("fine_tune_last", params, last=2) == {"freeze": ("hidden_0/*", "hidden_1/*", "hidden_2/*")}
    assert mode_config("freeze", params, frozen=["hidden_1", "head/bias"]) == {"freeze": ("hidden_1/*", "head/bias")}
    assert mode_config("layerwise_lr", params, decay=0.5)["lr_multipliers"] == {
        "hidden_0/*": 0.0625, "hidden_1/*": 0.125, "hidden_2/*": 0.25, "hidden_10/*": 0.5}
    with pytest.raises(ValueError, match="last has value 6"):
        mode_config("fine_tune_last", params, last=6)
    with pytest.raises(ValueError, match="mode"):
        mode_config("gradual", params)


ZOO = {"mlp": np.zeros((2, 5), np.float32), "cnn2d": np.zeros((2, 8, 8, 1), np.float32),
       "cnn1d": np.zeros((2, 16, 1), np.float32), "resnet": np.zeros((2, 8, 8, 1), np.float32),
       "resnet18": np.zeros((2, 8, 8, 1), np.float32), "mobilenet": np.zeros((2, 8, 8, 1), np.float32),
       "transformer": np.zeros((2, 6), np.int32)}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_layer_names_are_the_forward_order_of_the_zoo_models(name):
    model = get_model(name, num_classes=3)
    variables = jax.eval_shape(model.init, jax.random.key(0), ZOO[name])
    assert layer_names(variables) == forward_layers(model, ZOO[name])  # the order the forward pass calls them


def test_fine_tune_last_of_a_resnet_trains_its_last_stage_and_head_and_never_the_stem():
    variables = jax.eval_shape(get_model("resnet", stage_sizes=(1, 1), widths=(4, 8), stem_features=4,
                                         num_classes=3).init, jax.random.key(0), ZOO["resnet"])
    assert layer_names(variables) == ["stem", "stem_norm", "stage0_block0", "stage1_block0", "head"]
    assert mode_config("fine_tune_last", variables, last=2) == {
        "freeze": ("stem/*", "stem_norm/*", "stage0_block0/*")}
    assert mode_config("feature_extractor", variables)["freeze"][:2] == ("stem/*", "stem_norm/*")


def test_forward_layers_orders_a_model_whose_names_do_not():
    model, x = get_model("fcn1d", num_classes=3), np.zeros((2, 16, 1), np.float32)
    forward = forward_layers(model, x)
    assert forward == ["conv_0", "norm_0", "conv_1", "norm_1", "conv_2", "norm_2", "head"]
    assert layer_names(jax.eval_shape(model.init, jax.random.key(0), x)) != forward  # by name: the convs first
    assert mode_config("fine_tune_last", {name: {} for name in forward}, last=3, layers=forward) == {
        "freeze": ("conv_0/*", "norm_0/*", "conv_1/*", "norm_1/*")}


def test_feature_extractor_keeps_the_body_bit_identical_and_trains_the_head(pretrained):
    source = load_source(pretrained[1])
    config = dataclasses.replace(SOURCE_CONFIG, dataset=HIGH, steps=20, eval_every=10, batch_size=16)
    members = [{**mode_config("direct", source), "seed": 3}, {**mode_config("feature_extractor", source), "seed": 3},
               {**mode_config("layerwise_lr", source), "seed": 3}]
    result = fit_from(config, source, members, skip=["head"], verbose=False)
    assert len(result.states) == 3  # static freeze/multiplier settings: one bucket (program) per mode
    direct, extractor, layerwise = (member_params(result, i) for i in range(3))
    for layer in ("hidden_0", "hidden_1"):
        assert leaves_equal(direct[layer], source["params"][layer])
        assert leaves_equal(extractor[layer], source["params"][layer])
        assert not leaves_equal(layerwise[layer], source["params"][layer])
    # the same seed gives the same fresh head; direct transfer never trains it, the extractor does
    assert not np.allclose(extractor["head"]["kernel"], direct["head"]["kernel"])


def test_fine_tuning_a_pretrained_source_beats_training_from_scratch():
    """Source: a 10-class digits model on images 0-599; target: digits 5-9 (5 classes, a new head) from 5
    images each of 600-1199, evaluated on 1200+. Same seeds, data order, steps and learning rate for both."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    source_data = {"train": (x[:600], y[:600]), "test": (x[1200:], y[1200:])}
    source_config = dataclasses.replace(SOURCE_CONFIG, dataset=source_data,
                                        model_kwargs={"widths": (32, 32), "num_classes": 10})
    source = load_source(fit(source_config, verbose=False))
    xs, ys = x[600:1200], y[600:1200]
    xs, ys = xs[ys >= 5], ys[ys >= 5] - 5
    few = np.sort(np.concatenate([np.flatnonzero(ys == c)[:5] for c in range(5)]))
    config = dataclasses.replace(SOURCE_CONFIG, dataset={"train": (xs[few], ys[few]), "test": HIGH["test"]},
                                 steps=10, eval_every=10, batch_size=16, learning_rate=1e-2)
    members = [{"seed": s} for s in (1, 2)]
    transferred = fit_from(config, source, members, verbose=False)  # the 10-class head is replaced (5 classes)
    scratch = fit_population(config, members, verbose=False)
    for index in range(2):
        assert transferred.members[index]["eval"]["loss"] < scratch.members[index]["eval"]["loss"] - 0.1


def test_gradual_unfreezing_unfreezes_one_more_layer_per_stage(pretrained):
    source = load_source(pretrained[1])
    config = dataclasses.replace(SOURCE_CONFIG, dataset=HIGH, steps=99, eval_every=3, batch_size=8)
    stages = gradual_unfreezing(config, source, 3, member={"seed": 5}, skip=["head"], verbose=False)
    assert len(stages) == 3  # hidden_0, hidden_1, head: the head first, then one more layer each stage
    params = [member_params(result, 0) for result in stages]
    assert leaves_equal(params[0]["hidden_0"], source["params"]["hidden_0"])
    assert leaves_equal(params[0]["hidden_1"], source["params"]["hidden_1"])
    assert not leaves_equal(params[0]["head"], params[1]["head"])
    assert leaves_equal(params[1]["hidden_0"], source["params"]["hidden_0"])
    assert not leaves_equal(params[1]["hidden_1"], params[0]["hidden_1"])
    assert not leaves_equal(params[2]["hidden_0"], params[1]["hidden_0"])
    assert all(int(result.states[0].members.step[0]) == 3 for result in stages)
    with pytest.raises(ValueError, match="freeze"):
        gradual_unfreezing(config, source, 3, member={"freeze": ("head/*",)})
