"""Child processes for tests, forked from one preloaded fork server per test process.

Starting a fresh interpreter costs a child 2-4 s of imports (JAX, vhjax, Optuna's database layer,
orbax, scipy). multiprocessing's fork server imports them once, in a process that never starts
JAX's backend, and forks it for each child: each child is a new process, JAX-free until it runs,
that skipped those imports. Used by the fault-injection, storage, worker, CLI and preemption tests.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import NamedTuple

# what the child processes of the tests that fork them import (JAX among it), imported once by the server
FORKSERVER_PRELOAD = ("vhjax.search", "vhjax.search.tune", "vhjax.train", "vhjax.population.fit",
                      "vhjax.population.pbt", "vhjax.compilation_cache", "optuna.storages._rdb.models",
                      "alembic.command", "alembic.config", "alembic.migration", "alembic.script",  # Optuna's, lazily
                      "sqlalchemy.orm", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql.psycopg",
                      "orbax.checkpoint", "tensorboardX.proto.event_pb2", "tensorboardX.record_writer",
                      "scipy.stats", "tensorflow_datasets", "tests.datasets",  # ...and vhjax's, lazily
                      "tests.search.fault_scenarios")


def forkserver_context(*modules: str):
    """multiprocessing's fork server, preloaded with FORKSERVER_PRELOAD and `modules` (those of the
    processes' targets): one new interpreter imports them once and never starts JAX; each process is
    a fork of it, a fresh process that skips those seconds of imports. One server per test process:
    where it runs already it keeps what it was started with (a child imports what else it needs)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*FORKSERVER_PRELOAD, *modules])
    return context


def _redirect(out: str, err: str) -> None:
    """In a forked process: standard output to the file `out`, standard error to `err` (the same
    file: both in one), line by line."""
    for path, fd in ((out, 1), (err, 2)):
        with open(path, "a") as file:
            os.dup2(file.fileno(), fd)
    sys.stdout.reconfigure(line_buffering=True)


def _run_module(module: str, argv: list[str], out: str, err: str) -> None:
    """In the forked process: `python -m MODULE ARGV`, its standard output and error to files."""
    import runpy

    _redirect(out, err)
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def start_module(module: str, argv: list[str], out: str, err: str, *preload: str):
    """A started process that runs `python -m MODULE ARGV` (forked from the fork server; `preload`:
    more modules for the server, if this starts it), writing its output to the files `out` and `err`
    (created here, empty)."""
    for path in (out, err):
        open(path, "w").close()
    process = forkserver_context(*preload).Process(target=_run_module, args=(module, list(map(str, argv)), out, err))
    process.start()
    return process


class Ran(NamedTuple):
    returncode: int | None  # negative: killed by that signal; None: still running after the timeout (killed)
    stdout: str
    stderr: str


def run_module(module: str, argv: list, folder: Path, name: str, *preload: str, timeout: float = 600) -> Ran:
    """`python -m MODULE ARGV` run to its end in a forked process (see `start_module`), its output in
    `folder/NAME.out` and `folder/NAME.err`."""
    out, err = Path(folder) / f"{name}.out", Path(folder) / f"{name}.err"
    process = start_module(module, argv, str(out), str(err), *preload)
    process.join(timeout=timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        return Ran(None, out.read_text(), err.read_text())
    return Ran(process.exitcode, out.read_text(), err.read_text())


def _run_script(source: str, argv: list[str], environment: dict[str, str], output: str) -> None:
    """In the forked process: `python -c SOURCE ARGV` with `environment` set, its standard output and
    error (line by line) to the file `output`."""
    os.environ.update(environment)  # before JAX starts its backend (the fork server never did)
    _redirect(output, output)
    sys.argv = ["-c", *argv]
    exec(compile(source, "<forked script>", "exec"), {"__name__": "__main__"})


def start_script(source: str, argv: list[str], output, environment: dict[str, str] | None = None, *preload: str):
    """A started process that runs `python -c SOURCE ARGV` (forked from the fork server) with
    `environment` added to its variables (e.g. XLA_FLAGS), writing its output to the file `output`
    (created here, so a reader may poll it at once)."""
    open(output, "w").close()
    process = forkserver_context(*preload).Process(target=_run_script,
                                                   args=(source, list(map(str, argv)), dict(environment or {}),
                                                         str(output)))
    process.start()
    return process


def wait_for_text(output, text: str, process, timeout: float = 300) -> str:
    """The file `output` once it holds `text`, the process ended, or `timeout` seconds passed."""
    import time

    deadline = time.monotonic() + timeout
    while text not in open(output).read() and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return open(output).read()


def run_script(source: str, argv: list, environment: dict[str, str], output, timeout: float = 900) -> tuple[int, str]:
    """`python -c SOURCE ARGV` run to its end in a forked process (see `start_script`): its exit
    code (None if killed after `timeout` seconds) and its output."""
    process = start_script(source, argv, output, environment)
    process.join(timeout=timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        return None, open(output).read()
    return process.exitcode, open(output).read()
