"""The one registration API on small phantoms: methods, models, pipelines, batches, starts, compilation."""

import logging
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg.data import phantom, random_velocity_field
from jaxreg.optimize import (
    BSpline,
    Field,
    Gradient,
    Greedy,
    Level,
    Linear,
    Optimizer,
    Registration,
    Stage,
    Stopping,
    field_term,
    objective,
    preset,
    register,
    similarity_term,
)
from jaxreg.regularizers import diffusion
from jaxreg.similarity import lncc, ssd
from jaxreg.transforms import (
    Affine,
    BSplineTransform,
    DisplacementField,
    Rigid,
    Similarity,
    Translation,
    VelocityField,
    compose,
    invert,
    jacobian_determinant,
)
from jaxreg.warp.pyramid import gaussian_smooth


def mse(fixed, warped, mask=None):
    d = (fixed - warped) ** 2
    return jnp.mean(d) if mask is None else jnp.sum(mask * d) / jnp.maximum(jnp.sum(mask), 1e-6)


@pytest.fixture(scope="module")
def fixed():
    return gaussian_smooth(phantom((48, 48), spacing=2.0), 2.0)


@pytest.fixture(scope="module")
def deformed(fixed):
    truth = jax.jit(lambda v: v.exp())(
        random_velocity_field(jax.random.PRNGKey(3), fixed.grid, smoothness_mm=15.0, max_displacement_mm=5.0)
    )
    return jr.warp(fixed, invert(truth), fixed.grid), truth


def _err(moving, fixed, t):
    return float(mse(fixed.data, jr.warp(moving, t, fixed.grid).data))


# -- gradient method --------------------------------------------------------------------------------------------
def test_gradient_affine_recovery_multires(fixed):
    true = Affine(jnp.asarray([[1.05, 0.08], [-0.06, 0.95]]), jnp.asarray([3.0, -4.0]), jnp.zeros(2))
    moving = jr.warp(fixed, invert(true), fixed.grid)
    method = Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.02), Stopping(tol=1e-7))
    res = register(
        fixed,
        moving,
        method=method,
        transform=Affine.identity(2),
        levels=[Level(2, 0.0, 150), Level(1, 0.0, 150)],
    )
    assert isinstance(res, Registration) and res.stages[0].start == "given"
    np.testing.assert_allclose(res.transform.matrix, true.matrix, atol=0.01)
    np.testing.assert_allclose(res.transform.translation, true.translation, atol=0.2)
    assert res.loss_history[-1] < 0.05 * res.loss_history[0]
    assert len(res.levels) == 2 and res.iterations == sum(lv.iterations for lv in res.levels)


def test_return_best_returns_the_lowest_loss_iterate(fixed):
    """Stopping(return_best=True): Adam with a large constant step oscillates about a shift; the level returns the
    iterate of the lowest recorded loss (re-evaluated independently here), the last-iterate rule does not, the
    trajectory (losses) is the same, and a non-bool flag is a clear error."""
    moving = jr.warp(fixed, Translation(jnp.asarray([-2.5, 1.5])), fixed.grid)
    runs = {}
    for best in (False, True):
        method = Gradient(objective(similarity_term(mse)), Optimizer("adam", 1.5), Stopping(tol=0.0, return_best=best))
        runs[best] = register(fixed, moving, method=method, transform=Translation.identity(2), levels=[Level(1, 0.0, 25)])
    losses = np.asarray(runs[True].loss_history)
    np.testing.assert_array_equal(losses, np.asarray(runs[False].loss_history))
    # the loss oscillates: its minimum is not the last iterate's
    assert np.argmin(losses) < len(losses) - 1 and losses.min() < 0.8 * losses[-1], losses
    got = {b: _err(moving, fixed, r.transform) for b, r in runs.items()}
    assert got[True] == pytest.approx(float(losses.min()), rel=1e-4, abs=1e-7)
    assert got[True] < got[False]
    leaves = {b: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(r.transform)]) for b, r in runs.items()}
    assert not np.allclose(leaves[True], leaves[False])
    with pytest.raises(TypeError, match="stopping.return_best: expected a bool"):
        Gradient(objective(similarity_term(mse)), Optimizer("adam", 1.0), Stopping(return_best="yes"))
    assert Stopping(return_best=True) != Stopping() and hash(Stopping(return_best=True)) != hash(Stopping())


