"""jaxreg.learn.synthesis: random transforms, label-driven image synthesis and intensity augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given
from hypothesis import strategies as st

from jaxreg.core import Grid
from jaxreg.data import random_velocity_field
from jaxreg.evaluation import jacobian_statistics
from jaxreg.transforms import (
    Affine,
    DisplacementField,
    VelocityField,
    decompose_affine,
    matrix_to_euler,
    rotation_vector,
)
from jaxreg.learn import synthesis
from jaxreg.learn.synthesis import (
    augment_intensity,
    normalize_intensity,
    random_affine,
    random_deformation,
    relabel,
    synthesize_image,
)

GRIDS = {
    2: Grid.centered((32, 28), (1.0, 1.5)),
    3: Grid.centered((16, 16, 12), (2.0, 2.0, 2.5)),
}


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _blobs(shape, num_labels, seed=0):
    """A label map of ``num_labels`` smooth regions (argmax of smoothed noise), every label present."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.normal(size=(num_labels, *shape)), sigma=(0,) + (2.0,) * len(shape))
    lab = np.argmax(noise, axis=0).astype(np.int32)
    assert len(np.unique(lab)) == num_labels
    return lab


# -- determinism -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_same_key_same_output_different_keys_differ(ndim):
    g = GRIDS[ndim]
    lab = jnp.asarray(_blobs(g.shape, 4))
    k1, k2 = _keys(2)
    fns = [
        lambda k: random_affine(k, g).homogeneous(),
        lambda k: random_deformation(k, g).velocity,
        lambda k: random_deformation(k, g, kind="displacement").displacement,
        lambda k: synthesize_image(k, lab, 4, grid=g),
        lambda k: augment_intensity(k, lab / 3.0, grid=g),
    ]
    for f in fns:
        f = jax.jit(f)  # one compilation per function (eager mode compiles every random op separately)
        np.testing.assert_array_equal(np.asarray(f(k1)), np.asarray(f(k1)))
        assert not np.allclose(np.asarray(f(k1)), np.asarray(f(k2)))


# -- random_affine ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_random_affine_parameters_within_ranges(ndim):
    g = GRIDS[ndim]
    rot, sc, sh, tr = 12.0, 0.15, 0.07, 6.0
    affs = jax.vmap(
        lambda k: random_affine(k, g, rotation_deg=rot, scale=sc, shear=sh, translation_mm=tr)
    )(_keys(64))
    assert isinstance(affs, Affine)
    angles, scales, shears = [], [], []
    for i in range(64):
        c = decompose_affine(affs.matrix[i])
        r = c.rotation
        np.testing.assert_allclose(np.asarray(r @ r.T), np.eye(ndim), atol=1e-5)
        assert np.linalg.det(np.asarray(r)) > 0
        if ndim == 2:
            angles.append(float(rotation_vector(r)))
        else:
            angles.extend(np.asarray(matrix_to_euler(r, order="xyz")).tolist())
        scales.extend(np.asarray(c.scale).tolist())
        shears.extend(np.asarray(c.shear).tolist())
    angles = np.rad2deg(np.asarray(angles))
    tol = 1e-3
    assert np.all(np.abs(angles) <= rot + tol) and np.abs(angles).max() > 0.8 * rot
    assert np.all(np.abs(np.asarray(scales) - 1) <= sc + 1e-5) and np.abs(np.asarray(scales) - 1).max() > 0.8 * sc
    assert np.all(np.abs(shears) <= sh + 1e-5) and np.abs(shears).max() > 0.8 * sh
    t = np.asarray(affs.translation)
    assert np.all(np.abs(t) <= tr) and np.abs(t).max() > 0.8 * tr


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_affine_about_grid_centre(ndim):
    g = Grid.from_spacing(GRIDS[ndim].shape, 1.3, origin=np.arange(ndim) * 10.0 + 5.0)
    a = random_affine(jax.random.key(3), g)
    c = jnp.asarray(g.center, jnp.float32)
    np.testing.assert_allclose(np.asarray(a.center), g.center, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a(c[None])[0]), np.asarray(c + a.translation), atol=1e-4)
    # zero ranges give the identity
    ident = random_affine(jax.random.key(3), g, rotation_deg=0.0, scale=0.0, shear=0.0, translation_mm=0.0)
    np.testing.assert_allclose(np.asarray(ident.homogeneous()), np.eye(ndim + 1), atol=1e-6)


