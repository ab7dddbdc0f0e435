"""Jacobian-determinant regularisers: a folding penalty and the squared log-Jacobian (volume change).

Both act on the determinant of the deformation gradient ``J = I + grad u`` of ``T(x) = x + u(x)``, computed
exactly as :func:`jaxreg.transforms.jacobian_determinant` computes it for a displacement field on its grid
(central differences inside, one-sided at the two border layers, world derivatives through the grid's
spacing and direction), so that a penalty of zero here means no fold is counted by
:func:`jaxreg.evaluation.jacobian_statistics` on the same grid.

``det J`` is voxel-located: a ``mask`` weights each voxel's term and the result is ``sum(w e) / sum(w)``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.diff import index_gradient
from jaxreg.core.grid import Grid
from jaxreg.core.registry import register_term
from jaxreg.regularizers._common import check_field, check_mask, det, frame, weighted_mean

__all__ = ["folding", "log_jacobian", "jacobian_determinant_field"]


def jacobian_determinant_field(
    u: jax.Array, *, spacing: float | Sequence[float] | None = None, grid: Grid | None = None
) -> jax.Array:
    """``det(I + grad u)`` at every voxel of a displacement field (central differences, world derivatives).

    Args:
      u: ``(*spatial, ndim)`` displacement in mm (world components, array-axis order), >= 2 samples per axis.
      spacing: voxel size in mm (static); default 1. Exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used).

    Returns:
      ``spatial``-shaped determinants (dimensionless: local volume ratio; <= 0 means folding).
    """
    n = check_field(u)
    sp, minv = frame(n, spacing, grid)
    return _det_field(u, spacing=tuple(float(s) for s in sp), minv=_as_static(minv))


def _as_static(m: np.ndarray | None) -> tuple[tuple[float, ...], ...] | None:
    return None if m is None else tuple(tuple(float(v) for v in row) for row in m)


@functools.partial(jax.jit, static_argnames=("spacing", "minv"))
def _det_field(u: jax.Array, *, spacing: tuple[float, ...], minv: Any) -> jax.Array:
    n = len(spacing)
    g = index_gradient(u, n)  # [..., i, a] per index step along a
    g = g / jnp.asarray(spacing, g.dtype) if minv is None else g @ jnp.asarray(minv, g.dtype)
    return det(g + jnp.eye(n, dtype=g.dtype))


def _determinants_and_mask(
    u: jax.Array, spacing: Any, grid: Grid | None, mask: Any
) -> tuple[jax.Array, jax.Array | None]:
    """``(det J per voxel, checked mask)``: the set-up shared by the voxel-wise determinant penalties."""
    n = check_field(u)
    d = jacobian_determinant_field(u, spacing=spacing, grid=grid)
    return d, check_mask(mask, tuple(u.shape[:n]))


@register_term("regularizer")
def folding(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
    eps: Any = 0.01,
) -> jax.Array:
    """Folding penalty: the mean of ``relu(eps - det J)^2``.

    Zero wherever ``det J >= eps``; a smooth (C^1) quadratic hinge below, so it is differentiable everywhere
    and its gradient pushes folded (``det J <= 0``) and nearly singular voxels back to at least ``eps``. The
    margin ``eps`` (traced) keeps the optimum away from the fold boundary ``det J = 0``; ``eps=0`` penalises
    only negative determinants. Reference: the negative-Jacobian loss of Kuang & Schmah, "FAIM", 2019, and
    Mok & Chung, CVPR 2020 (there with ``relu(-det J)``, here squared for a continuous gradient).

    Units: dimensionless (volume ratio squared).

    Args:
      u: ``(*spatial, ndim)`` displacement in mm.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction matter here: ``det`` is not rotation invariant per axis).
      mask: optional ``spatial`` voxel weights.
      eps: margin (traced scalar).

    Returns:
      Scalar.
    """
    return _folding(*_determinants_and_mask(u, spacing, grid, mask), eps)


@jax.jit
def _folding(d: jax.Array, mask: jax.Array | None, eps: Any) -> jax.Array:
    h = jax.nn.relu(eps - d)
    return weighted_mean(h * h, mask)


def safe_log(x: jax.Array, *, eps: Any = 1e-3) -> jax.Array:
    """``log x`` for ``x >= eps``, continued below by its tangent ``log eps + (x - eps) / eps``.

    Finite and C^1 for every real ``x`` (including ``x <= 0``), increasing, with slope ``1/eps`` below
    ``eps``: a folded voxel keeps a finite, large log and a gradient that points towards unfolding.
    """
    xc = jnp.maximum(x, eps)
    return jnp.where(x >= eps, jnp.log(xc), jnp.log(eps) + (x - eps) / eps)


@register_term("regularizer")
def log_jacobian(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
    eps: Any = 1e-3,
) -> jax.Array:
    """Squared log-Jacobian: the mean of ``(log det J)^2``, a symmetric penalty on local volume change.

    ``log det J`` is 0 for volume-preserving maps (rotations, incompressible flows), and the penalty treats
    expansion by ``k`` and compression by ``1/k`` alike. The log is "safe" (:func:`safe_log`): below ``eps``
    (traced) it continues linearly, so folded voxels (``det J <= 0``) give a large finite value and a
    gradient towards unfolding instead of NaN. Reference: Ashburner et al., NeuroImage 1999 (log-Jacobian
    prior); Leow et al., IEEE TMI 2007; NiftyReg's ``--jl`` (Modat et al., 2010).

    Units: dimensionless.

    Args:
      u: ``(*spatial, ndim)`` displacement in mm.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used).
      mask: optional ``spatial`` voxel weights.
      eps: where the log turns linear (traced), > 0.

    Returns:
      Scalar.
    """
    return _log_jacobian(*_determinants_and_mask(u, spacing, grid, mask), eps)


@jax.jit
def _log_jacobian(d: jax.Array, mask: jax.Array | None, eps: Any) -> jax.Array:
    lg = safe_log(d, eps=eps)
    return weighted_mean(lg * lg, mask)
