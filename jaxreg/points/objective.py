"""Landmark terms for intensity registration (keypoint-guided registration).

A landmark term measures how far a transform carries fixed-space landmarks from their moving-space partners,

    ``L(T) = sum_i w_i |T(x_i) - y_i|^2 / sum_i w_i``      (mm^2),

in the pull direction of every jaxreg transform (``T`` maps fixed to moving points, as the image warp samples
``moving(T(x))``). It is a plain differentiable function of the transform's leaves, so it adds to an image metric
in an explicit weighted objective, e.g. ``loss(T) = ncc(fixed, warp(moving, T, grid)) + lam * term(T)``, and
``jax.grad`` differentiates through it for any transform family (linear, B-spline, dense fields). Its minimiser
over a linear family is the closed-form fit of :mod:`jaxreg.points.fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.transforms.base import Transform

__all__ = ["landmark_distance", "landmark_term"]


def _check(
    fixed_points: Any, moving_points: Any, weights: Any
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    x, y = jnp.asarray(fixed_points), jnp.asarray(moving_points)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"fixed_points/moving_points: expected the same shape (N, ndim), world mm, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if weights is None:
        return x, y, None
    w = jnp.asarray(weights)
    if w.shape != x.shape[:1]:
        raise ValueError(
            f"weights: expected shape ({x.shape[0]},), one per landmark pair, got {tuple(w.shape)}"
        )
    return x, y, w


def landmark_distance(
    transform: Transform,
    fixed_points: jax.Array,
    moving_points: jax.Array,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Mean squared landmark distance ``sum_i w_i |T(x_i) - y_i|^2 / sum_i w_i`` in mm^2 (lower is better).

    Args:
      transform: fixed -> moving transform (any jaxreg transform; differentiable in its leaves).
      fixed_points: ``(N, ndim)`` landmarks in the fixed space, world mm.
      moving_points: ``(N, ndim)`` the corresponding landmarks in the moving space, world mm.
      weights: ``(N,)`` non-negative weights (traced, e.g. confidences), or None for the plain mean.

    Returns:
      Scalar, mm^2. Its square root is the (weighted) RMS landmark error.
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg transform, got {type(transform).__name__}")
    x, y, w = _check(fixed_points, moving_points, weights)
    d = transform(x) - y
    d2 = jnp.sum(d * d, axis=-1)
    if w is None:
        return jnp.mean(d2)
    w = w.astype(d2.dtype)
    return jnp.sum(w * d2) / jnp.sum(w)


def landmark_term(
    fixed_points: jax.Array, moving_points: jax.Array, *, weights: jax.Array | None = None
) -> Callable[[Transform], jax.Array]:
    """A configured landmark term ``term(transform) -> mm^2`` (:func:`landmark_distance` with fixed landmarks).

    Args:
      fixed_points: ``(N, ndim)`` world mm.
      moving_points: ``(N, ndim)`` world mm.
      weights: ``(N,)`` non-negative, or None.

    Returns:
      ``term(transform)``, a pure function to add to an image metric in an objective.
    """
    x, y, w = _check(fixed_points, moving_points, weights)

    def term(transform: Transform) -> jax.Array:
        """Mean squared distance (mm^2) between ``transform(fixed_points)`` and ``moving_points``."""
        return landmark_distance(transform, x, y, weights=w)

    return term
