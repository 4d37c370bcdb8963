"""Tree ensembles beside the neural ones: random forests, extra trees and gradient-boosted trees.

`fit_trees(kind, x, y)` fits one of `KINDS` from a well-kept library (scikit-learn's
`RandomForestClassifier`, `ExtraTreesClassifier` and `HistGradientBoostingClassifier`, LightGBM's
`LGBMClassifier`, XGBoost's `XGBClassifier`) and returns a `TreeModel` whose `predict_proba` gives
one column per class `0..C-1`, so its probabilities sit beside a neural `Ensemble.member_probs(x)`:
`stack_probs` puts both on one member axis `(M, N, C)` and every rule of `vhjax.ensemble.combine`
(average, `fit_weights`, `caruana_selection`, `fit_stacking`) combines trees and networks.
`TreeObjective` scores tree configurations on a validation split for `vhjax.search`, over the
default spaces of `tree_space(kind)`.

Inputs of any shape `(N, ...)` are flattened to `(N, D)`. Bad input raises a `ValueError` naming
the field before anything is fitted. The libraries are imported inside the functions that use
them, so `import vhjax` stays light; LightGBM and XGBoost come with the `trees` extra
(`pip install 'vhjax[trees]'`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
import warnings
from typing import Any, Mapping

import numpy as np

from vhjax import validation

KINDS = ("random_forest", "extra_trees", "gbdt", "lightgbm", "xgboost")
# kind -> (module, class, the package to install when the module is missing)
ESTIMATORS = {
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier", "scikit-learn"),
    "extra_trees": ("sklearn.ensemble", "ExtraTreesClassifier", "scikit-learn"),
    "gbdt": ("sklearn.ensemble", "HistGradientBoostingClassifier", "scikit-learn"),
    "lightgbm": ("lightgbm", "LGBMClassifier", "lightgbm"),
    "xgboost": ("xgboost", "XGBClassifier", "xgboost-cpu (or xgboost)"),
}
# settings vhjax passes unless the caller gives them: quiet libraries
DEFAULTS: dict[str, dict[str, Any]] = {"lightgbm": {"verbose": -1}, "xgboost": {"verbosity": 0}}
# the parameter that sets the number of trees (boosting rounds): a multi-fidelity search's budget
SIZE_PARAM = {"random_forest": "n_estimators", "extra_trees": "n_estimators", "gbdt": "max_iter",
              "lightgbm": "n_estimators", "xgboost": "n_estimators"}
METRICS = ("accuracy", "nll", "brier", "ece")
DIRECTIONS = {"accuracy": "maximize", "nll": "minimize", "brier": "minimize", "ece": "minimize"}


# ----------------------------------------------------------------------------- estimators


def estimator_class(kind: str) -> type:
    """The library class behind `kind` (imported now); ImportError naming the package if missing."""
    validation.check_choice("kind", kind, KINDS)
    module, name, package = ESTIMATORS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(f"kind {kind!r} needs the {package} package ({error}); install it, or "
                          "pip install 'vhjax[trees]'") from None


def available_kinds() -> tuple[str, ...]:
    """The kinds whose library imports here."""
    found = []
    for kind in KINDS:
        try:
            estimator_class(kind)
        except ImportError:
            continue
        found.append(kind)
    return tuple(found)


def check_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` as a dict after checking every name is a parameter of `kind`'s estimator."""
    known = set(estimator_class(kind)().get_params())
    for name in params:
        if name == "random_state":
            raise validation.invalid("params['random_state']", params[name], "nothing: pass seed= instead")
        if name not in known:
            raise validation.invalid(f"params[{name!r}]", params[name],
                                     f"parameters of {kind!r}: " + ", ".join(sorted(known - {"random_state"})))
    return dict(params)


# ----------------------------------------------------------------------------- inputs


def flat_inputs(x: Any, field: str = "x", features: int | None = None) -> np.ndarray:
    """`(N, ...)` numbers as a float `(N, D)` array; ValueError for other shapes, kinds or infinities."""
    array = np.asarray(x)
    if array.ndim < 2 or array.shape[0] == 0:
        raise validation.invalid(f"{field}.shape", array.shape, "(N, ...) with N >= 1 examples and features")
    if array.dtype.kind not in "biuf":
        raise validation.invalid(f"{field}.dtype", str(array.dtype), "numbers (bool, int or float)")
    array = array.reshape(array.shape[0], -1).astype(np.float32 if array.dtype.kind != "f" else array.dtype)
    if features is not None and array.shape[1] != features:
        raise validation.invalid(f"{field}.shape", np.shape(x),
                                 f"(N, ...) with {features} features in all, as the model was fitted on")
    if np.isinf(array).any():
        rows = np.flatnonzero(np.isinf(array).any(axis=1))[:5].tolist()
        raise validation.invalid(field, f"infinite values (rows {rows}...)", "finite numbers (NaN marks missing)")
    return array


