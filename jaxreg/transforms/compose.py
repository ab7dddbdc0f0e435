"""Composition, inversion and conversion of transforms.

``compose(f, g)`` is function composition, ``(f o g)(x) = f(g(x))``: ``g`` is applied to the point first. In
pull terms, for a pipeline that first aligned the images affinely and then deformably, the fixed-space point
goes through the deformable transform first and then through the affine one into the moving image:
``compose(affine, deformable)``. This is the order of ITK's ``CompositeTransform`` (the last transform added
is applied first to the point). On ANTs' command line the first listed file is applied first to the point:
``antsApplyTransforms -t 1Warp.nii.gz -t 0GenericAffine.mat`` samples at ``compose(affine, warp)``; see
:func:`jaxreg.io.compose_files`.

:func:`invert` is exact for linear transforms and velocity fields (``exp(-v)``), iterative for displacement
fields (on their grid) and point-wise iterative (:class:`NumericalInverse`) for the rest;
:func:`inverse_method` names the branch :func:`invert` takes. :func:`inverse_displacement` samples the inverse of
a (deformable) transform on a grid as a :class:`DisplacementField`, what ``jaxreg register`` writes as
``inverse_warp.nii.gz``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.grid import Grid
from jaxreg.transforms.base import LinearTransform, Transform, _check_grid, _check_points, pytree_dataclass
from jaxreg.transforms.dense import DisplacementField, VelocityField, compose_fields, invert_field
from jaxreg.transforms.linear import Affine

__all__ = [
    "Composite",
    "NumericalInverse",
    "compose",
    "invert",
    "inverse_method",
    "inverse_displacement",
    "to_displacement",
    "to_affine",
]


@pytree_dataclass
class Composite(Transform):
    """``transforms[0] o transforms[1] o ... o transforms[-1]`` (the last is applied first to a point).

    The protocol maps over the members: :attr:`is_linear` (a property here) is ``True`` when every member is
    linear, :meth:`on_grid` re-expresses each member, :meth:`regularized_field` is that of the last
    non-linear member (the one applied first to a point among them) and :meth:`linear_part` the product of
    the members as an :class:`Affine` when all are linear.

    Attributes:
      transforms: tuple of transforms of one dimension (a pytree: every member's leaves are leaves).
    """

    transforms: tuple

    def __post_init__(self) -> None:
        ts = self.transforms
        if not isinstance(ts, tuple) or not ts or not all(isinstance(t, Transform) for t in ts):
            raise ValueError("transforms: expected a non-empty tuple of jaxreg transforms")
        dims = {t.ndim for t in ts}
        if len(dims) != 1:
            raise ValueError(f"transforms: all must have the same ndim, got {[t.ndim for t in ts]}")

    @property
    def ndim(self) -> int:
        return self.transforms[0].ndim

    def __call__(self, points: jax.Array) -> jax.Array:
        for t in reversed(self.transforms):
            points = t(points)
        return points

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        _check_grid(self, grid)
        pts = self.transforms[-1].sample_grid(grid, dtype)
        for t in reversed(self.transforms[:-1]):
            pts = t(pts)
        return pts

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        """``True`` when every member is linear."""
        return all(t.is_linear for t in self.transforms)

    def on_grid(self, grid: Grid) -> Composite:
        """Every member re-expressed on ``grid`` (see :meth:`Transform.on_grid`), same order."""
        _check_grid(self, grid)
        return Composite(tuple(t.on_grid(grid) for t in self.transforms))

    def regularized_field(self, grid: Grid) -> tuple[jax.Array | None, Grid]:
        """The :meth:`Transform.regularized_field` of the last non-linear member, ``(None, grid)`` if none."""
        _check_grid(self, grid)
        for t in reversed(self.transforms):
            if not t.is_linear:
                return t.regularized_field(grid)
        return None, grid

    def linear_part(self) -> Affine | None:
        """The product of the members as one :class:`Affine` (:func:`to_affine`) when all are linear, else
        ``None``."""
        return to_affine(self) if self.is_linear else None


def compose(*transforms: Transform) -> Composite:
    """``compose(f, g, h)(x) = f(g(h(x)))``; nested composites are flattened.

    Args:
      *transforms: one or more transforms of the same dimension.

    Returns:
      A :class:`Composite` (lazy: nothing is resampled). Use :func:`to_displacement` or
      :func:`to_affine` to collapse it.
    """
    flat: list[Transform] = []
    for t in transforms:
        if isinstance(t, Composite):
            flat.extend(t.transforms)
        elif isinstance(t, Transform):
            flat.append(t)
        else:
            raise TypeError(f"transforms: expected jaxreg transforms, got {type(t).__name__}")
    return Composite(tuple(flat))


@pytree_dataclass(static=("iterations",))
class NumericalInverse(Transform):
    """Point-wise inverse of ``forward`` by fixed-point iteration ``x <- y - (T(x) - x)``.

    Converges where the displacement ``T(x) - x`` is a contraction (Lipschitz constant below 1), which holds
    for smooth, moderate deformations; no grid is needed.

    Attributes:
      forward: the transform to invert.
      iterations: number of iterations (static). Default 30.
    """

    forward: Transform
    iterations: int = 30

    @property
    def ndim(self) -> int:
        return self.forward.ndim

    def __call__(self, points: jax.Array) -> jax.Array:
        points = jnp.asarray(points)
        _check_points(points, self.ndim)
        y = points if jnp.issubdtype(points.dtype, jnp.floating) else points.astype(jnp.float32)
        return jax.lax.fori_loop(0, self.iterations, lambda _, x: y - (self.forward(x) - x), y)

    def on_grid(self, grid: Grid) -> NumericalInverse:
        """The inverse of ``forward.on_grid(grid)`` (same iterations)."""
        _check_grid(self, grid)
        return NumericalInverse(self.forward.on_grid(grid), self.iterations)


def to_affine(transform: Transform) -> Affine:
    """Collapse a linear transform, or a composite of linear transforms, into one :class:`Affine`."""
    if isinstance(transform, Affine):
        return transform
    if isinstance(transform, LinearTransform):
        return Affine.from_transform(transform)
    if isinstance(transform, Composite) and transform.is_linear:
        h = transform.transforms[0].linear_part().homogeneous()
        for t in transform.transforms[1:]:
            h = h @ t.linear_part().homogeneous()
        return Affine.from_homogeneous(h)
    raise ValueError(f"transform: expected a linear transform or a composite of them, got {type(transform).__name__}")


def to_displacement(transform: Transform, grid: Grid, dtype: Any = jnp.float32) -> DisplacementField:
    """Sample any transform on ``grid`` as a :class:`DisplacementField` (world mm)."""
    if isinstance(transform, Composite) and all(isinstance(t, DisplacementField) for t in transform.transforms):
        field = transform.transforms[-1]
        if field.grid == grid:
            for t in reversed(transform.transforms[:-1]):
                field = compose_fields(t, field)
            return DisplacementField(field.displacement.astype(dtype), grid)
    return DisplacementField(transform.sample_displacement(grid, dtype), grid)


def invert(
    transform: Transform, *, grid: Grid | None = None, iterations: int = 30, relaxation: float = 1.0
) -> Transform:
    """Inverse transform: ``invert(T)(T(x)) ~ x``.

    * linear: exact (an :class:`Affine` about the same centre);
    * :class:`VelocityField`: ``exp(-v)``;
    * :class:`DisplacementField`: fixed-point iteration on its grid (:func:`invert_field`);
    * :class:`Composite`: members inverted in reverse order;
    * anything else: sampled on ``grid`` and inverted as a field when ``grid`` is given, otherwise a
      :class:`NumericalInverse` evaluated point by point.

    Args:
      transform: the transform.
      grid: optional grid for dense inversion of non-dense transforms.
      iterations: fixed-point iterations for iterative inverses (static).
      relaxation: the relaxation of :func:`invert_field` (1: plain fixed point; 1/2 for locally expanding fields).
    """
    if isinstance(transform, LinearTransform):
        h = jnp.linalg.inv(transform.homogeneous())
        return Affine.from_homogeneous(h, center=getattr(transform, "center", None))
    if isinstance(transform, VelocityField):
        return transform.inverse()
    if isinstance(transform, DisplacementField):
        return invert_field(transform, iterations=iterations, relaxation=relaxation)
    if isinstance(transform, Composite):
        return Composite(
            tuple(
                invert(t, grid=grid, iterations=iterations, relaxation=relaxation) for t in reversed(transform.transforms)
            )
        )
    if isinstance(transform, NumericalInverse):
        return transform.forward
    if grid is not None:
        return invert_field(to_displacement(transform, grid), iterations=iterations, relaxation=relaxation)
    return NumericalInverse(transform, iterations)


def inverse_method(transform: Transform) -> str:
    """How :func:`invert` inverts ``transform``.

    Returns:
      ``"exact"`` (linear, or a composite of linear transforms), ``"exp(-v)"`` (velocity fields, possibly composed
      with linear transforms: exact up to the scaling-and-squaring error), ``"fixed-point"`` (anything with a
      displacement field or another non-linear member: :func:`invert_field` on a grid), or ``"numerical"``
      (:class:`NumericalInverse` inverted back: its ``forward``, exact).
    """
    if isinstance(transform, LinearTransform):
        return "exact"
    if isinstance(transform, VelocityField):
        return "exp(-v)"
    if isinstance(transform, NumericalInverse):
        return "numerical"
    if isinstance(transform, Composite):
        methods = {inverse_method(t) for t in transform.transforms}
        for m in ("fixed-point", "numerical", "exp(-v)"):
            if m in methods:
                return m
        return "exact"
    return "fixed-point"


def inverse_displacement(
    transform: Transform, grid: Grid, *, iterations: int = 50, relaxation: float = 0.5, dtype: Any = jnp.float32
) -> DisplacementField:
    """The inverse of ``transform`` sampled on ``grid`` as a displacement field (world mm).

    The inverse is :func:`invert`'s: ``exp(-v)`` through the one scaling-and-squaring kernel for a
    :class:`VelocityField` (on the velocity's grid, then sampled on ``grid``), exact for linear members, and for
    displacement fields and other non-linear transforms (B-splines, ...) the fixed-point iteration ``v(x) = -u(x +
    v(x))`` of :func:`invert_field` (Chen et al., Med. Phys. 2008), relaxed by default, on the field's own grid
    or, for a transform that has none, on ``grid`` (a B-spline is sampled on ``grid`` first).
    :func:`inverse_method` names the branch. Where the field folds the iteration cannot converge: check the
    result with :func:`jaxreg.evaluation.inverse_consistency_error`. (On the 2-D phantom's B-spline result, with
    local expansions up to ``det J = 2.3``, the plain iteration left errors up to 17 mm near the border after 30
    or 100 iterations; relaxed by 1/2, 0.0004 mm after 30.)

    For a registration ``T = compose(linear, deformable)`` (fixed -> moving, pull), the inverse of the deformable
    part sampled on the fixed grid is what ANTs writes as ``1InverseWarp.nii.gz``: with it, moving-space points
    go through ``linear^-1`` first and then through this field into the fixed space.

    Args:
      transform: the transform to invert (typically the deformable part of a registration).
      grid: where to sample the inverse (static), e.g. the fixed grid.
      iterations: fixed-point iterations (static).
      relaxation: the step of the relaxed iteration (see :func:`invert_field`; 1 for Chen's plain iteration).
      dtype: floating dtype of the result.

    Returns:
      A :class:`DisplacementField` on ``grid``: ``(*grid.shape, ndim)`` mm with ``x + u_inv(x) = T^-1(x)``.
    """
    _check_grid(transform, grid)
    inv = invert(transform, grid=grid, iterations=iterations, relaxation=relaxation)
    return to_displacement(inv, grid, dtype)
