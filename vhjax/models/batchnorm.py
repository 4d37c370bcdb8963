"""Batch norm for small batches: a BatchNorm whose running variance is the total variance, and
"precise BN" recomputation of the running mean and variance.

A BatchNorm layer normalises with the statistics of the current batch in training and with its
running averages (`batch_stats`: an exponential moving average, EMA, of batch means and
variances) in evaluation. With small batches the EMA is a poor estimate of the statistics the
layer sees over the data: it follows recent, noisy batches, and the average of batch variances
misses the spread of the batch means. `recompute_batch_stats` replaces the running averages by the
exact mean and variance of every BatchNorm layer's inputs over a pass of training data ("precise
BN", Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 3): the network runs as in
training (each layer normalised with its batch's statistics), and each layer's statistics are
pooled over all examples of the pass (Chan et al.'s parallel mean/variance update, so the
variance is the total variance, not the mean of per-batch variances).

`BatchNorm` is flax's `nn.BatchNorm` (same parameters, same `batch_stats` names) with one option
for training, `running_var='total'` (`norm_running_var` of the zoo's models): the running variance is an exponential
moving average of the variance of all examples seen, not of the per-batch variances,

    var <- m * var + (1 - m) * batch_var + m * (1 - m) * (mean - batch_mean)^2
    mean <- m * mean + (1 - m) * batch_mean

(the variance of a two-component mixture with weights m and 1 - m). The average of per-batch
variances misses the spread of the batch means, Var(batch mean) ~ between-example variance / B,
so with small batches B it underestimates the variance that evaluation normalises by.
`running_var='batch'` (the default) is flax's (and Keras's) update.

`recompute_batch_stats` works for any flax module built from `flax.linen.BatchNorm` (all of the zoo's `norm='batch'`
models), is pure, and `jax.jit`/`jax.vmap`-able: vmap it over stacked population members.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import normalization  # _compute_stats/_normalize: flax's own code, so parameters match exactly

MOMENTS = "batch_stats_moments"  # the collection the recording sows into (temporary)
RUNNING_VARS = ("total", "batch")


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm` with `running_var` 'batch' (flax's average of batch variances) or 'total'
    (the running variance averages the total variance, module docstring). Parameters, state and
    evaluation are flax's; `axis_name` (cross-device statistics) and `mask` are supported as in flax."""

    running_var: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
        if self.running_var not in RUNNING_VARS:
            raise ValueError(f"BatchNorm field 'running_var' has value {self.running_var!r}; allowed: "
                             f"{', '.join(map(repr, RUNNING_VARS))}")
        call_time = use_running_average
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if self.running_var == "batch" or use_running_average:
            return super().__call__(x, call_time, mask=mask)
        feature_axes = _feature_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        feature_shape = [x.shape[axis] for axis in feature_axes]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), feature_shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), feature_shape)
        mean, var = normalization._compute_stats(
            x, reduction_axes, dtype=self.dtype, axis_name=self.axis_name if not self.is_initializing() else None,
            axis_index_groups=self.axis_index_groups, use_fast_variance=self.use_fast_variance, mask=mask)
        if not self.is_initializing():
            m = self.momentum
            ra_var.value = m * ra_var.value + (1 - m) * var + m * (1 - m) * jnp.square(ra_mean.value - mean)
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
        return normalization._normalize(self, x, mean, var, reduction_axes, feature_axes, self.dtype,
                                        self.param_dtype, self.epsilon, self.use_bias, self.use_scale,
                                        self.bias_init, self.scale_init)


