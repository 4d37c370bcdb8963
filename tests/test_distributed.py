"""Multi-host on one machine: 2 local processes x 2 CPU devices each (`jax.distributed` over
localhost, gloo collectives) train one population over the global 4-device mesh; their members
end as a single process with 4 devices ends. SIGTERM to one of the processes stops both after the
same chunk with a checkpoint; rerunning both resumes to the same metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.population.test_entries import CONFIG
from vhjax import distributed
from tests.forking import start_script, wait_for_text
from tests.xla_flags import xla_flags

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, sys, time
    process_id, port, workdir, slow, spec = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "slow", sys.argv[5]
    import vhjax.distributed
    if process_id != "single":
        vhjax.distributed.initialize(f"localhost:{port}", 2, int(process_id))
    import dataclasses
    import jax
    import vhjax.train.progress as progress
    from vhjax.parallel import mesh_from_spec, population_mesh
    from vhjax.population import fit_population
    from tests.datasets import tiny_classification
    from tests.population.test_entries import CONFIG, PAIR

    CONFIG = dataclasses.replace(CONFIG, dataset=tiny_classification())  # not the digits: no second loading them
    if slow:  # chunks of a real run take seconds: leave the signal time to arrive
        real = progress.print_progress  # the loop's progress lines go through it
        progress.print_progress = lambda line: (real(line), time.sleep(0.5))
    members = PAIR + [{"learning_rate": 5e-3}]  # 3 members over 4 devices: one inert pad
    if spec == "across":  # members=2,data=2 with the data axis over the processes: [[p0, p1], [p0, p1]]
        order = sorted(jax.devices(), key=lambda d: (jax.local_devices(d.process_index).index(d), d.process_index))
        mesh = population_mesh(order, data_parallel=2)
    else:
        mesh = population_mesh() if spec == "all" else mesh_from_spec(spec)
    result = fit_population(CONFIG, members, None if workdir == "-" else workdir, mesh=mesh)
    print("DEVICES", len(jax.devices()), len(jax.local_devices()), flush=True)
    print("ROWS " + json.dumps(result.batch_rows), flush=True)
    print("RESULT " + json.dumps([m["eval"] for m in result.members]), flush=True)
""")


