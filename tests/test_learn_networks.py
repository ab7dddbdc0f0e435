"""Tests of jaxreg.learn.networks: shapes, identity at initialisation, world semantics of the predictions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from jaxreg.core.grid import Grid, Image
from jaxreg.learn.networks import TRANSFORM_KINDS, Prediction, RegistrationNet, UNet, _affine_warp
from jaxreg.transforms import Affine, Composite, DisplacementField, VelocityField
from jaxreg.warp import warp

SMALL = {"encoder": (4, 8), "decoder": (8, 8, 4), "affine_encoder": (4, 8)}
SHAPES = {2: (16, 16), 3: (8, 8, 8)}


def _oblique_grid(shape):
    """Anisotropic, rotated grid with an offset origin."""
    n = len(shape)
    if n == 2:
        c, s = np.cos(0.4), np.sin(0.4)
        direction = np.array([[c, -s], [s, c]])
        spacing, origin = (1.5, 0.7), (3.0, -2.0)
    else:
        direction = Rotation.from_rotvec([0.2, -0.3, 0.5]).as_matrix()
        spacing, origin = (1.5, 0.7, 2.2), (3.0, -2.0, 5.0)
    return Grid.from_spacing(shape, spacing, origin=origin, direction=direction)


def _smooth_batch(key, batch, shape, channels=1):
    x = jax.random.uniform(key, (batch, *shape, channels))
    return jnp.asarray(ndi.gaussian_filter(np.asarray(x), sigma=(0, *([1.5] * len(shape)), 0)))


def _model(ndim, transform, field_factor=1, seed=0, **kw):
    cfg = dict(SMALL, **kw)
    return RegistrationNet(ndim, transform=transform, field_factor=field_factor, rngs=nnx.Rngs(seed), **cfg)


@nnx.jit
def _predict(model, fixed, moving):
    return model(fixed, moving)


def _n_params(module):
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _perturb_heads(model, key, scale=0.05):
    """Replace the zero / tiny initial heads by small random weights so that gradients flow everywhere."""
    k1, k2 = jax.random.split(key)
    if model.flow is not None:
        model.flow.kernel[...] = scale * jax.random.normal(k1, model.flow.kernel.shape)
    if model.affine_net is not None:
        out = model.affine_net.out
        out.kernel[...] = scale * jax.random.normal(k2, out.kernel.shape)


# -- shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("transform", TRANSFORM_KINDS)
@pytest.mark.parametrize("field_factor", [1, 2])
def test_prediction_shapes(ndim, transform, field_factor):
    shape = SHAPES[ndim]
    model = _model(ndim, transform, field_factor)
    x = jnp.zeros((2, *shape, 1))
    pred = jax.eval_shape(lambda a, b: model(a, b), x, x)  # shapes only: no compilation per configuration
    assert isinstance(pred, Prediction)
    if model.has_affine:
        assert pred.affine.shape == (2, ndim + 1, ndim + 1)
    else:
        assert pred.affine is None
    if model.has_field:
        assert pred.field.shape == (2, *(s // field_factor for s in shape), ndim)
        assert model.field_grid(Grid(shape)).shape == pred.field.shape[1:-1]
    else:
        assert pred.field is None


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("skip", [0, 1, 2])
def test_unet_output_shape(ndim, skip):
    shape = SHAPES[ndim]
    net = UNet(ndim, 3, encoder=(4, 8), decoder=(8, 6, 5), skip_levels=skip, rngs=nnx.Rngs(0))
    out = jax.eval_shape(net, jnp.ones((1, *shape, 3)))
    assert out.shape == (1, *(s // 2**skip for s in shape), 5)
    assert net.out_channels == 5


def _conv_params(cin, cout, ndim):
    return 3**ndim * cin * cout + cout


def _voxelmorph_count(skip_levels):
    # closed-form count of the VoxelMorph architecture: encoder 16-32-32-32, decoder 32-32-32-32 with skips
    # (the last `skip_levels` levels without upsampling and skip), final convs 32-16-16, flow head to 3 channels;
    # pairs of single-channel images (2 input channels)
    enc, dec, ch, total = (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16), 2, 0
    for w in enc:
        total += _conv_params(ch, w, 3)
        ch = w
    for lev in range(4):
        total += _conv_params(ch, dec[lev], 3)
        ch = dec[lev] + (enc[3 - lev] if lev < 4 - skip_levels else 0)
    for w in dec[4:]:
        total += _conv_params(ch, w, 3)
        ch = w
    return total + _conv_params(ch, 3, 3)


def test_voxelmorph_default_3d_parameter_count():
    # abstract build (shapes only, no weights materialised)
    model = nnx.eval_shape(lambda: RegistrationNet(3, rngs=nnx.Rngs(0)))
    assert _n_params(model) == _voxelmorph_count(0) == 327331  # VoxelMorph's VxmDense (3D, default widths)
    # half resolution drops the last skip concatenation (VoxelMorph's half_res / int_downsize=2)
    half = nnx.eval_shape(lambda: RegistrationNet(3, field_factor=2, rngs=nnx.Rngs(0)))
    assert _n_params(half) == _voxelmorph_count(1)


# -- identity at initialisation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ndim,transform", [(2, t) for t in TRANSFORM_KINDS] + [(3, "velocity"), (3, "affine+displacement")]
)
def test_identity_at_init(ndim, transform):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    k1, k2 = jax.random.split(jax.random.key(1))
    fixed, moving = _smooth_batch(k1, 2, shape), _smooth_batch(k2, 2, shape)
    model = _model(ndim, transform, field_factor=2 if transform == "velocity" else 1)
    pred = _predict(model, fixed, moving)
    if pred.affine is not None:
        np.testing.assert_array_equal(
            np.asarray(pred.affine), np.broadcast_to(np.eye(ndim + 1), pred.affine.shape)
        )
    if pred.field is not None:
        assert float(jnp.max(jnp.abs(pred.field))) < 1e-2  # voxels
    warped = jax.jit(
        jax.vmap(lambda p, m: warp(Image(m, grid), model.to_transform(p, grid), grid, mode="nearest").data)
    )
    np.testing.assert_allclose(np.asarray(warped(pred, moving)), np.asarray(moving), atol=5e-3)


# -- world semantics of to_transform -----------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("transform", ["displacement", "velocity"])
@pytest.mark.parametrize("axis", [0, 1])
def test_constant_voxel_field_is_grid_column(ndim, transform, axis):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    model = _model(ndim, transform)
    u = jnp.zeros((*shape, ndim)).at[..., axis].set(1.0)  # one voxel along `axis`
    t = model.to_transform(Prediction(None, u), grid)
    assert isinstance(t, VelocityField if transform == "velocity" else DisplacementField)
    x = grid.world_coords()
    d = np.asarray(t(x) - x)
    np.testing.assert_allclose(d, np.broadcast_to(grid.affine[:ndim, axis], d.shape), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("transform", ["displacement", "velocity"])
def test_field_factor_2_constant_upsamples_to_constant(ndim, transform):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    model = _model(ndim, transform, field_factor=2)
    fgrid = model.field_grid(grid)
    assert fgrid.shape == tuple(s // 2 for s in shape)
    np.testing.assert_allclose(fgrid.extent, grid.extent)
    np.testing.assert_allclose(fgrid.center, grid.center, atol=1e-9)
    vec = np.array([0.7, -0.4, 0.25][:ndim])  # coarse voxels
    u = jnp.broadcast_to(jnp.asarray(vec, jnp.float32), (*fgrid.shape, ndim))
    t = model.to_transform(Prediction(None, u), grid)
    x = grid.world_coords()
    d = np.asarray(t(x) - x)
    # one coarse voxel is two fine voxels along each axis
    want = grid.affine[:ndim, :ndim] @ (2.0 * vec)
    np.testing.assert_allclose(d, np.broadcast_to(want, d.shape), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_field_factor_2_linear_field_alignment(ndim):
    """Coarse voxel ``j`` sits at fine index ``2 j + 0.5``: a linear coarse field is linear at fine points."""
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    model = _model(ndim, "displacement", field_factor=2)
    fgrid = model.field_grid(grid)
    slope = np.random.default_rng(0).normal(size=(ndim, ndim)) * 0.1  # coarse voxels per coarse voxel
    j = np.asarray(fgrid.index_coords(), dtype=np.float64)
    u = jnp.asarray(j @ slope.T, jnp.float32)
    t = model.to_transform(Prediction(None, u), grid)
    i = np.asarray(grid.index_coords(), dtype=np.float64)
    jf = (i - 0.5) / 2.0  # fine index -> coarse index
    inside = np.all((jf >= 0) & (jf <= np.asarray(fgrid.shape) - 1), axis=-1)
    want_mm = (jf @ slope.T) @ fgrid.affine[:ndim, :ndim].T
    got = np.asarray(t(grid.world_coords()) - grid.world_coords())
    assert inside.sum() > 0
    np.testing.assert_allclose(got[inside], want_mm[inside], atol=1e-4)


def _affine_world_reference(a, grid, x):
    """World image of world points ``x`` under a normalised-coordinate affine ``a`` (NumPy, float64)."""
    n = grid.ndim
    c = (np.asarray(grid.shape, dtype=np.float64) - 1) / 2
    h = c
    i = (x - grid.origin) @ np.linalg.inv(grid.affine[:n, :n]).T
    p = (i - c) / h
    q = p @ a[:n, :n].T + a[:n, n]
    return (c + h * q) @ grid.affine[:n, :n].T + grid.origin


@given(
    st.lists(st.floats(0.7, 1.3), min_size=3, max_size=3),
    st.lists(st.floats(-0.3, 0.3), min_size=3, max_size=3),
    st.floats(-0.2, 0.2),
    st.sampled_from([2, 3]),
)
def test_normalized_affine_world_semantics(scale, shift, shear, ndim):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    a = np.eye(ndim + 1)
    a[:ndim, :ndim] = np.diag(scale[:ndim])
    a[0, 1] = shear
    a[:ndim, ndim] = shift[:ndim]
    model = _model(ndim, "affine")
    t = model.to_transform(Prediction(jnp.asarray(a, jnp.float32), None), grid)
    assert isinstance(t, Affine)
    np.testing.assert_allclose(np.asarray(t.center), grid.center, atol=1e-4)
    x = np.asarray(grid.world_coords(), dtype=np.float64)
    np.testing.assert_allclose(
        np.asarray(t(jnp.asarray(x, jnp.float32))), _affine_world_reference(a, grid, x), atol=2e-4
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_normalized_affine_closed_forms(ndim):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    model = _model(ndim, "affine")
    x = grid.world_coords()
    # a shift of 2 / (n0 - 1) in normalised units is one voxel along axis 0
    a = np.eye(ndim + 1)
    a[0, ndim] = 2.0 / (shape[0] - 1)
    d = np.asarray(model.to_transform(Prediction(jnp.asarray(a, jnp.float32), None), grid)(x) - x)
    np.testing.assert_allclose(d, np.broadcast_to(grid.affine[:ndim, 0], d.shape), atol=1e-4)
    # a scaling by s fixes the grid centre and maps the first voxel centre (p = -1) to index c - s h
    s = 0.5
    a = np.eye(ndim + 1)
    a[:ndim, :ndim] *= s
    t = model.to_transform(Prediction(jnp.asarray(a, jnp.float32), None), grid)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray(grid.center, jnp.float32))), grid.center, atol=1e-4)
    c = (np.asarray(shape) - 1) / 2
    first = np.asarray(t(jnp.asarray(grid.origin, jnp.float32)))
    np.testing.assert_allclose(first, grid.affine[:ndim, :ndim] @ (c - s * c) + grid.origin, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_internal_affine_warp_matches_scipy_and_jaxreg_warp(ndim):
    shape = SHAPES[ndim]
    grid = _oblique_grid(shape)
    img = _smooth_batch(jax.random.key(3), 1, shape, channels=2)[0]
    a = np.eye(ndim + 1)
    a[:ndim, :ndim] = np.diag([1.1, 0.9, 1.05][:ndim])
    a[0, 1] = 0.1
    a[:ndim, ndim] = [0.1, -0.15, 0.07][:ndim]  # no sample exactly on the border (rounding differs)
    out = np.asarray(_affine_warp(img, jnp.asarray(a, jnp.float32)))
    # scipy reference in index space: i_moving = S A S^-1 i_fixed
    c = (np.asarray(shape, dtype=np.float64) - 1) / 2
    s = np.eye(ndim + 1)
    s[:ndim, :ndim] = np.diag(c)
    s[:ndim, ndim] = c
    m = s @ a @ np.linalg.inv(s)
    for ch in range(2):
        ref = ndi.affine_transform(
            np.asarray(img[..., ch], np.float64), m[:ndim, :ndim], m[:ndim, ndim], order=1
        )
        np.testing.assert_allclose(out[..., ch], ref, atol=1e-4)
    # the same resampling as jaxreg.warp through the world transform of to_transform
    model = _model(ndim, "affine")
    t = model.to_transform(Prediction(jnp.asarray(a, jnp.float32), None), grid)
    np.testing.assert_allclose(out, np.asarray(warp(Image(img, grid), t, grid).data), atol=1e-4)


@pytest.mark.parametrize("transform", ["affine+displacement", "velocity", "affine"])
def test_parts_of_the_forward_pass_equal_the_whole(transform):
    model = _model(2, transform)
    _perturb_heads(model, jax.random.key(7))
    fixed = _smooth_batch(jax.random.key(0), 2, SHAPES[2])
    moving = _smooth_batch(jax.random.key(1), 2, SHAPES[2])
    whole = model(fixed, moving)
    if model.has_affine:
        a = model.predict_affine(fixed, moving)
        np.testing.assert_allclose(np.asarray(a), np.asarray(whole.affine), atol=1e-6)
        moving = jax.vmap(_affine_warp)(moving, a)
    else:
        with pytest.raises(ValueError, match="no affine"):
            model.predict_affine(fixed, moving)
    if model.has_field:
        np.testing.assert_allclose(np.asarray(model.predict_field(fixed, moving)), np.asarray(whole.field), atol=1e-6)
        assert model.field_kind == transform.split("+")[-1]
    else:
        assert model.field_kind is None
        with pytest.raises(ValueError, match="no field"):
            model.predict_field(fixed, moving)


def test_combined_is_affine_after_field():
    ndim, shape = 2, SHAPES[2]
    grid = _oblique_grid(shape)
    model = _model(ndim, "affine+displacement")
    a = np.eye(3)
    a[:2, :2] = [[1.1, 0.05], [-0.05, 0.95]]
    a[:2, 2] = [0.1, -0.2]
    u = 0.8 * jax.random.normal(jax.random.key(4), (*shape, 2))
    t = model.to_transform(Prediction(jnp.asarray(a, jnp.float32), u), grid)
    assert isinstance(t, Composite)
    aff = _model(ndim, "affine").to_transform(Prediction(jnp.asarray(a, jnp.float32), None), grid)
    dis = _model(ndim, "displacement").to_transform(Prediction(None, u), grid)
    x = grid.world_coords()
    np.testing.assert_allclose(np.asarray(t(x)), np.asarray(aff(dis(x))), atol=1e-4)
    vel = _model(ndim, "affine+velocity", steps=5)
    tv = vel.to_transform(Prediction(jnp.asarray(a, jnp.float32), u), grid)
    assert isinstance(tv.transforms[1], VelocityField) and tv.transforms[1].steps == 5


def test_to_transform_vmap_matches_loop():
    ndim, shape = 2, SHAPES[2]
    grid = _oblique_grid(shape)
    model = _model(ndim, "affine+velocity", field_factor=2)
    _perturb_heads(model, jax.random.key(5), scale=0.5)
    k1, k2 = jax.random.split(jax.random.key(6))
    fixed, moving = _smooth_batch(k1, 3, shape), _smooth_batch(k2, 3, shape)
    pred = _predict(model, fixed, moving)

    def warp_one(p, m):
        return warp(Image(m, grid), model.to_transform(p, grid), grid).data

    batched = jax.jit(jax.vmap(warp_one))(pred, moving)
    for b in range(3):
        one = warp_one(jax.tree.map(lambda v, b=b: v[b], pred), moving[b])
        np.testing.assert_allclose(np.asarray(batched[b]), np.asarray(one), atol=1e-5)


# -- transformations of the model -------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["affine+velocity", "displacement"])
def test_gradients_reach_every_parameter(transform):
    ndim, shape = 2, SHAPES[2]
    grid = _oblique_grid(shape)
    model = _model(ndim, transform)
    _perturb_heads(model, jax.random.key(7))
    k1, k2 = jax.random.split(jax.random.key(8))
    fixed, moving = _smooth_batch(k1, 2, shape), _smooth_batch(k2, 2, shape)

    def loss(m):
        pred = m(fixed, moving)

        def one(p, f, mv):
            w = warp(Image(mv, grid), m.to_transform(p, grid), grid).data
            return jnp.mean((w - f) ** 2)

        return jnp.mean(jax.vmap(one)(pred, fixed, moving))

    # one compiled program for the whole gradient (op-by-op eager compiles each of the network's many small ops)
    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    for path, g in leaves:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_jit_equals_eager():
    ndim, shape = 3, SHAPES[3]
    model = _model(ndim, "affine+velocity", field_factor=2)
    _perturb_heads(model, jax.random.key(9))
    k1, k2 = jax.random.split(jax.random.key(10))
    fixed, moving = _smooth_batch(k1, 2, shape), _smooth_batch(k2, 2, shape)
    eager = model(fixed, moving)
    jitted = _predict(model, fixed, moving)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORM_KINDS)
def test_from_config_round_trip(transform):
    ndim, shape = 2, SHAPES[2]
    model = RegistrationNet(
        ndim, transform=transform, in_channels=2, field_factor=2, steps=4, rngs=nnx.Rngs(11), **SMALL
    )
    cfg = json.loads(json.dumps(model.config))
    assert cfg == model.config
    clone = RegistrationNet.from_config(cfg, rngs=nnx.Rngs(11))
    assert clone.config == model.config
    s1, s2 = nnx.state(model, nnx.Param), nnx.state(clone, nnx.Param)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    assert [x.shape for x in jax.tree.leaves(s1)] == [x.shape for x in jax.tree.leaves(s2)]
    x = _smooth_batch(jax.random.key(12), 1, shape, channels=2)
    y = _smooth_batch(jax.random.key(13), 1, shape, channels=2)
    for a, b in zip(model(x, y), clone(x, y)):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = RegistrationNet.from_config(cfg, rngs=nnx.Rngs(12))
    if model.has_field:  # another seed gives other weights
        assert not np.array_equal(np.asarray(model.flow.kernel[...]), np.asarray(other.flow.kernel[...]))


# -- errors ---------------------------------------------------------------------------------------------------
def test_constructor_errors():
    with pytest.raises(ValueError, match="transform"):
        RegistrationNet(2, transform="bspline", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ndim"):
        RegistrationNet(4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="field_factor"):
        RegistrationNet(2, field_factor=3, rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(ValueError, match="field_factor"):
        RegistrationNet(2, field_factor=8, rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(ValueError, match="decoder"):
        RegistrationNet(2, encoder=(4, 8), decoder=(8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="steps"):
        RegistrationNet(2, steps=-1, rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(TypeError, match="encoder"):
        RegistrationNet(2, encoder=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="skip_levels"):
        UNet(2, 1, encoder=(4, 8), decoder=(8, 8, 4), skip_levels=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="config"):
        RegistrationNet.from_config({"ndim": 2, "widths": [4]}, rngs=nnx.Rngs(0))


def test_call_errors():
    model = _model(2, "affine+velocity")
    x = jnp.zeros((1, 16, 16, 1))
    with pytest.raises(ValueError, match="fixed/moving.*equal shapes"):
        model(x, jnp.zeros((1, 16, 12, 1)))
    with pytest.raises(ValueError, match="fixed"):
        model(jnp.zeros((1, 16, 16, 2)), x)
    with pytest.raises(ValueError, match="moving"):
        model(x, jnp.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match=r"fixed/moving.*\(18, 16\).*divisible by 4"):
        model(jnp.zeros((1, 18, 16, 1)), jnp.zeros((1, 18, 16, 1)))
    with pytest.raises(ValueError, match=r"x.*divisible by 4"):
        model.unet(jnp.zeros((1, 18, 16, 2)))
    # the pure affine model has no divisibility constraint
    pred = _model(2, "affine")(jnp.zeros((1, 18, 15, 1)), jnp.zeros((1, 18, 15, 1)))
    assert pred.affine.shape == (1, 3, 3)


def test_to_transform_errors():
    grid = Grid((16, 16))
    model = _model(2, "velocity", field_factor=2)
    pred = model(jnp.zeros((2, 16, 16, 1)), jnp.zeros((2, 16, 16, 1)))
    with pytest.raises(ValueError, match="unbatched"):
        model.to_transform(pred, grid)
    one = jax.tree.map(lambda a: a[0], pred)
    with pytest.raises(ValueError, match="field"):
        model.to_transform(one, Grid((32, 32)))
    with pytest.raises(ValueError, match="grid"):
        model.to_transform(one, Grid((16, 16, 16)))
    with pytest.raises(TypeError, match="grid"):
        model.to_transform(one, (16, 16))
    with pytest.raises(ValueError, match="affine"):
        _model(2, "affine").to_transform(one, grid)
