"""Scrambled Sobol points from NumPy alone: the points of `scipy.stats.qmc.Sobol(d, scramble=True)`.

A search's first population is the first points of a scrambled Sobol sequence (`pbt_search.
initial_units`, the `quasi_random` strategy). `scipy.stats.qmc` gives them, but importing
`scipy.stats` takes 0.6-1.0 s on a 2-core CPU, about a tenth of the time before a `tune` run's
first score. The same points come from SciPy's own direction numbers (Joe and Kuo's table, the
`_sobol_direction_numbers.npz` it ships) in a few NumPy operations:

- direction numbers: Bratley and Fox's recurrence on each dimension's primitive polynomial;
- scrambling: a random lower-triangular binary matrix with a unit diagonal per dimension (linear
  matrix scrambling) and a random digital shift, drawn as SciPy draws them (an int seed seeds
  `default_rng`; from a Generator a child is spawned, and the Generator's own draws are untouched);
- point k+1: point k XOR the direction number of k's lowest zero bit (Gray-code order, SciPy's).

tests/search/test_sobol.py checks the points equal SciPy's. Where the table is missing (another
SciPy layout), and for large tables (over 256 dimensions or 2**20 values, where SciPy's compiled
loops win back their import), `scipy.stats.qmc` makes them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Any

import numpy as np

BITS = 30  # SciPy's default: points are multiples of 2**-30
TABLE = os.path.join("stats", "_sobol_direction_numbers.npz")
# larger tables come from SciPy's compiled generator, faster there than its import costs
MAX_NUMPY_DIM, MAX_NUMPY_VALUES = 256, 2 ** 20


@functools.cache
def direction_table() -> tuple[np.ndarray, np.ndarray] | None:
    """(primitive polynomials, initial direction numbers) from SciPy's table, or None if absent."""
    spec = importlib.util.find_spec("scipy")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, TABLE)
        if os.path.exists(path):
            with np.load(path) as table:
                return table["poly"], table["vinit"]
    return None


def direction_numbers(dim: int, poly: np.ndarray, vinit: np.ndarray) -> np.ndarray:
    """(dim, BITS) uint64: direction number j of each dimension, its bits left-aligned in BITS."""
    out = np.zeros((dim, BITS), np.uint64)
    out[0] = 1 << (BITS - 1 - np.arange(BITS, dtype=np.uint64))  # the first dimension: van der Corput
    for i in range(1, dim):
        polynomial = int(poly[i])
        degree = polynomial.bit_length() - 1
        numbers = [int(vinit[i, j]) << (BITS - 1 - j) for j in range(min(degree, BITS))]
        for j in range(degree, BITS):
            new = numbers[j - degree] ^ (numbers[j - degree] >> degree)
            for k in range(1, degree):
                if (polynomial >> (degree - k)) & 1:
                    new ^= numbers[j - k]
            numbers.append(new)
        out[i] = numbers
    return out


def scramble(numbers: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(scrambled direction numbers, digital shift): the shift's bits are drawn first, then one
    lower-triangular matrix per dimension (unit diagonal) multiplies each number's bits over GF(2)."""
    dim = numbers.shape[0]
    powers = np.uint64(1) << np.arange(BITS, dtype=np.uint64)
    shift = rng.integers(0, 2, size=(dim, BITS), dtype=np.uint32).astype(np.uint64) @ powers
    lower = np.tril(rng.integers(0, 2, size=(dim, BITS, BITS), dtype=np.uint32)).astype(np.uint64)
    lower[:, np.arange(BITS), np.arange(BITS)] = 1
    msb_first = powers[::-1]
    bits = (numbers[:, :, None] // msb_first) % 2  # (dim, j, bit k from the most significant)
    scrambled = np.einsum("djk,dlk->djl", bits, lower) % 2
    return scrambled @ msb_first, shift


def points(dim: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """The first `count` points (float64, (count, dim)) of the Sobol sequence scrambled by `rng`."""
    poly, vinit = direction_table()
    numbers, shift = scramble(direction_numbers(dim, poly, vinit), rng)
    # point k+1 = point k XOR the number of the lowest zero bit of k (Gray-code order)
    after = np.arange(1, count, dtype=np.uint64)  # k + 1
    lowest_zero_bit = np.log2(after & (~after + np.uint64(1))).astype(np.int64)  # of k: lowest set bit of k + 1
    quasi = np.empty((count, dim), np.uint64)
    quasi[:1] = shift
    quasi[1:] = shift ^ np.bitwise_xor.accumulate(numbers.T[lowest_zero_bit], axis=0)
    return quasi.astype(np.float64) / 2.0 ** BITS


def scrambled_generator(seed: Any) -> np.random.Generator:
    """The generator SciPy scrambles with: `default_rng(seed)` for an int, a child spawned from a
    Generator (whose own stream of draws is untouched)."""
    if isinstance(seed, np.random.Generator):
        return seed.spawn(1)[0]
    return np.random.default_rng(seed)


def sobol_points(dim: int, count: int, scramble_seed: Any) -> np.ndarray:
    """The first `count` points in `[0, 1)^dim` of a Sobol sequence scrambled from `scramble_seed`
    (an int or a NumPy Generator); balanced when `count` is a power of 2, any count allowed. Equal
    to `scipy.stats.qmc.Sobol(dim, scramble=True, seed=scramble_seed).random(count)`."""
    small = dim <= MAX_NUMPY_DIM and count * dim <= MAX_NUMPY_VALUES
    if not small or direction_table() is None or not isinstance(scramble_seed, (int, np.integer, np.random.Generator)):
        return _scipy_points(dim, count, scramble_seed)
    return points(dim, count, scrambled_generator(scramble_seed))


def _scipy_points(dim: int, count: int, scramble_seed: Any) -> np.ndarray:
    from scipy.stats import qmc

    with warnings.catch_warnings():  # balance needs a power of 2; other counts are allowed here
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=dim, scramble=True, seed=scramble_seed).random(count)
