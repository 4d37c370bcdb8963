"""`vhjax launch`: the TPU configs' meshes cover their slices, and the dry run prints the exact commands."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from vhjax import cli, launch

CONFIGS = Path(__file__).resolve().parents[1] / "tpu_configs"

# accelerator type -> (JAX devices, TPU VM hosts): v4 and v5p count TensorCores (2 per chip, one
# JAX device per chip: megacore), v5e counts chips; 4 chips per host in multi-host slices
SLICES = {"v4-8": (4, 1), "v4-32": (16, 4), "v5litepod-16": (16, 4), "v5p-64": (32, 8)}


@pytest.mark.parametrize("name", ["v4_8", "v4_32", "v5e_16", "v5p_64"])
def test_each_config_mesh_matches_its_slice(name):
    config = launch.load_config(CONFIGS / f"{name}.py")
    devices, hosts = SLICES[config["accelerator_type"]]
    assert (config["devices"], config["hosts"]) == (devices, hosts)
    members, data = launch.mesh_shape(config["mesh"])
    assert members * data == devices
    assert config["population"] % members == 0  # no inert padding on a slice
    assert config["setup"] and config["spot"]


def test_dry_run_prints_the_exact_commands(capsys):
    code = cli.main(["launch", str(CONFIGS / "v4_32.py"), "--dry-run", "--project", "proj", "--",
                     "experiments/population_on_slice.py", "--mesh", "{mesh}", "--workdir", "{workdir}", "--steps", "100"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0] == ("gcloud compute tpus queued-resources create vhjax-v4-32-qr --node-id=vhjax-v4-32 "
                        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --zone=us-central2-b "
                        "--project=proj --spot")
    assert lines[1] == ("gcloud compute tpus queued-resources describe vhjax-v4-32-qr --zone=us-central2-b "
                        "--project=proj '--format=value(state.state)'")
    setup = shlex.split(lines[2])
    assert setup[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vhjax-v4-32", "--zone=us-central2-b",
                         "--project=proj", "--worker=all"]
    assert "pip install -e ~/vhjax" in setup[9] and setup[9].startswith("--command=")
    start = shlex.split(lines[3])
    assert start[:9] == setup[:9]
    assert start[9] == ("--command=cd ~/vhjax && VHJAX_MESH=members=8,data=2 VHJAX_POPULATION=32 VHJAX_BATCH_SIZE=256 "
                        "VHJAX_WORKDIR=/mnt/runs/v4_32 VHJAX_DEVICES=16 VHJAX_HOSTS=4 python -m vhjax.distributed "
                        "experiments/population_on_slice.py --mesh members=8,data=2 --workdir /mnt/runs/v4_32 "
                        "--steps 100")


def test_name_zone_workdir_override_and_no_spot(tmp_path):
    text = (CONFIGS / "v4_8.py").read_text().replace('"spot": True', '"spot": False')
    text = text.replace('with_name("_common.py")', f'parent.joinpath("{CONFIGS}", "_common.py")')
    (tmp_path / "ondemand.py").write_text(text)
    commands = launch.commands_for(tmp_path / "ondemand.py", "-m", ["vhjax.cli", "train", "c.py", "--workdir", "{workdir}"],
                                   name="mine", zone="europe-west4-a", workdir="/mnt/runs/x")
    create, _, _, start = map(launch.render, commands)
    assert "--spot" not in create and "--node-id=mine" in create and "--zone=europe-west4-a" in create
    assert "--project" not in create
    assert start.endswith("python -m vhjax.distributed -m vhjax.cli train c.py --workdir /mnt/runs/x'")


def test_a_mesh_that_does_not_cover_the_slice_is_refused(tmp_path):
    text = (CONFIGS / "v4_8.py").read_text().replace('"members=4,data=1"', '"members=2,data=1"')
    text = text.replace('with_name("_common.py")', f'parent.joinpath("{CONFIGS}", "_common.py")')
    (tmp_path / "bad.py").write_text(text)
    with pytest.raises(ValueError, match="covers 2 devices; the slice v4-8 has 4"):
        launch.load_config(tmp_path / "bad.py")
    assert cli.main(["launch", str(tmp_path / "bad.py"), "--dry-run", "--", "x.py"]) == 2


def test_slurm_script_dry_run_and_syntax(capsys):
    script = CONFIGS / "slurm_gpu.sbatch"
    assert cli.main(["launch", str(script), "--dry-run", "--", "experiments/population_on_slice.py", "--steps", "10"]) == 0
    assert capsys.readouterr().out.strip() == f"sbatch {script} experiments/population_on_slice.py --steps 10"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --signal=TERM@120" in text and "python -m vhjax.distributed" in text


def test_a_launch_waits_for_the_queued_resource_and_reuses_an_existing_one(monkeypatch, capsys):
    """Without --dry-run (gcloud replaced): a failed create (the resource exists: a rerun after a
    preemption) goes on, the describe is polled until ACTIVE, then setup and start run."""
    ran, states = [], iter(["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])

    class Done:
        def __init__(self, returncode=0, stdout=""):
            self.returncode, self.stdout = returncode, stdout

    def fake_run(command, **kwargs):
        ran.append(command[:5])
        if command[4] == "create":
            return Done(1)
        if command[4] == "describe":
            return Done(0, next(states) + "\n")
        return Done(0)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    monkeypatch.setattr(launch.time, "sleep", lambda seconds: None)
    assert launch.run(CONFIGS / "v4_8.py", "x.py", []) == 0
    assert [c[4] for c in ran] == ["create", "describe", "describe", "describe", "ssh", "ssh"]
    out = capsys.readouterr().out
    assert "not created (it may exist already)" in out and "queued resource state: PROVISIONING; waiting" in out
