"""Target registration error of corresponding landmarks (Fitzpatrick, West & Maurer, IEEE TMI 17(5), 1998).

Here the points are given: e.g. fixed landmarks mapped by the registration, ``T(x_i)``, against their
annotated counterparts ``y_i`` in the moving image, both in world mm. (To map the points through a transform
first, see ``jaxreg.points.tre`` or use ``transform(points)``.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["TargetRegistrationError", "target_registration_error"]


class TargetRegistrationError(NamedTuple):
    """Per-point distances and their summary, mm.

    Attributes:
      distances: ``(...)`` Euclidean distance of each pair.
      mean: mean distance over all pairs.
      std: population standard deviation (``ddof=0``, NumPy's default) over all pairs.
    """

    distances: jax.Array
    mean: jax.Array
    std: jax.Array


def target_registration_error(points_a: jax.Array, points_b: jax.Array) -> TargetRegistrationError:
    """``||a_i - b_i||`` for corresponding points, with mean and standard deviation, in mm.

    Args:
      points_a: ``(..., ndim)`` world points in mm (e.g. ``T(fixed_landmarks)``).
      points_b: the same shape (e.g. the moving landmarks).

    Returns:
      :class:`TargetRegistrationError` with ``distances`` of shape ``(...)`` (float). Jit-able.
    """
    a, b = jnp.asarray(points_a), jnp.asarray(points_b)
    if a.shape != b.shape or a.ndim < 1 or a.shape[-1] not in (1, 2, 3):
        raise ValueError(
            f"points_a, points_b: expected equal shapes (..., ndim) with ndim in 1..3, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    dt = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    d = jnp.sqrt(jnp.sum((a.astype(dt) - b.astype(dt)) ** 2, axis=-1))
    return TargetRegistrationError(d, jnp.mean(d), jnp.std(d))