def test_field_terms_call_real_regularizers_keyword_spacing(fixed, deformed):
    """The documented objective (similarity + field_term(diffusion)) runs with the library's regulariser."""
    moving, _truth = deformed
    obj = objective(similarity_term(mse), field_term(diffusion, 0.05))
    res = register(
        fixed,
        moving,
        method=Gradient(obj, Optimizer("adam", 0.1)),
        transform=VelocityField.identity(fixed.grid),
        levels=[Level(2, 0.0, 60), Level(1, 0.0, 60)],
    )
    assert float(jacobian_determinant(res.transform, fixed.grid).min()) > 0
    assert _err(moving, fixed, res.transform) < 0.3 * _err(moving, fixed, Translation.identity(2))
    # by name through the registry too
    obj2 = objective(similarity_term("mse"), field_term("diffusion", 0.05))
    assert obj2.terms[1].fn(jnp.zeros((6, 6, 2)), spacing=(1.0, 1.0)) == 0.0


def test_masks_outer_and_input_errors(fixed):
    shift = Translation(jnp.asarray([2.0, -2.0]))
    moving = jr.warp(fixed, invert(shift), fixed.grid)
    mask = jr.Image(jnp.ones(fixed.grid.shape).at[:10].set(0.0), fixed.grid)
    m = Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.05))
    res = register(
        fixed,
        moving,
        method=m,
        transform=Translation.identity(2),
        levels=[Level(1, 0.0, 200)],
        outer=Translation(jnp.asarray([1.0, -1.0])),
        fixed_mask=mask,
        moving_mask=jr.Image(jnp.ones(fixed.grid.shape), fixed.grid),
    )
    np.testing.assert_allclose(res.optimized.offset, [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(res.transform(jnp.zeros((1, 2)))[0], [2.0, -2.0], atol=0.1)
    with pytest.raises(ValueError, match="fixed_mask"):
        register(
            fixed,
            moving,
            method=m,
            transform=Translation.identity(2),
            fixed_mask=jr.Image(jnp.zeros(fixed.grid.shape), fixed.grid),
        )
    with pytest.raises(ValueError, match="NaN"):
        register(
            fixed,
            jr.Image(moving.data.at[0, 0].set(jnp.nan), moving.grid),
            method=m,
            transform=Translation.identity(2),
        )
    with pytest.raises(ValueError, match="moving: the image is constant"):
        register(fixed, jr.Image(jnp.ones(fixed.grid.shape), fixed.grid), method=m, transform=Translation.identity(2))
    with pytest.raises(TypeError, match="method"):
        register(fixed, moving, method=3)
    with pytest.raises(ValueError, match="pipeline"):
        register(fixed, moving, method="nope")
    with pytest.raises(ValueError, match="init"):
        register(fixed, moving, method=Stage(m, Linear("rigid"), init="random"))
    with pytest.raises(ValueError, match="family"):
        register(fixed, moving, method=Stage(m, Linear("projective")))
    with pytest.raises(TypeError, match="objective"):
        Gradient(mse)
    with pytest.raises(ValueError, match="name"):
        Optimizer("nope")


def test_zero_iteration_level_keeps_the_start(fixed):
    m = Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.1))
    start = Translation(jnp.asarray([1.0, -2.0]))
    res = register(fixed, fixed, method=m, transform=start, levels=[Level(1, 0.0, 0)])
    assert res.iterations == 0 and res.levels[0].loss.shape == (0,)
    np.testing.assert_array_equal(res.transform.offset, start.offset)


def test_convergence_stops_early_and_is_recorded(fixed):
    m = Gradient(
        objective(similarity_term(mse)),
        Optimizer("adam", 0.01),
        Stopping(tol=1e-3, window=5, min_iterations=5),
    )
    res = register(fixed, fixed, method=m, transform=Rigid.identity(2), levels=[Level(1, 0.0, 200)])
    assert res.converged and res.iterations < 200
    assert np.all(np.isnan(res.levels[0].loss[res.iterations :]))


