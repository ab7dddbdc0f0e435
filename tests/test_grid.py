"""Grid geometry against nibabel and closed forms."""

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from jaxreg import Grid, Image


def random_affine(seed: int, ndim: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=seed).as_matrix() if ndim == 3 else Rotation.from_euler("z", rng.uniform(-3, 3)).as_matrix()[:2, :2]
    spacing = rng.uniform(0.5, 3.0, ndim)
    a = np.eye(ndim + 1)
    a[:ndim, :ndim] = rot * spacing[None, :]
    a[:ndim, ndim] = rng.uniform(-100, 100, ndim)
    return a


@given(seed=st.integers(0, 10_000))
def test_index_world_round_trip_matches_nibabel(seed):
    a = random_affine(seed)
    g = Grid((7, 5, 6), a)
    idx = np.random.default_rng(seed).uniform(-3, 9, (11, 3))
    world = np.asarray(g.index_to_world(jnp.asarray(idx, jnp.float32)))
    np.testing.assert_allclose(world, nib.affines.apply_affine(a, idx), rtol=1e-5, atol=1e-3)
    back = np.asarray(g.world_to_index(jnp.asarray(world)))
    np.testing.assert_allclose(back, idx, atol=1e-3)


@given(seed=st.integers(0, 10_000))
def test_spacing_origin_direction_axcodes(seed):
    a = random_affine(seed)
    g = Grid((4, 4, 4), a)
    np.testing.assert_allclose(g.spacing, np.sqrt((a[:3, :3] ** 2).sum(0)))
    np.testing.assert_allclose(g.origin, a[:3, 3])
    np.testing.assert_allclose(g.direction.T @ g.direction, np.eye(3), atol=1e-12)
    assert g.axcodes == nib.aff2axcodes(a)


def test_world_coords_equals_index_to_world():
    g = Grid((4, 6, 5), random_affine(3))
    np.testing.assert_allclose(g.world_coords(), g.index_to_world(g.index_coords()), atol=1e-4)
    g2 = Grid((4, 6), random_affine(3, 2))
    np.testing.assert_allclose(g2.world_coords(), g2.index_to_world(g2.index_coords()), atol=1e-4)


@pytest.mark.parametrize("factor", [2, 3])
def test_downsample_keeps_extent_and_centre(factor):
    g = Grid((12, 9, 10), random_affine(5))
    d = g.downsample(factor)
    assert d.shape == tuple(-(-s // factor) for s in g.shape)
    np.testing.assert_allclose(d.center, g.center, atol=1e-9)
    np.testing.assert_allclose(d.extent, g.extent, atol=1e-9)
    np.testing.assert_allclose(d.direction, g.direction, atol=1e-12)
    # the lower voxel edge (index -0.5) stays in place
    np.testing.assert_allclose(d.index_to_world(jnp.full(3, -0.5)), g.index_to_world(jnp.full(3, -0.5)), atol=1e-4)
    u = g.upsample(factor)
    np.testing.assert_allclose(u.spacing, g.spacing / factor)
    np.testing.assert_allclose(u.center, g.center, atol=1e-9)


def test_with_spacing_and_centered():
    g = Grid.centered((10, 20), (2.0, 1.0))
    np.testing.assert_allclose(g.center, [0.0, 0.0])
    h = g.with_spacing(4.0)
    assert h.shape == (5, 5)
    np.testing.assert_allclose(h.center, g.center)


def test_from_nifti_header():
    a = random_affine(7)
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), a)
    g = Grid.from_nifti_header(img.header)
    assert g.shape == (5, 6, 7)
    np.testing.assert_allclose(g.affine, img.header.get_best_affine(), atol=1e-5)
    img2 = nib.Nifti1Image(np.zeros((5, 6, 1), np.float32), a)
    g2 = Grid.from_nifti_header(img2.header)
    assert g2.ndim == 2 and g2.shape == (5, 6)


def test_value_semantics_and_hash():
    a = random_affine(1)
    assert Grid((3, 3, 3), a) == Grid((3, 3, 3), a + 1e-9)
    assert hash(Grid((3, 3, 3), a)) == hash(Grid((3, 3, 3), a.copy()))
    assert Grid((3, 3, 3), a) != Grid((3, 3, 4), a)
    assert {Grid((3, 3, 3), a): 1}[Grid((3, 3, 3), a)] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(3, 3, 3), affine=np.zeros((4, 4))), "affine"),
        (dict(shape=(3, 3, 3), affine=np.eye(3)), "affine"),
        (dict(shape=(3, 0, 3)), "shape"),
        (dict(shape=(3, 3, 3), affine=np.full((4, 4), np.nan)), "affine"),
    ],
)
def test_bad_grid_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Grid(**kwargs)
    with pytest.raises(ValueError, match="spacing"):
        Grid.from_spacing((3, 3), (1.0, -1.0))


def test_image_is_pytree_with_static_grid():
    g = Grid.from_spacing((4, 5), 2.0)
    im = Image(jnp.ones((4, 5, 2)), g)
    assert im.has_channels
    leaves, tree = jax.tree_util.tree_flatten(im)
    assert len(leaves) == 1
    im2 = jax.tree_util.tree_unflatten(tree, [leaves[0] * 2])
    assert im2.grid == g
    doubled = jax.jit(lambda x: Image(x.data * 2, x.grid))(im)
    np.testing.assert_allclose(doubled.data, 2.0)
    with pytest.raises(ValueError, match="data"):
        Image(jnp.ones((4, 6)), g)
