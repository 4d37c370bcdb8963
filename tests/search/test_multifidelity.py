"""Successive halving, Hyperband and ASHA: eta geometry, promotion rules, and a noisy benchmark."""

import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.search.strategies import multifidelity as mf
from vhjax.search.strategies.base import make
from vhjax.search.strategies.multifidelity import Rung

KEY = jax.random.PRNGKey(0)
OPTIMUM = np.array([0.7, 0.3])


# ---------------------------------------------------------------- synthetic problem


def true_loss(u):
    """What we care about: the loss after full training, minimum 0 at OPTIMUM."""
    return np.sum((np.asarray(u) - OPTIMUM) ** 2, axis=-1)


def observed_loss(u, budget, rng):
    """A learning curve: converges to true_loss as 1/budget, plus noise shrinking as 1/sqrt(budget)."""
    u = np.asarray(u)
    return true_loss(u) + 0.2 * u[:, 1] / budget + 0.05 / np.sqrt(budget) * rng.normal(size=len(u))


def take(proposals, rows):
    """The proposals at `rows` (a Proposals pytree of the selected rows)."""
    return jax.tree.map(lambda a: np.asarray(a)[np.asarray(rows)], proposals)


def previous_budgets(proposals, budget_of):
    """Budget each proposal starts from: its parent's fidelity (0 without a parent)."""
    return np.array([budget_of[int(p)] if p >= 0 else 0.0 for p in np.asarray(proposals.parent)])


def remember(budget_of, proposals):
    budget_of.update(zip(np.asarray(proposals.index).tolist(), np.asarray(proposals.fidelity).tolist()))


def run_sync(scheduler, seed, n_workers=1000):
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    state = scheduler.init(key)
    jobs_log = []
    while not mf.is_done(state):
        key, sub = jax.random.split(key)
        state, jobs = scheduler.ask(state, sub, n_workers)
        assert jobs.index.size > 0
        jobs_log.append(jobs)
        state, _ = scheduler.tell(state, jobs, observed_loss(jobs.u, jobs.fidelity, rng))
    return state, jobs_log


def run_asha(scheduler, seed, total_budget, n_workers=4):
    """Event simulation: a job's duration is its budget increment; a free worker asks for one job."""
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    state = scheduler.init(key)
    key, sub = jax.random.split(key)
    state, jobs = scheduler.ask(state, sub, n_workers)
    budget_of = {}
    remember(budget_of, jobs)
    events = []
    duration = np.asarray(jobs.fidelity) - previous_budgets(jobs, budget_of)
    for i in range(n_workers):
        heapq.heappush(events, (float(duration[i]), int(jobs.index[i]), take(jobs, [i])))
    while events:
        now, _, job = heapq.heappop(events)
        state, _ = scheduler.tell(state, job, observed_loss(job.u, job.fidelity[0], rng))
        if mf.budget_spent(state) < total_budget:
            key, sub = jax.random.split(key)
            state, job = scheduler.ask(state, sub, 1)
            remember(budget_of, job)
            duration = float(job.fidelity[0] - previous_budgets(job, budget_of)[0])
            heapq.heappush(events, (now + duration, int(job.index[0]), take(job, [0])))
    return state


