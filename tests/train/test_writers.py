"""TensorBoard event files read back with TensorBoard's own reader (no TensorFlow), and the
progress output of the loop (lines with step counts and ETA when not a terminal, nothing when quiet)."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from vhjax.config import TrainConfig  # noqa: E402
from vhjax.population import fit, fit_population  # noqa: E402
from vhjax.population.pbt import fit_pbt  # noqa: E402
from vhjax.train import checkpoint  # noqa: E402

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     learning_rate=3e-3, batch_size=32, steps=20, eval_every=10, seed=0)


def load(path) -> EventAccumulator:
    accumulator = EventAccumulator(str(path))
    accumulator.Reload()
    return accumulator


def session_hparams(accumulator: EventAccumulator) -> dict:
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: (v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value")
                else v.bool_value) for k, v in info.hparams.items()}


def values(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_tensorflow_is_not_needed():
    assert "tensorflow" not in sys.modules


def test_population_writes_member_runs_and_hparams(tmp_path):
    members = [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}, {"learning_rate": 1e-2, "batch_size": 16}]
    result = fit_population(CONFIG, members, tmp_path, verbose=False)
    # members 0 and 1 share bucket 0; member 2 (another batch size) is bucket 1
    member_01 = load(tmp_path / "bucket_0" / "tensorboard" / "member_01")
    assert [step for step, _ in values(member_01, "eval/accuracy")] == [10, 20]
    assert values(member_01, "train/loss")[0][0] == 10
    assert values(member_01, "hparams/learning_rate")[0][1] == pytest.approx(3e-3)
    logged = result.curve(1, "eval", "accuracy")[1]
    assert [v for _, v in values(member_01, "eval/accuracy")] == pytest.approx(list(logged), rel=1e-6)
    hparams = session_hparams(member_01)
    assert hparams["learning_rate"] == pytest.approx(3e-3) and hparams["model"] == "mlp"
    member_02 = load(tmp_path / "bucket_1" / "tensorboard" / "member_02")
    assert session_hparams(member_02)["batch_size"] == 16
    root = load(tmp_path / "bucket_0" / "tensorboard")
    assert "train/member_steps_per_second" in root.Tags()["scalars"]


def test_fit_writes_one_run_and_a_resume_hides_the_events_past_the_checkpoint(tmp_path, monkeypatch):
    config = dataclasses.replace(CONFIG, steps=30)
    fit(config, tmp_path / "full", verbose=False)
    full = load(tmp_path / "full" / "tensorboard")
    assert [step for step, _ in values(full, "eval/accuracy")] == [10, 20, 30]
    assert session_hparams(full)["learning_rate"] == pytest.approx(3e-3)
    real_save = checkpoint.Checkpointer.save

    def die_at_20(self, step, state, record):
        if step == 20:  # killed after step 20 was logged, before its checkpoint
            raise KeyboardInterrupt
        real_save(self, step, state, record)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", die_at_20)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "cut", verbose=False)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    fit(config, tmp_path / "cut", verbose=False)  # resumes from step 10
    cut = load(tmp_path / "cut" / "tensorboard")
    assert [step for step, _ in values(cut, "eval/accuracy")] == [10, 20, 30]  # step 20 once
    assert [v for _, v in values(cut, "eval/accuracy")] == pytest.approx([v for _, v in values(full, "eval/accuracy")])


def test_pbt_logs_changing_hyperparameters(tmp_path):
    members = [{"learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    result = fit_pbt(dataclasses.replace(CONFIG, steps=30), members, {"learning_rate": (1e-4, 1e-1, True)},
                     interval=10, workdir=tmp_path, verbose=False, mesh=None)
    rates = [values(load(tmp_path / "tensorboard" / f"member_{i:02d}"), "hparams/learning_rate")
             for i in range(4)]
    assert all([step for step, _ in r] == [10, 20, 30] for r in rates)
    final = [r[-1][1] for r in rates]
    assert final == pytest.approx([m["hparams"]["learning_rate"] for m in result.members], rel=1e-6)


def test_progress_lines_when_not_a_terminal(capsys):
    fit(dataclasses.replace(CONFIG, steps=30), verbose=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "step" in line]
    assert [line.split(" | ")[0] for line in lines] == ["step 10/30", "step 20/30", "step 30/30"]
    assert all("eta " in line and "elapsed " in line for line in lines)
    assert lines[-1].endswith("eta 0s")
    # every line names the programs compiled since the loop started; none after the first chunk
    compiled = [re.search(r"\| compiled (\d+) \(\d+\.\d s", line) for line in lines]
    assert all(compiled) and len({m.group(1) for m in compiled}) == 1


def test_quiet_prints_nothing(capsys):
    fit(CONFIG, verbose=False)
    fit_population(CONFIG, [{}, {"learning_rate": 1e-2}], verbose=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_on_a_terminal(capsys):
    from vhjax.train.progress import Progress

    progress = Progress(30, 0, "bucket 1/1 | ", verbose=True, bar=True)
    progress.update(10, "step 10/30 | train loss 1.0")
    progress.close()
    captured = capsys.readouterr()
    assert "step 10/30 | train loss 1.0" in captured.out
    assert "10/30" in captured.err and ("step/s" in captured.err or "s/step" in captured.err)


def test_wandb_and_mlflow_writers_with_stand_in_modules(monkeypatch):
    import types

    from vhjax.train.writers import MLflowWriter, WandbWriter

    logged = []

    class Run:
        def log(self, values, step):
            logged.append(("wandb", step, values))

        def finish(self):
            logged.append(("wandb", "finish"))

    wandb = types.SimpleNamespace(init=lambda config, **kw: logged.append(("wandb", "config", config)) or Run())
    mlflow = types.SimpleNamespace(
        set_tracking_uri=lambda uri: None, set_experiment=lambda name: None,
        start_run=lambda run_name=None: logged.append(("mlflow", "start")),
        log_params=lambda params: logged.append(("mlflow", "params", params)),
        log_metrics=lambda values, step: logged.append(("mlflow", step, values)),
        end_run=lambda: logged.append(("mlflow", "end")))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    for writer in (WandbWriter(project="p", mode="offline"), MLflowWriter(experiment="e")):
        writer.start(2, [{"learning_rate": 0.1}, {"learning_rate": 0.2}])
        writer.write(10, "eval", {"accuracy": [0.5, 0.75], "alive": [True, True]})
        writer.write(10, "train", {"member_steps_per_second": 99.0})
        writer.close()
    wandb_rows = [row for row in logged if row[0] == "wandb"]
    assert wandb_rows[0][2]["member_01"] == {"learning_rate": 0.2}
    assert wandb_rows[1] == ("wandb", 10, {"member_00/eval/accuracy": 0.5, "member_01/eval/accuracy": 0.75})
    assert wandb_rows[2] == ("wandb", 10, {"train/member_steps_per_second": 99.0})
    mlflow_rows = [row for row in logged if row[0] == "mlflow"]
    assert mlflow_rows[1] == ("mlflow", "params", {"member_00.learning_rate": 0.1, "member_01.learning_rate": 0.2})
    assert mlflow_rows[2][2] == {"member_00/eval/accuracy": 0.5, "member_01/eval/accuracy": 0.75}


def test_missing_optional_writer_package_is_a_clear_error(monkeypatch):
    from vhjax.train.writers import WandbWriter

    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'vhjax\[wandb\]'"):
        WandbWriter()


def test_hparams_dashboard_backend_lists_members_hyperparameters_and_metrics(tmp_path):
    """TensorBoard's own HParams backend (as the dashboard calls it) finds the members' sessions."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    members = [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}, {"learning_rate": 1e-2, "batch_size": 16}]
    fit_population(CONFIG, members, tmp_path, verbose=False)
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(tmp_path), multiplexer=multiplexer,
                                                            data_provider=provider))
    request = context.RequestContext()
    sessions = backend.hparams_metadata(request, "")
    assert {run for run, tags in sessions.items() if "_hparams_/session_start_info" in tags} == {
        "bucket_0/tensorboard/member_00", "bucket_0/tensorboard/member_01", "bucket_1/tensorboard/member_02"}
    experiment = backend.experiment_from_metadata(request, "", True, sessions,
                                                  backend.hparams_from_data_provider(request, "", 100))
    assert {"learning_rate", "batch_size", "model"} <= {info.name for info in experiment.hparam_infos}
    assert {"eval/accuracy", "train/loss"} <= {info.name.tag for info in experiment.metric_infos}
