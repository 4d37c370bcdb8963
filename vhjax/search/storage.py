"""The results store of a search: an Optuna study (trials, strategy state, metadata).

A search is stored through Optuna's RDB storage (`optuna.storages.RDBStorage`): in
`workdir/trials.sqlite`, in an SQLite file given as `storage=`, or in any database URL Optuna
speaks (`'postgresql://...'`, `'mysql://...'`, `'sqlite:///path'`). So `optuna.load_study`,
optuna-dashboard, `optuna.importance` and `optuna.visualization` read a vhjax search as it is.

- each vhjax trial is one Optuna trial: params with the distributions of the vhjax space,
  value(s) in the study's direction(s), state RUNNING / COMPLETE / FAIL; vhjax's own fields
  (unit-cube point, generation, slot, parent trial, fidelity, metrics) in the trial system
  attribute `vhjax:trial` (metrics and lineage also as user attributes, for the dashboard);
- the strategy state (msgpack bytes, base64) with the number of generations it has seen, and
  key/value metadata (the config fingerprint), are study system attributes.

Every write (a generation's new trials; its results with the new strategy state; PBT's rounds
replacing the study's trials) is ONE database transaction on Optuna's tables, so a process
killed at any point leaves it whole or absent. A new SQLite file is created whole (Optuna's
schema included) and linked into place, so an empty, foreign or damaged file (or a row that
cannot be read) is reported as `StoreDamaged` naming the file, never silently started over; a
server that cannot be reached is `StoreUnreachable`; a store of the pre-Optuna format (tables
`vhjax_trials`, ...) is `StoreOutdated`. SQLite writers take the write lock up front
(`BEGIN IMMEDIATE`) and wait for each other, so concurrent processes never lose a trial. Trial ids
are Optuna's trial ids (distinct across writers).

Strategy states are pytrees. `state_to_bytes` stores their leaves with msgpack
(NumPy arrays keep dtype and shape; typed PRNG keys are stored as key data);
`state_from_bytes` puts them back into the tree structure of a template, e.g.
`strategy.init(key)`, so no treedef is ever pickled.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import serialization

from vhjax import faults
from vhjax.search import optuna_study

TRIAL_STATUSES = ("running", "complete", "failed")
DEFAULT_STUDY = "default"
SQLITE_FILENAME = "trials.sqlite"
_BUSY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO messages off inside the block (its verbosity restored after)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class StoreDamaged(ValueError):
    """The SQLite file of a trial store is empty, not a database, or holds rows that cannot be read."""


class StoreUnreachable(ConnectionError):
    """The database server of a storage URL could not be reached."""


def damaged(location: str, detail: str) -> StoreDamaged:
    return StoreDamaged(
        f"the trial store {location!r} is damaged ({detail}); it cannot be read or resumed. Move it away "
        "(or delete it) to start the search again, or put back a good copy of it")


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial as stored: a candidate, where it came from and how it did."""

    trial_id: int
    generation: int
    slot: int
    params: dict[str, Any]
    u: tuple[float, ...]
    status: str
    fitness: float | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    fidelity: float | None = None
    parent_id: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    study: str = DEFAULT_STUDY


@dataclasses.dataclass(frozen=True)
class NewTrial:
    """A trial to insert (its id is given by the database)."""

    generation: int
    slot: int
    params: Mapping[str, Any]
    u: Sequence[float]
    status: str = "running"
    fitness: float | None = None
    metrics: Mapping[str, Any] | None = None
    fidelity: float | None = None
    parent_id: int | None = None


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """The outcome of a trial, written when its generation completes."""

    trial_id: int
    status: str
    fitness: float | None
    metrics: Mapping[str, Any]
    fidelity: float | None = None
    parent_id: int | None = None