def _feature_axes(ndim: int, axis: Any) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _record_moments(next_fun, args, kwargs, context):
    """Method interceptor: before a BatchNorm call, sow (count, mean, M2) of its input per feature."""
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == "__call__" and args:
        x = jnp.asarray(args[0], jnp.float32)
        features = _feature_axes(x.ndim, module.axis)
        reduction = tuple(i for i in range(x.ndim) if i not in features)
        count = jnp.float32(math.prod(x.shape[i] for i in reduction))
        mean = x.mean(axis=reduction, keepdims=True)
        m2 = jnp.square(x - mean).sum(axis=reduction)
        module.sow(MOMENTS, "moments", (count, mean.reshape(m2.shape), m2))
    return next_fun(*args, **kwargs)


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s pooled (count, mean, M2) of two sets of examples."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    share = n_b / jnp.maximum(n, 1.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * share, m2_a + m2_b + jnp.square(delta) * n_a * share


def batch_moments(model: nn.Module, variables: Any, x: jax.Array, **apply_kwargs: Any) -> dict:
    """{path of a BatchNorm module: (count, mean, M2)} of its inputs in one training-mode forward pass
    of batch `x` (a module called several times pools its calls)."""
    kwargs = {"train": True, **apply_kwargs}
    with nn.intercept_methods(_record_moments):
        _, updates = model.apply(variables, x, mutable=["batch_stats", MOMENTS], **kwargs)
    moments = {}
    for path, calls in traverse_util.flatten_dict(dict(updates.get(MOMENTS, {}))).items():
        pooled = calls[0]
        for call in calls[1:]:
            pooled = _merge(pooled, call)
        moments[path[:-1]] = pooled  # path without the sown name 'moments'
    return moments


def recompute_batch_stats(model: nn.Module, variables: Any, x_batches: jax.Array, **apply_kwargs: Any) -> dict:
    """The model state (`variables` without 'params') with every BatchNorm's running `mean` and
    `var` replaced by the exact mean and (biased, as BatchNorm normalises) variance of its inputs
    over all of `x_batches` ((num_batches, batch, ...): a pass of training data, e.g. 100-200
    batches of the training batch size, or the whole training set), computed with the network in
    training mode. Other collections and BatchNorm layers the pass does not reach are unchanged.

    `apply_kwargs` go to `model.apply` with `train=True` added unless given; for zoo models pass
    `dropout_rate=0.0` (no dropout noise in the statistics, and no 'dropout' RNG needed) or
    `rngs={'dropout': key}`. Pure; runs as one `lax.scan` over the batches, so it jits, and vmaps
    over population members: `jax.vmap(lambda v: recompute_batch_stats(model, v, xb,
    dropout_rate=0.0))(stacked_variables)`. Use the result as the model state for evaluation
    (`{'params': params, **model_state}`), or as the new training state.
    """
    state = {key: value for key, value in dict(variables).items() if key != "params"}
    if "batch_stats" not in state:
        return state
    x_batches = jnp.asarray(x_batches)
    if x_batches.ndim < 2 or x_batches.shape[0] < 1:
        raise ValueError(f"recompute_batch_stats 'x_batches' has shape {tuple(x_batches.shape)}; allowed: "
                         "(num_batches >= 1, batch, ...) stacked batches of inputs")

    def moments(x):
        return batch_moments(model, variables, x, **apply_kwargs)

    def step(total, x):
        return {path: _merge(total[path], new) for path, new in moments(x).items()}, None

    total = moments(x_batches[0])
    if x_batches.shape[0] > 1:
        total, _ = jax.lax.scan(step, total, x_batches[1:])
    flat = traverse_util.flatten_dict(dict(state["batch_stats"]))
    for path, (count, mean, m2) in total.items():
        if path + ("mean",) not in flat:
            continue  # a BatchNorm outside batch_stats' tree (should not happen with flax's BatchNorm)
        flat[path + ("mean",)] = mean.reshape(flat[path + ("mean",)].shape).astype(flat[path + ("mean",)].dtype)
        var = (m2 / jnp.maximum(count, 1.0)).reshape(flat[path + ("var",)].shape)
        flat[path + ("var",)] = var.astype(flat[path + ("var",)].dtype)
    state["batch_stats"] = traverse_util.unflatten_dict(flat)
    return state
