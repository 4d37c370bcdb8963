"""Differential privacy of DP-SGD training: the (epsilon, delta) a member spent, and the noise a
target epsilon needs.

DP-SGD itself is a config setting (`TrainConfig(dp_clip_norm=C, noise_multiplier=s)`): each
example's gradient is clipped to L2 norm C and Gaussian noise of std s*C is added to their sum
(Abadi et al. 2016, "Deep Learning with Differential Privacy"; `vhjax.train.step.private_gradients`).
Both are per-member hyperparameters, so one program trains members of different privacy, and a
member with `dp_clip_norm=0` is the non-private baseline beside them.

The accounting is Google's `dp_accounting` (`pip install "vhjax[privacy]"`): each step is a Gaussian
mechanism of std s on a batch drawn with rate q = batch_size / train_size, composed over the steps
the member trained. The accountants assume Poisson sampling of each batch. With
`dp_sampling='poisson'` the batches are such samples (`vhjax.train.poisson`; a rare oversized sample
is cut, and accounted as truncated Poisson sampling with the PLD accountant). By default they are
slices of one shuffled order per epoch, and like Opacus and TensorFlow Privacy the numbers reported
are the Poisson accountant's for q (for shuffled batches that is a convention, not a proof:
Chua et al. 2024, "How Private are DP-SGD Implementations?"). Picking the best of several private
members spends more privacy than any one of them (Papernot & Steinke 2022); the numbers are per member.
"""

from __future__ import annotations

import functools
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


# the PLD accountant's grid of privacy-loss values: 10x coarser than dp_accounting's default (1e-4),
# 7-16x faster on truncated Poisson steps, epsilons within 1e-3 of the finer grid's, and (the
# discretisation rounds pessimistically) still upper bounds
PLD_DISCRETIZATION = 1e-3


def _accountant(name: str) -> Any:
    dp_accounting = _dp_accounting()
    if name == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)


def _training_event(noise_multiplier: float, sample_rate: float, steps: int, truncation: tuple[int, int] | None
                    ) -> Any:
    """`steps` Gaussian steps on Poisson samples; `truncation` (N, max_batch_size): each sample cut
    to a random subset of at most max_batch_size examples (when that is below N)."""
    dp_accounting = _dp_accounting()
    if truncation is not None and truncation[1] < truncation[0]:
        step = dp_accounting.TruncatedSubsampledGaussianDpEvent(truncation[0], sample_rate, truncation[1],
                                                                noise_multiplier)
    else:
        step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _check(noise_multiplier: float | None, sample_rate: float, steps: int, delta: float, accountant: str,
           dataset_size: int | None, max_batch_size: int | None) -> tuple[int, int] | None:
    """Check the arguments; returns the truncation (N, max_batch_size) or None."""
    if noise_multiplier is not None:
        check_number("noise_multiplier", noise_multiplier, 0.0)
    check_number("sample_rate", sample_rate, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_int("steps", steps, 0)
    check_number("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_choice("accountant", accountant, ACCOUNTANTS)
    if max_batch_size is None:
        return None
    if dataset_size is None:
        raise ValueError("max_batch_size needs dataset_size (the number of training examples)")
    check_int("dataset_size", dataset_size, 1)
    check_int("max_batch_size", max_batch_size, 1)
    if accountant != "pld" and max_batch_size < dataset_size:
        raise ValueError(f"accountant has value {accountant!r}; allowed: 'pld' with max_batch_size (truncated "
                         "Poisson batches are accounted by privacy loss distributions only)")
    return int(dataset_size), int(max_batch_size)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5,
            accountant: str = "rdp", *, dataset_size: int | None = None, max_batch_size: int | None = None) -> float:
    """The epsilon of `steps` DP-SGD steps with noise `noise_multiplier` (std over the clip norm)
    on batches sampled at `sample_rate` (batch size / training examples), at `delta`.
    `max_batch_size` (with `dataset_size`, accountant 'pld'): each Poisson sample cut to at most
    that many examples (`vhjax.train.poisson`). inf for noise 0 (no privacy); 0 for 0 steps."""
    truncation = _check(noise_multiplier, sample_rate, steps, delta, accountant, dataset_size, max_batch_size)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    return _epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant, truncation)


@functools.lru_cache(maxsize=256)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str,
             truncation: tuple[int, int] | None) -> float:
    """`epsilon`, remembered: searches and reports account the same members again (a truncated
    Poisson accounting takes about a second)."""
    spent = _accountant(accountant)
    spent.compose(_training_event(noise_multiplier, sample_rate, steps, truncation))
    return float(spent.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float = 1e-5,
                      accountant: str = "rdp", *, dataset_size: int | None = None,
                      max_batch_size: int | None = None) -> float:
    """The smallest noise multiplier whose `steps` steps at `sample_rate` (cut to `max_batch_size`
    as in `epsilon`) spend at most `target_epsilon` at `delta` (`dp_accounting.calibrate_dp_mechanism`)."""
    truncation = _check(None, sample_rate, steps, delta, accountant, dataset_size, max_batch_size)
    check_number("target_epsilon", target_epsilon, 0.0, low_inclusive=False)
    check_int("steps", steps, 1)
    dp_accounting = _dp_accounting()
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda s: _training_event(s, float(sample_rate), int(steps), truncation),
        float(target_epsilon), float(delta), dp_accounting.LowerEndpointAndGuess(0.0, 1.0)))


def member_privacy(dp_clip_norm: Sequence[float], noise_multiplier: Sequence[float], steps: Sequence[int], *,
                   batch_size: int, train_size: int, delta: float, accountant: str = "rdp",
                   sampling: str = "shuffle", max_batch_size: int | None = None) -> list[dict | None]:
    """Per member: {'epsilon', 'delta', 'noise_multiplier', 'dp_clip_norm', 'steps', 'sample_rate',
    'accountant', 'sampling'} (and 'max_batch_size' for Poisson batches), or None for a member that
    is not private (`dp_clip_norm` 0). `steps`: the steps each member trained (an early-stopped or
    diverged member spent fewer). `sampling` 'poisson' (the batches of `vhjax.train.poisson`, padded
    to `max_batch_size`) is accounted as truncated Poisson sampling with accountant 'pld'."""
    check_choice("sampling", sampling, ("shuffle", "poisson"))
    if sampling == "poisson":
        accountant = "pld"
        if max_batch_size is None:
            raise ValueError("sampling 'poisson' needs max_batch_size (the padded batch size)")
    else:
        max_batch_size = None
    sample_rate = min(1.0, batch_size / train_size)
    records: list[dict | None] = []
    for clip, noise, trained in zip(np.asarray(dp_clip_norm, float), np.asarray(noise_multiplier, float),
                                    np.asarray(steps, int)):
        if clip == 0:
            records.append(None)
            continue
        # members of equal noise and steps (seeds) share one accounting (`epsilon` remembers it)
        spent = epsilon(float(noise), sample_rate, int(trained), delta, accountant,
                        dataset_size=train_size if max_batch_size else None, max_batch_size=max_batch_size)
        record = {"epsilon": spent, "delta": delta, "noise_multiplier": float(noise), "dp_clip_norm": float(clip),
                  "steps": int(trained), "sample_rate": sample_rate, "accountant": accountant, "sampling": sampling}
        if max_batch_size is not None:
            record["max_batch_size"] = int(max_batch_size)
        records.append(record)
    return records
