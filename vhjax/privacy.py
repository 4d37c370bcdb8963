"""Differential privacy of DP-SGD training: the (epsilon, delta) a member spent, and the noise a
target epsilon needs.

DP-SGD itself is a config setting (`TrainConfig(dp_clip_norm=C, noise_multiplier=s)`): each
example's gradient is clipped to L2 norm C and Gaussian noise of std s*C is added to their sum
(Abadi et al. 2016, "Deep Learning with Differential Privacy"; `vhjax.train.step.private_gradients`).
Both are per-member hyperparameters, so one program trains members of different privacy, and a
member with `dp_clip_norm=0` is the non-private baseline beside them.

The accounting is Google's `dp_accounting` (`pip install "vhjax[privacy]"`): each step is a Gaussian
mechanism of std s on a batch drawn with rate q = batch_size / train_size, composed over the steps
the member trained. The accountants assume Poisson sampling of each batch; vhjax's batches are
slices of one shuffled order per epoch, and like Opacus and TensorFlow Privacy the numbers reported
here are the Poisson accountant's for q (for shuffled batches that is a convention, not a proof:
Chua et al. 2024, "How Private are DP-SGD Implementations?"). Picking the best of several private
members spends more privacy than any one of them (Papernot & Steinke 2022); the numbers are per member.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from vhjax.validation import check_choice, check_int, check_number

# why population based training refuses DP-SGD configs
NOT_FOR_PBT = ("PBT copies weights between members, so one member's epsilon does not cover the training its "
               "weights carry")
ACCOUNTANTS = ("rdp", "pld")  # Renyi DP (Mironov 2017) or privacy loss distributions (tighter, slower)


def refuse_own_step(config: Any, entry: str) -> None:
    """Refuse a DP-SGD config in an entry point (`entry`) that trains with a step of its own: the
    per-example clipping and noise live in the classifier step (`fit`, `fit_population`, searches,
    `fit_from`, `fit_masked`, `distill`, bagging, boosting, snapshots), so there its members would
    train without them while their records claimed an epsilon."""
    if getattr(config, "dp_clip_norm", None) is not None:
        raise ValueError(f"config field 'dp_clip_norm' has value {config.dp_clip_norm!r}; allowed: None for {entry}, "
                         "which trains with its own step (DP-SGD is the classifier step's: fit, fit_population, "
                         "searches, fit_from, fit_masked, distill, bagging, boosting, snapshots)")


def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("privacy accounting needs the dp_accounting package: pip install \"vhjax[privacy]\" "
                          "(or pip install dp-accounting)") from error
    absl_logger = logging.getLogger("absl")
    if _quiet_orders not in absl_logger.filters:
        absl_logger.addFilter(_quiet_orders)
    return dp_accounting


def _quiet_orders(record: logging.LogRecord) -> bool:
    """Drop the RDP accountant's notes that a low Renyi order did not converge: that order is
    left out of the minimum over orders, the epsilon stays valid, and each call logged dozens."""
    return "failed to converge" not in record.getMessage()


def require_accounting() -> None:
    """Raise ImportError now (before training) if `dp_accounting` is missing."""
    _dp_accounting()


def _accountant(name: str) -> Any:
    dp_accounting = _dp_accounting()
    return dp_accounting.rdp.RdpAccountant() if name == "rdp" else dp_accounting.pld.PLDAccountant()


def _training_event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    dp_accounting = _dp_accounting()
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _check(noise_multiplier: float | None, sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if noise_multiplier is not None:
        check_number("noise_multiplier", noise_multiplier, 0.0)
    check_number("sample_rate", sample_rate, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_int("steps", steps, 0)
    check_number("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_choice("accountant", accountant, ACCOUNTANTS)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5,
            accountant: str = "rdp") -> float:
    """The epsilon of `steps` DP-SGD steps with noise `noise_multiplier` (std over the clip norm)
    on batches sampled at `sample_rate` (batch size / training examples), at `delta`.
    inf for noise 0 (no privacy); 0 for 0 steps."""
    _check(noise_multiplier, sample_rate, steps, delta, accountant)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    spent = _accountant(accountant)
    spent.compose(_training_event(float(noise_multiplier), float(sample_rate), int(steps)))
    return float(spent.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float = 1e-5,
                      accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose `steps` steps at `sample_rate` spend at most
    `target_epsilon` at `delta` (`dp_accounting.calibrate_dp_mechanism`)."""
    _check(None, sample_rate, steps, delta, accountant)
    check_number("target_epsilon", target_epsilon, 0.0, low_inclusive=False)
    check_int("steps", steps, 1)
    dp_accounting = _dp_accounting()
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda s: _training_event(s, float(sample_rate), int(steps)),
        float(target_epsilon), float(delta), dp_accounting.LowerEndpointAndGuess(0.0, 1.0)))


def member_privacy(dp_clip_norm: Sequence[float], noise_multiplier: Sequence[float], steps: Sequence[int], *,
                   batch_size: int, train_size: int, delta: float, accountant: str = "rdp") -> list[dict | None]:
    """Per member: {'epsilon', 'delta', 'noise_multiplier', 'dp_clip_norm', 'steps', 'sample_rate'},
    or None for a member that is not private (`dp_clip_norm` 0). `steps`: the steps each member
    trained (an early-stopped or diverged member spent fewer)."""
    sample_rate = batch_size / train_size
    records: list[dict | None] = []
    spent: dict[tuple[float, int], float] = {}  # members of equal noise and steps (seeds) share one accounting
    for clip, noise, trained in zip(np.asarray(dp_clip_norm, float), np.asarray(noise_multiplier, float),
                                    np.asarray(steps, int)):
        if clip == 0:
            records.append(None)
            continue
        key = (float(noise), int(trained))
        if key not in spent:
            spent[key] = epsilon(key[0], sample_rate, key[1], delta, accountant)
        records.append({"epsilon": spent[key],
                        "delta": delta, "noise_multiplier": float(noise), "dp_clip_norm": float(clip),
                        "steps": int(trained), "sample_rate": sample_rate, "accountant": accountant})
    return records
