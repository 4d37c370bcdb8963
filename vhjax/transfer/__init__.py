"""Transfer learning: pretrained weights, mapping by layer path, fine-tuning modes (see docs/transfer.md)."""

from vhjax.transfer.modes import MODES, fit_from, gradual_unfreezing, mode_config
from vhjax.transfer.weights import TransferReport, layer_names, load_source, transfer_params

__all__ = ["MODES", "TransferReport", "fit_from", "gradual_unfreezing", "layer_names", "load_source", "mode_config",
           "transfer_params"]
