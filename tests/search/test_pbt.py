"""PBT primitives (truncation exploit, explore, ready, lineage) and the paper's toy problem."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.population import exploit as pbt

KEY = jax.random.PRNGKey(0)


def _load_toy():
    path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "pbt_toy.py"
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
    redrawn = pbt.resample(KEY, h, 0.0, 1.0, probability=1.0)
    assert not np.any(np.isclose(redrawn, h))


def test_perturb_real_values_one_factor_per_member():
    lr = jnp.array([1e-3, 2.0, 50.0])
    out = pbt.perturb(KEY, lr, (0.5, 2.0))
    ratio = np.asarray(out / lr)
    assert np.all(np.isclose(ratio, 0.5) | np.isclose(ratio, 2.0))
    per_layer = pbt.perturb(KEY, jnp.ones((3, 4)), (0.5, 2.0))  # one hyperparameter with 4 layers
    assert np.all(per_layer == per_layer[:, :1])


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


# ----------------------------------------------------------------------------- one set of primitives


def test_fit_pbt_and_the_strategy_share_one_truncation_rule():
    """`truncation_sources` (higher is better) is `truncation_select` on the same ranks; fit_pbt's
    round and `truncation_select` both call `truncation_select_with`."""
    import vhjax.population.pbt as population_pbt
    from vhjax.search.strategies import pbt as pbt_strategy

    assert population_pbt.truncation_select_with is pbt.truncation_select_with
    assert pbt_strategy.exploit_explore is pbt.exploit_explore
    for size, fraction in ((4, 0.25), (10, 0.25), (10, 0.2), (7, 0.5)):
        scores = jax.random.normal(jax.random.fold_in(KEY, size), (size,))
        for seed in range(3):
            key = jax.random.PRNGKey(seed)
            source = pbt.truncation_sources(key, scores, fraction)
            select, copied = pbt.truncation_select(key, -scores, fraction)
            np.testing.assert_array_equal(source, select)
            assert int(copied.sum()) == min(int(np.ceil(fraction * size)), size // 2)


def test_strategy_explores_real_values_as_fit_pbt_does():
    """A log-scale learning rate moves by x0.8 or x1.2 in value (not in its cube coordinate)."""
    from vhjax.search import Float, Space
    from vhjax.search.strategies.pbt import unit_ranges

    space = Space({"learning_rate": Float(1e-4, 1e-1, log=True), "dropout": Float(0.0, 0.5)})
    ranges = unit_ranges(space)
    u = jnp.array([[0.5, 0.4], [0.3, 0.2], [0.6, 0.8], [0.1, 0.5]])
    out = pbt.exploit_explore(KEY, jnp.array([0.0, 1.0, 2.0, 3.0]), u, fraction=0.25, ranges=ranges)
    assert bool(out.copied[3]) and int(out.src_index[3]) == 0
    for d, (name, param) in enumerate(space.params.items()):
        ratio = param.decode(float(out.hparams_u[3, d])) / param.decode(float(u[0, d]))
        assert np.isclose(ratio, 0.8, rtol=1e-4) or np.isclose(ratio, 1.2, rtol=1e-4), (name, ratio)


# ----------------------------------------------------------------------------- PBT through the protocol

THETA0 = np.array([0.9, 0.9])


class ToyTraining:
    """The paper's toy problem as a trainable objective with checkpoints kept per trial.

    theta ascends the surrogate 1.2 - h0 theta0^2 - h1 theta1^2 (h in [0, 1]^2); fitness is the
    true Q = 1.2 - |theta|^2 (maximized). A candidate with a parent starts from the parent's
    checkpoint and trains only the steps between the two budgets.
    """

    def __init__(self, workdir=None, learning_rate=0.05):
        self.checkpoints, self.trained, self.learning_rate = {}, {}, learning_rate
        self.workdir, self.stored_before = workdir, []

    def evaluate(self, candidates):
        if self.workdir is not None:
            from vhjax.search.storage import open_store

            with open_store(self.workdir) as store:
                self.stored_before.append(len(store.trials(status="complete")))
        scores = []
        for i, trial_id in enumerate(candidates.trial_ids):
            parent = candidates.parent_ids[i]
            theta, done = (THETA0.copy(), 0) if parent is None else self.checkpoints[parent]
            h = np.array([candidates.params[i]["h0"],
                          candidates.params[i]["h1"]])
            for _ in range(int(candidates.fidelity[i]) - done):
                theta = theta - self.learning_rate * 2 * h * theta
            self.checkpoints[trial_id] = (theta, int(candidates.fidelity[i]))
            self.trained[trial_id] = int(candidates.fidelity[i]) - done
            scores.append(1.2 - float(np.sum(theta**2)))
        return np.asarray(scores)


def toy_space():
    from vhjax.search import Float, Space

    return Space({"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)})


def test_pbt_through_the_driver_stores_each_round_and_continues_from_parents(tmp_path):
    from vhjax.search import search

    population, interval, rounds = 6, 4, 5
    objective = ToyTraining(workdir=tmp_path)
    result = search(objective, toy_space(), "pbt", budget=population * rounds, population=population,
                    workdir=tmp_path, verbose=False,
                    strategy_kwargs=dict(population_size=population, interval=interval, fraction=0.34))
    # each round's trials were in the store before the next round trained
    assert objective.stored_before == [population * r for r in range(rounds)]
    trials = sorted(result.trials, key=lambda t: t.trial_id)
    by_id = {t.trial_id: t for t in trials}
    for r in range(rounds):
        generation = [t for t in trials if t.generation == r]
        assert len(generation) == population and all(t.fidelity == (r + 1) * interval for t in generation)
        for trial in generation:
            assert objective.trained[trial.trial_id] == interval  # continued, never from scratch
            if r == 0:
                assert trial.parent_id is None
            else:
                assert by_id[trial.parent_id].generation == r - 1
    copied = [t for t in trials if t.parent_id is not None and by_id[t.parent_id].params != t.params]
    assert copied  # exploit/explore happened
    assert result.best.fidelity == rounds * interval


def test_pbt_through_the_driver_beats_its_no_exploit_ablation():
    """The ablation trains PBT's own first round for the whole budget without exploit/explore."""
    from vhjax.search import search

    rounds, kwargs = 8, dict(population_size=6, interval=4, fraction=0.34)

    class Toy(ToyTraining):
        def __init__(self):
            super().__init__(learning_rate=0.03)

    class NoExploit(Toy):
        def evaluate(self, candidates):
            n = len(candidates.params)
            return super().evaluate(candidates._replace(fidelity=np.full(n, 4.0 * rounds), parent_ids=[None] * n))

    pbt_best, ablation = [], []
    for seed in range(4):
        pbt_best.append(search(Toy(), toy_space(), "pbt", budget=6 * rounds, population=6, seed=seed,
                               verbose=False, strategy_kwargs=kwargs).best.fitness)
        ablation.append(search(NoExploit(), toy_space(), "pbt", budget=6, population=6, seed=seed,
                               verbose=False, strategy_kwargs=kwargs).best.fitness)
    assert all(p >= a for p, a in zip(pbt_best, ablation)), (pbt_best, ablation)
    assert np.mean(pbt_best) > np.mean(ablation) + 0.015, (pbt_best, ablation)


