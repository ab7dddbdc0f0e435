"""Ready pipelines on small phantoms: linear families, default and multi-modal pipelines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg.data import phantom, random_velocity_field
from jaxreg.optimize import Level
from jaxreg.optimize.pipelines import linear_optimizer, register_linear, register_pair
from jaxreg.transforms import Affine, Rigid, Similarity, compose, invert, jacobian_determinant
from jaxreg.warp.pyramid import gaussian_smooth


@pytest.fixture(scope="module")
def fixed():
    return gaussian_smooth(phantom((64, 64), spacing=2.0), 2.0)


@pytest.mark.parametrize("model, cls", [("rigid", Rigid), ("similarity", Similarity), ("affine", Affine)])
def test_linear_families_recover_a_rigid_motion(fixed, model, cls):
    true = Rigid(jnp.asarray(0.15), jnp.asarray([6.0, -4.0]), jnp.asarray(fixed.grid.center, jnp.float32))
    moving = jr.warp(fixed, invert(true), fixed.grid)
    res = register_linear(fixed, moving, model=model, init="center", levels=[Level(2, 0.0, 150), Level(1, 0.0, 100)])
    assert isinstance(res.optimized, cls)
    pts = fixed.grid.world_coords()[16:48:8, 16:48:8]
    np.testing.assert_allclose(res.transform(pts), true(pts), atol=0.6)  # < a third of a voxel


def test_linear_optimizer_units():
    opt = linear_optimizer(step_mm=1.0, radius_mm=100.0)
    t = Affine.identity(2)
    g = Affine(jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2))
    upd, _ = opt.update(g, opt.init(t), t)
    np.testing.assert_allclose(np.abs(upd.translation), 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.abs(upd.matrix), 0.01, rtol=1e-3)
    np.testing.assert_allclose(upd.center, 0.0)


def test_default_pipeline_recovers_affine_plus_deformation(fixed):
    aff = Affine(jnp.asarray([[1.04, 0.05], [-0.03, 0.97]]), jnp.asarray([3.0, -2.0]), jnp.asarray(fixed.grid.center, jnp.float32))
    v = jax.jit(lambda t: t.exp())(random_velocity_field(jax.random.PRNGKey(2), fixed.grid, smoothness_mm=20.0, max_displacement_mm=5.0))
    truth = compose(aff, v)
    moving = jr.warp(fixed, invert(truth, grid=fixed.grid), fixed.grid)
    res = register_pair(fixed, moving, deformable_levels=[Level(2, 0.0, 40), Level(1, 0.0, 20)], linear_levels=[Level(2, 0.0, 100)])
    before = float(jnp.mean((moving.data - fixed.data) ** 2))
    lin = float(jnp.mean((jr.warp(moving, res.affine, fixed.grid).data - fixed.data) ** 2))
    after = float(jnp.mean((jr.warp(moving, res.transform, fixed.grid).data - fixed.data) ** 2))
    assert after < lin < before and after < 0.15 * before
    assert float(jacobian_determinant(res.deformable, fixed.grid).min()) > 0
    assert set(res.stages) == {"linear", "deformable"}


def test_multimodal_pipeline_with_inverted_contrast(fixed):
    shift = Rigid(jnp.asarray(0.05), jnp.asarray([3.0, 2.0]), jnp.asarray(fixed.grid.center, jnp.float32))
    moving = jr.warp(fixed, invert(shift), fixed.grid)
    moving = jr.Image(jnp.where(moving.data > 0, 1.2 - moving.data, 0.0), moving.grid)  # another "contrast"
    res = register_pair(fixed, moving, pipeline="multimodal", linear_levels=[Level(2, 0.0, 150), Level(1, 0.0, 50)],
                        deformable_levels=[Level(2, 0.0, 20)])
    pts = fixed.grid.world_coords()[16:48:8, 16:48:8]
    assert float(jnp.abs(res.affine(pts) - shift(pts)).max()) < 1.5
    assert float(jacobian_determinant(res.deformable, fixed.grid).min()) > 0


def test_pipeline_errors(fixed):
    with pytest.raises(ValueError, match="pipeline"):
        register_pair(fixed, fixed, pipeline="nope")
    with pytest.raises(ValueError, match="model"):
        register_linear(fixed, fixed, model="projective")
    with pytest.raises(ValueError, match="init"):
        register_linear(fixed, fixed, init="random")


@pytest.mark.parametrize("kind", ["bspline", "dense", "dense-svf"])
def test_bspline_and_dense_pipelines_reduce_the_error(fixed, kind):
    from jaxreg.optimize.pipelines import register_bspline, register_dense

    v = jax.jit(lambda t: t.exp())(random_velocity_field(jax.random.PRNGKey(2), fixed.grid, smoothness_mm=20.0, max_displacement_mm=5.0))
    moving = jr.warp(fixed, invert(v), fixed.grid)
    if kind == "bspline":
        res = register_bspline(fixed, moving, metric="ssd", spacings_mm=(32.0, 16.0), levels=[Level(2, 0.0, 60), Level(1, 0.0, 40)])
        assert res.optimized.control_grid.spacing[0] == pytest.approx(16.0)
    else:
        res = register_dense(fixed, moving, metric="ssd", weight=0.1, step_mm=0.1, diffeomorphic=kind == "dense-svf")
    before = float(jnp.mean((moving.data - fixed.data) ** 2))
    after = float(jnp.mean((jr.warp(moving, res.transform, fixed.grid).data - fixed.data) ** 2))
    assert after < 0.15 * before
    if kind != "dense":  # B-splines this smooth and SVFs stay fold-free; a plain DVF need not
        assert float(jacobian_determinant(res.transform, fixed.grid).min()) > 0
