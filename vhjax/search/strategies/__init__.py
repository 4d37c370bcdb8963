"""Search strategies: pure `init / ask / tell` over candidates in `[0, 1]^D`, minimizing.

`make_strategy(name, space, **kwargs)` builds one by name (`STRATEGIES.names()` lists them).
Importing this package registers: grid, random, quasi_random, genetic, regularized_evolution,
simulated_annealing, reinforce, bayesopt, tpe, nsga2 (Optuna; not jittable), cma_es, open_es,
snes (evosax), successive_halving, hyperband, asha (multi-fidelity) and pbt (not jittable).
Every one speaks the protocol of `base`: `ask(state, key, n) -> (state, Proposals)`,
`tell(state, proposals, fitness) -> (state, metrics)`.
"""

from vhjax.search.strategies import (  # noqa: F401  (imported to register)
    annealing,
    basic,
    bayesopt,
    bridges,
    evolution,
    multifidelity,
    pbt,
    reinforce,
)
from vhjax.search.strategies.base import (STRATEGIES, Proposals, SearchState, Strategy, best, make_strategy,
                                          register_strategy)

JITTABLE = ("grid", "random", "quasi_random", "genetic", "regularized_evolution",
            "simulated_annealing", "reinforce", "bayesopt", "cma_es", "open_es", "snes", "pso")

__all__ = ["STRATEGIES", "JITTABLE", "Proposals", "SearchState", "Strategy", "best", "make_strategy", "register_strategy"]