# -- greedy method ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        Greedy(mse, symmetric=False, step=1.0),
        Greedy(mse, symmetric=True, step=1.0),
        Greedy(mse, force="demons", symmetric=False, step=1.0),
        Greedy(mse, symmetric=False, update="additive", step=1.0),
        Greedy(mse, symmetric=False, update="compositive", step=1.0),
        Greedy(mse, force="demons", symmetric=False, update="diffeomorphic", step=1.0),
        Greedy(mse, symmetric=True, step=1.0, field_spacing=3.0),
        Greedy(mse, symmetric=True, step=1.0, exp_tolerance=0.0),
        Greedy(mse, symmetric=True, step=1.0, step_decay=0.5),
    ],
    ids=["svf", "svf-symmetric", "svf-demons", "additive", "compositive", "diffeomorphic-demons", "svf-lattice",
         "svf-fixed-exp", "svf-step-decay"],
)
def test_greedy_recovers_known_deformation_without_folding(method):
    fixed = gaussian_smooth(phantom((64, 64), spacing=1.5), 1.5)
    truth = jax.jit(lambda v: v.exp())(
        random_velocity_field(jax.random.PRNGKey(3), fixed.grid, smoothness_mm=15.0, max_displacement_mm=5.0)
    )
    moving = jr.warp(fixed, invert(truth), fixed.grid)
    res = register(fixed, moving, method=method, levels=[Level(2, 0.0, 40), Level(1, 0.0, 20)])
    field_cls = VelocityField if method.update == "svf" else DisplacementField
    assert type(res.optimized) is field_cls and res.optimized.grid == fixed.grid
    assert _err(moving, fixed, res.transform) < 0.15 * _err(moving, fixed, Translation.identity(2))
    inner = (slice(8, -8), slice(8, -8))
    err0 = jnp.linalg.norm(truth.displacement, axis=-1)[inner].mean()
    err = jnp.linalg.norm(res.transform.sample_grid(fixed.grid) - truth.sample_grid(fixed.grid), axis=-1)[
        inner
    ].mean()
    assert float(err) < (0.8 if method.force == "demons" else 0.6) * float(err0)
    assert float(jacobian_determinant(res.optimized, fixed.grid).min()) > 0


def test_greedy_step_decay_schedules_the_step():
    """The step falls linearly from ``step`` (first iteration) to ``step_decay * step`` (last): with
    ``step_decay=0`` the last of two iterations adds nothing, so (without field smoothing, which would act again)
    two decayed iterations equal one constant iteration, and differ from two constant ones."""
    fixed = gaussian_smooth(phantom((32, 32), spacing=2.0), 2.0)
    moving = jr.warp(fixed, Translation(jnp.asarray([1.5, -1.0])), fixed.grid)

    def run(iterations, decay):
        g = Greedy(mse, symmetric=False, step=0.8, sigma_field=0.0, step_decay=decay)
        return np.asarray(register(fixed, moving, method=g, levels=[Level(1, 0.0, iterations)]).optimized.velocity)

    one = run(1, 1.0)
    assert np.abs(one).max() > 0.1
    np.testing.assert_allclose(run(2, 0.0), one, atol=1e-6)
    assert np.abs(run(2, 1.0) - one).max() > 0.1


def test_greedy_errors(fixed):
    with pytest.raises(ValueError, match="force"):
        Greedy(mse, force="x")
    with pytest.raises(ValueError, match="symmetric"):
        Greedy(mse, update="additive", symmetric=True)
    with pytest.raises(ValueError, match="step"):
        Greedy(mse, step=-1.0)
    with pytest.raises(ValueError, match="field_spacing: expected a non-negative number of mm"):
        Greedy(mse, field_spacing=-1.0)
    with pytest.raises(ValueError, match="field_spacing: a velocity lattice needs update='svf'"):
        Greedy(mse, symmetric=False, update="additive", field_spacing=2.0)
    with pytest.raises(ValueError, match="exp_tolerance: expected a non-negative number of voxels"):
        Greedy(mse, exp_tolerance=-0.5)
    with pytest.raises(ValueError, match=r"step_decay: expected a fraction in \[0, 1\]"):
        Greedy(mse, step_decay=1.5)
    bs = BSplineTransform.identity(fixed.grid, 20.0)
    with pytest.raises(ValueError, match="outer"):
        register(fixed, fixed, method=Stage(Greedy(mse), levels=(Level(1, 0.0, 2),)), outer=bs)


