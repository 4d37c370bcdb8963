"""Feature ensembles: feature-level fusion of members, with feature or member selection.

A model ensemble combines the members' decisions (`combine`: probabilities (M, N, C)); a feature
ensemble combines what the members compute before deciding. `group_features` captures the input
of a named top-level submodule (default 'head', the last Dense of vhjax's classifiers: the
penultimate representation) of every member of a `MemberGroup`, in evaluation mode, with
`flax.linen.intercept_methods` (as `vhjax.transfer.adapt` does for a task's members).

`fit_feature_ensemble` fits a multinomial logistic regression on the members' standardized,
concatenated features, penalised by

- L1 (`group=False`): `l1 * sum |W|`, which zeroes weights and so selects features (a feature is
  kept while its row of W, one weight per class, is not all zero);
- group lasso (`group=True`): `l1 * sum_m sqrt(D_m) * ||W_m||_F` over each member's block of rows,
  which keeps or drops whole members (Yuan & Lin 2006).

The solver is proximal gradient descent with Nesterov momentum and adaptive restart (FISTA, Beck &
Teboulle 2009; O'Donoghue & Candes 2015) in one jitted `lax.scan`, the step 1/L from the data's
Lipschitz constant (`optax.power_iteration`). A list of `l1` values (by default a geometric grid
below the smallest value that keeps nothing) is chosen by k-fold cross-validated NLL, every fold
and value vmapped in one program, as `combine.fit_stacking` does for its L2. Raw inputs work too:
pass flattened `x` (N, D) as the features of a single pseudo-member, and `key_features` ranks the
inputs (e.g. pixels) the sparse model keeps.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.batching import map_in_batches
from vhjax.compile_options import light_jit
from vhjax.ensemble.combine import check_labels
from vhjax.ensemble.members import MemberGroup, apply_member
from vhjax.memo import Memo
from vhjax.validation import check_choice, check_int, invalid

# ----------------------------------------------------------------------------- capturing features


def _capture(layer: str | None, seen: list | None = None) -> tuple[Callable, list]:
    """(an interceptor, the list it appends the input of top-level submodule `layer` to); it also
    appends the names of all top-level submodules called to `seen`."""
    captured: list = []

    def interceptor(next_fun, args, kwargs, context):
        scope = context.module.scope
        path = tuple(scope.path) if scope is not None else ()
        if context.method_name == "__call__" and len(path) == 1:
            if seen is not None and path[0] not in seen:
                seen.append(path[0])
            if path[0] == layer:
                captured.append(args[0])
        return next_fun(*args, **kwargs)

    return interceptor, captured


def apply_with_layer_input(model: Any, variables: dict, x: jax.Array, layer: str, arch: Any = None) -> jax.Array:
    """(N, D): one member's input to top-level submodule `layer` (flattened), evaluation mode."""
    interceptor, captured = _capture(layer)
    with nn.intercept_methods(interceptor):
        apply_member(model, variables, x, arch)
    if not captured:
        raise invalid("layer", layer, f"a top-level submodule of {type(model).__name__}")
    return captured[-1].reshape(x.shape[0], -1)


def _one_member(group: MemberGroup) -> tuple[Any, Any]:
    """Shapes of one member's variables and arch (for tracing without computing)."""
    shape = lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)  # noqa: E731
    arch = None if group.arch is None else jax.tree.map(shape, group.arch)
    return jax.tree.map(shape, group.variables), arch


def layer_names(group: MemberGroup, x: Any) -> list[str]:
    """The model's top-level submodules in call order, traced on shapes only (nothing compiles)."""
    seen: list[str] = []
    variables, arch = _one_member(group)

    def trace(v, a, xb):
        with nn.intercept_methods(_capture(None, seen)[0]):
            return apply_member(group.model, v, xb, a)

    example = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.asarray(x).dtype)
    jax.eval_shape(trace, variables, arch, example)
    return seen


def check_layer(group: MemberGroup, x: Any, layer: str) -> None:
    """ValueError naming `layer`, its value and the model's top-level submodules unless it is one."""
    names = layer_names(group, x)
    if layer not in names:
        raise invalid("layer", layer, f"a top-level submodule of {type(group.model).__name__} (its input is the "
                      f"features): one of {', '.join(map(repr, names))}")


_FEATURES: Memo[Callable] = Memo(8)


