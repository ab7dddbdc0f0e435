"""jaxreg: a functional JAX engine for medical image registration.

Layers (dependencies point one way): :mod:`jaxreg.core` (grids, interpolation) -> :mod:`jaxreg.transforms`
-> :mod:`jaxreg.warp` -> {:mod:`jaxreg.similarity`, :mod:`jaxreg.regularizers`, :mod:`jaxreg.evaluation`,
:mod:`jaxreg.points`} -> :mod:`jaxreg.optimize` (the one entry point ``register``: methods, transform models,
stages and named pipelines) -> :mod:`jaxreg.learn` (networks, training, the network stage);
:mod:`jaxreg.io`, :mod:`jaxreg.plot` and :mod:`jaxreg.cli` sit on top; :mod:`jaxreg.terms` names the
similarity and regulariser functions for configurations. Only the core, transforms and warp are
imported here (import the others by name), so ``import jaxreg`` stays light and never pulls in nibabel.

Conventions: world coordinates are RAS+ millimetres from the NIfTI affine (integer index = voxel centre);
arrays are channels-last and point/field components follow array-axis order; a transform maps fixed-space
points to moving-space points and warping pulls, ``warped(x) = moving(T(x))``.
"""

from jaxreg.core import Grid, Image, map_coordinates, spatial_gradient, spline_filter
from jaxreg.transforms import (
    Affine,
    BSplineTransform,
    Composite,
    DisplacementField,
    LinearTransform,
    NumericalInverse,
    Polynomial,
    Rigid,
    Similarity,
    Transform,
    Translation,
    VelocityField,
    bspline_control_grid,
    compose,
    invert,
    jacobian,
    jacobian_determinant,
    to_affine,
    to_displacement,
)
from jaxreg.warp import resample, sample_points, transform_points, warp, warp_labels, warp_onehot

__version__ = "0.1.0"

__all__ = [
    "Grid",
    "Image",
    "map_coordinates",
    "spline_filter",
    "spatial_gradient",
    "Transform",
    "LinearTransform",
    "Translation",
    "Rigid",
    "Similarity",
    "Affine",
    "Polynomial",
    "BSplineTransform",
    "DisplacementField",
    "VelocityField",
    "Composite",
    "NumericalInverse",
    "bspline_control_grid",
    "compose",
    "invert",
    "to_affine",
    "to_displacement",
    "jacobian",
    "jacobian_determinant",
    "warp",
    "warp_labels",
    "warp_onehot",
    "resample",
    "transform_points",
    "sample_points",
]
