"""Similarity metrics: NumPy/SciPy references, invariants, real-data optima, masks, jit/vmap/grad.

Layers (STYLE rule 14): (a) each metric against an independent NumPy/SciPy computation in float64 (explicit
window loops, ``scipy.ndimage`` filters, ``numpy.histogram2d``, SciPy's B-spline basis, ``numpy.gradient``);
(b) closed forms: MI(x, x) = H(x), NMI(x, x) = 2, invariances; (c) the optimum of every metric at zero shift
on real images; (d) masks, empty/constant/extreme inputs, jit = no-jit, vmap = loop, dtypes, ``check_grads``.
"""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given
from hypothesis import strategies as st
from scipy.interpolate import BSpline

import jaxreg.similarity as S

# Tests compile many small programs; XLA's backend optimisation level 0 halves their compile time without
# changing the computation (same HLO, no fast-math), so test-side wrappers are jitted with it. The library's
# own jitted functions are still called directly where that is what a test is about (recompilation, API).
FAST = {"xla_backend_optimization_level": 0}


def fast(loss):
    """``loss`` re-jitted with FAST compiler options (the inner jit is inlined into this one)."""
    return jax.jit(lambda f, m, mask=None, **kw: loss(f, m, mask, **kw), compiler_options=FAST)


# One instance per configuration, shared by all tests; the generic tests below all use SHAPE, float32 or
# float64, and float masks, so each metric compiles only a handful of variants for the whole file.
RAW = {
    "ssd": S.ssd,
    "mse": S.mse,
    "ncc": S.ncc,
    "lncc": S.lncc(5),
    "lncc_gauss": S.lncc(sigma=1.0),
    "mi": S.mi(16),
    "nmi": S.nmi(16),
    "cr": S.correlation_ratio(16),
    "ngf": S.ngf,
    "mind": S.mind(1, dilation=1),
}
METRICS = {k: fast(v) for k, v in RAW.items()}
SHAPE = (12, 11)
# metrics whose value at a voxel reads neighbours (Chebyshev margin in voxels) -- for the mask test
MARGIN = {"ngf": 1, "mind": 2}
# forward mode is checked too for these (the others share their code paths); reverse mode for all
FWD_TOO = {"lncc", "lncc_gauss"}  # (B-spline MI/NMI have a reverse-mode custom VJP)
_VG = {}


def value_and_grads(name):
    """Jitted ``(value, (d/dfixed, d/dmoving))`` of a metric with a mask argument (one compile per dtype)."""
    if name not in _VG:
        _VG[name] = jax.jit(_raw_value_and_grads(name), compiler_options=FAST)
    return _VG[name]


def _raw_value_and_grads(name):
    loss = RAW[name]
    return jax.value_and_grad(lambda f, m, w: loss(f, m, w), argnums=(0, 1))


_VG_BATCH = {}
BATCH = 4


def batched_value_and_grads(name):
    """``jax.vmap`` of :func:`value_and_grads` (batches of BATCH pairs, compiled once per metric)."""
    if name not in _VG_BATCH:
        _VG_BATCH[name] = jax.jit(jax.vmap(_raw_value_and_grads(name)), compiler_options=FAST)
    return _VG_BATCH[name]


def random_mask(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(size=shape) * (
        np.random.default_rng(seed + 1).uniform(size=shape) > 0.2
    )


def smooth(shape, seed, sigma=1.5):
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (x - x.min()) / (x.max() - x.min())


def pair(shape=SHAPE, seed=0, dtype=np.float32):
    f = smooth(shape, seed)
    m = 0.6 * f + 0.4 * smooth(shape, seed + 100)
    return jnp.asarray(f, dtype), jnp.asarray(m, dtype)


def load(path):
    nib = pytest.importorskip("nibabel")
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# API
# ----------------------------------------------------------------------------------------------------------


def test_public_api_documented_and_keyword_only():
    for name in S.__all__:
        obj = getattr(S, name)
        assert obj.__doc__ and len(obj.__doc__) > 80, name
    for fn in (S.ssd, S.mse, S.ncc, S.ngf):
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["fixed", "moving", "mask"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])
    for factory in (S.lncc, S.mi, S.nmi, S.correlation_ratio, S.mind):
        params = list(inspect.signature(factory).parameters.values())
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), factory.__name__
        assert callable(factory()) and factory().__doc__


def test_bad_configurations_raise():
    with pytest.raises(ValueError):
        S.lncc(4)
    with pytest.raises(ValueError):
        S.lncc(9, sigma=2.0)
    with pytest.raises(ValueError):
        S.lncc((3, 5), ndim=3)
    with pytest.raises(ValueError):
        S.mi(3)
    with pytest.raises(ValueError):
        S.mi(16, kernel="triangle")
    with pytest.raises(ValueError):
        S.mind(radius=-1)
    f, m = pair()
    with pytest.raises(ValueError):
        S.ssd(f, m[:-1])
    with pytest.raises(ValueError):
        S.mse(f, m, jnp.ones((3, 3)))
    with pytest.raises(ValueError):
        S.lncc((3, 3, 3))(f, m)


