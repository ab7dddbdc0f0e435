"""Shared plumbing of the regularisers: field checks, the axis frame (spacing/direction) and weighted means.

Finite differences here are written with static slices so that every term is a handful of fused elementwise
operations; nothing is gathered or scattered, and ``jax.grad`` of a regulariser is its stencil transposed.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid

__all__: list[str] = []


def check_field(u: jax.Array, name: str = "u") -> int:
    """Validate a ``(*spatial, ndim)`` field and return ``ndim``."""
    if not hasattr(u, "shape") or u.ndim < 2:
        raise ValueError(
            f"{name}: expected a (*spatial, ndim) displacement field, got shape {getattr(u, 'shape', None)}"
        )
    n = int(u.shape[-1])
    if u.ndim - 1 != n or n not in (1, 2, 3):
        raise ValueError(
            f"{name}: expected shape (*spatial, ndim) with ndim = number of spatial axes in (1, 2, 3), "
            f"got {tuple(u.shape)}"
        )
    if not jnp.issubdtype(u.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating-point field (mm), got dtype {u.dtype}")
    return n


def check_min_size(u: jax.Array, ndim: int, need: int, what: str) -> None:
    for ax in range(ndim):
        if u.shape[ax] < need:
            raise ValueError(
                f"u: {what} needs at least {need} samples along every axis, got shape {tuple(u.shape)}"
            )


def frame(
    ndim: int, spacing: float | Sequence[float] | None, grid: Grid | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(spacing, index_to_world_derivative)`` of the field's lattice.

    Returns:
      spacing: ``(ndim,)`` float64 voxel size in mm per array axis.
      minv: ``None`` when array axes are world axes (``spacing`` given, or a grid with identity direction);
        otherwise the ``(ndim, ndim)`` matrix ``A^-1`` (``A`` the grid's linear part) that maps
        derivatives per index step to world derivatives: ``dU/dx = dU/di @ A^-1``.
    """
    if grid is not None:
        if spacing is not None:
            raise ValueError("spacing: give either spacing or grid, not both")
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
        if grid.ndim != ndim:
            raise ValueError(f"grid: expected a {ndim}-D grid for a {ndim}-D field, got {grid.ndim}-D")
        sp = np.asarray(grid.spacing, dtype=np.float64)
        if np.allclose(grid.direction, np.eye(ndim), atol=1e-9):
            return sp, None
        return sp, np.asarray(grid.inverse_affine[:ndim, :ndim], dtype=np.float64)
    if spacing is None:
        return np.ones(ndim), None
    if isinstance(spacing, jax.core.Tracer):
        raise TypeError(
            "spacing: expected static Python/NumPy numbers (it fixes the stencil), got a traced array"
        )
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing: expected positive finite voxel sizes in mm, got {sp.tolist()}")
    return sp, None


def check_mask(mask: Any, shape: tuple[int, ...]) -> jax.Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"mask: expected shape {tuple(shape)} (the field's spatial shape), got {tuple(mask.shape)}"
        )
    return mask


def sl(x: jax.Array, axis: int, start: int, stop: int | None) -> jax.Array:
    """``x`` sliced to ``[start:stop]`` along ``axis`` (static)."""
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def stencil_weights(mask: jax.Array | None, offsets: Sequence[Sequence[int]], out_shape: tuple[int, ...]):
    """Mean of ``mask`` over the voxels of a stencil, on the lattice of the stencil's base voxels.

    ``offsets`` are per-axis non-negative offsets of the stencil's voxels from the base voxel; the base
    voxels form the lattice ``out_shape`` starting at index 0.
    """
    if mask is None:
        return None
    w = mask.astype(jnp.result_type(mask.dtype, jnp.float32))
    acc = 0.0
    for off in offsets:
        idx = tuple(slice(o, o + s) for o, s in zip(off, out_shape))
        acc = acc + w[idx]
    return acc / len(offsets)


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """``mean(values)``, or ``sum(w v) / sum(w)`` (0 where all weights vanish)."""
    if weights is None:
        return jnp.mean(values)
    w = weights.astype(values.dtype)
    total = jnp.sum(w)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(w * values) / safe, jnp.zeros((), values.dtype))


def det(j: jax.Array) -> jax.Array:
    """Determinant of ``(..., n, n)`` matrices, n in 1..3, written out (no LU: exact and differentiable)."""
    n = j.shape[-1]
    if n == 1:
        return j[..., 0, 0]
    if n == 2:
        return j[..., 0, 0] * j[..., 1, 1] - j[..., 0, 1] * j[..., 1, 0]
    return (
        j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
        - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
        + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0])
    )
