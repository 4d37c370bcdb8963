"""Attributions, sanity checks, adversarial attacks and figures; pure functions over batches and members."""

from vhjax.inspect.attacks import fgsm, pgd, project, robust_accuracy, robust_accuracy_curve
from vhjax.inspect.attributions import (METHODS, gradient_x_input, integrated_gradients, occlusion, over_members,
                                        rank_correlation, smoothgrad, target_score, vanilla_gradients)
from vhjax.inspect.sanity import cascading_randomization, model_randomization_check, permuted_labels

__all__ = ["METHODS", "cascading_randomization", "fgsm", "gradient_x_input", "integrated_gradients",
           "model_randomization_check", "occlusion", "over_members", "permuted_labels", "pgd", "project",
           "rank_correlation", "robust_accuracy", "robust_accuracy_curve", "smoothgrad", "target_score",
           "vanilla_gradients"]
