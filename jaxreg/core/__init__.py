"""Spatial core: grids (shape + voxel-to-world affine), images, interpolation and finite differences."""

from jaxreg.core.diff import index_gradient, spatial_gradient
from jaxreg.core.grid import Grid, Image, axcodes_from_affine
from jaxreg.core.sampling import map_coordinates, spline_filter

__all__ = [
    "Grid",
    "Image",
    "axcodes_from_affine",
    "map_coordinates",
    "spline_filter",
    "index_gradient",
    "spatial_gradient",
]