def _features_program(model: Any, layer: str, has_arch: bool) -> Callable:
    """`run(variables, arch, x (N, ...), batch_size) -> (P, N, D)`, vmapped over members, jitted."""

    def run(variables, arch, x, batch_size):
        def one(variables, arch):
            out = map_in_batches(lambda xb: apply_with_layer_input(model, variables, xb, layer, arch), x, batch_size)
            return out.reshape(out.shape[0], -1)

        return jax.vmap(one, in_axes=(0, 0 if has_arch else None))(variables, arch)

    return light_jit(run, static_argnums=3)


def group_features(group: MemberGroup, x: Any, layer: str = "head", *, batch_size: int = 1000) -> np.ndarray:
    """(P, N, D) features of every member of `group` on `x`: the input of top-level submodule `layer`,
    flattened, in evaluation mode (no dropout, running statistics), in batches of `batch_size`
    examples. One program per (model, layer), compiled once per input shape."""
    check_int("batch_size", batch_size, minimum=1)
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise invalid("x shape", tuple(x.shape), "a batch of at least one example, shape (N, ...)")
    check_layer(group, x, layer)
    has_arch = group.arch is not None
    run = _FEATURES.get((group.model,), lambda: _features_program(group.model, layer, has_arch),
                        settings=(layer, has_arch))
    return np.asarray(run(group.variables, group.arch, x, batch_size))


def ensemble_features(ensemble: Any, x: Any, layer: str = "head", *, batch_size: int = 1000) -> list[np.ndarray]:
    """One (N, D_m) array per member of an `Ensemble` (or a list of `MemberGroup`s), groups in order;
    members of different groups may have different widths D_m."""
    groups = getattr(ensemble, "groups", ensemble)
    if not isinstance(groups, (list, tuple)) or not groups or not all(isinstance(g, MemberGroup) for g in groups):
        raise invalid("ensemble", type(ensemble).__name__, "an Ensemble or a non-empty list of MemberGroups")
    return [member for g in groups for member in group_features(g, x, layer, batch_size=batch_size)]


# ----------------------------------------------------------------------------- fitting the fusion