def test_no_recompilation_on_second_call():
    f, m = pair(seed=3)
    loss = RAW["lncc"]
    loss(f, m)
    n = loss._cache_size()
    loss(m, f)
    assert loss._cache_size() == n


# ----------------------------------------------------------------------------------------------------------
# (a) references
# ----------------------------------------------------------------------------------------------------------


def test_ssd_mse_ncc_match_numpy_with_mask_and_channels():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(6, 7, 2))
    m = rng.normal(size=(6, 7, 2)) + 0.5 * f
    w = rng.uniform(size=(6, 7))
    wb = np.broadcast_to(w[..., None], f.shape)
    with jax.enable_x64(True):
        F, M, W = jnp.asarray(f), jnp.asarray(m), jnp.asarray(w)
        np.testing.assert_allclose(S.ssd(F, M, W), np.sum(wb * (f - m) ** 2), rtol=1e-12)
        np.testing.assert_allclose(S.mse(F, M, W), np.sum(wb * (f - m) ** 2) / wb.sum(), rtol=1e-12)
        np.testing.assert_allclose(S.ssd(F, M), np.sum((f - m) ** 2), rtol=1e-12)
        fc = f - np.average(f, weights=wb)
        mc = m - np.average(m, weights=wb)
        ref = np.sum(wb * fc * mc) / np.sqrt(np.sum(wb * fc**2) * np.sum(wb * mc**2))
        np.testing.assert_allclose(S.ncc(F, M, W), -ref, rtol=1e-12)
        np.testing.assert_allclose(S.ncc(F, M), -np.corrcoef(f.ravel(), m.ravel())[0, 1], rtol=1e-12)


def minmax(x, w=None):
    """Map to [0, 1] by the min/max over the voxels of positive weight (LNCC's normalisation)."""
    sel = x[w > 0] if w is not None else x
    return (x - sel.min()) / (sel.max() - sel.min())


