"""Registration error measures of point-based registration: FRE, TRE and FLE.

Vocabulary (Fitzpatrick, West and Maurer, IEEE TMI 17(5) 1998; Fitzpatrick, Med. Phys. 36(7) 2009):

* **FLE**, fiducial localisation error: the error in locating a fiducial in either space (random, unseen);
  ``FLE_rms = sqrt(<|FLE|^2>)`` in mm.
* **FRE**, fiducial registration error: ``|T(x_i) - y_i|`` at the fiducials *used by the fit*, and its RMS over
  them. Measurable, but a poor indicator of accuracy: the fit absorbs part of the FLE.
* **TRE**, target registration error: ``|T(r) - r'|`` at a target ``r`` *not used by the fit*, where ``r'`` is
  the target's true position in the moving space. What matters clinically.

With ``T`` mapping fixed to moving points (jaxreg's pull direction), every error here is measured in the
moving space, in mm. For ``N`` fiducials with identical, independent, isotropic FLE, a least-squares fit with
``p`` parameters leaves on average

    ``<FRE^2> = (1 - p / (ndim N)) <FLE^2>``

(the residual of a linear(ised) least-squares fit keeps ``ndim N - p`` of its ``ndim N`` degrees of freedom;
for a 3-D rigid fit, ``p = 6``: ``(1 - 2/N) <FLE^2>``, as in FWM 1998), which :func:`expected_fre` and
:func:`fle_from_fre` evaluate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.points.fit import MODELS, Model
from jaxreg.transforms.base import Transform

__all__ = [
    "expected_fre",
    "fle_from_fre",
    "fre",
    "num_parameters",
    "registration_errors",
    "tre",
]


def _pairs(fixed_points: Any, moving_points: Any) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(fixed_points), jnp.asarray(moving_points)
    if x.ndim < 1 or x.shape != y.shape:
        raise ValueError(
            f"fixed_points/moving_points: expected the same shape (..., ndim), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    return x, y


def registration_errors(transform: Transform, fixed_points: jax.Array, moving_points: jax.Array) -> jax.Array:
    """Distances ``|T(x_i) - y_i|`` in mm (moving space).

    Args:
      transform: fixed -> moving transform.
      fixed_points: ``(..., ndim)`` fixed-space points, world mm.
      moving_points: ``(..., ndim)`` their true positions in the moving space, world mm.

    Returns:
      ``(...)`` distances in mm. At the fiducials of the fit these are the per-fiducial FREs; at independent
      targets, the TREs.
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg transform, got {type(transform).__name__}")
    x, y = _pairs(fixed_points, moving_points)
    d = transform(x) - y
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def fre(
    transform: Transform,
    fixed_points: jax.Array,
    moving_points: jax.Array,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Root-mean-square fiducial registration error ``sqrt(sum_i w_i |T(x_i) - y_i|^2 / sum_i w_i)`` (mm).

    Args:
      transform: the fitted fixed -> moving transform.
      fixed_points: ``(N, ndim)`` fiducials of the fit, fixed space, world mm.
      moving_points: ``(N, ndim)`` the corresponding moving-space fiducials, world mm.
      weights: ``(N,)`` non-negative weights (those of the fit; zero leaves a point out), or None.

    Returns:
      Scalar RMS FRE in mm. The per-fiducial values are :func:`registration_errors`.
    """
    e2 = registration_errors(transform, fixed_points, moving_points) ** 2
    if weights is None:
        return jnp.sqrt(jnp.mean(e2))
    w = jnp.asarray(weights, e2.dtype)
    if w.shape != e2.shape:
        raise ValueError(
            f"weights: expected shape {tuple(e2.shape)}, one per point pair, got {tuple(w.shape)}"
        )
    return jnp.sqrt(jnp.sum(w * e2) / jnp.sum(w))


def tre(transform: Transform, fixed_targets: jax.Array, moving_targets: jax.Array) -> jax.Array:
    """Target registration error at each target, ``|T(r) - r'|`` in mm.

    Args:
      transform: fixed -> moving transform (e.g. fitted on fiducials that exclude these targets).
      fixed_targets: ``(M, ndim)`` target positions in the fixed space, world mm.
      moving_targets: ``(M, ndim)`` their true positions in the moving space (for a known ground-truth
        transform ``G``: ``G(fixed_targets)``), world mm.

    Returns:
      ``(M,)`` TRE in mm.
    """
    return registration_errors(transform, fixed_targets, moving_targets)


def num_parameters(model: Model, ndim: int) -> int:
    """Degrees of freedom ``p`` of a model: rigid ``ndim (ndim + 1) / 2``, similarity one more, affine
    ``ndim (ndim + 1)``."""
    if model not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {model!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3, got {ndim}")
    rigid = ndim * (ndim + 1) // 2
    return {"rigid": rigid, "similarity": rigid + 1, "affine": ndim * (ndim + 1)}[model]


def _fre_factor(num_fiducials: int, ndim: int, model: Model) -> float:
    p = num_parameters(model, ndim)
    dof = ndim * num_fiducials - p
    if dof <= 0:
        raise ValueError(
            f"num_fiducials: a {ndim}-D {model} fit of {num_fiducials} fiducials has no residual degrees of "
            f"freedom ({ndim} x {num_fiducials} coordinates, {p} parameters); FRE says nothing about FLE"
        )
    return dof / (ndim * num_fiducials)


def expected_fre(
    fle_rms: jax.Array, num_fiducials: int, *, ndim: int = 3, model: Model = "rigid"
) -> jax.Array:
    """RMS FRE expected from an RMS FLE: ``sqrt(1 - p / (ndim N)) FLE_rms`` (mm).

    Args:
      fle_rms: RMS fiducial localisation error ``sqrt(<|FLE|^2>)`` in mm (any shape; traced).
      num_fiducials: ``N`` (static).
      ndim: 2 or 3.
      model: the fitted model (sets ``p``, see :func:`num_parameters`).

    Returns:
      ``sqrt(<FRE^2>)`` in mm, same shape as ``fle_rms``. For 3-D rigid: ``sqrt(1 - 2/N) FLE_rms`` (FWM 1998).
    """
    return jnp.sqrt(_fre_factor(num_fiducials, ndim, model)) * jnp.asarray(fle_rms)


def fle_from_fre(
    fre_rms: jax.Array, num_fiducials: int, *, ndim: int = 3, model: Model = "rigid"
) -> jax.Array:
    """Estimate the RMS FLE from an observed RMS FRE: ``FRE_rms / sqrt(1 - p / (ndim N))`` (mm).

    An unbiased estimate of ``<FLE^2>`` (squared), assuming identical, independent, isotropic FLE at every
    fiducial; with few fiducials it is itself very noisy (it rests on ``ndim N - p`` degrees of freedom).

    Args:
      fre_rms: observed RMS FRE in mm.
      num_fiducials: ``N`` fiducials used by the fit (static).
      ndim: 2 or 3.
      model: the fitted model.

    Returns:
      Estimated RMS FLE in mm, same shape as ``fre_rms``.
    """
    return jnp.asarray(fre_rms) / jnp.sqrt(_fre_factor(num_fiducials, ndim, model))
