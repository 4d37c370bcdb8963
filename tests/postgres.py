"""A throwaway PostgreSQL server for the shared-storage tests, started from the Debian packages'
binaries (`initdb`, `pg_ctl`) on a Unix socket in a temporary folder; no network, no password.

When the binaries are missing the tests are skipped, except under CI (`CI=true`), where
`.ci/run` installs them: there a missing server is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ENV_URL = "VHJAX_TEST_POSTGRES_URL"  # use this server instead of starting one


def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _as_user(user: str | None) -> dict:
    """subprocess arguments that run a command as `user` (PostgreSQL refuses to run as root)."""
    if user is None:
        return {}
    record = pwd.getpwnam(user)
    return {"user": record.pw_uid, "group": record.pw_gid}


def start_server():
    """(url, stop) of a fresh server; raises RuntimeError with the reason when it cannot start."""
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; install the Debian package 'postgresql'")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="vhjax-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if user is not None:
        record = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, record.pw_uid, record.pw_gid)
    run = lambda *args: subprocess.run([str(binaries / args[0]), *args[1:]], check=True, capture_output=True,
                                       text=True, cwd=root, **_as_user(user))
    port = _free_port()
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run("pg_ctl", "-D", str(data), "-w", "-l", str(root / "server.log"), "-o",
            f"-k {sockets} -p {port} -c listen_addresses=''", "start")
        run("createdb", "-h", str(sockets), "-p", str(port), "-U", "postgres", "vhjax")
    except subprocess.CalledProcessError as error:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr.strip()[-500:]}") from None

    def stop() -> None:
        subprocess.run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       cwd=root, **_as_user(user))
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@/vhjax?host={sockets}&port={port}", stop


def new_database(server_url: str, name: str) -> str:
    """Create database `name` on the server and return its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server's maintenance database; skipped without PostgreSQL, failed
    under CI (`.ci/run` installs it)."""
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    try:
        url, stop = start_server()
    except RuntimeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the PostgreSQL tests: {error}")
        pytest.skip(str(error))
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's server, for one test."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return new_database(postgres_server, name)
