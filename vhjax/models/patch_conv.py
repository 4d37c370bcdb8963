"""Convolution as patch extraction plus one matmul: fast when vmapped over population members.

On CPU, `jax.vmap` of `flax.linen.Conv` lowers to a grouped convolution that XLA runs several
times slower than a loop over members. Here the patches come from k strided slices (no gather)
and the contraction is an einsum, which `vmap` turns into one batched matmul. Parameters have
flax Conv's layout and initialisers (`kernel` (*window, in, out), `bias` (out,)), so the two are
interchangeable.

`PatchConvTranspose` does the same for flax's `nn.ConvTranspose` (same parameters and output):
the input is dilated by the strides and padded (one `lax.pad`), then convolved at stride 1.

Every conv model of the zoo has a `conv_impl` field: 'patch' (this module), 'xla' (flax's
`nn.Conv` / `nn.ConvTranspose`, XLA's native convolution) or 'auto' (the default), which
`resolve_conv_impl` turns into 'patch' on CPU and 'xla' on GPU/TPU, where the native convolution
is the fast one. `make_conv` / `make_conv_transpose` build the layer of a given implementation.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


CONV_IMPLS = ("auto", "patch", "xla")


def resolve_conv_impl(impl: str) -> str:
    """'auto' -> 'patch' when JAX's default backend is the CPU, else 'xla'; 'patch'/'xla' unchanged.

    Called while tracing, so a model built once picks the implementation of the backend it runs on.
    """
    if impl == "auto":
        return "patch" if jax.default_backend() == "cpu" else "xla"
    if impl not in ("patch", "xla"):
        raise ValueError(f"conv_impl has value {impl!r}; allowed: {', '.join(map(repr, CONV_IMPLS))}")
    return impl


def conv_output_length(length: int, kernel: int, stride: int, pad_low: int, pad_high: int) -> int:
    return (length + pad_low + pad_high - kernel) // stride + 1


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA/TensorFlow 'SAME' padding for one spatial axis."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int]):
    """'SAME' | 'VALID' | int | [(low, high), ...] -> [(low, high) per spatial axis]."""
    if padding == "SAME":
        return [same_padding(n, k, s) for n, k, s in zip(spatial, kernel, strides)]
    if padding == "VALID":
        return [(0, 0)] * len(spatial)
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    return [tuple(p) for p in padding]


def extract_patches(x: jax.Array, kernel: Sequence[int], strides: Sequence[int], pads) -> jax.Array:
    """(N, *spatial, C) -> (N, *out_spatial, prod(kernel) * C) by strided slicing."""
    return jnp.concatenate(window_slices(jnp.pad(x, [(0, 0), *pads, (0, 0)]), kernel, strides), axis=-1)


def window_slices(x, kernel: Sequence[int], strides: Sequence[int]) -> list:
    """The prod(kernel) strided slices x[:, i::s, j::s, ..., :] of an already padded (N, *spatial, C)
    array, each cut to the output length: slice w holds every window's entry at offset w."""
    outputs = [conv_output_length(n, k, s, 0, 0) for n, k, s in zip(x.shape[1:-1], kernel, strides)]
    slices = []
    for offsets in _window_offsets(kernel):
        index = [slice(None)]
        for offset, stride, count in zip(offsets, strides, outputs):
            index.append(slice(offset, offset + stride * (count - 1) + 1, stride))
        slices.append(x[tuple(index) + (slice(None),)])
    return slices


def _window_offsets(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    offsets = [()]
    for size in kernel:
        offsets = [o + (i,) for o in offsets for i in range(size)]
    return offsets


class PatchConv(nn.Module):
    """N-d convolution (features, kernel_size, strides, padding) as patches @ kernel."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | int = 1
    padding: str | int | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    def sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(kernel size, strides) as tuples of one entry per spatial axis."""
        kernel_size = tuple(self.kernel_size)
        return kernel_size, (self.strides,) * len(kernel_size) if isinstance(self.strides, int) else tuple(self.strides)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size, strides = self.sizes()
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, channels, self.features))
        pads = resolve_padding(self.padding, x.shape[1:-1], kernel_size, strides)
        for n, k, (low, high) in zip(x.shape[1:-1], kernel_size, pads):
            if n + low + high < k:
                raise ValueError(f"kernel size {k} is larger than the padded input length {n + low + high}")
        patches = extract_patches(x, kernel_size, strides, pads)
        y = patches @ kernel.reshape(-1, self.features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def transpose_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(low, high) padding of the dilated input for a transposed conv, as `jax.lax.conv_transpose`
    computes it for 'SAME' (output length n * stride) and 'VALID' (n * stride + max(k - stride, 0))."""
    if padding == "SAME":
        total = kernel + stride - 2
        low = kernel - 1 if stride > kernel - 1 else -(-total // 2)
    elif padding == "VALID":
        total = kernel + stride - 2 + max(kernel - stride, 0)
        low = kernel - 1
    else:
        raise ValueError(f"padding has value {padding!r}; allowed: 'SAME', 'VALID'")
    return low, total - low


class PatchConvTranspose(PatchConv):
    """N-d transposed convolution equal to flax's `nn.ConvTranspose` (`transpose_kernel=False`,
    padding 'SAME' or 'VALID'): zeros inserted between inputs (strides), padded, then patches @ kernel."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size, strides = self.sizes()
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features))
        config = [(0, 0, 0)]
        for k, s in zip(kernel_size, strides):
            config.append((*transpose_padding(k, s, self.padding), s - 1))
        dilated = jax.lax.pad(x, jnp.zeros((), x.dtype), config + [(0, 0, 0)])
        patches = extract_patches(dilated, kernel_size, (1,) * len(kernel_size), [(0, 0)] * len(kernel_size))
        y = patches @ kernel.reshape(-1, self.features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def make_conv(impl: str, features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1,
              padding: str | int | Sequence[tuple[int, int]] = "SAME", **kwargs) -> nn.Module:
    """`PatchConv` or `nn.Conv` (by `resolve_conv_impl(impl)`) with the same arguments and parameters."""
    cls = PatchConv if resolve_conv_impl(impl) == "patch" else nn.Conv
    return cls(features, tuple(kernel_size), strides, padding, **kwargs)


def make_conv_transpose(impl: str, features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1,
                        padding: str = "SAME", **kwargs) -> nn.Module:
    """`PatchConvTranspose` or `nn.ConvTranspose` (by `resolve_conv_impl(impl)`), same parameters."""
    kernel_size = tuple(kernel_size)
    strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
    if resolve_conv_impl(impl) == "patch":
        return PatchConvTranspose(features, kernel_size, strides, padding, **kwargs)
    return nn.ConvTranspose(features, kernel_size, strides, padding, **kwargs)
