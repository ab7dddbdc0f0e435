"""jaxreg.warp.intensity: winsorising and histogram matching before registration.

References: NumPy quantiles and clipping (winsorize), SimpleITK's HistogramMatchingImageFilter (match_histogram,
with a fine histogram so that its quantile estimates are close to exact ones), and closed forms (matching an
image to a positive affine function of itself recovers it; matching an image to itself changes nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk

from jaxreg.core.grid import Grid, Image
from jaxreg.data import phantom
from jaxreg.warp.intensity import match_histogram, prepare_pair, winsorize


def _noisy(seed: int, shape=(40, 36)) -> Image:
    im = phantom(shape, spacing=1.5)
    rng = np.random.default_rng(seed)
    data = np.asarray(im.data, np.float32) * 100 + rng.gamma(2.0, 3.0, shape).astype(np.float32)
    data[rng.random(shape) < 0.003] = 900.0  # a few bright outliers (vessels, artefacts)
    return Image(jnp.asarray(data), im.grid)


@pytest.mark.parametrize("lower, upper", [(0.005, 0.995), (0.0, 1.0), (0.1, 0.7)])
def test_winsorize_matches_numpy_quantiles(lower, upper):
    im = _noisy(0)
    x = np.asarray(im.data, np.float64)
    a, b = np.quantile(x, [lower, upper])
    ref = (np.clip(x, a, b) - a) / (b - a)
    out = winsorize(im, lower, upper)
    assert out.grid == im.grid and out.data.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.data), ref, atol=2e-6)
    assert float(out.data.min()) == 0.0 and float(out.data.max()) == pytest.approx(1.0, abs=1e-6)


def test_winsorize_mask_defines_the_quantiles_and_jit_vmap():
    im = _noisy(1)
    x = np.asarray(im.data, np.float64)
    mask = x > 50
    a, b = np.quantile(x[mask], [0.02, 0.98])
    out = winsorize(im, 0.02, 0.98, mask=Image(jnp.asarray(mask, jnp.uint8), im.grid))
    np.testing.assert_allclose(np.asarray(out.data), (np.clip(x, a, b) - a) / (b - a), atol=2e-6)
    # a pure function of the data: jit and vmap over a batch equal the loop
    batch = jnp.stack([im.data, _noisy(2).data])
    f = jax.jit(jax.vmap(lambda d: winsorize(Image(d, im.grid)).data))
    for i in range(2):
        np.testing.assert_allclose(np.asarray(f(batch)[i]), np.asarray(winsorize(Image(batch[i], im.grid)).data), atol=1e-6)
    # a constant image has a window of zero width: zeros, not NaN
    flat = winsorize(Image(jnp.full((8, 8), 3.0), Grid((8, 8))))
    assert np.all(np.asarray(flat.data) == 0.0)


def test_winsorize_bad_inputs():
    im = _noisy(0)
    with pytest.raises(ValueError, match="lower, upper: expected 0 <= lower < upper <= 1"):
        winsorize(im, 0.9, 0.1)
    with pytest.raises(ValueError, match="upper: expected a quantile"):
        winsorize(im, 0.0, float("nan"))
    with pytest.raises(ValueError, match="mask: expected shape"):
        winsorize(im, mask=jnp.ones((3, 3)))
    with pytest.raises(TypeError, match="image: expected a jaxreg Image"):
        winsorize(np.ones((4, 4)))
    with pytest.raises(ValueError, match="image: expected a one-channel image"):
        winsorize(Image(jnp.ones((4, 4, 2)), Grid((4, 4))))


def test_match_histogram_matches_simpleitk():
    src, ref = _noisy(3, (48, 44)), _noisy(4, (40, 36))
    src = Image(src.data * 2.5 + 40.0 + 0.002 * src.data**2, src.grid)  # another, non-linear intensity scale
    for points, at_mean in ((12, True), (5, False)):
        flt = sitk.HistogramMatchingImageFilter()
        flt.SetNumberOfHistogramLevels(8192)  # fine bins: ITK's histogram quantiles close to exact ones
        flt.SetNumberOfMatchPoints(points)
        flt.SetThresholdAtMeanIntensity(at_mean)
        # SimpleITK: Execute(image, reference)
        want = sitk.GetArrayFromImage(flt.Execute(sitk.GetImageFromArray(np.asarray(src.data, np.float32)),
                                                  sitk.GetImageFromArray(np.asarray(ref.data, np.float32))))  # fmt: skip
        got = np.asarray(match_histogram(src, ref, match_points=points, threshold_at_mean=at_mean).data)
        span = float(ref.data.max() - ref.data.min())
        err = np.abs(got - want) / span
        assert err.max() < 2e-3 and err.mean() < 2e-4, (points, at_mean, err.max(), err.mean())


def test_match_histogram_closed_forms_and_bad_inputs():
    ref = _noisy(5)
    # a positive affine intensity change is undone exactly (quantiles, mean, min and max are all affine in it)
    src = Image(ref.data * 3.0 + 17.0, ref.grid)
    np.testing.assert_allclose(np.asarray(match_histogram(src, ref).data), np.asarray(ref.data), rtol=1e-5, atol=1e-3)
    # matching an image to itself is the identity
    np.testing.assert_allclose(np.asarray(match_histogram(ref, ref).data), np.asarray(ref.data), rtol=1e-6, atol=1e-4)
    # the map is monotone: the intensity order is kept
    other = _noisy(6)
    out = np.asarray(match_histogram(other, ref).data).ravel()
    order = np.argsort(np.asarray(other.data).ravel(), kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-4)
    with pytest.raises(ValueError, match="match_points: expected a positive int"):
        match_histogram(ref, ref, match_points=0)
    with pytest.raises(ValueError, match="threshold_at_mean: expected a bool"):
        match_histogram(ref, ref, threshold_at_mean=1)
    with pytest.raises(TypeError, match="reference: expected a jaxreg Image"):
        match_histogram(ref, np.ones((4, 4)))


def test_prepare_pair_is_winsorize_then_histogram_matching():
    """antsRegistration's order: both images winsorised, then the moving one matched to the fixed one; off: the
    inputs themselves; bad quantiles name the argument."""
    rng = np.random.default_rng(3)
    fixed = phantom((24, 20), spacing=1.5)
    data = 2.0 * np.asarray(fixed.data) + rng.normal(0, 0.05, fixed.data.shape)
    data[3, 4] = 40.0
    moving = Image(jnp.asarray(data, jnp.float32), fixed.grid)
    f, m = prepare_pair(fixed, moving, winsorize=(0.01, 0.99), histogram_matching=True)
    wf, wm = winsorize(fixed, 0.01, 0.99), winsorize(moving, 0.01, 0.99)
    np.testing.assert_array_equal(np.asarray(f.data), np.asarray(wf.data))
    np.testing.assert_array_equal(np.asarray(m.data), np.asarray(match_histogram(wm, wf).data))
    assert prepare_pair(fixed, moving) == (fixed, moving)
    _, m2 = prepare_pair(fixed, moving, histogram_matching=True)
    np.testing.assert_array_equal(np.asarray(m2.data), np.asarray(match_histogram(moving, fixed).data))
    for bad in ((0.5, 0.5), (0.1,), ("a", "b"), (-0.1, 0.9)):
        with pytest.raises(ValueError, match="winsorize: expected"):
            prepare_pair(fixed, moving, winsorize=bad)


def test_unsharp_mask_matches_simpleitk():
    """I + amount (I - G * I) against SimpleITK's UnsharpMaskImageFilter (threshold 0, no clamp), with sigma in mm
    on an anisotropic grid (inside the image: the borders are handled differently, ITK's recursive Gaussian
    against the library's renormalised truncated kernel)."""
    from jaxreg.warp.intensity import unsharp_mask

    im = _noisy(1, shape=(48, 40))
    im = Image(jnp.asarray(np.asarray(im.data) / 100.0), Grid.from_spacing((48, 40), (1.0, 2.0)))
    out = unsharp_mask(im, 0.7, 2.0)
    ref_img = sitk.GetImageFromArray(np.asarray(im.data, np.float64).T.copy())  # sitk arrays are (y, x)
    ref_img.SetSpacing((1.0, 2.0))
    f = sitk.UnsharpMaskImageFilter()
    f.SetSigmas([2.0, 2.0])
    f.SetAmount(0.7)
    f.SetThreshold(0.0)
    f.SetClamp(False)
    ref = sitk.GetArrayFromImage(f.Execute(ref_img)).T
    inner = (slice(8, -8), slice(4, -4))
    diff = np.abs(np.asarray(out.data)[inner] - ref[inner])
    span = float(ref[inner].max() - ref[inner].min())
    assert diff.max() < 0.02 * span and diff.mean() < 0.003 * span, (diff.max(), diff.mean(), span)
    assert out.grid == im.grid and out.data.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(unsharp_mask(im, 0.0).data), np.asarray(im.data, np.float32))
    flat = Image(jnp.full((48, 40), 3.0), im.grid)
    np.testing.assert_allclose(np.asarray(unsharp_mask(flat, 0.5).data), 3.0, atol=1e-5)  # constants unchanged
    for bad in (-0.5, float("nan"), True):
        with pytest.raises(ValueError, match="amount"):
            unsharp_mask(im, bad)
    with pytest.raises(ValueError, match="sigma_mm"):
        unsharp_mask(im, 0.5, -1.0)