# -- pipelines -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, cls", [("rigid", Rigid), ("similarity", Similarity), ("affine", Affine)])
def test_linear_families_recover_a_rigid_motion(family, cls):
    img = gaussian_smooth(phantom((64, 64), spacing=2.0), 2.0)
    true = Rigid(jnp.asarray(0.15), jnp.asarray([6.0, -4.0]), jnp.asarray(img.grid.center, jnp.float32))
    moving = jr.warp(img, invert(true), img.grid)
    stage = preset("affine", linear_levels=[Level(2, 0.0, 150), Level(1, 0.0, 100)], init="center")[0]
    res = register(img, moving, method=stage._replace(model=Linear(family)))
    assert type(res.optimized) is cls and res.stages[0].start == "center"
    pts = img.grid.world_coords()[16:48:8, 16:48:8]
    np.testing.assert_allclose(res.transform(pts), true(pts), atol=0.6)


def test_linear_optimizer_units():
    opt = Optimizer("adam", 1.0, radius_mm=100.0).build()
    t = Affine.identity(2)
    g = Affine(jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2))
    upd, _ = opt.update(g, opt.init(t), t)
    np.testing.assert_allclose(np.abs(upd.translation), 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.abs(upd.matrix), 0.01, rtol=1e-3)
    np.testing.assert_allclose(upd.center, 0.0)
    assert Optimizer("adam", 1.0, radius_mm="auto").resolved(
        jr.Grid.centered((10, 10), 4.0)
    ).radius_mm == pytest.approx(0.25 * np.hypot(40, 40), abs=0.05)


def test_default_pipeline_recovers_affine_plus_deformation(fixed):
    aff = Affine(
        jnp.asarray([[1.04, 0.05], [-0.03, 0.97]]),
        jnp.asarray([3.0, -2.0]),
        jnp.asarray(fixed.grid.center, jnp.float32),
    )
    v = jax.jit(lambda t: t.exp())(
        random_velocity_field(jax.random.PRNGKey(2), fixed.grid, smoothness_mm=20.0, max_displacement_mm=5.0)
    )
    moving = jr.warp(fixed, invert(compose(aff, v), grid=fixed.grid), fixed.grid)
    stages = preset(
        "default",
        deformable_levels=[Level(2, 0.0, 40), Level(1, 0.0, 20)],
        linear_levels=[Level(2, 0.0, 100)],
    )
    res = register(fixed, moving, method=stages)
    before, lin, after = (
        _err(moving, fixed, t) for t in (Translation.identity(2), res.linear, res.transform)
    )
    assert after < lin < before and after < 0.15 * before
    assert float(jacobian_determinant(res.deformable, fixed.grid).min()) > 0
    assert [s.name for s in res.stages] == ["affine", "deformable"]
    assert res.deformable is res.stages[1].transform and not res.stages[1].continues
    assert res.stages[1].outer is not None and res.stages[0].start is not None


def test_multimodal_pipeline_with_inverted_contrast():
    img = gaussian_smooth(phantom((64, 64), spacing=2.0), 2.0)
    shift = Rigid(jnp.asarray(0.05), jnp.asarray([3.0, 2.0]), jnp.asarray(img.grid.center, jnp.float32))
    moving = jr.warp(img, invert(shift), img.grid)
    moving = jr.Image(jnp.where(moving.data > 0, 1.2 - moving.data, 0.0), moving.grid)
    res = register(
        img,
        moving,
        method=preset(
            "multimodal",
            linear_levels=[Level(2, 0.0, 150), Level(1, 0.0, 50)],
            deformable_levels=[Level(2, 0.0, 20)],
        ),
    )
    pts = img.grid.world_coords()[16:48:8, 16:48:8]
    assert float(jnp.abs(res.linear(pts) - shift(pts)).max()) < 1.5
    assert float(jacobian_determinant(res.deformable, img.grid).min()) > 0