def _check_status(status: str) -> None:
    if status not in TRIAL_STATUSES:
        raise ValueError(f"status must be one of {TRIAL_STATUSES}; got {status!r}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, jax.Array):
        return np.asarray(value).tolist()
    return str(value)


def to_json(value: Any) -> str:
    """JSON with NumPy/JAX values turned into Python ones (NaN kept as `NaN`)."""
    return json.dumps(value, default=_json_default, sort_keys=True)


def value_rows(trial_id: int, values: Sequence[float] | None) -> list[dict]:
    """A trial's rows of Optuna's value table, one per objective (none for no values)."""
    from optuna.storages._rdb import models

    rows = []
    for objective, value in enumerate(values or []):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        rows.append({"trial_id": int(trial_id), "objective": objective, "value": stored, "value_type": kind})
    return rows


def _finite_or_none(value: float | None) -> float | None:
    # SQLite stores NaN as NULL anyway; say so explicitly for every backend.
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- state


def state_to_bytes(state: Any) -> bytes:
    """Serialize the leaves of a pytree (arrays, scalars, typed PRNG keys) with msgpack."""
    leaves = []
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, (jax.Array, np.ndarray)):
            leaf = np.asarray(leaf)
        leaves.append(leaf)
    return serialization.msgpack_serialize({"leaves": leaves})


def state_from_bytes(data: bytes, template: Any) -> Any:
    """Rebuild a pytree with the structure (and leaf kinds) of `template` from `state_to_bytes`."""
    stored = serialization.msgpack_restore(data)["leaves"]
    template_leaves, treedef = jax.tree.flatten(template)
    if len(stored) != len(template_leaves):
        raise ValueError(
            f"stored strategy state has {len(stored)} leaves but the strategy's state has "
            f"{len(template_leaves)}; the workdir was written by a different strategy"
        )
    leaves = [_restore_leaf(value, like) for value, like in zip(stored, template_leaves)]
    return jax.tree.unflatten(treedef, leaves)


def _restore_leaf(value: Any, like: Any) -> Any:
    if isinstance(like, jax.Array):
        if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(np.asarray(value), impl=jax.random.key_impl(like))
        return jax.numpy.asarray(value)
    if isinstance(like, np.ndarray):
        return np.asarray(value)
    if isinstance(like, (bool, int, float, complex, str)) and not isinstance(like, np.generic):
        return type(like)(value)
    return value



# ----------------------------------------------------------------------------- the Optuna storage


def _is_locked_error(error: Exception) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _retry_locked(fn, timeout_s: float = _BUSY_TIMEOUT_S):
    """Run `fn()` again while SQLite reports a lock (beyond its own busy timeout)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return fn()
        except Exception as error:  # sqlite3.OperationalError or SQLAlchemy's wrapper
            if not _is_locked_error(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _causes(error: BaseException) -> list[BaseException]:
    """`error`, the driver error SQLAlchemy wraps (`.orig`) and what it was raised from, in order."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        original = getattr(current, "orig", None)
        if isinstance(original, BaseException) and original not in chain:
            chain.append(original)
        current = current.__cause__ or current.__context__
    return chain


def _is_connect_error(error: BaseException) -> bool:
    """True for a DBAPI error raised while connecting (refused, unknown host, timed out)."""
    text = " ".join(str(e) for e in _causes(error)).lower()
    return any(phrase in text for phrase in ("connection refused", "could not connect", "connection failed",
                                              "could not translate host", "timeout expired", "can't connect"))


def _clear_error(error: BaseException, path: str | None, location: str) -> Exception | None:
    """`StoreDamaged` / `StoreUnreachable` / ValueError for a driver error, or None (not ours to explain)."""
    for cause in _causes(error):
        if isinstance(cause, sqlite3.Error):
            text = str(cause)
            if isinstance(cause, sqlite3.OperationalError) and "decode" in text.lower():
                return damaged(location, f"unreadable row: {text}")
            if isinstance(cause, sqlite3.OperationalError) and "unable to open" in text.lower():
                return ValueError(f"cannot open the trial store {location!r} ({text}); allowed: a writable "
                                  "SQLite file path in an existing or creatable folder")
            if type(cause) is sqlite3.DatabaseError:  # 'file is not a database', 'malformed'
                return damaged(location, text)
            return None
    if path is None and _is_connect_error(error):
        first = next((str(e) for e in reversed(_causes(error)) if str(e).strip()), str(error))
        return StoreUnreachable(
            f"storage={location!r}: the database could not be reached ({first.strip().splitlines()[0][:200]}); "
            "check that its server is running and the URL's host, port, user and database are right")
    return None


