"""vhjax.compile_options: light programs compile with options this jaxlib knows, built lazily."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import compile_options
from vhjax.compile_options import light_jit

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_options_are_dropped_and_known_ones_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # the suite's flags name both options (left to the user)
    assert not compile_options.known_option("xla_no_such_option_anywhere", True)
    assert compile_options.known_option("xla_backend_optimization_level", 0)
    light, once = compile_options.light_options(), compile_options.light_options(run_once=True)
    assert set(light) <= set(compile_options.OLDER_CPU_EMITTERS) and once["xla_backend_optimization_level"] == 0
    assert set(once) == set(light) | {"xla_backend_optimization_level"}


def test_a_light_program_computes_what_jax_jit_computes():
    def step(x, scale):
        return jnp.tanh(x * scale).sum(axis=0), jnp.cumsum(x, axis=0)

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    light = light_jit(step, static_argnums=1)
    for got, want in zip(light(x, 2.0), jax.jit(step, static_argnums=1)(x, 2.0)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert light.__name__ == "step" and light.lower(x, 2.0).compile() is not None

    @light_jit(run_once=True)
    def once(x):
        return x * 2 + 1

    np.testing.assert_allclose(once(x), x * 2 + 1)


def test_a_light_program_inside_another_jitted_program_or_vmap_runs_without_its_options(monkeypatch):
    """JAX refuses compile options on a nested jit; the suite's XLA_FLAGS empty the light options, so
    they are forced here as a user's process has them."""
    monkeypatch.setattr(compile_options, "light_options", lambda run_once=False: {"xla_backend_optimization_level": 0})
    inner = light_jit(lambda x, scale: x * scale + 1, static_argnums=1)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(jax.jit(lambda x: inner(x, 3.0) * 2)(x), (x * 3 + 1) * 2)
    np.testing.assert_allclose(inner(x, 3.0), x * 3 + 1)  # alone: its own program with the options
    np.testing.assert_allclose(jax.vmap(lambda row: inner(row, 2.0))(x[:, None]), x[:, None] * 2 + 1)
    assert inner.jitted.lower(x, 3.0).compile() is not None