def check_tree_labels(y: Any, examples: int, classes: int | None = None, field: str = "y") -> np.ndarray:
    """Integer labels `(examples,)` in `[0, classes)` as int64."""
    array = np.asarray(y)
    if array.shape != (examples,):
        raise validation.invalid(f"{field}.shape", array.shape, f"({examples},): one label per example of x")
    if array.dtype.kind not in "iu":
        raise validation.invalid(f"{field}.dtype", str(array.dtype), "integer class labels 0..C-1")
    if array.size and array.min() < 0:
        raise validation.invalid(field, f"labels down to {array.min()}", "integer class labels >= 0")
    if classes is not None and array.size and array.max() >= classes:
        raise validation.invalid(field, f"labels up to {array.max()}", f"labels in [0, {classes - 1}]")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True, eq=False)
class TreeModel:
    """A fitted tree ensemble: probabilities over classes `0..classes-1` of flattened inputs."""

    kind: str
    estimator: Any
    classes: int
    present: np.ndarray  # the classes seen in training, in the estimator's column order
    features: int  # D of the flattened inputs
    params: dict[str, Any]
    seed: int

    def predict_proba(self, x: Any) -> np.ndarray:
        """`(N, classes)` probabilities; classes absent from training get 0."""
        flat = flat_inputs(x, "x", self.features)
        out = np.zeros((flat.shape[0], self.classes), np.float64)
        out[:, self.present] = self.estimator.predict_proba(flat)
        return out / out.sum(axis=1, keepdims=True)

    def predict(self, x: Any) -> np.ndarray:
        """`(N,)` the most probable class."""
        return np.argmax(self.predict_proba(x), axis=1)

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """accuracy, nll, brier and ece (`vhjax.calibration`) on `(x, y)`."""
        from vhjax import calibration

        probs = self.predict_proba(x)
        labels = check_tree_labels(y, probs.shape[0], self.classes)
        return calibration.calibration_metrics(probs.astype(np.float32), labels)

    @property
    def feature_importances(self) -> np.ndarray:
        """`(features,)` the library's importances, normalised to sum to one: mean impurity decrease
        (scikit-learn forests), split counts (LightGBM's default), XGBoost's default. scikit-learn's
        histogram GBDT has none: use `permutation_importances`."""
        values = getattr(self.estimator, "feature_importances_", None)
        if values is None:
            raise validation.invalid("kind", self.kind, "a kind with built-in importances ("
                                     + ", ".join(k for k in KINDS if k != "gbdt")
                                     + "); permutation_importances(x, y) works for every kind")
        values = np.asarray(values, np.float64)
        total = values.sum()
        return values / total if total > 0 else values

    def permutation_importances(self, x: Any, y: Any, *, repeats: int = 5, seed: int = 0) -> np.ndarray:
        """`(features,)` mean drop of accuracy on `(x, y)` when one feature's column is shuffled
        (scikit-learn's `permutation_importance`)."""
        from sklearn.inspection import permutation_importance

        flat = flat_inputs(x, "x", self.features)
        labels = check_tree_labels(y, flat.shape[0], self.classes)
        repeats = validation.check_int("repeats", repeats, minimum=1)
        present = self.present

        def accuracy(estimator: Any, inputs: np.ndarray, targets: np.ndarray) -> float:
            return float(np.mean(present[np.argmax(estimator.predict_proba(inputs), axis=1)] == targets))

        result = permutation_importance(self.estimator, flat, labels, scoring=accuracy, n_repeats=repeats,
                                        random_state=validation.check_int("seed", seed, minimum=0))
        return np.asarray(result.importances_mean, np.float64)