@contextlib.contextmanager
def _guard(path: str | None, location: str) -> Iterator[None]:
    """Driver errors for a damaged SQLite file or an unreachable server made clear."""
    try:
        yield
    except (StoreDamaged, StoreUnreachable):
        raise
    except Exception as error:
        clear = _clear_error(error, path, location)
        if clear is None:
            raise
        raise clear from None


class StoreOutdated(ValueError):
    """A store written by vhjax before its studies were Optuna studies (tables `vhjax_trials`, ...)."""


def _outdated(location: str) -> StoreOutdated:
    return StoreOutdated(
        f"the trial store {location!r} was written by an older vhjax (tables vhjax_trials, "
        "vhjax_strategy_state, vhjax_meta); searches are now stored as Optuna studies and this store "
        "cannot be resumed. Rerun the search in a new workdir (or storage), or read the old file with "
        "the vhjax version that wrote it")


def _check_sqlite_file(path: str) -> None:
    """An existing SQLite file must be non-empty, a database, and not of the pre-Optuna format."""
    if not os.path.isfile(path):
        return
    if os.path.getsize(path) == 0:
        raise damaged(path, "the file is empty: 0 bytes")
    with _guard(path, path), contextlib.closing(sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S)) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "vhjax_trials" in names and "studies" not in names:
        raise _outdated(path)


def _rdb(url: str, memory: bool = False):
    """Optuna's `RDBStorage` for `url` (SQLite: a busy timeout; in memory: one shared connection)."""
    import optuna
    import sqlalchemy

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False}
        if memory:
            engine_kwargs["poolclass"] = sqlalchemy.pool.StaticPool
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _create_sqlite_file(path: str) -> None:
    """Create `path` with Optuna's schema in place, atomically (never replacing a file another process made)."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.new")
    if os.path.exists(temporary):
        os.unlink(temporary)
    storage = _rdb(f"sqlite:///{temporary}")
    storage.engine.dispose()
    with contextlib.closing(sqlite3.connect(temporary)) as db:
        db.execute("PRAGMA journal_mode=WAL").fetchall()
    try:
        os.link(temporary, path)  # fails if the file appeared meanwhile: then that one is used
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem
        if not os.path.exists(path):
            os.replace(temporary, path)
    finally:
        for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _configure_sqlite(engine) -> None:
    """WAL, busy timeout, and every transaction taking the write lock up front (`BEGIN IMMEDIATE`),
    so that concurrent writers wait for each other instead of failing."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        _retry_locked(lambda: cursor.execute("PRAGMA journal_mode=WAL").fetchall())
        cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna checked the schema go; new ones are configured


_SCHEMA_LOCK_ID = 0x76686A6178  # "vhjax": the advisory lock that serializes schema creation


def _open_url(url: str, location: str):
    """`RDBStorage` of a database URL; on PostgreSQL the schema is created under an advisory lock
    (CREATE TABLE races between processes opening a new database at once)."""
    import sqlalchemy

    if not url.startswith("postgresql"):
        return _rdb(url)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_ID})"))
            try:
                return _rdb(url)
            finally:
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_ID})"))
                connection.commit()
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- store

_STATES = {"running": "RUNNING", "complete": "COMPLETE", "failed": "FAIL"}
_STATUSES = {state: status for status, state in _STATES.items()}


def orm_session(engine: Any) -> Any:
    from sqlalchemy import orm

    return orm.Session(bind=engine)


def _plain(value: Any) -> Any:
    """JSON data (NumPy/JAX values as Python ones, NaN kept) as Optuna's attributes hold it."""
    return json.loads(to_json(value))


