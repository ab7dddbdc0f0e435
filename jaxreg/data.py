"""Built-in data: the MNI152 template, synthetic phantoms and random smooth deformations.

Everything here returns jaxreg values (:class:`~jaxreg.core.grid.Image`, transforms) ready for the rest of the
library, for demos, examples, tests and documentation:

* :func:`load_mni152` -- the MNI152 T1 template that nilearn ships inside its package (no download);
* :func:`load_mni152_masks` -- its grey-matter, white-matter and brain masks (also shipped with nilearn);
* :func:`phantom` -- a small synthetic 2D/3D image (or label map) made of nested ellipsoids;
* :func:`random_velocity_field` -- a seeded random smooth stationary velocity field, whose exponential is a
  diffeomorphism with displacements of a few mm: a known deformation to warp images with;
* :func:`gaussian_smooth` -- Gaussian smoothing of a bare array on a grid, sigma in mm (the array form of
  :func:`jaxreg.warp.pyramid.gaussian_smooth`).

nilearn is an optional dependency (``pip install 'jaxreg[demo]'``) imported only inside :func:`load_mni152` and
:func:`load_mni152_masks`.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.transforms.dense import VelocityField
from jaxreg.warp.pyramid import gaussian_smooth as _smooth_image

__all__ = ["load_mni152", "load_mni152_masks", "phantom", "random_velocity_field", "gaussian_smooth"]


def _check_resolution(resolution: Any) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution: expected a positive integer voxel size in mm, got {resolution!r}")


def load_mni152(resolution: int = 2, *, dtype: Any = jnp.float32) -> Image:
    """The MNI152 (ICBM 2009, skull-stripped) T1 template shipped with nilearn, intensities in [0, 1].

    The file is part of the nilearn package, so nothing is downloaded. At 1 mm the grid is 197x233x189; nilearn
    resamples it to coarser isotropic grids (2 mm: 99x117x95) with trilinear interpolation. The world frame is
    MNI space (RAS+ mm).

    Args:
      resolution: isotropic voxel size in mm, a positive integer (1 is the original template).
      dtype: floating dtype of the returned data.

    Returns:
      A 3D :class:`~jaxreg.core.grid.Image`.

    Raises:
      ImportError: nilearn is not installed (``pip install 'jaxreg[demo]'``).
      ValueError: ``resolution`` is not a positive integer.
    """
    _check_resolution(resolution)
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_mni152 needs nilearn, which ships the MNI152 template: install jaxreg[demo] "
            "(pip install 'jaxreg[demo]')"
        ) from e
    with warnings.catch_warnings():
        # nilearn warns about resampling defaults changing between versions; the result is what we want.
        warnings.simplefilter("ignore")
        img = load_mni152_template(resolution=int(resolution))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    grid = Grid(data.shape[:3], np.asarray(img.affine, dtype=np.float64))
    return Image(jnp.asarray(data, dtype=dtype), grid)


MNI152_MASKS = ("gm", "wm", "brain")
"""Names of the masks :func:`load_mni152_masks` returns, in order."""


def load_mni152_masks(resolution: int = 2, *, dtype: Any = jnp.int32) -> dict[str, Image]:
    """Grey-matter, white-matter and brain masks of the MNI152 template, on :func:`load_mni152`'s grid.

    nilearn derives them from files inside its package (nothing is downloaded): ``"gm"`` and ``"wm"`` threshold
    the ICBM 2009 grey- and white-matter probability maps at 0.2 and close the result
    (``load_mni152_gm_mask``, ``load_mni152_wm_mask``), ``"brain"`` thresholds the T1 template
    (``load_mni152_brain_mask``). The grey- and white-matter masks overlap where both probabilities exceed 0.2.

    Args:
      resolution: isotropic voxel size in mm, a positive integer (as :func:`load_mni152`).
      dtype: integer dtype of the masks (values 0 and 1).

    Returns:
      ``{"gm": Image, "wm": Image, "brain": Image}``, 3D label maps on the template grid.

    Raises:
      ImportError: nilearn is not installed (``pip install 'jaxreg[demo]'``).
      ValueError: ``resolution`` is not a positive integer.
    """
    _check_resolution(resolution)
    try:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_mask, load_mni152_wm_mask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_mni152_masks needs nilearn, which ships the MNI152 tissue maps: install jaxreg[demo] "
            "(pip install 'jaxreg[demo]')"
        ) from e
    loaders = {"gm": load_mni152_gm_mask, "wm": load_mni152_wm_mask, "brain": load_mni152_brain_mask}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MNI152_MASKS:
            img = loaders[name](resolution=int(resolution))
            data = np.asarray(img.get_fdata(dtype=np.float32)) > 0.5
            out[name] = Image(
                jnp.asarray(data, dtype=dtype), Grid(data.shape[:3], np.asarray(img.affine, np.float64))
            )
    return out


# -- phantoms --------------------------------------------------------------------------------------------------
# (centre, semi-axes) in normalised coordinates [-1, 1] per array axis, painted in order (later ones on top).
# The 2D phantom uses the first two centre coordinates and semi-axes of each (its ellipses are the outlines of the
# ellipsoids seen along z, so all six appear in 2D too).
_ELLIPSOIDS = (
    ((0.0, 0.0, 0.0), (0.85, 0.70, 0.80)),  # 1: head
    ((0.0, -0.02, 0.0), (0.74, 0.60, 0.70)),  # 2: brain
    ((0.28, 0.18, 0.05), (0.16, 0.26, 0.22)),  # 3
    ((-0.30, 0.10, -0.05), (0.22, 0.13, 0.25)),  # 4
    ((0.02, -0.38, 0.10), (0.12, 0.10, 0.14)),  # 5
    ((-0.15, -0.25, -0.08), (0.07, 0.07, 0.07)),  # 6: small
)
_INTENSITIES = (1.0, 0.35, 0.8, 0.6, 0.15, 0.95)


def phantom(
    shape: Sequence[int],
    *,
    spacing: float | Sequence[float] = 1.0,
    labels: bool = False,
    dtype: Any = None,
) -> Image:
    """A synthetic 2D or 3D test image of nested ellipses (ellipsoids), on a centred grid.

    Six ellipsoids (a "head", a "brain" inside it and four blobs of different sizes and contrasts) fill the
    field of view in normalised coordinates, so the picture looks the same at every shape; with ``labels=True``
    each voxel holds the index (1 to 6) of the last ellipsoid painted over it, 0 outside: a label map that
    matches the intensity image.

    Args:
      shape: 2 or 3 positive sizes.
      spacing: voxel size in mm, scalar or per axis; the grid is :meth:`Grid.centered` (world origin at the
        image centre, RAS+ axes).
      labels: return an integer label map instead of intensities.
      dtype: data dtype; default ``float32`` for intensities (values in [0, 1]) and ``int32`` for labels.

    Returns:
      An :class:`~jaxreg.core.grid.Image` of ``shape``.
    """
    shp = tuple(int(s) for s in shape)
    if len(shp) not in (2, 3) or any(s < 1 for s in shp):
        raise ValueError(f"shape: expected 2 or 3 positive sizes, got {tuple(shape)}")
    n = len(shp)
    grid = Grid.centered(shp, spacing)
    axes = [np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1) for s in shp]
    coords = np.meshgrid(*axes, indexing="ij")
    out = np.zeros(shp, dtype=np.int32 if labels else np.float32)
    for k, ((centre, radii), value) in enumerate(zip(_ELLIPSOIDS, _INTENSITIES)):
        r2 = sum(((coords[d] - centre[d]) / radii[d]) ** 2 for d in range(n))
        out[r2 <= 1.0] = (k + 1) if labels else value
    if dtype is None:
        dtype = jnp.int32 if labels else jnp.float32
    return Image(jnp.asarray(out, dtype=dtype), grid)


# -- smoothing and random deformations -------------------------------------------------------------------------
def gaussian_smooth(data: jax.Array, grid: Grid, sigma_mm: float | Sequence[float]) -> jax.Array:
    """Gaussian smoothing of a bare array on ``grid``, standard deviation in mm.

    The array form of :func:`jaxreg.warp.pyramid.gaussian_smooth` (the library's one Gaussian smoothing):
    ``gaussian_smooth(Image(data, grid), sigma_mm, truncate=4.0).data``. One 1-D Gaussian per array axis with
    ``sigma_d = sigma_mm / spacing_d`` voxels, truncated at 4 sigma (scipy's default) and renormalised at the
    border, so a constant stays constant.

    Args:
      data: ``(*grid.shape)`` or ``(*grid.shape, C)`` array.
      grid: its grid (for the spacing).
      sigma_mm: standard deviation in mm, scalar or per axis; 0 leaves an axis unchanged.

    Returns:
      Array of ``data``'s shape; floating dtypes are kept, integer data becomes float32.

    Raises:
      ValueError: ``data`` does not match ``grid``; a negative or non-finite ``sigma_mm``.
    """
    return _smooth_image(Image(jnp.asarray(data), grid), sigma_mm, truncate=4.0).data


def random_velocity_field(
    key: jax.Array,
    grid: Grid,
    *,
    smoothness_mm: float = 12.0,
    max_displacement_mm: float = 5.0,
    steps: int = 7,
    dtype: Any = jnp.float32,
) -> VelocityField:
    """A seeded random smooth stationary velocity field on ``grid``: a random diffeomorphism ``exp(v)``.

    White Gaussian noise ``(*grid.shape, ndim)`` drawn from ``key`` is smoothed with a Gaussian of standard
    deviation ``smoothness_mm`` (:func:`gaussian_smooth`) and scaled so that its longest vector is
    ``max_displacement_mm``. For such smooth fields the displacement of ``exp(v)`` is close to ``v``, so its
    largest displacement is about ``max_displacement_mm`` too; ``exp(v)`` is invertible by construction (its
    inverse is ``exp(-v)``), although a very large ratio of displacement to smoothness makes the discrete
    field fold.

    Args:
      key: PRNG key (``jax.random.PRNGKey(seed)``).
      grid: the field's grid (e.g. the template's).
      smoothness_mm: standard deviation of the smoothing Gaussian, mm.
      max_displacement_mm: length of the largest velocity vector, mm.
      steps: scaling-and-squaring steps of the returned :class:`~jaxreg.transforms.dense.VelocityField`.
      dtype: floating dtype.

    Returns:
      A :class:`~jaxreg.transforms.dense.VelocityField` on ``grid``.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if not smoothness_mm > 0:
        raise ValueError(
            f"smoothness_mm: expected a positive standard deviation in mm, got {smoothness_mm!r}"
        )
    if not max_displacement_mm >= 0:
        raise ValueError(
            f"max_displacement_mm: expected a non-negative length in mm, got {max_displacement_mm!r}"
        )
    noise = jax.random.normal(key, (*grid.shape, grid.ndim), dtype=dtype)
    v = gaussian_smooth(noise, grid, smoothness_mm)
    norm = jnp.sqrt(jnp.max(jnp.sum(v * v, axis=-1)))
    v = v * (max_displacement_mm / jnp.maximum(norm, jnp.finfo(dtype).tiny))
    return VelocityField(v.astype(dtype), grid, steps)
