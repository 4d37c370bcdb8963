"""The results store of a search: trials and strategy state in SQL.

A workdir keeps its store in `workdir/trials.sqlite` (stdlib `sqlite3`, WAL
mode). A database URL (`'postgresql://...'`, `'sqlite:///path'`, ...) goes
through SQLAlchemy, an optional dependency imported only when a URL is given.

Three tables, every row tagged with a `study` name so that several searches can
share one database:

- `vhjax_trials`: one row per trial (candidate params as JSON, encoded vector,
  fidelity, metrics JSON, fitness, status in {running, complete, failed},
  timestamps, parent trial id, generation, slot in the generation);
- `vhjax_strategy_state`: the serialized strategy state after the last `tell`
  and the number of generations it has seen;
- `vhjax_meta`: key/value pairs (the config fingerprint of the study).

A new SQLite file is created whole (schema included) and linked into place, so an empty,
foreign or damaged file (or a row that cannot be read) is reported as `StoreDamaged` naming
the file, never silently started over.

Every write is one transaction. SQLite writers take the write lock up front
(`BEGIN IMMEDIATE`) and wait for each other (busy timeout), so concurrent
processes writing to one file never lose a trial. Ids come from the database
(autoincrement), so they are distinct across writers.

Strategy states are pytrees. `state_to_bytes` stores their leaves with msgpack
(NumPy arrays keep dtype and shape; typed PRNG keys are stored as key data);
`state_from_bytes` puts them back into the tree structure of a template, e.g.
`strategy.init(key)`, so no treedef is ever pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import time
from typing import Any, Iterator, Mapping, Protocol, Sequence

import jax
import numpy as np
from flax import serialization

from vhjax import faults

TRIAL_STATUSES = ("running", "complete", "failed")
DEFAULT_STUDY = "default"
SQLITE_FILENAME = "trials.sqlite"
_BUSY_TIMEOUT_S = 60.0


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


# ----------------------------------------------------------------------------- backends


class _Connection(Protocol):
    """What the store needs from a backend inside one transaction."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]: ...

    def insert(self, sql: str, params: Mapping[str, Any], id_column: str) -> int: ...


class _Backend(Protocol):
    dialect: str

    def transaction(self) -> contextlib.AbstractContextManager[_Connection]: ...

    def close(self) -> None: ...


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


class _SqliteConnection:
    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        return self._connection.execute(sql, dict(params or {})).fetchall()

    def insert(self, sql: str, params: Mapping[str, Any], id_column: str) -> int:
        return int(self._connection.execute(sql, dict(params)).lastrowid)