SEARCH_WORKER = textwrap.dedent("""
    import json, sys
    process_id, port, workdir, population = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fail = sys.argv[5] == "fail"
    import vhjax.distributed
    if process_id != "single":
        vhjax.distributed.initialize(f"localhost:{port}", 2, int(process_id))
    import vhjax
    from vhjax.search import Categorical, Space, TrainingObjective
    import dataclasses
    from tests.datasets import tiny_classification
    from tests.population.test_entries import CONFIG

    CONFIG = dataclasses.replace(CONFIG, dataset=tiny_classification())  # not the digits: no second loading them
    space = Space({"learning_rate": Categorical((1e-3, 3e-3, 1e-2))})
    objective = TrainingObjective(CONFIG)
    if fail:  # process 1 alone fails before training generation 1 (process 0 is then in its first chunk)
        def evaluate(candidates, real=objective.evaluate):
            if candidates.generation == 1 and vhjax.distributed.process_index() == 1:
                raise RuntimeError("a file only process 1 lacks")
            return real(candidates)
        object.__setattr__(objective, "evaluate", evaluate)
    result = vhjax.search(objective, space, "random", budget=6, population=population, workdir=workdir)
    print("RESULT " + json.dumps([[t.trial_id, t.params["learning_rate"], t.metrics["accuracy"], t.metrics["loss"]]
                                  for t in result.trials]), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Child:
    """A worker process forked from the tests' fork server, its output in a file."""

    def __init__(self, source: str, argv: list, devices: int | None, output: Path):
        environment = {"JAX_PLATFORMS": "cpu", **({} if devices is None else {"XLA_FLAGS": xla_flags(devices)})}
        self.output = output
        self.process = start_script(source, argv, output, environment, __name__)

    def text(self) -> str:
        return self.output.read_text()


def start(process_id: str, port: int, workdir: Path | str, devices: int, slow: bool = False,
          mesh: str = "all", output: Path | None = None) -> Child:
    return Child(WORKER, [process_id, port, workdir, "slow" if slow else "-", mesh], devices,
                 output or Path(tempfile.mkdtemp()) / "output")


def finish(children: list[Child], timeout: float = 400) -> list[str]:
    deadline = time.monotonic() + timeout
    for child in children:
        child.process.join(timeout=max(deadline - time.monotonic(), 1))
        if child.process.exitcode is None:
            for other in children:
                other.process.kill()
            raise TimeoutError(f"a worker still ran after {timeout} s: {child.text()[-3000:]}")
    outputs = [child.text() for child in children]
    for child, out in zip(children, outputs):
        assert child.process.exitcode == 0, out[-4000:]
    return outputs


def result(output: str) -> list[dict]:
    return json.loads(output.split("RESULT ")[1].splitlines()[0])


def rows(output: str) -> list:
    """Per bucket: the batch rows the process gathered (`PopulationResult.batch_rows`)."""
    return json.loads(output.split("ROWS ")[1].splitlines()[0])


def assert_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def eval_steps(workdir: Path) -> list[int]:
    rows = [json.loads(line) for line in (workdir / "bucket_0" / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if row["split"] == "eval"]


def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
    # SIGTERM to process 1 only: both agree to stop after the same chunk and checkpoint together; rerun,
    # the pair resumes and ends as one process with all 4 devices ends (the pair trains before and after)
    single = start("single", 0, "-", devices=4)
    port = free_port()
    cut = tmp_path / "cut"
    pair = [start(str(i), port, cut, devices=2, slow=True) for i in range(2)]
    wait_for_text(pair[0].output, "step 10/40", pair[0].process)
    os.kill(pair[1].process.pid, signal.SIGTERM)
    rest = finish(pair)
    first = rest[0]
    assert "preempted (" in first and "run the same command again to resume" in first, first[-3000:]
    assert "RESULT" not in first and "RESULT" not in rest[1]
    stopped = int(first.split("preempted (")[1].split(" at step ")[1].split("/")[0])
    assert 10 <= stopped < 40

    port = free_port()
    outputs = finish([start(str(i), port, cut, devices=2) for i in range(2)])
    (single_out,) = finish([single])
    assert f"at step {stopped}" in outputs[0] and "resumed from" in outputs[0]
    assert "DEVICES 4 4" in single_out and all("DEVICES 4 2" in out for out in outputs)
    assert_close(result(outputs[0]), result(single_out))
    assert result(outputs[1]) == result(outputs[0])
    # members over the processes, one batch for all: each process needs every row of each batch it trains
    trained = (CONFIG.steps - stopped) * CONFIG.batch_size
    assert rows(outputs[0]) == rows(outputs[1]) == [trained] and rows(single_out) == [None]
    assert "step 40/40" in outputs[0] and "step 40/40" not in outputs[1]  # progress from process 0 only
    assert eval_steps(cut) == [10, 20, 30, 40]  # written once, by process 0


def test_a_data_axis_over_two_processes_trains_like_one_process():
    """members=2,data=2 with the data axis over the 2 processes: each member's batch split over a
    device of each process, its gradient reduced across them; each process gathers only its half of
    every batch (its rows, from its host copy of the data) and the members end as in one process."""
    port = free_port()
    (single,) = finish([start("single", 0, "-", devices=4, mesh="across")])
    outputs = finish([start(str(i), port, "-", devices=2, mesh="across") for i in range(2)])
    assert_close(result(outputs[0]), result(single))
    assert result(outputs[1]) == result(outputs[0])
    assert rows(single) == [None]  # one process: the data on the devices, batches gathered in the program
    assert rows(outputs[0]) == rows(outputs[1]) == [CONFIG.steps * CONFIG.batch_size // 2]


def test_a_search_over_two_processes_asks_on_process_0_and_trains_like_one_process(tmp_path):
    """The strategy and store run on process 0; both processes train each generation's population
    over the 4-device mesh; the follower returns the same trials; only process 0 writes a store.
    Rerun with another population, process 0 refuses the workdir and the follower stops with it
    (it does not wait for a message that never comes). An objective that fails on process 1 only
    stops both at once, process 0 with `SearchAborted` naming process 1 and its error."""
    def run(process_id: str, port: int, workdir: Path, devices: int, population: int = 3,
            fail: bool = False) -> Child:
        return Child(SEARCH_WORKER, [process_id, port, workdir, population, "fail" if fail else "-"], devices,
                     tmp_path / f"{workdir.name}_{port}.out")

    def ended(children: list[Child], timeout: float = 300) -> tuple[list[str], list[int]]:
        """Outputs and exit codes of workers that may fail (killed if still running after `timeout`)."""
        deadline = time.monotonic() + timeout
        try:
            for child in children:
                child.process.join(timeout=max(deadline - time.monotonic(), 1))
        finally:
            for child in children:
                if child.process.exitcode is None:
                    child.process.kill()
                    child.process.join()
        return [child.text() for child in children], [child.process.exitcode for child in children]

    (single,) = finish([run("single", 0, tmp_path / "single", 4)])
    port = free_port()
    workdirs = [tmp_path / f"process_{i}" for i in range(2)]
    outputs = finish([run(str(i), port, workdirs[i], 2) for i in range(2)])
    want = result(single)
    got = result(outputs[0])
    assert [row[:2] for row in got] == [row[:2] for row in want]  # the same proposals
    for a, b in zip(got, want):
        assert a[2:] == pytest.approx(b[2:], rel=1e-5, abs=1e-6)
    assert result(outputs[1]) == got
    assert (workdirs[0] / "trials.sqlite").exists() and not (workdirs[1] / "trials.sqlite").exists()
    assert "[vhjax.search]" in outputs[0] and "[vhjax.search]" not in outputs[1]

    port = free_port()
    outputs, codes = ended([run(str(i), port, workdirs[i], 2, population=2) for i in range(2)])
    assert codes != [0, 0]
    assert "different search configuration" in outputs[0]
    assert "SearchAborted: process 0 of this search failed" in outputs[1]
    assert "different search configuration" in outputs[1]

    # an evaluation error on process 1 only: it raises its error, as one process's search would, and
    # process 0 (already waiting before its first training chunk) stops with SearchAborted naming it
    port = free_port()
    # without the agreement process 0 would wait in its first chunk's collectives (killed after 300 s)
    outputs, codes = ended([run(str(i), port, tmp_path / f"fail_{i}", 2, fail=True) for i in range(2)])
    assert codes[0] != 0 and codes[1] != 0
    assert "RuntimeError: a file only process 1 lacks" in outputs[1]
    assert ("SearchAborted: process 1 of this search failed while evaluating generation 1 (trials [4, 5, 6]), so "
            "this process stops too: RuntimeError: a file only process 1 lacks") in outputs[0], outputs[0][-3000:]


def test_initialize_validates_its_arguments(monkeypatch):
    monkeypatch.delenv(distributed.ENV_COORDINATOR, raising=False)
    with pytest.raises(ValueError, match="needs num_processes and process_id"):
        distributed.initialize("localhost:1234")
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        distributed.initialize("localhost:1234", 2, 2)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="VHJAX_NUM_PROCESSES has value 'two'"):
        distributed.initialize("localhost:1234", process_id=0)


def test_single_process_helpers():
    import numpy as np

    from vhjax import parallel

    assert distributed.is_main_process() and distributed.process_count() == 1
    assert distributed.process_slice(8) == slice(0, 8)
    mesh = parallel.population_mesh()
    batch = distributed.host_local_batch({"x": np.arange(6.0).reshape(6, 1)}, mesh)
    assert np.asarray(batch["x"]).tolist() == [[float(i)] for i in range(6)]


def test_module_entry_initializes_from_the_environment_and_runs_the_script(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import sys, jax\nprint('RAN', jax.distributed.is_initialized(), jax.process_count(), sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", distributed.ENV_COORDINATOR: f"localhost:{free_port()}",
           distributed.ENV_NUM_PROCESSES: "1", distributed.ENV_PROCESS_ID: "0"}
    done = subprocess.run([sys.executable, "-m", "vhjax.distributed", str(script), "a", "--b"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RAN True 1 ['a', '--b']" in done.stdout


class FakeStore:
    """The coordination service's key-value calls that `agree` uses, shared by threads."""

    def __init__(self):
        import threading

        self.values, self.lock = {}, threading.Lock()

    def key_value_set(self, key, value):
        with self.lock:
            assert key not in self.values, f"{key} set twice"  # the real store refuses it too
            self.values[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(key, value) for key, value in self.values.items() if key.startswith(prefix)]

    def key_value_delete(self, key):
        with self.lock:
            self.values.pop(key, None)


def test_agree_deletes_its_keys_of_finished_rounds_and_still_waits_for_everyone():
    import threading

    store, count, rounds = FakeStore(), 3, 6
    progress = {me: 0 for me in range(count)}
    errors = []

    def process(me):
        try:
            for round_ in range(1, rounds + 1):
                time.sleep(0.02 * me)  # process 2 arrives last every round
                distributed.wait_for_all(store, "chunk", round_, me, count, timeout=30)
                assert min(progress.values()) >= round_ - 1  # nobody had left this round's previous one unfinished
                progress[me] = round_
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=process, args=(me,)) for me in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert progress == {me: rounds for me in range(count)}
    prefix = distributed.ARRIVED_KEY + "chunk/"
    assert sorted(store.values) == [f"{prefix}{rounds}/{me}" for me in range(count)]  # only the last round's


AGREE_WORKER = textwrap.dedent("""
    import sys
    import vhjax.distributed as d
    d.initialize(f"localhost:{sys.argv[2]}", 2, int(sys.argv[1]))
    for _ in range(5):
        d.agree("step", timeout=60)
    d.agree("last", timeout=60)  # both have left every "step" round: round 5's keys stay, the rest are gone
    print("KEYS", sorted(key.split("arrived/")[1] for key, _ in d._client().key_value_dir_get(d.ARRIVED_KEY + "step/")))
    d.agree("read", timeout=60)  # neither process leaves (and stops the service) before the other has read
    d.shutdown()
""")


def test_agree_over_two_processes_leaves_only_the_last_rounds_keys(tmp_path):
    port = free_port()
    processes = [Child(AGREE_WORKER, [i, port], None, tmp_path / f"agree_{i}.out") for i in range(2)]
    for out in finish(processes, timeout=120):
        assert "KEYS ['step/5/0', 'step/5/1']" in out, out[-2000:]
