"""Tree ensembles (`vhjax.ensemble.trees`): fits, probabilities over every class, input checks,
the search objective through `vhjax.search`, and stacking trees with network-like members."""

import numpy as np
import pytest

sklearn_datasets = pytest.importorskip("sklearn.datasets")

from vhjax import search  # noqa: E402
from vhjax.ensemble import combine  # noqa: E402
from vhjax.ensemble import trees  # noqa: E402
from vhjax.search.space import Categorical, Space  # noqa: E402



def needs(kind):
    """xgboost is supported when installed; the other kinds' libraries come with the test extra."""
    if kind == "xgboost":
        pytest.importorskip("xgboost")


def moons(n=600, seed=0):
    x, y = sklearn_datasets.make_moons(n_samples=n, noise=0.3, random_state=seed)
    return x.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def digits():
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)  # images: flattened by the module
    return x[:500], y[:500].astype(np.int32), x[500:800], y[500:800].astype(np.int32)


def checkerboard(n, seed):
    """A 4x4 checkerboard on [0, 4)^2: no shallow tree can draw it."""
    x = np.random.default_rng(seed).uniform(0, 4, (n, 2)).astype(np.float32)
    return x, ((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2).astype(np.int32)


def test_forest_beats_one_shallow_tree_on_a_checkerboard():
    x, y = checkerboard(800, 0)
    xt, yt = checkerboard(2000, 1)
    forest = trees.fit_trees("random_forest", x, y, n_estimators=50, min_samples_leaf=3)
    tree = trees.fit_trees("random_forest", x, y, n_estimators=1, max_depth=3, bootstrap=False, max_features=None)
    forest_acc, tree_acc = forest.evaluate(xt, yt)["accuracy"], tree.evaluate(xt, yt)["accuracy"]
    assert forest_acc > 0.93 and tree_acc < 0.75, (forest_acc, tree_acc)


@pytest.mark.parametrize("kind", trees.KINDS)
def test_probabilities_cover_every_class(kind, digits):
    needs(kind)
    x, y, xv, _ = digits
    keep = np.isin(y, [0, 1, 3])  # classes 2 and 4 never seen
    model = trees.fit_trees(kind, x[keep], y[keep], classes=5, **{trees.SIZE_PARAM[kind]: 5})
    probs = model.predict_proba(xv)
    assert probs.shape == (len(xv), 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert np.all(probs[:, [2, 4]] == 0) and np.all(probs >= 0)
    assert set(np.unique(model.predict(xv))) <= {0, 1, 3}
    report = model.evaluate(x[keep], y[keep])
    assert set(report) == {"accuracy", "nll", "brier", "ece"} and report["accuracy"] > 0.9
    if kind != "gbdt":
        importances = model.feature_importances
        assert importances.shape == (64,) and np.isclose(importances.sum(), 1.0)


def test_gbdt_importances_point_to_permutation_importances(digits):
    x, y, xv, yv = digits
    model = trees.fit_trees("gbdt", x, y, max_iter=5)
    with pytest.raises(ValueError, match="permutation_importances"):
        model.feature_importances
    drops = model.permutation_importances(xv[:100], yv[:100], repeats=2)
    assert drops.shape == (64,) and drops.max() > 0 and np.all(drops[[0, 8, 16]] == 0)  # blank pixels: no drop


@pytest.mark.parametrize("call, match", [
    (lambda x, y: trees.fit_trees("forest", x, y), "kind has value 'forest'; allowed: one of 'random_forest'"),
    (lambda x, y: trees.fit_trees("random_forest", x, y, n_trees=5), r"params\['n_trees'\] has value 5; allowed: "
                                                                     "parameters of 'random_forest': .*n_estimators"),
    (lambda x, y: trees.fit_trees("gbdt", x, y, random_state=1), r"params\['random_state'\].*pass seed="),
    (lambda x, y: trees.fit_trees("random_forest", x, y[:-1]), r"y.shape has value \(599,\); allowed: \(600,\)"),
    (lambda x, y: trees.fit_trees("random_forest", x, y + 0.5), "y.dtype has value 'float64'; allowed: integer"),
    (lambda x, y: trees.fit_trees("random_forest", x, y - 1), "y has value 'labels down to -1'"),
    (lambda x, y: trees.fit_trees("random_forest", x, y, classes=1), "classes has value 1; allowed: an integer >= 2"),
    (lambda x, y: trees.fit_trees("random_forest", x, np.zeros_like(y)), "at least two classes"),
    (lambda x, y: trees.fit_trees("random_forest", x[:, 0], y), r"x.shape has value \(600,\)"),
    (lambda x, y: trees.fit_trees("random_forest", np.where(x > 1, np.inf, x), y), "x has value 'infinite values"),
    (lambda x, y: trees.fit_trees("random_forest", x, y, seed=-1), "seed has value -1"),
])
def test_bad_input_is_refused_before_fitting(call, match, monkeypatch):
    x, y = moons()
    fitted = []
    monkeypatch.setattr("sklearn.ensemble.RandomForestClassifier.fit", lambda *a, **k: fitted.append(1))
    with pytest.raises(ValueError, match=match):
        call(x, y)
    assert not fitted


def test_predicting_other_shapes_is_refused():
    x, y = moons()
    model = trees.fit_trees("extra_trees", x, y, n_estimators=3)
    with pytest.raises(ValueError, match=r"x.shape has value \(4, 3\); allowed: .*2 features"):
        model.predict_proba(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="y has value 'labels up to 2'"):
        model.evaluate(x, np.full(len(x), 2))


def test_search_finds_better_than_a_bad_configuration_and_refits_it(digits):
    x, y, xv, yv = digits
    objective = trees.TreeObjective("extra_trees", x, y, xv, yv, n_jobs=1)
    space = trees.tree_space("extra_trees", size=(4, 32))
    result = search(objective, space, "random", budget=6, population=3, seed=0, verbose=False)
    bad = objective.score({"n_estimators": 1, "max_depth": 1})
    assert result.best.fitness > bad["accuracy"] + 0.3
    assert result.best.fitness > 0.75
    assert set(result.best.metrics) >= {"accuracy", "nll", "brier", "ece", "fit_seconds"}
    refit = trees.tree_members(objective, result)[0]
    assert refit.evaluate(xv, yv)["accuracy"] == pytest.approx(result.best.fitness, abs=1e-9)
    assert objective.fingerprint()["data"] == trees.TreeObjective("extra_trees", x, y, xv, yv).fingerprint()["data"]


def test_a_failing_fit_is_a_failed_trial_not_a_crash(digits):
    x, y, xv, yv = digits
    objective = trees.TreeObjective("random_forest", x, y, xv, yv, metric="nll", n_estimators=3)
    space = Space({"max_depth": Categorical((0, 3))})  # max_depth=0 is refused by scikit-learn
    with pytest.warns(RuntimeWarning, match="failed"):
        result = search(objective, space, "grid", budget=2, population=2, verbose=False,
                        direction=objective.direction)
    statuses = {trial.params["max_depth"]: trial.status for trial in result.trials}
    assert statuses == {0: "failed", 3: "complete"}
    assert list(objective.failures) == [t.trial_id for t in result.trials if t.status == "failed"]
    assert result.best.params == {"max_depth": 3}


def test_a_multi_fidelity_budget_sets_the_number_of_trees(digits):
    x, y, xv, yv = digits
    objective = trees.TreeObjective("random_forest", x, y, xv, yv)
    sizes = []
    fit = objective.fit
    objective.fit = lambda params: sizes.append(params["n_estimators"]) or fit(params)
    space = Space({"max_depth": Categorical((2, 8))})
    result = search(objective, space, "successive_halving", budget=4, population=4, verbose=False,
                    strategy_kwargs={"min_budget": 3, "max_budget": 9, "n_configs": 3})
    assert sorted(set(sizes)) == [3, 9]
    assert result.best.fidelity == 9 and result.best.params == {"max_depth": 8}


def test_search_refuses_unknown_parameter_names(digits):
    x, y, xv, yv = digits
    with pytest.raises(ValueError, match=r"params\['depth'\]"):
        trees.TreeObjective("random_forest", x, y, xv, yv, depth=3)
    objective = trees.TreeObjective("random_forest", x, y, xv, yv)
    with pytest.raises(ValueError, match=r"params\['depth'\]"):
        search(objective, Space({"depth": Categorical((2, 3))}), "grid", budget=2, verbose=False)


@pytest.mark.parametrize("kind", trees.KINDS)
def test_default_spaces_name_real_parameters(kind):
    needs(kind)
    space = trees.tree_space(kind)
    params = space.decode(np.full(space.dim, 0.5))
    assert trees.check_params(kind, params) == params


def test_heterogeneous_stacking_weights_the_good_member(digits):
    x, y, xv, yv = digits
    good = trees.fit_trees("lightgbm", x, y, n_estimators=20, classes=10)
    rng = np.random.default_rng(0)

    class RandomNetworks:  # stands for a neural Ensemble: member_probs(x) -> (M, N, C)
        def member_probs(self, inputs):
            return rng.dirichlet(np.ones(10), size=(2, len(inputs))).astype(np.float32)

    probs = trees.stack_probs(good, RandomNetworks(), x=xv)
    assert probs.shape == (3, len(xv), 10)
    weights = combine.fit_weights(probs, yv)
    assert weights[0] > 0.9, weights
    caruana, _ = combine.caruana_selection(probs, yv)
    assert caruana[0] == 1.0
    meta = combine.fit_stacking(probs, yv)
    stacked = np.asarray(combine.stacking_predict(meta, probs))
    averaged = np.asarray(combine.average(probs))
    assert np.mean(stacked.argmax(1) == yv) >= np.mean(averaged.argmax(1) == yv)
    assert np.mean(stacked.argmax(1) == yv) > 0.85


def test_stack_probs_refuses_members_that_disagree(digits):
    x, y, xv, _ = digits
    model = trees.fit_trees("extra_trees", x, y, n_estimators=3)
    with pytest.raises(ValueError, match=r"parts\[1\] classes has value 3; allowed: 10"):
        trees.stack_probs(model, np.full((len(xv), 3), 1 / 3), x=xv)
    with pytest.raises(ValueError, match=r"parts\[1\] examples has value 4"):
        trees.stack_probs(model, np.full((4, 10), 0.1), x=xv)
    with pytest.raises(ValueError, match="x has value None"):
        trees.stack_probs(model)


def test_lightgbm_fits_quietly(capfd):
    x, y = moons()
    xt, yt = moons(1000, seed=1)
    model = trees.fit_trees("lightgbm", x, y, n_estimators=50, num_leaves=8)
    assert model.evaluate(xt, yt)["accuracy"] > 0.85
    out, err = capfd.readouterr()
    assert out == "" and err == ""
