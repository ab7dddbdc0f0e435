"""Predicting target registration error from the fiducial configuration, and checking it by simulation.

Fitzpatrick, West and Maurer (IEEE TMI 17(5):694-702, 1998, "Predicting error in rigid-body point-based
registration") showed that, for ``N`` fiducials with identical, independent, isotropic localisation error of RMS
``FLE_rms``, the expected squared TRE of a rigid fit at a target ``r`` is, to first order in FLE,

    ``<TRE^2(r)> = (FLE_rms^2 / N) (1 + (1/3) sum_k d_k^2 / f_k^2)``          (3-D, rigid)

where, for each principal axis ``k`` of the fiducial configuration (eigenvectors of the covariance of the
fiducial positions about their centroid), ``d_k`` is the distance of the target from that axis and ``f_k`` the
RMS distance of the fiducials from it. The ``1`` is the translation error (the mean of ``N`` FLEs); the sum is
the rotation error, whose covariance is ``(FLE_rms^2 / 3) M^-1`` with ``M = sum_i (|x_i|^2 I - x_i x_i^T) =
N diag(f_k^2)`` the configuration's inertia tensor. The same first-order least-squares analysis gives:

* 2-D rigid: one rotation, about the centroid, ``<TRE^2> = (FLE_rms^2 / N) (1 + (1/2) d^2 / f^2)`` with ``d``
  the target's distance from the fiducial centroid and ``f^2 = (1/N) sum_i |x_i - x_bar|^2``;
* similarity: the scale error is uncorrelated with rotation and translation (``sum_i x_i . (w x x_i) = 0``)
  and adds ``(1/ndim) d^2 / f^2`` (same ``d``, ``f`` as the 2-D rigid case) inside the bracket;
* affine: the fit is an ordinary linear regression, so the result is exact (no linearisation) for FLE on
  the moving points:
  ``<TRE^2> = (FLE_rms^2 / N) (1 + (r - x_bar)^T C^-1 (r - x_bar))``, ``C = (1/N) sum_i (x_i - x_bar)(x_i -
  x_bar)^T``, i.e. ``sum_k d_k^2 / lambda_k`` over the principal axes with ``d_k`` the coordinate along axis k.

:func:`simulate_tre` checks these predictions by Monte Carlo: it perturbs the fiducials with Gaussian FLE of
per-axis standard deviation ``FLE_rms / sqrt(ndim)``, refits every draw with the vmapped closed-form fit and
measures the TRE at the targets. Only one point set is perturbed (the moving one); to first order this is the
same as splitting the FLE between the two spaces with ``FLE_rms^2 = FLE_fixed^2 + FLE_moving^2``.

:func:`drop_worst_fiducial` reproduces a common intra-operative "sanity check": drop the fiducial with the
largest FRE and re-register. The FRE always falls, but the predicted (and simulated) TRE rises, because the
fiducial was only unlucky, not wrong, and fewer fiducials spread over a smaller region register worse
(Fitzpatrick, "Fiducial registration error and target registration error are uncorrelated", Proc. SPIE 7261,
2009; Danilchenko and Fitzpatrick, IEEE TMI 30(3) 2011, for the first-order theory with weights and
anisotropic FLE, not implemented here).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.points.errors import fle_from_fre, fre, registration_errors
from jaxreg.points.fit import _KERNELS, Model, _check_model, _fit, _float, _prepare, min_points
from jaxreg.transforms.base import Transform

__all__ = [
    "DropWorstFiducial",
    "PrincipalAxes",
    "TRESimulation",
    "drop_worst_fiducial",
    "leave_one_out_errors",
    "predict_tre",
    "principal_axes",
    "simulate_tre",
]


class PrincipalAxes(NamedTuple):
    """Principal axes of a fiducial configuration (see :func:`principal_axes`).

    Attributes:
      centroid: ``(ndim,)`` world mm.
      axes: ``(ndim, ndim)`` unit axes as rows, in order of increasing spread ``variance``.
      variance: ``(ndim,)`` mean squared coordinate of the fiducials along each axis, mm^2 (eigenvalues of the
        covariance ``C``).
      rms_distance: ``(ndim,)`` RMS distance ``f_k`` of the fiducials from each axis (the line through the
        centroid along it), mm: ``f_k^2 = trace(C) - variance_k``.
    """

    centroid: jax.Array
    axes: jax.Array
    variance: jax.Array
    rms_distance: jax.Array


def _check_configuration(points: Any, name: str) -> jax.Array:
    x = _float(points)
    if x.ndim != 2 or x.shape[-1] not in (2, 3) or x.shape[0] < 2:
        raise ValueError(
            f"{name}: expected shape (N, ndim) with N >= 2 and ndim 2 or 3, world mm, got {tuple(x.shape)}"
        )
    return x


def principal_axes(points: jax.Array) -> PrincipalAxes:
    """Principal axes of a point configuration: eigen-decomposition of its covariance about the centroid.

    Args:
      points: ``(N, ndim)`` world mm.

    Returns:
      :class:`PrincipalAxes`.
    """
    x = _check_configuration(points, "points")
    c = jnp.mean(x, axis=0)
    xc = x - c
    cov = xc.T @ xc / x.shape[0]
    lam, vec = jnp.linalg.eigh(cov)
    lam = jnp.maximum(lam, 0.0)
    f2 = jnp.sum(lam) - lam
    return PrincipalAxes(c, vec.T, lam, jnp.sqrt(f2))


def predict_tre(
    fiducials: jax.Array, targets: jax.Array, *, fle_rms: jax.Array, model: Model = "rigid"
) -> jax.Array:
    """Expected RMS TRE ``sqrt(<TRE^2(r)>)`` at targets, from the fiducial configuration (FWM 1998).

    See the module docstring for the equations (3-D rigid: Fitzpatrick, West and Maurer 1998; 2-D rigid,
    similarity and affine: the same first-order least-squares analysis). Assumes equal weights and identical,
    independent, isotropic FLE.

    Args:
      fiducials: ``(N, ndim)`` fiducial positions (either space: the prediction depends only on their
        configuration), world mm.
      targets: ``(..., ndim)`` target positions in the same space, world mm.
      fle_rms: RMS fiducial localisation error ``sqrt(<|FLE|^2>)`` in mm (traced; e.g. from
        :func:`~jaxreg.points.fle_from_fre`).
      model: ``"rigid"``, ``"similarity"`` or ``"affine"`` (static).

    Returns:
      ``(...)`` predicted RMS TRE in mm (inf where the configuration does not determine the fit).
    """
    _check_model(model)
    x = _check_configuration(fiducials, "fiducials")
    n_pts, n = x.shape
    r = _float(targets).astype(x.dtype)
    if r.ndim < 1 or r.shape[-1] != n:
        raise ValueError(f"targets: expected shape (..., {n}) world mm, got {tuple(r.shape)}")
    if n_pts < min_points(model, n):
        raise ValueError(
            f"fiducials: a {n}-D {model} fit needs at least {min_points(model, n)} fiducials, got {n_pts}"
        )
    return _predict(x, r, jnp.asarray(fle_rms, x.dtype), model)


@functools.partial(jax.jit, static_argnames=("model",))
def _predict(x: jax.Array, r: jax.Array, fle_rms: jax.Array, model: str) -> jax.Array:
    n_pts, n = x.shape
    pa = principal_axes(x)
    q = (r - pa.centroid) @ pa.axes.T  # target coordinates along the principal axes
    q2 = q * q
    total = jnp.sum(pa.variance)
    if model == "affine":
        term = jnp.sum(q2 / pa.variance, axis=-1)
    else:
        d2 = jnp.sum(q2, axis=-1)
        if n == 3:
            dk2 = d2[..., None] - q2  # squared distance of the target from each axis
            term = jnp.sum(dk2 / pa.rms_distance**2, axis=-1) / 3.0
        else:
            term = 0.5 * d2 / total
        if model == "similarity":
            term = term + d2 / total / n
    return jnp.sqrt(fle_rms**2 / n_pts * (1.0 + term))


class TRESimulation(NamedTuple):
    """Result of :func:`simulate_tre`.

    Attributes:
      tre_rms: ``(M,)`` RMS TRE over the draws, mm.
      tre_rms_se: ``(M,)`` standard error of ``tre_rms`` (delta method: ``sd(TRE^2) / (2 sqrt(S) tre_rms)``), mm.
      fre_rms: ``()`` RMS of the per-draw RMS FRE, mm.
      tre: ``(S, M)`` TRE of each draw at each target, mm.
      fre: ``(S,)`` RMS FRE of each draw, mm.
    """

    tre_rms: jax.Array
    tre_rms_se: jax.Array
    fre_rms: jax.Array
    tre: jax.Array
    fre: jax.Array


@functools.partial(jax.jit, static_argnames=("num_samples", "model"))
def _simulate(key, x, w, r, fle_rms, num_samples, model):
    n = x.shape[-1]
    sigma = jnp.asarray(fle_rms, x.dtype) / np.sqrt(n)
    noise = sigma * jax.random.normal(key, (num_samples, *x.shape), x.dtype)
    fit = _KERNELS[model]

    def one(eps):
        y = x + eps
        t = fit(x, y, w)
        return registration_errors(t, r, r), fre(t, x, y, weights=w)

    tre_s, fre_s = jax.vmap(one)(noise)
    ms = jnp.mean(tre_s**2, axis=0)
    rms = jnp.sqrt(ms)
    se = jnp.std(tre_s**2, axis=0, ddof=1) / np.sqrt(num_samples) / (2.0 * rms)
    return TRESimulation(rms, se, jnp.sqrt(jnp.mean(fre_s**2)), tre_s, fre_s)


def simulate_tre(
    key: jax.Array,
    fiducials: jax.Array,
    targets: jax.Array,
    *,
    fle_rms: jax.Array,
    num_samples: int = 2000,
    model: Model = "rigid",
    weights: jax.Array | None = None,
) -> TRESimulation:
    """Monte Carlo TRE: perturb the fiducials with random FLE, refit, and measure the error at the targets.

    Each of ``num_samples`` draws adds independent isotropic Gaussian noise of per-axis standard deviation
    ``fle_rms / sqrt(ndim)`` (so ``<|FLE|^2> = fle_rms^2``) to every fiducial, fits ``model`` from the exact
    positions to the perturbed ones (vmapped closed form), and records ``|T(r) - r|`` at each target (the true
    transform is the identity; the fits are equivariant, so any true rigid transform gives the same errors).

    Args:
      key: PRNG key.
      fiducials: ``(N, ndim)`` fiducial configuration, world mm.
      targets: ``(M, ndim)`` targets, world mm.
      fle_rms: RMS FLE in mm (traced).
      num_samples: number of draws ``S`` (static).
      model: fitted model (static).
      weights: ``(N,)`` non-negative fit weights (zero leaves a fiducial out, with the same random draws), or
        None.

    Returns:
      :class:`TRESimulation`. Compare ``tre_rms`` with :func:`predict_tre`; its relative standard error is
      about ``1 / sqrt(2 S)`` (isotropic TRE) to ``sqrt(2 / S) / 2`` (TRE along one direction).
    """
    x, _, w = _prepare(fiducials, fiducials, weights, model)
    r = _float(targets).astype(x.dtype)
    if r.ndim != 2 or r.shape[-1] != x.shape[-1]:
        raise ValueError(f"targets: expected shape (M, {x.shape[-1]}) world mm, got {tuple(r.shape)}")
    if int(num_samples) < 2:
        raise ValueError(f"num_samples: expected at least 2 draws, got {num_samples}")
    return _simulate(key, x, w, r, fle_rms, int(num_samples), model)


def leave_one_out_errors(
    fixed_points: jax.Array,
    moving_points: jax.Array,
    *,
    model: Model = "rigid",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Error at each fiducial when it is left out of the fit: ``|T_(-i)(x_i) - y_i|`` (mm).

    Each fiducial in turn is given weight zero, the others are fitted (vmapped), and the left-out fiducial acts
    as a target. The values are (noisy) TRE samples at the fiducial positions, including their FLE.

    Args:
      fixed_points: ``(N, ndim)`` world mm.
      moving_points: ``(N, ndim)`` world mm.
      model: ``"rigid"``, ``"similarity"`` or ``"affine"`` (static).
      weights: ``(N,)`` non-negative fit weights, or None.

    Returns:
      ``(N,)`` mm; NaN where the remaining fiducials are degenerate for ``model``.

    Raises:
      ValueError: as :func:`~jaxreg.points.fit_rigid`, or fewer than one more fiducial than the fit needs.
    """
    x, y, w = _prepare(fixed_points, moving_points, weights, model)
    n_pts, n = x.shape
    if n_pts - 1 < min_points(model, n):
        raise ValueError(
            f"fixed_points: leaving one out of a {n}-D {model} fit needs at least {min_points(model, n) + 1} "
            f"fiducials, got {n_pts}"
        )
    return _leave_one_out(x, y, w, model)


