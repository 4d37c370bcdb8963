"""Generative models: autoencoders, the variational autoencoder and GAN networks with their losses.

- `Autoencoder`: flatten -> MLP encoder -> latent code -> MLP decoder -> reshape to `data_shape`.
- `ConvAutoencoder`: stride-2 convs down, stride-2 transposed convs up (denoising or
  super-resolution when trained on corrupted inputs), fully convolutional.
- `VAE` (Kingma & Welling 2014): the encoder gives a diagonal Gaussian q(z|x) = N(mean, exp(logvar));
  z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) from the 'latent' RNG stream
  (reparameterisation, so gradients reach mean and logvar); `elbo` gives the per-example bound.
- `Generator` / `Discriminator` (DCGAN-style conv, or MLP) and the standard (non-saturating) and
  Wasserstein losses, with the WGAN-GP gradient penalty (Gulrajani et al. 2017).

Autoencoders are called `model.apply(variables, x, train=False, dropout_rate=None)` and return the
reconstruction (shape of x; logits when `output_activation` is None). They use `setup`, so
`method='encode'` / `method='decode'` reach the two halves. Decoders need the data shape up front:
`data_shape` is a field, and inputs of another shape raise ValueError.

The conv models (`ConvAutoencoder`, `Generator` and `Discriminator` of kind 'conv') have a
`conv_impl` field ('auto' by default: vhjax's patch convolutions on CPU, XLA's native ones
elsewhere; 'patch' or 'xla' to force one; see vhjax.models.patch_conv). Parameters are the same.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vhjax.models.activations import check_activation, get_activation
from vhjax.models.layers import Dropout
from vhjax.models.patch_conv import CONV_IMPLS, make_conv, make_conv_transpose
from vhjax.models.resnet import check_int_tuple, check_kernel_fits
from vhjax.models.utils import as_tuple, check_choice, check_positive, check_rate, set_normalized

KINDS = ("conv", "mlp")
LIKELIHOODS = ("bernoulli", "gaussian")


# --- field checks ---------------------------------------------------------------------------------

def _check_data_shape(model: str, module: nn.Module) -> tuple[int, ...]:
    shape = as_tuple(module.data_shape)
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or not shape:
        raise ValueError(f"{model} field 'data_shape' has value {module.data_shape!r}; allowed: the shape of one "
                         "example, e.g. (40,) or (28, 28, 1)")
    for i, n in enumerate(shape):
        check_positive(model, f"data_shape[{i}]", n)
    set_normalized(module, "data_shape", shape)
    return shape


def _check_output_activation(model: str, name: Any) -> None:
    if name is not None:
        check_activation(model, "output_activation", name)


def _check_image_grid(model: str, shape: tuple[int, ...], levels: int) -> None:
    """Images whose height and width halve `levels` times exactly."""
    factor = 2 ** levels
    if len(shape) != 3 or shape[0] % factor or shape[1] % factor:
        raise ValueError(f"{model} field 'data_shape' has value {shape!r}; allowed: (height, width, channels) "
                         f"with height and width divisible by 2^{levels} = {factor} (one halving per entry "
                         "of 'features')")


def _check_input(model: str, x: jax.Array, shape: tuple[int, ...]) -> None:
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{model} field 'data_shape' has value {shape!r} but the input has shape "
                         f"{tuple(x.shape)}; allowed inputs: (batch, {', '.join(map(str, shape))})")


def _output(name: str | None, h: jax.Array) -> jax.Array:
    return h if name is None else get_activation(name)(h)


class MLPStack(nn.Module):
    """Dense(width) -> activation -> dropout, for each width."""

    widths: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, rate: Any = 0.0, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = get_activation(self.activation)(nn.Dense(width, name=f"dense_{i}")(x))
            x = Dropout(name=f"dropout_{i}")(x, rate, deterministic=not train)
        return x


# --- autoencoders -----------------------------------------------------------------------------------

class Autoencoder(nn.Module):
    """MLP autoencoder: x (N, *data_shape) -> code (N, latent_dim) -> reconstruction (N, *data_shape)."""

    data_shape: Sequence[int] = (40,)
    latent_dim: int = 16
    widths: Sequence[int] = (64,)
    activation: str = "relu"
    output_activation: str | None = None
    dropout_rate: float = 0.0

    kind = "autoencoder"

    def __post_init__(self):
        _check_data_shape(self.kind, self)
        check_positive(self.kind, "latent_dim", self.latent_dim)
        check_int_tuple(self, self.kind, "widths", allow_empty=True)
        check_activation(self.kind, "activation", self.activation)
        _check_output_activation(self.kind, self.output_activation)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def setup(self):
        self.encoder_body = MLPStack(self.widths, self.activation)
        self.code = nn.Dense(self.latent_dim)
        self.decoder_body = MLPStack(tuple(reversed(self.widths)), self.activation)
        self.reconstruct = nn.Dense(math.prod(self.data_shape))

    def encode(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        _check_input(self.kind, x, self.data_shape)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return self.code(self.encoder_body(x.reshape(x.shape[0], -1), rate, train))

    def decode(self, z: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = self.reconstruct(self.decoder_body(z, rate, train))
        return _output(self.output_activation, h.reshape(z.shape[0], *self.data_shape))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        return self.decode(self.encode(x, train=train, dropout_rate=dropout_rate), train=train,
                           dropout_rate=dropout_rate)


class ConvEncoder(nn.Module):
    """One stride-2 conv (+ activation) per entry of `features`."""

    features: Sequence[int]
    kernel_size: int = 3
    activation: str = "relu"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, f in enumerate(self.features):
            conv = make_conv(self.conv_impl, f, (self.kernel_size,) * 2, 2, name=f"conv_{i}")
            x = get_activation(self.activation)(conv(x))
        return x


class ConvDecoder(nn.Module):
    """One stride-2 transposed conv per entry of `features` (activation after each), then a stride-2
    transposed conv to `channels` without activation."""

    features: Sequence[int]
    channels: int
    kernel_size: int = 3
    activation: str = "relu"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = (self.kernel_size,) * 2
        for i, f in enumerate(self.features):
            deconv = make_conv_transpose(self.conv_impl, f, window, 2, name=f"deconv_{i}")
            x = get_activation(self.activation)(deconv(x))
        return make_conv_transpose(self.conv_impl, self.channels, window, 2, name="deconv_out")(x)


class ConvAutoencoder(nn.Module):
    """Conv autoencoder on images (N, H, W, C): `features` stride-2 convs down (H and W must be
    divisible by 2^len(features)), then transposed convs back up to (N, H, W, C)."""

    data_shape: Sequence[int] = (28, 28, 1)
    features: Sequence[int] = (16, 32)
    kernel_size: int = 3
    activation: str = "relu"
    output_activation: str | None = None
    dropout_rate: float = 0.0  # kept for the zoo's interface; the conv autoencoder has no dropout
    conv_impl: str = "auto"

    kind = "conv_autoencoder"

    def __post_init__(self):
        shape = _check_data_shape(self.kind, self)
        features = check_int_tuple(self, self.kind, "features")
        _check_image_grid(self.kind, shape, len(features))
        check_positive(self.kind, "kernel_size", self.kernel_size)
        check_kernel_fits(self.kind, "kernel_size", self.kernel_size, shape[:2])
        check_activation(self.kind, "activation", self.activation)
        _check_output_activation(self.kind, self.output_activation)
        check_rate(self.kind, "dropout_rate", self.dropout_rate)
        check_choice(self.kind, "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    def setup(self):
        self.encoder = ConvEncoder(self.features, self.kernel_size, self.activation, self.conv_impl)
        self.decoder = ConvDecoder(tuple(reversed(self.features[:-1])), self.data_shape[-1], self.kernel_size,
                                   self.activation, self.conv_impl)

    def encode(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        _check_input(self.kind, x, self.data_shape)
        return self.encoder(x)

    def decode(self, z: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        return _output(self.output_activation, self.decoder(z))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        return self.decode(self.encode(x))


class VAE(Autoencoder):
    """Variational autoencoder with an MLP encoder/decoder and a diagonal Gaussian posterior.

    `__call__(x, train=False, dropout_rate=None, sample=None) -> (reconstruction, mean, logvar)`;
    `sample=None` samples z (RNG stream 'latent') when training and uses z = mean otherwise.
    The reconstruction is decoder logits for `elbo(likelihood='bernoulli')` (data in [0, 1]) or
    the Gaussian mean for 'gaussian'. Generate with `apply(v, z, method='decode')`, z ~ N(0, I).
    """

    kind = "vae"

    def setup(self):
        super().setup()
        self.logvar = nn.Dense(self.latent_dim)

    def posterior(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of q(z | x), each (N, latent_dim)."""
        _check_input(self.kind, x, self.data_shape)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        h = self.encoder_body(x.reshape(x.shape[0], -1), rate, train)
        return self.code(h), self.logvar(h)

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None,
                 sample: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.posterior(x, train=train, dropout_rate=dropout_rate)
        z = mean
        if train if sample is None else sample:
            z = reparameterize(self.make_rng("latent"), mean, logvar)
        return self.decode(z, train=train, dropout_rate=dropout_rate), mean, logvar


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a sample of N(mean, exp(logvar)) that is
    differentiable in mean and logvar."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over latent dimensions: (N,)."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def elbo(model: VAE, variables: Any, x: jax.Array, key: jax.Array, *, likelihood: str = "bernoulli",
         beta: float = 1.0, train: bool = False, dropout_rate: Any = None) -> jax.Array:
    """Per-example evidence lower bound, (N,): E_q[log p(x | z)] - beta * KL(q(z | x) || N(0, I)),
    the expectation estimated with one reparameterised sample. Maximise it (loss = -elbo.mean()).

    likelihood 'bernoulli': log p(x|z) = -BCE(decoder logits, x) (x in [0, 1]);
    'gaussian': unit-variance Gaussian around the decoder output, -||x - mu||^2 / 2 - D log(2 pi) / 2.
    """
    check_choice("elbo", "likelihood", likelihood, LIKELIHOODS)
    latent_key, dropout_key = jax.random.split(key)
    recon, mean, logvar = model.apply(variables, x, train=train, dropout_rate=dropout_rate, sample=True,
                                      rngs={"latent": latent_key, "dropout": dropout_key})
    flat_x, flat_r = x.reshape(x.shape[0], -1), recon.reshape(x.shape[0], -1)
    if likelihood == "bernoulli":
        log_px = -optax.sigmoid_binary_cross_entropy(flat_r, flat_x).sum(-1)
    else:
        log_px = -0.5 * ((flat_x - flat_r) ** 2).sum(-1) - 0.5 * flat_x.shape[-1] * math.log(2 * math.pi)
    return log_px - beta * gaussian_kl(mean, logvar)