def lncc_loops(f, m, window, w=None, eps=1e-5):
    """LNCC by explicit loops over every voxel's window (voxels inside the image, weighted by the mask)."""
    f, m = minmax(f, w), minmax(m, w)
    w = np.ones_like(f) if w is None else w
    r = [k // 2 for k in window]
    cc = np.zeros_like(f)
    for idx in np.ndindex(f.shape):
        sl = tuple(slice(max(i - ri, 0), i + ri + 1) for i, ri in zip(idx, r))
        a, I, J = w[sl], f[sl], m[sl]
        n = a.sum()
        if n == 0:
            continue
        mi, mj = (a * I).sum() / n, (a * J).sum() / n
        cross = (a * (I - mi) * (J - mj)).sum()
        vi, vj = (a * (I - mi) ** 2).sum(), (a * (J - mj) ** 2).sum()
        cc[idx] = cross**2 / (vi * vj + eps)
    return -np.sum(w * cc) / w.sum()


def lncc_filters(f, m, kernels, w=None, eps=1e-5):
    """LNCC from window sums computed with scipy.ndimage.correlate1d (mode constant), per-axis taps."""
    f, m = minmax(f, w), minmax(m, w)
    w = np.ones_like(f) if w is None else w

    def filt(q):
        for ax, taps in enumerate(kernels):
            q = ndi.correlate1d(q, np.asarray(taps, float), axis=ax, mode="constant", cval=0.0)
        return q

    n, si, sj = filt(w), filt(w * f), filt(w * m)
    sii, sjj, sij = filt(w * f * f), filt(w * m * m), filt(w * f * m)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(n > 1e-12, 1 / n, 0)
    cross = sij - si * sj * inv
    vi = np.maximum(sii - si**2 * inv, 0)
    vj = np.maximum(sjj - sj**2 * inv, 0)
    cc = cross**2 / (vi * vj + eps)
    return -np.sum(w * cc) / w.sum()


@pytest.mark.parametrize("window", [(3, 3), (5, 3), (1, 5)])
def test_lncc_matches_explicit_window_loops_2d(window):
    f, m = (np.asarray(a, np.float64) for a in pair((9, 8), seed=4))
    w = (np.random.default_rng(0).uniform(size=f.shape) > 0.3).astype(float)
    with jax.enable_x64(True):
        loss = fast(S.lncc(window))
        for mask in (None, w):
            ref = lncc_loops(f, m, window, mask)
            got = loss(jnp.asarray(f), jnp.asarray(m), None if mask is None else jnp.asarray(mask))
            np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_lncc_3d_box_and_gaussian_match_scipy_filters():
    f, m = (np.asarray(a, np.float64) for a in pair((8, 9, 7), seed=5))
    w = np.random.default_rng(1).uniform(size=f.shape)
    with jax.enable_x64(True):
        F, M = jnp.asarray(f), jnp.asarray(m)
        box = lncc_filters(f, m, [np.ones(k) for k in (3, 5, 3)])
        np.testing.assert_allclose(fast(S.lncc((3, 5, 3)))(F, M), box, rtol=1e-9)
        # uniform_filter (mode constant) is the same box, as a mean
        f, m = minmax(f), minmax(m)
        n = ndi.uniform_filter(np.ones_like(f), 5, mode="constant")
        mu_i, mu_j = (
            ndi.uniform_filter(f, 5, mode="constant") / n,
            ndi.uniform_filter(m, 5, mode="constant") / n,
        )
        cov = ndi.uniform_filter(f * m, 5, mode="constant") / n - mu_i * mu_j
        vi = ndi.uniform_filter(f * f, 5, mode="constant") / n - mu_i**2
        vj = ndi.uniform_filter(m * m, 5, mode="constant") / n - mu_j**2
        cnt = n * 125
        ref = -np.mean((cnt * cov) ** 2 / ((cnt * vi) * (cnt * vj) + 1e-5))
        np.testing.assert_allclose(fast(S.lncc(5))(F, M), ref, rtol=1e-8)
        for sigma in (1.0, (0.8, 1.5, 1.2)):
            sig = (sigma,) * 3 if np.isscalar(sigma) else sigma
            taps = []
            for s in sig:
                r = int(np.ceil(3 * s))
                k = np.arange(-r, r + 1)
                taps.append(np.exp(-0.5 * (k / s) ** 2))
            ref = lncc_filters(f, m, taps, w)
            np.testing.assert_allclose(fast(S.lncc(sigma=sigma))(F, M, jnp.asarray(w)), ref, rtol=1e-9)


def test_lncc_channels_last_is_the_mean_over_channels():
    # with eps = 0 the min-max normalisation (global over channels) does not matter, so a channel-last image
    # gives the mean of the per-channel losses; the spatial mask is shared by the channels
    f = np.stack([np.asarray(a, np.float64) for a in pair((9, 8), seed=18)], -1)
    m = np.stack([np.asarray(a, np.float64) for a in pair((9, 8), seed=19)], -1)
    w = random_mask(18, (9, 8))
    with jax.enable_x64(True):
        F, M, W = jnp.asarray(f), jnp.asarray(m), jnp.asarray(w)
        loss2 = S.lncc((3, 5), ndim=2)
        per_channel = [loss2(F[..., c], M[..., c], W, eps=0.0) for c in range(2)]
        np.testing.assert_allclose(loss2(F, M, W, eps=0.0), np.mean(per_channel), rtol=1e-10)


def test_lncc_equals_voxelmorph_with_zero_margin():
    # VoxelMorph counts the zero padding as voxels (fixed window size); jaxreg counts only voxels inside the
    # image. The two agree when the content is >= 2r voxels from the border (such windows see only zeros).
    core = [minmax(np.asarray(a, np.float64)) for a in pair((10, 9, 8), seed=6)]
    f, m = (np.pad(a, 8) for a in core)  # window 9: r = 4, margin 2r = 8
    win = 9**3

    def sums(q):
        return ndi.uniform_filter(q, 9, mode="constant") * win

    si, sj, sii, sjj, sij = sums(f), sums(m), sums(f * f), sums(m * m), sums(f * m)
    ui, uj = si / win, sj / win
    cross = sij - uj * si - ui * sj + ui * uj * win
    vi = sii - 2 * ui * si + ui * ui * win
    vj = sjj - 2 * uj * sj + uj * uj * win
    ref = -np.mean(cross * cross / (vi * vj + 1e-5))
    with jax.enable_x64(True):
        np.testing.assert_allclose(fast(S.lncc())(jnp.asarray(f), jnp.asarray(m)), ref, rtol=1e-7)


_B3 = BSpline.basis_element(np.arange(-2.0, 3.0), extrapolate=False)


def np_kernel_rows(x, lo, hi, bins, kernel, sigma=1.0):
    """Reference kernel weights (n, bins): SciPy's cubic B-spline basis, Gaussian, or hard bins."""
    u = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    k = np.arange(bins)
    if kernel == "bspline":
        d = (1 + (bins - 3) * u)[:, None] - k
        return np.nan_to_num(_B3(d))
    if kernel == "gaussian":
        d = ((bins - 1) * u)[:, None] - k
        g = np.exp(-0.5 * (d / sigma) ** 2)
        return g / g.sum(1, keepdims=True)
    idx = np.minimum(np.floor(bins * u), bins - 1).astype(int)
    return (idx[:, None] == k).astype(float)


def np_joint(f, m, bins, kernel, w=None, sigma=1.0, fr=None, mr=None):
    f, m = f.ravel(), m.ravel()
    w = np.ones_like(f) if w is None else w.ravel()
    sel = w > 0
    fr = fr or (f[sel].min(), f[sel].max())
    mr = mr or (m[sel].min(), m[sel].max())
    p = np_kernel_rows(f, *fr, bins, kernel, sigma).T @ (
        w[:, None] * np_kernel_rows(m, *mr, bins, kernel, sigma)
    )
    return p / p.sum()


def H(p):
    p = p[p > 0]
    return -np.sum(p * np.log(p))


def np_mi(p):
    return H(p.sum(1)) + H(p.sum(0)) - H(p)


@pytest.mark.parametrize("kernel", ["bspline", "gaussian", "box"])
def test_joint_histogram_and_mi_match_numpy(kernel):
    f, m = (np.asarray(a, np.float64) for a in pair((12, 11), seed=7))
    w = np.random.default_rng(2).uniform(size=f.shape) * (np.arange(11) > 2)
    ranges = {"fixed_range": (-0.5, 1.2), "moving_range": (0.1, 0.8)}
    with jax.enable_x64(True):
        F, M, W = jnp.asarray(f), jnp.asarray(m), jnp.asarray(w)
        loss = fast(S.mi(10, kernel=kernel, sigma=0.7))
        for mask, kw, ref_kw in [(W, {}, {"w": w}), (None, ranges, {"fr": (-0.5, 1.2), "mr": (0.1, 0.8)})]:
            p_ref = np_joint(f, m, 10, kernel, sigma=0.7, **ref_kw)
            p = S.joint_histogram(F, M, mask, bins=10, kernel=kernel, sigma=0.7, **kw)
            np.testing.assert_allclose(p, p_ref, atol=1e-12)
            np.testing.assert_allclose(loss(F, M, mask, **kw), -np_mi(p_ref), rtol=1e-10)
            if kernel == "box" and mask is not None:  # hard bins are numpy.histogram2d's (top edge included)
                sel = w > 0
                rng = [[f[sel].min(), f[sel].max()], [m[sel].min(), m[sel].max()]]
                h, _, _ = np.histogram2d(f.ravel(), m.ravel(), bins=10, range=rng, weights=w.ravel())
                np.testing.assert_allclose(p, h / h.sum(), atol=1e-12)


def test_chunked_histogram_equals_single_matrix_product():
    # more voxels than one chunk (4096): the scan over chunks (with zero-weight padding) changes nothing
    f, m = (np.asarray(a, np.float64) for a in pair((70, 61), seed=8))
    with jax.enable_x64(True):
        p = S.joint_histogram(jnp.asarray(f), jnp.asarray(m), bins=12)
    np.testing.assert_allclose(p, np_joint(f, m, 12, "bspline"), atol=1e-12)


def test_bspline_histogram_vjp_equals_autodiff_of_the_products():
    # the custom VJP (cubic interpolation of the cotangent) against autodiff through the chunked products,
    # for the fixed image, the moving image and the mask weights
    from jaxreg.similarity import histogram as hist

    f, m = (np.asarray(a, np.float64) for a in pair((9, 8), seed=17))
    w = random_mask(17, (9, 8))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a).reshape(-1) for a in (f, m, w))

        def mi_with(gram):
            def fn(f, m, w):
                tf = hist._bin_coordinate(f, *hist._intensity_range(f, w, None), 8, "bspline")
                tm = hist._bin_coordinate(m, *hist._intensity_range(m, w, None), 8, "bspline")
                p = gram(tf, tm, w)
                hf, hm, hfm = hist._entropies(p / p.sum())
                return hf + hm - hfm

            return jax.grad(fn, argnums=(0, 1, 2))(*args)

        custom = mi_with(lambda tf, tm, w: hist._bspline_gram(tf, tm, w, 8))
        plain = mi_with(lambda tf, tm, w: hist._weighted_gram(tf, tm, w, 8, "bspline", 1.0))
        for a, b in zip(custom, plain):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_mi_of_image_with_itself_is_its_entropy_and_nmi_is_two():
    f, _ = pair((16, 15), seed=9)
    p = S.joint_histogram(f, f, bins=16, kernel="box")
    h = H(np.asarray(p, np.float64).sum(1))
    np.testing.assert_allclose(-fast(S.mi(16, kernel="box"))(f, f), h, rtol=1e-5)
    np.testing.assert_allclose(-fast(S.nmi(16, kernel="box"))(f, f), 2.0, rtol=1e-6)
    # the smooth Parzen window blurs the joint histogram: MI(x, x) = 2H(x) - H(x, x) < H(x), and still the max
    ps = np.asarray(S.joint_histogram(f, f, bins=16), np.float64)
    mi_self = -float(METRICS["mi"](f, f))
    assert mi_self < H(ps.sum(1))
    np.testing.assert_allclose(mi_self, 2 * H(ps.sum(1)) - H(ps), rtol=1e-4)
    _, m = pair((16, 15), seed=9)
    assert mi_self > -float(METRICS["mi"](f, m))
    assert 1.0 < -float(METRICS["nmi"](f, f)) < 2.0


