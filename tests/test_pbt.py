"""PBT primitives (truncation exploit, explore, ready, lineage) and the paper's toy problem."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.search.strategies import pbt

KEY = jax.random.PRNGKey(0)


def _load_toy():
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "pbt_toy.py"
    spec = importlib.util.spec_from_file_location("pbt_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_truncation_bottom_copies_from_top():
    # 10 members, fraction 0.2 -> the 2 worst (members 3 and 7) copy from the 2 best (0 and 5).
    scores = jnp.array([0.0, 5.0, 4.0, 9.0, 3.0, 0.5, 6.0, 8.0, 2.0, 1.0])
    for seed in range(5):
        src, copied = pbt.truncation_select(jax.random.PRNGKey(seed), scores, 0.2)
        np.testing.assert_array_equal(np.flatnonzero(copied), [3, 7])
        assert set(np.asarray(src)[[3, 7]]) <= {0, 5}
        keep = np.flatnonzero(~np.asarray(copied))
        np.testing.assert_array_equal(np.asarray(src)[keep], keep)


def test_truncation_donors_drawn_from_whole_top_slice():
    scores = jnp.arange(10.0)  # best: 0, 1; worst: 8, 9
    donors = set()
    for seed in range(30):
        src, _ = pbt.truncation_select(jax.random.PRNGKey(seed), scores, 0.2)
        donors |= set(np.asarray(src)[[8, 9]].tolist())
    assert donors == {0, 1}


def test_nan_member_is_replaced_and_not_ready_member_is_kept():
    scores = jnp.array([1.0, jnp.nan, 0.5, 3.0])
    src, copied = pbt.truncation_select(KEY, scores, 0.25)
    assert bool(copied[1]) and int(src[1]) == 2  # NaN ranks last, copies the best
    ready = jnp.array([True, False, True, True])
    src, copied = pbt.truncation_select(KEY, scores, 0.25, ready=ready)
    assert not bool(copied.any())  # the only bottom member is not ready


def test_fraction_can_be_traced_per_round():
    select = jax.jit(pbt.truncation_select)
    scores = jnp.arange(8.0)
    _, few = select(KEY, scores, jnp.float32(0.125))
    _, many = select(KEY, scores, jnp.float32(0.5))
    assert int(few.sum()) == 1 and int(many.sum()) == 4


def test_exploit_explore_inherits_then_perturbs_copied_only():
    scores = jnp.array([0.0, 1.0, 2.0, 3.0])
    h = jnp.array([[0.5, 0.2], [0.4, 0.4], [0.3, 0.6], [0.9, 0.9]])
    out = jax.jit(pbt.exploit_explore, static_argnames=("factors",))(
        KEY, scores, h, fraction=0.25, factors=(0.8, 1.2)
    )
    np.testing.assert_array_equal(np.asarray(out.copied), [False, False, False, True])
    assert int(out.src_index[3]) == 0
    np.testing.assert_allclose(out.hparams_u[:3], h[:3])  # untouched
    ratio = np.asarray(out.hparams_u[3] / h[0])
    assert np.all(np.isclose(ratio, 0.8) | np.isclose(ratio, 1.2))


def test_explore_identity_at_zero_strength_and_clipped_to_unit_cube():
    h = jax.random.uniform(KEY, (6, 3))
    mask = jnp.ones((6,), bool)
    same = pbt.explore(KEY, h, mask, factors=(1.0,), noise_scale=0.0, resample_probability=0.0)
    np.testing.assert_array_equal(same, h)
    moved = pbt.explore(KEY, h, mask, factors=(1.0,), noise_scale=5.0)
    assert not np.allclose(moved, h)
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    redrawn = pbt.resample(KEY, h, 1.0)
    assert not np.any(np.isclose(redrawn, h))


def test_perturb_real_values_without_clipping():
    lr = jnp.array([1e-3, 2.0, 50.0])
    out = pbt.perturb(KEY, lr, (0.5, 2.0), clip=None)
    ratio = np.asarray(out / lr)
    assert np.all(np.isclose(ratio, 0.5) | np.isclose(ratio, 2.0))


def test_ready_and_reset():
    since = jnp.array([0, 3, 4, 9])
    ready = pbt.is_ready(since, 4)
    np.testing.assert_array_equal(ready, [False, False, True, True])
    np.testing.assert_array_equal(pbt.reset_ready(since, ready), [0, 3, 0, 0])


def test_gather_members_copies_pytrees():
    tree = {"w": jnp.arange(4.0)[:, None] * jnp.ones((4, 2)), "b": jnp.arange(4)}
    out = pbt.gather_members(tree, jnp.array([0, 1, 0, 3]))
    np.testing.assert_array_equal(out["b"], [0, 1, 0, 3])
    np.testing.assert_array_equal(out["w"][2], [0.0, 0.0])


def test_lineage_events_trace_ancestry():
    # round 0: member 2 copies 0; round 1: member 1 copies 2; round 2: nothing.
    events = [
        pbt.lineage_event(4, jnp.array([0, 1, 0]), jnp.array([False, False, True])),
        pbt.lineage_event(8, jnp.array([0, 2, 2]), jnp.array([False, True, False])),
        pbt.lineage_event(12, jnp.array([0, 1, 2]), jnp.array([False, False, False])),
    ]
    parents = np.stack([np.asarray(e.parent) for e in events])
    np.testing.assert_array_equal(parents[0], [-1, -1, 0])
    assert int(events[1].step) == 8
    assert pbt.ancestry(parents, 1) == [(1, 2), (0, 0)]
    assert pbt.ancestry(parents, 0) == []


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(scores=jnp.zeros((3, 1)), hparams_u=jnp.zeros((3, 2))), "scores"),
        (dict(scores=jnp.zeros(3), hparams_u=jnp.zeros((4, 2))), "hparams_u"),
        (dict(scores=jnp.zeros(3), hparams_u=jnp.zeros((3, 2)), fraction=0.9), "fraction"),
    ],
)
def test_bad_input_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        pbt.exploit_explore(KEY, **kwargs)


def test_toy_pbt_reaches_optimum_and_beats_every_ablation():
    toy = _load_toy()
    seeds = 4
    results = toy.table(seeds, steps=200)
    pbt_mean = results["pbt"][0]
    assert pbt_mean > 1.15, results
    for variant in ("explore only", "exploit only", "grid search"):
        assert pbt_mean > results[variant][0] + 0.02, results
    # grid search can never beat 1.2 - 0.81 (one coordinate stays at 0.9)
    assert results["grid search"][0] < 0.4
