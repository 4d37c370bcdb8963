"""vhjax puts the XLA flags it needs in $XLA_FLAGS at import; without them a 2-layer LSTM population of 9
members hangs on a CPU (every thread of XLA's CPU client waits)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vhjax import xla_flags

ROOT = Path(__file__).resolve().parents[1]


def test_required_flags_are_added_and_the_users_own_values_kept():
    assert xla_flags.with_required("") == "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    assert xla_flags.with_required("--xla_force_host_platform_device_count=2") == (
        "--xla_force_host_platform_device_count=2 --xla_cpu_enable_concurrency_optimized_scheduler=false")
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    assert xla_flags.with_required(mine) == mine
    environ = {"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"}
    xla_flags.apply(environ)
    assert environ["XLA_FLAGS"].split() == ["--xla_cpu_use_fusion_emitters=false",
                                            "--xla_cpu_enable_concurrency_optimized_scheduler=false"]
    assert not xla_flags.names_flag("--xla_cpu_enable_concurrency_optimized_scheduler_other=1",
                                    "xla_cpu_enable_concurrency_optimized_scheduler")


def test_a_later_jaxlib_gets_the_flags_only_if_its_xla_defines_them(tmp_path, monkeypatch):
    """An unknown flag in $XLA_FLAGS aborts the process when JAX starts, so a jaxlib newer than the ones
    checked is asked first: its shared libraries must name every flag."""
    assert xla_flags.xla_knows(xla_flags.REQUIRED)  # the installed jaxlib, searched for real
    assert not xla_flags.xla_knows(["xla_cpu_no_such_flag_of_any_version"])
    knows, forgot, empty = tmp_path / "a.so", tmp_path / "b.so", tmp_path / "c.so"
    knows.write_bytes(b"\0" * 100 + b"xla_cpu_enable_concurrency_optimized_scheduler" + b"\0" * 10)
    forgot.write_bytes(b"\0" * 100 + b"xla_cpu_enable_other_scheduler")
    empty.write_bytes(b"")
    assert xla_flags.xla_knows(xla_flags.REQUIRED, [empty, forgot, knows])
    assert not xla_flags.xla_knows(xla_flags.REQUIRED, [empty, forgot, tmp_path / "missing.so"])
    for version, libraries, added in [((0, 11), [knows], True), ((0, 11), [forgot], False), ((0, 9), [knows], False),
                                      ((0, 10), [forgot], True)]:  # 0.10: checked, not asked
        monkeypatch.setattr(xla_flags, "jaxlib_version", lambda version=version: version)
        monkeypatch.setattr(xla_flags, "jaxlib_libraries", lambda libraries=libraries: libraries)
        environ = {"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"}
        xla_flags.apply(environ)
        assert xla_flags.names_flag(environ["XLA_FLAGS"], "xla_cpu_enable_concurrency_optimized_scheduler") == added, (
            version, libraries)


def test_a_two_layer_lstm_population_of_nine_members_finishes():
    """The child starts without the flag in its environment: importing vhjax must set it (before it, the
    chunk never returned: > 120 s against about 9 s)."""
    script = textwrap.dedent("""
        import numpy as np
        from vhjax.config import TrainConfig
        from vhjax.population import fit_population
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(128, 32, 1)).astype(np.float32), rng.integers(0, 4, 128).astype(np.int32)
        config = TrainConfig(dataset={"train": (x, y), "test": (x, y)}, model="lstm", eval_split="test",
                             model_kwargs={"num_layers": 2, "hidden_size": 32, "num_classes": 4},
                             batch_size=32, steps=4, eval_every=4)
        result = fit_population(config, [{"seed": s} for s in range(9)], verbose=False)
        print("trained", len(result.members))
    """)
    flags = " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                     if not flag.startswith("--xla_cpu_enable_concurrency_optimized_scheduler"))
    env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 9" in done.stdout
