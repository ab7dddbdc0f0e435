"""Spacing- and orientation-aware finite differences on grids.

Derivatives are taken along array axes in index units (central differences inside, one-sided at the two
border layers, as ``numpy.gradient`` with ``edge_order=1``) and mapped to world derivatives with the chain
rule through the grid's affine: ``df/dx = df/di A^-1`` where ``A`` is the grid's linear part. The result is
therefore exact for any function that is linear in world coordinates, whatever the spacing or orientation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg.core.grid import Grid

__all__ = ["index_gradient", "spatial_gradient"]


def index_gradient(values: jax.Array, ndim: int) -> jax.Array:
    """Derivatives along the first ``ndim`` array axes in index units.

    Args:
      values: ``(*spatial, ...)`` array with ``ndim`` leading spatial axes (each of size >= 2).
      ndim: number of spatial axes.

    Returns:
      ``(*spatial, ..., ndim)``: the last axis indexes the differentiation axis.
    """
    out = []
    for ax in range(ndim):
        n = values.shape[ax]
        if n < 2:
            raise ValueError(f"values: axis {ax} needs at least 2 samples for a finite difference, got {n}")
        fwd = jnp.diff(values, axis=ax)  # (n-1)
        first = jax.lax.slice_in_dim(fwd, 0, 1, axis=ax)
        last = jax.lax.slice_in_dim(fwd, n - 2, n - 1, axis=ax)
        if n > 2:
            central = 0.5 * (jax.lax.slice_in_dim(fwd, 1, n - 1, axis=ax) + jax.lax.slice_in_dim(fwd, 0, n - 2, axis=ax))
            out.append(jnp.concatenate([first, central, last], axis=ax))
        else:
            out.append(jnp.concatenate([first, last], axis=ax))
    return jnp.stack(out, axis=-1)


def spatial_gradient(values: jax.Array, grid: Grid) -> jax.Array:
    """World-space gradient (per mm) of values sampled on ``grid``.

    Args:
      values: ``(*grid.shape, ...)``.
      grid: the sampling grid (spacing and direction are used).

    Returns:
      ``(*grid.shape, ..., ndim)`` with ``out[..., j] = d values / d x_j`` (x in world mm).
    """
    if tuple(values.shape[: grid.ndim]) != grid.shape:
        raise ValueError(f"values: expected leading shape {grid.shape}, got {tuple(values.shape)}")
    gi = index_gradient(values, grid.ndim)
    inv = jnp.asarray(grid.inverse_affine[: grid.ndim, : grid.ndim], dtype=gi.dtype)
    return gi @ inv
