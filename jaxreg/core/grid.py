"""Sampling grids and images in world coordinates.

A :class:`Grid` is the geometry of a regular image lattice: a static shape and a 4x4 (3D) or 3x3 (2D)
homogeneous *voxel-to-world* affine in the NIfTI convention (RAS+ millimetres, integer index = voxel centre).
World coordinates are what transforms act on, so two images on different grids, with different spacings and
orientations, are related through their affines and never through their array indices.

Grids are *static* values: hashable, compared by value, and stored as pytree metadata. Changing a grid
therefore recompiles a jitted function, just like changing an array shape does; the geometry of a registration
problem is fixed while its parameters are optimised. Everything here is NumPy/JAX only (no nibabel): the I/O
layer builds grids from NIfTI headers.

An :class:`Image` is an array on a grid, ``data`` of shape ``(*grid.shape)`` or ``(*grid.shape, C)`` (channels
last), registered as a pytree whose only leaf is ``data``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Grid", "Image", "axcodes_from_affine"]

_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _as_affine(affine: Any, ndim: int) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (ndim + 1, ndim + 1):
        raise ValueError(f"affine: expected shape {(ndim + 1, ndim + 1)} for a {ndim}-D grid, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("affine: contains NaN or Inf")
    if not np.allclose(a[ndim], np.eye(ndim + 1)[ndim]):
        raise ValueError(f"affine: last row must be {np.eye(ndim + 1)[ndim].tolist()}, got {a[ndim].tolist()}")
    lin = a[:ndim, :ndim]
    if abs(np.linalg.det(lin)) < 1e-12 * max(1.0, float(np.abs(lin).max()) ** ndim):
        raise ValueError(f"affine: the {ndim}x{ndim} linear part is singular (det={np.linalg.det(lin):.3g})")
    return a


def axcodes_from_affine(affine: np.ndarray) -> tuple[str, ...]:
    """Orientation codes (e.g. ``('R', 'A', 'S')``) of a voxel-to-world affine.

    Each array axis is labelled by the world axis it is closest to and the direction in which indices grow
    (RAS+ world: ``R``/``L`` for x, ``A``/``P`` for y, ``S``/``I`` for z), as ``nibabel.aff2axcodes`` does.

    Args:
      affine: ``(ndim + 1, ndim + 1)`` homogeneous voxel-to-world matrix, ndim in {2, 3}.

    Returns:
      One letter per array axis.
    """
    a = np.asarray(affine, dtype=np.float64)
    n = a.shape[0] - 1
    lin = a[:n, :n] / np.linalg.norm(a[:n, :n], axis=0, keepdims=True)
    codes: list[str] = []
    used: set[int] = set()
    # Greedy assignment by the largest cosines first, so that oblique axes still get distinct labels.
    order = np.dstack(np.unravel_index(np.argsort(-np.abs(lin), axis=None), lin.shape))[0]
    assign: dict[int, int] = {}
    for world_ax, arr_ax in order:
        if arr_ax in assign or world_ax in used:
            continue
        assign[int(arr_ax)] = int(world_ax)
        used.add(int(world_ax))
    for arr_ax in range(n):
        w = assign[arr_ax]
        codes.append(_AXIS_LABELS[w][int(lin[w, arr_ax] > 0)])
    return tuple(codes)


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A regular lattice in world space: ``shape`` plus a voxel-to-world ``affine``.

    ``world = affine @ [index, 1]`` with the NIfTI conventions: RAS+ world axes in mm and integer indices at
    voxel centres. Components of indices and of world points are in array-axis order, last axis of an array.

    Attributes:
      shape: spatial shape, ``ndim`` positive ints (ndim in {1, 2, 3}).
      affine_tuple: the ``(ndim+1, ndim+1)`` affine as nested tuples (hashable); use :attr:`affine`.
    """

    shape: tuple[int, ...]
    affine_tuple: tuple[tuple[float, ...], ...]

    def __init__(self, shape: Sequence[int], affine: Any = None):
        shp = tuple(int(s) for s in shape)
        if not 1 <= len(shp) <= 3 or any(s < 1 for s in shp):
            raise ValueError(f"shape: expected 1 to 3 positive sizes, got {tuple(shape)}")
        a = np.eye(len(shp) + 1) if affine is None else _as_affine(affine, len(shp))
        object.__setattr__(self, "shape", shp)
        object.__setattr__(self, "affine_tuple", tuple(tuple(float(v) for v in row) for row in a))

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_spacing(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float] | float = 1.0,
        *,
        origin: Sequence[float] | None = None,
        direction: Any = None,
    ) -> "Grid":
        """Grid from spacing (mm), origin (world mm of voxel 0) and a direction matrix (columns = axes)."""
        n = len(tuple(shape))
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n,))
        if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
            raise ValueError(f"spacing: expected positive finite values, got {sp.tolist()}")
        d = np.eye(n) if direction is None else np.asarray(direction, dtype=np.float64)
        if d.shape != (n, n):
            raise ValueError(f"direction: expected shape {(n, n)}, got {d.shape}")
        a = np.eye(n + 1)
        a[:n, :n] = d * sp[None, :]
        a[:n, n] = 0.0 if origin is None else np.asarray(origin, dtype=np.float64)
        return cls(shape, a)

    @classmethod
    def centered(cls, shape: Sequence[int], spacing: Sequence[float] | float = 1.0) -> "Grid":
        """Axis-aligned grid with the given spacing whose centre is the world origin."""
        shp = tuple(int(s) for s in shape)
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (len(shp),))
        return cls.from_spacing(shp, sp, origin=-(np.asarray(shp) - 1) / 2.0 * sp)

    @classmethod
    def from_nifti_header(cls, header: Any) -> "Grid":
        """Grid of a NIfTI header (duck-typed: needs ``get_data_shape()`` and ``get_best_affine()``).

        The spatial shape is the first three (or two, for a 2-D image stored with z = 1) dimensions. A 2-D
        grid keeps the in-plane 2x2 block of the affine and its x/y offsets.
        """
        shp = tuple(int(s) for s in header.get_data_shape())
        aff = np.asarray(header.get_best_affine(), dtype=np.float64)
        spatial = shp[:3]
        if len(spatial) == 3 and spatial[2] == 1 and (len(shp) == 3 or all(s == 1 for s in shp[3:])):
            a2 = np.eye(3)
            a2[:2, :2] = aff[:2, :2]
            a2[:2, 2] = aff[:2, 3]
            return cls(spatial[:2], a2)
        if len(spatial) == 2:
            a2 = np.eye(3)
            a2[:2, :2] = aff[:2, :2]
            a2[:2, 2] = aff[:2, 3]
            return cls(spatial, a2)
        return cls(spatial, aff)

    # -- value semantics --------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return self.shape == other.shape and np.allclose(self.affine, other.affine, rtol=0, atol=1e-6)

    def __hash__(self) -> int:
        return hash((self.shape, tuple(round(v, 5) for row in self.affine_tuple for v in row)))

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{o:.4g}" for o in self.origin)
        return f"Grid(shape={self.shape}, spacing=({sp}), origin=({org}), axcodes={''.join(self.axcodes)})"

    # -- geometry ---------------------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.shape))

    @property
    def affine(self) -> np.ndarray:
        """``(ndim+1, ndim+1)`` float64 voxel-to-world matrix (a fresh NumPy copy)."""
        return np.array(self.affine_tuple, dtype=np.float64)

    @property
    def inverse_affine(self) -> np.ndarray:
        """``(ndim+1, ndim+1)`` world-to-voxel matrix."""
        return np.linalg.inv(self.affine)

    @property
    def spacing(self) -> np.ndarray:
        """``(ndim,)`` voxel size in mm along each array axis (norms of the affine's columns)."""
        return np.linalg.norm(self.affine[: self.ndim, : self.ndim], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """``(ndim,)`` world position (mm) of the centre of voxel ``(0, ..., 0)``."""
        return self.affine[: self.ndim, self.ndim]

    @property
    def direction(self) -> np.ndarray:
        """``(ndim, ndim)`` direction cosines: column ``i`` is the world unit vector of array axis ``i``."""
        return self.affine[: self.ndim, : self.ndim] / self.spacing[None, :]

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Orientation codes, e.g. ``('R', 'A', 'S')`` for a RAS+ array (see :func:`axcodes_from_affine`)."""
        return axcodes_from_affine(self.affine)

    @property
    def center(self) -> np.ndarray:
        """``(ndim,)`` world position (mm) of the grid centre, ``index = (shape - 1) / 2``."""
        return self.affine[: self.ndim, : self.ndim] @ ((np.asarray(self.shape) - 1) / 2.0) + self.origin

    @property
    def extent(self) -> np.ndarray:
        """``(ndim,)`` physical size in mm along each array axis (``shape * spacing``, voxel edges to edges)."""
        return np.asarray(self.shape) * self.spacing

    def is_axis_aligned_with(self, other: "Grid", atol: float = 1e-6) -> bool:
        """Whether index axes of ``self`` map to index axes of ``other`` one to one with the same order.

        True when ``other``'s world-to-index matrix times ``self``'s linear part is diagonal: the index map
        between the grids is then separable, axis by axis.
        """
        if other.ndim != self.ndim:
            return False
        m = other.inverse_affine[: self.ndim, : self.ndim] @ self.affine[: self.ndim, : self.ndim]
        return bool(np.allclose(m - np.diag(np.diag(m)), 0.0, atol=atol))

    # -- coordinate conversions -------------------------------------------------------------------------------
    def index_to_world(self, index: jax.Array) -> jax.Array:
        """Map continuous voxel indices ``(..., ndim)`` to world points ``(..., ndim)`` in mm."""
        index = jnp.asarray(index)
        _check_last(index, self.ndim, "index")
        dt = _float_dtype(index)
        a = jnp.asarray(self.affine, dtype=dt)
        return index.astype(dt) @ a[: self.ndim, : self.ndim].T + a[: self.ndim, self.ndim]

    def world_to_index(self, points: jax.Array) -> jax.Array:
        """Map world points ``(..., ndim)`` in mm to continuous voxel indices ``(..., ndim)``."""
        points = jnp.asarray(points)
        _check_last(points, self.ndim, "points")
        dt = _float_dtype(points)
        a = jnp.asarray(self.inverse_affine, dtype=dt)
        return points.astype(dt) @ a[: self.ndim, : self.ndim].T + a[: self.ndim, self.ndim]

    def index_coords(self, dtype: Any = jnp.float32) -> jax.Array:
        """All voxel indices, shape ``(*shape, ndim)``, components in array-axis order."""
        axes = [jnp.arange(s, dtype=dtype) for s in self.shape]
        return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)

    def world_coords(self, dtype: Any = jnp.float32) -> jax.Array:
        """World position (mm) of every voxel centre, shape ``(*shape, ndim)``.

        Computed separably (a sum of per-axis outer products), exact to float rounding.
        """
        a = self.affine
        n = self.ndim
        out = jnp.broadcast_to(jnp.asarray(a[:n, n], dtype=dtype), (*self.shape, n))
        for ax, s in enumerate(self.shape):
            col = jnp.arange(s, dtype=dtype)[:, None] * jnp.asarray(a[:n, ax], dtype=dtype)[None, :]
            shape = [1] * n + [n]
            shape[ax] = s
            out = out + col.reshape(shape)
        return out

    # -- derived grids ----------------------------------------------------------------------------------------
    def with_affine(self, affine: Any) -> "Grid":
        """Same shape, another affine."""
        return Grid(self.shape, affine)

    def resize(self, shape: Sequence[int]) -> "Grid":
        """Grid with another shape covering the same physical extent (voxel edge to voxel edge).

        The direction is kept, the spacing becomes ``spacing * old_shape / new_shape`` and the origin moves so
        that the outer voxel edges coincide: the convention of image pyramids in ITK and NiftyReg.
        """
        new = tuple(int(s) for s in shape)
        if len(new) != self.ndim or any(s < 1 for s in new):
            raise ValueError(f"shape: expected {self.ndim} positive sizes, got {tuple(shape)}")
        factor = np.asarray(self.shape, dtype=np.float64) / np.asarray(new, dtype=np.float64)
        a = self.affine
        n = self.ndim
        b = np.eye(n + 1)
        b[:n, :n] = a[:n, :n] * factor[None, :]
        # index j on the new grid sits at old index (j + 0.5) * factor - 0.5
        b[:n, n] = a[:n, :n] @ (0.5 * factor - 0.5) + a[:n, n]
        return Grid(new, b)

    def downsample(self, factor: int | Sequence[int] = 2) -> "Grid":
        """Coarser grid over the same extent: shape ``ceil(shape / factor)`` (see :meth:`resize`)."""
        f = np.broadcast_to(np.asarray(factor), (self.ndim,))
        if np.any(f < 1):
            raise ValueError(f"factor: expected integers >= 1, got {f.tolist()}")
        return self.resize(tuple(max(1, int(-(-s // int(k)))) for s, k in zip(self.shape, f)))

    def upsample(self, factor: int | Sequence[int] = 2) -> "Grid":
        """Finer grid over the same extent: shape ``shape * factor`` (see :meth:`resize`)."""
        f = np.broadcast_to(np.asarray(factor), (self.ndim,))
        if np.any(f < 1):
            raise ValueError(f"factor: expected integers >= 1, got {f.tolist()}")
        return self.resize(tuple(int(s) * int(k) for s, k in zip(self.shape, f)))

    def with_spacing(self, spacing: Sequence[float] | float) -> "Grid":
        """Grid over (at least) the same extent with the requested spacing in mm, same direction and centre."""
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (self.ndim,))
        if np.any(sp <= 0):
            raise ValueError(f"spacing: expected positive values, got {sp.tolist()}")
        shape = tuple(max(1, int(np.ceil(e / s - 1e-6))) for e, s in zip(self.extent, sp))
        n = self.ndim
        b = np.eye(n + 1)
        b[:n, :n] = self.direction * sp[None, :]
        b[:n, n] = self.center - b[:n, :n] @ ((np.asarray(shape) - 1) / 2.0)
        return Grid(shape, b)


def _check_last(x: jax.Array, ndim: int, name: str) -> None:
    if x.ndim < 1 or x.shape[-1] != ndim:
        raise ValueError(f"{name}: expected shape (..., {ndim}), got {tuple(x.shape)}")


def _float_dtype(x: jax.Array) -> Any:
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Image:
    """An array on a :class:`Grid`; a pytree whose only leaf is ``data``.

    Attributes:
      data: ``(*grid.shape)`` or ``(*grid.shape, C)`` (channels last); any dtype (integers for label maps).
      grid: the voxel-to-world geometry (static).
    """

    data: jax.Array
    grid: Grid

    def __post_init__(self) -> None:
        if not isinstance(self.grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(self.grid).__name__}")
        shp = tuple(getattr(self.data, "shape", ()))
        n = self.grid.ndim
        # Skip the check for placeholder leaves that jax transformations may pass through.
        if shp and (shp[:n] != self.grid.shape or len(shp) > n + 1):
            raise ValueError(f"data: expected shape {self.grid.shape} or {self.grid.shape + ('C',)}, got {shp}")

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return self.grid.ndim

    @property
    def has_channels(self) -> bool:
        """Whether ``data`` has a trailing channel axis."""
        return self.data.ndim == self.grid.ndim + 1

    def tree_flatten(self):
        return (self.data,), self.grid

    @classmethod
    def tree_unflatten(cls, grid, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "data", children[0])
        object.__setattr__(obj, "grid", grid)
        return obj
