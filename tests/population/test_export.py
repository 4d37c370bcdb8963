"""Exporting a population's best member as plain Flax variables, loaded back with plain orbax."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vhjax.config import TrainConfig
from vhjax.population import export_member, fit_population
from vhjax.train import build_task

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=30, eval_every=10, seed=0, keep_best=True)
MEMBERS = [{"learning_rate": 1e-4}, {"learning_rate": 3e-3}, {"learning_rate": 1e-2, "batch_size": 16}]


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("population")
    return fit_population(CONFIG, MEMBERS, workdir, verbose=False), workdir


def accuracy(model, variables, task) -> float:
    logits = model.apply(variables, jnp.asarray(task.eval.x))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == task.eval.y))


def test_best_member_round_trips_through_plain_orbax(population, tmp_path):
    result, workdir = population
    best = result.best()
    task = build_task(CONFIG)
    expected = result.states[best["bucket"]].members.params
    expected = {"params": {k: {n: np.asarray(v[best["position"]]) for n, v in layer.items()}
                           for k, layer in expected.items()}}
    for source in (result, workdir):
        path = export_member(source, tmp_path / f"best_{type(source).__name__}")
        restored = ocp.StandardCheckpointer().restore(path)
        assert set(restored) == {"params"}
        np.testing.assert_array_equal(task.model.apply(restored, jnp.asarray(task.eval.x)),
                                      task.model.apply(expected, jnp.asarray(task.eval.x)))
        assert accuracy(task.model, restored, task) == pytest.approx(best["eval"]["accuracy"], abs=1e-6)
        record = json.loads((path / "vhjax_member.json").read_text())
        assert record["member"] == best["member"] and record["rank"] == 0


def test_by_rank_and_by_index(population, tmp_path):
    result, workdir = population
    ranked = sorted(result.members, key=lambda m: -m["eval"]["accuracy"])
    path = export_member(workdir, tmp_path / "last", rank=len(MEMBERS) - 1)
    assert json.loads((path / "vhjax_member.json").read_text())["member"] == ranked[-1]["member"]
    path = export_member(result, tmp_path / "two", index=2)
    restored = ocp.StandardCheckpointer().restore(path)
    task = build_task(CONFIG)
    assert accuracy(task.model, restored, task) == pytest.approx(result.members[2]["eval"]["accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="rank has value 3"):
        export_member(result, tmp_path / "none", rank=3)
    with pytest.raises(FileExistsError):
        export_member(result, tmp_path / "two")


def test_cli_export(population, tmp_path, capsys):
    from vhjax import cli

    result, workdir = population
    assert cli.main(["export", str(workdir), str(tmp_path / "best")]) == 0
    assert "exported to" in capsys.readouterr().out
    assert json.loads((tmp_path / "best" / "vhjax_member.json").read_text())["member"] == result.best()["member"]
    assert cli.main(["export", str(workdir), str(tmp_path / "best")]) == 2  # exists: a clear error
    assert "exists" in capsys.readouterr().err
