"""Populations: one member's step, vmapped; per-member hyperparameters and architectures;
divergence isolation; exploit/explore primitives; buckets of equal shapes; sharding."""

from vhjax.population.custom import CustomPopulation, fit_custom, init_custom_population, make_custom_step
from vhjax.population.engine import (init_population, make_isolated_step, make_population_eval,
                                     make_population_step, population_batch_indices)
from vhjax.population.exploit import (copy_members, get_member_hparams, perturb, resample,
                                      set_member_hparams, truncation_sources)
from vhjax.population.fit import PopulationResult, bucket_members, fit_population
from vhjax.population.kfold import KFoldResult, fit_kfold
from vhjax.population.runner import make_population_runner
from vhjax.population.pbt import PBTResult, exploit_and_explore, fit_pbt
from vhjax.population.state import PopulationState

__all__ = ["CustomPopulation", "KFoldResult", "fit_custom", "init_custom_population", "make_custom_step", "PBTResult", "fit_kfold", "PopulationResult", "exploit_and_explore", "fit_pbt", "PopulationState", "bucket_members", "copy_members", "fit_population",
           "get_member_hparams", "init_population", "make_isolated_step", "make_population_eval",
           "make_population_runner", "make_population_step", "population_batch_indices", "perturb", "resample", "set_member_hparams", "truncation_sources"]
