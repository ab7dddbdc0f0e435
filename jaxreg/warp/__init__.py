"""Resampling images, label maps and points through transforms.

Pull ("backward") semantics throughout: a transform ``T`` maps *fixed*-space world points to *moving*-space
world points, and ``warp(moving, T, fixed_grid)`` returns, at each voxel centre ``x`` of ``fixed_grid``, the
moving image interpolated at ``T(x)``. All geometry goes through world coordinates (mm), so the fixed and moving
images may have different shapes, spacings, origins and orientations.

Points move the same way: :func:`transform_points` maps fixed-space points to where they are in the moving
image. To carry moving-space landmarks into the fixed space, use ``transform_points(invert(T), points)``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Grid, Image
from jaxreg.core.sampling import map_coordinates
from jaxreg.transforms.base import Transform
from jaxreg.transforms.linear import Translation

__all__ = ["warp", "warp_labels", "warp_onehot", "resample", "transform_points", "sample_points"]


_SNAP_TOL = 1e-4  # voxels


def _moving_index(moving_grid: Grid, points: jax.Array) -> jax.Array:
    """Continuous moving-grid indices of world points, snapped to integers within ``_SNAP_TOL`` voxels.

    World round trips through oblique affines leave float32 rounding of ~1e-6 voxels; without snapping, a voxel
    centre on the image border would land a hair outside and read ``cval``, and identity warps would not be
    exact. The snap is a straight-through correction (``stop_gradient``), so gradients are untouched.
    """
    idx = moving_grid.world_to_index(points)
    r = jnp.round(idx)
    return idx + jax.lax.stop_gradient(jnp.where(jnp.abs(r - idx) < _SNAP_TOL, r - idx, 0.0))


def _check(moving: Any, transform: Any, grid: Any) -> None:
    if not isinstance(moving, Image):
        raise TypeError(f"moving: expected a jaxreg Image (array on a Grid), got {type(moving).__name__}")
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg transform, got {type(transform).__name__}")
    if not isinstance(grid, Grid):
        raise TypeError(f"fixed_grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if not (moving.grid.ndim == transform.ndim == grid.ndim):
        raise ValueError(
            f"moving/transform/fixed_grid: dimensions differ ({moving.grid.ndim}-D image, {transform.ndim}-D "
            f"transform, {grid.ndim}-D grid)"
        )


def warp(
    moving: Image,
    transform: Transform,
    fixed_grid: Grid,
    *,
    order: int = 1,
    mode: str = "constant",
    cval: float = 0.0,
) -> Image:
    """Resample ``moving`` on ``fixed_grid`` through ``transform`` (pull): ``out(x) = moving(T(x))``.

    Args:
      moving: image ``(*moving.grid.shape)`` or ``(*moving.grid.shape, C)``.
      transform: maps fixed world points (mm) to moving world points (mm).
      fixed_grid: output grid.
      order: interpolation order: 0 nearest, 1 linear, 3 cubic B-spline (with prefilter).
      mode: how ``moving`` extends beyond its grid: ``"constant"`` (``cval``), ``"nearest"`` (edge value),
        ``"reflect"``, ... as in :func:`jaxreg.core.sampling.map_coordinates`.
      cval: value outside the moving image for ``mode="constant"``.

    Returns:
      Image on ``fixed_grid`` with ``moving``'s channels; floating dtype (integers are cast to float32).
    """
    _check(moving, transform, fixed_grid)
    return _warp(moving, transform, fixed_grid, int(order), str(mode), cval)


@functools.partial(jit, static_argnums=(2, 3, 4))
def _warp(moving: Image, transform: Transform, fixed_grid: Grid, order: int, mode: str, cval: Any) -> Image:
    """:func:`warp`, compiled whole (one program per grid, order, mode and transform structure, instead of one per
    operation when called eagerly)."""
    data = moving.data
    dtype = data.dtype if jnp.issubdtype(data.dtype, jnp.floating) else jnp.float32
    idx = _moving_index(moving.grid, transform.sample_grid(fixed_grid, dtype))
    out = map_coordinates(data.astype(dtype), idx, order=order, mode=mode, cval=cval)
    return Image(out, fixed_grid)


def resample(image: Image, grid: Grid, *, order: int = 1, mode: str = "constant", cval: float = 0.0) -> Image:
    """Resample ``image`` onto ``grid`` through world coordinates (the identity transform)."""
    return warp(image, Translation.identity(image.grid.ndim), grid, order=order, mode=mode, cval=cval)


def warp_labels(labels: Image, transform: Transform, fixed_grid: Grid, *, background: int = 0) -> Image:
    """Warp an integer label map with nearest-neighbour interpolation (pull).

    Args:
      labels: integer (or float holding integers) image ``(*moving.grid.shape)``.
      transform: fixed -> moving world transform.
      fixed_grid: output grid.
      background: label given to points outside the moving grid.

    Returns:
      Label image on ``fixed_grid`` with ``labels``' dtype.
    """
    _check(labels, transform, fixed_grid)
    return _warp_labels(labels, transform, fixed_grid, int(background))


@functools.partial(jit, static_argnums=(2, 3))
def _warp_labels(labels: Image, transform: Transform, fixed_grid: Grid, background: int) -> Image:
    """:func:`warp_labels`, compiled whole."""
    idx = _moving_index(labels.grid, transform.sample_grid(fixed_grid, jnp.float32))
    # gather the integer labels directly: interpolating them as floats would lose labels above 2^24
    src = labels.data
    n = labels.grid.ndim
    shape = jnp.asarray(labels.grid.shape)
    ii = jnp.floor(idx + 0.5).astype(jnp.int32)
    inside = jnp.all((ii >= 0) & (ii < shape), axis=-1)
    ii = jnp.clip(ii, 0, shape - 1)
    out = src[tuple(ii[..., d] for d in range(n))]
    out = jnp.where(inside.reshape(inside.shape + (1,) * (out.ndim - inside.ndim)), out, jnp.asarray(background, src.dtype))
    return Image(out, fixed_grid)


def warp_onehot(
    labels: Image, transform: Transform, fixed_grid: Grid, *, label_values: Sequence[int], dtype: Any = jnp.float32
) -> Image:
    """Differentiable label warp: linear interpolation of the one-hot encoding (soft labels).

    Args:
      labels: integer label image on its grid.
      transform: fixed -> moving world transform.
      fixed_grid: output grid.
      label_values: the ``L`` label values to encode (static); other values encode as all-zero.
      dtype: floating dtype of the output.

    Returns:
      Image ``(*fixed_grid.shape, L)``: interpolated membership of each label in [0, 1]; zero outside the
      moving grid. Differentiable with respect to the transform.
    """
    _check(labels, transform, fixed_grid)
    values = jnp.asarray(tuple(int(v) for v in label_values))
    if values.size == 0:
        raise ValueError("label_values: expected at least one label value")
    onehot = (labels.data[..., None] == values.astype(labels.data.dtype)).astype(dtype)
    idx = _moving_index(labels.grid, transform.sample_grid(fixed_grid, dtype))
    return Image(map_coordinates(onehot, idx, order=1, mode="constant", cval=0.0), fixed_grid)


def transform_points(transform: Transform, points: jax.Array) -> jax.Array:
    """Map world points ``(..., ndim)`` (mm) through ``transform``: fixed space -> moving space.

    This is the direction of the image warp: a landmark at ``p`` in the fixed image corresponds to
    ``transform_points(T, p)`` in the moving image. Moving-space points go to the fixed space through
    ``invert(T)``.
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg transform, got {type(transform).__name__}")
    return transform(points)


def sample_points(image: Image, points: jax.Array, *, order: int = 1, mode: str = "constant", cval: float = 0.0) -> jax.Array:
    """Interpolate ``image`` at world points ``(..., ndim)`` (mm); returns ``(...)`` or ``(..., C)``."""
    if not isinstance(image, Image):
        raise TypeError(f"image: expected a jaxreg Image, got {type(image).__name__}")
    data = image.data
    dtype = data.dtype if jnp.issubdtype(data.dtype, jnp.floating) else jnp.float32
    idx = _moving_index(image.grid, jnp.asarray(points, dtype))
    return map_coordinates(data.astype(dtype), idx, order=order, mode=mode, cval=cval)
