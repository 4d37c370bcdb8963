"""Standard configs (experiments/configs/*.py, ml_collections ConfigDicts in TrainConfig sections),
loaded and overridden by the CLI (`--config PATH --config.section.field=value`, `section.field=value`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ml_collections
import pytest

from vhjax import cli
from vhjax.config import TrainConfig, apply_overrides, load_config_file, validate

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.py"))
DIGITS = next(path for path in CONFIGS if path.stem == "digits_mlp")


def module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_standard_config_loads_validates_and_documents_itself(path):
    loaded = module(path)
    assert isinstance(loaded.get_config(), ml_collections.ConfigDict)
    for heading in ("Command:", "Hardware:", "Expected:"):
        assert heading in loaded.__doc__
    assert f"--config experiments/configs/{path.name}" in loaded.__doc__
    config = load_config_file(path)
    validate(config)
    assert TrainConfig.from_sections(config.to_config_dict()).to_dict() == config.to_dict()  # sections round trip


def test_overrides_by_section_and_by_field():
    config = apply_overrides(load_config_file(DIGITS), ["optimizer.learning_rate=1e-3", "steps=20",
                                                      "model.model_kwargs.widths=(8, 8)", "data.test_split=None"])
    assert config.learning_rate == 1e-3 and config.steps == 20 and config.model_kwargs["widths"] == (8, 8)
    assert config.model_kwargs["num_classes"] == 10 and config.test_split is None


@pytest.mark.parametrize("override, words", [
    ("optimizer.learning_rte=1e-3", ["optimizer.learning_rte", "did you mean optimizer.learning_rate"]),
    ("model.learning_rate=1e-3", ["model.learning_rate", "section 'optimizer'"]),
    ("learning_rte=1e-3", ["'learning_rte'", "did you mean 'learning_rate'"]),
    ("optimizer.learning_rate=fast", ["'optimizer.learning_rate'", "'fast'", "a number"]),
    ("data.shuffle=1", ["'data.shuffle'", "True or False"]),
])
def test_bad_override_names_the_field(override, words):
    with pytest.raises(ValueError) as error:
        apply_overrides(TrainConfig(), [override])
    assert all(word in str(error.value) for word in words), str(error.value)


def test_cli_bad_override_is_a_clear_error(capsys):
    code = cli.main(["train", "--config", str(DIGITS), "--config.optimizer.learning_rte=3e-3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "optimizer.learning_rte" in err and "learning_rate" in err and "Traceback" not in err


def test_cli_trains_a_config_file_with_big_vision_overrides(tmp_path, capsys):
    code = cli.main(["train", "--config", str(DIGITS), "--config.loop.steps=20", "--config.evaluation.eval_every",
                     "10", "optimizer.learning_rate=1e-3", "--workdir", str(tmp_path), "--quiet"])
    assert code == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["steps"] == 20 and saved["eval_every"] == 10 and saved["learning_rate"] == 1e-3
    assert "eval: accuracy" in capsys.readouterr().out
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_help_lists_defaults_and_known_names(capsys):
    for command in ("train", "search"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert "optimizer.learning_rate = 0.01" in out and "loop.steps = 6000" in out
        assert "known models:" in out and "mnist1d_cnn" in out
        assert "known strategies:" in out and "tpe" in out


def test_search_overrides_change_the_objective_config():
    from vhjax.search.training import TrainingObjective

    objective = TrainingObjective(load_config_file(DIGITS))
    changed = cli.override_objective(objective, ["optimizer.learning_rate=1e-3", "loop.steps=50"])
    assert changed.config.learning_rate == 1e-3 and changed.config.steps == 50
    with pytest.raises(ValueError, match="need an objective with a TrainConfig"):
        cli.override_objective(lambda x: x, ["steps=1"])