def test_mi_invariant_to_monotone_intensity_remapping(shared_data):
    img = load(shared_data / "brain2d" / "r16.nii.gz")
    f = jnp.asarray(img)
    m = jnp.asarray(ndi.shift(img, (1.5, -1.0), order=1, mode="nearest"))
    # exact for remappings that are affine on the range (bins move with min/max) ...
    mi = fast(S.mi(32))
    base = float(mi(f, m))
    np.testing.assert_allclose(mi(f, 3.0 * m + 7.0), base, rtol=1e-5)
    np.testing.assert_allclose(mi(-2.0 * f, m), base, rtol=1e-5)
    # ... and within 2.5% for these nonlinear monotone ones, which move intensities across bins (MI of the
    # binned intensities is only approximately invariant; strongly compressive maps such as log1p on 0..254
    # change MI by ~7% at 32 bins)
    for g in (jnp.sqrt, lambda x: x**2, lambda x: x**0.7):
        np.testing.assert_allclose(mi(f, g(m)), base, rtol=0.025)
        np.testing.assert_allclose(mi(g(f), m), base, rtol=0.025)
    # with hard bins, MI of a piecewise-constant image is exactly that of its discrete levels: invariant to
    # any injective remapping (monotone or not) that keeps distinct levels in distinct bins
    q = jnp.minimum(jnp.floor(m / 255.0 * 8), 7).astype(jnp.int32)  # 8 levels 0..7
    box = fast(S.mi(64, kernel="box"))
    ref = box(f, q.astype(jnp.float32))
    np.testing.assert_allclose(box(f, (q**2).astype(jnp.float32)), ref, rtol=1e-5)
    perm = jnp.asarray([3.0, 0.0, 7.0, 1.0, 6.0, 2.0, 5.0, 4.0]) * 10
    np.testing.assert_allclose(box(f, perm[q]), ref, rtol=1e-5)


