"""Intensity preprocessing before registration: winsorising and histogram matching (as ``antsRegistration``).

``antsRegistration`` prepares the images its metrics compare in two optional steps (``--winsorize-image-intensities
[0.005,0.995]`` and ``--use-histogram-matching 1``, both on in ``antsRegistrationSyN.sh``); the transforms it
writes then apply to the original images. These are the same steps as pure functions of an
:class:`~jaxreg.core.grid.Image` (``jax.jit``-able and ``jax.vmap``-able over the data):

* :func:`winsorize` clips the intensities to their ``lower`` and ``upper`` quantiles and rescales that window
  linearly to ``[0, 1]`` (ITK's ``IntensityWindowingImageFilter`` on the quantiles): a few very bright voxels
  (vessels, fat, artefacts) then no longer compress the contrast of the rest;
* :func:`match_histogram` maps the source's intensities piecewise linearly so that its quantiles at
  ``match_points`` equally spaced levels equal the reference's (ITK's ``HistogramMatchingImageFilter``, Nyul and
  Udupa, "On standardizing the MR image intensity scale", MRM 1999): for images of one modality whose scanners or
  protocols scaled intensities differently.

Quantiles are exact (NumPy's linear interpolation between order statistics, over the voxels that count); ITK
estimates them from a histogram (256 levels by default), so the two agree within about a histogram bin.
:func:`unsharp_mask` sharpens an image (ITK's ``UnsharpMaskImageFilter``; ANTs' template script sharpens each new
template with it or with a Laplacian filter, :func:`jaxreg.optimize.template.build_template` ``sharpen=``).

:func:`prepare_pair` applies the first two to a pair in ``antsRegistration``'s order. The command line applies them with
``jaxreg register`` and ``jaxreg register-many`` ``--winsorize LOW HIGH --histogram-matching``
(:func:`jaxreg.optimize.cohort.register_pairs` ``winsorize=``, ``histogram_matching=``); the outputs
(``warped.nii.gz``) are of the original images.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Image

__all__ = ["winsorize", "match_histogram", "prepare_pair", "check_winsorize", "unsharp_mask"]


def _check_image(image: Any, name: str) -> Image:
    if not isinstance(image, Image):
        raise TypeError(f"{name}: expected a jaxreg Image, got {type(image).__name__}")
    if image.data.shape != tuple(image.grid.shape):
        raise ValueError(f"{name}: expected a one-channel image of shape {tuple(image.grid.shape)}, got {image.data.shape}")
    return image


def _quantiles(x: jax.Array, keep: jax.Array, q: jax.Array) -> jax.Array:
    """Quantiles ``q`` (in [0, 1]) of ``x[keep]`` with NumPy's linear interpolation; static shapes (jit-able)."""
    return jnp.nanquantile(jnp.where(keep, x, jnp.nan), q)


def winsorize(image: Image, lower: float = 0.005, upper: float = 0.995, *, mask: Image | jax.Array | None = None) -> Image:
    """Clip an image to its ``lower``/``upper`` intensity quantiles and rescale that window to ``[0, 1]``.

    ``out = (clip(I, a, b) - a) / (b - a)`` with ``a = Q_I(lower)``, ``b = Q_I(upper)`` (quantiles over the voxels
    of ``mask``, or all voxels), as ``antsRegistration --winsorize-image-intensities [lower,upper]``. A window of
    zero width (``a == b``) gives zeros.

    Args:
      image: one-channel :class:`~jaxreg.core.grid.Image`, data ``(*shape)``.
      lower: lower quantile in ``[0, 1)`` (0.005 in ANTs' scripts).
      upper: upper quantile in ``(lower, 1]`` (0.995).
      mask: optional voxels whose intensities define the quantiles (non-zero counts), ``(*shape)``; every voxel is
        windowed.

    Returns:
      The windowed image on the same grid, float32 in ``[0, 1]``.

    Raises:
      ValueError: quantiles outside ``0 <= lower < upper <= 1``, a multi-channel image or a mask of another shape.
    """
    _check_image(image, "image")
    for name, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a quantile in [0, 1], got {v!r}")
    if not 0.0 <= lower < upper <= 1.0:
        raise ValueError(f"lower, upper: expected 0 <= lower < upper <= 1, got {lower!r}, {upper!r}")
    x = jnp.asarray(image.data, jnp.float32)
    keep = jnp.ones(x.shape, bool) if mask is None else _mask(mask, x.shape)
    return Image(_winsorize(x, keep, jnp.asarray([lower, upper], jnp.float32)), image.grid)


