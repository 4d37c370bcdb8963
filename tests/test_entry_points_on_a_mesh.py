"""Ensembles and every transfer entry point shard their members over the local devices
(`mesh='auto'`, as `fit_population`), and train there what one device trains."""

from __future__ import annotations

import json
import textwrap

import numpy as np

from tests.forking import run_script
from tests.xla_flags import xla_flags

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from vhjax import TrainConfig
    from vhjax.ensemble.train import train_members
    from vhjax.models import get_model
    from vhjax.transfer import adapt, adda, anneal, distill, fit_from, fit_masked, pretrain
    from tests.datasets import tiny_classification

    data = tiny_classification(rows=320)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    config = TrainConfig(dataset=data, model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                         learning_rate=3e-3, batch_size=32, steps=20, eval_every=10, seed=0)
    model = get_model("mlp", widths=(16,), num_classes=10)
    source = {"params": jax.tree.map(np.asarray, model.init(jax.random.key(1), x[:2])["params"])}
    target = {"train": x + 0.5, "test": (x_test + 0.5, y_test)}

    def devices(population):  # devices holding the members of the first bucket
        return len(population.states[0].members.step.sharding.device_set)

    def losses(population):
        return [m["eval"]["loss"] for m in population.members]

    def run(mesh):
        out = {}
        result = fit_from(config, source, [{"seed": s} for s in range(3)], verbose=False, mesh=mesh)  # 3: padded
        out["fit_from"] = (losses(result), None)
        result = fit_masked(config, source, ["11", "01", "10", "00"], policy="train", mesh=mesh)
        out["fit_masked"] = (losses(result), devices(result))
        result = pretrain(config, [{"temperature": t, "seed": 0} for t in (0.1, 0.5, 1.0, 2.0)], verbose=False,
                          mesh=mesh)
        out["pretrain"] = ([row["eval_loss"] for row in result.rows], devices(result.population))
        result = adapt(config, [{}, {"mmd_weight": 1.0}, {"coral_weight": 1.0}, {"dann_weight": 1.0}], target=target,
                       verbose=False, mesh=mesh)
        out["adapt"] = (losses(result.population), devices(result.population))
        result = adda(config, [{"seed": 0}, {"seed": 1}], target=target, steps=10, verbose=False, mesh=mesh)
        out["adda"] = ([m["eval"]["loss"] for m in result.stage.members], devices(result.stage))
        result = anneal(config, source, chains=4, steps=10, temperature=0.01, mesh=mesh)
        out["anneal"] = (result.energy[:, -1].tolist(), devices(result.population))
        students = [{"temperature": 2.0, "soft_weight": w, "seed": 0} for w in (0.0, 0.3, 0.6, 0.9)]
        result = distill(config, source, students, teacher_model=config, verbose=False, mesh=mesh)
        out["distill"] = (losses(result.population), devices(result.population))
        trained = train_members(model, x, y, size=4, key=jax.random.key(2), steps=20, batch_size=32, mesh=mesh)
        out["ensemble"] = (trained.loss[-1].tolist(), devices(trained.result))
        return out

    from vhjax.parallel import resolve_mesh
    layout = {"pair": resolve_mesh("auto", 2).devices.size, "alone": resolve_mesh("auto", 1) is None}
    print("RESULT", json.dumps({"devices": jax.device_count(), "sharded": run("auto"), "single": run(None), **layout}))
""")


def test_ensembles_and_transfer_entry_points_train_on_every_local_device_as_on_one(tmp_path):
    code, output = run_script(SCRIPT, [], {"XLA_FLAGS": xla_flags(devices=2)}, tmp_path / "output")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert code == 0 and lines, output[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["devices"] == 2
    assert result["pair"] == 2 and result["alone"]  # 'auto': one member alone is not padded to one per device
    assert sorted(result["sharded"]) == sorted(result["single"]) == [
        "adapt", "adda", "anneal", "distill", "ensemble", "fit_from", "fit_masked", "pretrain"]
    for name, (values, spread) in result["sharded"].items():
        single_values, single_spread = result["single"][name]
        assert spread in (None, 2) and single_spread in (None, 1), (name, spread, single_spread)
        assert np.all(np.isfinite(values)), name
        np.testing.assert_allclose(values, single_values, rtol=2e-4, atol=1e-5, err_msg=name)
