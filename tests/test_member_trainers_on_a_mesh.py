"""The trainers built on `fit_members` (multi-task, multimodal, meta-learning, anomaly autoencoders,
forecasters) shard their members over the local devices (`mesh='auto'`, as `fit_population`), with
populations that do not divide over the devices padded, and train there what one device trains."""

from __future__ import annotations

import json
import textwrap

import numpy as np

from tests.forking import run_script
from tests.xla_flags import xla_flags

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from tests.datasets import tiny_classification
    from vhjax.anomaly import fit_autoencoders, reconstruction_errors
    from vhjax.forecast import fit_forecasters, split_series
    from vhjax.models import Autoencoder, get_model
    from vhjax.multimodal import Encoder, FusionNet, fit_multimodal
    from vhjax.multitask import MultiTaskNet, Trunk, fit_multitask
    from vhjax.transfer import meta

    (x, y), (x_test, y_test) = tiny_classification(rows=200, features=8, classes=4).values()
    labels = lambda y: np.stack([y, y % 2], axis=1).astype(np.int32)
    tasks = tuple(a.reshape(20, 2, *a.shape[1:]) for a in meta.sinusoid_tasks(jax.random.key(1), 40, 5, 5))
    series = split_series(np.sin(2 * np.pi * np.arange(300) / 20.0), lookback=8, horizon=2)

    def devices(population):
        return len(population.members.step.sharding.device_set)

    def run(mesh):
        out = {}
        result = fit_multitask(MultiTaskNet(Trunk((16,)), (4, 2)), (x, labels(y)), (x_test, labels(y_test)),
                               [[1.0, 0.5], [0.5, 1.0], [1.0, 0.0]], steps=20, learning_rate=3e-3, mesh=mesh)
        out["multitask"] = (result.accuracy.ravel().tolist(), devices(result.population))
        result = fit_multimodal(FusionNet((Encoder((8,)), Encoder((8,))), 4, "features"), ((x, x[:, :4]), y),
                                ((x_test, x_test[:, :4]), y_test), [0.0, 0.5, 0.9], steps=20, mesh=mesh)
        out["multimodal"] = (result.accuracy.tolist(), devices(result.population))
        result = meta.meta_train(get_model("mlp", widths=(16,), num_classes=1), tasks, method="fomaml",
                                 inner_lr=0.01, meta_lr=3e-3, size=3, mesh=mesh)
        out["meta"] = (result.meta_loss[-1].tolist(), devices(result.population))
        detectors = fit_autoencoders(Autoencoder(data_shape=(8,), latent_dim=2, widths=(16,)), x,
                                     learning_rate=[3e-3, 1e-3, 1e-2], steps=20, batch_size=32, mesh=mesh)
        out["anomaly"] = (reconstruction_errors(detectors, x_test).mean(axis=1).tolist(),
                          len(jax.tree.leaves(detectors.params)[0].sharding.device_set))
        result = fit_forecasters(series, "mlp", learning_rates=[1e-2, 3e-3, 1e-3], hidden_size=8, steps=20,
                                 mesh=mesh)
        out["forecast"] = (result.test["rmse"].tolist(), devices(result.population))
        return out

    print("RESULT", json.dumps({"devices": jax.device_count(), "sharded": run("auto"), "single": run(None)}))
""")


def test_member_trainers_train_on_every_local_device_as_on_one(tmp_path):
    code, output = run_script(SCRIPT, [], {"XLA_FLAGS": xla_flags(devices=2)}, tmp_path / "output")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert code == 0 and lines, output[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["devices"] == 2
    assert sorted(result["sharded"]) == sorted(result["single"]) == [
        "anomaly", "forecast", "meta", "multimodal", "multitask"]
    for name, (values, spread) in result["sharded"].items():
        single_values, single_spread = result["single"][name]
        assert (spread, single_spread) == (2, 1), (name, spread, single_spread)  # 3 members: one padding member
        assert np.all(np.isfinite(values)), name
        np.testing.assert_allclose(values, single_values, rtol=2e-4, atol=1e-5, err_msg=name)