def np_correlation_ratio(f, m, bins, w=None, kernel="box"):
    f, m = f.ravel(), m.ravel()
    w = np.ones_like(f) if w is None else w.ravel()
    sel = w > 0
    a = np_kernel_rows(f, f[sel].min(), f[sel].max(), bins, kernel) * w[:, None]  # (n, bins)
    total = np.average((m - np.average(m, weights=w)) ** 2, weights=w)
    within = 0.0
    for k in range(bins):
        if a[:, k].sum() > 0:
            mu = np.average(m, weights=a[:, k])
            within += np.sum(a[:, k] * (m - mu) ** 2)
    return within / w.sum() / total


@pytest.mark.parametrize("kernel", ["box", "bspline"])
def test_correlation_ratio_matches_numpy(kernel):
    f, m = (np.asarray(a, np.float64) for a in pair((12, 13), seed=10))
    m = np.sin(4 * f) + 0.3 * m  # a nonlinear function of f plus noise
    w = np.random.default_rng(3).uniform(size=f.shape)
    with jax.enable_x64(True):
        loss = fast(S.correlation_ratio(12, kernel=kernel))
        for mask in (None, w):
            got = loss(jnp.asarray(f), jnp.asarray(m), None if mask is None else jnp.asarray(mask))
            np.testing.assert_allclose(got, np_correlation_ratio(f, m, 12, mask, kernel), rtol=1e-9)
        # a function of the fixed intensities that is constant on each hard bin is fully explained
        if kernel == "box":
            q = np.minimum(np.floor(12 * (f - f.min()) / (f.max() - f.min())), 11)
            assert float(loss(jnp.asarray(f), jnp.asarray(np.cos(q)))) < 1e-12


@pytest.mark.parametrize(
    "shape,spacing,eta",
    [((9, 10), None, 0.05), ((9, 10), (0.7, 1.3), (0.02, 0.1)), ((6, 7, 5), (1.0, 2.0, 0.5), 0.05)],
)
def test_ngf_matches_numpy_gradient(shape, spacing, eta):
    f, m = (np.asarray(a, np.float64) for a in pair(shape, seed=11))
    w = np.random.default_rng(4).uniform(size=shape)
    sp = spacing or (1.0,) * len(shape)
    gf = np.stack(np.gradient(f, *sp), -1)
    gm = np.stack(np.gradient(m, *sp), -1)
    ef, em = (eta, eta) if np.isscalar(eta) else eta
    nf = gf / np.sqrt((gf**2).sum(-1, keepdims=True) + ef**2)
    nm = gm / np.sqrt((gm**2).sum(-1, keepdims=True) + em**2)
    ref = 1 - (nf * nm).sum(-1) ** 2
    with jax.enable_x64(True):
        got = S.ngf(jnp.asarray(f), jnp.asarray(m), jnp.asarray(w), eta=eta, spacing=spacing)
    np.testing.assert_allclose(got, np.sum(w * ref) / w.sum(), rtol=1e-10)


