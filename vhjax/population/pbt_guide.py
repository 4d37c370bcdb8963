"""PBT's explore guided by a Gaussian process over recent rounds (after PB2, Parker-Holder et al. 2020).

Plain PBT perturbs a copied member's hyperparameters at random. Here each copied member gets
`candidates` such explore draws (the perturbations and redraws PBT makes) and keeps the one with
the highest upper confidence bound of a Gaussian process fitted to what the last rounds showed:
for every member that trained through one of the last `GP_WINDOW` intervals, its score change over
that interval (from the score of the member its state came from) against the hyperparameters it
trained with, standardised per round. So the choice stays among PBT's local moves (a trust region:
PB2 optimises the bound over the whole space instead) and leans to those that recently paid.
Several copied members are chosen in turn, each choice added to the model at its predicted value
before the next (GP-BUCB), so they spread instead of all taking the same point.

Everything is NumPy on the host from the PBT hook's record (scores, values and lineage of every
round), a few milliseconds a round, nothing compiled; a resumed run chooses the same.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vhjax.population.exploit import Range, explore_draws, explore_values_with, to_unit

GP_WINDOW = 4  # rounds of score changes the model sees
GP_LENGTH_SCALE = 0.2  # in the unit cube of the explored values
GP_TIME_SCALE = 1.0  # in rounds
GP_NOISE = 0.5  # observation variance of standardised score changes (signal variance 1)
UCB_KAPPA = 1.0  # mean + kappa * standard deviation


def encode(hparams: Mapping[str, Any], explore: Mapping[str, Range]) -> np.ndarray:
    """(P, D) unit coordinates of the explored hyperparameters (`exploit.to_unit`, one column per
    entry), in `explore`'s order."""
    return np.concatenate([to_unit(np.asarray(hparams[name], np.float64).reshape(np.shape(hparams[name])[0], -1),
                                   value_range) for name, value_range in explore.items()], axis=1)


def score_changes(history: Sequence[Mapping[str, Any]], lineage: Sequence[Mapping[str, Any]],
                  explore: Mapping[str, Range], window: int = GP_WINDOW) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's data from a PBT record: rows (rounds from now, unit coordinates of the values a
    member trained with) and its score change over that interval, standardised per round; None
    before two rounds are evaluated. `history[k]` holds round k's scores and the values used since
    round k - 1; `lineage[k - 1]` whose state each slot continued from at round k - 1."""
    now = len(history) - 1
    inputs, targets = [], []
    for k in range(max(1, now - window + 1), now + 1):
        parent = np.asarray(lineage[k - 1]["parent"])
        origin = np.where(parent >= 0, parent, np.arange(len(parent)))
        before = np.asarray(history[k - 1]["score"], np.float64)[origin]
        after = np.asarray(history[k]["score"], np.float64)
        valid = np.isfinite(before) & np.isfinite(after)
        if valid.sum() < 3:
            continue
        change = after[valid] - before[valid]
        values = encode({name: np.asarray(history[k][name]) for name in explore}, explore)[valid]
        inputs.append(np.concatenate([np.full((len(change), 1), float(k - now)), values], axis=1))
        targets.append((change - change.mean()) / (change.std() + 1e-6))
    if not inputs:
        return None
    return np.concatenate(inputs), np.concatenate(targets)


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared-exponential kernel over (rounds, unit coordinates) rows."""
    values = ((a[:, None, 1:] - b[None, :, 1:]) ** 2).sum(-1) / GP_LENGTH_SCALE ** 2
    rounds = (a[:, None, 0] - b[None, :, 0]) ** 2 / GP_TIME_SCALE ** 2
    return np.exp(-0.5 * (values + rounds))


def posterior(inputs: np.ndarray, targets: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian process's mean and standard deviation at `queries`."""
    factor = np.linalg.cholesky(kernel(inputs, inputs) + GP_NOISE * np.eye(len(inputs)))
    weights = np.linalg.solve(factor.T, np.linalg.solve(factor, targets))
    cross = kernel(queries, inputs)
    spread = np.linalg.solve(factor, cross.T)
    return cross @ weights, np.sqrt(np.clip(1.0 - (spread ** 2).sum(0), 1e-12, None))


def choose(candidates: Sequence[Mapping[str, np.ndarray]], copied: Sequence[int], data: tuple[np.ndarray, np.ndarray],
           explore: Mapping[str, Range]) -> dict[str, np.ndarray]:
    """Candidate 0's values with each copied slot's taken from the candidate of the highest upper
    confidence bound one round ahead, the slots chosen in turn (each choice joins the data at its
    predicted mean)."""
    inputs, targets = data
    chosen = {name: np.array(values, copy=True) for name, values in candidates[0].items()}
    coordinates = [encode(candidate, explore) for candidate in candidates]
    for slot in copied:
        queries = np.stack([np.concatenate([[1.0], points[slot]]) for points in coordinates])
        mean, deviation = posterior(inputs, targets, queries)
        best = int(np.argmax(mean + UCB_KAPPA * deviation))
        for name in chosen:
            chosen[name][slot] = candidates[best][name][slot]
        inputs, targets = np.concatenate([inputs, queries[best:best + 1]]), np.concatenate([targets, mean[best:best + 1]])
    return chosen


def guided_explore(uniforms: np.ndarray, data: tuple[np.ndarray, np.ndarray] | None, explore: Mapping[str, Range],
                   resample_probability: float, candidates: int) -> Callable | None:
    """`pbt_decision`'s `guide` for one round: `candidates - 1` more explore draws per copied slot
    from `uniforms` (`(candidates - 1) * explore_draws(values)` of them), beside the decision's own,
    and `choose` among them; None (plain PBT) with one candidate or no data yet (`score_changes`)."""
    if candidates < 2 or data is None:
        return None

    def guide(copied: np.ndarray, current: Mapping[str, np.ndarray], explored: Mapping[str, np.ndarray]):
        slots = np.flatnonzero(copied)
        if not len(slots):
            return explored
        count = explore_draws(current)
        others = [explore_values_with(uniforms[j * count:(j + 1) * count], current, explore,
                                      resample_probability=resample_probability) for j in range(candidates - 1)]
        return choose([explored, *others], slots, data, explore)

    return guide