def random_search_regret(seed, total_budget, max_budget):
    """Random search at max budget with the same total budget: best observed of floor(B / max)."""
    rng = np.random.default_rng(seed + 1000)
    u = rng.uniform(size=(int(total_budget // max_budget), 2))
    chosen = u[np.argmin(observed_loss(u, max_budget, rng))]
    return float(true_loss(chosen))


# ---------------------------------------------------------------- geometry


def test_successive_halving_rungs_eta3_by_hand():
    assert mf.successive_halving_rungs(1, 27, 3) == (Rung(27, 1), Rung(9, 3), Rung(3, 9), Rung(1, 27))
    assert mf.successive_halving_rungs(1, 27, 3, n_configs=81) == (
        Rung(81, 1), Rung(27, 3), Rung(9, 9), Rung(3, 27),
    )


def test_hyperband_brackets_eta3_by_hand():
    assert mf.hyperband_brackets(1, 27, 3) == (
        (Rung(27, 1), Rung(9, 3), Rung(3, 9), Rung(1, 27)),
        (Rung(12, 3), Rung(4, 9), Rung(1, 27)),
        (Rung(6, 9), Rung(2, 27)),
        (Rung(4, 27),),
    )


def test_planned_budget_by_hand():
    rungs = (mf.successive_halving_rungs(1, 27, 3),)
    assert mf.planned_budget(rungs, resume=False) == 27 * 1 + 9 * 3 + 3 * 9 + 1 * 27
    assert mf.planned_budget(rungs, resume=True) == 27 * 1 + 9 * 2 + 3 * 6 + 1 * 18
    hb = mf.hyperband_brackets(1, 27, 3)
    assert mf.planned_budget(hb) == 81 + (12 * 3 + 4 * 6 + 1 * 18) + (6 * 9 + 2 * 18) + 4 * 27


def test_budget_ladder_ends_at_max_when_not_a_power_of_eta():
    budgets = mf.rung_budgets(1, 100, 3)
    np.testing.assert_allclose(budgets, [100 / 81, 100 / 27, 100 / 9, 100 / 3, 100])
    np.testing.assert_array_equal(mf.rung_budgets(1, 100, 3, integer_budgets=True), [1, 4, 11, 33, 100])
    np.testing.assert_array_equal(mf.rung_budgets(2, 5, 3), [5])  # one rung: plain random search
    np.testing.assert_allclose(mf.rung_budgets(1, 16, 2), [1, 2, 4, 8, 16])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(min_budget=10, max_budget=5), "max_budget"),
        (dict(min_budget=0, max_budget=5), "min_budget"),
        (dict(min_budget=1, max_budget=27, eta=1.5), "eta"),
        (dict(min_budget=0.5, max_budget=27, integer_budgets=True), "min_budget"),
        (dict(min_budget=1, max_budget=27, n_configs=26), "n_configs"),
        (dict(min_budget=1, max_budget=float("inf")), "max_budget"),
    ],
)
def test_bad_budgets_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mf.successive_halving(2, **kwargs)


def test_bad_hyperband_and_asha_arguments_raise():
    with pytest.raises(ValueError, match="n_iterations"):
        mf.hyperband(2, min_budget=1, max_budget=9, n_iterations=0)
    with pytest.raises(ValueError, match="dim"):
        mf.asha(0, min_budget=1, max_budget=9)
    with pytest.raises(ValueError, match="batch_size"):
        mf.asha(2, min_budget=1, max_budget=9, batch_size=0)


# ---------------------------------------------------------------- successive halving


def test_successive_halving_promotes_exactly_the_top_third():
    sh = mf.successive_halving(2, min_budget=1, max_budget=27, eta=3)
    state = sh.init(KEY)
    counts, budget_of, u_of = [], {}, {}
    while not mf.is_done(state):
        state, jobs = sh.ask(state, KEY, 100)
        _, nothing = sh.ask(state, KEY, 5)  # rung in flight: nothing else to hand out
        assert nothing.index.size == 0
        counts.append((jobs.index.size, float(jobs.fidelity[0])))
        assert np.all(jobs.fidelity == jobs.fidelity[0])
        if counts[-1][1] > 1:
            # promoted configurations are the best of the previous rung (fitness = u0), and each
            # continues from its own proposal one rung lower
            told_before = [i for i, b in budget_of.items() if b == counts[-2][1]]
            best = sorted(told_before, key=lambda i: u_of[i][0])[: jobs.index.size]
            np.testing.assert_array_equal(np.sort(np.asarray(jobs.parent)), np.sort(best))
            np.testing.assert_allclose(previous_budgets(jobs, budget_of), counts[-2][1])
            np.testing.assert_allclose(np.asarray(jobs.u), [u_of[int(p)] for p in jobs.parent])
        else:
            assert np.all(np.asarray(jobs.parent) == -1)
        remember(budget_of, jobs)
        u_of.update(zip(np.asarray(jobs.index).tolist(), np.asarray(jobs.u)))
        state, _ = sh.tell(state, jobs, jobs.u[:, 0])
    assert counts == [(27, 1), (9, 3), (3, 9), (1, 27)]
    best = mf.best_trial(state)
    assert best.budget == 27 and best.u[0] == pytest.approx(state.inner.u[:, 0].min())
    assert mf.budget_spent(state) == mf.planned_budget(sh.brackets)


