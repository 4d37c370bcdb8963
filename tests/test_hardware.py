"""vhjax.hardware: the CPU split into one JAX device per core, and a search sharded over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.xla_flags import xla_flags
from vhjax import hardware

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from vhjax.hardware import use_cpu_devices, user_cpu_device_count
assert user_cpu_device_count() is None
assert use_cpu_devices(2) == 2
import jax
assert len(jax.devices()) == 2
assert use_cpu_devices(2) == 2  # the same count again: nothing to change
try:
    use_cpu_devices(3)
    raise SystemExit("a different count after JAX started did not raise")
except RuntimeError as error:
    message = str(error)
from tests.search.test_tune import CONFIG, SPACE
from vhjax.search.tune import tune
result = tune(CONFIG, SPACE, trials=6, population=4, min_steps=12, mesh="auto", verbose=False)
rows = [(row["trial"], row["state"], row["value"], row["steps"]) for row in result.timeline]
print(json.dumps({"message": message, "rows": rows}))
"""


def test_bad_counts_are_refused_by_name():
    for bad in (0, -2, 1.5, True, "all"):
        with pytest.raises(ValueError, match="count has value .*allowed: a positive int or 'auto'"):
            hardware.use_cpu_devices(bad)


def test_auto_keeps_a_count_the_user_set(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=5")
    assert hardware.user_cpu_device_count() == 5
    monkeypatch.setenv("XLA_FLAGS", "")
    assert hardware.user_cpu_device_count() is None
    assert hardware.cpu_cores() >= 1


def test_a_search_on_two_cpu_devices_matches_one_device():
    """tune's members sharded over two CPU devices train exactly the trials one device trains."""
    from tests.search.test_tune import CONFIG, SPACE
    from vhjax.search.tune import tune

    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags()}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    sharded = json.loads(child.stdout.strip().splitlines()[-1])
    assert "already runs with 2 CPU device(s)" in sharded["message"] and "JAX_NUM_CPU_DEVICES=3" in sharded["message"]
    single = tune(CONFIG, SPACE, trials=6, population=4, min_steps=12, mesh=None, verbose=False)
    rows = [(row["trial"], row["state"], row["value"], row["steps"]) for row in single.timeline]
    assert [r[:2] + r[3:] for r in rows] == [tuple(r[:2] + r[3:]) for r in sharded["rows"]]
    assert [r[2] for r in rows] == pytest.approx([r[2] for r in sharded["rows"]], abs=1e-6)
    assert {r[1] for r in rows} >= {"COMPLETE", "PRUNED"}