# --- GAN networks -------------------------------------------------------------------------------------

class Generator(nn.Module):
    """Noise z (N, latent_dim) -> samples (N, *data_shape) in (-1, 1) by default (tanh output).

    kind 'conv' (DCGAN-style, images): Dense to a (H / 2^k, W / 2^k, features[0]) grid, k =
    len(features); stride-2 transposed convs through features[1:] and finally to C channels.
    kind 'mlp': Dense layers of `features`, then Dense to prod(data_shape), reshaped.
    """

    data_shape: Sequence[int] = (28, 28, 1)
    latent_dim: int = 32
    kind: str = "conv"
    features: Sequence[int] = (64, 32)
    kernel_size: int = 3
    activation: str = "relu"
    output_activation: str | None = "tanh"
    dropout_rate: float = 0.0  # kept for the zoo's interface; unused
    conv_impl: str = "auto"

    def __post_init__(self):
        shape = _check_data_shape("gan_generator", self)
        check_choice("gan_generator", "kind", self.kind, KINDS)
        features = check_int_tuple(self, "gan_generator", "features")
        if self.kind == "conv":
            _check_image_grid("gan_generator", shape, len(features))
        check_positive("gan_generator", "latent_dim", self.latent_dim)
        check_positive("gan_generator", "kernel_size", self.kernel_size)
        check_activation("gan_generator", "activation", self.activation)
        _check_output_activation("gan_generator", self.output_activation)
        check_choice("gan_generator", "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"gan_generator field 'latent_dim' has value {self.latent_dim} but the noise has shape "
                             f"{tuple(z.shape)}; allowed: (batch, {self.latent_dim})")
        act = lambda h: get_activation(self.activation)(h)
        if self.kind == "mlp":
            h = MLPStack(self.features, self.activation, name="body")(z)
            h = nn.Dense(math.prod(self.data_shape), name="out")(h).reshape(z.shape[0], *self.data_shape)
            return _output(self.output_activation, h)
        factor = 2 ** len(self.features)
        height, width, channels = self.data_shape
        h = act(nn.Dense(height // factor * width // factor * self.features[0], name="project")(z))
        h = h.reshape(z.shape[0], height // factor, width // factor, self.features[0])
        h = ConvDecoder(self.features[1:], channels, self.kernel_size, self.activation, self.conv_impl,
                        name="body")(h)
        return _output(self.output_activation, h)


class Discriminator(nn.Module):
    """Samples (N, *data_shape) -> one real/fake logit (or Wasserstein critic score) each, (N, 1).

    kind 'conv': stride-2 convs of `features` (leaky ReLU), flatten, Dense(1); kind 'mlp': Dense
    layers of `features` (leaky ReLU), Dense(1). No batch norm, so it is per-example, as the
    WGAN-GP gradient penalty requires.
    """

    data_shape: Sequence[int] = (28, 28, 1)
    kind: str = "conv"
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    activation: str = "leaky_relu"
    dropout_rate: float = 0.0
    conv_impl: str = "auto"

    def __post_init__(self):
        shape = _check_data_shape("gan_discriminator", self)
        check_choice("gan_discriminator", "kind", self.kind, KINDS)
        check_int_tuple(self, "gan_discriminator", "features")
        check_positive("gan_discriminator", "kernel_size", self.kernel_size)
        if self.kind == "conv":
            if len(shape) != 3:
                raise ValueError(f"gan_discriminator field 'data_shape' has value {shape!r}; allowed with kind "
                                 "'conv': (height, width, channels)")
            check_kernel_fits("gan_discriminator", "kernel_size", self.kernel_size, shape[:2])
        check_activation("gan_discriminator", "activation", self.activation)
        check_rate("gan_discriminator", "dropout_rate", self.dropout_rate)
        check_choice("gan_discriminator", "conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, dropout_rate: Any = None) -> jax.Array:
        _check_input("gan_discriminator", x, self.data_shape)
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        if self.kind == "conv":
            h = ConvEncoder(self.features, self.kernel_size, self.activation, self.conv_impl, name="body")(x)
            h = Dropout(name="dropout")(h.reshape(x.shape[0], -1), rate, deterministic=not train)
        else:
            h = MLPStack(self.features, self.activation, name="body")(x.reshape(x.shape[0], -1), rate, train)
        return nn.Dense(1, name="out")(h)


# --- GAN losses (scalars, averaged over the batch) ------------------------------------------------------

def _scores(logits: jax.Array) -> jax.Array:
    return logits.reshape(logits.shape[0], -1).mean(-1)  # (N, 1) or (N,) -> (N,)


def gan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Cross-entropy of the real/fake classifier: -log D(real) - log(1 - D(fake)), batch means."""
    return jax.nn.softplus(-_scores(real_logits)).mean() + jax.nn.softplus(_scores(fake_logits)).mean()


def gan_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014), batch mean."""
    return jax.nn.softplus(-_scores(fake_logits)).mean()


def wasserstein_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
    """WGAN critic loss mean(f(fake)) - mean(f(real)): minimising it estimates W1(real, fake)."""
    return _scores(fake_scores).mean() - _scores(real_scores).mean()


def wasserstein_generator_loss(fake_scores: jax.Array) -> jax.Array:
    """WGAN generator loss -mean(f(G(z)))."""
    return -_scores(fake_scores).mean()


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, key: jax.Array,
                     target_norm: float = 1.0) -> jax.Array:
    """WGAN-GP penalty mean((||grad_x critic(x_hat)|| - target_norm)^2) at random interpolates
    x_hat = e * real + (1 - e) * fake, e ~ U[0, 1] per example. `critic` maps a batch to (N,) or
    (N, 1) scores and must treat examples independently (no batch norm). Scale by lambda (10)."""
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty needs real and fake of one shape; got {real.shape} and {fake.shape}")
    e = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    x_hat = e * real + (1.0 - e) * fake
    grads = jax.grad(lambda x: _scores(critic(x)).sum())(x_hat)
    norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1) + 1e-12)
    return jnp.mean((norms - target_norm) ** 2)
