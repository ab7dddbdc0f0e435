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