def np_mind(img, radius, dilation):
    """MIND-SSC by its formula: pairs of face neighbours at distance sqrt(2), patch SSD, exp(-D/V)."""
    nd = img.ndim
    nbrs = sorted(tuple(s * (np.arange(nd) == ax)) for ax in range(nd) for s in (-1, 1))
    pairs = [(a, b) for a, b in itertools.combinations(nbrs, 2) if np.sum((np.array(a) - b) ** 2) == 2]
    d = dilation
    p = np.pad(img, d, mode="edge")

    def at(o):
        return p[tuple(slice(d + oi * d, d + oi * d + n) for oi, n in zip(o, img.shape))]

    D = np.stack(
        [ndi.uniform_filter((at(a) - at(b)) ** 2, 2 * radius + 1, mode="nearest") for a, b in pairs], -1
    )
    D = D - D.min(-1, keepdims=True)
    V = D.mean(-1, keepdims=True)
    V = np.clip(V, 1e-3 * V.mean(), 1e3 * V.mean())
    return np.exp(-D / V)


@pytest.mark.parametrize("shape,radius,dilation", [((11, 12), 1, 1), ((11, 12), 2, 3), ((7, 8, 6), 1, 2)])
def test_mind_ssc_matches_formula(shape, radius, dilation):
    f, m = (np.asarray(a, np.float64) for a in pair(shape, seed=12))
    with jax.enable_x64(True):
        desc = np.asarray(S.mind_ssc(jnp.asarray(f), radius=radius, dilation=dilation))
        np.testing.assert_allclose(desc, np_mind(f, radius, dilation), rtol=1e-10)
        if len(shape) == 2 and radius == 1:
            ref = np.mean((np_mind(f, radius, dilation) - np_mind(m, radius, dilation)) ** 2)
            np.testing.assert_allclose(METRICS["mind"](jnp.asarray(f), jnp.asarray(m)), ref, rtol=1e-10)
    assert desc.shape == shape + ({2: 4, 3: 12}[len(shape)],)
    np.testing.assert_allclose(np.max(desc, -1), 1.0)


def test_ssc_layout():
    for nd, npairs, per_nbr in ((2, 4, 2), (3, 12, 4)):
        pairs = S.ssc_pairs(nd)
        assert len(pairs) == npairs == len(set(pairs))
        for a, b in pairs:
            assert sum(abs(x) for x in a) == sum(abs(x) for x in b) == 1
            assert sum((x - y) ** 2 for x, y in zip(a, b)) == 2
        counts = {}
        for a, b in pairs:
            counts[a] = counts.get(a, 0) + 1
            counts[b] = counts.get(b, 0) + 1
        assert len(counts) == 2 * nd and set(counts.values()) == {per_nbr}