@functools.partial(jax.jit, static_argnames=("model",))
def _leave_one_out(x, y, w, model):
    masks = w[None, :] * (1.0 - jnp.eye(x.shape[0], dtype=w.dtype))
    fit = _KERNELS[model]

    def one(mask, xi, yi):
        return registration_errors(fit(x, y, mask), xi, yi)

    return jax.vmap(one)(masks, x, y)


class DropWorstFiducial(NamedTuple):
    """Result of :func:`drop_worst_fiducial`: the fit with all ``N`` fiducials ("before") and without the one
    with the largest FRE ("after"). Distances in mm.

    Attributes:
      dropped: index of the dropped fiducial (Python int).
      fiducial_errors: ``(N,)`` per-fiducial FRE of the fit with all fiducials.
      fle_rms: ``()`` RMS FLE used for the predictions and simulations.
      fre_before, fre_after: ``()`` RMS FRE over the fiducials of each fit.
      predicted_tre_before, predicted_tre_after: ``(M,)`` :func:`predict_tre` at the targets.
      simulated_tre_before, simulated_tre_after: ``(M,)`` :func:`simulate_tre` RMS TRE at the targets (the
        same random draws for the remaining fiducials).
      tre_before, tre_after: ``(M,)`` actual TRE when the true moving-space targets were given, else None.
      transform_before, transform_after: the two fitted transforms (fixed -> moving).
    """

    dropped: int
    fiducial_errors: jax.Array
    fle_rms: jax.Array
    fre_before: jax.Array
    fre_after: jax.Array
    predicted_tre_before: jax.Array
    predicted_tre_after: jax.Array
    simulated_tre_before: jax.Array
    simulated_tre_after: jax.Array
    tre_before: jax.Array | None
    tre_after: jax.Array | None
    transform_before: Transform
    transform_after: Transform


