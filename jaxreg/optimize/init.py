"""Initialisation of linear registration from image geometry and moments.

* :func:`center_init`: translation between the geometric centres of the two grids;
* :func:`moments_init` with ``mode="com"``: translation between intensity centres of mass;
* :func:`moments_init` with ``mode="principal"``: centres of mass plus the rotation that aligns the principal
  axes (eigenvectors of the intensity-weighted second moments), choosing among the sign flips with det +1 the
  one closest to the identity (brain scans are roughly aligned; it also avoids 180-degree flips).

All return a :class:`~jaxreg.transforms.Rigid` ``T`` about the fixed centre of mass ``c_f`` with
``T(c_f) = c_m``: the pull transform that maps the fixed centre onto the moving one. Intensities are clipped at
zero (background is dark) and an optional mask restricts the moments.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Image
from jaxreg.transforms.linear import Rigid, rotation_vector

__all__ = ["center_init", "moments_init", "image_moments"]


def image_moments(image: Image, *, mask: Image | None = None) -> tuple[jax.Array, jax.Array]:
    """Centre of mass ``(ndim,)`` (world mm) and second central moments ``(ndim, ndim)`` (mm^2).

    Weights are the intensities clipped at 0 (channels summed), times ``mask`` when given.
    """
    w = image.data.astype(jnp.float32)
    if image.has_channels:
        w = jnp.sum(w, axis=-1)
    w = jnp.maximum(w, 0.0)
    if mask is not None:
        w = w * mask.data.astype(jnp.float32)
    total = jnp.sum(w)
    if not bool(total > 0):
        raise ValueError("image: no positive intensity to compute moments from (empty image or mask)")
    x = image.grid.world_coords(jnp.float32)
    com = jnp.einsum("...,...i->i", w, x) / total
    d = x - com
    cov = jnp.einsum("...,...i,...j->ij", w, d, d) / total
    return com, cov


def center_init(fixed: Image, moving: Image) -> Rigid:
    """Translation between the geometric centres of the grids (about the fixed grid centre)."""
    cf = jnp.asarray(fixed.grid.center, jnp.float32)
    cm = jnp.asarray(moving.grid.center, jnp.float32)
    t = Rigid.identity(fixed.grid.ndim, center=cf)
    return Rigid(t.rotation, cm - cf, cf)


def moments_init(
    fixed: Image,
    moving: Image,
    *,
    mode: str = "principal",
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
) -> Rigid:
    """Rigid initialisation from image moments.

    Args:
      fixed: fixed image.
      moving: moving image.
      mode: ``"com"`` (centres of mass only) or ``"principal"`` (plus principal-axes rotation).
      fixed_mask: optional mask for the fixed moments.
      moving_mask: optional mask for the moving moments.

    Returns:
      :class:`Rigid` about the fixed centre of mass mapping it onto the moving centre of mass.
    """
    if mode not in ("com", "principal"):
        raise ValueError(f"mode: expected 'com' or 'principal', got {mode!r}")
    cf, sf = image_moments(fixed, mask=fixed_mask)
    cm, sm = image_moments(moving, mask=moving_mask)
    n = fixed.grid.ndim
    rot = jnp.eye(n, dtype=jnp.float32)
    if mode == "principal":
        ef = np.linalg.eigh(np.asarray(sf, np.float64))[1]
        em = np.linalg.eigh(np.asarray(sm, np.float64))[1]
        best, best_angle = None, np.inf
        for signs in itertools.product([1.0, -1.0], repeat=n):
            r = em @ np.diag(signs) @ ef.T
            if np.linalg.det(r) < 0:
                continue
            angle = np.arccos(np.clip((np.trace(r) - (n - 2)) / 2.0, -1.0, 1.0)) if n == 3 else abs(np.arctan2(r[1, 0], r[0, 0]))
            if angle < best_angle:
                best, best_angle = r, angle
        rot = jnp.asarray(best, jnp.float32)
    return Rigid(rotation_vector(rot), cm - cf, cf)
