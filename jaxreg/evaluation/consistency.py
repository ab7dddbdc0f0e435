"""How well a transform and its computed inverse undo each other, in mm.

For a transform ``T`` (fixed -> moving, pull) and a computed inverse ``S`` (``jaxreg.invert``,
``jaxreg.transforms.inverse_displacement``, an ``InverseWarp`` file), the inverse-consistency error at a point ``x``
is ``|T(S(x)) - x|``. For displacement fields ``T(x) = x + u(x)`` and ``S(x) = x + u_inv(x)`` this is ``|u_inv(x) +
u(x + u_inv(x))|``, the residual of the fixed-point equation the inverse solves. It is evaluated at the voxel
centres ``x`` of a grid (usually the fixed grid, where both fields live), optionally inside a mask, and only where
``S(x)`` falls inside that grid (within half a voxel of its outer voxel centres): outside it a displacement field
has no displacement (ITK's ``DisplacementFieldTransform`` convention, :class:`jaxreg.transforms.DisplacementField`),
so ``T`` jumps to the identity there and a round trip through the border is undefined rather than inaccurate.
The number of voxels left out is reported.

This is the evaluation metric (natural units, mean and maximum); the differentiable penalty used in optimisation
is :func:`jaxreg.regularizers.inverse_consistency`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Grid
from jaxreg.transforms.base import Transform

__all__ = ["InverseConsistencyError", "inverse_consistency_error"]


class InverseConsistencyError(NamedTuple):
    """Statistics of ``|T(S(x)) - x|`` over the evaluated voxels (mm).

    Attributes:
      mean: mean error, mm.
      max: largest error, mm.
      num_voxels: number of voxels evaluated (inside the mask, ``S(x)`` inside the grid).
      num_outside: voxels inside the mask left out because ``S(x)`` falls outside the grid.
    """

    mean: float
    max: float
    num_voxels: int
    num_outside: int


def inverse_consistency_error(
    forward: Transform,
    inverse: Transform,
    grid: Grid,
    *,
    mask: Any = None,
    dtype: Any = jnp.float32,
) -> InverseConsistencyError:
    """Mean and maximum of ``|forward(inverse(x)) - x|`` (mm) over the voxel centres ``x`` of ``grid``.

    Voxels whose ``inverse(x)`` lies outside ``grid`` are left out and counted (see the module docstring); when
    every voxel is left out, ``mean`` and ``max`` are NaN.

    Args:
      forward: a transform (world mm -> world mm), e.g. the deformable part of a registration.
      inverse: its computed inverse, same dimension.
      grid: evaluation points (static), e.g. the fixed grid.
      mask: optional ``grid.shape`` array; voxels with ``mask > 0`` are evaluated (all when ``None``).
      dtype: floating dtype of the computation.

    Returns:
      :class:`InverseConsistencyError` (Python floats, mm).

    Raises:
      TypeError: a transform is not a jaxreg transform.
      ValueError: dimension mismatch, a mask of another shape or an empty mask.
    """
    for name, t in (("forward", forward), ("inverse", inverse)):
        if not isinstance(t, Transform):
            raise TypeError(f"{name}: expected a jaxreg Transform, got {type(t).__name__}")
        if t.ndim != grid.ndim:
            raise ValueError(f"{name}: a {t.ndim}-D transform cannot be evaluated on a {grid.ndim}-D grid")
    if mask is None:
        sel = np.ones(grid.shape, bool)
    else:
        m = np.asarray(mask)
        if m.shape != tuple(grid.shape):
            raise ValueError(f"mask: expected shape {tuple(grid.shape)}, got {m.shape}")
        sel = m > 0
        if not sel.any():
            raise ValueError("mask: empty (no voxel > 0)")
    err, inside = _round_trip_error(forward, inverse, grid=grid, dtype=jnp.dtype(dtype))
    keep = sel & np.asarray(inside)
    e = np.asarray(err, np.float64)[keep]
    if not e.size:
        return InverseConsistencyError(math.nan, math.nan, 0, int(sel.sum()))
    return InverseConsistencyError(float(e.mean()), float(e.max()), int(e.size), int(sel.sum() - e.size))


@functools.partial(jit, static_argnames=("grid", "dtype"))
def _round_trip_error(
    forward: Transform, inverse: Transform, *, grid: Grid, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """``|forward(inverse(x)) - x|`` at the voxel centres (mm) and whether ``inverse(x)`` is inside ``grid``."""
    x = grid.world_coords(dtype)
    y = inverse.sample_grid(grid, dtype)
    idx = grid.world_to_index(y)
    hi = jnp.asarray(grid.shape, idx.dtype) - 0.5
    inside = jnp.all((idx >= -0.5) & (idx <= hi), axis=-1)
    return jnp.linalg.norm(forward(y) - x, axis=-1), inside
