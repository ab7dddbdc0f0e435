"""Statistical (histogram) similarity: mutual information, normalised MI and the correlation ratio.

These measures compare the *distributions* of intensities rather than the intensities themselves, so they
apply across modalities. All are computed from Parzen-window histograms whose bins are filled with smooth
kernel weights, which makes them differentiable with respect to the intensities.

**Histograms without scatter.** Every voxel ``n`` has a row of kernel weights over the bins, ``W[n, k] =
K(t_n - k)`` where ``t_n`` is the voxel's continuous bin coordinate. The (unnormalised) joint histogram is
then a matrix product, ``P = W_F^T diag(w) W_M``, and the correlation ratio's per-bin sums are
``W_F^T [w, w M, w M^2]``. No scatter-add is needed. To keep memory bounded for whole volumes (7M voxels x 32
bins would be ~0.9 GB per matrix), the voxels are processed in chunks of 4096 under ``lax.scan`` with
``jax.checkpoint``, so the kernel rows are recomputed in the backward pass instead of being stored.

**Derivatives.** For the cubic B-spline kernel the reverse-mode derivative does not repeat the product: with
the histogram cotangent ``G``, voxel ``n`` receives ``w_n grad S_G(tf_n, tm_n)``, the gradient of the
bicubic B-spline with coefficients ``G`` at the voxel's pair of bin coordinates, evaluated for all voxels by
one :func:`jaxreg.core.map_coordinates` call (16 taps per voxel; a custom VJP, so reverse mode only). For
the Gaussian kernel the derivative is the autodiff of the chunked products (a product with ``W_F`` again).
Measured on a 2-core CPU for 160x192x224 and 32 bins: value and gradient of B-spline MI cost ~2x one linear
warp forward+backward (~3.2x when the backward pass is a second chunked product); a scatter-add of the 16
compact-support products per voxel is slower than the chunked products, and one unchunked product needs ~3 GB.

**Bins.** Intensities in ``[lo, hi]`` (each image's min/max over the mask by default, or given) map linearly
to bin coordinates; values outside a given range are clamped to its ends. The data-derived min/max are part of
the measure and are differentiated too (their derivative reaches the extreme voxels); pass fixed ranges for
bins that do not move with the data (ITK's Mattes MI fixes them once). Per kernel:

* ``"bspline"`` -- cubic B-spline ``beta3`` (support 4 bins), ``t = 1 + (bins - 3) (x - lo) / (hi - lo)``,
  so the support of every voxel lies inside the ``bins`` bins and each row sums to exactly 1 (partition of
  unity). This is the Parzen window of Mattes et al. (IEEE TMI 22(1), 2003), applied here to *both* images,
  which keeps MI symmetric (Mattes use a zero-order window on the fixed image).
* ``"gaussian"`` -- ``exp(-(t - k)^2 / (2 sigma^2))``, ``t = (bins - 1) (x - lo) / (hi - lo)``, ``sigma`` in
  bins, each row normalised to sum 1 (Viola & Wells style Parzen estimate on a grid).
* ``"box"`` -- hard binning into ``bins`` equal-width bins ``floor(bins (x - lo) / (hi - lo))`` (the top edge
  goes to the last bin), as ``numpy.histogram2d``. Exact for evaluation; its derivative is zero.

Entropies are in nats, with ``0 log 0 = 0`` (no epsilon; the derivative of an empty bin is taken as 0, which
is exact for the smooth kernels since a bin is empty only if no voxel's kernel reaches it).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxreg.core.registry import configured
from jaxreg.core.sampling import map_coordinates
from jaxreg.similarity import _utils as U

__all__ = ["joint_histogram", "mi", "nmi", "correlation_ratio"]

Loss = Callable[..., jax.Array]

_KERNELS = ("bspline", "gaussian", "box")
_CHUNK = 4096  # voxels per histogram chunk (measured on CPU: 1k-8k are equally fast; larger is slower)


def _check_config(bins, kernel, sigma):
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if not isinstance(bins, int) or isinstance(bins, bool):
        raise ValueError(f"bins must be an int, got {bins!r}")
    min_bins = 5 if kernel == "bspline" else 2
    if bins < min_bins:
        raise ValueError(f"bins must be >= {min_bins} for the {kernel!r} kernel, got {bins}")
    if kernel == "gaussian" and not (float(sigma) > 0):
        raise ValueError(f"sigma must be positive (bins), got {sigma!r}")


def _intensity_range(x, w, given):
    """``(lo, hi)``: the given range, or the min/max of ``x`` over voxels with positive weight.

    The min/max are differentiated like the rest (the derivative reaches the extreme voxels), so gradients
    are those of the measure as defined, including the dependence of the bins on the data.
    """
    if given is not None:
        lo, hi = given
        return jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype)
    if w is None:
        lo, hi = jnp.min(x), jnp.max(x)
    else:
        inside = w > 0
        lo = jnp.min(jnp.where(inside, x, jnp.inf))
        hi = jnp.max(jnp.where(inside, x, -jnp.inf))
        empty = ~jnp.any(inside)
        lo = jnp.where(empty, 0, lo).astype(x.dtype)
        hi = jnp.where(empty, 0, hi).astype(x.dtype)
    return lo, hi


def _bin_coordinate(x, lo, hi, bins: int, kernel: str):
    """Continuous bin coordinate of each intensity (see the module docstring)."""
    width = hi - lo
    ok = width > 0
    u = jnp.where(ok, (x - lo) / jnp.where(ok, width, 1), 0)
    u = jnp.clip(u, 0, 1)
    if kernel == "bspline":
        return 1 + (bins - 3) * u
    if kernel == "gaussian":
        return (bins - 1) * u
    return jnp.minimum(jnp.floor(bins * u), bins - 1)  # box: integer-valued bin index


def _bspline3(x):
    """Cubic B-spline ``beta3(x) = ((2 - |x|)_+^3 - 4 (1 - |x|)_+^3) / 6`` (branch-free)."""
    a = jnp.abs(x)
    r2 = jnp.maximum(2 - a, 0)
    r1 = jnp.maximum(1 - a, 0)
    return (r2 * r2 * r2 - 4 * (r1 * r1 * r1)) * (1 / 6)


def _kernel_rows(t, bins: int, kernel: str, sigma: float):
    """``(n, bins)`` kernel weights of bin coordinates ``t`` (n,)."""
    k = jnp.arange(bins, dtype=t.dtype)
    d = t[:, None] - k
    if kernel == "bspline":
        return _bspline3(d)
    if kernel == "gaussian":
        g = jnp.exp((-0.5 / (sigma * sigma)) * d * d)
        return g / jnp.sum(g, axis=1, keepdims=True)
    return (d == 0).astype(t.dtype)


def _chunked_sum(fn, arrays, chunk: int | None = None):
    """``sum_c fn(*chunk_c)`` over chunks of the leading axis of ``arrays`` (zero-padded to a multiple).

    Padding rows are zeros; callers pass a weight array among ``arrays`` so that they contribute nothing.
    The per-chunk function is checkpointed: its intermediates (the dense kernel rows) are recomputed in the
    backward pass rather than stored for all chunks.
    """
    chunk = _CHUNK if chunk is None else chunk
    n = arrays[0].shape[0]
    if n <= chunk:
        return fn(*arrays)
    c = -(-n // chunk)
    pad = c * chunk - n
    arrays = [
        jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((c, chunk) + a.shape[1:]) for a in arrays
    ]
    body_fn = jax.checkpoint(fn, prevent_cse=False)
    out_shape = jax.eval_shape(fn, *[a[0] for a in arrays])

    def body(acc, xs):
        return acc + body_fn(*xs), None

    acc, _ = lax.scan(body, jnp.zeros(out_shape.shape, out_shape.dtype), arrays)
    return acc


def _weighted_gram(tf, tm, w, bins: int, kernel: str, sigma: float):
    """Unnormalised joint histogram ``W(tf)^T diag(w) W(tm)`` by chunked matrix products."""

    def chunk(tf_c, tm_c, w_c):
        kf = _kernel_rows(tf_c, bins, kernel, sigma)
        km = _kernel_rows(tm_c, bins, kernel, sigma) * w_c[:, None]
        # HIGHEST: full float32 also where the default matmul precision is TF32/bf16 (GPU/TPU)
        return jnp.matmul(kf.T, km, precision=lax.Precision.HIGHEST)

    return _chunked_sum(chunk, [tf, tm, w])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bspline_gram(tf, tm, w, bins: int):
    """Cubic B-spline joint histogram with a gather-based reverse-mode derivative.

    With the cotangent ``G`` of the histogram, the derivative with respect to the bin coordinates of voxel
    ``n`` is ``w_n grad S_G(tf_n, tm_n)``, where ``S_G(x, y) = sum_ab G[a, b] beta3(x - a) beta3(y - b)`` is
    the tensor-product cubic B-spline with coefficients ``G``; and the derivative with respect to ``w_n`` is
    ``S_G(tf_n, tm_n)``. Both come from one :func:`jaxreg.core.map_coordinates` call on the ``(bins, bins)``
    array ``G`` (16 taps per voxel, value and derivative in one pass), instead of a second ``N x bins x bins``
    matrix product: the backward pass costs about as much as a cubic interpolation, not a histogram.
    Reverse mode only (``jax.jvp`` is not available for this kernel).
    """
    return _weighted_gram(tf, tm, w, bins, "bspline", 1.0)


def _bspline_gram_fwd(tf, tm, w, bins):
    return _weighted_gram(tf, tm, w, bins, "bspline", 1.0), (tf, tm, w)


def _bspline_gram_bwd(bins, res, g):
    tf, tm, w = res
    coords = jnp.stack([tf, tm], axis=-1)
    # every coordinate lies in [1, bins - 2]: taps beyond the edges have zero weight, so the mode is moot
    values, pullback = jax.vjp(
        lambda c: map_coordinates(g, c, order=3, mode="constant", prefilter=False), coords
    )
    (dcoords,) = pullback(w)
    return dcoords[:, 0], dcoords[:, 1], values


_bspline_gram.defvjp(_bspline_gram_fwd, _bspline_gram_bwd)


def _flatten(fixed, moving, w):
    f = fixed.reshape(-1)
    m = moving.reshape(-1)
    wf = None if w is None else jnp.broadcast_to(U.broadcast_mask(w, fixed.shape), fixed.shape).reshape(-1)
    return f, m, wf


def _joint(fixed, moving, mask, bins, kernel, sigma, fixed_range, moving_range):
    """Normalised joint histogram ``(bins, bins)`` (rows: fixed bins, columns: moving bins)."""
    fixed, moving = U.check_pair(fixed, moving)
    w = U.check_mask(mask, fixed.shape, fixed.dtype)
    f, m, wv = _flatten(fixed, moving, w)
    if wv is None:
        wv = jnp.ones_like(f)
    tf = _bin_coordinate(f, *_intensity_range(f, wv if mask is not None else None, fixed_range), bins, kernel)
    tm = _bin_coordinate(
        m, *_intensity_range(m, wv if mask is not None else None, moving_range), bins, kernel
    )
    if kernel == "bspline":
        p = _bspline_gram(tf, tm, wv, bins)
    else:
        if kernel == "box":
            tf, tm = lax.stop_gradient(tf), lax.stop_gradient(tm)
        p = _weighted_gram(tf, tm, wv, bins, kernel, sigma)
    return U.safe_div(p, jnp.sum(p))


def _entropy(p):
    """``-sum p log p`` (nats) with ``0 log 0 = 0`` and a zero derivative for empty bins."""
    pos = p > 0
    return -jnp.sum(jnp.where(pos, p * jnp.log(jnp.where(pos, p, 1)), 0))


def _entropies(p):
    return _entropy(jnp.sum(p, axis=1)), _entropy(jnp.sum(p, axis=0)), _entropy(p)


@functools.partial(jax.jit, static_argnames=("bins", "kernel", "sigma"))
def joint_histogram(
    fixed: jax.Array,
    moving: jax.Array,
    mask: jax.Array | None = None,
    *,
    bins: int = 32,
    kernel: str = "bspline",
    sigma: float = 1.0,
    fixed_range: tuple | None = None,
    moving_range: tuple | None = None,
) -> jax.Array:
    """Parzen-window joint intensity histogram ``p(a, b)`` of two images, normalised to sum 1.

    ``p[a, b] = sum_n w_n K(tf_n - a) K(tm_n - b) / sum_n w_n`` (all kernels sum to 1 over the bins), computed
    as the matrix product ``W_F^T diag(w) W_M`` of the kernel-weight rows (see the module docstring for the
    kernels, bin coordinates and chunking). Voxels and channels are pooled.

    Args:
        fixed: Image ``(*spatial)`` (or with channels: all values are pooled).
        moving: Image of the same shape.
        mask: Optional spatial weights; an empty mask gives an all-zero histogram.
        bins: Number of bins per image. Static.
        kernel: ``"bspline"`` (cubic, default), ``"gaussian"`` or ``"box"`` (hard binning). Static.
        sigma: Gaussian kernel standard deviation in bins. Static.
        fixed_range: ``(lo, hi)`` intensity range of the fixed image; ``None``: its min/max over the mask.
        moving_range: Same for the moving image.

    Returns:
        ``(bins, bins)`` probabilities; rows index fixed-image bins, columns moving-image bins.
    """
    _check_config(bins, kernel, sigma)
    return _joint(fixed, moving, mask, bins, kernel, float(sigma), fixed_range, moving_range)


@configured("similarity")
def mi(bins: int = 32, *, kernel: str = "bspline", sigma: float = 1.0) -> Loss:
    """Negated mutual information of a Parzen-window joint histogram (Mattes et al. 2003 style).

    ``MI(F, M) = H(F) + H(M) - H(F, M) = sum_ab p(a, b) log(p(a, b) / (p_F(a) p_M(b)))`` in nats, with ``p``
    from :func:`joint_histogram` and the marginals its row and column sums. The loss is ``-MI`` (lower is
    better). MI is 0 for independent images (and for a constant image or an empty mask) and at most
    ``min(H(F), H(M))``; with the hard ``"box"`` kernel, ``MI(x, x) = H(x)`` exactly; the smooth kernels blur
    the joint histogram, so ``MI(x, x) = 2 H(x) - H(x, x)`` is somewhat smaller. Invariant to invertible
    intensity remappings up to the binning. References: Viola & Wells (IJCV 24(2), 1997); Maes et al. (IEEE
    TMI 16(2), 1997); Mattes et al. (IEEE TMI 22(1), 2003) for the cubic B-spline Parzen window.
    Differentiable with respect to both images (and the mask weights); reverse mode only for the B-spline
    kernel (see the module docstring), both modes for the Gaussian one.

    Args:
        bins: Bins per image (default 32). Static.
        kernel: ``"bspline"`` (cubic B-spline, default), ``"gaussian"`` or ``"box"`` (no gradient). Static.
        sigma: Gaussian kernel standard deviation in bins (``kernel="gaussian"`` only). Static.

    Returns:
        ``loss(fixed, moving, mask=None, *, fixed_range=None, moving_range=None) -> -MI`` (scalar, jitted),
        where the ranges are ``(lo, hi)`` intensity ranges (traced; default: min/max over the mask).
    """
    _check_config(bins, kernel, sigma)
    sigma = float(sigma)

    def loss(fixed, moving, mask=None, *, fixed_range=None, moving_range=None):
        p = _joint(fixed, moving, mask, bins, kernel, sigma, fixed_range, moving_range)
        hf, hm, hfm = _entropies(p)
        return -(hf + hm - hfm)

    loss.__doc__ = f"-MI loss ({bins} bins, {kernel} kernel); see :func:`jaxreg.similarity.mi`."
    return jax.jit(loss)


@configured("similarity")
def nmi(bins: int = 32, *, kernel: str = "bspline", sigma: float = 1.0) -> Loss:
    """Negated normalised mutual information (Studholme et al., Pattern Recognition 32(1), 1999).

    ``NMI(F, M) = (H(F) + H(M)) / H(F, M)``, in [1, 2]: 1 for independent images, 2 for a one-to-one
    intensity relation (exactly 2 for ``NMI(x, x)`` with the ``"box"`` kernel; smooth kernels give less).
    Unlike MI it does not grow with the overlap's marginal entropies. If ``H(F, M) = 0`` (both images
    constant on the mask, or an empty mask) NMI is defined as 1, the value for a constant image, so that no
    degenerate configuration is rewarded; no epsilon is used. The loss is ``-NMI``. Histograms, kernels and
    ranges as in :func:`mi`.

    Args:
        bins: Bins per image (default 32). Static.
        kernel: ``"bspline"`` (default), ``"gaussian"`` or ``"box"``. Static.
        sigma: Gaussian kernel standard deviation in bins. Static.

    Returns:
        ``loss(fixed, moving, mask=None, *, fixed_range=None, moving_range=None) -> -NMI`` (jitted).
    """
    _check_config(bins, kernel, sigma)
    sigma = float(sigma)

    def loss(fixed, moving, mask=None, *, fixed_range=None, moving_range=None):
        p = _joint(fixed, moving, mask, bins, kernel, sigma, fixed_range, moving_range)
        hf, hm, hfm = _entropies(p)
        ok = hfm > 0
        return -jnp.where(ok, (hf + hm) / jnp.where(ok, hfm, 1), 1)

    loss.__doc__ = f"-NMI loss ({bins} bins, {kernel} kernel); see :func:`jaxreg.similarity.nmi`."
    return jax.jit(loss)


@configured("similarity")
def correlation_ratio(bins: int = 32, *, kernel: str = "box", sigma: float = 1.0) -> Loss:
    """Correlation ratio of the moving intensities given the binned fixed intensities (Roche et al. 1998).

    ``eta^2(M | F) = Var(E[M | F]) / Var(M) = 1 - E_F[Var(M | F)] / Var(M)``: the fraction of the moving
    image's variance explained by a (any) function of the fixed intensities. It is asymmetric: the fixed image
    is binned into iso-intensity sets (``bins`` bins; hard ``"box"`` bins by default as in Roche et al., or
    Parzen weights ``"bspline"``/``"gaussian"`` for a derivative with respect to the fixed image too) and the
    moving intensities are used as values. With kernel weights ``a_k(n)`` of the fixed voxel ``n`` and
    ``S0_k = sum_n w_n a_k(n)``, ``S1_k = sum w a_k M``, ``S2_k = sum w a_k M^2`` (totals ``S0, S1, S2``)::

        E_F[Var(M | F)] * S0 = sum_k (S2_k - S1_k^2 / S0_k),    Var(M) * S0 = S2 - S1^2 / S0
        loss = 1 - eta^2 = (S2 - sum_k S1_k^2 / S0_k) / (S2 - S1^2 / S0)          (in [0, 1])

    Empty bins contribute nothing; if ``Var(M) = 0`` on the mask (constant moving image, empty mask) the loss
    is defined as 1 (nothing explained), without an epsilon. The moving image is shifted by its (masked) min
    and then centred on its mean first, which leaves the measure unchanged, makes a constant image exactly
    zero and avoids cancellation. Reference: A. Roche, G. Malandain,
    X. Pennec, N. Ayache, "The correlation ratio as a new similarity measure for multimodal image
    registration", MICCAI 1998, LNCS 1496, pp. 1115-1124.

    Args:
        bins: Number of fixed-image bins (default 32). Static.
        kernel: Fixed-image binning, ``"box"`` (default), ``"bspline"`` or ``"gaussian"``. Static.
        sigma: Gaussian kernel standard deviation in bins. Static.

    Returns:
        ``loss(fixed, moving, mask=None, *, fixed_range=None) -> 1 - eta^2(M | F)`` (scalar, jitted).
    """
    _check_config(bins, kernel, sigma)
    sigma = float(sigma)

    def loss(fixed, moving, mask=None, *, fixed_range=None):
        fixed, moving = U.check_pair(fixed, moving)
        w = U.check_mask(mask, fixed.shape, fixed.dtype)
        f, m, wv = _flatten(fixed, moving, w)
        if wv is None:
            wv = jnp.ones_like(f)
        tf = _bin_coordinate(
            f, *_intensity_range(f, wv if mask is not None else None, fixed_range), bins, kernel
        )
        if kernel == "box":
            tf = lax.stop_gradient(tf)
        # eta^2 is invariant to affine maps of M: subtract its min (a constant image becomes exact zeros,
        # hence Var(M) = 0 exactly), then its mean (no cancellation in S2 - S1^2 / S0); both exact, so
        # treated as constants
        lo, _ = _intensity_range(m, wv if mask is not None else None, None)
        m = m - lax.stop_gradient(lo)
        m = m - lax.stop_gradient(U.safe_div(jnp.sum(wv * m), jnp.sum(wv)))

        def chunk(tf_c, m_c, w_c):
            a = _kernel_rows(tf_c, bins, kernel, sigma)
            wm = w_c * m_c
            return jnp.matmul(a.T, jnp.stack([w_c, wm, wm * m_c], axis=1), precision=lax.Precision.HIGHEST)

        s = _chunked_sum(chunk, [tf, m, wv])  # (bins, 3)
        s0, s1, s2 = s[:, 0], s[:, 1], s[:, 2]
        explained = jnp.sum(U.safe_div(s1 * s1, s0))
        t0, t1, t2 = jnp.sum(s0), jnp.sum(s1), jnp.sum(s2)
        total = jnp.maximum(t2 - U.safe_div(t1 * t1, t0), 0)
        unexplained = jnp.maximum(t2 - explained, 0)
        ok = total > 0
        return jnp.where(ok, unexplained / jnp.where(ok, total, 1), 1)

    loss.__doc__ = f"1 - eta^2(M|F) loss ({bins} bins, {kernel} kernel); see :func:`correlation_ratio`."
    return jax.jit(loss)