def stack_features(features: Any, name: str = "features") -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, sum D_m) float32 features side by side and the widths D_m per member.

    `features`: an (N, D) array (one member, e.g. flattened raw inputs), an (M, N, D) array, or a
    sequence of (N, D_m) member arrays and (P, N, D) group arrays (`group_features`' output).
    """
    parts = list(features) if isinstance(features, (list, tuple)) else [features]
    if not parts:
        raise invalid(name, "[]", "at least one member's (N, D) features")
    members = []
    for part in parts:
        array = np.asarray(part, np.float32)
        if array.ndim == 3:
            members.extend(array)
        elif array.ndim == 2:
            members.append(array)
        else:
            raise invalid(f"{name} shape", tuple(array.shape), "(N, D) per member or (M, N, D) per group")
    shapes = [m.shape for m in members]
    if len({s[0] for s in shapes}) > 1 or any(0 in s for s in shapes):
        raise invalid(f"{name} shapes", shapes, "every member with the same number of examples N >= 1 and D >= 1")
    stacked = np.concatenate(members, axis=1)
    if not np.all(np.isfinite(stacked)):
        raise invalid(name, "non-finite values", "finite features")
    return stacked, tuple(int(s[1]) for s in shapes)


def _check_l1(l1: Any) -> tuple[float, ...] | None:
    if l1 is None:
        return None
    try:
        values = np.atleast_1d(np.asarray(l1, np.float64)) if not isinstance(l1, (str, bytes)) else np.array([np.nan])
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise invalid("l1", l1, "a finite number >= 0, a non-empty list of them, or None (a grid chosen by CV)")
    return tuple(values.tolist())


def _member_of(sizes: Sequence[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)


def _prepare(features: Any, labels: Any, num_classes: int | None) -> dict[str, Any]:
    """Standardized features, one-hot targets and the member layout."""
    z, sizes = stack_features(features)
    n = z.shape[0]
    raw = np.asarray(labels)
    if num_classes is None:
        num_classes = int(raw.max()) + 1 if raw.size and np.issubdtype(raw.dtype, np.integer) else 2
    check_int("num_classes", num_classes, minimum=2)
    y = check_labels(raw, n, num_classes)
    mean = z.mean(axis=0)
    scale = z.std(axis=0)
    scale = np.where(scale > 1e-6 * max(1.0, float(np.abs(z).max())), scale, 1.0).astype(np.float32)
    return {"z": (z - mean) / scale, "targets": np.eye(num_classes, dtype=np.float32)[y], "sizes": sizes,
            "mean": mean, "scale": scale, "member_of": _member_of(sizes),
            "group_weight": np.sqrt(np.asarray(sizes, np.float32))}


def l1_max(features: Any, labels: Any, *, group: bool = False, num_classes: int | None = None) -> float:
    """The smallest `l1` at which the fit keeps no feature (L1) or no member (`group=True`): the
    largest gradient entry (or member block norm / sqrt(D_m)) at W = 0 with the best bias."""
    data = _prepare(features, labels, num_classes)
    return _l1_max(data, group)


def _l1_max(data: dict, group: bool) -> float:
    prior = data["targets"].mean(axis=0)
    gradient = data["z"].T @ (prior[None] - data["targets"]) / data["z"].shape[0]  # (D, C)
    if not group:
        return float(np.abs(gradient).max())
    blocks = np.sqrt(np.bincount(data["member_of"], (gradient ** 2).sum(axis=1)))
    return float((blocks / data["group_weight"]).max())


def standardized_on(z: jax.Array, mask: jax.Array) -> jax.Array:
    """`z` (N, D) standardized with the mean and std of the rows where `mask` is 1 (a feature
    constant there keeps scale 1), as `fit_feature_ensemble` standardizes the data it is given."""
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(mask[:, None] * z, axis=0) / count
    scale = jnp.sqrt(jnp.sum(mask[:, None] * (z - mean) ** 2, axis=0) / count)
    large = jnp.maximum(1.0, jnp.max(jnp.where(mask[:, None] > 0, jnp.abs(z), 0.0)))
    return (z - mean) / jnp.where(scale > 1e-6 * large, scale, 1.0)


@functools.lru_cache(maxsize=16)
def _programs(steps: int, group: bool, members: int, learning_rate: float | None) -> tuple[Callable, Callable]:
    """(`fit_values(z, targets, mask, l1s, member_of, group_weight) -> params per l1`,
    `cv(z, targets, masks, l1s, member_of, group_weight) -> held-out NLL per l1 and fold`), both jitted."""

    def data_loss(params, z, targets, mask):
        per_example = optax.softmax_cross_entropy(z @ params["kernel"] + params["bias"], targets)
        return jnp.sum(mask * per_example) / jnp.maximum(jnp.sum(mask), 1.0)

    def prox(params, threshold, member_of, group_weight):
        kernel = params["kernel"]
        if group:  # block soft-thresholding per member
            norms = jnp.sqrt(jax.ops.segment_sum(jnp.sum(kernel ** 2, axis=1), member_of, num_segments=members))
            shrink = jnp.maximum(0.0, 1.0 - threshold * group_weight / jnp.maximum(norms, 1e-30))
            kernel = kernel * shrink[member_of][:, None]
        else:  # soft-thresholding
            kernel = jnp.sign(kernel) * jnp.maximum(jnp.abs(kernel) - threshold, 0.0)
        return {"kernel": kernel, "bias": params["bias"]}

    def step_size(z, mask):
        if learning_rate is not None:
            return jnp.float32(learning_rate)
        count = jnp.maximum(jnp.sum(mask), 1.0)

        def gram(v):  # [z, 1]^T diag(mask) [z, 1] v / n
            u = mask * (z @ v[0] + v[1])
            return (z.T @ u / count, jnp.sum(u) / count)

        v0 = (jax.random.uniform(jax.random.key(0), (z.shape[1],), minval=-1.0, maxval=1.0), jnp.float32(1.0))
        eigenvalue, _ = optax.power_iteration(gram, v0=v0, num_iters=100, error_tolerance=1e-4)
        return 1.0 / (0.5 * 1.1 * eigenvalue)  # softmax curvature <= 1/2; 10% margin on the estimate

    def fit(z, targets, mask, l1, member_of, group_weight):
        prior = jnp.sum(mask[:, None] * targets, axis=0) / jnp.maximum(jnp.sum(mask), 1.0)
        params = {"kernel": jnp.zeros((z.shape[1], targets.shape[1])), "bias": jnp.log(prior + 1e-6)}
        eta = step_size(z, mask)
        gradient = jax.grad(data_loss)

        def step(carry, _):
            x, y, t = carry
            x_new = prox(optax.tree.add_scale(y, -eta, gradient(y, z, targets, mask)), eta * l1, member_of,
                         group_weight)
            t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
            restart = optax.tree.vdot(optax.tree.sub(y, x_new), optax.tree.sub(x_new, x)) > 0
            momentum = jnp.where(restart, 0.0, (t - 1.0) / t_new)
            y_new = optax.tree.add_scale(x_new, momentum, optax.tree.sub(x_new, x))
            return (x_new, y_new, jnp.where(restart, 1.0, t_new)), None

        (params, _, _), _ = jax.lax.scan(step, (params, params, jnp.float32(1.0)), None, length=steps)
        return params

    @jax.jit
    def fit_values(z, targets, mask, l1s, member_of, group_weight):
        return jax.vmap(lambda l1: fit(z, targets, mask, l1, member_of, group_weight))(l1s)

    @jax.jit
    def cv(z, targets, masks, l1s, member_of, group_weight):
        def held_out(l1, mask):
            z_fold = standardized_on(z, mask)  # the fold's own rows only: held-out rows leak nothing
            p = fit(z_fold, targets, mask, l1, member_of, group_weight)
            per_example = optax.softmax_cross_entropy(z_fold @ p["kernel"] + p["bias"], targets)
            return jnp.sum((1 - mask) * per_example) / jnp.sum(1 - mask)

        return jax.vmap(lambda l1: jax.vmap(lambda mask: held_out(l1, mask))(masks))(l1s)

    return fit_values, cv


def _check_options(steps: Any, learning_rate: Any) -> tuple[int, float | None]:
    steps = check_int("steps", steps, minimum=1)
    if learning_rate is not None and not (np.isfinite(learning_rate) and learning_rate > 0):
        raise invalid("learning_rate", learning_rate, "a positive number, or None (1/L from the data)")
    return steps, None if learning_rate is None else float(learning_rate)


def _meta(data: dict, params: dict, l1: float, group: bool) -> dict[str, Any]:
    return {"kernel": np.asarray(params["kernel"]), "bias": np.asarray(params["bias"]), "mean": data["mean"],
            "scale": data["scale"], "sizes": np.asarray(data["sizes"]), "l1": np.float64(l1), "group": bool(group)}


def fit_feature_ensemble(features: Any, labels: Any, *, l1: float | Sequence[float] | None = None,
                         group: bool = False, folds: int = 5, grid: int = 8, steps: int = 500,
                         learning_rate: float | None = None, num_classes: int | None = None,
                         cv_rule: str = "min", seed: int = 0) -> dict[str, Any]:
    """Feature-level fusion: a sparse multinomial logistic regression on the members' features.

    `features`: see `stack_features` (fit on data the members did not train on, e.g. a validation
    split). Features are standardized with their mean and std on this data (stored in the result).
    `l1`: the penalty's strength on the mean cross-entropy (sklearn's `C` is `1 / (l1 * N)`); a list
    is chosen by `folds`-fold cross-validated NLL (all folds and values in one vmapped program; each
    fold's fit standardizes with its own training rows' mean and std),
    None uses `grid` values geometrically spaced from `l1_max` (nothing kept) down to 1e-3 of it.
    `cv_rule='min'` takes the value with the lowest mean held-out NLL; '1se' the largest value within
    one standard error (over folds) of that minimum: a sparser model about as good (Hastie et al.).
    `group=False`: L1 on every weight (selects features); True: group lasso per member (selects
    members). `learning_rate=None`: the step 1/L. Returns arrays: 'kernel' (D, C) in standardized
    units, 'bias', 'mean', 'scale', 'sizes' (D_m per member), 'l1', 'group', and with a grid
    'grid' and 'cv_nll'.
    """
    steps, learning_rate = _check_options(steps, learning_rate)
    values = _check_l1(l1)
    check_choice("cv_rule", cv_rule, ("min", "1se"))
    data = _prepare(features, labels, num_classes)
    n = data["z"].shape[0]
    if values is None:
        top = _l1_max(data, group)
        values = tuple((top * np.geomspace(1.0, 1e-3, check_int("grid", grid, minimum=2))).tolist())
    fit_values, cv = _programs(steps, bool(group), len(data["sizes"]), learning_rate)
    layout = (jnp.asarray(data["member_of"]), jnp.asarray(data["group_weight"]))
    z, targets = jnp.asarray(data["z"]), jnp.asarray(data["targets"])
    extra: dict[str, Any] = {}
    chosen = values[0]
    if len(values) > 1:
        if not isinstance(folds, int) or isinstance(folds, bool) or not 2 <= folds <= n:
            raise invalid("folds", folds, f"an integer in [2, {n}]")
        fold_of = np.random.default_rng(seed).permutation(n) % folds
        masks = jnp.asarray(np.stack([fold_of != f for f in range(folds)]), jnp.float32)
        per_fold = np.asarray(cv(z, targets, masks, jnp.asarray(values, jnp.float32), *layout))
        losses = per_fold.mean(axis=1)
        best = int(np.nanargmin(losses))
        if cv_rule == "1se":
            bound = losses[best] + per_fold[best].std(ddof=1) / np.sqrt(folds)
            best = max((i for i, v in enumerate(losses) if v <= bound), key=lambda i: values[i])
        chosen = values[best]
        extra = {"grid": np.asarray(values), "cv_nll": losses, "cv_rule": cv_rule}
    params = fit_values(z, targets, jnp.ones(n), jnp.asarray([chosen], jnp.float32), *layout)
    return {**_meta(data, jax.tree.map(lambda leaf: leaf[0], params), chosen, group), **extra}


def feature_path(features: Any, labels: Any, l1_values: Sequence[float], *, group: bool = False, steps: int = 500,
                 learning_rate: float | None = None, num_classes: int | None = None) -> list[dict[str, Any]]:
    """One fit (as `fit_feature_ensemble` returns it) per value of `l1_values`, on all the data,
    every value in one vmapped program: the regularization path (e.g. accuracy vs features kept)."""
    steps, learning_rate = _check_options(steps, learning_rate)
    values = _check_l1(l1_values)
    if values is None:
        raise invalid("l1_values", None, "a non-empty list of numbers >= 0")
    data = _prepare(features, labels, num_classes)
    fit_values, _ = _programs(steps, bool(group), len(data["sizes"]), learning_rate)
    params = fit_values(jnp.asarray(data["z"]), jnp.asarray(data["targets"]), jnp.ones(data["z"].shape[0]),
                        jnp.asarray(values, jnp.float32), jnp.asarray(data["member_of"]),
                        jnp.asarray(data["group_weight"]))
    return [_meta(data, jax.tree.map(lambda leaf: leaf[i], params), v, group) for i, v in enumerate(values)]


# ----------------------------------------------------------------------------- using the fusion


def feature_ensemble_predict(meta: dict, features: Any) -> jax.Array:
    """(N, C) probabilities of a fitted feature ensemble on new features laid out as when fitting."""
    z, sizes = stack_features(features)
    if tuple(sizes) != tuple(np.asarray(meta["sizes"]).tolist()):
        raise invalid("features widths", list(sizes), f"the widths the ensemble was fit on, "
                      f"{np.asarray(meta['sizes']).tolist()} (one per member, same order)")
    z = (z - meta["mean"]) / meta["scale"]
    return jax.nn.softmax(jnp.asarray(z) @ jnp.asarray(meta["kernel"]) + jnp.asarray(meta["bias"]), axis=-1)


def selected(meta: dict) -> np.ndarray:
    """(D,) booleans: the features with a non-zero weight for some class."""
    return np.any(np.asarray(meta["kernel"]) != 0, axis=1)


def key_features(meta: dict, top: int | None = 10) -> list[dict[str, Any]]:
    """The selected features, largest weight norm (over classes, standardized units) first, as
    {'member', 'feature' (index within the member), 'column' (in the concatenation), 'weight'}."""
    if top is not None:
        check_int("top", top, minimum=1)
    norms = np.linalg.norm(np.asarray(meta["kernel"]), axis=1)
    sizes = np.asarray(meta["sizes"])
    member_of, starts = _member_of(sizes), np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = [int(c) for c in np.argsort(-norms, kind="stable") if norms[c] > 0][:top]
    return [{"member": int(member_of[c]), "feature": int(c - starts[member_of[c]]), "column": c,
             "weight": float(norms[c])} for c in order]


def member_shares(meta: dict) -> np.ndarray:
    """(M,) each member's share of the total weight norm (rows' norms summed); zeros if none is kept."""
    norms = np.linalg.norm(np.asarray(meta["kernel"]), axis=1)
    per_member = np.bincount(_member_of(np.asarray(meta["sizes"])), norms, minlength=len(meta["sizes"]))
    total = per_member.sum()
    return per_member / total if total > 0 else per_member
