"""Transfer learning: pretrained weights, mapping by layer path, fine-tuning modes, transfer masks and their
search, simulated annealing over weights, distillation, domain adaptation, self-supervised pretraining (see
docs/transfer.md)."""

from vhjax.transfer.adapt import AdaptResult, adapt, adda, select_member
from vhjax.transfer.annealing import AnnealResult, anneal
from vhjax.transfer.distill import DistillResult, Teacher, distill
from vhjax.transfer.masks import (MaskObjective, TransferMask, baseline_mask, exhaustive_table, fit_masked,
                                  mask_space, mask_units)
from vhjax.transfer.modes import (MODES, STATIC_MODES, fit_from, gradual_unfreezing, mode_config, mode_member,
                                  mode_scale, mode_start)
from vhjax.transfer.pretrain import PretrainResult, pretrain
from vhjax.transfer.reverse import reverse_validation
from vhjax.transfer.weights import TransferReport, layer_names, load_source, transfer_params

__all__ = ["AdaptResult", "AnnealResult", "DistillResult", "MODES", "MaskObjective", "PretrainResult", "Teacher",
           "TransferMask", "TransferReport", "adapt", "adda", "anneal", "baseline_mask", "distill", "exhaustive_table",
           "fit_from", "fit_masked", "gradual_unfreezing", "layer_names", "load_source", "mask_space", "mask_units",
           "mode_config", "mode_member", "mode_scale", "mode_start", "pretrain", "reverse_validation", "select_member",
           "STATIC_MODES", "transfer_params"]
