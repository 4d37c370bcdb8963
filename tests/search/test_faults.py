"""Fault injection: kill -9 at targeted points, two processes on one workdir, damaged store files
(workdir and SQL URL), an unreachable database server.

Each kill test runs a tiny scenario of `fault_scenarios` in a fresh process with `VHJAX_FAULT` set,
so the process SIGKILLs itself at that point (as `kill -9` would), then resumes it in another and
asserts 0 trials lost, 0 duplicated, none left `running`, and an outcome identical to an
uninterrupted run. The runs share a persistent compilation cache, so only the first compiles, and
are forked from a fork server that imported JAX, vhjax and the scenarios once (a process that never
started JAX's backend, so each fork is as a fresh interpreter that skipped those seconds of imports).
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from vhjax.search import Float, Space, search
from vhjax.search.storage import SQLITE_FILENAME, StoreDamaged, StoreUnreachable, open_store
from tests.forking import Ran, forkserver_context, run_module
from vhjax.train.workdir import WorkdirInUse


@pytest.fixture(scope="module")
def cache(session_compilation_cache) -> Path:
    """The session's persistent compilation cache for child processes (tests/conftest.py): only the
    first run of a scenario compiles (or none, when another test's child compiled its programs)."""
    return session_compilation_cache[1]


@pytest.fixture(scope="module")
def forkserver():
    return forkserver_context(__name__)


RUNS = itertools.count()  # each scenario run's output files get their own name


def scenario(name: str, cache: Path, folder: Path, *steps: str) -> Ran:
    """`python -m tests.search.fault_scenarios NAME --cache CACHE STEPS`, forked from the fork server."""
    done = run_module("tests.search.fault_scenarios", [name, "--cache", cache, *steps], folder,
                      f"scenario_{next(RUNS)}", __name__, timeout=300)
    if done.returncode is None:
        raise TimeoutError(f"scenario {name} {steps} still ran after 300 s: {done.stderr[-2000:]}")
    return done


def outcomes(done: Ran) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def assert_whole(outcome: dict, expected: dict) -> None:
    if "rows" in expected:
        assert outcome["running"] == 0, "trials left running"
        assert outcome["distinct"] == outcome["count"], "duplicated trials"
        assert outcome["count"] == expected["count"], "lost trials"
    assert outcome == expected


@pytest.mark.parametrize("name, faults", [
    # generation 1 evaluated, nothing of it stored; then inside the transaction recording generation 2
    ("search", ["search.evaluated@2", "store.finish@2"]),
    ("multifidelity", ["store.add@2"]),  # inside the transaction inserting generation 1's rows
    # last chunk evaluated and logged, its checkpoint not written; then, resumed from the first
    # checkpoint, the last one written whole in orbax's temporary folder but not yet renamed
    ("fit", ["checkpoint.save@2", "checkpoint.before_rename@1"]),
    # first chunk evaluated and logged, no checkpoint at all yet; then the second checkpoint left
    # in orbax's temporary folder, not renamed: the rerun resumes from the first
    ("population", ["checkpoint.save@1", "checkpoint.before_rename@2"]),
    # after the first round (evaluated, exploited), before its checkpoint; then the second round's
    # checkpoint not yet renamed from orbax's temporary folder; then, training done, inside the
    # transaction storing the rounds
    ("pbt", ["checkpoint.save@1", "checkpoint.before_rename@2", "store.rounds"]),
])
def test_killed_run_resumes_with_nothing_lost_or_duplicated(name, faults, tmp_path, cache, forkserver):
    """A process runs the scenario uninterrupted, then again in a fresh workdir until it kills itself
    at the first fault; each further process resumes that workdir until the next fault; the last one
    resumes it to the end, twice (the second run must change nothing)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    expected = None
    for number, fault in enumerate(faults):
        killed = scenario(name, cache, tmp_path, *([f"run:{full}"] if number == 0 else []), f"kill:{cut}:{fault}")
        assert killed.returncode == -signal.SIGKILL, (f"not killed at {fault} (rc {killed.returncode}): "
                                                      f"{killed.stderr[-2000:]}")
        expected = expected or outcomes(killed)[0]
        if fault.startswith("checkpoint.before_rename"):  # the kill left orbax's temporary folder behind
            assert list(cut.rglob("*.orbax-checkpoint-tmp*")), "no temporary checkpoint folder left"
    final = [f"run:{cut}", f"run:{cut}"] + ([f"legacycut:{cut}", f"run:{cut}"] if name == "pbt" else [])
    resumed = scenario(name, cache, tmp_path, *final)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, *again = outcomes(resumed)
    assert_whole(first, expected)
    # a rerun changes nothing; for PBT, so does a rerun on a store cut as the per-round writes of
    # earlier versions left it (a round missing, one `running`): every round is stored again
    for outcome in again:
        assert_whole(outcome, expected)


# ----------------------------------------------------------------------------- two processes

def _hold(workdir: str, marker: str) -> None:
    """In the forked process: a search whose objective never returns in the test's time."""
    def slow(batch):
        Path(marker).write_text("started")
        time.sleep(60)
        return np.zeros(len(batch))

    search(slow, Space({"x": Float(0, 1)}), budget=1, workdir=workdir, verbose=False)


def test_second_process_on_a_search_workdir_is_refused(tmp_path, forkserver):
    marker = tmp_path / "started"
    holder = forkserver.Process(target=_hold, args=(str(tmp_path / "run"), str(marker)))
    holder.start()
    try:
        deadline = time.time() + 120
        while not marker.exists() and holder.exitcode is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the first search never started"
        with pytest.raises(WorkdirInUse, match=rf"in use by another process \(pid {holder.pid}\)"):
            search(lambda b: np.zeros(len(b)), Space({"x": Float(0, 1)}), budget=1, workdir=tmp_path / "run",
                   verbose=False)
    finally:
        holder.kill()  # SIGKILL
        holder.join()
    # the lock dies with its holder: the killed search resumes here
    done = search(lambda b: np.ones(len(b)), Space({"x": Float(0, 1)}), budget=1, workdir=tmp_path / "run",
                  verbose=False)
    assert [t.status for t in done.trials] == ["complete"]


def test_shared_storage_is_not_locked(tmp_path):
    """storage= may be shared on purpose (several workers on one database): no workdir lock there."""
    path = tmp_path / "shared.sqlite"
    kwargs = dict(budget=2, population=2, storage=path, verbose=False)
    search(lambda b: np.zeros(len(b)), Space({"x": Float(0, 1)}), **kwargs)
    assert not (tmp_path / ".lock").exists()


# ----------------------------------------------------------------------------- damaged store files


def _search(workdir: Path | None, budget: int = 4, storage: str | None = None):
    return search(lambda b: np.asarray([c["x"] for c in b]), Space({"x": Float(0, 1)}), budget=budget,
                  population=2, workdir=workdir, storage=storage, verbose=False)


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
        return
    if how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] + b"\x00" * 37)
        return
    with sqlite3.connect(path) as db:  # Optuna's tables; vhjax's fields are the attribute 'vhjax:trial'
        if how == "json":
            db.execute("UPDATE trial_system_attributes SET value_json = '{not json' WHERE trial_id = 2")
        elif how == "utf8":
            db.execute("UPDATE trial_system_attributes SET value_json = CAST(X'FFFE00' AS TEXT) WHERE trial_id = 3")
        elif how == "status":
            db.execute("UPDATE trials SET state = 'EXPLODED' WHERE trial_id = 1")
        elif how == "state":  # valid base64 of bytes that are not a msgpack strategy state
            db.execute("""UPDATE study_system_attributes SET value_json = '{"generation": 2, "state": "wcHB"}'
                          WHERE key = 'vhjax:state'""")


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "json", "utf8", "status", "state"])
def test_damaged_store_is_a_clear_error_naming_the_file(tmp_path, how):
    _search(tmp_path)
    path = tmp_path / SQLITE_FILENAME
    with sqlite3.connect(path) as db:  # fold the WAL into the file so that damaging the file damages the data
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage(path, how)
    with pytest.raises(StoreDamaged, match="Move it away") as caught:
        _search(tmp_path, budget=6)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "utf8"])
