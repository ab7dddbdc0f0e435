"""Spatial transforms (world mm -> world mm, fixed -> moving), all registered pytrees.

Linear: :class:`Translation`, :class:`Rigid`, :class:`Similarity`, :class:`Affine`; global
:class:`Polynomial`; cubic :class:`BSplineTransform` (FFD); dense :class:`DisplacementField` and
:class:`VelocityField` (diffeomorphic, scaling and squaring); :func:`compose`, :func:`invert` (:func:`inverse_displacement`: sampled on a grid) and
:func:`jacobian` / :func:`jacobian_determinant` for any of them; :func:`exp_voxel_field`, the one
scaling-and-squaring kernel.

Code outside this package uses the transform protocol of :class:`Transform` (``is_linear``, ``on_grid``,
``regularized_field``, ``linear_part``) rather than switching on these classes.
"""

from jaxreg.transforms.base import LinearTransform, Transform
from jaxreg.transforms.bspline import (
    BSplineTransform,
    bspline_control_grid,
    bspline_weight_matrix,
    cubic_bspline,
    refine_bspline,
)
from jaxreg.transforms.compose import (
    Composite,
    NumericalInverse,
    compose,
    inverse_displacement,
    inverse_method,
    invert,
    to_affine,
    to_displacement,
)
from jaxreg.transforms.dense import (
    DisplacementField,
    VelocityField,
    compose_fields,
    exp_voxel_field,
    from_voxel_displacement,
    invert_field,
    to_voxel_displacement,
)
from jaxreg.transforms.jacobian import jacobian, jacobian_determinant
from jaxreg.transforms.linear import (
    Affine,
    AffineComponents,
    Rigid,
    Similarity,
    Translation,
    compose_affine,
    decompose_affine,
    euler_to_matrix,
    matrix_to_euler,
    rotation_matrix,
    rotation_vector,
)
from jaxreg.transforms.polynomial import Polynomial, monomial_exponents
from jaxreg.transforms.region import RegionRigid

__all__ = [
    "Transform",
    "LinearTransform",
    "Translation",
    "Rigid",
    "Similarity",
    "Affine",
    "AffineComponents",
    "Polynomial",
    "RegionRigid",
    "BSplineTransform",
    "DisplacementField",
    "VelocityField",
    "Composite",
    "NumericalInverse",
    "compose",
    "invert",
    "inverse_method",
    "inverse_displacement",
    "to_affine",
    "to_displacement",
    "compose_fields",
    "invert_field",
    "exp_voxel_field",
    "to_voxel_displacement",
    "from_voxel_displacement",
    "jacobian",
    "jacobian_determinant",
    "rotation_matrix",
    "rotation_vector",
    "euler_to_matrix",
    "matrix_to_euler",
    "decompose_affine",
    "compose_affine",
    "monomial_exponents",
    "bspline_control_grid",
    "bspline_weight_matrix",
    "cubic_bspline",
    "refine_bspline",
]
