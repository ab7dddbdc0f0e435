"""Warping: identity, independent references (scipy.ndimage), world-coordinate correctness, labels, points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import jaxreg as jr
from jaxreg.transforms import Affine, DisplacementField, Rigid, Translation, VelocityField, invert


def oblique_grid(shape, seed):
    rng = np.random.default_rng(seed)
    n = len(shape)
    rot = Rotation.random(random_state=seed).as_matrix() if n == 3 else Rotation.from_euler("z", rng.uniform(-3, 3)).as_matrix()[:2, :2]
    a = np.eye(n + 1)
    a[:n, :n] = rot * rng.uniform(0.7, 2.0, n)[None, :]
    a[:n, n] = rng.uniform(-20, 20, n)
    return jr.Grid(shape, a)


# each example is a new oblique grid, so three new warp programs to compile: 10 fresh examples per run (the ci
# profile draws new ones every run) keep it at ~5 s instead of ~12 s
@settings(max_examples=10)
@given(seed=st.integers(0, 1000), ndim=st.sampled_from([2, 3]), order=st.sampled_from([0, 1, 3]), channels=st.booleans())
def test_identity_warp_is_exact(seed, ndim, order, channels):
    grid = oblique_grid((7, 6, 5)[:ndim], seed)
    shape = grid.shape + ((2,) if channels else ())
    img = jr.Image(jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32), grid)
    for t in (Translation.identity(ndim), Rigid.identity(ndim, center=grid.center), DisplacementField.identity(grid)):
        out = jr.warp(img, t, grid, order=order)
        np.testing.assert_allclose(out.data, img.data, atol=1e-5 if order < 3 else 2e-5)
        assert out.grid == grid and out.data.shape == img.data.shape


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_warp_matches_scipy_affine_transform(order, ndim):
    fixed = oblique_grid((9, 8, 7)[:ndim], 1)
    moving = oblique_grid((10, 7, 8)[:ndim], 2)
    rng = np.random.default_rng(0)
    data = rng.normal(size=moving.shape).astype(np.float32)
    m = np.eye(ndim) + rng.uniform(-0.2, 0.2, (ndim, ndim))
    t = Affine(jnp.asarray(m, jnp.float32), jnp.asarray(rng.uniform(-3, 3, ndim), jnp.float32), jnp.asarray(fixed.center, jnp.float32))
    # independent reference: the fixed-index -> moving-index matrix composed in float64, handed to scipy
    h = moving.inverse_affine @ np.asarray(t.homogeneous(), np.float64) @ fixed.affine
    ref = ndi.affine_transform(data, h[:ndim, :ndim], h[:ndim, ndim], output_shape=fixed.shape, order=order, mode="constant", cval=0.0)
    out = jr.warp(jr.Image(jnp.asarray(data), moving), t, fixed, order=order)
    close = np.isclose(np.asarray(out.data), ref, atol=1e-3)
    # float32 index arithmetic can move a point across a cell boundary where scipy (float64) does not: only
    # isolated voxels at the support edge may differ
    assert close.mean() > 0.98, close.mean()


def test_warp_through_world_coordinates_is_exact_for_linear_intensity():
    # a linear intensity f(w) = a.w + b in world space is reproduced exactly by linear interpolation, on any grid
    fixed = oblique_grid((12, 11, 10), 3)
    moving = jr.Grid.from_spacing((30, 28, 26), (1.7, 0.9, 1.3), origin=fixed.center - np.array([25.0, 12.0, 16.0]))
    a, b = np.array([0.3, -0.2, 0.5]), 4.0
    f = lambda w: w @ a + b
    img = jr.Image(jnp.asarray(f(np.asarray(moving.world_coords(jnp.float32), np.float64)), jnp.float32), moving)
    t = Rigid(jnp.asarray([0.1, -0.05, 0.2]), jnp.asarray([1.0, 2.0, -1.0]), jnp.asarray(fixed.center, jnp.float32))
    out = jr.warp(img, t, fixed, order=1)
    expected = f(np.asarray(t.sample_grid(fixed), np.float64))
    inside = np.all((np.asarray(moving.world_to_index(t.sample_grid(fixed))) > 0) & (np.asarray(moving.world_to_index(t.sample_grid(fixed))) < np.array(moving.shape) - 1), -1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(np.asarray(out.data)[inside], expected[inside], atol=2e-4)


def test_integer_translation_shifts_array():
    grid = jr.Grid.from_spacing((12, 10, 9), (2.0, 1.0, 3.0))
    data = np.random.default_rng(0).normal(size=grid.shape).astype(np.float32)
    # T(x) = x + (2 mm, 0, 3 mm) = one voxel along axes 0 and 2: out[i, j, k] = data[i + 1, j, k + 1]
    out = jr.warp(jr.Image(jnp.asarray(data), grid), Translation(jnp.asarray([2.0, 0.0, 3.0])), grid, order=1)
    np.testing.assert_allclose(out.data, ndi.shift(data, (-1, 0, -1), order=0, mode="constant"), atol=1e-6)


def test_displacement_field_warp_matches_map_coordinates_reference():
    grid = jr.Grid.from_spacing((14, 13, 12), (1.2, 0.8, 1.5), origin=(3.0, -2.0, 5.0))
    rng = np.random.default_rng(1)
    u_vox = ndi.gaussian_filter(rng.normal(size=(3, *grid.shape)), (0, 2, 2, 2)) * 8
    u_mm = np.moveaxis(u_vox, 0, -1) * grid.spacing  # axis-aligned grid: mm = voxels * spacing
    data = rng.normal(size=grid.shape).astype(np.float32)
    ref = ndi.map_coordinates(data, np.indices(grid.shape) + u_vox, order=1, mode="constant")
    out = jr.warp(jr.Image(jnp.asarray(data), grid), DisplacementField(jnp.asarray(u_mm, jnp.float32), grid), grid)
    np.testing.assert_allclose(out.data, ref, atol=1e-4)


def _scipy_at_world(data, affine, world, *, order, cval):
    """Independent reference: float64 world -> index through the inverse 4x4, then scipy per channel."""
    n = world.shape[-1]
    idx = np.linalg.solve(affine, np.concatenate([world, np.ones(world.shape[:-1] + (1,))], -1).reshape(-1, n + 1).T)
    idx = idx[:n].reshape((n,) + world.shape[:-1])
    if data.ndim == n:
        return ndi.map_coordinates(data, idx, order=order, mode="constant", cval=cval)
    return np.stack([ndi.map_coordinates(data[..., c], idx, order=order, mode="constant", cval=cval) for c in range(data.shape[-1])], -1)


@pytest.mark.parametrize("channels", [False, True])
@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_points_matches_scipy_map_coordinates_at_world_points(ndim, order, channels):
    """``sample_points`` at world points (mm) of an oblique, anisotropic grid = scipy at the float64 indices.

    The points fill a ``(6, 5)`` batch, spread over the grid and one voxel beyond it (outside points read
    ``cval``), so batch shapes, channels and the constant border are all exercised.
    """
    grid = oblique_grid((9, 8, 7)[:ndim], 4)
    assert grid.spacing.max() / grid.spacing.min() > 1.2  # anisotropic, and oblique:
    assert np.abs(grid.affine[:ndim, :ndim] / grid.spacing - np.eye(ndim)).max() > 0.1
    rng = np.random.default_rng(10 * ndim + order)
    data = rng.normal(size=grid.shape + ((2,) if channels else ()))
    idx = rng.uniform(-1.0, np.asarray(grid.shape, np.float64), size=(6, 5, ndim))
    world = idx @ grid.affine[:ndim, :ndim].T + grid.affine[:ndim, ndim]
    want = _scipy_at_world(data, np.asarray(grid.affine, np.float64), world, order=order, cval=-0.5)
    assert np.any(want == -0.5) and np.any(want != -0.5)  # both inside and outside points
    with jax.enable_x64(True):
        got = jr.sample_points(jr.Image(jnp.asarray(data), grid), jnp.asarray(world), order=order, cval=-0.5)
        assert got.shape == world.shape[:-1] + data.shape[ndim:] and got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-9)
    # float32: same values within float32 rounding of the world -> index conversion
    got32 = jr.sample_points(jr.Image(jnp.asarray(data, jnp.float32), grid), jnp.asarray(world, jnp.float32), order=order, cval=-0.5)
    assert got32.dtype == jnp.float32
    close = np.isclose(np.asarray(got32), want, atol=1e-4)
    # a float32 index may cross a rounding or border boundary that the float64 one does not (order 0 and the
    # constant border): isolated points only
    assert close.mean() > 0.95 if order == 0 else close.all(), close.mean()


def test_sample_points_at_voxel_centres_reads_the_voxels():
    """World positions of voxel centres, border ones included, read the voxel values exactly (float32, 3-D)."""
    grid = oblique_grid((6, 5, 4), 7)
    data = np.random.default_rng(3).normal(size=grid.shape).astype(np.float32)
    img = jr.Image(jnp.asarray(data), grid)
    centres = grid.world_coords(jnp.float32)  # (*shape, 3), corners included
    for order in (0, 1, 3):
        np.testing.assert_allclose(np.asarray(jr.sample_points(img, centres, order=order)), data, atol=2e-5 if order == 3 else 1e-6)
    labels = jr.Image(jnp.asarray(np.arange(data.size).reshape(grid.shape), jnp.int32), grid)
    out = jr.sample_points(labels, centres, order=0)
    assert out.dtype == jnp.float32  # integer images are sampled as float32
    np.testing.assert_array_equal(np.asarray(out), np.arange(data.size).reshape(grid.shape))
    with pytest.raises(TypeError, match="image"):
        jr.sample_points(jnp.asarray(data), centres)


def test_point_direction_matches_image_warp():
    # a bright voxel at T(p) in the moving image appears at p in the warped image
    grid = jr.Grid.from_spacing((21, 21, 21), 1.0, origin=(-10.0, -10.0, -10.0))
    t = Rigid(jnp.asarray([0.0, 0.0, 0.3]), jnp.asarray([2.0, -1.0, 3.0]), jnp.zeros(3))
    p = jnp.asarray([3.0, 2.0, -1.0])
    q = jr.transform_points(t, p)
    data = np.zeros(grid.shape, np.float32)
    qi = np.round(np.asarray(grid.world_to_index(q))).astype(int)
    data[tuple(qi)] = 1.0
    data = ndi.gaussian_filter(data, 1.5)
    out = jr.warp(jr.Image(jnp.asarray(data), grid), t, grid)
    peak = np.unravel_index(np.argmax(out.data), grid.shape)
    np.testing.assert_allclose(grid.index_to_world(jnp.asarray(peak, jnp.float32)), p, atol=1.0)
    np.testing.assert_allclose(jr.transform_points(invert(t), q), p, atol=1e-4)


def test_label_warps():
    grid = jr.Grid.from_spacing((16, 15, 14), 1.0)
    lab = np.zeros(grid.shape, np.int16)
    lab[3:10, 4:11, 2:9] = 7
    lab[9:14, 2:6, 6:12] = 300
    labels = jr.Image(jnp.asarray(lab), grid)
    t = VelocityField(jnp.asarray(ndi.gaussian_filter(np.random.default_rng(0).normal(size=(*grid.shape, 3)), (3, 3, 3, 0)) * 10, jnp.float32), grid)
    velocity = t.velocity
    t = jax.jit(lambda v: v.exp())(t)
    near = jr.warp_labels(labels, t, grid)
    assert near.data.dtype == jnp.int16
    assert set(np.unique(near.data)) <= {0, 7, 300}
    np.testing.assert_array_equal(near.data, jr.warp(jr.Image(jnp.asarray(lab, jnp.float32), grid), t, grid, order=0).data.astype(np.int16))
    soft = jr.warp_onehot(labels, t, grid, label_values=[0, 7, 300])
    assert soft.data.shape == (*grid.shape, 3)
    np.testing.assert_allclose(np.asarray(soft.data).sum(-1)[2:-2, 2:-2, 2:-2], 1.0, atol=1e-5)
    ident = jr.warp_onehot(labels, Translation.identity(3), grid, label_values=[0, 7, 300])
    np.testing.assert_array_equal(np.asarray([0, 7, 300])[np.argmax(ident.data, -1)], lab)

    @jax.jit
    def dice_like(v):
        s = jr.warp_onehot(labels, VelocityField(v, grid), grid, label_values=[7]).data[..., 0]
        return jnp.sum(s * (lab == 7))

    g = jax.grad(dice_like)(velocity)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_gradient_of_image_loss_wrt_transform_is_finite_and_correct():
    grid = jr.Grid.from_spacing((12, 12), 1.0)
    x = np.asarray(grid.world_coords(jnp.float32))
    data = np.exp(-((x - 5.5) ** 2).sum(-1) / 8.0).astype(np.float32)
    img = jr.Image(jnp.asarray(data), grid)

    @jax.jit
    def loss(shift):
        return jnp.sum((jr.warp(img, Translation(shift), grid).data - img.data) ** 2)

    shift = jnp.asarray([0.3, -0.4])
    g = jax.grad(loss)(shift)
    eps = 1e-2
    fd = [(loss(shift.at[i].add(eps)) - loss(shift.at[i].add(-eps))) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(g, fd, rtol=2e-2)


def test_warp_bad_inputs():
    grid = jr.Grid.from_spacing((4, 4, 4), 1.0)
    img = jr.Image(jnp.zeros(grid.shape), grid)
    with pytest.raises(TypeError, match="moving"):
        jr.warp(jnp.zeros(grid.shape), Translation.identity(3), grid)
    with pytest.raises(ValueError, match="dimensions"):
        jr.warp(img, Translation.identity(2), grid)
    with pytest.raises(TypeError, match="fixed_grid"):
        jr.warp(img, Translation.identity(3), (4, 4, 4))
    with pytest.raises(ValueError, match="label_values"):
        jr.warp_onehot(img, Translation.identity(3), grid, label_values=[])