@jit
def _winsorize(x: jax.Array, keep: jax.Array, q: jax.Array) -> jax.Array:
    a, b = _quantiles(x, keep, q)
    width = b - a
    return jnp.where(width > 0, (jnp.clip(x, a, b) - a) / jnp.where(width > 0, width, 1.0), 0.0).astype(jnp.float32)


def _mask(mask: Image | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    m = jnp.asarray(mask.data if isinstance(mask, Image) else mask)
    if m.shape != shape:
        raise ValueError(f"mask: expected shape {shape} (the image's), got {m.shape}")
    return m != 0


def match_histogram(
    source: Image, reference: Image, *, match_points: int = 12, threshold_at_mean: bool = True
) -> Image:
    """Map ``source``'s intensities piecewise linearly onto ``reference``'s histogram (ITK's histogram matching).

    With ``t_S``, ``t_R`` the thresholds (each image's mean intensity with ``threshold_at_mean``, else its
    minimum) and ``P = match_points``, the control points are
    ``s_0 = t_S``, ``s_j = Q_S(j / (P + 1))`` (``j = 1..P``), ``s_{P+1} = max S`` and likewise ``r_j`` for the
    reference, the quantiles ``Q`` taken over the voxels at or above the threshold (the background below the
    mean does not count). Each source intensity ``x`` maps to ``r_j + (x - s_j) (r_{j+1} - r_j) / (s_{j+1} - s_j)``
    on ``[s_j, s_{j+1})``; below ``s_0`` the line from ``(min S, min R)`` to ``(s_0, r_0)``, above ``s_{P+1}`` the
    line through ``(max S, max R)`` with the slope of ``(s_{P+1} - max S, r_{P+1} - max R)`` (ITK's rules: a
    segment of zero source width has slope 0). Nyul and Udupa, MRM 1999; ``antsRegistration
    --use-histogram-matching 1`` (12 match points, threshold at the mean).

    Args:
      source: one-channel image to map (the moving image), data ``(*shape)``.
      reference: one-channel image whose histogram is matched (the fixed image), any grid.
      match_points: number ``P >= 1`` of quantile levels matched between the threshold and the maximum.
      threshold_at_mean: exclude the voxels below each image's mean intensity from the quantiles (background).

    Returns:
      ``source`` with mapped intensities (float32), on its grid.

    Raises:
      ValueError: ``match_points`` not a positive int, or a multi-channel image.
    """
    _check_image(source, "source")
    _check_image(reference, "reference")
    if isinstance(match_points, bool) or not isinstance(match_points, int) or match_points < 1:
        raise ValueError(f"match_points: expected a positive int, got {match_points!r}")
    if not isinstance(threshold_at_mean, bool):
        raise ValueError(f"threshold_at_mean: expected a bool, got {threshold_at_mean!r}")
    s = jnp.asarray(source.data, jnp.float32)
    r = jnp.asarray(reference.data, jnp.float32)
    return Image(_match(s, r, match_points, threshold_at_mean), source.grid)


@functools.partial(jit, static_argnums=(2, 3))
def _match(s: jax.Array, r: jax.Array, match_points: int, threshold_at_mean: bool) -> jax.Array:
    levels = jnp.arange(1, match_points + 1, dtype=jnp.float32) / (match_points + 1)

    def table(x):
        lo, hi = jnp.min(x), jnp.max(x)
        t = jnp.mean(x) if threshold_at_mean else lo
        q = _quantiles(x, x >= t, levels)
        return jnp.concatenate([t[None], q, hi[None]]), lo, hi

    st, s_min, s_max = table(s)
    rt, r_min, r_max = table(r)

    def slope(ds, dr):  # ITK: a segment of (almost) zero source width maps flat
        ok = jnp.abs(ds) > 1e-12 * jnp.maximum(jnp.abs(s_max - s_min), 1e-30)
        return jnp.where(ok, dr / jnp.where(ok, ds, 1.0), 0.0)

    grads = slope(jnp.diff(st), jnp.diff(rt))
    lower_grad = slope(st[0] - s_min, rt[0] - r_min)
    upper_grad = slope(st[-1] - s_max, rt[-1] - r_max)
    j = jnp.searchsorted(st, s, side="right")  # the number of control points <= x (ITK's first j with x < s_j)
    k = jnp.clip(j - 1, 0, match_points)
    inner = rt[k] + (s - st[k]) * grads[k]
    out = jnp.where(j == 0, r_min + (s - s_min) * lower_grad, inner)
    return jnp.where(j == match_points + 2, r_max + (s - s_max) * upper_grad, out).astype(jnp.float32)


_winsorize_image = winsorize  # prepare_pair's keyword argument of the same name shadows the function


def check_winsorize(quantiles: Any, name: str = "winsorize") -> tuple[float, float] | None:
    """Validate a ``(lower, upper)`` quantile pair (``None`` passes through).

    Returns:
      ``(lower, upper)`` as floats, or ``None``.

    Raises:
      ValueError: not two finite numbers with ``0 <= lower < upper <= 1`` (the message names ``name``).
    """
    if quantiles is None:
        return None
    try:
        lo, hi = (float(v) for v in quantiles)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected two quantiles (LOW, HIGH), got {quantiles!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
        raise ValueError(f"{name}: expected quantiles 0 <= LOW < HIGH <= 1, got {lo:g} {hi:g}")
    return lo, hi


def prepare_pair(
    fixed: Image, moving: Image, *, winsorize: tuple[float, float] | None = None, histogram_matching: bool = False
) -> tuple[Image, Image]:
    """The images a registration's metrics compare, in ``antsRegistration``'s order.

    Both images winsorised to the ``winsorize = (lower, upper)`` quantiles (:func:`winsorize`), then ``moving``
    matched to ``fixed``'s histogram (:func:`match_histogram`, 12 points above the mean). The transforms found
    apply to the original images.

    Args:
      fixed: one-channel fixed image ``(*shape)``.
      moving: one-channel moving image (its own grid).
      winsorize: quantiles ``(lower, upper)`` or ``None`` (off).
      histogram_matching: match the moving image's histogram to the fixed image's (one modality only).

    Returns:
      ``(fixed, moving)`` prepared (the inputs themselves when both steps are off).

    Raises:
      ValueError: bad quantiles (naming ``winsorize``) or multi-channel images.
    """
    w = check_winsorize(winsorize)
    if w is not None:
        fixed, moving = _winsorize_image(fixed, *w), _winsorize_image(moving, *w)
    if histogram_matching:
        moving = match_histogram(moving, fixed)
    return fixed, moving


def unsharp_mask(image: Image, amount: float = 0.5, sigma_mm: float | Any = None) -> Image:
    """Unsharp masking: ``out = I + amount (I - G_sigma * I)``.

    ITK's ``UnsharpMaskImageFilter`` with threshold 0 and no clamping (``ImageMath UnsharpMask I amount sigma 0
    0``, the sharpening ``antsMultivariateTemplateConstruction2.sh -A 2`` applies to each new template); the
    Gaussian is :func:`jaxreg.warp.pyramid.gaussian_smooth` (separable, truncated at 3 sigma, renormalised at
    the border, so a constant image is unchanged).

    Args:
      image: one-channel image ``(*shape)``.
      amount: weight of the high-pass part (>= 0; 0 returns the image as float32).
      sigma_mm: standard deviation of the Gaussian (mm, scalar or per axis); ``None``: one voxel per axis.

    Returns:
      The sharpened image (float32) on the same grid.

    Raises:
      ValueError: a negative or non-finite ``amount`` or ``sigma_mm``, or a multi-channel image.
    """
    from jaxreg.warp.pyramid import gaussian_smooth

    _check_image(image, "image")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"amount: expected a non-negative finite number, got {amount!r}")
    sigma = image.grid.spacing if sigma_mm is None else sigma_mm
    x = jnp.asarray(image.data, jnp.float32)
    blurred = gaussian_smooth(Image(x, image.grid), sigma).data
    return Image(x + float(amount) * (x - blurred), image.grid)
