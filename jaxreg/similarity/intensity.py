"""Intensity-difference and correlation losses: SSD, MSE, global NCC and local (windowed) NCC.

Each loss compares a fixed image with a moving image that is already resampled on the fixed grid (e.g. by
:func:`jaxreg.warp`), returns a scalar where **lower is better**, and takes an optional ``mask``: spatial
weights in [0, 1] (or booleans) of the images' spatial shape; a voxel of weight 0 does not count. Images are
``(*spatial)`` or channel-last ``(*spatial, C)``; results keep the images' float dtype.

Conventions for the signs: difference measures are returned as they are (0 is a perfect match); correlation
measures are negated (``-NCC`` in [-1, 1], ``-LNCC`` in [-1, 0]) as in VoxelMorph, so that their gradients are
those of the similarity with the sign flipped. Add 1 for a non-negative loss if needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.registry import configured, register_term
from jaxreg.similarity import _utils as U

__all__ = ["ssd", "mse", "ncc", "lncc"]

Loss = Callable[..., jax.Array]


@register_term("similarity")
@jax.jit
def ssd(fixed: jax.Array, moving: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sum of squared differences, ``SSD = sum_x w(x) sum_c (F(x, c) - M(x, c))^2``.

    Args:
        fixed: Fixed image ``(*spatial)`` or ``(*spatial, C)``, any intensity units.
        moving: Moving image resampled on the fixed grid, same shape.
        mask: Optional spatial weights ``w`` of shape ``spatial`` (bool or float in [0, 1]); ``None`` is 1.

    Returns:
        Scalar in squared intensity units (0 for identical images, 0 for an empty mask), in the images' float
        dtype. It grows with the number of voxels; :func:`mse` is the per-voxel mean.
    """
    fixed, moving = U.check_pair(fixed, moving)
    w = U.check_mask(mask, fixed.shape, fixed.dtype)
    d2 = (fixed - moving) ** 2
    if w is not None:
        d2 = U.broadcast_mask(w, d2.shape) * d2
    return jnp.sum(d2)