def test_importing_vhjax_does_not_start_jax():
    """The options are probed at a light program's first call: importing vhjax (whose modules
    define light programs) leaves JAX unstarted, so `use_cpu_devices` may still split the CPU."""
    child = subprocess.run([sys.executable, "-c", (
        "import vhjax, vhjax.population, vhjax.population.hooks, vhjax.search, vhjax.search.tune\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized()\n"
        "from vhjax.hardware import use_cpu_devices\n"
        "assert use_cpu_devices(3) == 3\n"
        "import jax; assert len(jax.devices()) == 3\n")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")})
    assert child.returncode == 0, child.stderr[-2000:]


def skip_without_the_emitters_option() -> None:
    if not compile_options.known_option("xla_cpu_use_fusion_emitters", False):
        pytest.skip("this jaxlib has no xla_cpu_use_fusion_emitters option (then it is dropped: tested above)")


def test_an_option_set_in_xla_flags_is_left_to_the_user(monkeypatch):
    name = "xla_cpu_use_fusion_emitters"
    for flags, named in [("--xla_cpu_use_fusion_emitters=true", True),
                         ("--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters", True),
                         ("--xla_cpu_use_fusion_emitters_elsewhere=1", False), ("", False)]:
        monkeypatch.setenv("XLA_FLAGS", flags)
        assert compile_options.set_by_user(name) is named, flags
        assert (name in compile_options.light_options()) is (not named and compile_options.known_option(name, False))


def test_plain_cnns_train_with_the_older_emitters_on_a_cpu(monkeypatch):
    """The training chunk of a zoo CNN gets the older emitters (a faster compile); an MLP's and a
    batch-normalised ResNet's keep XLA's default (their steps run slower with them); $XLA_FLAGS
    naming the option wins."""
    from vhjax.models import get_model

    monkeypatch.setenv("XLA_FLAGS", "")  # the suite sets the option for every program
    skip_without_the_emitters_option()
    cnn, cnn2d, mlp, resnet = (get_model(name) for name in ("mnist1d_cnn", "cnn2d", "mnist1d_mlp", "resnet1d"))
    for model in (cnn, cnn2d):
        assert compile_options.training_options(model) == {"xla_cpu_use_fusion_emitters": False}
    for model in (mlp, resnet):
        assert not compile_options.prefers_older_cpu_emitters(model)
        assert compile_options.training_options(model) == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert compile_options.training_options(cnn) == {}


def test_a_cnn_population_trains_alike_with_either_emitters(monkeypatch):
    """The options change how XLA compiles the chunk, not what it computes: the classifier runner
    (older emitters for this CNN) and a runner of the same step with the newer ones agree."""
    from vhjax.config import TrainConfig
    from vhjax.population import classifier_runner, init_population
    from vhjax.population.engine import PopulationRunner
    from vhjax.population.members import population_batch_indices
    from vhjax.train import build_task, make_train_step

    monkeypatch.setenv("XLA_FLAGS", "")
    skip_without_the_emitters_option()
    config = TrainConfig(dataset="digits", model="cnn2d", model_kwargs={"conv_layers": ((4, 3, 1, "SAME"),),
                                                                         "head_widths": (8,)},
                         dropout_rate=0.1, batch_size=16, steps=4, eval_every=4, seed=0)
    task = build_task(config)
    data = jax.tree.map(jnp.asarray, (task.train.x, task.train.y))
    older = classifier_runner(task)
    assert older.compiler_options == compile_options.training_options(task.model)
    newer = PopulationRunner(make_train_step(task), population_batch_indices(task),  # not the suite's flag
                             compiler_options={"xla_cpu_use_fusion_emitters": True})
    assert older.compiler_options == {"xla_cpu_use_fusion_emitters": False}
    trained = [runner(init_population(task, 2, {}), data, 4)[0].members.params for runner in (older, newer)]
    for got, want in zip(*map(jax.tree.leaves, trained)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ensemble_and_distillation_runners_choose_emitters_by_the_model(monkeypatch):
    """Ensembles and distilled students train the task's model with the classifier step, so their
    runners take the same choice as `classifier_runner`: the older emitters for a zoo CNN, none for an MLP."""
    from vhjax.config import TrainConfig
    from vhjax.ensemble.train import member_runner
    from vhjax.train import build_task
    from vhjax.transfer.distill import distill_runner

    monkeypatch.setenv("XLA_FLAGS", "")
    skip_without_the_emitters_option()
    for model, kwargs, want in [("cnn2d", {"conv_layers": ((4, 3, 1, "SAME"),), "head_widths": (8,)},
                                 {"xla_cpu_use_fusion_emitters": False}),
                                ("mlp", {"widths": (8,)}, {})]:
        task = build_task(TrainConfig(dataset="digits", model=model, model_kwargs=kwargs, batch_size=16, steps=4,
                                      eval_every=4, seed=0))
        assert member_runner(task, 2, "uniform", None).compiler_options == want, model
        assert distill_runner(task, 2).compiler_options == want, model


def test_pretraining_adaptation_and_annealing_runners_choose_emitters_by_the_model(monkeypatch):
    """The runners that train the task's model with networks of their own (a projection head, a
    domain discriminator) or anneal its weights take `classifier_runner`'s choice too."""
    import optax

    from vhjax.config import TrainConfig
    from vhjax.train import build_task
    from vhjax.transfer.adapt import Discriminator, adapt_runner, adda_optimizers, adda_runner
    from vhjax.transfer.annealing import anneal_runner
    from vhjax.transfer.pretrain import MLPHead, pretrain_runner

    monkeypatch.setenv("XLA_FLAGS", "")
    skip_without_the_emitters_option()
    for model, kwargs, want in [("cnn2d", {"conv_layers": ((4, 3, 1, "SAME"),), "head_widths": (8,)},
                                 {"xla_cpu_use_fusion_emitters": False}),
                                ("mlp", {"widths": (8,)}, {})]:
        task = build_task(TrainConfig(dataset="digits", model=model, model_kwargs=kwargs, batch_size=16, steps=4,
                                      eval_every=4, seed=0))
        weights = np.ones(len(task.train.x), np.float32)
        runners = {"pretrain": pretrain_runner(task, "head", "simclr", MLPHead((8,), 4), optax.scale_by_adam(), 2),
                   "adapt": adapt_runner(task, "head", Discriminator((8,)), optax.adam(1e-3), 32, weights, 2),
                   "adda": adda_runner(task, "head", Discriminator((8,)), adda_optimizers(1e-3), 32, 2, 1e-3),
                   "anneal": anneal_runner(task, lambda params, state: 0.0, "exponential", 4, 2)}
        for name, runner in runners.items():
            assert runner.compiler_options == want, (model, name)