class _SqliteBackend:
    """stdlib sqlite3, WAL mode; each transaction takes the write lock up front.

    A new file is created whole (schema included) under a temporary name and linked into place, so
    a process killed while creating it never leaves an empty `trials.sqlite`: an empty, foreign or
    damaged file is therefore always reported (`StoreDamaged`, naming the file), never started over.
    """

    dialect = "sqlite"

    def __init__(self, path: str):
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if not os.path.exists(path):
                _create_sqlite_file(path)
            elif os.path.isfile(path) and os.path.getsize(path) == 0:
                raise damaged(path, "the file is empty: 0 bytes")
        with self._guard():
            self._connection = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            if path != ":memory:":
                _retry_locked(lambda: self._connection.execute("PRAGMA journal_mode=WAL").fetchall())
            self._connection.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            self._connection.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite3's errors for a damaged file turned into `StoreDamaged` naming it."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if "decode" in str(error).lower():  # a text column holding bytes that are not UTF-8
                raise damaged(self.path, f"unreadable row: {error}") from None
            if "unable to open" in str(error).lower():
                raise ValueError(f"cannot open the trial store {self.path!r} ({error}); allowed: a writable "
                                 "SQLite file path in an existing or creatable folder") from None
            raise
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:  # integrity, programming errors: not damage
                raise
            # 'file is not a database', 'database disk image is malformed'
            raise damaged(self.path, str(error)) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self._guard():
            _retry_locked(lambda: self._connection.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteConnection(self._connection)
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def close(self) -> None:
        self._connection.close()


def _create_sqlite_file(path: str) -> None:
    """Create `path` with the schema in place, atomically (never replacing a file another process made)."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.new")
    if os.path.exists(temporary):
        os.unlink(temporary)
    connection = sqlite3.connect(temporary)
    try:
        for statement in _schema("sqlite"):
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()
    try:
        os.link(temporary, path)  # fails if the file appeared meanwhile: then that one is used
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem
        if not os.path.exists(path):
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class _SqlAlchemyConnection:
    def __init__(self, connection, text, returning: bool):
        self._connection = connection
        self._text = text
        self._returning = returning

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        result = self._connection.execute(self._text(sql), dict(params or {}))
        return [tuple(row) for row in result] if result.returns_rows else []

    def insert(self, sql: str, params: Mapping[str, Any], id_column: str) -> int:
        if self._returning:
            result = self._connection.execute(self._text(f"{sql} RETURNING {id_column}"), dict(params))
            return int(result.scalar_one())
        return int(self._connection.execute(self._text(sql), dict(params)).lastrowid)


class _SqlAlchemyBackend:
    """Any database SQLAlchemy speaks (PostgreSQL, MySQL, SQLite files, ...).

    As with the stdlib store, a damaged SQLite file is a `StoreDamaged` naming the file (a new one is
    created whole first); a server that cannot be reached is a `StoreUnreachable` naming the URL
    (password masked).
    """

    def __init__(self, url: str):
        try:
            import sqlalchemy
        except ImportError as error:  # optional dependency
            raise ImportError(
                f"storage={url!r} is a database URL, which needs SQLAlchemy; install it with "
                "`pip install 'vhjax[sql]'` (or `pip install sqlalchemy`), or pass a workdir "
                "to use the built-in SQLite store"
            ) from error
        self._sqlalchemy = sqlalchemy
        connect_args = {}
        if url.startswith("sqlite"):
            connect_args = {"timeout": _BUSY_TIMEOUT_S}
        self._engine = sqlalchemy.create_engine(sqlalchemy_url(url), connect_args=connect_args)
        self.dialect = self._engine.dialect.name
        self.path = self._engine.url.database if self.dialect == "sqlite" else None
        if self.path in ("", ":memory:"):
            self.path = None
        self.location = self.path or self._engine.url.render_as_string(hide_password=True)
        if self.dialect == "sqlite":
            self._prepare_sqlite_file()
            self._configure_sqlite()

    def _prepare_sqlite_file(self) -> None:
        """Create a new file whole, as the stdlib store does; an empty one is damage, not a new store."""
        if self.path is None:
            return
        if not os.path.exists(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            _create_sqlite_file(self.path)
        elif os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise damaged(self.path, "the file is empty: 0 bytes")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """The driver's errors for a damaged SQLite file or an unreachable server made clear."""
        try:
            yield
        except self._sqlalchemy.exc.DBAPIError as error:
            clear = self._clear_error(error)
            if clear is None:
                raise
            raise clear from None

    def _clear_error(self, error) -> Exception | None:
        """`StoreDamaged` / `StoreUnreachable` for `error` (SQLAlchemy's wrapper), or None."""
        original = getattr(error, "orig", None)
        if self.path is not None and isinstance(original, sqlite3.DatabaseError):
            text = str(original)
            if isinstance(original, sqlite3.OperationalError) and "decode" in text.lower():
                return damaged(self.path, f"unreadable row: {text}")
            if type(original) is sqlite3.DatabaseError:  # not a database, malformed
                return damaged(self.path, text)
            return None
        if self.path is None and _is_connect_error(error):
            return StoreUnreachable(
                f"storage={self.location!r}: the database could not be reached "
                f"({str(original or error).strip().splitlines()[0][:200]}); check that its server is "
                "running and the URL's host, port, user and database are right")
        return None

    def _configure_sqlite(self) -> None:
        event = self._sqlalchemy.event

        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            if self._engine.url.database not in (None, "", ":memory:"):
                _retry_locked(lambda: cursor.execute("PRAGMA journal_mode=WAL").fetchall())
            cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            cursor.close()

        @event.listens_for(self._engine, "begin")
        def _on_begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        returning = bool(getattr(self._engine.dialect, "insert_returning", False))
        begin = lambda: self._engine.begin()  # noqa: E731
        with self._guard():
            context = _retry_locked(lambda: _entered(begin()))
            connection, manager = context
            try:
                yield _SqlAlchemyConnection(connection, self._sqlalchemy.text, returning)
            except BaseException as error:
                manager.__exit__(type(error), error, error.__traceback__)
                raise
            manager.__exit__(None, None, None)

    def close(self) -> None:
        self._engine.dispose()


def _is_connect_error(error: Exception) -> bool:
    """True for a DBAPI error raised while connecting (refused, unknown host, timed out)."""
    text = str(getattr(error, "orig", None) or error).lower()
    return any(phrase in text for phrase in ("connection refused", "could not connect", "connection failed",
                                              "could not translate host", "timeout expired", "can't connect"))


def _entered(manager):
    return manager.__enter__(), manager


_SCHEMA_TYPES = {
    # dialect: (autoincrement id column, blob type, double type)
    "sqlite": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "REAL"),
    "postgresql": ("BIGSERIAL PRIMARY KEY", "BYTEA", "DOUBLE PRECISION"),
    "mysql": ("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGBLOB", "DOUBLE"),
    "mariadb": ("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGBLOB", "DOUBLE"),
}


