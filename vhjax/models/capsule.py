"""Capsule network with dynamic routing (Sabour, Frosst & Hinton 2017).

A capsule is a vector whose length (in [0, 1) after `squash`) is the probability that an entity
is present and whose direction encodes its pose. `CapsNet`: a ReLU conv, a conv whose channels
are grouped into primary capsules (squashed), and one class capsule per class computed by
routing-by-agreement: every primary capsule i predicts each class capsule j as u_hat_ij = W_ij u_i;
coupling coefficients c_ij = softmax_j(b_ij) weight the predictions, v_j = squash(sum_i c_ij u_hat_ij),
and b_ij grows by the agreement u_hat_ij . v_j, for `routing_iterations` rounds.

The model returns the class capsules' lengths (N, num_classes), each in [0, 1): scores, not
logits; train with `margin_loss` (per-example, as vhjax losses are). Convs are 'VALID' as in the paper;
`conv_impl` ('auto' by default: 'patch' on CPU, XLA's native conv elsewhere) picks their implementation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vhjax.models.layers import Dropout
from vhjax.models.patch_conv import CONV_IMPLS, make_conv
from vhjax.models.resnet import check_images, check_kernel_fits
from vhjax.models.utils import check_choice, check_positive, check_rate


def squash(s: jax.Array, axis: int = -1, eps: float = 1e-9) -> jax.Array:
    """v = |s|^2 / (1 + |s|^2) * s / |s|: keeps the direction, maps the length into [0, 1)."""
    squared = jnp.sum(s ** 2, axis=axis, keepdims=True)
    return s * (squared / (1.0 + squared)) / jnp.sqrt(squared + eps)


def dynamic_routing(u_hat: jax.Array, iterations: int) -> jax.Array:
    """Predictions u_hat (N, I, J, D) -> output capsules v (N, J, D) by routing-by-agreement."""
    logits = jnp.zeros(u_hat.shape[:3], u_hat.dtype)
    v = None
    for r in range(iterations):
        coupling = nn.softmax(logits, axis=-1)  # each input capsule splits its vote over outputs
        v = squash(jnp.einsum("nij,nijd->njd", coupling, u_hat))
        if r < iterations - 1:
            logits = logits + jnp.einsum("nijd,njd->nij", u_hat, v)
    return v


class CapsuleLayer(nn.Module):
    """(N, I, D_in) input capsules -> (N, num_capsules, capsule_dim) by dynamic routing; one
    transformation matrix W_ij (capsule_dim x D_in) per input/output capsule pair."""

    num_capsules: int
    capsule_dim: int
    routing_iterations: int = 3

    @nn.compact
    def __call__(self, u: jax.Array) -> jax.Array:
        weights = self.param("weights", nn.initializers.normal(0.01),
                             (u.shape[1], self.num_capsules, self.capsule_dim, u.shape[2]))
        u_hat = jnp.einsum("ijed,nid->nije", weights, u)
        return dynamic_routing(u_hat, self.routing_iterations)


class CapsNet(nn.Module):
    """Images (N, H, W, C) -> class-capsule lengths (N, num_classes) in [0, 1).

    ReLU conv (conv_features, conv_kernel) -> conv (primary_capsules * primary_dim channels,
    primary_kernel, stride primary_strides) reshaped into primary capsules of primary_dim and
    squashed -> class capsules of class_dim by routing. Paper sizes for MNIST: 256, 9, 32, 8, 9, 2,
    16; the defaults are smaller (64 conv features, 8 capsule types).
    """

    num_classes: int = 10
    conv_features: int = 64
    conv_kernel: int = 9
    primary_capsules: int = 8
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_strides: int = 2
    class_dim: int = 16
    routing_iterations: int = 3
    dropout_rate: float = 0.0
    conv_impl: str = "auto"

    def __post_init__(self):
        for field in ("num_classes", "conv_features", "conv_kernel", "primary_capsules", "primary_dim",
                      "primary_kernel", "primary_strides", "class_dim", "routing_iterations"):
            check_positive("capsnet", field, getattr(self, field))
        check_rate("capsnet", "dropout_rate", self.dropout_rate)
        check_choice("capsnet", "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        check_images("capsnet", x)
        check_kernel_fits("capsnet", "conv_kernel", self.conv_kernel, x.shape[1:3])
        h = nn.relu(make_conv(self.conv_impl, self.conv_features, (self.conv_kernel,) * 2, padding="VALID",
                              name="conv")(x))
        check_kernel_fits("capsnet", "primary_kernel", self.primary_kernel, h.shape[1:3])
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = Dropout(name="dropout")(h, rate, deterministic=not train)
        h = make_conv(self.conv_impl, self.primary_capsules * self.primary_dim, (self.primary_kernel,) * 2,
                      self.primary_strides, padding="VALID", name="primary")(h)
        primary = squash(h.reshape(x.shape[0], -1, self.primary_dim))
        classes = CapsuleLayer(self.num_classes, self.class_dim, self.routing_iterations, name="class_caps")(primary)
        return jnp.sqrt(jnp.sum(classes ** 2, axis=-1) + 1e-12)


def margin_loss(lengths: jax.Array, labels: jax.Array, m_plus: float = 0.9, m_minus: float = 0.1,
                down_weight: float = 0.5) -> jax.Array:
    """Per-example capsule margin loss (N,): sum_k T_k max(0, m+ - |v_k|)^2
    + down_weight (1 - T_k) max(0, |v_k| - m-)^2, T_k = 1 for the true class."""
    target = jax.nn.one_hot(labels, lengths.shape[-1], dtype=lengths.dtype)
    present = target * jnp.maximum(0.0, m_plus - lengths) ** 2
    absent = down_weight * (1.0 - target) * jnp.maximum(0.0, lengths - m_minus) ** 2
    return jnp.sum(present + absent, axis=-1)