def test_pbt_strategy_refuses_bad_settings_and_unknown_proposals():
    from vhjax.search.strategies import make_strategy

    with pytest.raises(ValueError, match="fraction must be <= 0.5"):
        make_strategy("pbt", toy_space(), fraction=0.7)
    with pytest.raises(ValueError, match="population_size must be an integer >= 2"):
        make_strategy("pbt", toy_space(), population_size=1)
    strategy = make_strategy("pbt", toy_space(), population_size=2, interval=3)
    state, proposals = strategy.ask(strategy.init(KEY), KEY, 5)
    assert proposals.index.tolist() == [0, 1] and proposals.fidelity.tolist() == [3, 3]  # one round at most
    with pytest.raises(ValueError, match="proposal 7 is not a pending member"):
        strategy.tell(state, proposals._replace(index=jnp.array([7, 1])), jnp.zeros(2))
    state, _ = strategy.tell(state, proposals, jnp.array([1.0, jnp.nan]))  # NaN ranks last: copies
    _, nxt = strategy.ask(state, KEY, 2)
    assert nxt.parent.tolist() == [0, 0] and nxt.fidelity.tolist() == [6, 6]


def test_pbt_through_the_driver_resumes_after_a_kill_as_if_uninterrupted(tmp_path):
    from vhjax.search import search

    kwargs = dict(population_size=4, interval=3, fraction=0.25)
    arguments = dict(budget=4 * 5, population=4, verbose=False, strategy_kwargs=kwargs)
    full = search(ToyTraining(), toy_space(), "pbt", workdir=tmp_path / "full", **arguments)

    class Killed(ToyTraining):
        calls = 0

        def evaluate(self, candidates):
            Killed.calls += 1
            if Killed.calls == 4:
                raise KeyboardInterrupt
            return super().evaluate(candidates)

    objective = Killed()
    with pytest.raises(KeyboardInterrupt):
        search(objective, toy_space(), "pbt", workdir=tmp_path / "cut", **arguments)
    resumed_objective = ToyTraining()
    resumed_objective.checkpoints = objective.checkpoints  # the checkpoints a workdir would keep
    resumed = search(resumed_objective, toy_space(), "pbt", workdir=tmp_path / "cut", **arguments)
    assert len(resumed_objective.trained) == 4 * 2  # rounds 3 and 4 only
    key = lambda t: (t.generation, t.slot, t.params, t.fidelity, t.fitness)  # noqa: E731
    assert [key(t) for t in resumed.trials] == [key(t) for t in full.trials]
    rank = {t.trial_id: i for i, t in enumerate(sorted(full.trials, key=lambda t: t.trial_id))}
    rank_resumed = {t.trial_id: i for i, t in enumerate(sorted(resumed.trials, key=lambda t: t.trial_id))}
    assert [None if t.parent_id is None else rank_resumed[t.parent_id] for t in resumed.trials] == \
        [None if t.parent_id is None else rank[t.parent_id] for t in full.trials]