@register_term("similarity")
@jax.jit
def mse(fixed: jax.Array, moving: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared difference, ``MSE = sum_x w(x) sum_c (F - M)^2 / (C sum_x w(x))``.

    Args:
        fixed: Fixed image ``(*spatial)`` or ``(*spatial, C)``.
        moving: Moving image resampled on the fixed grid, same shape.
        mask: Optional spatial weights (bool or float in [0, 1]).

    Returns:
        Scalar in squared intensity units: the weighted mean over voxels (and channels) of the squared
        difference; 0 for an empty mask (no epsilon: the 0/0 case is defined as 0).
    """
    fixed, moving = U.check_pair(fixed, moving)
    w = U.check_mask(mask, fixed.shape, fixed.dtype)
    return U.weighted_mean((fixed - moving) ** 2, w)


@register_term("similarity")
@jax.jit
def ncc(fixed: jax.Array, moving: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Negated global normalised cross-correlation (Pearson correlation of the intensities).

    ``NCC = cov_w(F, M) / (std_w(F) std_w(M))`` with weighted moments over all voxels (and channels, pooled):
    ``mu_F = sum w F / sum w``, ``cov_w(F, M) = sum w (F - mu_F)(M - mu_M) / sum w``. The loss is ``-NCC``,
    in [-1, 1]: -1 for an exact positive linear intensity relation. No epsilon is added: if either image is
    constant on the mask (zero variance), or the mask is empty, NCC is defined as 0 (loss 0), with finite
    gradients. Invariant to positive affine intensity changes of either image.

    Args:
        fixed: Fixed image ``(*spatial)`` or ``(*spatial, C)``.
        moving: Moving image resampled on the fixed grid, same shape.
        mask: Optional spatial weights (bool or float in [0, 1]).

    Returns:
        Scalar ``-NCC`` (dimensionless), in the images' float dtype.
    """
    fixed, moving = U.check_pair(fixed, moving)
    w = U.check_mask(mask, fixed.shape, fixed.dtype)
    f = fixed - U.weighted_mean(fixed, w)
    m = moving - U.weighted_mean(moving, w)
    vf = U.weighted_mean(f * f, w)
    vm = U.weighted_mean(m * m, w)
    cov = U.weighted_mean(f * m, w)
    ok = (vf > 0) & (vm > 0)
    sf = jnp.sqrt(jnp.where(ok, vf, 1))
    sm = jnp.sqrt(jnp.where(ok, vm, 1))
    return -jnp.where(ok, (cov / sf) / sm, 0)


def _min_max_normalise(x, w):
    """``(x - lo) / (hi - lo)`` with the (masked) min ``lo`` and max ``hi``; ``x - lo`` if ``hi == lo``.

    Differentiable (the derivative reaches the extreme voxels through ``lo`` and ``hi``); an empty mask gives
    ``lo = hi = 0``. Voxels at the minimum (typically the background) map to exact zeros, so flat background
    windows have exactly zero moments.
    """
    if w is None:
        lo, hi = jnp.min(x), jnp.max(x)
    else:
        inside = U.broadcast_mask(w, x.shape) > 0
        lo = jnp.min(jnp.where(inside, x, jnp.inf))
        hi = jnp.max(jnp.where(inside, x, -jnp.inf))
        empty = ~jnp.any(inside)
        lo = jnp.where(empty, 0, lo).astype(x.dtype)
        hi = jnp.where(empty, 0, hi).astype(x.dtype)
    width = hi - lo
    ok = width > 0
    return (x - lo) * jnp.where(ok, 1 / jnp.where(ok, width, 1), 1)


@configured("similarity")
def lncc(
    window: int | Sequence[int] | None = None,
    *,
    sigma: float | Sequence[float] | None = None,
    truncate: float = 3.0,
    ndim: int | None = None,
) -> Loss:
    """Local normalised cross-correlation in a sliding box or Gaussian window (VoxelMorph's ``NCC`` loss).

    For each voxel ``x`` the window weights are ``a_x(y) = k(y - x) w(y)``, with ``k`` the window taps (1 in a
    box of ``window`` voxels per axis, or ``exp(-d^2 / (2 sigma^2))`` for a Gaussian, truncated at
    ``truncate * sigma``), ``w`` the mask (1 when ``mask`` is ``None``) and zeros outside the image. With the
    window sums ``S_a = sum a``, ``S_I = sum a I``, ``S_II = sum a I^2``, ``S_IJ = sum a I J`` (same for J)::

        cross = S_IJ - S_I S_J / S_a,   var_I = S_II - S_I^2 / S_a,   var_J = S_JJ - S_J^2 / S_a
        cc(x) = cross^2 / (var_I var_J + eps)                 (squared local correlation, in [0, 1])
        LNCC  = sum_x w(x) cc(x) / sum_x w(x)                 (mean over voxels and channels)
        loss  = -LNCC                                          (in [-1, 0], lower is better)

    This is the definition of VoxelMorph (Balakrishnan et al., IEEE TMI 38(8), 2019; after Avants et al.,
    MedIA 12(1), 2008, the ANTs ``CC`` metric) with its epsilon ``eps = 1e-5`` added to the product of the
    *window-sum* variances, for images in [0, 1]: each image is first mapped to [0, 1] by its (masked) min and
    max. LNCC does not depend on that affine map except through ``eps``, which thereby has one meaning for
    any intensity scale (images in 0..255 or 1e6 give the same loss as in [0, 1]) and keeps float32
    round-off in flat windows (~1e-7 of the window sums) far below it; the background at the minimum maps
    to exact zeros. The map is differentiated too (it reaches the extreme voxels). The sums use unit taps,
    so a box window matches VoxelMorph's sums: away from the image border and without a mask the window holds
    ``prod(window)`` voxels and the result equals VoxelMorph's for images in [0, 1]. At the border only
    voxels inside the image count (``S_a`` is their number), i.e. each local moment is
    ``scipy.ndimage.uniform_filter(., mode="constant")`` of the product divided by that of an all-ones image,
    where VoxelMorph counts the zero padding as voxels (the two agree when the content is at least
    ``2 * (window // 2)`` voxels from the border). With a mask, masked-out voxels enter neither the local
    moments, nor the mean, nor the min/max, so the loss does not depend on the image values there. Windows
    without counted voxels give ``cc = 0``; constant images give 0; negative round-off in ``var`` is clamped
    to 0; never NaN.

    Implementation: the window sums are separable: a running box sum per axis (``lax.reduce_window``), cost
    ``O(sum(window))`` per voxel for value and gradient (not ``O(prod(window))``); the Gaussian window is one
    matrix product per axis with the band matrix of its taps (cost ``O(sum(shape))`` per voxel, independent
    of ``sigma``; on CPU faster than shifted sums, see :func:`jaxreg.similarity._utils.separable_filter`).
    Both are plain JAX, so forward- and reverse-mode derivatives are available.

    Args:
        window: Box window size in voxels, an odd int or one odd int per spatial axis. Default 9 (VoxelMorph).
            Static. Mutually exclusive with ``sigma``.
        sigma: Gaussian window standard deviation in voxels (float or per axis). Static.
        truncate: Gaussian window radius in units of ``sigma``. Static.
        ndim: Number of spatial axes; ``None``: all axes of the images (no channel axis), or the length of a
            per-axis ``window``/``sigma``. Use ``ndim = image.ndim - 1`` for channel-last images. Static.

    Returns:
        ``loss(fixed, moving, mask=None, *, eps=1e-5) -> scalar``, jitted; ``mask`` has the spatial shape,
        ``eps`` is traced.

    Raises:
        ValueError: For even or non-positive windows, both ``window`` and ``sigma``, or mismatched axes.
    """
    if window is not None and sigma is not None:
        raise ValueError("lncc: give either a box window or a Gaussian sigma, not both")
    gaussian = sigma is not None
    spec = sigma if gaussian else (9 if window is None else window)
    spec_nd = len(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else None
    if ndim is not None and spec_nd is not None and spec_nd != ndim:
        raise ValueError(f"lncc: {spec_nd} window values for ndim={ndim}")
    if not gaussian:
        sizes = spec if spec_nd is not None else (spec,)
        for s in sizes:
            if not isinstance(s, (int, np.integer)) or s < 1 or s % 2 == 0:
                raise ValueError(f"lncc: window sizes must be odd positive ints (voxels), got {window!r}")
    if not truncate > 0:
        raise ValueError(f"lncc: truncate must be positive, got {truncate!r}")
    nd_default = ndim if ndim is not None else spec_nd

    def kernels_for(nd: int):
        if gaussian:
            sig = U.per_axis(spec, nd, "sigma", kind=float)
            return tuple(U.gaussian_taps(s, truncate) for s in sig)
        return tuple((1.0,) * w for w in U.per_axis(spec, nd, "window"))

    def loss(fixed, moving, mask=None, *, eps=1e-5):
        fixed, moving = U.check_pair(fixed, moving)
        nd = U.resolve_ndim(nd_default, fixed.ndim)
        spatial = fixed.shape[:nd]
        w = U.check_mask(mask, fixed.shape, fixed.dtype, spatial_ndim=nd)
        kernels = kernels_for(nd)
        axes = tuple(range(nd))
        if gaussian:
            filt = lambda q: U.separable_filter(q, kernels, axes)  # noqa: E731
        else:
            filt = lambda q: U.box_sum(q, [len(k) for k in kernels], axes)  # noqa: E731

        f = _min_max_normalise(fixed, w)
        m = _min_max_normalise(moving, w)
        if w is None:
            count = U.broadcast_mask(U.window_count(spatial, kernels, fixed.dtype), fixed.shape)
            sums = [filt(q) for q in (f, m, f * f, m * m, f * m)]
        else:
            wb = U.broadcast_mask(w, fixed.shape)
            wf, wm = wb * f, wb * m
            sums = [filt(q) for q in (wf, wm, wf * f, wm * m, wf * m)]
            count = filt(w)
            count = U.broadcast_mask(count, fixed.shape)
        s_i, s_j, s_ii, s_jj, s_ij = sums
        ok = count > 0
        inv_n = jnp.where(ok, 1 / jnp.where(ok, count, 1), 0)
        cross = s_ij - s_i * s_j * inv_n
        var_i = jnp.maximum(s_ii - s_i * s_i * inv_n, 0)
        var_j = jnp.maximum(s_jj - s_j * s_j * inv_n, 0)
        cc = U.safe_div(cross * cross, var_i * var_j + jnp.asarray(eps, fixed.dtype))
        return -U.weighted_mean(cc, w)

    loss.__doc__ = (
        f"LNCC loss ({'Gaussian sigma=' + repr(sigma) if gaussian else 'box window=' + repr(spec)}); "
        "see :func:`jaxreg.similarity.lncc`.\n\n"
        "Args:\n    fixed, moving: images ``(*spatial)`` or ``(*spatial, C)``.\n"
        "    mask: optional spatial weights.\n"
        "    eps: epsilon added to var_I var_J (window-sum units of the images\n"
        "        min-max normalised to [0, 1]).\n\n"
        "Returns:\n    Scalar ``-LNCC`` in [-1, 0]."
    )
    return jax.jit(loss)
