"""vhjax: populations of networks trained in one compiled program, and search over them."""

from __future__ import annotations

import importlib
from typing import Any

from vhjax import xla_flags as _xla_flags

_xla_flags.apply()  # before JAX starts a backend: XLA reads $XLA_FLAGS once

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "vhjax.config",
    "fit": "vhjax.population.fit",
}
_SUBMODULES = ("augment", "config", "data", "losses", "metrics", "models", "optim", "population", "preprocess",
               "regularizers", "search", "train")

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    """Import on first use, so `import vhjax` does not pay for JAX start-up until it is needed."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"vhjax.{name}")
    raise AttributeError(f"module 'vhjax' has no attribute {name!r}")
