"""Inverse consistency of a pair of transforms (Christensen & Johnson, IEEE TMI 2001).

Symmetric registration estimates ``forward: fixed -> moving`` and ``backward: moving -> fixed`` (in jaxreg's
pull convention, ``forward`` maps fixed-space points to moving-space points). If they are inverses of each
other, ``backward(forward(x)) = x`` on the fixed domain and ``forward(backward(y)) = y`` on the moving domain.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.grid import Grid
from jaxreg.regularizers._common import check_mask, weighted_mean
from jaxreg.transforms.base import Transform

__all__ = ["inverse_consistency"]


def inverse_consistency(
    forward: Transform,
    backward: Transform,
    grid: Grid,
    *,
    mask: jax.Array | None = None,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Mean inverse-consistency error ``||b(f(x)) - x||^2 + ||f(b(x)) - x||^2`` over the voxels of ``grid``.

    Both round trips are evaluated at the same points ``x`` (the voxel centres of ``grid``, world mm), which
    is what the symmetric penalty of Christensen & Johnson does on a common domain; pass the fixed grid when
    ``forward`` and ``backward`` share it (the usual case for symmetric or diffeomorphic pairs).

    Units: mm^2. Reference: Christensen & Johnson, "Consistent image registration", IEEE TMI 20(7), 2001.

    Args:
      forward: any jaxreg transform (world mm -> world mm).
      backward: its supposed inverse, same dimension.
      grid: evaluation points (static).
      mask: optional ``grid.shape`` voxel weights (weighted mean ``sum(w e) / sum(w)``).
      dtype: floating dtype of the computation.

    Returns:
      Scalar, differentiable with respect to both transforms' parameters.
    """
    for name, t in (("forward", forward), ("backward", backward)):
        if not isinstance(t, Transform):
            raise TypeError(f"{name}: expected a jaxreg Transform, got {type(t).__name__}")
        if t.ndim != grid.ndim:
            raise ValueError(f"{name}: a {t.ndim}-D transform cannot be evaluated on a {grid.ndim}-D grid")
    return _inverse_consistency(
        forward, backward, check_mask(mask, grid.shape), grid=grid, dtype=jnp.dtype(dtype)
    )


@functools.partial(jax.jit, static_argnames=("grid", "dtype"))
def _inverse_consistency(forward, backward, mask, *, grid, dtype):
    x = grid.world_coords(dtype)
    bfx = backward(forward.sample_grid(grid, dtype))
    fbx = forward(backward.sample_grid(grid, dtype))
    err = jnp.sum((bfx - x) ** 2, axis=-1) + jnp.sum((fbx - x) ** 2, axis=-1)
    return weighted_mean(err.astype(dtype), mask)
