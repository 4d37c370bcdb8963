"""Meta-learning (`vhjax.transfer.meta`): each method's meta-gradient by hand, MAML's initialisation
adapting to new sine waves where joint pretraining does not, few-shot task sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.models import get_model
from vhjax.transfer import meta

LINEAR = lambda params, x: x @ params["w"]  # noqa: E731
MSE = meta.task_loss("mse")


def one_task_batch():
    rng = np.random.default_rng(0)
    xs, xq = jnp.asarray(rng.normal(size=(1, 5, 2)), jnp.float32), jnp.asarray(rng.normal(size=(1, 7, 2)), jnp.float32)
    w_true = jnp.asarray([[1.5], [-2.0]])
    return xs, xs @ w_true, xq, xq @ w_true


@pytest.mark.parametrize("method", meta.METHODS)
def test_each_methods_meta_gradient_by_hand(method):
    params, lr = {"w": jnp.asarray([[0.3], [0.1]])}, jnp.float32(0.1)
    xs, ys, xq, yq = batch = one_task_batch()
    loss_fn = meta.meta_objective(LINEAR, MSE, method, inner_steps=1)
    grads = jax.grad(lambda p: loss_fn(p, batch, None, {"inner_lr": lr})[0])(params)["w"]
    support_grad = lambda w: jax.grad(lambda v: MSE(xs[0] @ v, ys[0]))(w)  # noqa: E731
    adapted = params["w"] - lr * support_grad(params["w"])
    query_grad = jax.grad(lambda v: MSE(xq[0] @ v, yq[0]))
    if method == "maml":  # through the inner step: (I - lr * H_support) grad_query(adapted)
        hessian = jax.hessian(lambda v: MSE(xs[0] @ v, ys[0]))(params["w"]).reshape(2, 2)
        expected = (jnp.eye(2) - lr * hessian) @ query_grad(adapted).reshape(2)
    elif method == "fomaml":
        expected = query_grad(adapted).reshape(2)
    elif method == "reptile":  # the pull toward one step on support and query together
        x_all, y_all = jnp.concatenate([xs[0], xq[0]]), jnp.concatenate([ys[0], yq[0]])
        expected = (lr * jax.grad(lambda v: MSE(x_all @ v, y_all))(params["w"])).reshape(2)
    else:
        expected = query_grad(params["w"]).reshape(2)
    np.testing.assert_allclose(grads.reshape(2), expected, rtol=1e-5, atol=1e-6)


def test_maml_learns_an_initialisation_that_adapts_where_joint_pretraining_does_not():
    model = get_model("mlp", widths=(40, 40), num_classes=1)  # Finn et al.'s network
    steps, per_step = 3000, 4
    tasks = tuple(a.reshape(steps, per_step, *a.shape[1:])
                  for a in meta.sinusoid_tasks(jax.random.key(1), steps * per_step, 10, 10))
    new = meta.sinusoid_tasks(jax.random.key(2), 100, 10, 40)
    results = {method: meta.meta_train(model, tasks, method=method, inner_lr=0.01, meta_lr=1e-3,
                                       inner_steps=0 if method == "joint" else 1, size=2)
               for method in ("maml", "joint")}
    curve = {m: meta.adaptation_curve(model, r.population.members.params, new, 0.01, [0, 10])
             for m, r in results.items()}
    before = meta.adaptation_curve(model, results["maml"].initial.members.params, new, 0.01, [0, 10])
    maml_after, joint_after = curve["maml"][:, 1], curve["joint"][:, 1]
    assert np.all(maml_after < 0.7 * joint_after)  # 10 steps from MAML's init beat 10 from joint training's
    assert np.all(maml_after < 0.5 * curve["maml"][:, 0])  # and MAML's init is made to move
    assert np.all(maml_after < before[:, 1])
    assert results["maml"].meta_loss.shape == (steps, 2)


def test_class_tasks_relabel_per_task_and_draw_from_the_given_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = np.repeat(np.arange(6), 100)
    x[:, 0] = y  # the class is readable from feature 0
    xs, ys, xq, yq = meta.class_tasks(jax.random.key(0), x, y, classes=[0, 1, 2, 3], tasks=20, ways=3, shots=2,
                                      queries=5)
    assert xs.shape == (20, 6, 3) and xq.shape == (20, 15, 3)
    assert set(np.unique(np.asarray(xs[..., 0]))) <= {0, 1, 2, 3}  # never classes 4 or 5
    for t in range(20):
        assert sorted(np.bincount(np.asarray(ys[t]))) == [2, 2, 2]
        assert sorted(np.bincount(np.asarray(yq[t]))) == [5, 5, 5]
        mapping = {float(a): int(b) for a, b in zip(np.asarray(xs[t, :, 0]), np.asarray(ys[t]))}
        assert all(mapping[float(a)] == int(b) for a, b in zip(np.asarray(xq[t, :, 0]), np.asarray(yq[t])))
    first_labels = {tuple(sorted({(float(a), int(b)) for a, b in zip(xs[t, :, 0], ys[t])})) for t in range(20)}
    assert len(first_labels) > 5  # the relabelling differs between tasks


def test_bad_meta_settings_are_refused_before_compiling():
    model = get_model("mlp", widths=(4,), num_classes=1)
    tasks = tuple(a.reshape(2, 2, *a.shape[1:]) for a in meta.sinusoid_tasks(jax.random.key(0), 4, 3, 3))
    with pytest.raises(ValueError, match="method"):
        meta.meta_train(model, tasks, method="hypernetwork")
    with pytest.raises(ValueError, match="inner_lr"):
        meta.meta_train(model, tasks, inner_lr=[0.1, -1.0])
    with pytest.raises(ValueError, match="leading shapes"):
        meta.meta_train(model, (tasks[0], tasks[1], tasks[2][:1], tasks[3]))
