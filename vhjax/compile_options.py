"""XLA compile options: light programs (evaluation, hook updates, PBT's copy, init) and training.

A search compiles one heavy program (the training chunk) and a handful of light ones that run
once or once a round and do little work. On a CPU, XLA's older fusion emitters compile those light
programs in 20-45% less time than its newer ones (MNIST-1D CNN search: each evaluation program
0.24 -> 0.15 s, the initialisation 0.25 -> 0.15 s), so every light program uses them (`light_jit`);
those that run once skip XLA's backend optimisation as well (`light_jit(..., run_once=True)`).

The training chunk (of the classifier runner, ensembles' members, distilled students, and the
pretraining, adaptation, ADDA and annealing runners) takes them only for a model whose class says
it trains as fast with them (`older_cpu_emitters = True`: the zoo's plain CNNs, `CNN1D` and
`CNN2D`; `training_options`): the paper CNN's compiles faster and `tune` reached Optuna TPE's best
10% sooner over 12 paired seeds, the digits 2-D CNN's 8% sooner. Others keep XLA's default: an
MLP's steps run 5-27% slower with the older emitters (paper MLP with dropout and augmentation, 16
members), which a short search wins back in compilation but a long run does not, and a
batch-normalised ResNet1D's 10% slower.

An option the user names in $XLA_FLAGS is left to the user. The options are probed once per
process with a tiny program and dropped where this jaxlib does not know them; other backends than
the CPU get none. Measurements:
experiments/README.md, "Light programs and a host-side PBT round" and sessions 50 and 53.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable

import jax
import numpy as np

# XLA CPU: the older (LLVM IR) fusion emitters instead of the MLIR-based ones
OLDER_CPU_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
# no backend optimisation: for programs that run once (the whole population's initialisation)
NO_BACKEND_OPTIMISATION = {"xla_backend_optimization_level": 0}


@functools.cache
def known_option(name: str, value: Any) -> bool:
    """Whether this jaxlib compiles with `name=value` (one tiny program, once per process)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
    except Exception:  # jaxlib: "No such compile option" (an XlaRuntimeError / JaxRuntimeError)
        return False
    return True


def set_by_user(name: str) -> bool:
    """Whether $XLA_FLAGS sets the option `name` (then vhjax does not override it per program)."""
    return re.search(rf"(^|\s)--{re.escape(name)}(=|\s|$)", os.environ.get("XLA_FLAGS", "")) is not None


def usable_options(wanted: dict[str, Any]) -> dict[str, Any]:
    """Those of `wanted` this jaxlib knows and $XLA_FLAGS does not set."""
    return {name: value for name, value in wanted.items() if not set_by_user(name) and known_option(name, value)}


def light_options(run_once: bool = False) -> dict[str, Any]:
    """The compile options of a light program (`run_once`: without backend optimisation too),
    those this jaxlib knows and $XLA_FLAGS leaves to vhjax."""
    return usable_options({**OLDER_CPU_EMITTERS, **(NO_BACKEND_OPTIMISATION if run_once else {})})


def prefers_older_cpu_emitters(model: Any) -> bool:
    """Whether `model`'s class says it trains as fast with the older emitters (`older_cpu_emitters`:
    the zoo's plain CNNs, `CNN1D` and `CNN2D`, measured so)."""
    return getattr(type(model), "older_cpu_emitters", False) is True


def training_options(model: Any) -> dict[str, Any]:
    """The compile options of a training chunk of `model`: on a CPU the older fusion emitters for
    a model that prefers them (a faster compile at the same step time), none otherwise."""
    if jax.default_backend() != "cpu" or not prefers_older_cpu_emitters(model):
        return {}
    return usable_options(OLDER_CPU_EMITTERS)


class LightJit:
    """`jax.jit(fun, compiler_options=light_options(run_once), **jit_kwargs)`, built at its first use
    (probing the options needs a backend, which must not start when vhjax is imported). Called with
    traced arguments (inside another jitted program) it is a plain `jax.jit` (`nested`)."""

    def __init__(self, fun: Callable, run_once: bool, jit_kwargs: dict):
        self.fun, self.run_once, self.jit_kwargs = fun, run_once, jit_kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self) -> Any:
        return jax.jit(self.fun, compiler_options=light_options(self.run_once), **self.jit_kwargs)

    def __call__(self, *args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
            return self.nested(*args, **kwargs)
        return self.jitted(*args, **kwargs)

    @functools.cached_property
    def nested(self) -> Any:
        """The jit used under a trace (inside another program, vmap or grad): without compile
        options, which JAX refuses on a nested jit; the outer program's options hold."""
        return jax.jit(self.fun, **self.jit_kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def light_jit(fun: Callable | None = None, *, run_once: bool = False, **jit_kwargs) -> Any:
    """`jax.jit` for a light program (usable as a decorator, with or without arguments)."""
    if fun is None:
        return functools.partial(light_jit, run_once=run_once, **jit_kwargs)
    return LightJit(fun, run_once, jit_kwargs)
