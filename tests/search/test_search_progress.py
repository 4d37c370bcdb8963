"""Search-generation progress: one line per generation with an ETA in a non-interactive log."""

from __future__ import annotations

import re

from vhjax.search import Float, Space, search


def quadratic(batch):
    return [-(p["x"] - 0.3) ** 2 for p in batch]


def test_non_interactive_search_prints_one_line_per_generation_with_eta(capsys):
    search(quadratic, Space({"x": Float(0.0, 1.0)}), "random", budget=6, population=2, verbose=True)
    captured = capsys.readouterr()  # capsys: stderr is not a terminal, so no bar
    lines = [line for line in captured.out.splitlines() if line.startswith("[vhjax.search] generation")]
    assert len(lines) == 3, captured.out
    for generation, line in enumerate(lines):
        assert f"generation {generation}: {2 * (generation + 1)}/6 trials" in line
        assert re.search(r"\| elapsed \d+s eta \d+s$", line), line
    assert "\r" not in captured.err  # no progress bar drawn


def test_quiet_search_prints_nothing(capsys):
    search(quadratic, Space({"x": Float(0.0, 1.0)}), "random", budget=4, population=2, verbose=False)
    assert capsys.readouterr().out == ""
