"""Smoothness regularisers of dense displacement fields: diffusion, bending, linear elasticity, TV.

Each is a pure function of a displacement field ``u`` of shape ``(*spatial, ndim)`` (world mm, components in
array-axis order, as :class:`jaxreg.DisplacementField` stores it) and returns the *mean over the domain* of an
energy density, so that the value does not depend on the number of voxels and is comparable across
resolutions. Derivatives are in world units (per mm), computed from the voxel size ``spacing`` (static, mm per
array axis) or from a ``grid`` (its spacing; its direction where the energy is not rotation invariant).

Discretisation (all stencils compact, so no odd-even "checkerboard" mode of ``u`` goes unpenalised):

* :func:`diffusion`: forward differences ``(u[i+1] - u[i]) / h``, each the exact derivative at the edge
  midpoint ``i + 1/2`` for quadratic ``u``; the mean of each axis' squared differences is taken over that
  axis' edges, and the axes are summed.
* :func:`bending`: second differences ``(u[i+1] - 2u[i] + u[i-1]) / h^2`` (exact at voxel ``i`` for cubic
  ``u``) and mixed cell differences ``(u[i+1,j+1] - u[i+1,j] - u[i,j+1] + u[i,j]) / (h_i h_j)`` (exact at the
  cell centre for quadratic ``u``), each averaged over its own lattice; affine fields give exactly 0.
* :func:`elastic`, :func:`total_variation`: these couple all first derivatives at one point, so the Jacobian
  is taken with forward differences at every voxel that has a forward neighbour along each axis (the first
  ``n - 1`` indices per axis), all derivatives attributed to that voxel; exact for affine fields.

Masks: ``mask`` holds non-negative weights on the field's voxels, shape ``spatial``; a term that lives
between voxels (an edge, a cell, a stencil) is weighted by the mean of the mask over the voxels it uses, and
the result is the weighted mean ``sum(w e) / sum(w)`` (0 if every weight is 0). A mask of ones equals no mask.

References: Horn & Schunck 1981, Fischer & Modersitzki 2002 (diffusion); Rueckert et al., IEEE TMI 1999 and
Bookstein 1989 (bending / thin-plate energy); Broit 1981, Christensen 1994 (linear elasticity); Rudin, Osher &
Fatemi 1992, Vishnevskiy et al., IEEE TMI 2017 (total variation of displacements).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.core.registry import register_term
from jaxreg.regularizers._common import (
    check_field,
    check_mask,
    check_min_size,
    frame,
    sl,
    stencil_weights,
    weighted_mean,
)

__all__ = ["diffusion", "bending", "elastic", "total_variation"]


def _require_orthonormal(grid: Grid | None, what: str) -> None:
    if grid is None:
        return
    d = grid.direction
    if not np.allclose(d.T @ d, np.eye(grid.ndim), atol=1e-6):
        raise ValueError(
            f"grid: {what} assumes orthonormal direction cosines (the norm is then rotation invariant); "
            "this grid's axes are sheared"
        )


def _edge_offsets(ndim: int, axes: Sequence[int], steps: Sequence[int]) -> list[tuple[int, ...]]:
    """Voxel offsets of a stencil spanning ``steps[k] + 1`` voxels along ``axes[k]``."""
    ranges = [range(s + 1) for s in steps]
    out = []
    for combo in itertools.product(*ranges):
        off = [0] * ndim
        for ax, o in zip(axes, combo):
            off[ax] = o
        out.append(tuple(off))
    return out


def _axis_energy_inputs(
    u: jax.Array, spacing: Any, grid: Grid | None, mask: Any, *, need: int, what: str
) -> tuple[jax.Array | None, tuple[float, ...]]:
    """Checks shared by the per-axis energies: ``(mask, spacing)`` with the spacing as a static tuple (mm)."""
    n = check_field(u)
    check_min_size(u, n, need, what)
    sp, _ = frame(n, spacing, grid)
    _require_orthonormal(grid, what)
    return check_mask(mask, tuple(u.shape[:n])), tuple(float(s) for s in sp)


def _stencil_mean_sq(d: jax.Array, mask: jax.Array | None, axes: Sequence[int], steps: Sequence[int]) -> jax.Array:
    """Weighted mean of ``|d|^2`` (summed over components) on the lattice of a stencil along ``axes``.

    ``d`` ``(*lattice, ndim)`` holds the stencil's differences; each lattice point is weighted by the mean of
    ``mask`` over the ``steps[k] + 1`` voxels the stencil spans along ``axes[k]`` (module docstring).
    """
    dens = jnp.sum(d * d, axis=-1)
    w = stencil_weights(mask, _edge_offsets(d.ndim - 1, axes, steps), dens.shape)
    return weighted_mean(dens, w)


@register_term("regularizer")
def diffusion(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Diffusion (membrane) energy: the mean of ``||grad u||_F^2 = sum_i sum_j (du_i/dx_j)^2``.

    ``R(u) = 1/|Omega| int ||grad u(x)||_F^2 dx``, discretised with forward differences along each axis
    (see the module docstring): for quadratic fields every difference is the exact derivative at its edge
    midpoint, and a linear field ``u = A x`` gives exactly ``||A||_F^2``.

    Units: dimensionless (mm/mm squared). Reference: Fischer & Modersitzki, "Fast diffusion registration",
    Contemp. Math. 2002; the gradient loss of Balakrishnan et al., IEEE TMI 2019 (without their spacing bug).

    Args:
      u: ``(*spatial, ndim)`` displacement in mm (world components, array-axis order), ndim in 1..3.
      spacing: voxel size in mm (static), scalar or per axis; default 1. Exclusive with ``grid``.
      grid: the field's grid; its spacing is used (the energy is invariant to its orthonormal direction).
      mask: optional ``spatial`` weights (see the module docstring).

    Returns:
      Scalar, ``u``'s dtype.
    """
    mask, sp = _axis_energy_inputs(u, spacing, grid, mask, need=2, what="diffusion")
    return _diffusion(u, mask, spacing=sp)


