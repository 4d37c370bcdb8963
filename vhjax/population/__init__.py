"""Populations: the one engine (any one-member step, vmapped, scanned, divergence isolated), the
one loop with hooks, and the entries built on them (fit, fit_population, fit_pbt, fit_kfold)."""

from vhjax.population.engine import (PopulationRunner, all_finite, default_member_group, keep_where,
                                     make_population_step)
from vhjax.population.exploit import (copy_members, get_member_hparams, perturb, resample,
                                      set_member_hparams, truncation_sources)
from vhjax.population.export import export_member
from vhjax.population.fit import FitResult, PopulationResult, bucket_members, fit, fit_population
from vhjax.population.hooks import best_members, early_stopping, keep_best, reduce_on_plateau
from vhjax.population.kfold import KFoldResult, fit_kfold
from vhjax.population.loop import Hook, LoopResult, Report, run_loop
from vhjax.population.members import (classifier_runner, fit_members, init_members, init_population, loss_runner, make_loss_step,
                                      make_population_eval, population_batch_indices, stepwise_batches)
from vhjax.population.pbt import PBTResult, exploit_and_explore, fit_pbt, pbt_hook
from vhjax.population.state import PopulationState, new_population

__all__ = ["FitResult", "Hook", "KFoldResult", "LoopResult", "PBTResult", "PopulationResult", "PopulationRunner",
           "PopulationState", "Report", "all_finite", "best_members", "bucket_members", "classifier_runner",
           "copy_members", "default_member_group", "early_stopping", "export_member", "exploit_and_explore", "fit", "fit_kfold", "fit_members",
           "fit_pbt", "fit_population", "get_member_hparams", "init_members", "init_population", "keep_best",
           "keep_where", "loss_runner", "make_loss_step", "make_population_eval", "make_population_step",
           "new_population", "pbt_hook", "perturb", "population_batch_indices", "reduce_on_plateau", "resample",
           "run_loop", "set_member_hparams", "stepwise_batches", "truncation_sources"]
