"""greedy_register_many: many pairs in one vmapped call per level, checked against a loop of greedy_register."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg.core.grid import Image
from jaxreg.data import phantom, random_velocity_field
from jaxreg.optimize import GreedyManyResult, GreedyOptions, Level, greedy_register, greedy_register_many
from jaxreg.transforms import Translation, invert, jacobian_determinant
from jaxreg.warp.pyramid import gaussian_smooth

LEVELS = (Level(2, 0.0, 12), Level(1, 0.0, 6))


def ssd(f, w, m):
    if m is None:
        return jnp.mean((f - w) ** 2)
    return jnp.sum(m * (f - w) ** 2) / jnp.sum(m)


def _pairs(shape, spacing, keys):
    """A smooth phantom and moving images deformed by known smooth random diffeomorphisms (one per key)."""
    fixed = gaussian_smooth(phantom(shape, spacing=spacing), 1.5)
    movings = []
    for k in keys:
        truth = random_velocity_field(jax.random.PRNGKey(k), fixed.grid, smoothness_mm=12.0, max_displacement_mm=4.0).exp()
        movings.append(jr.warp(fixed, invert(truth), fixed.grid).data)
    # the fixed images differ too: pair p registers moving p to a slightly scaled copy of the phantom
    fixeds = [fixed.data * (1.0 + 0.1 * i) for i in range(len(keys))]
    return jnp.stack(fixeds), jnp.stack([m * (1.0 + 0.1 * i) for i, m in enumerate(movings)]), fixed.grid


@pytest.fixture(scope="module")
def pairs2d():
    return _pairs((32, 32), 1.5, (1, 2, 3))


def _loop(fixed, moving, grid, outer=None, mask=None, **kw):
    out = []
    for p in range(fixed.shape[0]):
        o = None if outer is None else jax.tree_util.tree_map(operator.itemgetter(p), outer)
        mk = None if mask is None else Image(mask[p], grid)
        out.append(greedy_register(Image(fixed[p], grid), Image(moving[p], grid), outer=o, fixed_mask=mk, **kw))
    return out


def _field(t):
    return t.velocity if hasattr(t, "velocity") else t.displacement


@pytest.mark.parametrize(
    "options",
    [
        GreedyOptions(symmetric=True),
        GreedyOptions(symmetric=False),
        GreedyOptions(force="demons", symmetric=False, update="diffeomorphic"),
        GreedyOptions(symmetric=False, update="additive"),
    ],
    ids=["svf-symmetric", "svf", "diffeomorphic-demons", "additive"],
)
def test_vmap_equals_loop(pairs2d, options):
    fixed, moving, grid = pairs2d
    res = greedy_register_many(fixed, moving, fixed_grid=grid, moving_grid=grid, similarity=ssd, levels=LEVELS, options=options)
    assert isinstance(res, GreedyManyResult) and res.pairs == 3
    assert res.loss_history.shape == (3, sum(lv.iterations for lv in LEVELS))
    ref = _loop(fixed, moving, grid, similarity=ssd, levels=LEVELS, options=options)
    for p, r in enumerate(ref):
        one = res.pair(p)
        assert type(one.optimized) is type(r.optimized) and one.optimized.grid == grid
        np.testing.assert_allclose(_field(one.optimized), _field(r.optimized), atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(one.loss_history, r.loss_history, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(one.transform.sample_grid(grid), r.transform.sample_grid(grid), atol=2e-4)


@pytest.mark.parametrize("options", [GreedyOptions(symmetric=True), GreedyOptions(force="demons", symmetric=False, update="diffeomorphic")], ids=["svf-symmetric", "diffeomorphic-demons"])
def test_loss_reduced_and_fold_free(pairs2d, options):
    fixed, moving, grid = pairs2d
    res = greedy_register_many(fixed, moving, fixed_grid=grid, moving_grid=grid, similarity=ssd, levels=LEVELS, options=options)
    for p in range(fixed.shape[0]):
        one = res.pair(p)
        before = float(ssd(fixed[p], moving[p], None))
        warped = jr.warp(Image(moving[p], grid), one.transform, grid).data
        assert float(ssd(fixed[p], warped, None)) < 0.5 * before
        # diffeomorphic updates: positive Jacobian determinant everywhere (no folding)
        assert float(jacobian_determinant(one.optimized, grid).min()) > 0
    hist = res.levels[-1].loss
    assert hist.shape == (3, LEVELS[-1].iterations) and np.all(np.isfinite(hist))


def test_outer_initial_and_mask_match_loop(pairs2d):
    fixed, moving, grid = pairs2d
    shifts = jnp.asarray([[1.5, -1.0], [0.0, 0.5], [-1.0, 1.0]])
    outer = Translation(shifts)  # stacked: one translation per pair
    moved = jnp.stack([jr.warp(Image(moving[p], grid), invert(Translation(shifts[p])), grid).data for p in range(3)])
    mask = jnp.ones((3, *grid.shape)).at[:, :4].set(0.0)
    kw = {"similarity": ssd, "levels": (Level(2, 0.0, 8), Level(1, 0.0, 4)), "options": GreedyOptions(symmetric=True)}
    first = greedy_register_many(fixed, moved, fixed_grid=grid, moving_grid=grid, outer=outer, fixed_mask=mask, **kw)
    # continue from the stacked result (initial on the fixed grid), as a loop would
    res = greedy_register_many(fixed, moved, fixed_grid=grid, moving_grid=grid, outer=outer, fixed_mask=mask, initial=first.optimized, **kw)
    ref = _loop(fixed, moved, grid, outer=outer, mask=mask, **kw)
    for p, r in enumerate(ref):
        r2 = greedy_register(Image(fixed[p], grid), Image(moved[p], grid), outer=Translation(shifts[p]), fixed_mask=Image(mask[p], grid), initial=r.optimized, **kw)
        np.testing.assert_allclose(res.pair(p).optimized.velocity, r2.optimized.velocity, atol=3e-4, rtol=1e-4)
        np.testing.assert_allclose(res.pair(p).transform.sample_grid(grid), r2.transform.sample_grid(grid), atol=3e-4)
    # a mask shared by all pairs is broadcast
    shared = greedy_register_many(fixed, moved, fixed_grid=grid, moving_grid=grid, outer=outer, fixed_mask=mask[0], **kw)
    np.testing.assert_allclose(shared.optimized.velocity, first.optimized.velocity, atol=1e-6)


def test_three_dimensional_vmap_equals_loop():
    fixed, moving, grid = _pairs((12, 12, 12), 2.0, (4, 5))
    kw = {"similarity": ssd, "levels": (Level(2, 0.0, 4), Level(1, 0.0, 3)), "options": GreedyOptions(symmetric=True, exp_steps=4)}
    res = greedy_register_many(fixed, moving, fixed_grid=grid, moving_grid=grid, **kw)
    assert res.optimized.velocity.shape == (2, 12, 12, 12, 3)
    for p, r in enumerate(_loop(fixed, moving, grid, **kw)):
        np.testing.assert_allclose(res.pair(p).optimized.velocity, r.optimized.velocity, atol=2e-4, rtol=1e-4)


def test_compile_seconds_is_compilation_only(pairs2d):
    fixed, moving, grid = pairs2d
    sim = lambda f, w, m: jnp.mean(jnp.abs(f - w))  # a fresh metric: nothing compiled yet
    kw = {"fixed_grid": grid, "moving_grid": grid, "similarity": sim, "levels": (Level(2, 0.0, 5),), "options": GreedyOptions(symmetric=False)}
    cold = greedy_register_many(fixed, moving, **kw)
    warm = greedy_register_many(fixed, moving, **kw)
    assert 0.0 < cold.levels[0].compile_seconds <= cold.levels[0].seconds
    assert warm.levels[0].compile_seconds == 0.0  # no recompilation on a repeated call
    np.testing.assert_array_equal(cold.optimized.velocity, warm.optimized.velocity)
    single = greedy_register(Image(fixed[0], grid), Image(moving[0], grid), similarity=sim, levels=(Level(2, 0.0, 5),), options=GreedyOptions(symmetric=False))
    again = greedy_register(Image(fixed[0], grid), Image(moving[0], grid), similarity=sim, levels=(Level(2, 0.0, 5),), options=GreedyOptions(symmetric=False))
    assert 0.0 < single.levels[0].compile_seconds <= single.levels[0].seconds
    assert again.levels[0].compile_seconds == 0.0


def test_errors(pairs2d):
    fixed, moving, grid = pairs2d
    kw = {"fixed_grid": grid, "moving_grid": grid, "similarity": ssd, "levels": (Level(1, 0.0, 1),)}
    with pytest.raises(ValueError, match="moving: expected 3"):
        greedy_register_many(fixed, moving[:2], **kw)
    with pytest.raises(ValueError, match="fixed: expected shape"):
        greedy_register_many(fixed[:, :16], moving, **kw)
    with pytest.raises(ValueError, match="moving: expected shape"):
        greedy_register_many(fixed, moving[0], **kw)
    with pytest.raises(TypeError, match="fixed/moving"):
        greedy_register_many(Image(fixed[0], grid), Image(moving[0], grid), **kw)
    with pytest.raises(TypeError, match="fixed_grid"):
        greedy_register_many(fixed, moving, **{**kw, "fixed_grid": (32, 32)})
    with pytest.raises(ValueError, match="outer"):
        greedy_register_many(fixed, moving, outer=Translation(jnp.zeros((2, 2))), **kw)
    with pytest.raises(ValueError, match="fixed_mask"):
        greedy_register_many(fixed, moving, fixed_mask=jnp.ones((3, 16, 16)), **kw)
    with pytest.raises(TypeError, match="initial"):
        greedy_register_many(fixed, moving, initial=jr.DisplacementField(jnp.zeros((3, 32, 32, 2)), grid), **kw)
    with pytest.raises(ValueError, match="initial"):
        greedy_register_many(fixed, moving, initial=jr.VelocityField(jnp.zeros((2, 32, 32, 2)), grid), **kw)
    with pytest.raises(ValueError, match="symmetric"):
        greedy_register_many(fixed, moving, options=GreedyOptions(update="compositive", symmetric=True), **kw)