@pytest.mark.parametrize("kind", ["bspline", "dense", "dense-svf"])
def test_bspline_and_dense_stages_reduce_the_error(fixed, deformed, kind):
    moving, _ = deformed
    if kind == "bspline":
        m = Gradient(objective(similarity_term(ssd)), Optimizer("adam", 0.5))
        stages = (
            Stage(m, BSpline(32.0), (Level(2, 0.0, 60),)),
            Stage(m, BSpline(16.0), (Level(1, 0.0, 40),)),
        )
    else:
        m = Gradient(objective(similarity_term(mse), field_term(diffusion, 0.1)), Optimizer("adam", 0.1))
        stages = (
            Stage(
                m,
                Field("velocity" if kind == "dense-svf" else "displacement"),
                (Level(2, 0.0, 80), Level(1, 0.0, 40)),
            ),
        )
    res = register(fixed, moving, method=stages)
    if kind == "bspline":
        assert res.optimized.control_grid.spacing[0] == pytest.approx(16.0)
        assert (
            res.stages[1].start == "continued bspline"
            and res.stages[1].outer is None
            and res.stages[1].continues
        )
        assert res.deformable is res.optimized and res.linear is None
    assert _err(moving, fixed, res.transform) < 0.15 * _err(moving, fixed, Translation.identity(2))
    if kind != "dense":
        assert float(jacobian_determinant(res.transform, fixed.grid).min()) > 0


# -- starts --------------------------------------------------------------------------------------------------------
def _blob_pair():
    """An elongated asymmetric object, and a copy rotated by 180 degrees and cropped to another field of view."""
    g = jr.Grid.centered((64, 64), 2.0)
    x = g.world_coords()
    body = jnp.exp(-(((x[..., 0] / 30.0) ** 2 + (x[..., 1] / 12.0) ** 2) ** 2))
    bump = jnp.exp(-(((x[..., 0] - 18.0) / 6.0) ** 2 + ((x[..., 1] - 6.0) / 5.0) ** 2))
    fixed = jr.Image(body + 1.5 * bump, g)
    true = Rigid(jnp.asarray(np.pi - 0.1), jnp.asarray([4.0, 3.0]), jnp.zeros(2))
    mg = jr.Grid((52, 64), g.affine)  # the moving field of view loses 12 rows (24 mm) on one side
    moving = jr.warp(fixed, invert(true), mg)
    return fixed, moving, true


def test_auto_start_survives_flips_and_cropped_fields_of_view():
    fixed, moving, true = _blob_pair()
    stage = Stage(
        Gradient(objective(similarity_term("ncc")), Optimizer("adam", 0.2, radius_mm="auto")),
        Linear("rigid"),
        (Level(2, 0.0, 60), Level(1, 0.0, 60)),
        init="auto",
    )
    res = register(fixed, moving, method=stage)
    assert res.stages[0].start.startswith("principal")
    pts = fixed.grid.world_coords()[20:44:6, 20:44:6]
    assert float(jnp.abs(res.transform(pts) - true(pts)).max()) < 2.0
    # the principal axes closest to the identity (the former default) land on the flipped solution
    flipped = register(fixed, moving, method=stage._replace(init="moments"))
    assert float(jnp.abs(flipped.transform(pts) - true(pts)).max()) > 20.0


# -- batches -------------------------------------------------------------------------------------------------------
def test_batch_equals_loop_for_gradient_and_greedy(fixed):
    grid = fixed.grid
    shifts = [jnp.asarray(s) for s in ([1.0, 0.5], [-1.5, 2.0], [0.5, -1.0])]
    movings = [jr.warp(fixed, Translation(-s), grid) for s in shifts]
    fixeds = [jr.Image(fixed.data * (1.0 + 0.1 * i), grid) for i in range(3)]
    movings = [jr.Image(m.data * (1.0 + 0.1 * i), grid) for i, m in enumerate(movings)]
    lin = Stage(
        Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.05), Stopping(tol=0.0)),
        Linear("affine"),
        (Level(1, 0.0, 40),),
        init="com",
    )
    greedy = Stage(Greedy(mse, step=1.0), None, (Level(2, 0.0, 8), Level(1, 0.0, 4)))
    batch = register(fixeds, movings, method=(lin, greedy))
    assert batch.pairs == 3 and batch.levels[0].loss.shape == (3, 40)
    # the greedy stage alone on the same pairs (its step normalisation amplifies float reassociation of the
    # linear stage, so each stage is compared on equal inputs)
    batch_greedy = register(fixeds, movings, method=greedy)
    for i in range(3):
        single = register(fixeds[i], movings[i], method=(lin, greedy))
        one = batch.pair(i)
        np.testing.assert_allclose(one.linear.translation, single.linear.translation, atol=1e-3)
        np.testing.assert_allclose(one.linear.translation, shifts[i], atol=0.2)
        assert one.stages[0].start == "com" and type(one.optimized) is VelocityField
        single_greedy = register(fixeds[i], movings[i], method=greedy)
        np.testing.assert_allclose(
            batch_greedy.pair(i).optimized.velocity, single_greedy.optimized.velocity, atol=1e-3
        )
        np.testing.assert_allclose(
            batch_greedy.pair(i).levels[-1].loss, single_greedy.levels[-1].loss, rtol=1e-3, atol=1e-6
        )



