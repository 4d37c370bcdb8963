"""Augmentation primitives and their composition.

An augmentation is `fn(key, x, strength) -> x` on a whole batch (axis 0 = examples). `strength` is
a scalar array, so it may be traced and differ per population member under `jax.vmap`;
`strength == 0` returns `x` bitwise. `chain` applies several augmentations, each to every example
with its own probability; `pipeline_from_config` builds a chain from named config entries.

The AUGMENTATIONS registry maps a name to a factory `factory(**options) -> augmentation`
(options such as `mode='edge'`); `get_augmentation(name, **options)` calls it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vhjax import validation
from vhjax.counter_hash import hashed_bernoulli
from vhjax.registry import Registry

Augmentation = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
ChainedAugmentation = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
AugmentationFactory = Callable[..., Augmentation]

AUGMENTATIONS: Registry[AugmentationFactory] = Registry("augmentation")
MAX_STRENGTH: dict[str, float] = {}


def register_augmentation(name: str, *, max_strength: float = math.inf) -> Callable[[AugmentationFactory], AugmentationFactory]:
    """Register a factory under `name`; configs may ask for strengths in [0, max_strength]."""

    def decorator(factory: AugmentationFactory) -> AugmentationFactory:
        AUGMENTATIONS.add(name, factory)
        MAX_STRENGTH[name] = max_strength
        return factory

    return decorator


def get_augmentation(name: str, **options: Any) -> Augmentation:
    """The augmentation registered under `name`, built with `options` (e.g. `mode='edge'`).

    Unknown names raise ValueError listing the known ones; unknown options raise ValueError
    listing the allowed ones.
    """
    return AUGMENTATIONS.build(name, **options)


# --- building blocks shared by the ops -------------------------------------------------------


def check_strength(strength: jax.Array, name: str = "strength") -> jax.Array:
    """`strength` as a float32 scalar array; any other shape raises ValueError."""
    strength = jnp.asarray(strength, dtype=jnp.float32)
    if strength.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar array, got shape {strength.shape}; "
            "use jax.vmap to give population members different values")
    return strength


def check_rank(x: jax.Array, ranks: Sequence[int], op: str, layout: str) -> None:
    """Raise ValueError unless `x.ndim` is one of `ranks`."""
    if jnp.ndim(x) not in ranks:
        raise ValueError(
            f"augmentation {op!r} got x of shape {jnp.shape(x)}; allowed: {layout}")


def identity_at_zero(strength: jax.Array, x: jax.Array, augmented: jax.Array) -> jax.Array:
    """`x` itself (bitwise) where strength == 0, else `augmented` cast to x's dtype."""
    return jnp.where(strength == 0, x, augmented.astype(x.dtype))


