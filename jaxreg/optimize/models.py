"""Transform models: what a registration stage optimises, and how it starts.

A *model* is a small frozen value that builds the initial transform of a stage on the fixed grid, and says
whether it continues the previous stage's transform (a rigid stage followed by an affine one refines the same
linear map; a B-spline stage at half the control spacing refines the previous B-spline) or is stacked on top
of it (a deformable stage after the linear one: the moving image is sampled at ``linear(field(x))``).

* :class:`Linear`: a rigid, similarity or affine transform about the fixed image's centre of mass; its start
  is chosen among candidates by :mod:`jaxreg.optimize.init` (``init`` of the stage).
* :class:`BSpline`: a cubic B-spline FFD with a control spacing in mm (zero coefficients).
* :class:`Field`: a dense displacement or stationary velocity field on the fixed grid (zero).

A new model is one class here with ``start`` and ``continue_from``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.transforms.base import Transform
from jaxreg.transforms.bspline import BSplineTransform, refine_bspline
from jaxreg.transforms.dense import DisplacementField, VelocityField
from jaxreg.transforms.linear import Affine, Rigid, Similarity, decompose_affine, rotation_vector

__all__ = ["BSpline", "Field", "Linear", "linear_as"]

_FAMILIES = ("rigid", "similarity", "affine")


def linear_as(transform: Transform, family: str) -> Transform:
    """The linear part of ``transform`` as a ``"rigid"``, ``"similarity"`` or ``"affine"`` transform.

    Rigid and similarity projections keep the rotation of the polar decomposition of the matrix, and the
    geometric-mean scale (similarity); the centre and the map of the centre are kept.
    """
    if family not in _FAMILIES:
        raise ValueError(f"family: expected one of {_FAMILIES}, got {family!r}")
    lin = transform.linear_part()
    if lin is None:
        raise ValueError(f"transform: expected a linear transform, got {type(transform).__name__}")
    start = Affine.from_transform(lin, center=getattr(lin, "center", None))
    if family == "affine":
        return start
    comp = decompose_affine(start.matrix, translation=start.translation)  # the matrix is the linear part
    rot = rotation_vector(comp.rotation)
    if family == "rigid":
        return Rigid(rot, start.translation, start.center)
    n = start.matrix.shape[0]
    return Similarity(
        rot, jnp.log(jnp.abs(jnp.prod(comp.scale)) ** (1.0 / n)), start.translation, start.center
    )


class Linear(NamedTuple):
    """A rigid, similarity or affine transform (``family``)."""

    family: str = "affine"

    def check(self) -> None:
        """Raise a ``ValueError`` for a bad configuration."""
        if self.family not in _FAMILIES:
            raise ValueError(f"model.family: expected one of {_FAMILIES}, got {self.family!r}")

    @property
    def is_linear(self) -> bool:
        """True: the optimised transform is linear (and candidate starts apply)."""
        return True

    def start(self, grid: Grid, initial: Transform | None) -> Transform:
        """The family's transform of the linear ``initial`` start (identity about the grid centre if ``None``)."""
        if initial is None:
            initial = Affine.identity(grid.ndim, center=np.asarray(grid.center, np.float32))
        return linear_as(initial, self.family)

    def continue_from(self, previous: Any, transform: Transform) -> Transform | None:
        """Continue a previous linear stage (converted to this family); ``None`` to stack instead."""
        if isinstance(previous, Linear):
            return linear_as(transform, self.family)
        return None


class BSpline(NamedTuple):
    """A cubic B-spline FFD with control points every ``spacing_mm`` mm (scalar or per axis)."""

    spacing_mm: Any = 20.0

    def check(self) -> None:
        """Raise a ``ValueError`` for a bad configuration."""
        sp = np.atleast_1d(np.asarray(self.spacing_mm, float))
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"model.spacing_mm: expected positive spacing(s) in mm, got {self.spacing_mm!r}")

    @property
    def is_linear(self) -> bool:
        """False."""
        return False

    def start(self, grid: Grid, initial: Transform | None) -> Transform:
        """Zero coefficients on a control grid covering ``grid`` (or ``initial`` when given)."""
        return BSplineTransform.identity(grid, self.spacing_mm) if initial is None else initial

    def continue_from(self, previous: Any, transform: Transform) -> Transform | None:
        """Refine a previous B-spline of twice this spacing (exactly, :func:`refine_bspline`); else stack."""
        if isinstance(previous, BSpline):
            old = np.broadcast_to(np.asarray(previous.spacing_mm, float), (transform.ndim,))
            new = np.broadcast_to(np.asarray(self.spacing_mm, float), (transform.ndim,))
            if np.allclose(old, new):
                return transform
            if np.allclose(old, 2 * new):
                return refine_bspline(transform)
            raise ValueError(
                f"model.spacing_mm: a B-spline stage after one of {old.tolist()} mm must use the same or half the "
                f"spacing, got {new.tolist()}"
            )
        return None