class TrialStore:
    """Trials, strategy state and metadata of one search: one Optuna study.

    Build it with `open_store`. Each vhjax trial is an Optuna trial (params with the space's
    distributions, value(s), state; vhjax's fields in the system attribute `vhjax:trial`); the
    strategy state and metadata are study system attributes. Every method is one database
    transaction, so a process killed at any point leaves each call's writes whole or absent. Safe
    for several processes writing at once.
    """

    def __init__(self, rdb: Any, study: str = DEFAULT_STUDY, location: str = "", *, path: str | None = None,
                 objectives: Mapping[str, str] | None = None, space: Any = None):
        self._rdb = rdb
        self.study = study
        self.location = location
        self.path = path
        self._distributions = optuna_study.distributions(space) if space is not None else {}
        with self._guard():
            self._study_id = _retry_locked(lambda: self._open_study(objectives))
            self._directions = len(self._rdb.get_study_directions(self._study_id))
            self._names = list(self._rdb.get_study_system_attrs(self._study_id).get(optuna_study.OBJECTIVES_ATTR, []))

    @property
    def storage(self) -> Any:
        """The Optuna storage (`optuna.load_study(study_name=store.study, storage=store.storage)`)."""
        return self._rdb

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return _guard(self.path, self.location)

    def _open_study(self, objectives: Mapping[str, str] | None) -> int:
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        wanted = [StudyDirection[d.upper()] for d in optuna_study.directions(objectives)]
        for _ in range(2):
            try:
                study_id = self._rdb.get_study_id_from_name(self.study)
            except KeyError:
                try:
                    with _quiet_optuna():  # Optuna logs "A new study created" at INFO; vhjax's progress says enough
                        study_id = self._rdb.create_new_study(wanted, self.study)
                except DuplicatedStudyError:
                    study_id = self._rdb.get_study_id_from_name(self.study)
            if objectives is None:
                return study_id
            attrs = self._rdb.get_study_system_attrs(study_id)
            blank = not self._n_trials(study_id) and not set(attrs) - {optuna_study.OBJECTIVES_ATTR}
            if self._rdb.get_study_directions(study_id) == wanted or not blank:
                break  # (other directions with trials or state: the fingerprint check refuses it)
            self._rdb.delete_study(study_id)  # created by a call that stored nothing: made anew
        if (blank or optuna_study.OBJECTIVES_ATTR not in attrs) and self._rdb.get_study_directions(study_id) == wanted:
            self._rdb.set_study_system_attr(study_id, optuna_study.OBJECTIVES_ATTR, list(objectives))
        return study_id

    @contextlib.contextmanager
    def _transaction(self, lock_study: bool = False) -> Iterator[Any]:
        """One SQLAlchemy session on Optuna's tables, committed whole (or rolled back)."""
        from optuna.storages._rdb import models
        from sqlalchemy import orm

        with self._guard():
            session = orm.Session(bind=self._rdb.engine)
            try:
                _retry_locked(session.connection)  # BEGIN (IMMEDIATE on SQLite)
                if lock_study:  # trial numbers are counted: one writer of this study at a time
                    models.StudyModel.find_or_raise_by_id(self._study_id, session, for_update=True)
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    # -- trials

    def add_trials(self, trials: Sequence[NewTrial]) -> list[int]:
        """Insert trials in one transaction; returns their new ids in order."""
        for trial in trials:
            _check_status(trial.status)
        now = time.time()
        with self._transaction(lock_study=True) as session:
            ids = self._insert_trials(session, trials, now, self._count(session))
            faults.point("store.add")
            return ids

    def replace_trials(self, generations: Sequence[Sequence[NewTrial]],
                       parents: Sequence[Sequence[int | None]] | None = None,
                       meta: Mapping[str, str] | None = None) -> list[list[int]]:
        """Replace every trial of the study by `generations` of finished trials, in ONE transaction.

        `parents[g][i]` is the position, in generation g - 1's list, of the trial that trial i of
        generation g continued (None: no parent); `meta` key/value pairs are written in the same
        transaction. A process killed here leaves the study exactly as it was before the call.
        """
        from optuna.storages._rdb import models

        for rows in generations:
            for trial in rows:
                _check_status(trial.status)
        now = time.time()
        with self._transaction(lock_study=True) as session:
            for model in session.query(models.TrialModel).filter(models.TrialModel.study_id == self._study_id):
                session.delete(model)
            session.flush()
            ids: list[list[int]] = []
            for index, rows in enumerate(generations):
                links = parents[index] if parents is not None else [None] * len(rows)
                previous = ids[-1] if ids else []
                linked = [dataclasses.replace(trial, parent_id=None if link is None else previous[link])
                          for trial, link in zip(rows, links)]
                ids.append(self._insert_trials(session, linked, now, sum(map(len, ids))))
            for key, value in (meta or {}).items():
                self._set_study_attr(session, optuna_study.META_PREFIX + key, value)
            faults.point("store.rounds")
            return ids

    def _values(self, status: str, fitness: float | None, metrics: Mapping[str, Any]) -> list[float] | None:
        """The Optuna value(s) of a finished trial: the fitness, or one metric per objective."""
        if status != "complete":
            return None
        raw = [fitness] if self._directions == 1 else [metrics.get(name) for name in self._names]
        if len(raw) != self._directions:
            return None
        try:
            values = [float(v) for v in raw]
        except (TypeError, ValueError):
            return None
        return values if all(math.isfinite(v) for v in values) else None

    def _count(self, session: Any) -> int:
        from optuna.storages._rdb import models

        return session.query(models.TrialModel).filter(models.TrialModel.study_id == self._study_id).count()

    def _insert_trials(self, session: Any, trials: Sequence[NewTrial], now: float, first_number: int) -> list[int]:
        """Trials, whole (rows of Optuna's tables), numbered from `first_number` in the study; their
        ids in order. The trials' rows are flushed together and the rows that hang off them (params,
        values, attributes) written as bulk inserts: a flush per trial with ORM objects for its rows
        cost 2 ms, 1.4 s of a 624-trial PBT run's storing."""
        import datetime

        import sqlalchemy
        from optuna.distributions import distribution_to_json
        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        started = datetime.datetime.fromtimestamp(now)
        added = [models.TrialModel(study_id=self._study_id, number=first_number + i, state=TrialState[_STATES[t.status]],
                                   datetime_start=started, datetime_complete=None if t.status == "running" else started)
                 for i, t in enumerate(trials)]
        session.add_all(added)
        session.flush()  # the trials' ids, in order
        ids = [int(model.trial_id) for model in added]
        rows: dict[Any, list[dict]] = {models.TrialParamModel: [], models.TrialValueModel: [],
                                       models.TrialUserAttributeModel: [], models.TrialSystemAttributeModel: []}
        for trial_id, trial in zip(ids, trials):
            fields = _plain({
                "generation": int(trial.generation), "slot": int(trial.slot), "params": dict(trial.params),
                "u": [float(x) for x in trial.u], "fitness": _finite_or_none(trial.fitness),
                "metrics": dict(trial.metrics or {}), "fidelity": _finite_or_none(trial.fidelity),
                "parent_id": None if trial.parent_id is None else int(trial.parent_id),
                "started_at": now, "finished_at": None if trial.status == "running" else now,
            })
            params, distributions = optuna_study.optuna_params(trial.params, self._distributions)
            rows[models.TrialParamModel] += [
                {"trial_id": trial_id, "param_name": name, "param_value": distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(distributions[name])} for name, value in params.items()]
            rows[models.TrialValueModel] += value_rows(trial_id, self._values(trial.status, fields["fitness"],
                                                                              fields["metrics"]))
            user_attrs = optuna_study.dashboard_attrs(fields)
            if trial.status == "failed":
                user_attrs["fail_reason"] = optuna_study.FAIL_REASON
            rows[models.TrialUserAttributeModel] += [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                                                     for key, value in user_attrs.items()]
            rows[models.TrialSystemAttributeModel].append(
                {"trial_id": trial_id, "key": optuna_study.TRIAL_ATTR, "value_json": json.dumps(fields)})
        for model, table_rows in rows.items():
            if table_rows:
                session.execute(sqlalchemy.insert(model), table_rows)
        return ids

    def finish_trials(
        self,
        results: Sequence[TrialResult],
        *,
        state: bytes | None = None,
        generation: int | None = None,
    ) -> None:
        """Record trial outcomes and (optionally) the strategy state, in ONE transaction.

        `generation` is the number of generations the saved `state` has been told. A trial's
        vhjax fields and user attributes are written first, its value(s) and state last.
        """
        import datetime

        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        if (state is None) != (generation is None):
            raise ValueError("pass both state and generation, or neither")
        for result in results:
            _check_status(result.status)
        now = time.time()
        with self._transaction() as session:
            ids = [int(result.trial_id) for result in results]
            trials = {m.trial_id: m for m in session.query(models.TrialModel).filter(
                models.TrialModel.trial_id.in_(ids), models.TrialModel.study_id == self._study_id)}
            system = {a.trial_id: a for a in session.query(models.TrialSystemAttributeModel).filter(
                models.TrialSystemAttributeModel.trial_id.in_(ids),
                models.TrialSystemAttributeModel.key == optuna_study.TRIAL_ATTR)}
            user = {(a.trial_id, a.key): a for a in session.query(models.TrialUserAttributeModel).filter(
                models.TrialUserAttributeModel.trial_id.in_(ids))}
            for result in results:
                model = trials.get(int(result.trial_id))
                if model is None:
                    raise KeyError(f"trial {result.trial_id} is not in study {self.study!r}")
                if model.state.is_finished():
                    raise ValueError(f"trial {result.trial_id} is already finished ({model.state.name})")
                attr = system[model.trial_id]
                fields = json.loads(attr.value_json)
                fields.update(_plain({"fitness": _finite_or_none(result.fitness), "metrics": dict(result.metrics),
                                      "finished_at": now}))
                if result.fidelity is not None and math.isfinite(result.fidelity):
                    fields["fidelity"] = float(result.fidelity)
                if result.parent_id is not None:
                    fields["parent_id"] = int(result.parent_id)
                attr.value_json = json.dumps(fields)
                user_attrs = optuna_study.dashboard_attrs(fields)
                if result.status == "failed":
                    user_attrs["fail_reason"] = optuna_study.FAIL_REASON
                for key, value in user_attrs.items():
                    if (model.trial_id, key) in user:
                        user[model.trial_id, key].value_json = json.dumps(value)
                    else:
                        session.add(models.TrialUserAttributeModel(trial_id=model.trial_id, key=key,
                                                                   value_json=json.dumps(value)))
                for row in value_rows(model.trial_id, self._values(result.status, fields["fitness"], fields["metrics"])):
                    session.add(models.TrialValueModel(**row))
                model.state = TrialState[_STATES[result.status]]  # written last: the trial's outcome
                model.datetime_complete = None if result.status == "running" else datetime.datetime.fromtimestamp(now)
            if state is not None:
                self._write_state(session, state, int(generation))
            faults.point("store.finish")

    def delete_trials(self, trial_ids: Sequence[int]) -> None:
        from optuna.storages._rdb import models

        with self._transaction() as session:
            for trial_id in trial_ids:
                model = session.get(models.TrialModel, int(trial_id))
                if model is not None and model.study_id == self._study_id:
                    session.delete(model)

    def trials(self, *, status: str | None = None, generation: int | None = None,
               ids: Sequence[int] | None = None) -> list[Trial]:
        """Trials of this study ordered by id, optionally filtered (trials Optuna added without
        vhjax's fields are left out). Reads the trials' states and `vhjax:trial` attributes only;
        with `ids`, only those trials' rows (a generation's, without reading the others)."""
        from optuna.storages._rdb import models

        if status is not None:
            _check_status(status)
        attr = models.TrialSystemAttributeModel
        with self._transaction() as session:
            try:
                query = session.query(models.TrialModel.trial_id, models.TrialModel.state, attr.value_json).join(
                    attr, attr.trial_id == models.TrialModel.trial_id).filter(
                    models.TrialModel.study_id == self._study_id, attr.key == optuna_study.TRIAL_ATTR)
                wanted = None if ids is None else {int(i) for i in ids}
                if wanted is not None:  # their id range in SQL (a generation's ids are consecutive), not a
                    low, high = min(wanted, default=0), max(wanted, default=-1)  # list: SQL bounds its length
                    query = query.filter(models.TrialModel.trial_id.between(low, high))
                rows = [row for row in query.order_by(models.TrialModel.trial_id) if wanted is None or row[0] in wanted]
            except LookupError as error:  # a state that is not one of Optuna's
                raise damaged(self.location, f"a trial cannot be read: {type(error).__name__}: "
                              f"{str(error)[:200]}") from None
        trials = []
        for trial_id, state, value in rows:
            try:
                trials.append(self._to_trial(trial_id, state, json.loads(value)))
            except (ValueError, TypeError, KeyError) as error:  # JSONDecodeError is a ValueError
                raise damaged(self.location, f"trial {trial_id!r} cannot be read: {type(error).__name__}: "
                              f"{str(error)[:200]}") from None
        return [t for t in trials if (status is None or t.status == status)
                and (generation is None or t.generation == int(generation))]

    def _to_trial(self, trial_id: int, state: Any, fields: Mapping[str, Any]) -> Trial:
        status = _STATUSES.get(state.name)
        if status is None:
            raise ValueError(f"state {state.name} is not one of {sorted(_STATUSES)}")
        params, u = fields["params"], fields["u"]
        if not isinstance(params, dict) or not isinstance(u, list):
            raise ValueError(f"params {params!r:.80} / u {u!r:.80} are not a JSON object / list")
        number = lambda key, kind: None if fields.get(key) is None else kind(fields[key])  # noqa: E731
        return Trial(trial_id=int(trial_id), generation=int(fields["generation"]), slot=int(fields["slot"]),
                     params=params, u=tuple(float(x) for x in u), status=status, fitness=number("fitness", float),
                     metrics=dict(fields.get("metrics") or {}), fidelity=number("fidelity", float),
                     parent_id=number("parent_id", int), started_at=fields.get("started_at"),
                     finished_at=fields.get("finished_at"), study=self.study)

    def count_trials(self) -> int:
        return self._n_trials(self._study_id)

    def _n_trials(self, study_id: int) -> int:
        """Trials of a study, counted without reading them (Optuna's `get_n_trials` reads them all)."""
        from optuna.storages._rdb import models

        with _guard(self.path, self.location), contextlib.closing(orm_session(self._rdb.engine)) as session:
            return int(session.query(models.TrialModel).filter(models.TrialModel.study_id == study_id).count())

    # -- strategy state

    def save_state(self, state: bytes, generation: int) -> None:
        with self._transaction() as session:
            self._write_state(session, state, int(generation))

    def _write_state(self, session: Any, state: bytes, generation: int) -> None:
        self._set_study_attr(session, optuna_study.STATE_ATTR,
                             {"generation": generation, "state": base64.b64encode(bytes(state)).decode("ascii")})

    def _set_study_attr(self, session: Any, key: str, value: Any) -> None:
        from optuna.storages._rdb import models

        study = models.StudyModel.find_or_raise_by_id(self._study_id, session)
        attr = models.StudySystemAttributeModel.find_by_study_and_key(study, key, session)
        if attr is None:
            session.add(models.StudySystemAttributeModel(study_id=self._study_id, key=key,
                                                         value_json=json.dumps(value)))
        else:
            attr.value_json = json.dumps(value)

    def _study_attrs(self) -> dict[str, Any]:
        with self._guard():
            try:
                return _retry_locked(lambda: self._rdb.get_study_system_attrs(self._study_id))
            except ValueError as error:  # JSONDecodeError
                raise damaged(self.location, f"a study attribute cannot be read: {str(error)[:200]}") from None

    def load_state(self) -> tuple[int, bytes] | None:
        """`(generations told, state bytes)` of the last saved state, or None."""
        saved = self._study_attrs().get(optuna_study.STATE_ATTR)
        if saved is None:
            return None
        try:
            return int(saved["generation"]), base64.b64decode(saved["state"], validate=True)
        except (TypeError, ValueError, KeyError) as error:  # binascii.Error is a ValueError
            raise damaged(self.location, f"the saved strategy state cannot be read ({type(error).__name__})") from None

    # -- metadata

    def get_meta(self, key: str) -> str | None:
        return self._study_attrs().get(optuna_study.META_PREFIX + key)

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as session:
            self._set_study_attr(session, optuna_study.META_PREFIX + key, value)

    def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store `value` unless the key exists; returns the stored value (atomic)."""
        from optuna.storages._rdb import models
        from sqlalchemy.exc import IntegrityError

        try:
            with self._transaction() as session:
                study = models.StudyModel.find_or_raise_by_id(self._study_id, session)
                attr = models.StudySystemAttributeModel.find_by_study_and_key(
                    study, optuna_study.META_PREFIX + key, session)
                if attr is not None:
                    return json.loads(attr.value_json)
                self._set_study_attr(session, optuna_study.META_PREFIX + key, value)
                return value
        except IntegrityError:  # another writer inserted it first (PostgreSQL, MySQL)
            return self.get_meta(key)

    def close(self) -> None:
        self._rdb.remove_session()
        self._rdb.engine.dispose()

    def __enter__(self) -> "TrialStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_database_url(storage: str) -> bool:
    return "://" in storage


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` names SQLAlchemy's default driver (psycopg2); when only psycopg 3 is
    installed (the `sql` extra), use it: `postgresql+psycopg://...`. Other URLs as given."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def check_storage(workdir: Any = None, storage: Any = None) -> None:
    """`storage` a database URL or an SQLite file path (not a directory); `workdir` a directory."""
    if storage is not None:
        if not isinstance(storage, (str, os.PathLike)):
            raise TypeError(f"storage must be a database URL or an SQLite file path; got {storage!r}")
        if not is_database_url(os.fspath(storage)) and os.path.isdir(storage):
            raise ValueError(f"storage={os.fspath(storage)!r} is a directory; allowed: a database URL or "
                             "an SQLite file path (pass a directory as workdir=)")
    if workdir is not None:
        if not isinstance(workdir, (str, os.PathLike)):
            raise TypeError(f"workdir must be a directory path; got {workdir!r}")
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise ValueError(f"workdir={os.fspath(workdir)!r} is a file; allowed: a directory")


def open_store(
    workdir: str | os.PathLike | None = None,
    storage: str | os.PathLike | None = None,
    *,
    study: str = DEFAULT_STUDY,
    objectives: Mapping[str, str] | None = None,
    space: Any = None,
) -> TrialStore:
    """Open (creating if needed) the store of a study: an Optuna study in Optuna's RDB storage.

    - `storage` a database URL (`'postgresql://user@host/db'`, `'sqlite:///path.sqlite'`);
    - `storage` a file path: that SQLite file;
    - else `workdir/trials.sqlite`;
    - neither: an in-memory SQLite database (nothing persists).

    `objectives` (name -> 'maximize'/'minimize') give a new study its Optuna directions (default
    one, maximized); `space` gives its parameters Optuna distributions.
    """
    if not isinstance(study, str) or not study:
        raise ValueError(f"study must be a non-empty string; got {study!r}")
    check_storage(workdir, storage)
    if storage is not None and is_database_url(os.fspath(storage)):
        import sqlalchemy

        url = sqlalchemy_url(os.fspath(storage))
        parsed = sqlalchemy.engine.make_url(url)
        on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        path = parsed.database if on_disk else None
        location = path or parsed.render_as_string(hide_password=True)
        if path is not None:
            return _open_sqlite_file(path, study, objectives, space, url=url)
        with _guard(None, location):
            rdb = _open_url(url, location)
            if sqlalchemy.inspect(rdb.engine).has_table("vhjax_trials") and study not in {
                    s.study_name for s in rdb.get_all_studies()}:
                raise _outdated(location)
        return TrialStore(rdb, study, location, objectives=objectives, space=space)
    if storage is not None:
        return _open_sqlite_file(os.fspath(storage), study, objectives, space)
    if workdir is not None:
        return _open_sqlite_file(os.path.join(os.fspath(workdir), SQLITE_FILENAME), study, objectives, space)
    with _guard(None, ":memory:"):
        rdb = _rdb("sqlite://", memory=True)
    return TrialStore(rdb, study, ":memory:", objectives=objectives, space=space)


def _open_sqlite_file(path: str, study: str, objectives: Any, space: Any, url: str | None = None) -> TrialStore:
    """A SQLite file, created whole when new; empty, damaged or old-format files refused (naming it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.exists(path):
        with _guard(path, path):
            _create_sqlite_file(path)
    _check_sqlite_file(path)
    with _guard(path, path):
        rdb = _rdb(url or f"sqlite:///{os.path.abspath(path)}")
        _configure_sqlite(rdb.engine)
    return TrialStore(rdb, study, path, path=path, objectives=objectives, space=space)