def test_damaged_store_behind_a_sql_url_is_the_same_clear_error(tmp_path, how):
    """`storage='sqlite:///path'` (SQLAlchemy): the same `StoreDamaged` naming the file, no driver error."""
    pytest.importorskip("sqlalchemy")
    path = tmp_path / "shared.sqlite"
    _search(None, storage=f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage(path, how)
    with pytest.raises(StoreDamaged, match="Move it away") as caught:
        _search(None, budget=6, storage=f"sqlite:///{path}")
    assert str(path) in str(caught.value)


def test_new_store_file_behind_a_sql_url_is_created_whole(tmp_path):
    pytest.importorskip("sqlalchemy")
    open_store(storage=f"sqlite:///{tmp_path / 'new.sqlite'}").close()
    assert (tmp_path / "new.sqlite").stat().st_size > 0


def test_unreachable_database_server_is_a_clear_error_before_any_work(tmp_path):
    """A PostgreSQL URL whose server cannot be reached: `StoreUnreachable` naming the URL (password
    masked), raised when the store is opened, before the objective is ever called."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    called = []

    def objective(batch):
        called.append(batch)
        return np.zeros(len(batch))

    url = "postgresql+psycopg://user:secret@localhost:1/db"
    with pytest.raises(StoreUnreachable, match="could not be reached") as caught:
        search(objective, Space({"x": Float(0, 1)}), budget=2, storage=url, verbose=False)
    assert "postgresql+psycopg://user:***@localhost:1/db" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert not called


def test_new_store_file_is_never_empty_and_leaves_no_temporary(tmp_path):
    store = open_store(tmp_path)
    store.close()
    assert (tmp_path / SQLITE_FILENAME).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [SQLITE_FILENAME]

