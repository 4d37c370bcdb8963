"""Shared by the TPU launch configs: the setup every worker runs (see vhjax/launch.py)."""

GIT_URL = "https://github.com/YOUR_ORG/vhjax.git"  # the repository to install on every worker
BUCKET = "YOUR_BUCKET"  # a GCS bucket, mounted at /mnt/runs on every worker (checkpoints, logs)


def setup(jax_extra: str = "tpu") -> list[str]:
    """Install JAX for TPU and vhjax, mount the runs bucket; safe to run again (after a preemption)."""
    return [
        f"pip install -U 'jax[{jax_extra}]'",
        f"(test -d ~/vhjax && git -C ~/vhjax pull --ff-only || git clone {GIT_URL} ~/vhjax)",
        "pip install -e ~/vhjax",
        "sudo mkdir -p /mnt/runs && sudo chown $USER /mnt/runs",
        f"(mountpoint -q /mnt/runs || gcsfuse --implicit-dirs {BUCKET} /mnt/runs)",
    ]
