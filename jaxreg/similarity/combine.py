"""Multi-metric and multi-channel similarity: a weighted sum of similarity terms, each on all or one channel.

``weighted_sum(terms=(("lncc(window=5)", 1.0), ("nmi(bins=32)", 0.5)))`` is one similarity term
``loss(fixed, moving, mask=None) -> scalar``, so every method takes it where it takes one similarity (the
force of :class:`~jaxreg.optimize.Greedy` is the gradient of the sum, the objective of
:class:`~jaxreg.optimize.Gradient` sums it with its other terms). With a channel index per term it compares
channel-last images ``(*spatial, C)`` channel by channel, each with its own metric and weight: the
multi-metric stage of ``antsRegistration`` (``-m CC[f1,m1,1,4] -m MI[f2,m2,0.5,32]``) with the image pairs
stacked as channels on one fixed and one moving grid.

    L(F, M) = sum_k w_k S_k(F[..., c_k], M[..., c_k], mask)      (or S_k(F, M, mask) when c_k is None)

A term may also compare a block of channels, ``(start, stop)``: ``F[..., start:stop]``.

Like every similarity it is lower-is-better and registered by name (``"weighted_sum"``); it hashes by its
terms, so equal configurations share compiled code.

**Prepared terms.** When a term is a *prepared similarity* (``features``: ``prepare(image)`` once per image and
level, then ``prepared`` on the prepared arrays; :mod:`jaxreg.similarity.learned`), the sum is one too, so
:func:`jaxreg.optimize.register` prepares it like a lone ``features`` term:

* ``prepare(image) -> (*spatial, 1 + C)``: the image itself (channel 0, for the other terms), then the prepared
  term's ``C`` channels;
* ``prepared``: the sum on those arrays, a ``weighted_sum`` of the prepared term's ``prepared`` on channels
  ``1:`` and every other term on channel 0. ``loss(F, M, mask) == prepared(prepare(F), prepare(M), mask)``.

One term may be prepared, and every term must take the whole (single-channel) images (``channel`` ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.registry import configured, parse

__all__ = ["weighted_sum"]


def _item(item: Any, k: int) -> tuple[Callable, float, int | None]:
    where = f"terms[{k}]"
    if isinstance(item, (str, dict)) or callable(item):
        item = (item,)
    if not isinstance(item, tuple) or not 1 <= len(item) <= 3:
        raise ValueError(f"{where}: expected (similarity, weight[, channel]), got {item!r}")
    spec, weight, channel = item + (1.0, None)[len(item) - 1 :]
    fn = spec if callable(spec) else parse(spec, "similarity", argument=where)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"{where}: weight: expected a finite number, got {weight!r}")
    if isinstance(channel, list):
        channel = tuple(channel)
    if isinstance(channel, tuple):
        start, stop = channel if len(channel) == 2 else (None, None)
        if not (_is_index(start) and (stop is None or (_is_index(stop) and stop > start))):
            raise ValueError(
                f"{where}: channel: expected a (start, stop) range, 0 <= start, stop None or past start, got {channel!r}"
            )
    elif channel is not None and not _is_index(channel):
        raise ValueError(f"{where}: channel: expected None, a channel index >= 0 or a (start, stop) range, got {channel!r}")
    return fn, float(weight), channel


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _channel(x: jax.Array, c: int) -> jax.Array:
    """``x[..., c]`` as a product with the one-hot vector ``e_c`` (exact for finite values).

    Indexing the channel instead gave a NaN field after two iterations of the greedy kernel under XLA's CPU backend
    at ``--xla_backend_optimization_level=0`` (the test suite's setting; other levels were fine); the product did not.
    """
    if c >= x.shape[-1]:
        raise ValueError(f"channel: term on channel {c} of images with {x.shape[-1]} channels (shape {x.shape})")
    return _block(x, c, c + 1)[..., 0]


def _block(x: jax.Array, start: int, stop: int | None) -> jax.Array:
    """``x[..., start:stop]`` as a product with a 0/1 selection matrix (see :func:`_channel`)."""
    sel = jnp.eye(x.shape[-1], dtype=x.dtype)[:, start:stop]
    if sel.shape[-1] == 0:
        raise ValueError(f"channel: term on channels {start}:{stop} of images with {x.shape[-1]} channels")
    return jnp.tensordot(x, sel, axes=([-1], [0]), precision=jax.lax.Precision.HIGHEST)


def _select(x: jax.Array, c: Any) -> jax.Array:
    if c is None:
        return x
    return _block(x, *c) if isinstance(c, tuple) else _channel(x, c)


def _preparation(items: tuple) -> tuple[Callable, Callable] | None:
    """``(prepare, prepared)`` of a sum with a prepared term (see the module docstring), or ``None``."""
    preps = [fn for fn, _, _ in items if getattr(fn, "prepare", None) is not None]
    if not preps:
        return None
    if len(preps) > 1 or any(c is not None for _, _, c in items):
        raise ValueError("terms: a sum with a prepared similarity (e.g. features) takes one prepared term and "
                         "compares the whole images in every term (channel None)")
    term = preps[0]
    plain = len(items) > 1

    def prepare(image: jax.Array) -> jax.Array:
        out = term.prepare(image)
        if plain:  # the image itself first, for the other terms
            out = jnp.concatenate([jnp.asarray(image)[..., None].astype(out.dtype), out], axis=-1)
        return out

    prepared = weighted_sum(
        tuple((term.prepared, w, (1, None) if plain else None) if fn is term else (fn, w, 0) for fn, w, _ in items)
    )
    return prepare, prepared


@configured("similarity")
def weighted_sum(terms: tuple = ()) -> Callable[..., jax.Array]:
    """A weighted sum of similarity terms, each on the whole images or on one channel.

    Args:
      terms: ``(similarity, weight, channel)`` items (``weight`` default 1, ``channel`` default ``None``);
        ``similarity`` is a registry spec (``"lncc(window=5)"``, ``"nmi(bins=32)"``) or a loss function,
        ``weight`` a finite number, ``channel`` ``None`` (the images as they are), the index ``c`` of the
        channel ``F[..., c]``, ``M[..., c]`` that the term compares (channel-last images ``(*spatial, C)``), or a
        ``(start, stop)`` range of channels ``F[..., start:stop]`` (``stop`` ``None``: to the last).

    Returns:
      ``loss(fixed, moving, mask=None) -> scalar``: ``sum_k w_k S_k`` (lower is better), in the images' float
      dtype; ``mask`` (spatial weights) is passed to every term. With a prepared term (``features``) the loss
      also has ``prepare`` and ``prepared`` (the module docstring).

    Raises:
      ValueError: no terms, an unknown similarity, a weight that is not a finite number, a bad channel index.
    """
    if not isinstance(terms, tuple) or not terms:
        raise ValueError(f"terms: expected at least one (similarity, weight[, channel]) item, got {terms!r}")
    items = tuple(_item(t, k) for k, t in enumerate(terms))

    def loss(fixed: jax.Array, moving: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        total = jnp.zeros((), jnp.result_type(fixed.dtype, jnp.float32))
        for fn, w, c in items:
            f, m = _select(fixed, c), _select(moving, c)
            total = total + w * jnp.asarray(fn(f, m, mask), total.dtype)
        return total.astype(fixed.dtype)

    prep = _preparation(items)
    if prep is not None:
        loss.prepare, loss.prepared = prep
    return loss
