"""The transform abstraction.

A transform ``T`` maps world points (mm) to world points (mm). In registration ``T`` maps points of the *fixed*
space into the *moving* space, so that warping pulls: ``warped(x) = moving(T(x))`` (see :func:`jaxreg.warp`).

Every transform is a registered pytree. Its trainable arrays are leaves (so ``jax.grad`` and optax act on it
directly); grids, step counts and orders are static metadata. Geometric anchors that are not meant to be
optimised (rotation centres, normalisation scales) are leaves too, so a batch of transforms can be vmapped, but
transforms pass them through ``lax.stop_gradient``: their gradient is zero.

Subclasses implement :meth:`Transform.__call__` for arbitrary points and may override
:meth:`Transform.sample_grid` with a faster evaluation on a whole grid.

The transform protocol. Code outside ``jaxreg.transforms`` (the optimisation engine, regularised objectives,
file writers, plots) asks a transform what it is through these members instead of switching on its class, so
a new transform is one module here plus its file-format entry in :mod:`jaxreg.io`:

* :attr:`Transform.is_linear`: whether ``T(x) = A x + b`` exactly;
* :meth:`Transform.on_grid`: the transform re-expressed for an optimisation level on a grid (dense fields are
  resampled, world-defined transforms are returned unchanged);
* :meth:`Transform.regularized_field`: the dense field (mm) that field regularisers see, and its grid;
* :meth:`Transform.linear_part`: the transform as a :class:`LinearTransform` when it is linear, else ``None``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxreg.core.grid import Grid
from jaxreg.core.pytree import register_fields

__all__ = ["Transform", "LinearTransform", "pytree_dataclass"]


def pytree_dataclass(cls: type | None = None, *, static: tuple[str, ...] = ()):
    """Frozen dataclass registered as a pytree; fields named in ``static`` are metadata, the rest leaves.

    Registered by :func:`jaxreg.core.pytree.register_fields` (attribute key paths, flatten functions of the
    class's own), so every class has its own node type: two transform classes with the same number of leaves
    never share a treedef (``jax.tree_util.register_dataclass`` treedefs of distinct classes compared equal with
    jax 0.10, letting a jitted function shared by both return a trace built for the other class).
    """

    def wrap(c: type) -> type:
        c = dataclasses.dataclass(frozen=True)(c)
        return register_fields(c, [f.name for f in dataclasses.fields(c) if f.name not in static])

    return wrap if cls is None else wrap(cls)


class Transform(abc.ABC):
    """Base of all spatial transforms (world mm -> world mm, fixed space -> moving space).

    Attributes:
      is_linear: class-level flag, ``True`` when every instance is ``x -> A x + b`` (then :meth:`linear_part`
        returns a :class:`LinearTransform`). ``False`` here, ``True`` on :class:`LinearTransform`; a
        :class:`~jaxreg.transforms.compose.Composite` overrides it with a property that is ``True`` when all its
        members are linear (so read it on instances, not on the class).
    """

    is_linear: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""

    @abc.abstractmethod
    def __call__(self, points: jax.Array) -> jax.Array:
        """Map world points ``(..., ndim)`` (mm) to world points ``(..., ndim)`` (mm)."""

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        """``T(x)`` for the centre ``x`` of every voxel of ``grid``: world mm, shape ``(*grid.shape, ndim)``."""
        _check_grid(self, grid)
        return self(grid.world_coords(dtype))

    def sample_displacement(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        """``T(x) - x`` on ``grid`` in world mm, shape ``(*grid.shape, ndim)``."""
        return self.sample_grid(grid, dtype) - grid.world_coords(dtype)

    # -- the protocol ---------------------------------------------------------------------------------------------
    def on_grid(self, grid: Grid) -> Transform:
        """The transform re-expressed for an optimisation level on ``grid``.

        Transforms defined in world mm (linear, polynomial, B-spline: the default) are returned unchanged;
        dense fields are resampled onto ``grid`` (see
        :meth:`~jaxreg.transforms.dense.DisplacementField.on_grid`); composites map this over their members.
        Pure: ``self`` is never modified.

        Args:
          grid: the level's grid (static), of this transform's dimension.

        Returns:
          A transform of the same class whose trainable leaves live on ``grid`` where that applies.
        """
        _check_grid(self, grid)
        return self

    def regularized_field(self, grid: Grid) -> tuple[jax.Array | None, Grid]:
        """The dense field (world mm) that field regularisers see, and the grid it is sampled on.

        The default, for non-linear transforms without a field of their own (B-spline, polynomial, ...), is the
        displacement ``T(x) - x`` sampled on ``grid``. Dense fields return their own leaf on their own grid
        (velocity for a velocity field, displacement for a displacement field), linear transforms ``None``.

        Args:
          grid: the grid to sample on when the transform has no grid of its own (usually the fixed level grid).

        Returns:
          ``(field, field_grid)``: ``field`` of shape ``(*field_grid.shape, ndim)`` in mm, or ``(None, grid)``.
        """
        return self.sample_displacement(grid), grid

    def linear_part(self) -> LinearTransform | None:
        """This transform as a :class:`LinearTransform` when :attr:`is_linear`, else ``None``."""
        return None


class LinearTransform(Transform):
    """A transform ``x -> A x + b`` with an exact homogeneous matrix (``(ndim+1, ndim+1)``)."""

    is_linear: ClassVar[bool] = True

    def regularized_field(self, grid: Grid) -> tuple[jax.Array | None, Grid]:
        """``(None, grid)``: a linear transform has no field to regularise."""
        _check_grid(self, grid)
        return None, grid

    def linear_part(self) -> LinearTransform:
        """``self``."""
        return self

    @abc.abstractmethod
    def homogeneous(self) -> jax.Array:
        """The ``(ndim+1, ndim+1)`` homogeneous world-to-world matrix ``[[A, b], [0, 1]]``."""

    def __call__(self, points: jax.Array) -> jax.Array:
        points = jnp.asarray(points)
        _check_points(points, self.ndim)
        h = self.homogeneous()
        dt = jnp.result_type(points.dtype, jnp.float32) if not jnp.issubdtype(points.dtype, jnp.floating) else points.dtype
        h = h.astype(dt)
        return points.astype(dt) @ h[: self.ndim, : self.ndim].T + h[: self.ndim, self.ndim]

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        # Fold the grid affine into the transform: index -> world -> T, computed separably.
        _check_grid(self, grid)
        n = self.ndim
        m = self.homogeneous().astype(dtype) @ jnp.asarray(grid.affine, dtype=dtype)
        out = jnp.broadcast_to(m[:n, n], (*grid.shape, n))
        for ax, s in enumerate(grid.shape):
            col = jnp.arange(s, dtype=dtype)[:, None] * m[:n, ax][None, :]
            shape = [1] * n + [n]
            shape[ax] = s
            out = out + col.reshape(shape)
        return out


def _check_points(points: jax.Array, ndim: int) -> None:
    if points.ndim < 1 or points.shape[-1] != ndim:
        raise ValueError(f"points: expected shape (..., {ndim}) world coordinates in mm, got {tuple(points.shape)}")


def _check_grid(t: Transform, grid: Grid) -> None:
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if grid.ndim != t.ndim:
        raise ValueError(f"grid: expected a {t.ndim}-D grid for a {t.ndim}-D {type(t).__name__}, got {grid.ndim}-D")
