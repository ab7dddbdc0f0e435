"""The registration engine on small phantoms: recovery of known transforms, folding, vmap, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr
from jaxreg.data import phantom
from jaxreg.optimize import Level, Stopping, field_term, objective, register, register_many, similarity_term
from jaxreg.optimize.engine import _compiled_run
from jaxreg.transforms import Affine, DisplacementField, Rigid, Translation, VelocityField, invert, jacobian_determinant
from jaxreg.warp.pyramid import gaussian_smooth


def ssd(fixed, warped, mask):
    d = (fixed - warped) ** 2
    return jnp.mean(d) if mask is None else jnp.sum(mask * d) / jnp.maximum(jnp.sum(mask), 1e-6)


def diffusion(u, spacing):
    g = jr.core.index_gradient(u, u.ndim - 1) / jnp.asarray(spacing, u.dtype)
    return jnp.mean(g**2)


@pytest.fixture(scope="module")
def fixed2d():
    return gaussian_smooth(phantom((48, 48), spacing=2.0), 2.0)


def test_affine_recovery_multires(fixed2d):
    true = Affine(jnp.asarray([[1.05, 0.08], [-0.06, 0.95]]), jnp.asarray([3.0, -4.0]), jnp.zeros(2))
    moving = jr.warp(fixed2d, invert(true), fixed2d.grid)  # moving(true(x)) = fixed(x)
    res = register(
        fixed2d, moving, Affine.identity(2), objective=objective(similarity_term(ssd)), optimizer=optax.adam(0.02),
        levels=[Level(2, 0.0, 150), Level(1, 0.0, 150)], stopping=Stopping(tol=1e-7),
    )
    np.testing.assert_allclose(res.transform.matrix, true.matrix, atol=0.01)
    np.testing.assert_allclose(res.transform.translation, true.translation, atol=0.2)
    assert res.loss_history[-1] < 0.05 * res.loss_history[0]
    assert len(res.levels) == 2 and res.iterations == sum(lv.iterations for lv in res.levels)


def test_svf_registration_recovers_deformation_without_folding(fixed2d):
    grid = fixed2d.grid
    key = jax.random.PRNGKey(0)
    v_true = VelocityField(jr.data.random_velocity_field(key, grid, smoothness_mm=12.0, max_displacement_mm=4.0).velocity, grid)
    moving = jr.warp(fixed2d, invert(v_true), grid)
    res = register(
        fixed2d, moving, VelocityField.identity(grid), objective=objective(similarity_term(ssd), field_term(diffusion, 0.05)),
        optimizer=optax.adam(0.1), levels=[Level(2, 0.0, 100), Level(1, 0.0, 100)],
    )
    det = jacobian_determinant(res.transform, grid)
    assert float(det.min()) > 0
    assert res.loss_history[-1] < 0.2 * res.loss_history[0]
    # the recovered map is closer to the truth than the identity is, where the image has structure
    err0 = jnp.linalg.norm(v_true.sample_displacement(grid), axis=-1)
    err = jnp.linalg.norm(res.transform.sample_grid(grid) - v_true.sample_grid(grid), axis=-1)
    inner = (slice(6, -6), slice(6, -6))
    assert float(err[inner].mean()) < 0.5 * float(err0[inner].mean())


def test_masks_and_outer_transform(fixed2d):
    shift = Translation(jnp.asarray([2.0, -2.0]))
    moving = jr.warp(fixed2d, invert(shift), fixed2d.grid)
    mask = jr.Image(jnp.ones(fixed2d.grid.shape).at[:10].set(0.0), fixed2d.grid)
    # the outer transform already holds half the shift: only the rest is optimised
    res = register(
        fixed2d, moving, Translation.identity(2), objective=objective(similarity_term(ssd)), optimizer=optax.adam(0.05),
        levels=[Level(1, 0.0, 200)], outer=Translation(jnp.asarray([1.0, -1.0])), fixed_mask=mask,
    )
    np.testing.assert_allclose(res.optimized.offset, [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(res.transform(jnp.zeros((1, 2)))[0], [2.0, -2.0], atol=0.1)
    with pytest.raises(ValueError, match="fixed_mask"):
        register(fixed2d, moving, Translation.identity(2), objective=objective(similarity_term(ssd)), optimizer=optax.adam(0.05),
                 fixed_mask=jr.Image(jnp.zeros(fixed2d.grid.shape), fixed2d.grid))
    with pytest.raises(ValueError, match="NaN"):
        register(fixed2d, jr.Image(moving.data.at[0, 0].set(jnp.nan), moving.grid), Translation.identity(2),
                 objective=objective(similarity_term(ssd)), optimizer=optax.adam(0.05))


def test_convergence_stops_early_and_is_recorded(fixed2d):
    res = register(
        fixed2d, fixed2d, Rigid.identity(2), objective=objective(similarity_term(ssd)), optimizer=optax.adam(0.01),
        levels=[Level(1, 0.0, 200)], stopping=Stopping(tol=1e-3, window=5, min_iterations=5),
    )
    assert res.converged and res.iterations < 200
    assert np.all(np.isnan(res.levels[0].loss[res.iterations:]))


def test_register_many_equals_loop_and_sweeps_weights(fixed2d):
    grid = fixed2d.grid
    shifts = jnp.asarray([[1.0, 0.5], [-1.5, 2.0], [0.5, -1.0]])
    movings = jnp.stack([jr.warp(fixed2d, Translation(-s), grid).data for s in shifts])
    fixeds = jnp.broadcast_to(fixed2d.data, movings.shape)
    t0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (3,) + a.shape), Translation.identity(2))
    obj = objective(similarity_term(ssd))
    opt = optax.adam(0.05)
    stop = Stopping(tol=0.0)  # run the full cap so batched and single runs take the same steps
    ts, losses, its = register_many(fixeds, movings, t0, fixed_grid=grid, moving_grid=grid, objective=obj, optimizer=opt, iterations=60, stopping=stop)
    assert losses.shape == (3, 60) and np.all(np.asarray(its) == 60)
    for i in range(3):
        single = register(fixed2d, jr.Image(movings[i], grid), Translation.identity(2), objective=obj, optimizer=opt,
                          levels=[Level(1, 0.0, 60)], stopping=stop)
        np.testing.assert_allclose(ts.offset[i], single.transform.offset, atol=1e-4)
        np.testing.assert_allclose(ts.offset[i], shifts[i], atol=0.15)
    # a sweep of regularisation weights on one pair: larger weight -> smoother field
    v0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (3,) + a.shape), VelocityField.identity(grid))
    sweep = objective(similarity_term(ssd), field_term(diffusion, 1.0)).replace(weights=jnp.asarray([[1.0, 0.0], [1.0, 1.0], [1.0, 100.0]]))
    vs, _, _ = register_many(fixeds, movings[:1].repeat(3, 0), v0, fixed_grid=grid, moving_grid=grid, objective=sweep,
                             optimizer=optax.adam(0.1), iterations=40, stopping=stop)
    energy = [float(diffusion(vs.velocity[i], grid.spacing)) for i in range(3)]
    assert energy[0] > energy[1] > energy[2]


def test_second_call_does_not_recompile(fixed2d):
    obj = objective(similarity_term(ssd))
    opt = optax.adam(0.01)
    kw = dict(objective=obj, optimizer=opt, levels=[Level(1, 0.0, 20)], stopping=Stopping(tol=0.0))
    register(fixed2d, fixed2d, Translation.identity(2), **kw)
    hits = _compiled_run.cache_info().hits
    run = _compiled_run(obj.terms, fixed2d.grid, fixed2d.grid, opt, 20, Stopping(tol=0.0), 25, False)
    size = run._cache_size()
    register(fixed2d, jr.Image(fixed2d.data * 0.5, fixed2d.grid), Translation(jnp.ones(2)), **kw)
    assert _compiled_run.cache_info().hits > hits
    assert run._cache_size() == size