def test_batch_of_refined_bspline_stages_equals_loop(fixed, deformed):
    """A B-spline stage that refines the previous one (half its spacing) continues every pair of a batch."""
    moving, _ = deformed
    movings = [moving, jr.warp(fixed, Translation(jnp.asarray([1.0, -1.0])), fixed.grid)]

    def stage(spacing):
        grad = Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.5), Stopping(tol=0.0))
        return Stage(grad, BSpline(spacing), (Level(1, 0.0, 6),))

    stages = (stage(32.0), stage(16.0))
    batch = register([fixed, fixed], movings, method=stages)
    assert batch.stages[1].continues and type(batch.optimized) is BSplineTransform
    for i in range(2):
        single = register(fixed, movings[i], method=stages)
        assert single.stages[1].continues
        # equal up to float reassociation of the vmapped kernel, amplified by Adam's normalised steps (mm)
        np.testing.assert_allclose(batch.pair(i).optimized.coefficients, single.optimized.coefficients, atol=2e-2)
        assert float(jnp.max(jnp.abs(single.optimized.coefficients))) > 1.0  # a real deformation was refined


def test_sweep_of_weights_in_one_call(fixed, deformed):
    moving, _ = deformed
    m = Gradient(
        objective(similarity_term(mse), field_term(diffusion, 1.0)), Optimizer("adam", 0.1), Stopping(tol=0.0)
    )
    sweep = Gradient(
        m.objective.replace(weights=jnp.asarray([[1.0, 0.0], [1.0, 1.0], [1.0, 100.0]])),
        m.optimizer,
        m.stopping,
    )
    res = register(fixed, moving, method=Stage(sweep, Field("velocity"), (Level(1, 0.0, 30),)), sweep=True)
    assert res.pairs == 3
    energy = [
        float(diffusion(res.optimized.velocity[i], spacing=tuple(fixed.grid.spacing))) for i in range(3)
    ]
    assert energy[0] > energy[1] > energy[2]


# -- compilation -----------------------------------------------------------------------------------------------------
def test_fresh_equal_configuration_compiles_nothing(fixed, caplog):
    def run(scale):
        method = Gradient(objective(similarity_term(lncc(5))), Optimizer("adam", 1e-2))
        stages = (
            Stage(method, Linear("rigid"), (Level(2, 0.0, 5),), init="com"),
            Stage(Greedy(lncc(5), step=0.5), None, (Level(2, 0.0, 3),)),
        )
        return register(fixed, jr.Image(fixed.data * scale, fixed.grid), method=stages)

    run(1.0)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        caplog.clear()
        res = run(0.9)
    compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiled == [], compiled
    assert all(lv.compile_seconds == 0.0 for lv in res.levels)


def test_distinct_transform_classes_through_one_optimizer(fixed):
    """Rigid, then affine, then rigid through the same optax optimiser (shared jitted internals) in one process."""
    m = Gradient(objective(similarity_term(mse)), Optimizer("adam", 0.01))
    moving = jr.warp(fixed, Translation(jnp.asarray([1.0, 0.0])), fixed.grid)
    for t in (Rigid.identity(2), Affine.identity(2), Rigid.identity(2)):
        res = register(fixed, moving, method=m, transform=t, levels=[Level(1, 0.0, 5)])
        assert type(res.transform) is type(t)


def test_batched_initial_transforms_and_outer(fixed):
    grid = fixed.grid
    outer = jax.tree_util.tree_map(
        lambda *x: jnp.stack(x), Translation(jnp.asarray([1.0, 0.0])), Translation(jnp.asarray([0.0, 1.0]))
    )
    movings = [
        jr.warp(fixed, Translation(jnp.asarray([1.0, 0.0])), grid),
        jr.warp(fixed, Translation(jnp.asarray([0.0, 1.0])), grid),
    ]
    res = register([fixed, fixed], movings, method=Stage(Greedy(mse), None, (Level(1, 0.0, 3),)), outer=outer)
    for i in range(2):
        assert (
            jax.tree_util.tree_map(operator.itemgetter(i), res.stages[0].outer).offset.tolist()
            == outer.offset[i].tolist()
        )


