"""DP-SGD members (per-example clipping and Gaussian noise in the one train step) and their
(epsilon, delta) accounting (`vhjax.privacy`)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.datasets import tiny_classification
from vhjax import privacy
from vhjax.config import TrainConfig
from vhjax.population import fit, fit_population
from vhjax.population.members import init_population
from vhjax.train.step import make_train_step
from vhjax.train.task import build_task

DATA = tiny_classification(rows=300, features=12, classes=4)


def config(**overrides) -> TrainConfig:
    base = dict(dataset=DATA, model="mlp", model_kwargs={"widths": (16,), "num_classes": 4}, optimizer="sgd",
                learning_rate=1.0, batch_size=20, steps=1, eval_every=1, eval_metrics=("accuracy",),
                dp_clip_norm=1.0)
    return TrainConfig(**{**base, **overrides})


def one_step(cfg: TrainConfig, hparams: dict) -> tuple:
    """(parameter change of every member after one step, step metrics) from one shared init."""
    task = build_task(cfg)
    size = len(next(iter(hparams.values())))
    population = init_population(task, size, hparams, seeds=[0] * size)
    members = population.members
    batch = (jnp.asarray(task.train.x[: cfg.batch_size]), jnp.asarray(task.train.y[: cfg.batch_size]))
    stepped, metrics = jax.jit(jax.vmap(make_train_step(task), in_axes=(0, None)))(members, batch)
    change = jax.tree.map(lambda new, old: new - old, stepped.params, members.params)
    flat = jnp.concatenate([leaf.reshape(size, -1) for leaf in jax.tree.leaves(change)], axis=1)
    return np.asarray(flat), metrics


def test_a_member_with_clip_norm_zero_takes_the_plain_gradient_step():
    private, _ = one_step(config(), {"dp_clip_norm": [0.0], "noise_multiplier": [0.0]})
    plain, _ = one_step(config(dp_clip_norm=None), {"learning_rate": [1.0]})
    np.testing.assert_allclose(private, plain, atol=1e-6)


def test_clipping_bounds_each_examples_contribution():
    change, metrics = one_step(config(), {"dp_clip_norm": [0.0, 1e-3], "noise_multiplier": [0.0, 0.0]})
    plain_norm, clipped_norm = np.linalg.norm(change, axis=1)
    assert clipped_norm <= 1e-3 * (1 + 1e-4)  # SGD at rate 1: the mean of vectors of norm <= C
    assert plain_norm > 100 * clipped_norm
    np.testing.assert_allclose(np.asarray(metrics["clipped_fraction"]), [0.0, 1.0])


def test_noise_has_std_noise_multiplier_times_clip_norm_over_the_batch():
    clip, multiplier = 0.5, 3.0
    change, _ = one_step(config(), {"dp_clip_norm": [clip, clip], "noise_multiplier": [0.0, multiplier]})
    noise = change[1] - change[0]  # same init, batch and keys: the difference is the noise alone
    expected = multiplier * clip / 20
    assert noise.size > 200
    assert abs(noise.std() / expected - 1) < 0.1
    assert abs(noise.mean()) < 3 * expected / np.sqrt(noise.size)


def test_more_noise_loses_accuracy_and_spends_less_privacy(tmp_path):
    cfg = config(steps=200, eval_every=200, learning_rate=0.5, dp_clip_norm=1.0, noise_multiplier=0.0)
    members = [{"dp_clip_norm": 0.0}, {"noise_multiplier": 0.5}, {"noise_multiplier": 30.0}]
    result = fit_population(cfg, members, workdir=tmp_path / "run", verbose=False)
    plain, mild, heavy = (m["eval"]["accuracy"] for m in result.members)
    assert heavy < mild - 0.15 and heavy < plain - 0.15
    assert result.members[0]["privacy"] is None
    mild_spent, heavy_spent = result.members[1]["privacy"], result.members[2]["privacy"]
    assert heavy_spent["epsilon"] < mild_spent["epsilon"] < float("inf")
    assert mild_spent["steps"] == 200 and mild_spent["sample_rate"] == pytest.approx(20 / 240)
    assert mild_spent["epsilon"] == pytest.approx(privacy.epsilon(0.5, 20 / 240, 200, 1e-5))
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored[2]["privacy"]["epsilon"] == pytest.approx(heavy_spent["epsilon"])


def test_fit_reports_the_privacy_spent():
    result = fit(config(steps=30, eval_every=30, noise_multiplier=1.0, dp_delta=1e-6), verbose=False)
    assert result.privacy["delta"] == 1e-6 and result.privacy["steps"] == 30
    assert result.privacy["epsilon"] == pytest.approx(privacy.epsilon(1.0, 20 / 240, 30, 1e-6))


def test_accounting_grows_with_steps_and_sampling_and_shrinks_with_noise():
    base = privacy.epsilon(1.0, 0.01, 1000)
    assert privacy.epsilon(1.0, 0.01, 4000) > base
    assert privacy.epsilon(1.0, 0.04, 1000) > base
    assert privacy.epsilon(2.0, 0.01, 1000) < base
    assert privacy.epsilon(1.0, 0.01, 0) == 0.0 and privacy.epsilon(0.0, 0.01, 10) == float("inf")
    assert privacy.epsilon(1.0, 0.01, 1000, accountant="pld") <= base * 1.01  # PLD is the tighter bound


def test_noise_for_epsilon_inverts_the_accountant():
    noise = privacy.noise_for_epsilon(2.0, 0.02, 500, delta=1e-5)
    assert privacy.epsilon(noise, 0.02, 500, 1e-5) == pytest.approx(2.0, rel=1e-3)
    assert privacy.epsilon(noise * 0.9, 0.02, 500, 1e-5) > 2.0


@pytest.mark.parametrize("overrides, field", [
    ({"dp_clip_norm": None, "noise_multiplier": 1.0}, "noise_multiplier"),
    ({"mixing": "mixup", "mixing_strength": 0.2}, "mixing"),
    ({"grad_accumulation": 2}, "grad_accumulation"),
    ({"dp_clip_norm": -1.0}, "dp_clip_norm"),
    ({"dp_delta": 1.0}, "dp_delta"),
    ({"dp_sampling": "bernoulli"}, "dp_sampling"),
    ({"dp_clip_norm": None, "dp_sampling": "poisson"}, "dp_sampling"),
    ({"dp_max_batch_size": 30}, "dp_max_batch_size"),  # a bound of shuffled batches
    ({"dp_sampling": "poisson", "dp_max_batch_size": 10}, "dp_max_batch_size"),  # below batch_size 20
])
def test_bad_privacy_settings_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"config field '{field}'"):
        build_task(config(**overrides))


def test_a_model_with_batch_statistics_is_refused_before_compiling():
    cfg = config(dataset={"train": (np.zeros((40, 8, 8, 1), np.float32), np.arange(40, dtype=np.int32) % 2)},
                 eval_split="train", model="resnet",
                 model_kwargs={"stage_sizes": (1,), "widths": (4,), "stem_features": 4, "num_classes": 2})
    with pytest.raises(ValueError, match="batch_stats"):
        build_task(cfg)


def test_members_with_noise_but_no_clip_norm_and_without_dp_are_refused():
    with pytest.raises(ValueError, match="member 1: hyperparameter 'noise_multiplier' has value 2"):
        fit_population(config(), [{"noise_multiplier": 0.0}, {"dp_clip_norm": 0.0, "noise_multiplier": 2.0}],
                       verbose=False)
    with pytest.raises(ValueError, match="dp_clip_norm=..."):
        fit_population(config(dp_clip_norm=None), [{"noise_multiplier": 1.0}], verbose=False)


def test_configs_without_privacy_describe_themselves_as_before():
    assert not {"dp_clip_norm", "noise_multiplier", "dp_delta", "dp_sampling", "dp_max_batch_size"} & set(
        TrainConfig().to_dict())
    assert TrainConfig().sections()["privacy"] == {"dp_clip_norm": None, "noise_multiplier": 0.0, "dp_delta": 1e-5,
                                                   "dp_sampling": "shuffle", "dp_max_batch_size": None}
    assert TrainConfig(dp_clip_norm=1.0).to_dict()["dp_clip_norm"] == 1.0


def test_a_search_trades_accuracy_against_epsilon():
    import vhjax
    from vhjax.search.space import Categorical, Space
    from vhjax.search.training import TrainingObjective

    space = Space({"noise_multiplier": Categorical([0.0, 0.5, 2.0, 30.0])})
    objective = TrainingObjective(config(steps=100, eval_every=100, learning_rate=0.5))
    result = vhjax.search(objective, space, "grid", budget=4, population=4, verbose=False,
                          objectives={"accuracy": "maximize", "epsilon": "minimize"})
    spent = {t.params["noise_multiplier"]: t.metrics["epsilon"] for t in result.trials}
    assert spent[0.0] == float("inf") and spent[30.0] < spent[2.0] < spent[0.5] < float("inf")
    front = {t.params["noise_multiplier"] for t in result.pareto_front}
    assert 30.0 in front  # the least epsilon is never dominated


def test_population_based_training_refuses_dp_sgd_and_tune_takes_asha():
    from vhjax.population.pbt import fit_pbt
    from vhjax.search.space import Float, Space
    from vhjax.search.tune_pbt import choose_method

    with pytest.raises(ValueError, match="config field 'dp_clip_norm'.*copies weights"):
        fit_pbt(config(steps=20), [{"noise_multiplier": 1.0}, {"noise_multiplier": 2.0}], {}, interval=10)
    space = Space({"noise_multiplier": Float(0.5, 4.0)})
    assert choose_method("auto", space, budget=16, trials=None, direction="maximize", storage=None, asha_only={}) == "pbt"
    assert choose_method("auto", space, budget=16, trials=None, direction="maximize", storage=None, asha_only={},
                         private=True) == "asha"


def test_entry_points_with_steps_of_their_own_refuse_dp_sgd():
    from vhjax.ensemble import train_members
    from vhjax.models import get_model
    from vhjax.transfer import adapt, anneal, pretrain

    private = config(steps=4)
    x, y = DATA["train"]
    calls = {
        "adapt": lambda: adapt(private, target={"x": x}, verbose=False),
        "pretrain": lambda: pretrain(private, verbose=False),
        "anneal": lambda: anneal(private, source={"params": {}}),
        "adversarial": lambda: train_members(get_model("mlp", widths=(8,), num_classes=4), x, y, size=2,
                                             key=jax.random.key(0), steps=4, epsilon=0.1,
                                             config={"dp_clip_norm": 1.0}),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="config field 'dp_clip_norm'.*its own step"):
            call()


def test_poisson_batches_train_and_are_accounted_as_truncated_poisson_sampling(tmp_path):
    from vhjax.train.poisson import default_max_batch_size

    cfg = config(steps=200, eval_every=200, learning_rate=0.5, noise_multiplier=0.0, dp_sampling="poisson")
    members = [{"dp_clip_norm": 0.0}, {"noise_multiplier": 0.5}, {"noise_multiplier": 30.0}]
    result = fit_population(cfg, members, workdir=tmp_path / "run", verbose=False)
    plain, mild, heavy = (m["eval"]["accuracy"] for m in result.members)
    assert plain > 0.6 and heavy < mild - 0.15 and heavy < plain - 0.15
    assert result.members[0]["privacy"] is None
    bound = default_max_batch_size(20, 240)
    spent = result.members[1]["privacy"]
    assert (spent["sampling"], spent["accountant"], spent["max_batch_size"], spent["steps"]) == (
        "poisson", "pld", bound, 200)
    assert spent["epsilon"] == pytest.approx(privacy.epsilon(0.5, 20 / 240, 200, 1e-5, "pld", dataset_size=240,
                                                             max_batch_size=bound))
    # the default bound is rarely reached: the truncated accounting is plain Poisson sampling's
    assert spent["epsilon"] == pytest.approx(privacy.epsilon(0.5, 20 / 240, 200, 1e-5, "pld"), rel=1e-3)
    assert result.members[2]["privacy"]["epsilon"] < spent["epsilon"]


def test_a_tight_bound_costs_privacy_and_only_the_pld_accountant_accounts_it():
    full = privacy.epsilon(1.0, 0.05, 20, 1e-5, "pld")
    assert privacy.epsilon(1.0, 0.05, 20, 1e-5, "pld", dataset_size=400, max_batch_size=400) == full  # no cut
    assert privacy.epsilon(1.0, 0.05, 20, 1e-5, "pld", dataset_size=400, max_batch_size=21) > 1.5 * full
    with pytest.raises(ValueError, match="accountant has value 'rdp'; allowed: 'pld'"):
        privacy.epsilon(1.0, 0.05, 20, 1e-5, dataset_size=400, max_batch_size=21)


def test_entry_points_that_draw_their_own_batches_refuse_poisson_batches():
    from vhjax.ensemble import bagging
    from vhjax.models import get_model
    from vhjax.population import fit_kfold

    poisson = config(steps=4, dp_sampling="poisson")
    x, y = DATA["train"]
    with pytest.raises(ValueError, match="config field 'dp_sampling' has value 'poisson'.*k-fold"):
        fit_kfold(poisson, [{}], k=2, verbose=False)
    with pytest.raises(ValueError, match="config field 'dp_sampling' has value 'poisson'.*bagging"):
        bagging(get_model("mlp", widths=(8,), num_classes=4), x, y, size=2, key=jax.random.key(0), steps=4,
                batch_size=20, config={"dp_clip_norm": 1.0, "dp_sampling": "poisson"})