@functools.partial(jax.jit, static_argnames=("spacing",))
def _diffusion(u: jax.Array, mask: jax.Array | None, *, spacing: tuple[float, ...]) -> jax.Array:
    n, sp = len(spacing), spacing
    total = jnp.zeros((), u.dtype)
    for a in range(n):
        d = (sl(u, a, 1, None) - sl(u, a, 0, -1)) / sp[a]
        total = total + _stencil_mean_sq(d, mask, [a], [1])
    return total


@register_term("regularizer")
def bending(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Bending (thin-plate) energy: the mean of ``sum_{i,j} ||d^2 u / dx_i dx_j||^2`` (mixed terms twice).

    ``R(u) = 1/|Omega| int sum_k [ sum_i (d^2 u_k/dx_i^2)^2 + 2 sum_{i<j} (d^2 u_k/dx_i dx_j)^2 ] dx``, the
    thin-plate spline energy used as the FFD smoothness penalty by Rueckert et al. Pure second derivatives use
    the 3-point second difference (exact for cubics), mixed ones the 4-point cell difference (exact for
    quadratics), each averaged over its own lattice; any affine field gives exactly 0.

    Units: mm^-2. Reference: Rueckert et al., "Nonrigid registration using free-form deformations:
    application to breast MR images", IEEE TMI 18(8), 1999, eq. (8); Bookstein, IEEE PAMI 1989.

    Args:
      u: ``(*spatial, ndim)`` displacement in mm; at least 3 samples per axis.
      spacing: voxel size in mm (static); default 1. Exclusive with ``grid``.
      grid: the field's grid (spacing used; the energy is invariant to its orthonormal direction).
      mask: optional ``spatial`` weights.

    Returns:
      Scalar, ``u``'s dtype. For a cubic B-spline FFD see also :func:`bspline_bending_energy` (analytic).
    """
    mask, sp = _axis_energy_inputs(u, spacing, grid, mask, need=3, what="bending")
    return _bending(u, mask, spacing=sp)


@functools.partial(jax.jit, static_argnames=("spacing",))
def _bending(u: jax.Array, mask: jax.Array | None, *, spacing: tuple[float, ...]) -> jax.Array:
    n, sp = len(spacing), spacing
    total = jnp.zeros((), u.dtype)
    for a in range(n):
        d2 = (sl(u, a, 2, None) - 2.0 * sl(u, a, 1, -1) + sl(u, a, 0, -2)) / (sp[a] * sp[a])
        total = total + _stencil_mean_sq(d2, mask, [a], [2])
        for b in range(a + 1, n):
            da = sl(u, a, 1, None) - sl(u, a, 0, -1)
            dab = (sl(da, b, 1, None) - sl(da, b, 0, -1)) / (sp[a] * sp[b])
            total = total + 2.0 * _stencil_mean_sq(dab, mask, [a, b], [1, 1])
    return total


def forward_jacobian(
    u: jax.Array, *, spacing: float | Sequence[float] | None = None, grid: Grid | None = None
) -> jax.Array:
    """World displacement gradient by forward differences on the first ``n - 1`` voxels of every axis.

    Args:
      u: ``(*spatial, ndim)`` displacement in mm.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used: ``du/dx = du/di @ A^-1``).

    Returns:
      ``(*[s - 1 for s in spatial], ndim, ndim)`` with ``G[..., i, j] = du_i/dx_j`` (dimensionless) at voxel
      ``index`` (derivative along ``j`` taken between ``index`` and ``index + e_j``).
    """
    n = check_field(u)
    check_min_size(u, n, 2, "a forward difference")
    sp, minv = frame(n, spacing, grid)
    return _forward_jacobian(u, spacing=tuple(float(s) for s in sp), minv=_as_static(minv))


def _as_static(m: np.ndarray | None) -> tuple[tuple[float, ...], ...] | None:
    return None if m is None else tuple(tuple(float(v) for v in row) for row in m)


@functools.partial(jax.jit, static_argnames=("spacing", "minv"))
def _forward_jacobian(u: jax.Array, *, spacing: tuple[float, ...], minv: Any) -> jax.Array:
    n, sp = len(spacing), np.asarray(spacing)
    spatial = tuple(u.shape[:n])
    crop = tuple(slice(0, s - 1) for s in spatial) + (slice(None),)
    cols = [(sl(u, a, 1, None) - sl(u, a, 0, -1))[crop] for a in range(n)]
    g = jnp.stack(cols, axis=-1)  # [..., i, a]: per index step along a
    if minv is None:
        return g / jnp.asarray(sp, g.dtype)
    return g @ jnp.asarray(minv, g.dtype)


def _forward_weights(mask: jax.Array | None, n: int, shape: tuple[int, ...]) -> jax.Array | None:
    offsets = [tuple([0] * n)] + [tuple(int(k == a) for k in range(n)) for a in range(n)]
    return stencil_weights(mask, offsets, shape)


@register_term("regularizer")
def elastic(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mu: Any = 1.0,
    lam: Any = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Linear elastic energy: the mean of ``mu ||eps||_F^2 + lam/2 (div u)^2``, ``eps = sym grad u``.

    The strain energy density of a homogeneous isotropic linear-elastic solid with Lamé constants ``mu``
    (shear modulus) and ``lam``; rigid motions are free only infinitesimally (a rotation's linearised strain
    is 0). A pure dilation ``u = a x`` costs ``mu n a^2 + lam/2 n^2 a^2``; a rotation-free shear
    ``u = (g y, g x)`` costs ``2 mu g^2``. The Jacobian is taken by forward differences at each voxel
    (module docstring), so with a non-axis-aligned ``grid`` its direction is applied before symmetrising.

    Units: ``mu``/``lam`` units (e.g. 1) times dimensionless strain squared. ``mu`` and ``lam`` are traced:
    they can be vmapped over and differentiated. Reference: Broit, PhD thesis, U. Pennsylvania 1981;
    Christensen, PhD thesis 1994; Modersitzki, "Numerical Methods for Image Registration", 2004, ch. 9.

    Args:
      u: ``(*spatial, ndim)`` displacement in mm; at least 2 samples per axis.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used).
      mu: Lamé's second parameter (shear modulus), scalar (traced).
      lam: Lamé's first parameter, scalar (traced).
      mask: optional ``spatial`` weights.

    Returns:
      Scalar.
    """
    n = check_field(u)
    check_min_size(u, n, 2, "elastic")
    sp, minv = frame(n, spacing, grid)
    mask = check_mask(mask, tuple(u.shape[:n]))
    return _elastic(u, mask, mu, lam, spacing=tuple(float(s) for s in sp), minv=_as_static(minv))


