"""`vhjax launch CONFIG [--dry-run] -- SCRIPT ARGS`: start an experiment on a TPU VM pod slice or
a Slurm GPU cluster, from a launch config in `tpu_configs/`.

A TPU config is a Python file whose `get_launch()` returns a dict:

    accelerator_type  'v4-32'           (gcloud's name: v4-8, v4-32, v5litepod-16, v5p-64, ...)
    runtime_version   'tpu-ubuntu2204-base'
    hosts, devices    4, 16             (TPU VM workers; JAX devices over all of them)
    mesh              'members=8,data=2' (members x data = devices; passed to the script as --mesh)
    population, batch_size               (the slice's population and per-member batch, as script flags)
    setup             [shell commands run on every worker once the slice is up]
    spot              True               (queued resource with spot capacity: may be preempted)
    name, zone, project, workdir         (defaults; the command line overrides them)

The commands, in order: create a queued resource (`gcloud compute tpus queued-resources create
... --spot`), wait until it is ACTIVE, run the setup on every worker, then start
`python -m vhjax.distributed SCRIPT ARGS` on every worker at once (`gcloud compute tpus tpu-vm ssh
NAME --worker=all --command=...`): each process joins the slice's JAX runtime (detected by JAX)
and runs the script. Preemption: the TPU sends SIGTERM, the training loop checkpoints into the
workdir (a bucket mounted on every worker) and exits 0; running the same launch again recreates
the slice and the script resumes from the checkpoint. `--dry-run` prints the commands only.

The script's arguments may name the config's values: `{mesh}`, `{population}`, `{batch_size}`,
`{workdir}`, `{devices}`, `{hosts}` are replaced (they are also exported as VHJAX_MESH, ...):

    vhjax launch tpu_configs/v4_32.py -- experiments/population_on_slice.py --mesh {mesh} \
        --population {population} --batch-size {batch_size} --workdir {workdir}
    vhjax launch tpu_configs/v4_8.py -- -m vhjax.cli train configs/mnist.py --mesh {mesh} --workdir {workdir}

A `.sbatch` file is a Slurm batch script: the command is `sbatch FILE SCRIPT ARGS`.
"""

from __future__ import annotations

import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REQUIRED = ("accelerator_type", "runtime_version", "hosts", "devices", "mesh", "population", "batch_size", "setup")
DEFAULTS = {"name": "vhjax", "zone": "us-central2-b", "project": None, "spot": True, "workdir": "/mnt/runs/vhjax",
            "repository": "~/vhjax"}


def load_config(path: str | Path) -> dict:
    """A TPU launch config (see the module docstring), checked: its mesh must cover its devices."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"launch config {str(path)!r} does not exist")
    namespace = runpy.run_path(str(path))
    if "get_launch" not in namespace:
        raise ValueError(f"launch config {str(path)!r} defines no get_launch()")
    config = {**DEFAULTS, **namespace["get_launch"]()}
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"launch config {str(path)!r} lacks {', '.join(missing)}")
    members, data = mesh_shape(config["mesh"])
    if members * data != config["devices"]:
        raise ValueError(f"launch config {str(path)!r}: mesh {config['mesh']!r} covers {members * data} devices; "
                         f"the slice {config['accelerator_type']} has {config['devices']}")
    if config["devices"] % config["hosts"]:
        raise ValueError(f"launch config {str(path)!r}: {config['devices']} devices do not divide over "
                         f"{config['hosts']} hosts")
    return config


def mesh_shape(text: str) -> tuple[int, int]:
    """(members, data) of 'members=M,data=D' (explicit sizes; no -1 in a launch config)."""
    sizes = dict(part.split("=", 1) for part in text.split(","))
    return int(sizes.get("members", 1)), int(sizes.get("data", 1))


def tpu_commands(config: dict, script: str, args: Sequence[str], *, name: str | None = None, zone: str | None = None,
                 project: str | None = None, workdir: str | None = None) -> list[list[str]]:
    """The commands that start `script args` on every worker of the config's slice (argv lists)."""
    name = name or config["name"]
    zone = zone or config["zone"]
    project = project or config["project"]
    workdir = workdir or config["workdir"]
    where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    create = ["gcloud", "compute", "tpus", "queued-resources", "create", f"{name}-qr", f"--node-id={name}",
              f"--accelerator-type={config['accelerator_type']}", f"--runtime-version={config['runtime_version']}",
              *where] + (["--spot"] if config["spot"] else [])
    wait = ["gcloud", "compute", "tpus", "queued-resources", "describe", f"{name}-qr", *where,
            "--format=value(state.state)"]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all"]
    setup = ssh + [f"--command={' && '.join(config['setup'])}"]
    values = {"mesh": config["mesh"], "population": config["population"], "batch_size": config["batch_size"],
              "workdir": workdir, "devices": config["devices"], "hosts": config["hosts"]}
    words = [str(part).format(**values) for part in [script, *args]]
    env = " ".join(f"VHJAX_{k.upper()}={shlex.quote(str(v))}" for k, v in values.items())
    run = f"cd {config['repository']} && {env} python -m vhjax.distributed " + " ".join(map(shlex.quote, words))
    return [create, wait, setup, ssh + [f"--command={run}"]]


def slurm_commands(path: Path, script: str, args: Sequence[str]) -> list[list[str]]:
    return [["sbatch", str(path), script, *args]]


def commands_for(path: str | Path, script: str, args: Sequence[str], **options: Any) -> list[list[str]]:
    path = Path(path)
    if path.suffix == ".sbatch":
        if not path.exists():
            raise FileNotFoundError(f"Slurm script {str(path)!r} does not exist")
        return slurm_commands(path, script, args)
    return tpu_commands(load_config(path), script, args, **options)


def render(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def run(path: str | Path, script: str, args: Sequence[str], *, dry_run: bool = False, poll_seconds: float = 30,
        **options: Any) -> int:
    """Print (`dry_run`) or run the launch commands; a TPU launch waits for the queued resource."""
    commands = commands_for(path, script, args, **options)
    for command in commands:
        print(render(command), flush=True)
        if dry_run:
            continue
        if command[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]:
            while (state := subprocess.run(command, capture_output=True, text=True).stdout.strip()) != "ACTIVE":
                print(f"queued resource state: {state or 'unknown'}; waiting", flush=True)
                time.sleep(poll_seconds)
            continue
        if command[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]:
            done = subprocess.run(command)
            if done.returncode:  # it may exist from an earlier launch (the rerun after a preemption)
                print("queued resource not created (it may exist already); continuing", flush=True)
            continue
        done = subprocess.run(command)
        if done.returncode:
            return done.returncode
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="vhjax launch")
    add_arguments(parser)
    return from_args(parser.parse_args(argv))


def add_arguments(parser: Any) -> None:
    parser.add_argument("config", help="a launch config (tpu_configs/v4_32.py) or a Slurm script (.sbatch)")
    parser.add_argument("script", help="the experiment script to run on every worker (after --)")
    parser.add_argument("args", nargs="*", help="the script's arguments")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--name", default=None, help="TPU name (default: the config's)")
    parser.add_argument("--zone", default=None)
    parser.add_argument("--project", default=None)
    parser.add_argument("--workdir", default=None, help="the run's folder on every worker (shared: a mounted bucket)")


def from_args(args: Any) -> int:
    options = {} if str(args.config).endswith(".sbatch") else {
        "name": args.name, "zone": args.zone, "project": args.project, "workdir": args.workdir}
    return run(args.config, args.script, args.args, dry_run=args.dry_run, **options)


if __name__ == "__main__":
    sys.exit(main())
