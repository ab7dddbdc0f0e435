"""Starts of linear registration from image geometry and moments.

* :func:`center_of_mass` and :func:`image_moments`: intensity-weighted centre (world mm) and second central
  moments (mm^2), computed separably from axis marginals (exact, since index-to-world is affine);
* :func:`center_init`: translation between the geometric centres of the two grids;
* :func:`moments_init` with ``mode="com"``: translation between intensity centres of mass;
* :func:`moments_init` with ``mode="principal"``: centres of mass plus the rotation that aligns the principal
  axes (eigenvectors of the second moments), choosing among the sign flips with det +1 the one closest to
  the identity;
* :func:`candidate_starts`: the candidates of the robust default start (``init="auto"`` of a linear stage):
  grid centres, centres of mass, and the principal-axes rotations for *every* order and sign of the axes with
  det +1 (24 in 3D, 4 in 2D). The registration engine scores all of them with the stage's similarity at its
  coarsest level in one vmapped call and keeps the best: principal axes alone flip or swap axes when fields
  of view differ (a CT and an MR cropped differently), centres of mass alone miss large rotations.

All starts are :class:`~jaxreg.transforms.Rigid` ``T`` about the fixed centre of mass ``c_f`` (the grid
centre for :func:`center_init`) with ``T(c_f) = c_m``: pull transforms that map the fixed centre onto the
moving one. Intensities are clipped at zero (background is dark) and an optional mask restricts the moments.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Image
from jaxreg.transforms.linear import Rigid, rotation_vector

__all__ = ["INITS", "candidate_starts", "center_init", "center_of_mass", "image_moments", "moments_init"]

INITS = ("auto", "moments", "com", "center", "identity")


def _weights(image: Image, mask: Image | None) -> np.ndarray:
    w = np.asarray(image.data, np.float64)
    if image.has_channels:
        w = w.sum(axis=-1)
    w = np.maximum(np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    if mask is not None:
        w = w * np.asarray(mask.data, np.float64)
    return w


def image_moments(image: Image, *, mask: Image | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass ``(ndim,)`` (world mm) and second central moments ``(ndim, ndim)`` (mm^2).

    ``c = sum_x w(x) x / sum_x w(x)``, ``S = sum_x w(x) (x - c)(x - c)^T / sum_x w(x)`` over voxel centres
    ``x`` (world mm) with weights ``w`` the intensities clipped at 0 (channels summed), times ``mask``. Computed
    in index space from one- and two-axis marginals of ``w`` (float64), then mapped through the grid affine.

    Raises:
      ValueError: when no voxel has positive weight.
    """
    w = _weights(image, mask)
    total = w.sum()
    if not total > 0:
        raise ValueError("image: no positive intensity to compute moments from (empty image or mask)")
    n = image.grid.ndim
    ar = [np.arange(s, dtype=np.float64) for s in w.shape]
    marg = [w.sum(axis=tuple(a for a in range(n) if a != ax)) for ax in range(n)]
    mean = np.array([marg[ax] @ ar[ax] for ax in range(n)]) / total
    second = np.zeros((n, n))
    for a in range(n):
        second[a, a] = marg[a] @ (ar[a] ** 2) / total
        for b in range(a + 1, n):
            m2 = w.sum(axis=tuple(k for k in range(n) if k not in (a, b)))
            second[a, b] = second[b, a] = ar[a] @ m2 @ ar[b] / total
    cov_idx = second - np.outer(mean, mean)
    aff = np.asarray(image.grid.affine, np.float64)
    lin = aff[:n, :n]
    return lin @ mean + aff[:n, n], lin @ cov_idx @ lin.T


def center_of_mass(image: Image, *, mask: Image | None = None) -> np.ndarray:
    """Intensity-weighted centre ``(ndim,)`` in world mm (weights clipped at 0); see :func:`image_moments`."""
    w = _weights(image, mask)
    total = w.sum()
    if not total > 0:
        raise ValueError(
            "image: no positive intensity to compute a centre of mass from (empty image or mask)"
        )
    n = image.grid.ndim
    idx = (
        np.array(
            [w.sum(axis=tuple(a for a in range(n) if a != ax)) @ np.arange(w.shape[ax]) for ax in range(n)]
        )
        / total
    )
    aff = np.asarray(image.grid.affine, np.float64)
    return aff[:n, :n] @ idx + aff[:n, n]


def _rigid(rotation: np.ndarray, cf: np.ndarray, cm: np.ndarray) -> Rigid:
    return Rigid(
        jax.device_put(np.asarray(_rotation_vectors(np.asarray(rotation, np.float32)[None]))[0]),
        jnp.asarray(cm - cf, jnp.float32),
        jnp.asarray(cf, jnp.float32),
    )


