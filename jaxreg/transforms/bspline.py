"""Cubic B-spline free-form deformation (FFD; Rueckert et al., IEEE TMI 1999).

``T(x) = x + sum_k c_k B((x - p_k) / h)`` where ``p_k`` are control points on a regular control grid with
spacing ``h`` (mm), ``c_k`` their coefficients (displacements in world mm) and ``B`` the tensor product of
cubic B-splines. Coefficients are *not* interpolated values: the deformation at a control point is a weighted
average of its neighbours' coefficients (1/6, 4/6, 1/6 per axis).

On a grid whose axes are aligned with the control grid (the usual case: the control grid is built from the
image grid by :func:`bspline_control_grid`), :meth:`BSplineTransform.sample_grid` evaluates the tensor product
*separably*: one small dense weight matrix per axis, contracted axis by axis, so the cost is a few matrix
products and the gradient is their transpose (no gather, no scatter). At arbitrary points it falls back to
cubic B-spline sampling of the coefficients.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.core.sampling import map_coordinates
from jaxreg.transforms.base import Transform, _check_grid, _check_points, pytree_dataclass

__all__ = ["BSplineTransform", "bspline_control_grid", "cubic_bspline", "bspline_weight_matrix", "refine_bspline"]


def cubic_bspline(t: np.ndarray | jax.Array) -> Any:
    """The centred cubic B-spline ``B(t)``, support ``(-2, 2)``, ``B(0) = 2/3``, ``B(+-1) = 1/6``."""
    xp = jnp if isinstance(t, jax.Array) else np
    a = xp.abs(t)
    return xp.where(a < 1, (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0, xp.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0))


def bspline_control_grid(grid: Grid, spacing: float | Sequence[float]) -> Grid:
    """A control grid for an FFD over ``grid`` with control-point spacing ``spacing`` (mm).

    The control grid has ``grid``'s direction, the requested spacing exactly, and covers the image's voxel
    centres with one extra control point beyond each end (the support of the cubic B-spline), as NiftyReg does:
    ``n_ctrl = ceil((n - 1) * h_img / h) + 3`` per axis, first control point at ``-h`` from the first voxel.

    Args:
      grid: the image (fixed) grid.
      spacing: control-point spacing in mm, scalar or per axis.

    Returns:
      The control-point grid (static).
    """
    n = grid.ndim
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n,))
    if np.any(sp <= 0):
        raise ValueError(f"spacing: expected positive control-point spacing in mm, got {sp.tolist()}")
    length = (np.asarray(grid.shape) - 1) * grid.spacing
    counts = np.ceil(length / sp - 1e-9).astype(int) + 3
    a = np.eye(n + 1)
    a[:n, :n] = grid.direction * sp[None, :]
    a[:n, n] = grid.origin - grid.direction @ sp
    return Grid(tuple(int(c) for c in counts), a)


@functools.lru_cache(maxsize=64)
def _weights_cached(positions: tuple[float, ...], count: int) -> np.ndarray:
    t = np.asarray(positions)[:, None] - np.arange(count)[None, :]
    return cubic_bspline(t).astype(np.float64)


def bspline_weight_matrix(positions: np.ndarray, count: int) -> np.ndarray:
    """``W[i, j] = B(positions[i] - j)``: cubic B-spline weights of control points ``0..count-1``.

    Args:
      positions: ``(m,)`` continuous control-grid indices of the evaluation points along one axis.
      count: number of control points along that axis.

    Returns:
      ``(m, count)`` float64 weights; each row sums to 1 where the support is complete.
    """
    return _weights_cached(tuple(float(p) for p in np.asarray(positions).ravel()), int(count))


@pytree_dataclass(static=("control_grid",))
class BSplineTransform(Transform):
    """Cubic B-spline FFD with coefficients on ``control_grid``.

    Attributes:
      coefficients: ``(*control_grid.shape, ndim)`` world mm (RAS components).
      control_grid: control-point lattice (static; see :func:`bspline_control_grid`).
    """

    coefficients: jax.Array
    control_grid: Grid

    def __post_init__(self) -> None:
        if not isinstance(self.control_grid, Grid):
            raise TypeError(f"control_grid: expected a jaxreg Grid, got {type(self.control_grid).__name__}")
        shp = tuple(self.coefficients.shape)
        want = (*self.control_grid.shape, self.control_grid.ndim)
        if shp and shp[-len(want):] != want:
            raise ValueError(f"coefficients: expected shape {want}, got {shp}")

    @classmethod
    def identity(cls, grid: Grid, spacing: float | Sequence[float], dtype: Any = jnp.float32) -> "BSplineTransform":
        """Zero FFD over ``grid`` with control-point ``spacing`` in mm."""
        cg = bspline_control_grid(grid, spacing)
        return cls(jnp.zeros((*cg.shape, cg.ndim), dtype), cg)

    @property
    def ndim(self) -> int:
        return self.control_grid.ndim

    def __call__(self, points: jax.Array) -> jax.Array:
        points = jnp.asarray(points)
        _check_points(points, self.ndim)
        idx = self.control_grid.world_to_index(points)
        c = self.coefficients.astype(idx.dtype)
        u = map_coordinates(c, idx, order=3, mode="grid-constant", cval=0.0, prefilter=False)
        return points.astype(idx.dtype) + u

    def sample_displacement(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        _check_grid(self, grid)
        if not grid.is_axis_aligned_with(self.control_grid):
            return self(grid.world_coords(dtype)) - grid.world_coords(dtype)
        # index i of `grid` along axis d sits at control index m[d, d] * i + b[d]
        m = self.control_grid.inverse_affine @ grid.affine
        out = self.coefficients.astype(dtype)
        for d, s in enumerate(grid.shape):
            pos = m[d, d] * np.arange(s) + m[d, grid.ndim]
            w = jnp.asarray(bspline_weight_matrix(pos, self.control_grid.shape[d]), dtype=dtype)
            # contract control axis d (currently at position d) with w, putting the image axis in its place
            out = jnp.moveaxis(jnp.tensordot(w, out, axes=([1], [d])), 0, d)
        return out

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        return grid.world_coords(dtype) + self.sample_displacement(grid, dtype)


def _refine_matrix(n_old: int, n_new: int) -> np.ndarray:
    """Two-scale relation of the cubic B-spline: ``(n_new, n_old)`` map of coefficients to half spacing.

    New control point ``2i - 1`` sits on old point ``i`` and gets ``(c[i-1] + 6 c[i] + c[i+1]) / 8``; new point
    ``2i`` sits half way between old ``i`` and ``i + 1`` and gets ``(c[i] + c[i+1]) / 2`` (old coefficients
    beyond the grid are zero, as in the evaluation).
    """
    r = np.zeros((n_new, n_old))
    for j in range(n_new):
        if j % 2 == 1:
            i = (j + 1) // 2
            for k, w in ((i - 1, 1 / 8), (i, 6 / 8), (i + 1, 1 / 8)):
                if 0 <= k < n_old:
                    r[j, k] += w
        else:
            i = j // 2
            for k in (i, i + 1):
                if 0 <= k < n_old:
                    r[j, k] += 0.5
    return r


def refine_bspline(transform: BSplineTransform) -> BSplineTransform:
    """The same deformation on a control grid with half the spacing (exact dyadic subdivision).

    The refined control grid has half the spacing, the same direction, its first point half a coarse spacing
    after the old first point and ``2 n - 3`` points per axis, so it covers the same domain; the coefficients
    follow the two-scale relation of cubic B-splines, so the displacement is
    unchanged wherever the coarse grid's support is complete (every voxel of the domain). Used between levels
    of multi-level FFD registration (NiftyReg's ``-ln``).

    Args:
      transform: FFD whose control grid was made by :func:`bspline_control_grid`.

    Returns:
      The refined :class:`BSplineTransform`.
    """
    cg = transform.control_grid
    n = cg.ndim
    a = cg.affine
    a2 = a.copy()
    a2[:n, :n] = a[:n, :n] / 2.0
    a2[:n, n] = a[:n, n] + a[:n, :n] @ np.full(n, 0.5)  # first new point: half a coarse spacing after the old first
    shape = tuple(2 * s - 3 for s in cg.shape)
    new_grid = Grid(shape, a2)
    c = transform.coefficients
    for d in range(n):
        r = jnp.asarray(_refine_matrix(cg.shape[d], shape[d]), c.dtype)
        c = jnp.moveaxis(jnp.tensordot(r, c, axes=([1], [d])), 0, d)
    return BSplineTransform(c, new_grid)
