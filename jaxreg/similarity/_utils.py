"""Shared helpers of the similarity metrics: argument checks, masks, weighted means and separable window sums.

Private to :mod:`jaxreg.similarity`. Everything here is shape-static and works for any number of spatial axes.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def float_dtype(*arrays) -> jnp.dtype:
    """The floating dtype a metric computes in: the inputs' common float dtype (integers/bools -> default)."""
    dtype = jnp.result_type(*arrays)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"images must be real-valued, got dtype {dtype}")
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def check_pair(fixed, moving, name: str = "moving"):
    """``fixed`` and ``moving`` as arrays of one float dtype and one shape."""
    fixed = jnp.asarray(fixed)
    moving = jnp.asarray(moving)
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed and {name} must have the same shape, got {fixed.shape} and {moving.shape}")
    if fixed.ndim == 0:
        raise ValueError("images must have at least one axis")
    dtype = float_dtype(fixed, moving)
    return fixed.astype(dtype), moving.astype(dtype)


def check_mask(mask, shape: tuple[int, ...], dtype, *, spatial_ndim: int | None = None):
    """Validate a mask of shape ``shape[:k]`` and return it as weights of ``dtype`` (or ``None``).

    The mask covers the leading (spatial) axes of the image; trailing image axes (channels) share its weight.
    Boolean masks become 0/1 weights; float masks are used as they are (weights in [0, 1] by convention).
    """
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    k = mask.ndim
    if spatial_ndim is not None and k != spatial_ndim:
        raise ValueError(
            f"mask: expected the {spatial_ndim}-D spatial shape {shape[:spatial_ndim]}, got {mask.shape}"
        )
    if k == 0 or tuple(mask.shape) != tuple(shape[:k]):
        raise ValueError(
            f"mask: expected the spatial shape of the images (a prefix of {shape}), got {mask.shape}"
        )
    if jnp.issubdtype(mask.dtype, jnp.complexfloating):
        raise ValueError("mask must be real-valued")
    return mask.astype(dtype)


def broadcast_mask(w, shape: tuple[int, ...]):
    """Append unit axes so that a spatial weight ``w`` broadcasts against an image of ``shape``."""
    return w.reshape(w.shape + (1,) * (len(shape) - w.ndim))


def safe_div(num, den):
    """``num / den`` where ``den != 0`` and 0 elsewhere, with finite gradients everywhere."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def weighted_mean(x, w):
    """Mean of ``x`` weighted by ``w`` (broadcast over trailing axes); 0 for an empty weight."""
    if w is None:
        return jnp.mean(x)
    wb = jnp.broadcast_to(broadcast_mask(w, x.shape), x.shape)
    return safe_div(jnp.sum(wb * x), jnp.sum(wb))


def resolve_ndim(ndim: int | None, image_ndim: int) -> int:
    """Number of spatial axes: ``ndim`` if given (the remaining trailing axis is channels), else all axes."""
    if ndim is None:
        return image_ndim
    if not isinstance(ndim, (int, np.integer)) or not (image_ndim - 1 <= ndim <= image_ndim) or ndim < 1:
        raise ValueError(
            f"ndim must be the number of spatial axes (image.ndim={image_ndim} or image.ndim - 1 for a "
            f"channel-last image), got {ndim!r}"
        )
    return int(ndim)


def as_spacing(spacing, ndim: int) -> np.ndarray:
    """Per-axis voxel spacing (mm) as a NumPy vector; ``None`` means 1 mm."""
    if spacing is None:
        return np.ones(ndim)
    s = (
        np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,))
        if np.ndim(spacing) == 0
        else np.asarray(spacing, dtype=np.float64)
    )
    if s.shape != (ndim,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing: expected {ndim} positive finite values (mm), got {spacing!r}")
    return s


def per_axis(value, ndim: int, name: str, *, kind=int) -> tuple:
    """Broadcast a scalar option to one value per spatial axis (checking the length of a sequence)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        vals = tuple(value)
        if len(vals) != ndim:
            raise ValueError(f"{name}: expected {ndim} values (one per spatial axis), got {value!r}")
    else:
        vals = (value,) * ndim
    return tuple(kind(v) for v in vals)