def test_random_affine_bad_input():
    with pytest.raises(TypeError, match="grid"):
        random_affine(jax.random.key(0), (16, 16))
    with pytest.raises(ValueError, match="rotation_deg"):
        random_affine(jax.random.key(0), GRIDS[2], rotation_deg=-1.0)
    with pytest.raises(ValueError, match="scale"):
        random_affine(jax.random.key(0), GRIDS[2], scale=1.5)


# -- random_deformation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", ["velocity", "displacement"])
def test_random_deformation_bound_and_type(ndim, kind):
    g = GRIDS[ndim]
    t = random_deformation(jax.random.key(1), g, max_displacement_mm=3.0, smoothness_mm=8.0, kind=kind)
    assert isinstance(t, VelocityField if kind == "velocity" else DisplacementField)
    assert t.grid == g
    field = t.velocity if kind == "velocity" else t.displacement
    assert field.shape == (*g.shape, ndim) and field.dtype == jnp.float32
    norm = np.linalg.norm(np.asarray(field), axis=-1)
    assert norm.max() <= 3.0 * (1 + 1e-5)
    assert norm.max() >= 0.8 * 3.0
    if kind == "velocity":
        # the flow of v for unit time moves no point further than max |v| (up to the discretisation)
        u = np.linalg.norm(np.asarray(t.exp().displacement), axis=-1)
        assert u.max() <= 3.0 * 1.05


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_deformation_coarse_factor_one_is_random_velocity_field(ndim):
    g = GRIDS[ndim]
    key = jax.random.key(5)
    ours = random_deformation(key, g, max_displacement_mm=2.5, smoothness_mm=6.0, coarse_factor=1)
    ref = random_velocity_field(key, g, smoothness_mm=6.0, max_displacement_mm=2.5)
    np.testing.assert_allclose(np.asarray(ours.velocity), np.asarray(ref.velocity), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape_in, shape_out", [((5, 4), (20, 16)), ((4, 3, 5), (16, 12, 9)), ((6,), (7,))])
def test_linear_resize_matches_scipy_map_coordinates(shape_in, shape_out):
    """The separable upsampling equals linear interpolation at the grid-resize positions (edge-clamped)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape_in).astype(np.float32)
    ours = np.asarray(synthesis._resize_linear(jnp.asarray(x), shape_out))
    coords = np.meshgrid(
        *[(np.arange(o) + 0.5) * (i / o) - 0.5 for i, o in zip(shape_in, shape_out)], indexing="ij"
    )
    ref = ndi.map_coordinates(x, coords, order=1, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_random_deformation_is_smooth():
    """Almost all of the field's energy lies at low spatial frequencies (unlike white noise)."""
    g = Grid.centered((64, 64), 1.0)
    window = np.outer(np.hanning(64), np.hanning(64))[..., None]  # no leakage from the non-periodic border
    f = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in g.shape], indexing="ij")))

    def high_fraction(v):
        spec = np.sum(np.abs(np.fft.fftn((v - v.mean(axis=(0, 1))) * window, axes=(0, 1))) ** 2, axis=-1)
        return spec[f > 0.15].sum() / spec.sum()

    for k in _keys(3):
        v = np.asarray(random_deformation(k, g, smoothness_mm=8.0, coarse_factor=4).velocity)
        assert high_fraction(v) < 1e-3
    assert high_fraction(np.random.default_rng(0).normal(size=(64, 64, 2))) > 0.5  # white noise


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_velocity_deformation_is_fold_free(ndim):
    g = GRIDS[ndim]
    for k in _keys(4, seed=7):
        t = random_deformation(k, g, max_displacement_mm=6.0, smoothness_mm=6.0)
        stats = jacobian_statistics(t, g)
        assert int(stats.num_nonpositive) == 0
        assert float(stats.min) > 0


