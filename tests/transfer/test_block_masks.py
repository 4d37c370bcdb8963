"""Block masks: one bit per group of layers (a ResNet stage, a transformer block), both policies in one bucket."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.models import MLP, ResNet, TransformerClassifier
from vhjax.transfer.masks import MaskObjective, TransferMask, block_of, fit_masked, mask_units

KWARGS = {"stage_sizes": (1, 1), "widths": (4, 8), "stem_features": 4, "num_classes": 3}
X = np.random.default_rng(0).normal(size=(48, 8, 8, 1)).astype(np.float32)
Y = (np.arange(48) % 3).astype(np.int32)
SOURCE = jax.tree.map(np.asarray, jax.jit(ResNet(**KWARGS).init)(jax.random.key(5), X[:2]))  # one program, not op by op
CONFIG = TrainConfig(dataset={"train": (X[:32], Y[:32]), "test": (X[32:], Y[32:])}, model="resnet",
                     model_kwargs=KWARGS, batch_size=16, steps=4, eval_every=4, learning_rate=1e-2, seed=2)
BLOCKS = ["stem", "stage0", "stage1", "head"]  # input to output
NONE = (0, 0, 0, 0)
MASKS = [TransferMask((1, 1, 0, 0), NONE, "stem and stage0 copied, frozen"), TransferMask(NONE, NONE, "fresh"),
         TransferMask((1, 1, 1, 1), (0, 0, 1, 1), "all copied, stage1 and head train"), "1111", "0000"]


def shapes(model, x):
    return jax.eval_shape(model.init, jax.random.key(0), x)


def params_of(result, index):
    record = result.members[index]
    return jax.tree.map(lambda leaf: np.asarray(leaf[record["position"]]),
                        result.states[record["bucket"]].members.params)


def equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def layers_of(block: str, params) -> list[str]:
    return [layer for layer in params if block_of(f"{layer}/x", list(params)) == block]


def test_blocks_of_the_zoo_models():
    assert mask_units(SOURCE, "block") == BLOCKS  # stages; 'stem_norm' joins 'stem'
    deeper = shapes(ResNet(**{**KWARGS, "stage_sizes": (2, 3)}), X[:2])["params"]
    assert layers_of("stage0", deeper) == ["stage0_block0", "stage0_block1"]
    assert layers_of("stage1", deeper) == ["stage1_block0", "stage1_block1", "stage1_block2"]
    assert layers_of("stem", deeper) == ["stem", "stem_norm"]
    transformer = shapes(TransformerClassifier(num_classes=3), jnp.zeros((2, 6), jnp.int32))
    assert mask_units(transformer, "block") == ["embed", "encoder/layer_0", "encoder/layer_1", "encoder", "head"]
    assert block_of("encoder/layer_1/attn/query/kernel") == "encoder/layer_1"
    assert block_of("encoder/ln_out/scale") == "encoder"
    assert block_of("block_0_conv/kernel") == "block_0"
    with pytest.raises(ValueError, match=r"granularity has value 'block'; allowed: 'layer' or 'tensor' for this "
                                         r"model: it has no blocks .*'hidden_0', 'hidden_1', 'head'"):
        mask_units(shapes(MLP(widths=(4, 4), num_classes=3), jnp.zeros((2, 5))), "block")


@pytest.fixture(scope="module")
def trained():
    return fit_masked(CONFIG, SOURCE, MASKS, policy="train", granularity="block")


def test_block_masks_copy_and_freeze_whole_blocks_in_one_bucket(trained):
    assert len(trained.states) == 1
    params = [params_of(trained, i) for i in range(len(MASKS))]
    source = SOURCE["params"]
    copied_frozen, fresh = params[0], params[1]
    for block, copied in zip(BLOCKS, (1, 1, 0, 0)):
        for layer in layers_of(block, source):
            assert equal(copied_frozen[layer], source[layer] if copied else fresh[layer]), (block, layer)
        kernels = lambda tree: {name: tree[name] for name in layers_of(block, source)
                                if "kernel" in str(jax.tree.structure(tree[name]))}
        assert not equal(kernels(fresh), kernels(source)), block  # a fresh init differs from the source
    partly = params[2]  # every block copied; stage1 and head fine-tuned, stage0 and stem frozen
    for block, trains in zip(BLOCKS, (0, 0, 1, 1)):
        for layer in layers_of(block, source):
            assert equal(partly[layer], source[layer]) != bool(trains), (block, layer)
    assert [m["mask"]["train"] for m in trained.members] == ["0000", "0000", "0011", "1111", "0000"]


def test_mask_objective_over_blocks():
    objective = MaskObjective(CONFIG, SOURCE, policy="copy", granularity="block")
    assert objective.units == BLOCKS and list(objective.space().names) == BLOCKS
    metrics = objective.run(["1111", "0000", "1000", "0100", "0011"])
    assert metrics["accuracy"].shape == (5,) and np.all(np.isfinite(metrics["accuracy"]))
    with pytest.raises(ValueError, match=r"masks\[0\] has value '111'; allowed: 4 bits"):
        objective.run(["111"])
