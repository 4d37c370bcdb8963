"""A shrinking PBT population: the best members move into the kept slots, the others stop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.population.exploit import shrink_sources, truncation_select
from vhjax.population.pbt import fit_pbt, kept_slot_mask, shrink_member_group

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=90, eval_every=90, train_split="train[:80%]",
                     eval_split="train[80%:]", test_split="test", seed=0)
RATES = (1e-5, 3e-3, 1e-4, 1e-2, 3e-5, 5e-3, 3e-4, 1e-3)
MEMBERS = [{"learning_rate": lr} for lr in RATES]
EXPLORE = {"learning_rate": (1e-5, 1e-1, True)}


def test_shrink_sources_moves_the_best_members_into_the_kept_slots():
    scores = jnp.array([0.1, 0.9, 0.5, 0.8, jnp.nan, 0.7, 0.2, 0.95])
    eligible = jnp.array([True] * 7 + [False])  # member 7 was stopped before: never kept, however it scored
    source = np.asarray(shrink_sources(scores, eligible, jnp.asarray(kept_slot_mask(8, 4))))
    # the best four eligible: 1, 3, 5, 2; slots 1-3 hold three of them already, slot 0 takes member 5
    np.testing.assert_array_equal(source, [5, 1, 2, 3, 4, 5, 6, 7])
    # on two devices the kept slots are the first two of each device's block: 0, 1 and 4, 5
    source = np.asarray(shrink_sources(scores, eligible, jnp.asarray(kept_slot_mask(8, 4, shards=2))))
    assert sorted(source[[0, 1, 4, 5]].tolist()) == [1, 2, 3, 5]
    np.testing.assert_array_equal(source[[1, 5]], [1, 5])  # members already in a kept slot stay
    np.testing.assert_array_equal(source[[2, 3, 6, 7]], [2, 3, 6, 7])


def test_only_eligible_members_take_part_in_the_exploit():
    key = jax.random.key(0)
    scores = jnp.array([0.9, 0.1, 0.8, 0.2, 0.99, 0.0, 0.7, 0.3])
    plain, _ = truncation_select(key, scores, 0.25, maximize=True)
    assert np.array_equal(plain, truncation_select(key, scores, 0.25, maximize=True, eligible=jnp.ones(8, bool))[0])
    eligible = jnp.array([True, True, True, True, False, False, False, False])
    for seed in range(20):
        source, copied = truncation_select(jax.random.key(seed), scores, 0.25, maximize=True, eligible=eligible)
        source, copied = np.asarray(source), np.asarray(copied)
        assert not copied[4:].any() and np.array_equal(source[4:], [4, 5, 6, 7])  # neither copied nor donors
        assert copied[:4].tolist() == [False, True, False, False]  # a quarter of the four: the worst, member 1
        assert source[1] == 0  # copies the best of the four (0.99 of member 4 does not count)


def test_kept_slots_split_evenly_over_the_devices_and_fill_whole_member_groups(monkeypatch):
    assert np.flatnonzero(kept_slot_mask(32, 16, shards=2)).tolist() == [*range(8), *range(16, 24)]
    assert np.flatnonzero(kept_slot_mask(10, 3, shards=2)).tolist() == [0, 1, 2]  # uneven: the first slots
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert shrink_member_group(32, 2, []) == 8  # the engine's default: 16 members per device in groups of 8
    assert shrink_member_group(32, 2, [16]) == 8  # 8 kept per device: one whole group each
    assert shrink_member_group(32, 2, [16, 8]) == 4  # 4 kept per device: groups of 4
    assert shrink_member_group(32, 1, [24]) == 8


def test_a_shrinking_population_keeps_the_best_and_stops_the_rest():
    result = fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, shrink={0: 4, 1: 2}, verbose=False)
    first, second, last = result.history
    assert sum(first["stopped"]) == 0 and sum(second["stopped"]) == 4 and sum(last["stopped"]) == 6
    best_four = set(np.argsort(first["score"])[::-1][:4].tolist())
    kept = [i for i, off in enumerate(second["stopped"]) if not off]
    continued = [i if parent < 0 else parent for i, parent in enumerate(result.lineage[0]["parent"])]
    assert {continued[i] for i in kept} <= best_four  # each kept slot continues one of round 0's best four
    assert all(np.isnan(second["score"][i]) for i in range(8) if second["stopped"][i])  # stopped: not scored
    for i, off in enumerate(second["stopped"]):
        if off:  # trained no more: its final evaluation is round 0's
            assert result.members[i]["eval"]["accuracy"] == pytest.approx(first["score"][i])
    kept_last = [i for i, off in enumerate(last["stopped"]) if not off]
    assert max(result.members[i]["eval"]["accuracy"] for i in kept_last) > max(first["score"])  # trained on


def test_search_pbt_stores_the_trials_of_a_shrinking_population(tmp_path):
    from vhjax.search import Float, Space, search_pbt

    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    rows = []
    result = search_pbt(CONFIG, space, population=8, interval=30, shrink={0: 4}, workdir=tmp_path,
                        callback=rows.append, verbose=False)
    assert [sum(row["round"] == r for row in rows) for r in range(3)] == [8, 4, 4]  # no rows for stopped slots
    assert [sum(t.generation == g for t in result.trials) for g in range(3)] == [8, 4, 4]
    by_id = {t.trial_id: t for t in result.trials}
    for trial in result.trials:
        if trial.generation:
            parent = by_id[trial.parent_id]
            assert parent.generation == trial.generation - 1
    first = sorted((t for t in result.trials if t.generation == 0), key=lambda t: t.fitness)
    best_four = {t.slot for t in first[-4:]}
    assert all(by_id[t.parent_id].slot in best_four for t in result.trials if t.generation == 1)  # the kept ones
    stopped = [t for t in result.trials if t.generation == 0 and t.slot not in
               {u.slot for u in result.trials if u.generation == 1}]
    assert len(stopped) == 4 and all("test_accuracy" in t.metrics for t in stopped)  # returned at their last round
    assert all(t.metrics["eval_accuracy"] == pytest.approx(t.fitness) for t in stopped)
    assert result.best.fidelity == 90.0
    again = search_pbt(CONFIG, space, population=8, interval=30, shrink={0: 4}, workdir=tmp_path, verbose=False)
    assert len(again.trials) == 16  # resumed from the store: nothing trained twice
    with pytest.raises(ValueError, match="shrink"):
        search_pbt(CONFIG, space, population=8, interval=30, shrink={1: 4}, workdir=tmp_path, verbose=False)


@pytest.mark.parametrize("shrink,match", [
    ({2: 4}, r"shrink round 2 has value 2; allowed: an integer in \[0, 1\]"),
    ({0: 8}, r"shrink\[0\] has value 8; allowed: an integer in \[2, 7\]"),
    ({0: 4, 1: 6}, r"shrink\[1\] has value 6; allowed: fewer members than the 4 kept at an earlier round"),
    ([4], r"shrink has value \[4\]; allowed: a mapping"),
])
def test_bad_shrink_fails_before_anything_compiles(shrink, match, monkeypatch):
    from vhjax.search import Float, Space, search_pbt
    from vhjax.search import space as space_module

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled (compiled) before the shrink was checked")

    monkeypatch.setattr(space_module.Space, "sample", no_sampling)
    space = Space({"learning_rate": Float(1e-5, 1e-1, log=True)})
    with pytest.raises(ValueError, match=match):
        search_pbt(CONFIG, space, population=8, interval=30, shrink=shrink, verbose=False)
    with pytest.raises(ValueError, match=match):
        fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, shrink=shrink, verbose=False)


def test_no_shrink_is_plain_pbt():
    config = dataclasses.replace(CONFIG, steps=60)
    plain = fit_pbt(config, MEMBERS, EXPLORE, interval=30, verbose=False)
    assert all(not any(entry["stopped"]) for entry in plain.history)
    assert plain.lineage[0]["parent"].count(-1) == 6  # a quarter of 8 copied


def test_an_interrupted_shrinking_run_resumes_identically(tmp_path, run_interrupted):
    full = fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, shrink={0: 4}, workdir=tmp_path / "full", verbose=False)
    run_interrupted(lambda: fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, shrink={0: 4}, workdir=tmp_path / "cut",
                                    verbose=False), at_step=60)  # after the shrink: stopped members in the checkpoint
    resumed = fit_pbt(CONFIG, MEMBERS, EXPLORE, interval=30, shrink={0: 4}, workdir=tmp_path / "cut", verbose=False)
    assert resumed.lineage == full.lineage and resumed.history[-1]["stopped"] == full.history[-1]["stopped"]
    assert [m["eval"] for m in resumed.members] == [m["eval"] for m in full.members]


@pytest.mark.parametrize("shrinking", [False, True])
def test_the_host_decision_is_the_in_program_round(shrinking):
    """`fit_pbt` decides a round on the host with NumPy (nothing compiled); on the same uniforms
    that decision, applied, is `exploit_and_explore`'s round inside a program."""
    from vhjax.population.exploit import get_member_hparams
    from vhjax.population.members import init_population
    from vhjax.population.pbt import apply_decision, exploit_and_explore, pbt_decision, pbt_draws
    from vhjax.train.task import build_task, with_member_hparams

    task = with_member_hparams(build_task(CONFIG), ["dropout_rate"])
    population = init_population(task, 8, {"learning_rate": list(RATES), "dropout_rate": [0.1] * 8})
    population = population.replace(stopped=jnp.array([False] * 7 + [True]))  # an early-stopped member
    scores = np.array([0.1, 0.9, 0.5, 0.8, np.nan, 0.7, 0.2, np.nan], np.float32)
    explore = {"learning_rate": (1e-5, 1e-1, True), "dropout_rate": (0.0, 0.5, False)}
    kept = kept_slot_mask(8, 4) if shrinking else None
    key = jax.random.key(3)
    hparams = {name: np.asarray(value) for name, value in get_member_hparams(population).items()}
    uniforms = np.asarray(jax.random.uniform(key, (pbt_draws(8, hparams, explore),)))
    origin, stopped, explored = pbt_decision(uniforms, scores, hparams, np.asarray(population.stopped), explore,
                                             0.25, 0.5, kept)
    assert isinstance(origin, np.ndarray) and all(isinstance(v, np.ndarray) for v in explored.values())
    on_device, device_origin = jax.jit(exploit_and_explore, static_argnums=(3, 4, 5))(
        key, population, jnp.asarray(scores), tuple(explore.items()), 0.25, 0.5, kept)
    np.testing.assert_array_equal(origin, device_origin)
    if shrinking:  # the best four move into slots 0-3, the others stop
        assert stopped.tolist() == [False] * 4 + [True] * 4 and set(origin[:4].tolist()) <= {1, 2, 3, 5}
    else:  # the stopped member is neither copied nor a donor
        assert stopped.tolist() == [False] * 7 + [True] and origin[7] == 7 and 7 not in origin[:7]
    assert (origin != np.arange(8)).any()  # the round copies someone
    on_host = apply_decision(population, origin, stopped, explored)
    for name, value in get_member_hparams(on_device).items():
        np.testing.assert_allclose(get_member_hparams(on_host)[name], value, rtol=1e-6)
    np.testing.assert_array_equal(on_host.stopped, on_device.stopped)
    for host_leaf, device_leaf in zip(jax.tree.leaves(on_host.members.params),
                                      jax.tree.leaves(on_device.members.params)):
        np.testing.assert_array_equal(host_leaf, device_leaf)


def test_pbt_rounds_compile_one_small_copy_program_and_nothing_per_round():
    """Four rounds, one of them shrinking: the rounds' decisions compile nothing (NumPy on the
    host) and their copy is one program, compiled once (its inputs are placed like the population)."""
    from vhjax.compilation_cache import count_compilations

    members = [{"learning_rate": lr} for lr in RATES[:6]]  # a size no other test compiles for
    with count_compilations() as seen:
        result = fit_pbt(dataclasses.replace(CONFIG, steps=100), members, EXPLORE, interval=20, shrink={1: 4},
                         verbose=False)
    assert len(result.lineage) == 4 and sum(result.history[-1]["stopped"]) == 2
    assert seen.by_function["jit(apply_decision)"] == 1 and seen.by_function["jit(run_free)"] == 1
    assert not [name for name in seen.by_function if "explore" in name or "uniform" in name or "argsort" in name]