class Field(NamedTuple):
    """A dense ``"displacement"`` field or a stationary ``"velocity"`` field (``steps`` squarings)."""

    kind: str = "velocity"
    steps: int = 7

    def check(self) -> None:
        """Raise a ``ValueError`` for a bad configuration."""
        if self.kind not in ("displacement", "velocity"):
            raise ValueError(f"model.kind: expected 'displacement' or 'velocity', got {self.kind!r}")

    @property
    def is_linear(self) -> bool:
        """False."""
        return False

    def start(self, grid: Grid, initial: Transform | None) -> Transform:
        """A zero field on ``grid`` (or ``initial``, resampled onto each level by the engine)."""
        if initial is not None:
            return initial
        if self.kind == "velocity":
            return VelocityField.identity(grid, steps=int(self.steps))
        return DisplacementField.identity(grid)

    def continue_from(self, previous: Any, transform: Transform) -> Transform | None:
        """Continue a previous field of the same kind; else stack."""
        if isinstance(previous, Field) and previous.kind == self.kind:
            return transform
        return None


class Region(NamedTuple):
    """A rigid motion of one region on top of the earlier stages (:class:`~jaxreg.transforms.RegionRigid`).

    Attributes:
      weight_map: the region's weights in ``[0, 1]`` (an :class:`~jaxreg.core.grid.Image` in world coordinates):
        1 where the region moves rigidly, 0 where nothing moves, a smooth fall-off between.
      side: ``"moving"``: the map lies in the moving image's space and is pulled onto the fixed grid through the
        earlier stages' transform when the stage starts; ``"fixed"``: it lies in the fixed image's space.
      search_mm: ``(half_width, step)`` of the lattice of translations scored at the stage's first level before
        the gradient descent (the region's similarity has local minima a few mm apart); ``None``: no search.
      radius_mm: scale of the rotation parameter (mm of arc at this radius per radian).
    """

    weight_map: Any
    side: str = "moving"
    search_mm: Any = (6.0, 3.0)
    radius_mm: float = 50.0

    def check(self) -> None:
        """Raise a ``ValueError`` for a bad configuration."""
        from jaxreg.core.grid import Image

        if not isinstance(self.weight_map, Image):
            raise ValueError(f"model.weight_map: expected a jaxreg Image, got {type(self.weight_map).__name__}")
        if self.side not in ("fixed", "moving"):
            raise ValueError(f"model.side: expected 'fixed' or 'moving', got {self.side!r}")
        if self.search_mm is not None and not (
            len(self.search_mm) == 2 and self.search_mm[0] >= 0 and self.search_mm[1] > 0
        ):
            raise ValueError(f"model.search_mm: expected None or (half_width, step) in mm, got {self.search_mm!r}")
        if not (isinstance(self.radius_mm, (int, float)) and self.radius_mm > 0):
            raise ValueError(f"model.radius_mm: expected a positive number of mm, got {self.radius_mm!r}")

    @property
    def is_linear(self) -> bool:
        """False."""
        return False

    def start(self, grid: Grid, initial: Transform | None) -> Transform:
        """``initial``, or no motion of the region placed on ``grid`` through the identity."""
        return initial if initial is not None else self.start_after(grid, None)

    def start_after(self, grid: Grid, outer: Transform | None) -> Transform:
        """No motion, the region's map placed on the fixed ``grid`` (pulled through ``outer`` if moving-side)."""
        from jaxreg.transforms.region import RegionRigid
        from jaxreg.warp import resample, warp

        # edge values beyond the map's grid: a region at the edge of its image's field of view (the prostate of a
        # CT cut just below it) must not fall to 0 there, which would make the blend fold
        if self.side == "moving" and outer is not None:
            w = warp(self.weight_map, outer, grid, mode="nearest").data
        elif self.weight_map.grid == grid:
            w = self.weight_map.data
        else:
            w = resample(self.weight_map, grid, mode="nearest").data
        w = jnp.clip(jnp.asarray(w, jnp.float32), 0.0, 1.0)
        total = float(jnp.sum(w))
        if total <= 0:
            raise ValueError("model.weight_map: the region is empty on the fixed grid")
        pts = grid.world_coords(jnp.float32)
        center = jnp.sum(pts * w[..., None], axis=tuple(range(grid.ndim))) / total
        return RegionRigid.identity(w, grid, center=center, radius_mm=float(self.radius_mm))

    def candidate_translations(self, start: Transform) -> np.ndarray | None:
        """The translations (mm, ``(m, ndim)``) of the search lattice scored before the descent, or ``None``."""
        if self.search_mm is None:
            return None
        half, step = (float(v) for v in self.search_mm)
        k = int(np.floor(half / step + 1e-9))
        axis = np.arange(-k, k + 1) * step
        n = start.ndim
        return np.stack(np.meshgrid(*([axis] * n), indexing="ij"), axis=-1).reshape(-1, n).astype(np.float32)

    def continue_from(self, previous: Any, transform: Transform) -> Transform | None:
        """Continue a previous region stage; else stack."""
        return transform if isinstance(previous, Region) else None