@pytest.mark.parametrize("kind", ["velocity", "displacement"])
def test_random_deformation_vmap_equals_loop(kind):
    g = GRIDS[3]
    keys = _keys(3)

    def field(k, m):
        t = random_deformation(k, g, max_displacement_mm=m, kind=kind)
        return t.velocity if kind == "velocity" else t.displacement

    mags = jnp.asarray([1.0, 2.0, 4.0])  # the magnitude is traced: it can be vmapped too
    batched = jax.vmap(field)(keys, mags)
    looped = jnp.stack([field(k, float(m)) for k, m in zip(keys, mags)])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5, atol=1e-6)


def test_random_deformation_jit_equals_eager():
    g = GRIDS[2]
    key = jax.random.key(9)
    eager = random_deformation(key, g).velocity
    jitted = jax.jit(lambda k: random_deformation(k, g).velocity)(key)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


def test_random_deformation_bad_input():
    with pytest.raises(ValueError, match="kind"):
        random_deformation(jax.random.key(0), GRIDS[2], kind="bspline")
    with pytest.raises(ValueError, match="coarse_factor"):
        random_deformation(jax.random.key(0), GRIDS[2], coarse_factor=0)
    with pytest.raises(ValueError, match="max_displacement_mm"):
        random_deformation(jax.random.key(0), GRIDS[2], max_displacement_mm=-1.0)
    with pytest.raises(ValueError, match="smoothness_mm"):
        random_deformation(jax.random.key(0), GRIDS[2], smoothness_mm=0.0)


# -- relabel ---------------------------------------------------------------------------------------------------
@given(
    st.lists(st.integers(-5, 60), min_size=1, max_size=8, unique=True),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_relabel_matches_dictionary_lookup(values, seed, dedicated):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-6, 62, size=(5, 7)).astype(np.int16)
    unknown = len(values) if dedicated else 0
    lut = {v: i for i, v in enumerate(values)}
    ref = np.vectorize(lambda v: lut.get(int(v), unknown))(labels).astype(np.int32)
    host = relabel(labels, values, unknown=unknown)
    assert isinstance(host, np.ndarray) and host.dtype == np.int32
    np.testing.assert_array_equal(host, ref)
    dev = jax.jit(lambda x: relabel(x, values, unknown=unknown))(jnp.asarray(labels))
    assert isinstance(dev, jax.Array) and dev.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(dev), ref)


def test_relabel_bad_input():
    with pytest.raises(ValueError, match="label_values"):
        relabel(np.zeros((3, 3), int), [])
    with pytest.raises(ValueError, match="label_values"):
        relabel(np.zeros((3, 3), int), [1, 1])
    with pytest.raises(ValueError, match="unknown"):
        relabel(np.zeros((3, 3), int), [0, 1], unknown=5)
    with pytest.raises(TypeError, match="labels"):
        relabel(np.zeros((3, 3), np.float32), [0, 1])


