"""vhjax.search: spaces, strategies, persistent studies, and the `search` driver.

`vhjax.search(...)` and `vhjax.search.search(...)` are the same function: this module is callable.
"""

from __future__ import annotations

import sys
import types

from vhjax.search.driver import Candidates, SearchAborted, search
from vhjax.search.fidelity import search_multifidelity
from vhjax.search.pbt_replay import ReplayResult, replay_pbt
from vhjax.search.pbt_search import even_interval, search_pbt
from vhjax.search.pareto import crowding_distance, hypervolume_2d, non_dominated, pareto_front, pareto_ranks
from vhjax.search.report import load_result, write_report
from vhjax.search.results import SearchResult, TrialTable
from vhjax.search.space import (Boolean, Categorical, Conditional, Float, Int, Space, cnn_space, mlp_space,
                                nasbench201_space)
from vhjax.search.strategies import STRATEGIES, Proposals, Strategy, make_strategy, register_strategy
from vhjax.search.tabular import NASBench201
from vhjax.search.training import TrainingObjective, candidate_to_member
from vhjax.search.tune import TuneResult, tune

__all__ = ["Boolean", "Candidates", "Categorical", "Conditional", "Float", "Int", "NASBench201", "Proposals", "STRATEGIES",
           "SearchAborted", "SearchResult", "Space", "Strategy", "TrainingObjective", "TrialTable", "candidate_to_member",
           "cnn_space", "crowding_distance", "even_interval", "hypervolume_2d", "load_result", "make_strategy", "mlp_space", "nasbench201_space",
           "non_dominated", "pareto_front", "pareto_ranks", "register_strategy", "replay_pbt", "ReplayResult", "search", "search_multifidelity", "search_pbt",
           "TuneResult", "tune", "write_report"]


class _CallableModule(types.ModuleType):
    """Lets `vhjax.search(...)` call the driver while `vhjax.search.Space` etc. stay reachable."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
