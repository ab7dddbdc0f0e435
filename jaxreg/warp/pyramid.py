"""Image pyramids: spacing-aware Gaussian smoothing and downsampling onto coarser grids.

Smoothing is separable (one 1-D convolution per axis) with ``sigma`` given in mm and converted to voxels per
axis, so anisotropic images are smoothed isotropically in physical space. At the border the kernel is truncated
to the image and renormalised (normalised convolution), so constants stay constant.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Image

__all__ = ["gaussian_kernel", "gaussian_smooth", "smooth_array", "downsample_image", "level_image", "pyramid"]


def gaussian_kernel(sigma: float, *, truncate: float = 3.0) -> np.ndarray:
    """Normalised 1-D Gaussian taps for ``sigma`` in voxels, radius ``ceil(truncate * sigma)``."""
    if sigma <= 0:
        return np.ones((1,), np.float64)
    r = max(1, int(np.ceil(truncate * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _band(n: int, taps: np.ndarray) -> np.ndarray:
    """``(n, n)`` matrix of the 1-D convolution with ``taps``, truncated at the border (not renormalised)."""
    r = (len(taps) - 1) // 2
    i = np.arange(n)
    d = i[None, :] - i[:, None] + r
    return np.where((d >= 0) & (d < len(taps)), taps[np.clip(d, 0, len(taps) - 1)], 0.0)


def _conv_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    r = (len(taps) - 1) // 2
    if r == 0:
        return x
    n = x.shape[axis]
    if len(taps) > 9:
        # long kernels: one dense matrix product per axis (a single op, BLAS speed) instead of many shifts
        m = _band(n, taps)
        m = jnp.asarray(m / m.sum(axis=1, keepdims=True), x.dtype)
        return jnp.moveaxis(jnp.tensordot(m, x, axes=([1], [axis])), 0, axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad)
    out = jnp.zeros_like(x)
    # sum of shifted copies (XLA fuses them into one pass), then divide by the weight that fell inside
    for k, w in enumerate(taps):
        out = out + jnp.asarray(w, x.dtype) * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
    norm = _band(n, taps).sum(axis=1)
    shape = [1] * x.ndim
    shape[axis] = n
    return out / jnp.asarray(norm, x.dtype).reshape(shape)


def smooth_array(data: jax.Array, sigma_voxels: Sequence[float], *, truncate: float = 3.0) -> jax.Array:
    """Separable Gaussian smoothing of ``data`` ``(*spatial[, C])`` with per-axis ``sigma_voxels``.

    Kernels are truncated at ``truncate`` sigma; at the border the part of the kernel outside the image is
    dropped and the rest renormalised, so constants stay constant and border voxels get no extra weight.
    """
    out = data
    for ax, s in enumerate(sigma_voxels):
        out = _conv_axis(out, gaussian_kernel(float(s), truncate=truncate), ax)
    return out


def gaussian_smooth(image: Image, sigma_mm: float | Sequence[float], *, truncate: float = 3.0) -> Image:
    """Gaussian smoothing with standard deviation ``sigma_mm`` (mm, scalar or per array axis of the grid).

    One 1-D Gaussian per array axis with ``sigma_d = sigma_mm_d / spacing_d`` voxels (:func:`smooth_array`),
    so anisotropic images are smoothed isotropically in mm; kernels end at ``truncate`` sigma and are
    renormalised at the border, so a constant stays constant. The library's one Gaussian smoothing of an image
    (:func:`jaxreg.data.gaussian_smooth` is its form for a bare array and a grid).

    Args:
      image: image ``(*shape[, C])``; integer images are smoothed as float32, floating ones keep their dtype.
      sigma_mm: standard deviation in mm, scalar or per axis; 0 leaves an axis unchanged.
      truncate: kernel radius in standard deviations (static).

    Returns:
      The smoothed image on the same grid.

    Raises:
      TypeError: ``image`` is not a jaxreg ``Image``.
      ValueError: a negative or non-finite ``sigma_mm``, or one of the wrong length.
    """
    if not isinstance(image, Image):
        raise TypeError(f"image: expected a jaxreg Image, got {type(image).__name__}")
    try:
        sig = np.broadcast_to(np.asarray(sigma_mm, np.float64), (image.grid.ndim,))
    except ValueError:
        raise ValueError(
            f"sigma_mm: expected a scalar or {image.grid.ndim} values (one per axis), got {sigma_mm!r}"
        ) from None
    if np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise ValueError(f"sigma_mm: expected non-negative finite values, got {sig.tolist()}")
    data = image.data if jnp.issubdtype(image.data.dtype, jnp.floating) else image.data.astype(jnp.float32)
    return Image(smooth_array(data, sig / image.grid.spacing, truncate=truncate), image.grid)


def downsample_image(image: Image, factor: int | Sequence[int], *, sigma_mm: float | None = None) -> Image:
    """Smooth, then resample on ``image.grid.downsample(factor)`` (same extent, coarser spacing).

    Args:
      image: input image.
      factor: integer shrink factor per axis (1 keeps the axis).
      sigma_mm: smoothing before resampling; default ``0.5 * factor * spacing`` per axis (anti-aliasing,
        in mm, as a per-axis value).

    Returns:
      The image on the coarser grid.
    """
    from jaxreg.warp import resample  # local import: warp imports this module

    f = np.broadcast_to(np.asarray(factor), (image.grid.ndim,))
    target = image.grid.downsample(tuple(int(v) for v in f))
    if sigma_mm is None:
        sig_vox = np.where(f > 1, 0.5 * f, 0.0)
        data = image.data if jnp.issubdtype(image.data.dtype, jnp.floating) else image.data.astype(jnp.float32)
        smoothed = Image(smooth_array(data, sig_vox), image.grid)
    else:
        smoothed = gaussian_smooth(image, sigma_mm)
    return resample(smoothed, target, order=1, mode="nearest")


@functools.partial(jit, static_argnums=(1, 2))
def _level_image(image: Image, shrink: int, smooth_mm: float) -> Image:
    if shrink > 1:
        return downsample_image(image, shrink, sigma_mm=smooth_mm if smooth_mm > 0 else None)
    data = image.data if jnp.issubdtype(image.data.dtype, jnp.floating) else image.data.astype(jnp.float32)
    return gaussian_smooth(Image(data, image.grid), smooth_mm) if smooth_mm > 0 else Image(data, image.grid)


def level_image(image: Image, shrink: int = 1, smooth_mm: float = 0.0) -> Image:
    """One level of the resolution pyramid (the one the registration engine uses), jitted.

    ``shrink > 1``: :func:`downsample_image` by ``shrink`` with Gaussian smoothing of ``smooth_mm`` mm, or the
    anti-aliasing sigma of ``shrink / 2`` voxels when ``smooth_mm`` is 0; ``shrink == 1``: the image smoothed by
    ``smooth_mm`` mm (unchanged when 0). Integer images are cast to float32.

    Args:
      image: input image ``(*shape[, C])``.
      shrink: integer downsampling factor (static).
      smooth_mm: Gaussian sigma in mm (static).

    Returns:
      The level's image on ``image.grid.downsample(shrink)`` (or on ``image.grid``).
    """
    if int(shrink) < 1 or float(smooth_mm) < 0:
        raise ValueError(f"shrink/smooth_mm: expected shrink >= 1 and smooth_mm >= 0, got {shrink!r}, {smooth_mm!r}")
    return _level_image(image, int(shrink), float(smooth_mm))


def pyramid(image: Image, factors: Sequence[int], *, smooth_mm: float = 0.0) -> list[Image]:
    """:func:`level_image` for each factor in ``factors`` (e.g. ``(4, 2, 1)``), coarse to fine."""
    return [level_image(image, int(f), smooth_mm) for f in factors]

