"""Regularisers: smoothness and plausibility penalties on deformations (lower is better, scalars).

Dense fields ``u`` of shape ``(*spatial, ndim)`` (world mm, components in array-axis order; e.g.
``DisplacementField.displacement``, ``VelocityField.velocity``) in 1-D, 2-D or 3-D:

* :func:`diffusion` -- mean ``||grad u||_F^2`` (membrane energy);
* :func:`bending` -- mean thin-plate energy ``sum_ij ||d^2 u / dx_i dx_j||^2`` (mm^-2);
* :func:`elastic` -- mean linear-elastic energy ``mu ||sym grad u||^2 + lam/2 (div u)^2``;
* :func:`total_variation` -- mean ``sqrt(||grad u||_F^2 + eps)``;
* :func:`folding` -- mean ``relu(eps - det J)^2`` (penalises non-positive Jacobian determinants);
* :func:`log_jacobian` -- mean ``(log det J)^2`` with a safe log (penalises volume change);
* :func:`rigidity` -- local rigidity (Staring et al. 2007): linearity, orthonormality ``J^T J = I`` and
  properness ``det J = 1``, weighted by a rigidity coefficient map;
* :func:`incompressibility` -- mean ``(det J - 1)^2`` or ``(log det J)^2`` over a mask.

Organ-aware weights (:mod:`jaxreg.regularizers.organ`): :func:`label_weight_map` builds a map in ``[0, 1]``
from groups of label values (dilated in mm, on any grid); every field term takes such a map as its ``mask``
(spatially varying diffusion, bending, ...), and :func:`weight_mapped` carries one in world coordinates into
an objective, which resamples it onto the grid of the field it regularises.

Transforms:

* :func:`inverse_consistency` -- mean ``||b(f(x)) - x||^2 + ||f(b(x)) - x||^2`` on a grid (mm^2);
* :func:`bspline_bending_energy` -- exact thin-plate energy of a cubic B-spline FFD from its coefficients.

The eight field terms above share one contract, ``fn(u, *, spacing, mask=None) -> scalar`` (``spacing`` the
voxel size in mm per axis; a ``grid`` may be given instead), and are registered by name for
:func:`jaxreg.terms.regularizer` and :func:`jaxreg.terms.parse` (e.g. ``regularizer("elastic", mu=2.0)``
fixes ``mu`` at configuration time).

All are pure and jit-able; spacing is static (mm per array axis, or a ``grid``), numeric weights (``mu``,
``lam``, ``eps``) are traced, so they can be vmapped over and differentiated. Each function's docstring gives
its equation, discretisation, units and reference; :mod:`jaxreg.regularizers.smoothness` explains the
finite-difference stencils and mask semantics.
"""

from jaxreg.regularizers.bspline import bspline_bending_energy, bspline_gram_matrix
from jaxreg.regularizers.consistency import inverse_consistency
from jaxreg.regularizers.jacobian import folding, jacobian_determinant_field, log_jacobian, safe_log
from jaxreg.regularizers.organ import (
    WeightMapped,
    incompressibility,
    label_weight_map,
    rigidity,
    weight_mapped,
)
from jaxreg.regularizers.smoothness import bending, diffusion, elastic, forward_jacobian, total_variation

__all__ = [
    "diffusion",
    "bending",
    "elastic",
    "total_variation",
    "folding",
    "log_jacobian",
    "rigidity",
    "incompressibility",
    "label_weight_map",
    "weight_mapped",
    "WeightMapped",
    "inverse_consistency",
    "bspline_bending_energy",
    "bspline_gram_matrix",
    "forward_jacobian",
    "jacobian_determinant_field",
    "safe_log",
]
