"""Spatial Jacobians of transforms on a grid.

``J(x) = dT/dx`` in world coordinates (mm per mm, so spacing and orientation are accounted for). Linear
transforms return their exact matrix at every voxel; all others use :func:`jaxreg.core.diff.spatial_gradient`
of ``T`` sampled on the grid (central differences, one-sided at the border), which is exact for transforms that
are locally linear along the stencil.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.diff import spatial_gradient
from jaxreg.core.grid import Grid
from jaxreg.transforms.base import LinearTransform, Transform, _check_grid
from jaxreg.transforms.dense import DisplacementField

__all__ = ["jacobian", "jacobian_determinant"]


def jacobian(transform: Transform, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
    """Jacobian matrix of ``transform`` at every voxel centre of ``grid``.

    Args:
      transform: any jaxreg transform.
      grid: evaluation grid.
      dtype: floating dtype of the result.

    Returns:
      ``(*grid.shape, ndim, ndim)`` with ``J[..., i, j] = dT_i / dx_j`` (world, dimensionless).
    """
    _check_grid(transform, grid)
    n = grid.ndim
    if isinstance(transform, LinearTransform):
        a = transform.homogeneous()[:n, :n].astype(dtype)
        return jnp.broadcast_to(a, (*grid.shape, n, n))
    if isinstance(transform, DisplacementField) and transform.grid == grid:
        # differentiate the (smoother) displacement, then add the identity
        return spatial_gradient(transform.displacement.astype(dtype), grid) + jnp.eye(n, dtype=dtype)
    u = transform.sample_displacement(grid, dtype)
    return spatial_gradient(u, grid) + jnp.eye(n, dtype=dtype)


def jacobian_determinant(transform: Transform, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
    """``det J`` at every voxel of ``grid``, shape ``grid.shape``: local volume change (<= 0 means folding)."""
    j = jacobian(transform, grid, dtype)
    if grid.ndim == 2:
        return j[..., 0, 0] * j[..., 1, 1] - j[..., 0, 1] * j[..., 1, 0]
    if grid.ndim == 3:
        return (
            j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
            - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
            + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0])
        )
    return j[..., 0, 0]
