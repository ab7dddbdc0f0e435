"""Closed-form point-based registration: rigid (Kabsch), similarity (Umeyama) and affine least squares.

Given corresponding points ``x_i`` in the fixed space and ``y_i`` in the moving space (world mm, rows in
array-axis order) and optional non-negative weights ``w_i``, each fit minimises

    ``sum_i w_i |T(x_i) - y_i|^2``

over its family and returns the minimiser as a jaxreg transform. The direction is jaxreg's (pull): ``T`` maps
*fixed* points to *moving* points, ``T(x_i) ~ y_i``, which is what ``warp(moving, T, fixed_grid)`` needs to
bring the moving image onto the fixed one. (To carry moving-space points into the fixed space use
``jaxreg.invert(T)``.) Every result is expressed about the weighted centroid of the fixed points,
``center = x_bar``, so that its parameters are well conditioned, and so that ``T(x_bar) = y_bar``:

=====================  =============================================================  =====================
function               linear part                                                    returns
=====================  =============================================================  =====================
:func:`fit_rigid`      ``R = U D V^T`` from ``H = sum w (y - y_bar)(x - x_bar)^T``     :class:`Rigid`
:func:`fit_similarity` ``s R`` with ``s = tr(D S) / sum w |x - x_bar|^2`` (Umeyama)     :class:`Similarity`
:func:`fit_affine`     ``A = H C^-1`` with ``C = sum w (x - x_bar)(x - x_bar)^T``        :class:`Affine`
=====================  =============================================================  =====================

where ``H = U S V^T`` is the SVD and ``D = diag(1, ..., 1, det(U V^T))`` turns a best-fitting reflection into
the best proper rotation (Kabsch 1976; Arun et al. 1987; Umeyama, IEEE TPAMI 13(4) 1991). The affine solution is
the normal-equation solution ``X' X^T (X X^T)^-1`` in homogeneous coordinates (``X``, ``X'`` the ``(n+1, N)``
homogeneous fixed and moving points), written about the centroid, which separates the translation and is
better conditioned.

Validation. Shapes are static, so shape errors always raise. Whether a configuration is degenerate (collinear
points for a 3-D rigid fit, coplanar points for a 3-D affine fit, ...) depends on values, judged from singular
values relative to the size of the point set (tolerance ``sqrt(eps)`` of the dtype). With concrete inputs the
fits check eagerly and raise ``ValueError`` naming the argument. Under ``jax.jit`` / ``jax.vmap`` / ``grad`` the
inputs are tracers and cannot be checked: a degenerate configuration then yields a transform whose parameters
are all NaN (use :func:`is_degenerate` to test a configuration inside traced code).

All fits are pure ``jnp`` functions of one point set; batch them with ``jax.vmap``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.transforms.linear import Affine, Rigid, Similarity, rotation_vector

__all__ = ["MODELS", "fit_affine", "fit_rigid", "fit_similarity", "fit_transform", "is_degenerate"]

Model = Literal["rigid", "similarity", "affine"]
MODELS: tuple[str, ...] = ("rigid", "similarity", "affine")


class _Moments(NamedTuple):
    """Weighted first and second moments of a pair of point sets."""

    x_bar: jax.Array  # (n,) fixed centroid
    y_bar: jax.Array  # (n,) moving centroid
    xc: jax.Array  # (N, n) centred fixed points
    yc: jax.Array  # (N, n) centred moving points
    w: jax.Array  # (N,) weights normalised to sum 1


# -- argument checks -------------------------------------------------------------------------------------------
def min_points(model: str, ndim: int) -> int:
    """Fewest point pairs that determine a fit: rigid/similarity ``ndim`` (3-D: 3, 2-D: 2), affine ``ndim+1``."""
    _check_model(model)
    return ndim + 1 if model == "affine" else ndim


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {model!r}")


def _float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _is_concrete(*arrays: Any) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _check_points(points: jax.Array, name: str) -> None:
    if points.ndim != 2 or points.shape[-1] not in (2, 3):
        raise ValueError(
            f"{name}: expected shape (N, ndim) with ndim 2 or 3 (world mm, one point per row), got "
            f"{tuple(points.shape)}"
        )


def _prepare(fixed_points: Any, moving_points: Any, weights: Any, model: str):
    """Static checks (always) and value checks (when concrete); returns float arrays of one dtype."""
    _check_model(model)
    x, y = _float(fixed_points), _float(moving_points)
    _check_points(x, "fixed_points")
    _check_points(y, "moving_points")
    if x.shape != y.shape:
        raise ValueError(
            f"fixed_points/moving_points: expected the same shape (N, ndim), one row per corresponding pair, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    n_pts, n = x.shape
    need = min_points(model, n)
    if n_pts < need:
        raise ValueError(
            f"fixed_points: a {n}-D {model} fit needs at least {need} point pairs"
            + (" (not all on one line)" if model != "affine" and n == 3 else "")
            + (f" (not all in one {'plane' if n == 3 else 'line'})" if model == "affine" else "")
            + f", got {n_pts}"
        )
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    if weights is None:
        w = jnp.ones((n_pts,), dtype)
    else:
        w = _float(weights).astype(dtype)
        if w.shape != (n_pts,):
            raise ValueError(f"weights: expected shape ({n_pts},), one per point pair, got {tuple(w.shape)}")
    if _is_concrete(x, y, w):
        _check_values(x, y, w, model)
    return x, y, w


def _check_values(x: jax.Array, y: jax.Array, w: jax.Array, model: str) -> None:
    """Eager checks of concrete inputs, in NumPy (no dispatch or compilation per shape)."""
    xn, yn, wn = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    for name, a in (("fixed_points", xn), ("moving_points", yn), ("weights", wn)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    if np.any(wn < 0):
        raise ValueError("weights: expected non-negative values")
    n_pos = int(np.sum(wn > 0))
    need = min_points(model, x.shape[-1])
    if n_pos < need:
        raise ValueError(
            f"weights: a {model} fit needs at least {need} points with positive weight, got {n_pos}"
        )
    fx, fy = _degeneracy(xn, yn, wn, model, xp=np, rtol=_rtol(x.dtype))
    n = x.shape[-1]
    if fx:
        what = {
            ("affine", 3): "coplanar: a 3-D affine fit needs 4 points not all in one plane",
            ("affine", 2): "collinear: a 2-D affine fit needs 3 points not all on one line",
            ("rigid", 3): "collinear: a 3-D fit needs 3 points not all on one line",
            ("rigid", 2): "coincident: a 2-D fit needs 2 distinct points",
        }[("affine" if model == "affine" else "rigid", n)]
        raise ValueError(f"fixed_points: the (positively weighted) points are {what}")
    if fy:
        what = "collinear" if n == 3 else "coincident"
        raise ValueError(
            f"moving_points: the (positively weighted) points are {what}, so the rotation is not determined"
        )


def _moments(x: jax.Array, y: jax.Array, w: jax.Array) -> _Moments:
    w = w / jnp.sum(w)
    x_bar = w @ x
    y_bar = w @ y
    return _Moments(x_bar, y_bar, x - x_bar, y - y_bar, w)


def _rtol(dtype: Any) -> float:
    return float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def _degeneracy(
    x: Any, y: Any, w: Any, model: str, *, xp: Any = jnp, rtol: float | None = None
) -> tuple[Any, Any]:
    """Flags ``(fixed degenerate, moving degenerate)`` as boolean scalars (moving: never, for affine).

    A point set is degenerate when the singular value of its (weighted, centred) coordinates that the model
    needs (rigid/similarity: the ``(ndim-1)``-th, affine: the ``ndim``-th) is at most ``sqrt(eps)`` times the RMS
    distance of the points from the world origin (so coincident points far from the origin count too). ``xp`` is
    ``jax.numpy`` (traceable) or ``numpy`` (eager checks).
    """
    n = x.shape[-1]
    rtol = _rtol(x.dtype) if rtol is None else rtol
    w = w / xp.sum(w)
    sw = xp.sqrt(w)[:, None]
    tiny = np.finfo(np.float32).tiny

    def bad(p: Any, k: int) -> Any:
        pc = p - w @ p
        s = xp.linalg.svd(sw * pc, compute_uv=False)
        ref = xp.sqrt(w @ xp.sum(p * p, -1)) + tiny
        return s[k] <= rtol * ref

    if model == "affine":
        return bad(x, n - 1), xp.zeros((), bool)
    return bad(x, n - 2), bad(y, n - 2)


def is_degenerate(
    fixed_points: jax.Array,
    moving_points: jax.Array,
    *,
    model: Model = "rigid",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Whether a configuration does not determine a ``model`` fit (traceable; the fits' NaN condition).

    Args:
      fixed_points: ``(N, ndim)`` world mm.
      moving_points: ``(N, ndim)`` world mm.
      model: ``"rigid"``, ``"similarity"`` or ``"affine"`` (static).
      weights: ``(N,)`` non-negative, or None for equal weights.

    Returns:
      Boolean scalar: True for collinear/coincident points (rigid, similarity), coplanar (3-D) or collinear
      (2-D) fixed points (affine), judged by singular values against ``sqrt(eps)`` of the set's size.
    """
    _check_model(model)
    x, y = _float(fixed_points), _float(moving_points)
    _check_points(x, "fixed_points")
    _check_points(y, "moving_points")
    if x.shape != y.shape:
        raise ValueError(f"fixed_points/moving_points: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = jnp.result_type(x.dtype, y.dtype)
    w = jnp.ones(x.shape[:1], dtype) if weights is None else _float(weights).astype(dtype)
    if w.shape != x.shape[:1]:
        raise ValueError(f"weights: expected shape ({x.shape[0]},), one per point pair, got {tuple(w.shape)}")
    fx, fy = _degeneracy(x.astype(dtype), y.astype(dtype), w, model)
    return fx | fy


# -- kernels ---------------------------------------------------------------------------------------------------
def _nan_unless(ok: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jnp.where(ok, a, jnp.nan) for a in arrays)


def _kabsch(m: _Moments) -> tuple[jax.Array, jax.Array]:
    """Best proper rotation ``R`` (``(n, n)``) and ``tr(D S)`` for the weighted centred moments."""
    h = (m.w[:, None] * m.yc).T @ m.xc  # (n, n) cross-covariance sum w y x^T
    u, s, vt = jnp.linalg.svd(h)
    d = jnp.sign(jnp.linalg.det(u @ vt))
    d = jnp.where(d == 0, 1.0, d).astype(h.dtype)
    diag = jnp.ones_like(s).at[-1].set(d)
    r = (u * diag[None, :]) @ vt
    return r, jnp.sum(diag * s)


def _rigid(x: jax.Array, y: jax.Array, w: jax.Array) -> Rigid:
    m = _moments(x, y, w)
    r, _ = _kabsch(m)
    bad = jnp.any(jnp.stack(_degeneracy(x, y, w, "rigid")))
    rot, t, c = _nan_unless(~bad, rotation_vector(r), m.y_bar - m.x_bar, m.x_bar)
    return Rigid(rot, t, c)


def _similarity(x: jax.Array, y: jax.Array, w: jax.Array) -> Similarity:
    m = _moments(x, y, w)
    r, trace_ds = _kabsch(m)
    var_x = m.w @ jnp.sum(m.xc * m.xc, -1)
    scale = trace_ds / var_x
    bad = jnp.any(jnp.stack(_degeneracy(x, y, w, "similarity"))) | ~(scale > 0)
    rot, log_s, t, c = _nan_unless(
        ~bad, rotation_vector(r), jnp.log(jnp.where(bad, 1.0, scale)), m.y_bar - m.x_bar, m.x_bar
    )
    return Similarity(rot, log_s, t, c)


def _affine(x: jax.Array, y: jax.Array, w: jax.Array) -> Affine:
    m = _moments(x, y, w)
    wx = m.w[:, None] * m.xc
    c = wx.T @ m.xc  # (n, n)  sum w x x^T
    h = (m.w[:, None] * m.yc).T @ m.xc  # (n, n)  sum w y x^T
    bad = _degeneracy(x, y, w, "affine")[0]
    c = jnp.where(bad, jnp.eye(c.shape[0], dtype=c.dtype), c)
    a = jnp.linalg.solve(c, h.T).T  # H C^-1 (C symmetric)
    a, t, ctr = _nan_unless(~bad, a, m.y_bar - m.x_bar, m.x_bar)
    return Affine(a, t, ctr)


_KERNELS = {"rigid": _rigid, "similarity": _similarity, "affine": _affine}


@functools.partial(jax.jit, static_argnames=("model",))
def _fit(x: jax.Array, y: jax.Array, w: jax.Array, model: str) -> Any:
    # One compiled kernel per (shape, dtype, model): eager calls then cost one dispatch, not one per operation.
    return _KERNELS[model](x, y, w)


# -- public fits -----------------------------------------------------------------------------------------------
def fit_rigid(
    fixed_points: jax.Array, moving_points: jax.Array, *, weights: jax.Array | None = None
) -> Rigid:
    """Least-squares rigid transform with ``T(fixed_i) ~ moving_i`` (Kabsch / orthogonal Procrustes).

    Minimises ``sum_i w_i |R (x_i - x_bar) + y_bar - y_i|^2`` over proper rotations ``R`` (det +1: when the
    unconstrained optimum is a reflection, the last singular direction is flipped, Kabsch's correction).

    Args:
      fixed_points: ``(N, ndim)`` fixed-space points ``x_i``, world mm, ``ndim`` 2 or 3; ``N >= ndim``, not
        all on one line (3-D) or not all coincident (2-D).
      moving_points: ``(N, ndim)`` corresponding moving-space points ``y_i``, world mm.
      weights: ``(N,)`` non-negative weights (e.g. ``1 / FLE_i^2``); None for equal weights. Only their ratios
        matter.

    Returns:
      :class:`~jaxreg.transforms.linear.Rigid` mapping fixed to moving points, with ``center`` the weighted
      fixed centroid ``x_bar`` and ``translation = y_bar - x_bar``; ``warp(moving, T, fixed_grid)`` aligns the
      moving image to the fixed one. All parameters are NaN for a degenerate configuration under tracing.

    Raises:
      ValueError: shapes differ or are not ``(N, 2|3)``, too few points, non-finite values, negative weights,
        or (concrete inputs only) a degenerate configuration; the message names the argument.
    """
    return _fit(*_prepare(fixed_points, moving_points, weights, "rigid"), "rigid")


def fit_similarity(
    fixed_points: jax.Array, moving_points: jax.Array, *, weights: jax.Array | None = None
) -> Similarity:
    """Least-squares similarity transform ``T(x) = s R (x - x_bar) + y_bar`` with ``T(fixed_i) ~ moving_i``.

    Umeyama's closed form: ``R`` as in :func:`fit_rigid` and ``s = tr(D S) / sum_i w_i |x_i - x_bar|^2``
    (weights normalised to sum 1). The scale maps fixed-space distances to moving-space distances.

    Args:
      fixed_points: ``(N, ndim)`` world mm (as for :func:`fit_rigid`).
      moving_points: ``(N, ndim)`` world mm.
      weights: ``(N,)`` non-negative, or None.

    Returns:
      :class:`~jaxreg.transforms.linear.Similarity` about the fixed centroid (``log_scale = log s``); NaN
      parameters for a degenerate configuration under tracing.

    Raises:
      ValueError: as :func:`fit_rigid`.
    """
    return _fit(*_prepare(fixed_points, moving_points, weights, "similarity"), "similarity")


def fit_affine(
    fixed_points: jax.Array, moving_points: jax.Array, *, weights: jax.Array | None = None
) -> Affine:
    """Least-squares affine transform ``T(x) = A (x - x_bar) + y_bar`` with ``T(fixed_i) ~ moving_i``.

    ``A = H C^-1`` with ``H = sum_i w_i (y_i - y_bar)(x_i - x_bar)^T`` and ``C = sum_i w_i (x_i - x_bar)
    (x_i - x_bar)^T``: the weighted normal-equation solution ``X' W X^T (X W X^T)^-1`` in homogeneous
    coordinates, computed about the centroid.

    Args:
      fixed_points: ``(N, ndim)`` world mm; ``N >= ndim + 1`` not all in one plane (3-D) / line (2-D).
      moving_points: ``(N, ndim)`` world mm (may be degenerate: the fit is then a singular ``A``).
      weights: ``(N,)`` non-negative, or None.

    Returns:
      :class:`~jaxreg.transforms.linear.Affine` about the fixed centroid; NaN parameters for a degenerate
      configuration under tracing.

    Raises:
      ValueError: as :func:`fit_rigid`.
    """
    return _fit(*_prepare(fixed_points, moving_points, weights, "affine"), "affine")


def fit_transform(
    fixed_points: jax.Array,
    moving_points: jax.Array,
    *,
    model: Model = "rigid",
    weights: jax.Array | None = None,
) -> Rigid | Similarity | Affine:
    """:func:`fit_rigid`, :func:`fit_similarity` or :func:`fit_affine`, chosen by ``model`` (static string).

    Args:
      fixed_points: ``(N, ndim)`` world mm.
      moving_points: ``(N, ndim)`` world mm, ``T(fixed_i) ~ moving_i``.
      model: ``"rigid"``, ``"similarity"`` or ``"affine"``.
      weights: ``(N,)`` non-negative, or None.

    Returns:
      The fitted transform (fixed -> moving).
    """
    _check_model(model)
    return _fit(*_prepare(fixed_points, moving_points, weights, model), model)