def _schema(dialect: str) -> list[str]:
    id_type, blob, double = _SCHEMA_TYPES.get(dialect, _SCHEMA_TYPES["postgresql"])
    return [
        f"""CREATE TABLE IF NOT EXISTS vhjax_trials (
            trial_id {id_type},
            study VARCHAR(255) NOT NULL,
            generation INTEGER NOT NULL,
            slot INTEGER NOT NULL,
            params TEXT NOT NULL,
            u TEXT NOT NULL,
            fidelity {double},
            metrics TEXT,
            fitness {double},
            status VARCHAR(16) NOT NULL,
            started_at {double} NOT NULL,
            finished_at {double},
            parent_id BIGINT)""",
        f"""CREATE TABLE IF NOT EXISTS vhjax_strategy_state (
            study VARCHAR(255) PRIMARY KEY,
            generation INTEGER NOT NULL,
            state {blob} NOT NULL,
            updated_at {double} NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS vhjax_meta (
            study VARCHAR(255) NOT NULL,
            meta_key VARCHAR(255) NOT NULL,
            meta_value TEXT NOT NULL,
            PRIMARY KEY (study, meta_key))""",
    ]


# ----------------------------------------------------------------------------- store

_SCHEMA_LOCK_ID = 0x76686A6178  # "vhjax": the advisory lock that serializes schema creation

_TRIAL_COLUMNS = (
    "trial_id, generation, slot, params, u, status, fitness, metrics, fidelity, parent_id, "
    "started_at, finished_at, study"
)