# -- synthesize_image ------------------------------------------------------------------------------------------
_CLEAN = dict(std_range=(0.0, 0.0), blur_mm_max=0.0, bias_std=0.0, noise_std_max=0.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_synthesize_image_is_piecewise_constant_without_noise(ndim):
    g = GRIDS[ndim]
    lab = _blobs(g.shape, 5, seed=ndim)
    img = np.asarray(synthesize_image(jax.random.key(4), jnp.asarray(lab), 5, grid=g, **_CLEAN))
    assert img.shape == g.shape and img.dtype == np.float32
    assert img.min() == pytest.approx(0.0, abs=1e-6) and img.max() == pytest.approx(1.0, abs=1e-6)
    means = np.array([img[lab == i].mean() for i in range(5)])
    stds = np.array([img[lab == i].std() for i in range(5)])
    assert stds.max() < 1e-6
    assert np.min(np.diff(np.sort(means))) > 1e-3  # distinct label intensities


@pytest.mark.parametrize("ndim", [2, 3])
def test_synthesize_image_full_model_range_and_label_contrast(ndim):
    g = GRIDS[ndim]
    lab = _blobs(g.shape, 4, seed=1)
    imgs = jax.vmap(lambda k: synthesize_image(k, jnp.asarray(lab), 4, grid=g))(_keys(8))
    imgs = np.asarray(imgs)
    assert np.all(imgs >= 0) and np.all(imgs <= 1)
    np.testing.assert_allclose(imgs.min(axis=tuple(range(1, ndim + 1))), 0.0, atol=1e-6)
    np.testing.assert_allclose(imgs.max(axis=tuple(range(1, ndim + 1))), 1.0, atol=1e-6)
    # labels still explain most of the variance (noise, blur and bias are perturbations)
    for img in imgs:
        within = sum(img[lab == i].var() * (lab == i).sum() for i in range(4)) / lab.size
        assert within < 0.5 * img.var()


def test_synthesize_image_means_cover_the_range():
    g = GRIDS[2]
    lab = _blobs(g.shape, 3)
    imgs = np.asarray(jax.vmap(lambda k: synthesize_image(k, jnp.asarray(lab), 3, grid=g, **_CLEAN))(_keys(64)))
    for i in range(3):
        per_key = imgs[:, lab == i].mean(axis=1)
        assert per_key.min() < 0.1 and per_key.max() > 0.9
        # each label is sometimes neither the darkest nor the brightest
        assert np.any((per_key > 0.2) & (per_key < 0.8))


def test_synthesize_image_jit_and_vmap_equal_eager():
    g = GRIDS[3]
    lab = jnp.asarray(_blobs(g.shape, 4))
    keys = _keys(3)
    eager = np.stack([np.asarray(synthesize_image(k, lab, 4, grid=g)) for k in keys])
    synth = jax.jit(lambda k: synthesize_image(k, lab, 4, grid=g))
    jitted = np.stack([np.asarray(synth(k)) for k in keys])
    vmapped = np.asarray(jax.jit(jax.vmap(lambda k: synthesize_image(k, lab, 4, grid=g)))(keys))
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    np.testing.assert_allclose(vmapped, eager, atol=1e-5)


def test_synthesize_image_blur_preserves_constants_and_smooths():
    g = Grid.centered((32, 32), 1.0)
    x = jax.random.normal(jax.random.key(0), g.shape)
    blurred = synthesis._random_blur(jax.random.key(1), x, g, 2.0)
    assert float(jnp.var(blurred)) < 0.5 * float(jnp.var(x))
    const = synthesis._random_blur(jax.random.key(1), jnp.full(g.shape, 3.0), g, 2.0)
    np.testing.assert_allclose(np.asarray(const), 3.0, rtol=1e-6)


def test_synthesize_image_bad_input():
    lab = jnp.zeros((8, 8), jnp.int32)
    with pytest.raises(TypeError, match="label_indices"):
        synthesize_image(jax.random.key(0), lab.astype(jnp.float32), 2)
    with pytest.raises(ValueError, match="num_labels"):
        synthesize_image(jax.random.key(0), lab, 0)
    with pytest.raises(ValueError, match="grid"):
        synthesize_image(jax.random.key(0), lab, 2, grid=Grid.centered((8, 9)))
    with pytest.raises(ValueError, match="mean_range"):
        synthesize_image(jax.random.key(0), lab, 2, mean_range=(1.0, 0.0))


# -- augment_intensity / normalize_intensity -------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_augment_intensity_range_and_background(ndim):
    g = GRIDS[ndim]
    x = np.asarray(_blobs(g.shape, 3), np.float32) / 2.0  # background (label 0) is exactly zero
    y = np.asarray(augment_intensity(jax.random.key(0), jnp.asarray(x), grid=g, noise_std=0.0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 1
    assert np.all(y[x == 0] == 0)
    # bias and gamma are monotone per voxel neighbourhood: the ordering of the two bright labels is kept
    # on average
    assert y[x == 1.0].mean() > y[x == 0.5].mean()
    # channels share the same bias and gamma
    yc = np.asarray(augment_intensity(jax.random.key(0), jnp.stack([x, x], -1), grid=g, noise_std=0.0))
    np.testing.assert_allclose(yc[..., 0], y, atol=1e-6)
    np.testing.assert_allclose(yc[..., 1], y, atol=1e-6)
    # with everything off it is plain division by the maximum
    ident = augment_intensity(jax.random.key(0), jnp.asarray(x), grid=g, gamma_std=0.0, bias_std=0.0,
                              noise_std=0.0)
    np.testing.assert_allclose(np.asarray(ident), x, atol=1e-6)


@pytest.mark.parametrize("percentiles", [(0.0, 100.0), (0.5, 99.5), (5.0, 90.0)])
def test_normalize_intensity_matches_numpy_percentiles(percentiles):
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 3.0, size=(12, 10, 8)).astype(np.float32)
    lo, hi = np.percentile(x, percentiles)
    ref = np.clip((x - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(np.asarray(normalize_intensity(x, percentiles=percentiles)), ref, atol=1e-5)
    mask = x > np.median(x)
    lo, hi = np.percentile(x[mask], percentiles)
    ref = np.clip((x - lo) / (hi - lo), 0, 1)
    out = jax.jit(lambda a, m: normalize_intensity(a, mask=m, percentiles=percentiles))(x, mask)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_normalize_intensity_constant_and_bad_input():
    np.testing.assert_array_equal(np.asarray(normalize_intensity(jnp.full((4, 4), 7.0))), 0.0)
    with pytest.raises(ValueError, match="percentiles"):
        normalize_intensity(jnp.zeros((4, 4)), percentiles=(50.0, 10.0))
    with pytest.raises(ValueError, match="mask"):
        normalize_intensity(jnp.zeros((4, 4)), mask=jnp.ones((4, 5)))


def test_intensity_prior_rows_follow_relabel_order():
    lo, hi = synthesis.intensity_prior("t1_brain", [2, 3, 4, 999])
    wm, gm, csf = synthesis.INTENSITY_PRIORS["t1_brain"][2], synthesis.INTENSITY_PRIORS["t1_brain"][3], \
        synthesis.INTENSITY_PRIORS["t1_brain"][4]  # fmt: skip
    other = synthesis.INTENSITY_PRIORS["t1_brain"]["other"]
    np.testing.assert_allclose(lo, [wm[0], gm[0], csf[0], other[0], other[0]])  # unlisted 999 and index L: other
    np.testing.assert_allclose(hi, [wm[1], gm[1], csf[1], other[1], other[1]])
    lo2, hi2 = synthesis.intensity_prior({7: (0.2, 0.3), "other": (0.0, 0.0)}, [7])
    np.testing.assert_allclose(np.stack([lo2, hi2]), [[0.2, 0.0], [0.3, 0.0]])
    with pytest.raises(ValueError, match="prior"):
        synthesis.intensity_prior("t2_brain", [2])
    with pytest.raises(ValueError, match="other"):
        synthesis.intensity_prior({2: (0.1, 0.2)}, [2])
    with pytest.raises(ValueError, match="low <= high"):
        synthesis.intensity_prior({2: (0.5, 0.2), "other": (0, 0)}, [2])


def test_synthesize_image_with_t1_prior_orders_the_tissues():
    """Per-label mean ranges (T1 prior): white matter brighter than grey matter brighter than CSF in every draw,
    each label's mean inside its range (no bias, blur, gamma or noise, so only the final min-max rescales)."""
    g = GRIDS[3]
    blobs = _blobs(g.shape, 4, seed=3)
    values = [0, 2, 3, 4]  # blob index -> aseg label (0: background, "other")
    lab = np.asarray(values)[blobs]
    idx = synthesis.relabel(jnp.asarray(lab), [2, 3, 4], unknown=3)
    lo, hi = synthesis.intensity_prior("t1_brain", [2, 3, 4])
    opts = dict(_CLEAN, gamma_std=0.0)
    imgs = np.asarray(jax.vmap(lambda k: synthesize_image(k, idx, 4, grid=g, mean_range=(lo, hi), **opts))(_keys(16)))
    for img in imgs:
        wm, gm, csf, bg = (img[lab == v].mean() for v in (2, 3, 4, 0))
        assert wm > gm > csf > bg
        # min-max maps [bg, wm] to [0, 1]: the GM mean relative to the WM-background span lies in its prior range
        # up to the jitter of the two ends
        assert (lo[1] - hi[3]) / (hi[0] - lo[3]) - 1e-6 <= gm <= (hi[1] - lo[3]) / (lo[0] - hi[3]) + 1e-6
