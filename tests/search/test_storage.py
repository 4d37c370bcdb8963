"""The results store: round trips, state serialization, concurrent writers, URLs."""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.forking import forkserver_context
from vhjax.search import storage
from vhjax.search.storage import NewTrial, TrialResult, open_store


def _new(generation: int, slot: int, **extra) -> NewTrial:
    return NewTrial(generation=generation, slot=slot,
                    params={"lr": 10.0 ** -slot, "act": "relu", "layers": slot + 1},
                    u=[0.1 * slot, 0.5, 1.0], **extra)


def test_trials_round_trip(tmp_path):
    with open_store(tmp_path) as store:
        ids = store.add_trials([_new(0, 0), _new(0, 1), _new(0, 2, parent_id=7, fidelity=3.0)])
        store.finish_trials([
            TrialResult(ids[0], "complete", 0.25, {"acc": 0.25, "loss": [1.0, 2.0]}),
            TrialResult(ids[1], "failed", float("nan"), {"acc": float("nan")}),
        ])
    assert (tmp_path / "trials.sqlite").exists()
    with open_store(tmp_path) as store:  # reopened from disk
        trials = store.trials()
    assert [t.trial_id for t in trials] == ids and len(set(ids)) == 3
    first, second, third = trials
    assert first.params == {"lr": 1.0, "act": "relu", "layers": 1}
    assert first.u == (0.0, 0.5, 1.0)
    assert (first.status, first.fitness) == ("complete", 0.25)
    assert first.metrics == {"acc": 0.25, "loss": [1.0, 2.0]}
    assert first.finished_at >= first.started_at
    assert second.status == "failed" and second.fitness is None  # NaN is not a fitness
    assert np.isnan(second.metrics["acc"])
    assert third.status == "running" and third.finished_at is None
    assert (third.parent_id, third.fidelity, third.generation, third.slot) == (7, 3.0, 0, 2)


def test_filters_and_studies_are_separate(tmp_path):
    with open_store(tmp_path, study="a") as a, open_store(tmp_path, study="b") as b:
        a.add_trials([_new(0, 0), _new(1, 0)])
        b.add_trials([_new(0, 0)])
        assert a.count_trials() == 2 and b.count_trials() == 1
        assert [t.generation for t in a.trials(generation=1)] == [1]
        assert len(a.trials(status="running")) == 2 and a.trials(status="complete") == []
        more = a.add_trials([_new(2, 0), _new(2, 1), _new(2, 2)])
        b_ids = [t.trial_id for t in b.trials()]  # study b's trial lies inside study a's id range
        assert a.trials(ids=[more[0], more[2]]) == [t for t in a.trials() if t.trial_id in (more[0], more[2])]
        assert a.trials(ids=b_ids) == [] and a.trials(ids=[]) == []  # only this study's, only those asked
        assert [t.slot for t in a.trials(ids=more, generation=2)] == [0, 1, 2]


def test_bad_status_is_rejected(tmp_path):
    with open_store(tmp_path) as store:
        with pytest.raises(ValueError, match="status must be one of"):
            store.add_trials([_new(0, 0, status="done")])


def test_meta_is_set_once(tmp_path):
    with open_store(tmp_path) as store:
        assert store.get_meta("k") is None
        assert store.set_meta_if_absent("k", "first") == "first"
        assert store.set_meta_if_absent("k", "second") == "first"
        assert store.get_meta("k") == "first"


class _State(NamedTuple):
    mean: jax.Array
    archive: np.ndarray
    count: int
    key: jax.Array
    nested: dict


def _state(seed: int) -> _State:
    return _State(
        mean=jnp.arange(3, dtype=jnp.float32) + seed,
        archive=np.full((2, 2), seed, dtype=np.int64),
        count=seed,
        key=jax.random.key(seed),
        nested={"scale": jnp.float32(0.5 * seed), "flags": jnp.array([True, seed > 1])},
    )


