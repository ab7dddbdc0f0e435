"""Dense transforms on a grid: displacement fields and stationary velocity fields.

A :class:`DisplacementField` stores ``u`` at every voxel of its grid in world mm (RAS components, array-axis
order of the world axes), and maps ``T(x) = x + u(x)``. Between voxel centres ``u`` is linearly interpolated,
edge-clamped within half a voxel of the border; outside the grid ``u = 0``: exactly ITK's
``DisplacementFieldTransform``, so fields read from ANTs/SimpleITK behave the same here.

A :class:`VelocityField` stores a stationary velocity ``v`` (mm per unit time) and represents the
diffeomorphism ``exp(v)``, the flow of ``v`` at time 1, computed by scaling and squaring (Arsigny et al.,
MICCAI 2006): ``u_0 = v / 2^N``, then ``N`` times ``u <- u + u o (id + u)``. Its inverse is ``exp(-v)``.
:func:`exp_voxel_field` is the one scaling-and-squaring kernel of the library (index units, one grid); the
velocity field and the greedy optimiser both call it.

For an optimisation level on another grid both fields are resampled (:meth:`DisplacementField.on_grid`):
linear interpolation of the world-mm values at the new voxel centres, edge values repeated outside the field's
voxel centres.

Internally fields are composed in voxel units of their grid (``u_vox = A^-1 u_mm`` with ``A`` the grid's linear
part) so that every sampling is a plain index-space interpolation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.core.sampling import map_coordinates
from jaxreg.transforms.base import Transform, _check_grid, _check_points, pytree_dataclass

__all__ = [
    "DisplacementField",
    "VelocityField",
    "to_voxel_displacement",
    "from_voxel_displacement",
    "compose_fields",
    "invert_field",
    "exp_voxel_field",
]


def to_voxel_displacement(displacement: jax.Array, grid: Grid) -> jax.Array:
    """World displacement (mm, ``(..., ndim)``) to index units of ``grid`` (``A^-1 u``)."""
    inv = jnp.asarray(grid.inverse_affine[: grid.ndim, : grid.ndim], dtype=displacement.dtype)
    return displacement @ inv.T


def from_voxel_displacement(displacement: jax.Array, grid: Grid) -> jax.Array:
    """Index-unit displacement of ``grid`` (``(..., ndim)``) to world mm (``A u``)."""
    a = jnp.asarray(grid.affine[: grid.ndim, : grid.ndim], dtype=displacement.dtype)
    return displacement @ a.T


def _compose_vox(outer: jax.Array, inner: jax.Array, index: jax.Array) -> jax.Array:
    """``inner + outer(index + inner)`` for index-unit fields on one grid (edge extension outside)."""
    return inner + map_coordinates(outer, index + inner, order=1, mode="nearest")


def exp_voxel_field(v: jax.Array, steps: int, *, tolerance: float = 0.0) -> jax.Array:
    """Displacement of ``exp(v)`` for a stationary velocity in index units, by scaling and squaring.

    ``u_0 = v / 2^N``, then ``N`` times ``u <- u + u o (id + u)`` (Arsigny et al., MICCAI 2006), every
    composition a linear interpolation in index space with edge values repeated outside the grid (mode
    ``"nearest"``). Unbatched: vmap it over leading axes.

    With ``tolerance > 0`` the number of squarings adapts to the field, as in ITK's
    ``ExponentialDisplacementFieldImageFilter`` (automatic number of iterations; Vercauteren et al.,
    NeuroImage 45(1), 2009): ``N = min(steps, max(0, ceil(log2(max_x |v(x)| / tolerance))))``, the fewest
    squarings for which the scaled field ``v / 2^N`` moves no voxel by more than ``tolerance`` voxels. A small
    field then costs fewer compositions (the greedy methods' coarse levels and early iterations). ``N`` is
    computed at run time (under ``vmap`` each member gets its own), so this form is not reverse-differentiable;
    use it where the exponential is not differentiated (greedy updates).

    Args:
      v: ``(*shape, ndim)`` velocity in voxels of its own grid (components in array-axis order).
      steps: number of squarings ``N`` (static, a non-negative Python int); with ``tolerance``, the most.
      tolerance: largest vector (voxels) of ``v / 2^N`` that the adaptive rule accepts; 0 (default): always
        ``steps`` squarings (differentiable).

    Returns:
      ``(*shape, ndim)`` displacement of ``exp(v)`` in voxels, same floating dtype as ``v`` (float32 for
      integer input).
    """
    v = jnp.asarray(v)
    if v.ndim < 2 or v.shape[-1] != v.ndim - 1:
        raise ValueError(f"v: expected an index-unit field of shape (*shape, ndim) with ndim = len(shape), got {v.shape}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps: expected a non-negative Python int, got {steps!r}")
    tol_ok = isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and np.isfinite(tolerance)
    if not (tol_ok and tolerance >= 0):
        raise ValueError(f"tolerance: expected a non-negative number of voxels, got {tolerance!r}")
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.float32)
    axes = [jnp.arange(s, dtype=v.dtype) for s in v.shape[:-1]]
    index = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    if tolerance == 0 or steps == 0:
        u = v / (2.0 ** int(steps))
        return jax.lax.fori_loop(0, int(steps), lambda _, w: _compose_vox(w, w, index), u)
    biggest = jnp.sqrt(jnp.max(jnp.sum(v * v, axis=-1)))
    n = jnp.ceil(jnp.log2(jnp.maximum(biggest, 1e-30) / tolerance))
    n = jnp.clip(jnp.where(jnp.isfinite(n), n, steps), 0, int(steps)).astype(jnp.int32)
    u = v / jnp.exp2(n.astype(v.dtype))
    return jax.lax.fori_loop(0, n, lambda _, w: _compose_vox(w, w, index), u)


_PLANS_OFF = False  # benchmarks/resample_field.py forces the general path to compare the two


def _resample_field(values: jax.Array, src: Grid, dst: Grid) -> jax.Array:
    """World-mm field ``values`` on ``src`` linearly interpolated at the voxel centres of ``dst`` (edge mode
    ``"nearest"``); the index-to-index map ``src.world_to_index o dst.index_to_world`` is composed in float64.

    When that map is axis-aligned with a periodic step (``dst`` a refinement by an integer factor, a coarsening
    or a crop of ``src``, as between pyramid levels and reduced-resolution field lattices) the interpolation is
    separable and runs as :func:`_separable_linear_resample` (pads and strided slices, whose gradient is pads
    and slices too: no scatter-add); otherwise as one :func:`~jaxreg.core.sampling.map_coordinates` read of the
    ``2^ndim`` neighbours."""
    if src == dst:
        return values
    n = src.ndim
    m = src.inverse_affine @ dst.affine  # dst index -> src index
    lin = m[:n, :n]
    if np.all(np.abs(lin - np.diag(np.diag(lin))) <= 1e-9 * max(1.0, float(np.abs(lin).max()))):
        plans = None if _PLANS_OFF else _axis_plans(src, dst)
        if plans is not None:
            return _separable_linear_resample(values, plans)
    dt = values.dtype
    idx = dst.index_coords(dt) @ jnp.asarray(m[:n, :n].T, dt) + jnp.asarray(m[:n, n], dt)
    return map_coordinates(values, idx, order=1, mode="nearest")


@functools.lru_cache(maxsize=256)
def _axis_plans(src: Grid, dst: Grid) -> tuple[tuple[int, int, tuple[tuple[int, float, int], ...]], ...] | None:
    """Per axis ``d`` of an axis-aligned ``dst -> src`` index map ``i = s_d j + t_d`` whose step becomes an
    integer ``g`` after ``p <= 16`` output voxels (a refinement by an integer factor: ``p`` phases, ``g = 1``; a
    coarsening: ``p = 1``, ``g`` the factor; a crop or shift: ``p = g = 1``): ``(pad, g, phases)`` with, for
    every phase ``r < p``, ``(k_r, a_r, count_r)`` such that output voxels ``j = r + p q`` read
    ``(1 - a_r) v'[k_r + g q] + a_r v'[k_r + 1 + g q]`` from ``v'``, the source edge-padded by ``pad`` voxels
    (edge values repeated: mode ``"nearest"``). ``None`` when some axis has no such period."""
    n = src.ndim
    m = src.inverse_affine @ dst.affine
    plans = []
    for d in range(n):
        ns, nd = int(src.shape[d]), int(dst.shape[d])
        step, t = float(m[d, d]), float(m[d, n])
        whole = [p for p in range(1, 17) if abs(step * p - round(step * p)) <= 1e-9 * max(1.0, abs(step * p))]
        period = whole[0] if whole else None
        if period is None or round(step * period) <= 0:  # no period, or a flipped axis: the general path
            return None
        g = round(step * period)
        ends = (t, step * (nd - 1) + t)
        pad = int(np.ceil(max(0.0, -min(ends), max(ends) - (ns - 1)))) + 1
        phases = []
        for r in range(min(period, nd)):
            base = step * r + t + pad
            k = math.floor(base + 1e-9)
            phases.append((k, float(base - k), len(range(r, nd, period))))
        plans.append((pad, g, tuple(phases)))
    return tuple(plans)


def _separable_linear_resample(values: jax.Array, plans: tuple) -> jax.Array:
    """Linear interpolation of ``values`` ``(..., *src_shape, C)`` along each spatial axis in turn, by edge
    padding, strided slices and interleaving (plans of :func:`_axis_plans`); ``(..., *dst_shape, C)``. Slices
    and pads only: autodiff transposes them into pads and slices (no gather, no scatter-add). Leading batch axes
    and ``vmap`` are supported."""
    n = len(plans)
    x = values

    def take(xp: jax.Array, start: int, step: int, c: int, count: int, ax: int) -> jax.Array:
        sl = jax.lax.slice_in_dim(xp, start, start + step * (c - 1) + 1, stride=step, axis=ax)
        if c < count:  # a shorter phase: padded to the common length (trimmed after interleaving)
            w = [(0, 0)] * sl.ndim
            w[ax] = (0, count - c)
            sl = jnp.pad(sl, w)
        return sl

    for d, (pad, g, phases) in enumerate(plans):
        ax = x.ndim - 1 - n + d
        widths = [(0, 0)] * x.ndim
        widths[ax] = (pad, pad)
        xp = jnp.pad(x, widths, mode="edge")
        count = max(c for _, _, c in phases)
        outs = []
        for k, a, c in phases:
            lo = take(xp, k, g, c, count, ax)
            outs.append(lo if a == 0.0 else (1.0 - a) * lo + a * take(xp, k + 1, g, c, count, ax))
        y = jnp.stack(outs, axis=ax + 1)  # (..., count, p, ...)
        y = y.reshape(*y.shape[:ax], count * len(phases), *y.shape[ax + 2 :])
        x = jax.lax.slice_in_dim(y, 0, sum(c for _, _, c in phases), axis=ax)
    return x


def _check_field(displacement: jax.Array, grid: Grid, name: str) -> None:
    # leading batch axes are allowed (vmapped or stacked transforms); the trailing axes must match the grid
    shp = tuple(getattr(displacement, "shape", ()))
    want = (*grid.shape, grid.ndim)
    if shp and shp[-len(want):] != want:
        raise ValueError(f"{name}: expected shape {want} for {grid}, got {shp}")


@pytree_dataclass(static=("grid",))
class DisplacementField(Transform):
    """``T(x) = x + u(x)`` with ``u`` sampled on ``grid`` (world mm).

    Attributes:
      displacement: ``(*grid.shape, ndim)`` displacement of each voxel centre, world mm (RAS components).
      grid: the field's lattice (static).
    """

    displacement: jax.Array
    grid: Grid

    def __post_init__(self) -> None:
        if not isinstance(self.grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(self.grid).__name__}")
        _check_field(self.displacement, self.grid, "displacement")

    @classmethod
    def identity(cls, grid: Grid, dtype: Any = jnp.float32) -> "DisplacementField":
        """Zero field on ``grid``."""
        return cls(jnp.zeros((*grid.shape, grid.ndim), dtype), grid)

    @property
    def ndim(self) -> int:
        return self.grid.ndim

    def voxel_displacement(self) -> jax.Array:
        """The field in index units of its grid, ``(*grid.shape, ndim)``."""
        return to_voxel_displacement(self.displacement, self.grid)

    def __call__(self, points: jax.Array) -> jax.Array:
        points = jnp.asarray(points)
        _check_points(points, self.ndim)
        idx = self.grid.world_to_index(points)
        u = map_coordinates(self.displacement.astype(idx.dtype), idx, order=1, mode="nearest")
        hi = jnp.asarray(self.grid.shape, idx.dtype) - 0.5
        inside = jnp.all((idx >= -0.5) & (idx <= hi), axis=-1, keepdims=True)
        return points.astype(idx.dtype) + jnp.where(inside, u, 0.0)

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        _check_grid(self, grid)
        if grid == self.grid:
            return grid.world_coords(dtype) + self.displacement.astype(dtype)
        return self(grid.world_coords(dtype))

    def on_grid(self, grid: Grid) -> DisplacementField:
        """The field resampled onto ``grid`` for an optimisation level.

        ``u`` (world mm) is linearly interpolated at the voxel centres of ``grid``, with the edge values
        repeated beyond the field's outer voxel centres (mode ``"nearest"``); this restricts the field to a
        coarse level and lifts it to a finer one. ``self`` when ``grid == self.grid``.

        Args:
          grid: the level grid (static).

        Returns:
          A :class:`DisplacementField` on ``grid``, displacement ``(*grid.shape, ndim)`` mm.
        """
        _check_grid(self, grid)
        if grid == self.grid:
            return self
        return DisplacementField(_resample_field(self.displacement, self.grid, grid), grid)

    def regularized_field(self, grid: Grid) -> tuple[jax.Array, Grid]:
        """``(displacement, self.grid)``: the field itself on its own grid (``grid`` is only checked)."""
        _check_grid(self, grid)
        return self.displacement, self.grid


@pytree_dataclass(static=("grid", "steps"))
class VelocityField(Transform):
    """Diffeomorphism ``exp(v)`` of a stationary velocity field, by scaling and squaring.

    Attributes:
      velocity: ``(*grid.shape, ndim)`` world mm (RAS components).
      grid: the field's lattice (static).
      steps: number of squarings ``N`` (static); ``v / 2^N`` should be well below a voxel. Default 7.
    """

    velocity: jax.Array
    grid: Grid
    steps: int = 7

    def __post_init__(self) -> None:
        if not isinstance(self.grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(self.grid).__name__}")
        _check_field(self.velocity, self.grid, "velocity")
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise ValueError(f"steps: expected a non-negative Python int, got {self.steps!r}")

    @classmethod
    def identity(cls, grid: Grid, *, steps: int = 7, dtype: Any = jnp.float32) -> "VelocityField":
        """Zero velocity on ``grid``."""
        return cls(jnp.zeros((*grid.shape, grid.ndim), dtype), grid, steps)

    @property
    def ndim(self) -> int:
        return self.grid.ndim

    def exp(self) -> DisplacementField:
        """The displacement field of ``exp(v)`` on the velocity's grid."""
        u = exp_voxel_field(to_voxel_displacement(self.velocity, self.grid), self.steps)
        return DisplacementField(from_voxel_displacement(u, self.grid), self.grid)

    def inverse(self) -> "VelocityField":
        """``exp(-v)``: the exact inverse of this diffeomorphism (up to the scaling-and-squaring error)."""
        return VelocityField(-self.velocity, self.grid, self.steps)

    def __call__(self, points: jax.Array) -> jax.Array:
        return self.exp()(points)

    def sample_grid(self, grid: Grid, dtype: Any = jnp.float32) -> jax.Array:
        return self.exp().sample_grid(grid, dtype)

    def on_grid(self, grid: Grid) -> VelocityField:
        """The velocity (world mm) resampled onto ``grid`` as for :meth:`DisplacementField.on_grid`; same
        ``steps``; ``self`` when ``grid == self.grid``.

        Args:
          grid: the level grid (static).

        Returns:
          A :class:`VelocityField` on ``grid``, velocity ``(*grid.shape, ndim)`` mm.
        """
        _check_grid(self, grid)
        if grid == self.grid:
            return self
        return VelocityField(_resample_field(self.velocity, self.grid, grid), grid, self.steps)

    def regularized_field(self, grid: Grid) -> tuple[jax.Array, Grid]:
        """``(velocity, self.grid)``: the velocity on its own grid (``grid`` is only checked)."""
        _check_grid(self, grid)
        return self.velocity, self.grid


def compose_fields(outer: DisplacementField, inner: DisplacementField) -> DisplacementField:
    """The field of ``outer o inner`` on ``inner``'s grid: ``w(x) + u(x + w(x))``.

    ``u`` is ``outer``'s displacement, ``w`` is ``inner``'s; ``outer`` is evaluated in world coordinates with
    its transform semantics (zero displacement outside its grid), so the two fields may live on different grids
    and the result equals the lazy ``compose(outer, inner)`` at every voxel.
    """
    pts = inner.sample_grid(inner.grid, inner.displacement.dtype)
    return DisplacementField(outer(pts) - inner.grid.world_coords(pts.dtype), inner.grid)


def invert_field(field: DisplacementField, *, iterations: int = 30, relaxation: float = 1.0) -> DisplacementField:
    """Inverse of a displacement field on its own grid by (relaxed) fixed-point iteration.

    Solves ``v(x) = -u(x + v(x))`` with ``v_0 = -u`` (Chen et al., Med. Phys. 2008) by ``v <- (1 - a) v - a u(x +
    v)`` with relaxation ``a``. The iteration map has Jacobian ``(1 - a) I - a grad u``: with ``a = 1`` (Chen's
    plain iteration) it converges where ``|grad u| < 1`` (a contraction), at rate ``|grad u|``; ``a = 1/2``
    also converges where the field expands locally by up to ``det J ~ 3`` per axis (eigenvalues of ``grad u`` in
    ``(-1, 3)``), at rate about 1/2 per iteration. Outside the grid ``u`` is extended by its edge values.

    Args:
      field: the forward field.
      iterations: number of fixed-point iterations (static).
      relaxation: the step ``a`` in ``(0, 1]`` (1: plain fixed point).

    Returns:
      The inverse field on ``field.grid``.
    """
    if not isinstance(relaxation, (int, float)) or not 0.0 < relaxation <= 1.0:
        raise ValueError(f"relaxation: expected a number in (0, 1], got {relaxation!r}")
    g = field.grid
    u = field.voxel_displacement()
    index = g.index_coords(u.dtype)
    a = float(relaxation)

    def body(_, v):
        step = -map_coordinates(u, index + v, order=1, mode="nearest")
        return step if a == 1.0 else (1.0 - a) * v + a * step

    v = jax.lax.fori_loop(0, iterations, body, -u)
    return DisplacementField(from_voxel_displacement(v, g), g)