def per_example(key: jax.Array, x: jax.Array, fn: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """Apply `fn(key_i, x_i)` to every example of the batch with its own key.

    Simple, but a key split per example and a vmapped op cost much more on CPU than one batched
    draw and one batched op; the sequence ops and flips use the latter (see sequence.py).
    """
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(fn)(keys, x)


def select_examples(mask: jax.Array, augmented: jax.Array, x: jax.Array) -> jax.Array:
    """Per example: `augmented[i]` where `mask[i]`, else `x[i]` (bitwise)."""
    mask = jnp.reshape(mask, (-1,) + (1,) * (x.ndim - 1))
    return jnp.where(mask, augmented.astype(x.dtype), x)


# --- composition -----------------------------------------------------------------------------


def with_probability(augmentation: Augmentation) -> ChainedAugmentation:
    """`fn(key, x, strength, prob)`: each example is augmented with probability `prob`.

    Draws one Bernoulli(prob) per example, all in one `(N,)` draw; prob 0 gives `x` back bitwise,
    prob 1 augments every example. `prob` is a scalar array and may be traced.
    """

    def apply(key: jax.Array, x: jax.Array, strength: jax.Array, prob: jax.Array) -> jax.Array:
        strength, prob = check_strength(strength), check_strength(prob, "prob")
        augment_key, mask_key = jax.random.split(key)
        chosen = hashed_bernoulli(mask_key, prob, x.shape[0])
        return select_examples(chosen, augmentation(augment_key, x, strength), x)

    return apply


def chain(*augmentations: Augmentation) -> ChainedAugmentation:
    """`fn(key, x, strengths (K,), probs (K,))` applying K augmentations in order.

    Augmentation k is applied with strength `strengths[k]`, to each example independently with
    probability `probs[k]`. All-zero strengths or all-zero probs give `x` back bitwise.
    """
    steps = [with_probability(augmentation) for augmentation in augmentations]
    count = len(steps)

    def apply(key: jax.Array, x: jax.Array, strengths: jax.Array, probs: jax.Array) -> jax.Array:
        strengths = jnp.asarray(strengths, dtype=jnp.float32)
        probs = jnp.asarray(probs, dtype=jnp.float32)
        for field, values in (("strengths", strengths), ("probs", probs)):
            if values.shape != (count,):
                raise ValueError(
                    f"{field} has shape {values.shape}; allowed: ({count},), one value per chained augmentation")
        if count == 0:
            return x
        keys = jax.random.split(key, count)
        for index, step in enumerate(steps):
            x = step(keys[index], x, strengths[index], probs[index])
        return x

    return apply


# --- configuration ---------------------------------------------------------------------------


def _entry_fields(index: int, entry: Any) -> dict[str, Any]:
    """A config entry (dict, or tuple `(name, strength[, prob])`) as a dict."""
    if isinstance(entry, Mapping):
        return dict(entry)
    if isinstance(entry, (tuple, list)) and 2 <= len(entry) <= 3:
        return dict(zip(("name", "strength", "prob"), entry))
    raise ValueError(
        f"augment entry {index} is {entry!r}; allowed: a dict with 'name', 'strength' and optional "
        "'prob' and options, or a tuple (name, strength[, prob])")


def _checked_number(index: int, name: str, field: str, value: Any, low: float, high: float) -> float:
    """`value` as a float in [low, high]; anything else raises ValueError naming the field."""
    where = f"augment entry {index} ({name!r}) field {field!r}"
    validation.require(np.ndim(value) == 0, where, value, f"a real number in [{low}, {high}]")
    return validation.check_number(where, value, low, None if high == math.inf else high)


def _parse_entry(index: int, entry: Any) -> tuple[Augmentation, float, float]:
    """Resolve one config entry into (augmentation, strength, prob), validating every field."""
    fields = _entry_fields(index, entry)
    name = fields.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(
            f"augment entry {index} field 'name' has value {name!r}; allowed: {', '.join(AUGMENTATIONS.names())}")
    if "strength" not in fields:
        raise ValueError(f"augment entry {index} ({name!r}) is missing field 'strength'")
    augmentation = get_augmentation(name, **{k: v for k, v in fields.items() if k not in ("strength", "prob")})
    strength = _checked_number(index, name, "strength", fields["strength"], 0.0, MAX_STRENGTH[name])
    prob = _checked_number(index, name, "prob", fields.get("prob", 1.0), 0.0, 1.0)
    return augmentation, strength, prob


def pipeline_from_config(spec: Sequence[Any]) -> tuple[ChainedAugmentation, np.ndarray, np.ndarray]:
    """(chained fn, strengths (K,), probs (K,)) from entries like
    `{'name': 'gaussian_noise', 'strength': 0.1, 'prob': 1.0}` or `('shift', 0.1, 0.5)`.

    Extra dict keys are options of the augmentation's factory (e.g. `'mode': 'edge'`). `prob`
    defaults to 1. Names, options, strengths (0 to the op's maximum) and probs (0 to 1) are
    validated here, on Python values, before anything is traced.
    """
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ValueError(f"augment spec is {spec!r}; allowed: a list of entries (dicts or tuples)")
    parsed = [_parse_entry(index, entry) for index, entry in enumerate(spec)]
    augmentations = [augmentation for augmentation, _, _ in parsed]
    strengths = np.array([strength for _, strength, _ in parsed], dtype=np.float32)
    probs = np.array([prob for _, _, prob in parsed], dtype=np.float32)
    return chain(*augmentations), strengths, probs