def fit_trees(kind: str, x: Any, y: Any, *, seed: int = 0, classes: int | None = None, **params: Any) -> TreeModel:
    """Fit a tree ensemble of `kind` (one of `KINDS`) on `x (N, ...)` and integer labels `y (N,)`.

    `classes` (default `max(y) + 1`) fixes the probability columns; classes missing from `y` get
    probability 0. `params` go to the estimator (checked against its `get_params()`); `seed` is its
    `random_state`. Everything is checked before the fit.
    """
    validation.check_choice("kind", kind, KINDS)
    seed = validation.check_int("seed", seed, minimum=0, maximum=2**31 - 1)
    flat = flat_inputs(x, "x")
    labels = check_tree_labels(y, flat.shape[0], field="y")
    present = np.unique(labels)
    if present.size < 2:
        raise validation.invalid("y", f"only class {present.tolist()}", "labels of at least two classes")
    if classes is None:
        classes = int(labels.max()) + 1
    classes = validation.check_int("classes", classes, minimum=max(2, int(labels.max()) + 1))
    options = {**DEFAULTS.get(kind, {}), **check_params(kind, params)}
    estimator = estimator_class(kind)(random_state=seed, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*feature names.*")
        estimator.fit(flat, np.searchsorted(present, labels))
    return TreeModel(kind=kind, estimator=estimator, classes=classes, present=present, features=flat.shape[1],
                     params=dict(params), seed=seed)


# ----------------------------------------------------------------------------- stacking with networks


def stack_probs(*parts: Any, x: Any = None) -> np.ndarray:
    """Member probabilities `(M, N, C)` from trees and networks, for `vhjax.ensemble.combine`.

    Each part is a `TreeModel` (one member, predicted on `x`), an object with `member_probs(x)`
    such as a neural `Ensemble` (its members), or an array `(N, C)` (one member) or `(M, N, C)`.
    Every part must give the same examples N and classes C.
    """
    from vhjax.ensemble import combine

    if not parts:
        raise validation.invalid("parts", "()", "at least one TreeModel, Ensemble or probability array")
    arrays = []
    for i, part in enumerate(parts):
        if isinstance(part, TreeModel) or callable(getattr(part, "member_probs", None)):
            if x is None:
                raise validation.invalid("x", None, f"inputs to predict on: part {i} is a {type(part).__name__}")
            probs = part.predict_proba(x)[None] if isinstance(part, TreeModel) else part.member_probs(x)
        else:
            probs = part
        probs = np.asarray(probs, np.float32)
        if probs.ndim == 2:
            probs = probs[None]
        if probs.ndim != 3:
            raise validation.invalid(f"parts[{i}].shape", probs.shape, "(N, C) or (M, N, C) probabilities")
        arrays.append(probs)
    first = arrays[0].shape[1:]
    for i, probs in enumerate(arrays):
        if probs.shape[2] != first[1]:
            raise validation.invalid(f"parts[{i}] classes", probs.shape[2],
                                     f"{first[1]}, the classes of parts[0]: every member predicts the same classes")
        if probs.shape[1] != first[0]:
            raise validation.invalid(f"parts[{i}] examples", probs.shape[1], f"{first[0]}, the examples of parts[0]")
    return combine.check_member_probs(np.concatenate(arrays, axis=0), "stack_probs")


# ----------------------------------------------------------------------------- search


def tree_space(kind: str, size: tuple[int, int] = (32, 512)) -> Any:
    """A default `vhjax.search.Space` for `kind`; `size` bounds the number of trees (boosting rounds)."""
    from vhjax.search.space import Float, Int, Space

    validation.check_choice("kind", kind, KINDS)
    low, high = size
    trees = Int(int(low), int(high), log=True)
    if kind in ("random_forest", "extra_trees"):
        return Space({"n_estimators": trees, "max_depth": Int(2, 48, log=True),
                      "max_features": Float(0.05, 1.0, log=True), "min_samples_leaf": Int(1, 16, log=True)})
    rate = Float(0.01, 0.3, log=True)
    if kind == "gbdt":
        return Space({"max_iter": trees, "learning_rate": rate, "max_leaf_nodes": Int(4, 64, log=True),
                      "l2_regularization": Float(1e-6, 10.0, log=True), "min_samples_leaf": Int(2, 64, log=True)})
    if kind == "lightgbm":
        return Space({"n_estimators": trees, "learning_rate": rate, "num_leaves": Int(4, 64, log=True),
                      "reg_lambda": Float(1e-6, 10.0, log=True), "min_child_samples": Int(2, 64, log=True),
                      "colsample_bytree": Float(0.2, 1.0)})
    return Space({"n_estimators": trees, "learning_rate": rate, "max_depth": Int(2, 10),
                  "reg_lambda": Float(1e-3, 10.0, log=True), "min_child_weight": Float(0.1, 10.0, log=True),
                  "colsample_bytree": Float(0.2, 1.0), "subsample": Float(0.5, 1.0)})


class TreeObjective:
    """Validation score of tree configurations, for `vhjax.search(objective, tree_space(kind), ...)`.

    Each candidate is fitted on `(x_train, y_train)` with `seed` and the fixed `params`, then scored
    on `(x_val, y_val)`: the metrics `accuracy`, `nll`, `brier`, `ece` and `fit_seconds`, the fitness
    being `metric` (pass `direction=objective.direction` to the search for the lower-is-better
    ones). A fit that raises (an impossible combination, a library error) or gives non-finite
    probabilities scores NaN, which the search stores as a failed trial; the reason is kept in
    `failures[trial_id]` and warned. With a multi-fidelity strategy the proposed budget sets the
    number of trees (`SIZE_PARAM`). Unknown parameter names raise before anything is fitted.
    """

    def __init__(self, kind: str, x_train: Any, y_train: Any, x_val: Any, y_val: Any, *,
                 metric: str = "accuracy", seed: int = 0, classes: int | None = None, **params: Any):
        self.kind = validation.check_choice("kind", kind, KINDS)
        self.metric = validation.check_choice("metric", metric, METRICS)
        self.seed = validation.check_int("seed", seed, minimum=0, maximum=2**31 - 1)
        self.x_train = flat_inputs(x_train, "x_train")
        self.y_train = check_tree_labels(y_train, self.x_train.shape[0], field="y_train")
        self.x_val = flat_inputs(x_val, "x_val", self.x_train.shape[1])
        self.y_val = check_tree_labels(y_val, self.x_val.shape[0], field="y_val")
        top = int(max(self.y_train.max(), self.y_val.max())) + 1
        self.classes = validation.check_int("classes", top if classes is None else classes, minimum=max(2, top))
        self.params = check_params(kind, params)
        self.failures: dict[int, str] = {}

    @property
    def fitness_metric(self) -> str:
        return self.metric

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.metric]

    def fingerprint(self) -> dict[str, Any]:
        """The configuration a resumed search must share: kind, metric, seed, fixed params, data."""
        from vhjax.train.workdir import content_digest

        return {"kind": self.kind, "metric": self.metric, "seed": self.seed, "classes": self.classes,
                "params": {k: repr(v) for k, v in sorted(self.params.items())},
                "data": content_digest((self.x_train, self.y_train, self.x_val, self.y_val))}

    def fit(self, params: Mapping[str, Any]) -> TreeModel:
        """The model of one candidate (the search's best trial refits identically)."""
        return fit_trees(self.kind, self.x_train, self.y_train, seed=self.seed, classes=self.classes,
                         **{**self.params, **check_params(self.kind, params)})

    def score(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Validation metrics of one candidate, plus `fit_seconds`."""
        start = time.perf_counter()
        model = self.fit(params)
        metrics = model.evaluate(self.x_val, self.y_val)
        return {**metrics, "fit_seconds": time.perf_counter() - start}

    def evaluate(self, candidates: Any) -> dict[str, np.ndarray]:
        """The search protocol: one row of metrics per candidate, NaN for a failed fit."""
        batch = [dict(p) for p in candidates.params]
        for params in batch:  # a misspelt name is the caller's error, not a failed trial
            check_params(self.kind, params)
        if candidates.fidelity is not None:
            size = SIZE_PARAM[self.kind]
            batch = [{**p, size: max(1, int(round(float(f))))} for p, f in zip(batch, candidates.fidelity)]
        rows = []
        for trial_id, params in zip(candidates.trial_ids, batch):
            try:
                row = self.score(params)
                if not all(math.isfinite(row[name]) for name in METRICS):
                    raise FloatingPointError(f"non-finite validation metrics {row}")
            except Exception as error:  # noqa: BLE001 (one trial fails; the search goes on)
                self.failures[int(trial_id)] = f"{type(error).__name__}: {error}"
                warnings.warn(f"{self.kind} trial {trial_id} with {params} failed: {self.failures[int(trial_id)]}",
                              RuntimeWarning, stacklevel=2)
                row = {name: math.nan for name in (*METRICS, "fit_seconds")}
            rows.append(row)
        return {name: np.array([row[name] for row in rows], np.float64) for name in (*METRICS, "fit_seconds")}


def tree_members(objective: TreeObjective, result: Any, top: int = 1) -> list[TreeModel]:
    """The `top` best trials of a search over `objective`, refitted as `TreeModel`s."""
    top = validation.check_int("top", top, minimum=1)
    trials = result.top(top)
    if not trials:
        raise validation.invalid("result", "no completed trial", "a search with at least one completed trial")
    return [objective.fit(trial.params) for trial in trials]


__all__ = ["DEFAULTS", "KINDS", "SIZE_PARAM", "TreeModel", "TreeObjective", "available_kinds", "check_params",
           "estimator_class", "fit_trees", "flat_inputs", "stack_probs", "tree_members", "tree_space"]