def test_state_round_trip_through_store(tmp_path):
    original = _state(3)
    with open_store(tmp_path) as store:
        assert store.load_state() is None
        store.save_state(storage.state_to_bytes(original), generation=4)
        store.save_state(storage.state_to_bytes(original), generation=5)  # upsert
        generation, blob = store.load_state()
    restored = storage.state_from_bytes(blob, _state(0))  # template has other values
    assert generation == 5
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    np.testing.assert_array_equal(restored.mean, original.mean)
    assert restored.mean.dtype == jnp.float32 and isinstance(restored.mean, jax.Array)
    assert isinstance(restored.archive, np.ndarray) and restored.archive.dtype == np.int64
    np.testing.assert_array_equal(restored.archive, original.archive)
    assert restored.count == 3 and isinstance(restored.count, int)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(original.key))
    np.testing.assert_array_equal(jax.random.uniform(restored.key, (4,)),
                                  jax.random.uniform(original.key, (4,)))
    np.testing.assert_array_equal(restored.nested["flags"], [True, True])


def test_state_with_other_structure_is_refused():
    blob = storage.state_to_bytes({"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match="different strategy"):
        storage.state_from_bytes(blob, {"a": jnp.zeros(2), "b": jnp.zeros(1)})


def test_state_written_with_trials_in_one_call(tmp_path):
    with open_store(tmp_path) as store:
        ids = store.add_trials([_new(0, 0)])
        store.finish_trials([TrialResult(ids[0], "complete", 1.0, {})],
                            state=storage.state_to_bytes({"x": jnp.ones(1)}), generation=1)
        assert store.load_state()[0] == 1
        with pytest.raises(ValueError, match="both state and generation"):
            store.finish_trials([], state=b"x")


# ----------------------------------------------------------------------------- concurrency

N_PROCESSES, TRIALS_PER_PROCESS = 4, 25


def _writer(location: str, use_url: bool, worker: int, barrier) -> None:
    store = open_store(storage=location) if use_url else open_store(location)
    barrier.wait(timeout=300)  # all writers start together, so their transactions interleave
    try:
        for i in range(TRIALS_PER_PROCESS):
            (trial_id,) = store.add_trials([NewTrial(generation=worker, slot=i,
                                                      params={"worker": worker, "i": i}, u=[0.5])])
            store.finish_trials([TrialResult(trial_id, "complete", float(i), {"worker": worker})])
            time.sleep(0.005)  # let the other writers in between our transactions
    finally:
        store.close()


def _write_concurrently(location: str, use_url: bool) -> None:
    context = forkserver_context(__name__)  # no fork after JAX start-up
    barrier = context.Barrier(N_PROCESSES)
    processes = [context.Process(target=_writer, args=(location, use_url, w, barrier))
                 for w in range(N_PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=400)
    assert all(process.exitcode == 0 for process in processes)


def _check_all_written(trials) -> None:
    assert len(trials) == N_PROCESSES * TRIALS_PER_PROCESS
    assert len({t.trial_id for t in trials}) == len(trials)
    assert all(t.status == "complete" for t in trials)
    pairs = {(t.params["worker"], t.params["i"]) for t in trials}
    assert pairs == {(w, i) for w in range(N_PROCESSES) for i in range(TRIALS_PER_PROCESS)}


def test_concurrent_writers_to_one_sqlite_file_lose_nothing(tmp_path):
    _write_concurrently(str(tmp_path), use_url=False)
    with open_store(tmp_path) as store:
        _check_all_written(store.trials())


def test_database_url_via_sqlalchemy(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    _write_concurrently(url, use_url=True)
    with open_store(storage=url) as store:
        _check_all_written(store.trials())
        store.save_state(b"\x00\x01state", generation=2)
        assert store.load_state() == (2, b"\x00\x01state")
    with open_store(storage=tmp_path / "shared.sqlite") as same_file:  # stdlib reads it too
        assert same_file.count_trials() == N_PROCESSES * TRIALS_PER_PROCESS


def _open_at_once(location: str, barrier, errors) -> None:
    barrier.wait(timeout=300)
    try:
        open_store(storage=location).close()
    except Exception as error:  # reported to the test, which names it
        errors.put(repr(error)[:300])


def test_processes_opening_a_new_postgresql_store_at_once_all_succeed(postgres_url):
    """Before the schema lock: 'duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"' when several processes created the tables at the same moment."""
    context = forkserver_context(__name__)  # no fork after JAX start-up
    barrier, errors = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(postgres_url, barrier, errors)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=400)
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert failures == [] and all(process.exitcode == 0 for process in processes)


def test_postgresql_store_with_concurrent_writers_and_a_search(postgres_url, tmp_path):
    """The same store on a real PostgreSQL server: 4 concurrent writers lose nothing, binary state
    round-trips, and a vhjax.search resumes from it (nothing recomputed)."""
    import vhjax
    from vhjax.search import Float, Space

    _write_concurrently(postgres_url, use_url=True)
    with open_store(storage=postgres_url) as store:
        _check_all_written(store.trials())
        store.save_state(b"\x00\x01state", generation=2)
        assert store.load_state() == (2, b"\x00\x01state")
    calls = []

    def objective(params):
        calls.append(len(params))
        return [-(p["x"] - 0.3) ** 2 for p in params]

    space = Space({"x": Float(0.0, 1.0)})
    first = vhjax.search(objective, space, "random", budget=8, population=4, storage=postgres_url,
                         study="resumed", verbose=False)
    again = vhjax.search(objective, space, "random", budget=12, population=4, storage=postgres_url,
                         study="resumed", verbose=False)
    assert calls == [4, 4, 4] and len(again.trials) == 12
    assert [t.params for t in again.trials][:8] == [t.params for t in first.trials]
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")  # the driver is chosen for us
    with open_store(storage=plain, study="resumed") as store:
        assert store.count_trials() == 12


def test_replaced_generations_link_parents_and_plain_optuna_reads_them(tmp_path):
    import optuna

    from vhjax.search import Float, Space

    space = Space({"lr": Float(1e-4, 1e-1, log=True)})

    def row(generation, slot, fitness, status="complete"):
        return NewTrial(generation=generation, slot=slot, params={"lr": 10.0 ** -(slot + 1)}, u=[0.5],
                        fitness=fitness, status=status, fidelity=float(generation + 1), metrics={"score": fitness})

    generations = [[row(0, 0, 0.5), row(0, 1, 0.7), row(0, 2, None, "failed")],
                   [row(1, 0, 0.8), row(1, 1, 0.75), row(1, 2, 0.6)]]
    with open_store(tmp_path, objectives={"score": "maximize"}, space=space) as store:
        store.add_trials([row(9, 0, 0.1)])  # replaced: gone afterwards
        ids = store.replace_trials(generations, [[None, None, None], [1, 1, None]], meta={"stored": "2"})
        trials = store.trials()
        assert store.get_meta("stored") == "2"
    assert [t.trial_id for t in trials] == ids[0] + ids[1]
    assert [t.parent_id for t in trials] == [None, None, None, ids[0][1], ids[0][1], None]
    assert [t.status for t in trials] == ["complete", "complete", "failed", "complete", "complete", "complete"]
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path / 'trials.sqlite'}")
    theirs = study.get_trials(deepcopy=False)
    assert [t.number for t in theirs] == list(range(6))
    assert [t.value for t in theirs] == [0.5, 0.7, None, 0.8, 0.75, 0.6]
    assert [t.params["lr"] for t in theirs] == [0.1, 0.01, 0.001] * 2
    assert "fail_reason" in theirs[2].user_attrs and theirs[4].user_attrs["generation"] == 1
    assert study.best_trial.number == 3
