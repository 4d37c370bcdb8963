"""vhjax's NumPy Sobol points are SciPy's, and a search's first population no longer imports scipy.stats."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.stats import qmc

from vhjax.search.strategies.sobol import direction_numbers, direction_table, sobol_points


def scipy_points(dim, count, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=dim, scramble=True, seed=seed).random(count)


@pytest.mark.parametrize("dim", [1, 2, 4, 9, 40])
@pytest.mark.parametrize("count", [0, 1, 3, 32, 1000])
def test_points_equal_scipys_for_int_seeds_and_generators(dim, count):
    for seed in (0, 7, 2 ** 40 + 3):
        np.testing.assert_array_equal(sobol_points(dim, count, seed), scipy_points(dim, count, seed))
    # a Generator: both spawn a child from it, so each side gets a fresh one seeded alike
    np.testing.assert_array_equal(sobol_points(dim, count, np.random.default_rng(11)),
                                  scipy_points(dim, count, np.random.default_rng(11)))


def test_unscrambled_numbers_are_scipys_sequence_and_seeds_differ():
    """The direction numbers alone (no scrambling) give SciPy's plain Sobol sequence; another seed
    another scramble; every 1/32 of each range holds one of 32 points."""
    poly, vinit = direction_table()
    numbers = direction_numbers(6, poly, vinit)
    gray = np.arange(16) ^ (np.arange(16) >> 1)
    plain = np.array([np.bitwise_xor.reduce([numbers[:, b] for b in range(30) if g >> b & 1] or [np.zeros(6, np.uint64)])
                      for g in gray]) / 2.0 ** 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_array_equal(plain, qmc.Sobol(d=6, scramble=False).random(16))
    assert not np.array_equal(sobol_points(4, 32, 1), sobol_points(4, 32, 2))
    strata = np.sort(np.floor(sobol_points(4, 32, 3) * 32).astype(int), axis=0)
    np.testing.assert_array_equal(strata, np.tile(np.arange(32)[:, None], (1, 4)))


def test_large_tables_come_from_scipy_alike():
    np.testing.assert_array_equal(sobol_points(300, 4, 5), scipy_points(300, 4, 5))


def test_a_searchs_first_population_does_not_import_scipy_stats():
    """scipy.stats costs 0.6-1 s to import; the first population of a PBT search (and tune) is
    drawn without it, in a fresh interpreter."""
    code = ("import sys; from vhjax.search.pbt_search import initial_units; "
            "units = initial_units(4, 32, 0); print(units.shape, 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-1] == "False", out.stdout