def test_rung_waits_for_every_result_and_tell_is_pure():
    sh = mf.successive_halving(1, min_budget=1, max_budget=3, eta=3)  # rungs (3, 1), (1, 3)
    state, jobs = sh.ask(sh.init(KEY), KEY, 3)
    half, _ = sh.tell(state, take(jobs, [0, 1]), [0.5, 0.2])
    _, none = sh.ask(half, KEY, 3)
    assert none.index.size == 0
    assert np.all(np.isnan(state.inner.fitness))  # the earlier state is unchanged
    full, _ = sh.tell(half, take(jobs, [2]), [np.nan])  # NaN ranks last
    _, promoted = sh.ask(full, KEY, 3)
    np.testing.assert_array_equal(promoted.parent, [jobs.index[1]])  # continues from its rung-0 job
    np.testing.assert_array_equal(promoted.index, [3])
    np.testing.assert_array_equal(promoted.fidelity, [3])


def test_tell_rejects_unknown_trials_and_wrong_budgets():
    sh = mf.successive_halving(1, min_budget=1, max_budget=3, eta=3)
    state, jobs = sh.ask(sh.init(KEY), KEY, 3)
    first = take(jobs, [0])
    with pytest.raises(ValueError, match="budget 1.*fidelity 3"):
        sh.tell(state, first._replace(fidelity=np.array([3.0], np.float32)), [0.1])
    with pytest.raises(ValueError, match="proposal 99 is not running"):
        sh.tell(state, first._replace(index=np.array([99], np.int32)), [0.1])
    done, _ = sh.tell(state, first, [0.1])
    with pytest.raises(ValueError, match="proposal 0 is not running"):
        sh.tell(done, first, [0.1])  # reported twice
    with pytest.raises(ValueError, match="n"):
        sh.ask(state, KEY, -1)


def test_hyperband_runs_every_bracket_as_planned():
    hb = mf.hyperband(2, min_budget=1, max_budget=27, eta=3)
    state, jobs_log = run_sync(hb, seed=0)
    for b, rungs in enumerate(hb.brackets):
        members = np.flatnonzero(state.inner.bracket == b)
        for k, rung in enumerate(rungs):
            assert np.sum(~np.isnan(state.inner.fitness[members, k])) == rung.n_configs
    assert mf.budget_spent(state) == pytest.approx(mf.planned_budget(hb.brackets))
    budgets = np.concatenate([j.fidelity for j in jobs_log])
    assert budgets.size == sum(r.n_configs for rungs in hb.brackets for r in rungs)


def test_hyperband_iterations_repeat_the_brackets():
    hb = mf.hyperband(2, min_budget=1, max_budget=9, eta=3, n_iterations=2, integer_budgets=True)
    assert hb.brackets == mf.hyperband_brackets(1, 9, 3) * 2
    state, _ = run_sync(hb, seed=3)
    assert np.unique(state.inner.bracket).tolist() == list(range(6))
    assert mf.budget_spent(state) == 2 * mf.planned_budget(hb.brackets[:3])


def test_generator_is_asked_per_bracket_and_told_rung0_results():
    calls = []

    def init(key):
        return jnp.zeros(())

    def ask(state, key, n):
        calls.append(("ask", n))
        return state + 1, jax.random.uniform(key, (n, 2))

    def tell(state, u, fitness):
        calls.append(("tell", u.shape[0], np.asarray(fitness)))
        return state + 100

    hb = mf.hyperband(2, min_budget=1, max_budget=9, eta=3, generator=make(2, init, ask, tell))
    state, _ = run_sync(hb, seed=1)
    asks = [c[1] for c in calls if c[0] == "ask"]
    tells = [c for c in calls if c[0] == "tell"]
    assert asks == [r[0].n_configs for r in hb.brackets] == [9, 5, 3]
    assert [t[1] for t in tells] == asks
    first = np.flatnonzero(state.inner.bracket == 0)
    np.testing.assert_allclose(tells[0][2], state.inner.fitness[first, 0], rtol=1e-6)
    assert float(state.inner.generator_state.inner) == 3 + 300


# ---------------------------------------------------------------- ASHA