@pytest.mark.parametrize("family", ["rigid", "affine"])  # similarity shares rigid's decomposition path
def test_linear_families_in_3d_from_the_auto_start(family):
    """3-D linear stages from scored candidate starts (a 3x3 identity matrix is not read as 2-D homogeneous)."""
    from jaxreg.optimize import linear_as

    assert linear_as(Affine.identity(3), "rigid").rotation.shape == (3,)
    g = jr.Grid.centered((24, 22, 20), 3.0)
    x = g.world_coords()
    body = jnp.exp(-(((x[..., 0] / 26.0) ** 2 + (x[..., 1] / 18.0) ** 2 + (x[..., 2] / 12.0) ** 2) ** 2))
    bump = jnp.exp(
        -(((x[..., 0] - 12.0) / 6.0) ** 2 + ((x[..., 1] - 6.0) / 5.0) ** 2 + ((x[..., 2] + 4.0) / 5.0) ** 2)
    )
    img = jr.Image(body + 1.5 * bump, g)  # an asymmetric object: its pose is well defined
    true = Rigid(
        jnp.asarray([0.05, -0.04, 0.08]),
        jnp.asarray([3.0, -2.0, 1.5]),
        jnp.asarray(img.grid.center, jnp.float32),
    )
    moving = jr.warp(img, invert(true), img.grid)
    method = Gradient(
        objective(similarity_term(mse)), Optimizer("adam", 0.2, radius_mm="auto"), Stopping(tol=0.0)
    )
    stage = Stage(method, Linear(family), (Level(2, 0.0, 60), Level(1, 0.0, 60)), init="auto")
    res = register(img, moving, method=stage)
    assert res.stages[0].start is not None and res.optimized.ndim == 3
    pts = img.grid.world_coords()[6:18:4, 5:17:4, 5:15:4]
    # a third of a 3 mm voxel for the rigid and similarity fits; the 12-parameter affine trades some shear for
    # intensity overlap on this smooth object (still under a voxel)
    assert float(jnp.abs(res.transform(pts) - true(pts)).max()) < (1.0 if family != "affine" else 2.5)


def test_greedy_velocity_lattice_interpolation_and_strides():
    """The lattice of ``field_spacing``: its separable upsampling is scipy's linear interpolation at ``i / k``
    (edge values repeated), strides follow the level spacing per axis, and a spacing below the voxel size is
    the plain full-resolution method (identical result)."""
    from scipy import ndimage

    from jaxreg.optimize.methods import _lattice_up

    rng = np.random.default_rng(0)
    lat = rng.normal(size=(5, 4, 3)).astype(np.float32)
    strides, shape = (2, 3, 1), (9, 11, 3)  # 11 > 3 * (4 - 1) + 1: the last lattice value is repeated
    got = np.asarray(_lattice_up(jnp.asarray(lat), strides, shape))
    coords = np.meshgrid(*[np.arange(n) / k for n, k in zip(shape, strides)], indexing="ij")
    want = ndimage.map_coordinates(lat, coords, order=1, mode="nearest")
    np.testing.assert_allclose(got, want, atol=1e-5)

    g = jr.Grid.from_spacing((8, 8, 8), (1.0, 2.0, 0.5))
    assert Greedy(mse, field_spacing=2.0).lattice_strides(g) == (2, 1, 4)
    assert Greedy(mse).lattice_strides(g) == (1, 1, 1)

    fixed = gaussian_smooth(phantom((32, 32), spacing=2.0), 2.0)
    moving = jr.warp(fixed, Translation(jnp.asarray([1.5, -1.0])), fixed.grid)
    lv = [Level(1, 0.0, 5)]
    a = register(fixed, moving, method=Greedy(mse), levels=lv)
    b = register(fixed, moving, method=Greedy(mse, field_spacing=1.0), levels=lv)  # round(1 / 2) -> stride 1
    np.testing.assert_array_equal(np.asarray(a.optimized.velocity), np.asarray(b.optimized.velocity))
