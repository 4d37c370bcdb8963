"""`vhjax report`: the HTML page of a search, checked in headless Chromium.

The Chromium test skips when no chromium binary is found, except under CI (`CI=true`), where
`.ci/run` installs it: there a missing browser is a failure (as tests/postgres.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from vhjax.cli import main
from vhjax.search import Categorical, Float, Space, search
from vhjax.search.report import load_result, spearman_importance, write_report

SPACE = Space({"x": Float(0.0, 1.0), "act": Categorical(["relu", "gelu"])})


def quadratic(batch):
    return [-(p["x"] - 0.3) ** 2 + (0.05 if p["act"] == "relu" else 0.0) for p in batch]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("search")
    search(quadratic, SPACE, "random", budget=8, population=4, workdir=path, verbose=False)
    return path


def chromium() -> str | None:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium binary under CI (.ci/run installs it)")
        pytest.skip("no chromium binary (apt-get install chromium)")
    return found


def test_report_has_leaderboard_importance_and_plots(workdir):
    result = load_result(workdir)
    path = write_report(workdir)
    page = path.read_text()
    assert path == workdir / "report.html"
    assert f'id="best-trial" data-trial-id="{result.best.trial_id}"' in page
    assert "optuna.importance.get_param_importances" in page and "<td>x</td>" in page
    assert page.count("data:image/png;base64,") >= 2  # history and best so far
    assert "src=\"http" not in page  # self-contained


def test_report_cli_and_clear_errors(workdir, tmp_path, capsys):
    assert main(["report", str(workdir), "--out", str(tmp_path / "r.html"), "--top", "3"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1000
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "workdir has value" in capsys.readouterr().err
    with pytest.raises(ValueError, match="top has value 0"):
        write_report(workdir, tmp_path / "x.html", top=0)


def test_report_of_a_tune_workdir_reads_its_optuna_study(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="vhjax", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="minimize")
    for i in range(6):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.report(float(i), step=10)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if i == 5 else study.tell(trial, 0.1 * i + 1.0)
    page = write_report(tmp_path).read_text()
    assert 'id="best-trial" data-trial-id="0"' in page and "value (minimize)" in page
    assert "optuna.importance.get_param_importances" in page and "<td>lr</td>" in page
    assert "5 complete" in page


def test_report_draws_the_lineage_of_trials_with_parents(tmp_path):
    def objective(batch, budgets):
        return [-(p["x"] - 0.3) ** 2 for p in batch]

    search(objective, SPACE, "successive_halving", budget=8, population=4, workdir=tmp_path, verbose=False,
           strategy_kwargs={"min_budget": 1, "max_budget": 4})
    assert 'id="plot-lineage"' in write_report(tmp_path).read_text()


def test_spearman_fallback_ranks_the_parameter_that_matters(workdir):
    scores = spearman_importance(load_result(workdir).trials)
    assert set(scores) == {"x"} and 0.0 <= scores["x"] <= 1.0


def test_report_renders_in_headless_chromium(workdir, tmp_path):
    browser = chromium()
    best = load_result(workdir).best.trial_id
    page = write_report(workdir, tmp_path / "report.html")
    screenshot = tmp_path / "out.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1200,2000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    image = np.asarray(Image.open(screenshot).convert("RGB"))
    assert image.shape == (2000, 1200, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # text, table colours and plots: not blank
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert f'id="best-trial" data-trial-id="{best}"' in dom and "Leaderboard" in dom