@given(a=st.floats(0.01, 100.0), b=st.floats(-100.0, 100.0), sign=st.sampled_from([-1.0, 1.0]))
def test_intensity_invariances(a, b, sign):
    f, m = (np.asarray(x, np.float64) for x in pair(seed=13))
    with jax.enable_x64(True):
        f, m, w = jnp.asarray(f), jnp.asarray(m), jnp.asarray(random_mask(13))
        g = sign * a * m + b
        # MIND: invariant to any affine intensity change (patch distances scale, V scales with them)
        np.testing.assert_allclose(METRICS["mind"](f, g, w), METRICS["mind"](f, m, w), rtol=1e-7, atol=1e-12)
        # NCC: up to the sign of the scale; LNCC (squared local correlation, min-max normalised): exactly
        np.testing.assert_allclose(METRICS["ncc"](f, g, w), sign * METRICS["ncc"](f, m, w), rtol=1e-9)
        np.testing.assert_allclose(METRICS["lncc"](f, g, w), METRICS["lncc"](f, m, w), rtol=1e-7)
        # NGF: with eta scaled along
        np.testing.assert_allclose(
            METRICS["ngf"](f, g, w, eta=(0.05, 0.05 * a)), METRICS["ngf"](f, m, w, eta=0.05), rtol=1e-9
        )
        # MI/NMI: invariant to affine maps (the bins follow min/max); CR: to affine maps of the moving image
        for name in ("mi", "nmi", "cr"):
            np.testing.assert_allclose(METRICS[name](f, g, w), METRICS[name](f, m, w), rtol=1e-7, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# (c) optimum at the identity on real images
# ----------------------------------------------------------------------------------------------------------

REAL = {
    "ssd": S.ssd,
    "mse": S.mse,
    "ncc": S.ncc,
    "lncc": S.lncc(9),
    "lncc_gauss": S.lncc(sigma=2.0),
    "mi": S.mi(32),
    "nmi": S.nmi(32),
    "cr": S.correlation_ratio(32),
    "ngf": S.ngf,
    "mind": S.mind(2, dilation=2),
}


REAL = {k: fast(v) for k, v in REAL.items()}


def shift_curve(loss, fixed, moving, axis, **kw):
    vals = []
    for s in range(-3, 4):
        sh = [0, 0]
        sh[axis] = s
        vals.append(float(loss(fixed, jnp.asarray(ndi.shift(moving, sh, order=1, mode="nearest")), **kw)))
    return np.array(vals)


@pytest.mark.parametrize("name", sorted(REAL))
def test_optimum_at_zero_shift_on_real_brain(name, shared_data):
    img = load(shared_data / "brain2d" / "r16.nii.gz")
    kw = {"eta": 2.0} if name == "ngf" else {}  # intensities 0..254: edge parameter in those units
    for axis in (0, 1):
        vals = shift_curve(REAL[name], jnp.asarray(img), img, axis, **kw)
        assert np.all(np.isfinite(vals))
        assert np.argmin(vals) == 3, (name, axis, vals)
        assert np.all(vals[[0, 1, 2, 4, 5, 6]] > vals[3]), (name, axis, vals)


@pytest.mark.parametrize("name", ["mi", "nmi", "ngf", "mind", "cr"])
def test_multimodal_pair_optimum(name, shared_data):
    d = shared_data / "head2d_multimodal"
    fixed, moving = load(d / "fixed.nii.gz"), load(d / "moving.nii.gz")
    mask = jnp.asarray(load(d / "fixed_mask.nii.gz") > 0)
    kw = {"eta": 2.0} if name == "ngf" else {}
    for axis in (0, 1):
        # the moving contrast against shifted copies of itself: exact optimum at 0
        self_vals = shift_curve(REAL[name], jnp.asarray(moving), moving, axis, **kw)
        assert np.argmin(self_vals) == 3, (name, axis, self_vals)
        # the two contrasts are roughly aligned: optimum within one voxel of 0 (with and without the mask)
        for m in (None, mask):
            vals = shift_curve(REAL[name], jnp.asarray(fixed), moving, axis, mask=m, **kw)
            assert abs(int(np.argmin(vals)) - 3) <= 1, (name, axis, vals)


# ----------------------------------------------------------------------------------------------------------
# (d) masks, degenerate inputs, transforms
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_masked_out_voxels_do_not_count(name):
    loss, vg = METRICS[name], value_and_grads(name)
    f, m = pair(seed=14)
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 2:8] = True
    margin = MARGIN.get(name, 0)
    far = ~ndi.binary_dilation(mask, np.ones((3, 3)), iterations=margin) if margin else ~mask
    rng = np.random.default_rng(5)
    f2 = jnp.where(far, jnp.asarray(rng.uniform(-5, 5, SHAPE), f.dtype), f)
    m2 = jnp.where(far, jnp.asarray(rng.uniform(-5, 5, SHAPE), f.dtype), m)
    w = jnp.asarray(mask, jnp.float32)
    a, (gf, gm) = vg(f, m, w)
    np.testing.assert_allclose(vg(f2, m2, w)[0], a, rtol=2e-5, atol=1e-6)
    # nothing flows to voxels that do not count
    assert np.all(np.asarray(gm)[far] == 0) and np.all(np.asarray(gf)[far] == 0)
    # an all-ones mask is no mask
    np.testing.assert_allclose(vg(f, m, jnp.ones(SHAPE, jnp.float32))[0], loss(f, m), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["lncc", "mi", "mind"])
def test_bool_mask_equals_float_mask(name):
    f, m = pair(seed=15)
    mask = random_mask(15) > 0.3
    np.testing.assert_allclose(
        METRICS[name](f, m, jnp.asarray(mask)),
        value_and_grads(name)(f, m, jnp.asarray(mask, jnp.float32))[0],
        rtol=1e-6,
    )


def _batches(items):
    """Stack (fixed, moving, mask) triples into batches of exactly BATCH (the last one padded by repeats)."""
    items = list(items) + [items[-1]] * (-len(items) % BATCH)
    for i in range(0, len(items), BATCH):
        yield tuple(jnp.stack(x) for x in zip(*items[i : i + BATCH]))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_degenerate_inputs_are_finite(name):
    loss, bvg = METRICS[name], batched_value_and_grads(name)
    f, m = pair(seed=15)
    # explicit dtypes: weakly typed arrays (jnp.full without dtype) would compile another variant
    zeros, const = jnp.zeros(SHAPE, jnp.float32), jnp.full(SHAPE, 3.7, jnp.float32)
    ones, empty = jnp.ones(SHAPE, jnp.float32), jnp.zeros(SHAPE, jnp.float32)
    pairs = [
        (zeros, zeros),
        (const, const),
        (f, const),
        (const, m),
        (1e6 * f, 1e6 * m),
        (1e6 * f + 3e6, -1e6 * m),
        (f, 1e-6 * m),
    ]
    cases = [(a, b, w) for a, b in pairs for w in (ones, empty)]
    for fb, mb, wb in _batches(cases):
        v, (ga, gb) = bvg(fb, mb, wb)
        assert jnp.all(jnp.isfinite(v)) and jnp.all(jnp.isfinite(ga)) and jnp.all(jnp.isfinite(gb)), (name, v)
    for a, b in pairs:
        assert jnp.isfinite(loss(a, b))
    if name.startswith(("lncc", "ncc", "mi", "nmi", "cr")):
        # scale-free measures are unchanged by a 1e6 intensity scale
        np.testing.assert_allclose(loss(1e6 * f, 1e6 * m), loss(f, m), rtol=2e-3, atol=1e-6)
    if name == "ngf":
        np.testing.assert_allclose(loss(1e6 * f, 1e6 * m, eta=1e4), loss(f, m, eta=1e-2), rtol=1e-4)


