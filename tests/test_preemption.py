"""SIGTERM/SIGINT during training: the loop finishes its chunk, checkpoints, exits 0 with a message;
rerunning resumes and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from vhjax import preemption
from vhjax.population import fit
from tests.datasets import tiny_classification
from tests.forking import start_script, wait_for_text
from tests.population.test_entries import CONFIG, PAIR
from tests.xla_flags import xla_flags


SCRIPT = textwrap.dedent("""
    import json, sys, time
    import vhjax.train.progress as progress  # the loop's progress lines go through it
    from vhjax.population import fit, fit_population
    from tests.population.test_entries import PAIR
    from tests.test_preemption import SIGNALLED, search_metrics

    if len(sys.argv) == 3:  # the run to signal: chunks of a real run take seconds, leave the signal time to arrive
        real_print = progress.print_progress
        def slow_print(line):
            real_print(line)
            time.sleep(0.5)
        progress.print_progress = slow_print

    def run(entry, workdir, verbose):
        if entry == "fit":
            return [fit(SIGNALLED, workdir, mesh=None, verbose=verbose).metrics["eval"]]
        if entry == "search":
            return search_metrics(workdir, verbose=verbose)
        return [m["eval"] for m in fit_population(SIGNALLED, PAIR, workdir, mesh=None, verbose=verbose).members]

    entry, workdir = sys.argv[1], sys.argv[2]
    print("RESULT " + json.dumps(run(entry, workdir, True)), flush=True)
    if len(sys.argv) > 3:  # then the uninterrupted run to compare with, in a fresh workdir (its programs compiled)
        print("FULL " + json.dumps(run(entry, sys.argv[3], False)), flush=True)
""")
# what the signalled runs train: CONFIG on data made here (loading the digits costs each process a second)
SIGNALLED = dataclasses.replace(CONFIG, dataset=tiny_classification())


def search_metrics(workdir: Path, verbose: bool = False) -> list[dict]:
    """A two-trial search whose generation trains as one population: each trial's metrics."""
    import vhjax
    from vhjax.search import Categorical, Space, TrainingObjective

    objective = TrainingObjective(SIGNALLED, workdir=Path(workdir) / "training", verbose=verbose)
    space = Space({"learning_rate": Categorical([m["learning_rate"] for m in PAIR])})
    result = vhjax.search(objective, space, "grid", budget=2, population=2, workdir=workdir, verbose=verbose)
    return [{"accuracy": t.metrics["accuracy"], "loss": t.metrics["loss"]} for t in result.trials]


def start(entry: str, workdir: Path, output: Path, full: Path | None = None):
    """The entry run in `workdir` in a child process (forked from the tests' fork server), its
    output to `output`; with `full`, then uninterrupted in `full` too."""
    return start_script(SCRIPT, [entry, workdir, *([full] if full else [])], output,
                        {"XLA_FLAGS": xla_flags(devices=1)}, __name__)


@pytest.mark.parametrize("entry,sig", [("fit_population", signal.SIGTERM), ("fit", signal.SIGINT),
                                       ("search", signal.SIGTERM)])
def test_signal_checkpoints_exits_zero_and_the_rerun_resumes(entry, sig, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "signalled.out"
    process = start(entry, workdir, log)
    wait_for_text(log, "step 10/40", process)  # the first evaluation's progress line
    os.kill(process.pid, sig)
    process.join(timeout=120)
    output = log.read_text()
    assert process.exitcode == 0, output
    assert "preempted (SIG" in output and "run the same command again to resume" in output, output
    assert "RESULT" not in output
    stopped = int(output.split("preempted (")[1].split(" at step ")[1].split("/")[0])
    assert 10 <= stopped < 40

    # the rerun resumes; after it, the same process runs the uninterrupted reference in a fresh workdir
    rerun = start(entry, workdir, tmp_path / "rerun.out", full=tmp_path / "full")
    rerun.join(timeout=300)
    output = (tmp_path / "rerun.out").read_text()
    assert rerun.exitcode == 0, output
    assert f"resumed from {workdir}" in output and f"at step {stopped}" in output
    resumed = json.loads(output.split("RESULT ")[1].splitlines()[0])
    full = json.loads(output.split("FULL ")[1].splitlines()[0])
    assert len(resumed) == len(full)
    for got, want in zip(resumed, full):
        assert got == pytest.approx(want, rel=1e-6)
    rows = [json.loads(line) for path in sorted(workdir.rglob("metrics.jsonl")) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [10, 20, 30, 40]


def test_request_stops_the_loop_in_process(tmp_path):
    """`preemption.request()` (what the handler does) after the first chunk is seen at the end of the
    next one: Preempted, exit code 0, resumable."""
    import vhjax.train.progress as progress  # the loop's progress lines go through it

    calls = []
    real = progress.print_progress
    sigterm_before = signal.getsignal(signal.SIGTERM)

    def request_after_first(line):
        real(line)
        calls.append(line)
        if len(calls) == 1:
            preemption.request("test")

    progress.print_progress = request_after_first
    try:
        with pytest.raises(preemption.Preempted) as caught:
            fit(CONFIG, tmp_path, mesh=None)
    finally:
        progress.print_progress = real
    assert caught.value.code == 0 and "preempted (test) at step 20/40" in str(caught.value)
    assert not preemption.local_request()  # cleared when the loop exits
    assert signal.getsignal(signal.SIGTERM) is sigterm_before
    resumed = fit(CONFIG, tmp_path, mesh=None, verbose=False)
    assert resumed.metrics["eval"] == pytest.approx(fit(CONFIG, None, mesh=None, verbose=False).metrics["eval"])


def test_without_a_workdir_signals_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.watch(enabled=False):
        assert signal.getsignal(signal.SIGTERM) is before
    with preemption.watch():
        assert signal.getsignal(signal.SIGTERM) is preemption._handle
        with preemption.watch():  # nested: the outer block keeps handling
            assert signal.getsignal(signal.SIGTERM) is preemption._handle
        assert signal.getsignal(signal.SIGTERM) is preemption._handle
    assert signal.getsignal(signal.SIGTERM) is before


def test_first_sigint_requests_a_second_interrupts(capsys):
    before = signal.getsignal(signal.SIGINT)  # pytest-xdist workers ignore SIGINT
    with preemption.watch():
        signal.raise_signal(signal.SIGINT)
        assert preemption.local_request() and preemption.requested()
        assert "SIGINT received; a checkpoint is written after the current chunk" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert not preemption.local_request()
    assert signal.getsignal(signal.SIGINT) is before
