"""Ensembles built from populations: combination rules, the `Ensemble` model, ensembles trained in one
program (deep ensembles, bagging, boosting, snapshots, adversarial training per epsilon), and feature
ensembles (a sparse classifier on the members' features: `vhjax.ensemble.features`)."""

from vhjax.ensemble.combine import (RULES, average, caruana_selection, check_member_probs, check_weights, combine_probs,
                                    fit_stacking, fit_weights, majority_vote, member_scores, soft_vote,
                                    stacking_predict, weighted_average)
from vhjax.ensemble.features import (ensemble_features, feature_ensemble_predict, fit_feature_ensemble,
                                     group_features, key_features, member_shares)
from vhjax.ensemble.members import (MemberGroup, group_logits, groups_from_population, mc_dropout_probs,
                                    members_from_search)
from vhjax.ensemble.model import Ensemble
from vhjax.ensemble.stacking import stack_kfold
from vhjax.ensemble.train import (Trained, adversarial_training, bagging, boosting, bootstrap_tables, cosine_cycles,
                                  deep_ensemble, snapshot_ensemble, train_members)

__all__ = ["RULES", "Ensemble", "MemberGroup", "Trained", "adversarial_training", "average", "bagging", "boosting",
           "bootstrap_tables", "caruana_selection", "check_member_probs", "check_weights", "combine_probs",
           "cosine_cycles", "deep_ensemble", "ensemble_features", "feature_ensemble_predict", "fit_feature_ensemble",
           "fit_stacking", "group_features", "key_features", "member_shares", "fit_weights", "group_logits",
           "groups_from_population", "majority_vote", "mc_dropout_probs", "member_scores", "members_from_search",
           "snapshot_ensemble", "soft_vote", "stack_kfold", "stacking_predict", "train_members", "weighted_average"]