def test_asha_promotes_as_soon_as_a_config_is_in_the_top_third():
    sched = mf.asha(1, min_budget=1, max_budget=9, eta=3)
    state, jobs = sched.ask(sched.init(KEY), KEY, 2)
    state, _ = sched.tell(state, jobs, [0.5, 0.1])
    state, nxt = sched.ask(state, KEY, 1)  # only 2 results at rung 0: floor(2/3) = 0, new config
    assert nxt.fidelity[0] == 1 and nxt.parent[0] == -1
    state, _ = sched.tell(state, nxt, [0.9])
    state, promo = sched.ask(state, KEY, 2)  # 3 results: the best (proposal 1) goes up, then new
    np.testing.assert_array_equal(promo.fidelity, [3, 1])
    np.testing.assert_array_equal(promo.parent, [jobs.index[1], -1])
    np.testing.assert_allclose(promo.u[0], jobs.u[1])
    state, _ = sched.tell(state, promo, [0.05, 0.7])
    state, nxt = sched.ask(state, KEY, 1)  # 4 results at rung 0, top 1 already promoted
    assert nxt.fidelity[0] == 1 and nxt.parent[0] == -1
    assert not mf.is_done(state)


def test_asha_never_promotes_a_diverged_trial():
    sched = mf.asha(1, min_budget=1, max_budget=3, eta=3)
    state, jobs = sched.ask(sched.init(KEY), KEY, 3)
    state, _ = sched.tell(state, jobs, [np.nan, np.inf, np.nan])
    state, nxt = sched.ask(state, KEY, 1)
    assert nxt.fidelity[0] == 1  # nothing finite to promote


# ---------------------------------------------------------------- the benchmark


def test_successive_halving_beats_random_search_at_equal_budget():
    sh = mf.successive_halving(2, min_budget=1, max_budget=27, eta=3, n_configs=81)
    budget = mf.planned_budget(sh.brackets)  # 243 = 9 full trainings
    sh_regret, rs_regret, rs_triple_regret = [], [], []
    for seed in range(20):
        state, _ = run_sync(sh, seed)
        sh_regret.append(true_loss(mf.best_trial(state).u))
        rs_regret.append(random_search_regret(seed, budget, 27))
        rs_triple_regret.append(random_search_regret(seed, 3 * budget, 27))
    summary = (np.mean(sh_regret), np.mean(rs_regret), np.mean(rs_triple_regret))
    assert np.mean(sh_regret) < 0.5 * np.mean(rs_regret), summary
    # near-best with a third of the budget random search needs for the same quality
    assert np.mean(sh_regret) < np.mean(rs_triple_regret), summary


def test_hyperband_beats_random_search_at_equal_budget():
    hb = mf.hyperband(2, min_budget=1, max_budget=27, eta=3)
    budget = mf.planned_budget(hb.brackets)
    hb_regret, rs_regret = [], []
    for seed in range(20):
        state, _ = run_sync(hb, seed)
        hb_regret.append(true_loss(mf.best_trial(state).u))
        rs_regret.append(random_search_regret(seed, budget, 27))
    assert np.mean(hb_regret) < 0.6 * np.mean(rs_regret), (np.mean(hb_regret), np.mean(rs_regret))


def test_asha_beats_random_search_at_equal_budget():
    sched = mf.asha(2, min_budget=1, max_budget=27, eta=3)
    asha_regret, rs_regret = [], []
    for seed in range(10):
        state = run_asha(sched, seed, total_budget=300)
        best = mf.best_trial(state)
        assert best.budget == 27
        asha_regret.append(true_loss(best.u))
        rs_regret.append(random_search_regret(seed, mf.budget_spent(state), 27))
    assert np.mean(asha_regret) < 0.6 * np.mean(rs_regret), (np.mean(asha_regret), np.mean(rs_regret))


# ---------------------------------------------------------------- the state is a pytree the store saves


def test_scheduler_state_round_trips_through_the_store_format():
    from vhjax.search import storage

    hb = mf.hyperband(2, min_budget=1, max_budget=9, eta=3)
    state = hb.init(KEY)
    state, jobs = hb.ask(state, KEY, 7)
    state, _ = hb.tell(state, take(jobs, np.arange(4)), np.arange(4.0))
    restored = storage.state_from_bytes(storage.state_to_bytes(state), hb.init(KEY))
    for name in ("u", "bracket", "rung", "status", "fitness", "latest"):
        np.testing.assert_array_equal(getattr(restored.inner, name), getattr(state.inner, name))
    assert restored.inner.next_bracket == state.inner.next_bracket and int(restored.asked) == 7
    # the restored state goes on exactly as the original
    rest = take(jobs, np.arange(4, 7))
    a, _ = hb.tell(state, rest, [5.0, 6.0, 7.0])
    b, _ = hb.tell(restored, rest, [5.0, 6.0, 7.0])
    _, pa = hb.ask(a, KEY, 9)
    _, pb = hb.ask(b, KEY, 9)
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