@functools.partial(jax.jit, static_argnames=("spacing", "minv"))
def _elastic(u, mask, mu, lam, *, spacing, minv):
    n = len(spacing)
    g = _forward_jacobian(u, spacing=spacing, minv=minv)
    strain = 0.5 * (g + jnp.swapaxes(g, -1, -2))
    div = jnp.trace(g, axis1=-2, axis2=-1)
    dens = mu * jnp.sum(strain * strain, axis=(-2, -1)) + 0.5 * lam * div * div
    return weighted_mean(dens, _forward_weights(mask, n, tuple(g.shape[:n])))


@register_term("regularizer")
def total_variation(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
    eps: Any = 1e-6,
) -> jax.Array:
    """Smoothed (vectorial) total variation: the mean of ``sqrt(||grad u||_F^2 + eps)``.

    The Frobenius norm couples all components and directions (isotropic TV), and ``eps`` (traced) makes it
    differentiable at ``grad u = 0``, where its value is ``sqrt(eps)``. The Jacobian is taken by forward
    differences at each voxel (module docstring). Edge-preserving: it allows sliding motion that quadratic
    terms penalise.

    Units: dimensionless (``eps`` in the same squared units). Reference: Rudin, Osher & Fatemi, Physica D
    1992; Vishnevskiy et al., "Isotropic total variation regularization of displacements in parametric image
    registration", IEEE TMI 36(2), 2017.

    Args:
      u: ``(*spatial, ndim)`` displacement in mm; at least 2 samples per axis.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used).
      mask: optional ``spatial`` weights.
      eps: smoothing constant (traced), > 0 for a finite gradient at 0.

    Returns:
      Scalar.
    """
    n = check_field(u)
    check_min_size(u, n, 2, "total_variation")
    sp, minv = frame(n, spacing, grid)
    mask = check_mask(mask, tuple(u.shape[:n]))
    return _total_variation(u, mask, eps, spacing=tuple(float(s) for s in sp), minv=_as_static(minv))


@functools.partial(jax.jit, static_argnames=("spacing", "minv"))
def _total_variation(u, mask, eps, *, spacing, minv):
    n = len(spacing)
    g = _forward_jacobian(u, spacing=spacing, minv=minv)
    dens = jnp.sqrt(jnp.sum(g * g, axis=(-2, -1)) + eps)
    return weighted_mean(dens, _forward_weights(mask, n, tuple(g.shape[:n])))
