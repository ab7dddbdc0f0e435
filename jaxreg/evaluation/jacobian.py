"""Plausibility of a deformation: folding counts and the spread of the log-Jacobian (SDlogJ).

``det J(x)`` of ``T`` at the voxel centres of a grid is :func:`jaxreg.transforms.jacobian_determinant`: the
exact matrix for linear transforms, central differences of the sampled transform otherwise (one-sided at the
two border layers), in world units, so spacing and orientation are accounted for.

SDlogJ convention: ``std(log(clip(det J, 1e-9, 1e9)))`` over the (masked) voxels, with the clipping bounds of
the Learn2Reg evaluation so that folded voxels give a large finite value instead of NaN. Learn2Reg's script
(``MDL-UzL/L2R``, ``evaluation/evaluation.py``) differs in three ways that change its numbers: it adds 3 to
the determinant before clipping (``log(clip(det + 3, ...))``, a quirk that is not the log of the volume
change), works in voxel units with zero padding, and drops a 2-voxel border. Here the statistic is the
standard deviation of ``log det J`` itself; compare values across tools only under one convention.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Grid
from jaxreg.transforms.base import Transform
from jaxreg.transforms.jacobian import jacobian_determinant

__all__ = ["JacobianStatistics", "jacobian_statistics", "LOG_CLIP"]

LOG_CLIP = (1e-9, 1e9)
"""Bounds applied to ``det J`` before the log (Learn2Reg's)."""


class JacobianStatistics(NamedTuple):
    """Summary of ``det J`` over the evaluated voxels (scalars).

    Attributes:
      num_voxels: voxels evaluated (the mask's non-zero voxels, or all).
      num_nonpositive: voxels with ``det J <= 0`` (folding).
      fraction_nonpositive: ``num_nonpositive / num_voxels`` in [0, 1] (x100 for the "% folding" of papers).
      min: smallest ``det J``.
      max: largest ``det J``.
      mean: mean ``det J`` (1 for volume-preserving maps).
      std: standard deviation of ``det J`` (``ddof=0``).
      mean_log: mean of ``log(clip(det J))``.
      std_log: SDlogJ, standard deviation of ``log(clip(det J))`` (``ddof=0``); see the module docstring.
    """

    num_voxels: jax.Array
    num_nonpositive: jax.Array
    fraction_nonpositive: jax.Array
    min: jax.Array
    max: jax.Array
    mean: jax.Array
    std: jax.Array
    mean_log: jax.Array
    std_log: jax.Array


def _stats(det: jax.Array, mask: jax.Array | None) -> JacobianStatistics:
    sel = jnp.ones(det.shape, bool) if mask is None else mask
    n = jnp.sum(sel, dtype=jnp.int32)
    nf = jnp.maximum(n, 1).astype(det.dtype)
    folds = jnp.sum(sel & (det <= 0), dtype=jnp.int32)

    def mean_std(x):
        m = jnp.sum(jnp.where(sel, x, 0.0)) / nf
        v = jnp.sum(jnp.where(sel, (x - m) ** 2, 0.0)) / nf
        return m, jnp.sqrt(v)

    mean, std = mean_std(det)
    lg = jnp.log(jnp.clip(det, LOG_CLIP[0], LOG_CLIP[1]))
    mean_log, std_log = mean_std(lg)
    empty = n == 0
    nan = jnp.asarray(jnp.nan, det.dtype)

    def guard(x):
        return jnp.where(empty, nan, x)

    return JacobianStatistics(
        n,
        folds,
        guard(folds / nf),
        guard(jnp.min(jnp.where(sel, det, jnp.inf))),
        guard(jnp.max(jnp.where(sel, det, -jnp.inf))),
        guard(mean),
        guard(std),
        guard(mean_log),
        guard(std_log),
    )


@functools.partial(jit, static_argnames=("grid", "dtype"))
def _jacobian_statistics(transform, mask, *, grid, dtype):
    return _stats(jacobian_determinant(transform, grid, dtype), mask)


def jacobian_statistics(
    transform: Transform, grid: Grid, *, mask: jax.Array | None = None, dtype: Any = jnp.float32
) -> JacobianStatistics:
    """Folding counts and determinant statistics of ``transform``'s Jacobian on ``grid``.

    Args:
      transform: any jaxreg transform (fixed -> moving, world mm).
      grid: the voxels at which ``det J`` is evaluated (static), usually the fixed image's grid.
      mask: optional ``grid.shape`` array; voxels where it is non-zero are evaluated (e.g. a brain mask).
      dtype: floating dtype of the computation.

    Returns:
      :class:`JacobianStatistics`; statistics are NaN (counts 0) when the mask selects no voxel. Jit-able
      (``grid`` static).
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg Transform, got {type(transform).__name__}")
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if tuple(mask.shape) != grid.shape:
            raise ValueError(f"mask: expected shape {grid.shape} (the grid's), got {tuple(mask.shape)}")
        mask = mask != 0
    return _jacobian_statistics(transform, mask, grid=grid, dtype=jnp.dtype(dtype))