def center_init(fixed: Image, moving: Image) -> Rigid:
    """Translation between the geometric centres of the grids (about the fixed grid centre)."""
    cf = np.asarray(fixed.grid.center, np.float64)
    cm = np.asarray(moving.grid.center, np.float64)
    return _rigid(np.eye(fixed.grid.ndim), cf, cm)


def _angle(r: np.ndarray) -> float:
    n = r.shape[0]
    if n == 3:
        return float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    return float(abs(np.arctan2(r[1, 0], r[0, 0])))


def _principal_rotations(sf: np.ndarray, sm: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Rotations ``R = E_m P E_f^T`` for every signed permutation ``P`` with ``det R = +1``, closest first."""
    n = sf.shape[0]
    ef = np.linalg.eigh(sf)[1]
    em = np.linalg.eigh(sm)[1]
    out = []
    for perm in itertools.permutations(range(n)):
        for signs in itertools.product((1.0, -1.0), repeat=n):
            p = np.zeros((n, n))
            p[list(perm), list(range(n))] = signs
            r = em @ p @ ef.T
            if np.linalg.det(r) < 0:
                continue
            label = "".join(("+" if s > 0 else "-") + "xyz"[k] for k, s in zip(perm, signs))
            # the axis labels refer to the eigenvector bases (whose signs are arbitrary): the angle says how far
            # the start actually rotates
            out.append((f"principal({label}, {np.degrees(_angle(r)):.0f} deg)", r))
    out.sort(key=lambda t: _angle(t[1]))
    return out


def moments_init(
    fixed: Image,
    moving: Image,
    *,
    mode: str = "principal",
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
) -> Rigid:
    """Rigid start from image moments.

    Args:
      fixed: fixed image.
      moving: moving image.
      mode: ``"com"`` (centres of mass only) or ``"principal"`` (plus the principal-axes rotation closest to
        the identity among those with det +1).
      fixed_mask: optional mask for the fixed moments.
      moving_mask: optional mask for the moving moments.

    Returns:
      :class:`Rigid` about the fixed centre of mass mapping it onto the moving centre of mass.
    """
    if mode not in ("com", "principal"):
        raise ValueError(f"mode: expected 'com' or 'principal', got {mode!r}")
    cf, sf = image_moments(fixed, mask=fixed_mask)
    cm, sm = image_moments(moving, mask=moving_mask)
    rot = np.eye(fixed.grid.ndim) if mode == "com" else _principal_rotations(sf, sm)[0][1]
    return _rigid(rot, cf, cm)


def candidate_starts(
    fixed: Image,
    moving: Image,
    *,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
) -> list[tuple[str, Rigid]]:
    """Named candidate starts of a linear registration, for scoring by the similarity.

    ``"identity"`` (the headers' world frames as they are: right for scans of one patient in one frame, e.g. a
    planning CT and a daily MR whose fields of view differ), ``"center"`` (grid centres), ``"com"`` (centres of
    mass, no rotation) and ``"principal(..., A deg)"`` for
    every ordering and sign of the principal axes with det +1 (24 in 3D, 4 in 2D; the label lists, for each
    fixed eigenvector, the moving eigenvector and sign it is mapped to, and ``A`` the rotation angle of the
    start), the one closest to the identity first. Every candidate is
    a :class:`Rigid` about the fixed centre of mass (so all can be stacked and vmapped).
    """
    cf, sf = image_moments(fixed, mask=fixed_mask)
    cm, sm = image_moments(moving, mask=moving_mask)
    n = fixed.grid.ndim
    gf = np.asarray(fixed.grid.center, np.float64)
    gm = np.asarray(moving.grid.center, np.float64)
    # the grid-centre start about c_f: T(x) = x + (gm - gf), so T(c_f) = c_f + gm - gf
    named = [("identity", np.eye(n), cf), ("center", np.eye(n), cf + gm - gf), ("com", np.eye(n), cm)]
    named += [(name, r, cm) for name, r in _principal_rotations(sf, sm)]
    # every rotation vector in one compiled call (one program, not one per operation and candidate)
    vectors = np.asarray(_rotation_vectors(np.stack([r for _, r, _ in named]).astype(np.float32)))
    put = lambda x: jax.device_put(np.asarray(x, np.float32))  # noqa: E731 - host values, no program compiled
    return [(name, Rigid(put(v), put(c - cf), put(cf))) for (name, _, c), v in zip(named, vectors)]


@jit
def _rotation_vectors(rotations: jnp.ndarray) -> jnp.ndarray:
    """:func:`~jaxreg.transforms.linear.rotation_vector` of each of ``(K, n, n)`` rotations."""
    return jax.vmap(rotation_vector)(rotations)