def drop_worst_fiducial(
    key: jax.Array,
    fixed_points: jax.Array,
    moving_points: jax.Array,
    fixed_targets: jax.Array,
    *,
    moving_targets: jax.Array | None = None,
    fle_rms: jax.Array | None = None,
    model: Model = "rigid",
    num_samples: int = 2000,
) -> DropWorstFiducial:
    """The "drop the worst fiducial and re-register" sanity check, with predicted and simulated TRE.

    Fits all ``N`` fiducials, drops the one with the largest FRE, refits the other ``N - 1``, and reports FRE
    and TRE (predicted by :func:`predict_tre`, simulated by :func:`simulate_tre`) before and after. The FLE is a
    property of the localisation process, not of the fit, so the same ``fle_rms`` serves both fits; when it is
    not given it is estimated from the FRE of the full fit (:func:`~jaxreg.points.fle_from_fre`), which, unlike
    the FRE after dropping, is unbiased. Eager (not traceable): the dropped index selects a subset.

    Args:
      key: PRNG key for the simulations.
      fixed_points: ``(N, ndim)`` fiducials in the fixed space (e.g. the pre-operative image), world mm.
      moving_points: ``(N, ndim)`` the same fiducials in the moving space (e.g. tracker space), world mm.
      fixed_targets: ``(M, ndim)`` targets in the fixed space, world mm.
      moving_targets: ``(M, ndim)`` their true moving-space positions, when known (simulation studies): adds
        the actual TRE before and after.
      fle_rms: RMS FLE in mm, or None to estimate it from the FRE.
      model: fitted model (static).
      num_samples: Monte Carlo draws per simulation.

    Returns:
      :class:`DropWorstFiducial`.
    """
    x, y, _ = _prepare(fixed_points, moving_points, None, model)
    n_pts, n = x.shape
    if n_pts - 1 < min_points(model, n):
        raise ValueError(
            f"fixed_points: dropping one of a {n}-D {model} fit's fiducials needs at least "
            f"{min_points(model, n) + 1}, got {n_pts}"
        )
    r = _float(fixed_targets).astype(x.dtype)
    if r.ndim != 2 or r.shape[-1] != n:
        raise ValueError(f"fixed_targets: expected shape (M, {n}) world mm, got {tuple(r.shape)}")
    before = _fit(x, y, jnp.ones((n_pts,), x.dtype), model)
    errors = registration_errors(before, x, y)
    fre_before = jnp.sqrt(jnp.mean(errors**2))
    dropped = int(jnp.argmax(errors))
    keep = np.arange(n_pts) != dropped
    x_after, y_after = _prepare(x[keep], y[keep], None, model)[:2]
    after = _fit(x_after, y_after, jnp.ones((n_pts - 1,), x.dtype), model)
    fre_after = fre(after, x_after, y_after)
    if fle_rms is None:
        fle = fle_from_fre(fre_before, n_pts, ndim=n, model=model)
    else:
        fle = jnp.asarray(fle_rms, x.dtype)
    mask = jnp.asarray(keep, x.dtype)
    sim_before = simulate_tre(key, x, r, fle_rms=fle, num_samples=num_samples, model=model)
    sim_after = simulate_tre(key, x, r, fle_rms=fle, num_samples=num_samples, model=model, weights=mask)
    if moving_targets is not None:
        rt = _float(moving_targets).astype(x.dtype)
        if rt.shape != r.shape:
            raise ValueError(
                f"moving_targets: expected shape {tuple(r.shape)} like fixed_targets, got {tuple(rt.shape)}"
            )
        tre_before, tre_after = registration_errors(before, r, rt), registration_errors(after, r, rt)
    else:
        tre_before = tre_after = None
    return DropWorstFiducial(
        dropped=dropped,
        fiducial_errors=errors,
        fle_rms=fle,
        fre_before=fre_before,
        fre_after=fre_after,
        predicted_tre_before=predict_tre(x, r, fle_rms=fle, model=model),
        predicted_tre_after=predict_tre(x_after, r, fle_rms=fle, model=model),
        simulated_tre_before=sim_before.tre_rms,
        simulated_tre_after=sim_after.tre_rms,
        tre_before=tre_before,
        tre_after=tre_after,
        transform_before=before,
        transform_after=after,
    )
