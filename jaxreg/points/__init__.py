"""Point-based registration and registration-error analysis (fiducials and landmarks).

* :mod:`jaxreg.points.fit`: closed-form least-squares fits, 2-D and 3-D, optionally weighted, returning jaxreg
  transforms that map *fixed* points to *moving* points (``T(fixed_i) ~ moving_i``, the pull direction of
  :func:`jaxreg.warp`): :func:`fit_rigid` (Kabsch), :func:`fit_similarity` (Umeyama), :func:`fit_affine`.
* :mod:`jaxreg.points.errors`: FRE, TRE, and the FLE estimated from FRE.
* :mod:`jaxreg.points.prediction`: TRE predicted from the fiducial configuration (Fitzpatrick, West and Maurer
  1998), its Monte Carlo check, leave-one-out errors and the "drop the worst fiducial" analysis.
* :mod:`jaxreg.points.objective`: a differentiable landmark-distance term for intensity registration.

Points are ``(N, ndim)`` arrays of world coordinates in mm (RAS+, components in array-axis order); every
function handles one point set and is batched with ``jax.vmap``. Landmark files are read and written by
:mod:`jaxreg.io.landmarks`.
"""

from jaxreg.points.errors import expected_fre, fle_from_fre, fre, num_parameters, registration_errors, tre
from jaxreg.points.fit import (
    MODELS,
    fit_affine,
    fit_rigid,
    fit_similarity,
    fit_transform,
    is_degenerate,
    min_points,
)
from jaxreg.points.objective import landmark_distance, landmark_term
from jaxreg.points.prediction import (
    DropWorstFiducial,
    PrincipalAxes,
    TRESimulation,
    drop_worst_fiducial,
    leave_one_out_errors,
    predict_tre,
    principal_axes,
    simulate_tre,
)

__all__ = [
    "MODELS",
    "DropWorstFiducial",
    "PrincipalAxes",
    "TRESimulation",
    "drop_worst_fiducial",
    "expected_fre",
    "fit_affine",
    "fit_rigid",
    "fit_similarity",
    "fit_transform",
    "fle_from_fre",
    "fre",
    "is_degenerate",
    "landmark_distance",
    "landmark_term",
    "leave_one_out_errors",
    "min_points",
    "num_parameters",
    "predict_tre",
    "principal_axes",
    "registration_errors",
    "simulate_tre",
    "tre",
]