def test_no_information_conventions():
    f, _ = pair(seed=16)
    const = jnp.full(SHAPE, 2.0, jnp.float32)
    empty = jnp.zeros(SHAPE, jnp.float32)
    assert float(METRICS["ncc"](f, const)) == 0.0
    assert float(METRICS["lncc"](f, const)) == 0.0
    assert abs(float(METRICS["mi"](f, const))) < 1e-6  # independent: the joint histogram is an outer product
    np.testing.assert_allclose(METRICS["nmi"](f, const), -1.0, atol=1e-6)
    assert float(METRICS["cr"](f, const)) == 1.0
    assert float(METRICS["nmi"](f, f, empty)) == -1.0
    assert float(METRICS["mse"](f, const, empty)) == 0.0
    np.testing.assert_allclose(S.mind_ssc(const, radius=1, dilation=1), 1.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_vmap_equals_loop(name):
    vg = value_and_grads(name)
    items = [pair(seed=20 + i) + (jnp.asarray(random_mask(20 + i), jnp.float32),) for i in range(BATCH)]
    ((F, M, W),) = _batches(items)
    v, (gf, gm) = batched_value_and_grads(name)(F, M, W)
    for i in range(BATCH):
        vi, (gfi, gmi) = vg(F[i], M[i], W[i])
        np.testing.assert_allclose(v[i], vi, rtol=2e-5, atol=1e-7)
        # float32: batched and single matrix products round differently, and a few ill-conditioned voxels
        # (nearly empty masked windows) amplify that, so gradients are compared as whole vectors
        for g, gi in ((gm[i], gmi), (gf[i], gfi)):
            assert np.linalg.norm(g - gi) <= 1e-3 * np.linalg.norm(gi) + 1e-7


@pytest.mark.parametrize("name", ["lncc", "mind"])
def test_jit_equals_nojit(name):
    # op-by-op execution is slow to set up, so a metric of each family only
    f, m = pair(seed=21)
    w = jnp.asarray(random_mask(21), jnp.float32)
    with jax.disable_jit():
        nojit = METRICS[name](f, m, w)
    np.testing.assert_allclose(nojit, value_and_grads(name)(f, m, w)[0], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_float32_preserved(name):
    f, m = pair(seed=30)
    v, (gf, gm) = value_and_grads(name)(f, m, jnp.ones(SHAPE, jnp.float32))
    assert v.dtype == gf.dtype == gm.dtype == METRICS[name](f, m).dtype == jnp.float32


@pytest.mark.parametrize("name", ["ssd", "lncc", "mi"])
def test_integer_images_compute_in_default_float(name):
    f, m = pair(seed=31)
    out = METRICS[name]((100 * f).astype(jnp.int16), (100 * m).astype(jnp.int16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, METRICS[name](jnp.floor(100 * f), jnp.floor(100 * m)), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_check_grads_float64(name):
    f, m = (np.asarray(x, np.float64) for x in pair(seed=40))
    w = random_mask(40)
    if name == "mind":
        # replicate padding makes patch distances tie (the min over pairs is a kink) near the border: keep
        # only voxels whose descriptors read no padding
        w[:2], w[-2:], w[:, :2], w[:, -2:] = 0, 0, 0, 0
    with jax.enable_x64(True):
        f, m, w = jnp.asarray(f), jnp.asarray(m), jnp.asarray(w)
        loss = RAW[name]  # (check_grads nests the function in its own transformations: no FAST wrapper)
        assert loss(f, m, w).dtype == jnp.float64  # dtype preserved
        modes = ("fwd", "rev") if name in FWD_TOO else ("rev",)
        jax.test_util.check_grads(
            lambda a, b: loss(a, b, w), (f, m), order=1, modes=modes, eps=1e-6, atol=1e-5, rtol=1e-4
        )


def test_check_grads_3d():
    f, m = (np.asarray(x, np.float64) for x in pair((6, 7, 5), seed=41))
    with jax.enable_x64(True):
        f, m = jnp.asarray(f), jnp.asarray(m)
        jax.test_util.check_grads(S.lncc(3), (f, m), order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-4)