class TrialStore:
    """Trials, strategy state and metadata of one study in one database.

    Build it with `open_store`. Safe for several processes writing at once.
    """

    def __init__(self, backend: _Backend, study: str = DEFAULT_STUDY, location: str = ""):
        self._backend = backend
        self.study = study
        self.location = location
        _retry_locked(self._create_schema)

    def _create_schema(self) -> None:
        with self._backend.transaction() as db:
            if self._backend.dialect == "postgresql":
                # CREATE TABLE IF NOT EXISTS races between processes opening a new database at once
                # (a duplicate-key error on PostgreSQL's catalog): one creator at a time
                db.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})")
            for statement in _schema(self._backend.dialect):
                db.execute(statement)

    # -- trials

    def add_trials(self, trials: Sequence[NewTrial]) -> list[int]:
        """Insert trials in one transaction; returns their new ids in order."""
        now = time.time()
        with self._backend.transaction() as db:
            ids = [self._insert(db, trial, now) for trial in trials]
            faults.point("store.add")
            return ids

    def replace_trials(self, generations: Sequence[Sequence[NewTrial]],
                       parent_slots: Sequence[Sequence[int | None]] | None = None,
                       meta: Mapping[str, str] | None = None) -> list[list[int]]:
        """Replace every trial of the study by `generations` of finished trials, in ONE transaction.

        `parent_slots[g][i]` is the slot in generation g - 1 that trial i of generation g continued
        (None: no parent); `meta` key/value pairs are written in the same transaction. A process
        killed here leaves the study exactly as it was before the call.
        """
        now = time.time()
        with self._backend.transaction() as db:
            db.execute("DELETE FROM vhjax_trials WHERE study = :study", {"study": self.study})
            ids: list[list[int]] = []
            for index, rows in enumerate(generations):
                slots = parent_slots[index] if parent_slots is not None else [None] * len(rows)
                previous = ids[-1] if ids else []
                ids.append([self._insert(db, dataclasses.replace(
                    trial, parent_id=None if slot is None else previous[slot]), now)
                    for trial, slot in zip(rows, slots)])
            for key, value in (meta or {}).items():
                self._set_meta(db, key, value)
            faults.point("store.rounds")
            return ids

    def _insert(self, db: _Connection, trial: NewTrial, now: float) -> int:
        _check_status(trial.status)
        finished = None if trial.status == "running" else now
        return db.insert(
            "INSERT INTO vhjax_trials (study, generation, slot, params, u, status, fitness, "
            "metrics, fidelity, parent_id, started_at, finished_at) VALUES (:study, :generation, "
            ":slot, :params, :u, :status, :fitness, :metrics, :fidelity, :parent_id, :started_at, "
            ":finished_at)",
            {
                "study": self.study,
                "generation": int(trial.generation),
                "slot": int(trial.slot),
                "params": to_json(dict(trial.params)),
                "u": to_json([float(x) for x in trial.u]),
                "status": trial.status,
                "fitness": _finite_or_none(trial.fitness),
                "metrics": to_json(dict(trial.metrics or {})),
                "fidelity": _finite_or_none(trial.fidelity),
                "parent_id": None if trial.parent_id is None else int(trial.parent_id),
                "started_at": now,
                "finished_at": finished,
            },
            "trial_id",
        )

    def finish_trials(
        self,
        results: Sequence[TrialResult],
        *,
        state: bytes | None = None,
        generation: int | None = None,
    ) -> None:
        """Record trial outcomes and (optionally) the strategy state, in ONE transaction.

        `generation` is the number of generations the saved `state` has been told.
        """
        if (state is None) != (generation is None):
            raise ValueError("pass both state and generation, or neither")
        now = time.time()
        with self._backend.transaction() as db:
            for result in results:
                _check_status(result.status)
                db.execute(
                    "UPDATE vhjax_trials SET status = :status, fitness = :fitness, "
                    "metrics = :metrics, fidelity = COALESCE(:fidelity, fidelity), "
                    "parent_id = COALESCE(:parent_id, parent_id), finished_at = :finished_at "
                    "WHERE trial_id = :trial_id AND study = :study",
                    {
                        "status": result.status,
                        "fitness": _finite_or_none(result.fitness),
                        "metrics": to_json(dict(result.metrics)),
                        "fidelity": _finite_or_none(result.fidelity),
                        "parent_id": None if result.parent_id is None else int(result.parent_id),
                        "finished_at": now,
                        "trial_id": int(result.trial_id),
                        "study": self.study,
                    },
                )
            if state is not None:
                self._write_state(db, state, int(generation), now)
            faults.point("store.finish")

    def delete_trials(self, trial_ids: Sequence[int]) -> None:
        with self._backend.transaction() as db:
            for trial_id in trial_ids:
                db.execute(
                    "DELETE FROM vhjax_trials WHERE trial_id = :trial_id AND study = :study",
                    {"trial_id": int(trial_id), "study": self.study},
                )

    def trials(self, *, status: str | None = None, generation: int | None = None) -> list[Trial]:
        """Trials of this study ordered by id, optionally filtered."""
        where, params = ["study = :study"], {"study": self.study}
        if status is not None:
            _check_status(status)
            where.append("status = :status")
            params["status"] = status
        if generation is not None:
            where.append("generation = :generation")
            params["generation"] = int(generation)
        sql = f"SELECT {_TRIAL_COLUMNS} FROM vhjax_trials WHERE {' AND '.join(where)} ORDER BY trial_id"
        with self._backend.transaction() as db:
            rows = db.execute(sql, params)
        trials = []
        for row in rows:
            try:
                trials.append(_row_to_trial(row))
            except (ValueError, TypeError, KeyError) as error:  # JSONDecodeError is a ValueError
                raise damaged(self.location, f"trial row {row[0]!r} cannot be read: {type(error).__name__}: "
                              f"{str(error)[:200]}") from None
        return trials

    def count_trials(self) -> int:
        with self._backend.transaction() as db:
            rows = db.execute(
                "SELECT COUNT(*) FROM vhjax_trials WHERE study = :study", {"study": self.study}
            )
        return int(rows[0][0])

    # -- strategy state

    def save_state(self, state: bytes, generation: int) -> None:
        with self._backend.transaction() as db:
            self._write_state(db, state, int(generation), time.time())

    def _write_state(self, db: _Connection, state: bytes, generation: int, now: float) -> None:
        params = {"study": self.study, "generation": generation, "state": state, "now": now}
        exists = db.execute(
            "SELECT 1 FROM vhjax_strategy_state WHERE study = :study", {"study": self.study}
        )
        if exists:
            db.execute(
                "UPDATE vhjax_strategy_state SET generation = :generation, state = :state, "
                "updated_at = :now WHERE study = :study",
                params,
            )
        else:
            db.execute(
                "INSERT INTO vhjax_strategy_state (study, generation, state, updated_at) "
                "VALUES (:study, :generation, :state, :now)",
                params,
            )

    def load_state(self) -> tuple[int, bytes] | None:
        """`(generations told, state bytes)` of the last saved state, or None."""
        with self._backend.transaction() as db:
            rows = db.execute(
                "SELECT generation, state FROM vhjax_strategy_state WHERE study = :study",
                {"study": self.study},
            )
        if not rows:
            return None
        generation, state = rows[0]
        return int(generation), bytes(state)

    # -- metadata

    def get_meta(self, key: str) -> str | None:
        with self._backend.transaction() as db:
            rows = db.execute(
                "SELECT meta_value FROM vhjax_meta WHERE study = :study AND meta_key = :key",
                {"study": self.study, "key": key},
            )
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._backend.transaction() as db:
            self._set_meta(db, key, value)

    def _set_meta(self, db: _Connection, key: str, value: str) -> None:
        params = {"study": self.study, "key": key, "value": value}
        db.execute("DELETE FROM vhjax_meta WHERE study = :study AND meta_key = :key", params)
        db.execute("INSERT INTO vhjax_meta (study, meta_key, meta_value) VALUES (:study, :key, :value)", params)

    def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store `value` unless the key exists; returns the stored value (atomic)."""
        with self._backend.transaction() as db:
            rows = db.execute(
                "SELECT meta_value FROM vhjax_meta WHERE study = :study AND meta_key = :key",
                {"study": self.study, "key": key},
            )
            if rows:
                return rows[0][0]
            db.execute(
                "INSERT INTO vhjax_meta (study, meta_key, meta_value) VALUES (:study, :key, :value)",
                {"study": self.study, "key": key, "value": value},
            )
            return value

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "TrialStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _row_to_trial(row: tuple) -> Trial:
    (trial_id, generation, slot, params, u, status, fitness, metrics, fidelity, parent_id,
     started_at, finished_at, study) = row
    if status not in TRIAL_STATUSES:
        raise ValueError(f"status {status!r} is not one of {TRIAL_STATUSES}")
    params, u = json.loads(params), json.loads(u)
    if not isinstance(params, dict) or not isinstance(u, list):
        raise ValueError(f"params {params!r:.80} / u {u!r:.80} are not a JSON object / list")
    return Trial(
        trial_id=int(trial_id),
        generation=int(generation),
        slot=int(slot),
        params=params,
        u=tuple(float(x) for x in u),
        status=status,
        fitness=None if fitness is None else float(fitness),
        metrics=json.loads(metrics) if metrics else {},
        fidelity=None if fidelity is None else float(fidelity),
        parent_id=None if parent_id is None else int(parent_id),
        started_at=started_at,
        finished_at=finished_at,
        study=study,
    )


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
) -> TrialStore:
    """Open (creating if needed) the store of a study.

    - `storage` a database URL (`'postgresql://user@host/db'`, `'sqlite:///path.sqlite'`):
      SQLAlchemy;
    - `storage` a file path: that SQLite file (stdlib);
    - else `workdir/trials.sqlite` (stdlib);
    - neither: an in-memory SQLite database (nothing persists).
    """
    if not isinstance(study, str) or not study:
        raise ValueError(f"study must be a non-empty string; got {study!r}")
    check_storage(workdir, storage)
    if storage is not None:
        storage = os.fspath(storage)
        if is_database_url(storage):
            backend = _SqlAlchemyBackend(storage)
            return TrialStore(backend, study, backend.location)
        return TrialStore(_SqliteBackend(storage), study, storage)
    if workdir is not None:
        path = os.path.join(os.fspath(workdir), SQLITE_FILENAME)
        return TrialStore(_SqliteBackend(path), study, path)
    return TrialStore(_SqliteBackend(":memory:"), study, ":memory:")