# ----------------------------------------------------------------------------------------------------------
# Separable window sums (zero outside the array)
# ----------------------------------------------------------------------------------------------------------


def box_sum(x, windows: Sequence[int], axes: Sequence[int]):
    """Sum of ``x`` over a centred box window, separably along ``axes``, zeros beyond the array.

    Each axis is one ``lax.reduce_window`` sum (a running window of odd length ``w``), whose reverse-mode
    derivative is again a window sum, so value and gradient cost ``O(sum(windows))`` per voxel, not
    ``O(prod(windows))``.
    """
    for w, ax in zip(windows, axes):
        if w == 1:
            continue
        r = w // 2
        dims = [1] * x.ndim
        dims[ax] = w
        pad = [(0, 0)] * x.ndim
        pad[ax] = (r, r)
        x = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, dims, (1,) * x.ndim, pad)
    return x


def _band_matrix(n: int, taps: Sequence[float]) -> np.ndarray:
    """``(n, n)`` matrix ``T[i, k] = taps[k - i + r]`` (zero outside the band): correlation with zero padding."""
    taps = np.asarray(taps, np.float64)
    r = len(taps) // 2
    t = np.zeros((n, n))
    for j, v in enumerate(taps):
        t += v * np.eye(n, k=j - r)
    return t


def separable_filter(x, kernels: Sequence[Sequence[float]], axes: Sequence[int]):
    """Separable correlation of ``x`` with 1-D kernels along ``axes``, zeros beyond the array.

    Each axis is one matrix product with the ``(n, n)`` band matrix of its taps. On CPU this is faster than a
    sum of shifted slices, whose chains XLA fuses across axes into ``O(K^2)`` recomputation in the backward
    pass (measured: ~20x the cost of a linear warp for LNCC with sigma = 2 on 160x192x224, vs ~3x here), and
    than ``lax.conv_general_dilated``. Both derivative modes are ordinary matrix products. The cost per voxel
    is ``O(sum(shape[axes]))``, independent of the kernel width.
    """
    for taps, ax in zip(kernels, axes):
        if len(taps) == 1:
            x = x * jnp.asarray(taps[0], x.dtype)
            continue
        t = jnp.asarray(_band_matrix(x.shape[ax], taps), x.dtype)
        letters = "abcdefghklmnopqrstuvw"[: x.ndim]
        src = letters.replace(letters[ax], "j")
        # full float32 precision also on accelerators whose default matmul precision is lower (TF32/bf16)
        x = jnp.einsum(f"{letters[ax]}j,{src}->{letters}", t, x, precision=lax.Precision.HIGHEST)
    return x


def gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """Unit-peak Gaussian taps ``exp(-k^2 / (2 sigma^2))`` for ``|k| <= ceil(truncate * sigma)`` (voxels)."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite (voxels), got {sigma!r}")
    r = max(int(math.ceil(truncate * sigma)), 1)
    k = np.arange(-r, r + 1, dtype=np.float64)
    return tuple(float(v) for v in np.exp(-0.5 * (k / sigma) ** 2))


def window_count(shape: Sequence[int], kernels: Sequence[Sequence[float]], dtype) -> jax.Array:
    """Window sum of an all-ones image (zeros outside): the outer product of per-axis 1-D constants.

    Built as a broadcast product inside the computation (which XLA fuses into its consumers) rather than as
    one full-size constant, which would be embedded in the compiled program.
    """
    out = None
    nd = len(shape)
    for ax, (n, taps) in enumerate(zip(shape, kernels)):
        taps = np.asarray(taps, np.float64)
        r = len(taps) // 2
        ones = np.pad(np.ones(n), r)
        line = np.array([np.dot(taps, ones[i : i + len(taps)]) for i in range(n)])
        line = jnp.asarray(line, dtype).reshape([n if a == ax else 1 for a in range(nd)])
        out = line if out is None else out * line
    return jnp.broadcast_to(out, tuple(shape))


def edge_pad(x, pads: Sequence[tuple[int, int]]):
    """Replicate-pad the leading axes of ``x`` (trailing axes untouched)."""
    full = list(pads) + [(0, 0)] * (x.ndim - len(pads))
    return jnp.pad(x, full, mode="edge")
