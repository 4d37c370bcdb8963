"""Pareto dominance, ranks, 2-D hypervolume and crowding distance on hand-built points."""

import jax
import numpy as np
import pytest

from vhjax.search import pareto

# (1,3), (2,2), (3,1) form the front; (3,3) is dominated by (2,2); (2,2) repeated once;
# (4,0.5) is on the front too (best second objective).
POINTS = np.array(
    [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0], [2.0, 2.0], [4.0, 0.5], [5.0, 5.0]]
)


def test_non_dominated_mask_by_hand():
    mask = np.asarray(pareto.non_dominated(POINTS))
    np.testing.assert_array_equal(mask, [True, True, True, False, True, True, False])


def test_a_point_weakly_better_in_one_objective_dominates():
    F = np.array([[1.0, 1.0], [1.0, 2.0], [0.0, 5.0]])
    np.testing.assert_array_equal(np.asarray(pareto.non_dominated(F)), [True, False, True])


def test_pareto_front_sorted_by_first_objective():
    front = pareto.pareto_front(POINTS[::-1])
    np.testing.assert_array_equal(front, [[1, 3], [2, 2], [2, 2], [3, 1], [4, 0.5]])


def test_pareto_ranks_peel_fronts():
    F = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [0.5, 4.0], [2.5, 2.5]])
    ranks = np.asarray(jax.jit(pareto.pareto_ranks)(F))
    np.testing.assert_array_equal(ranks, [0, 1, 3, 0, 2])


def test_hypervolume_staircase_by_hand():
    F = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # union of rectangles up to (4, 4): widths 1, 1, 1 times heights 1, 2, 3.
    assert float(pareto.hypervolume_2d(F, np.array([4.0, 4.0]))) == pytest.approx(6.0)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points():
    ref = np.array([4.0, 4.0])
    base = float(pareto.hypervolume_2d(np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]), ref))
    noisy = np.array([[3.0, 3.0], [1.0, 3.0], [2.0, 2.0], [2.0, 2.0], [3.0, 1.0], [5.0, 0.0], [0.0, 4.5]])
    assert float(jax.jit(pareto.hypervolume_2d)(noisy, ref)) == pytest.approx(base)
    # a single point: its box to the reference
    assert float(pareto.hypervolume_2d(np.array([[1.0, 2.0]]), ref)) == pytest.approx(3.0 * 2.0)


def test_hypervolume_grows_when_a_point_is_added_to_the_front():
    ref = np.array([4.0, 4.0])
    F = np.array([[1.0, 3.0], [3.0, 1.0]])
    more = np.vstack([F, [[2.0, 2.0]]])
    assert float(pareto.hypervolume_2d(F, ref)) == pytest.approx(5.0)
    assert float(pareto.hypervolume_2d(more, ref)) == pytest.approx(6.0)


def test_crowding_distance_by_hand():
    F = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = np.asarray(pareto.crowding_distance(F))
    assert np.isinf(d[0]) and np.isinf(d[3])
    # point 1: neighbours 0 and 3 in both objectives -> (3-0)/4 + (4-1)/4 = 1.5
    # point 2: neighbours 1 and 4 -> (4-1)/4 + (3-0)/4 = 1.5
    np.testing.assert_allclose(d[1:3], [1.5, 1.5])
    F2 = np.array([[0.0, 4.0], [0.5, 3.5], [3.0, 1.0], [4.0, 0.0]])
    d2 = np.asarray(pareto.crowding_distance(F2))
    assert d2[1] < d2[2]  # the crowded point near the extreme has the smaller distance


@pytest.mark.parametrize(
    "fn, args, field",
    [
        (pareto.non_dominated, (np.zeros(3),), "F"),
        (pareto.hypervolume_2d, (np.zeros((3, 3)), np.zeros(2)), "F"),
        (pareto.hypervolume_2d, (np.zeros((3, 2)), np.zeros(3)), "ref"),
    ],
)
def test_bad_shapes_raise(fn, args, field):
    with pytest.raises(ValueError, match=field):
        fn(*args)
