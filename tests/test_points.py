"""Point-based registration (jaxreg.points): closed-form fits, error measures, TRE prediction, landmark term.

Layers: references (scipy's ``Rotation.align_vectors`` for Kabsch, ``numpy.linalg.lstsq`` for the affine
normal equations, Monte Carlo for the TRE prediction); invariants with hypothesis (exact recovery from
noiseless points, invariance to point order); jit = no-jit, vmap = loop, gradients; and the direction
convention against the image warp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from jaxreg.core.grid import Grid, Image
from jaxreg.points import (
    drop_worst_fiducial,
    expected_fre,
    fit_affine,
    fit_rigid,
    fit_similarity,
    fit_transform,
    fle_from_fre,
    fre,
    is_degenerate,
    landmark_distance,
    landmark_term,
    leave_one_out_errors,
    num_parameters,
    predict_tre,
    principal_axes,
    registration_errors,
    simulate_tre,
    tre,
)
from jaxreg.transforms import DisplacementField, Rigid, invert
from jaxreg.transforms.linear import Affine, Similarity
from jaxreg.warp import warp

FITS = {"rigid": fit_rigid, "similarity": fit_similarity, "affine": fit_affine}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _random_linear(rng: np.random.Generator, ndim: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """A random ground-truth ``(A, b)`` of the model's family (rotations cover the whole group)."""
    if ndim == 3:
        r = Rotation.random(random_state=rng).as_matrix()
    else:
        th = rng.uniform(-np.pi, np.pi)
        r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    if model == "similarity":
        r = r * np.exp(rng.uniform(-1.0, 1.0))
    elif model == "affine":
        r = rng.normal(size=(ndim, ndim)) + 2.0 * np.eye(ndim)
    return r, rng.normal(scale=50.0, size=ndim)


def _points(rng: np.random.Generator, n_pts: int, ndim: int) -> np.ndarray:
    return rng.normal(scale=40.0, size=(n_pts, ndim)) + rng.normal(scale=100.0, size=ndim)


# -- exact recovery, invariances ------------------------------------------------------------------------------
@given(
    seed=st.integers(0, 2**31 - 1),
    ndim=st.sampled_from([2, 3]),
    model=st.sampled_from(["rigid", "similarity", "affine"]),
    extra=st.integers(0, 6),
)
def test_fit_recovers_noiseless_transform_exactly(seed, ndim, model, extra):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        a, b = _random_linear(rng, ndim, model)
        n_pts = ndim + 1 + extra
        x = _points(rng, n_pts, ndim)
        y = x @ a.T + b
        # pad with zero-weight rows to one shape (one compilation per model), whatever the number of points
        pad = ndim + 7 - n_pts
        w = np.concatenate([np.ones(n_pts), np.zeros(pad)])
        junk = rng.normal(scale=100.0, size=(pad, ndim))
        t = FITS[model](np.concatenate([x, junk]), np.concatenate([y, -junk]), weights=w)
        assert type(t) is {"rigid": Rigid, "similarity": Similarity, "affine": Affine}[model]
        h = np.asarray(t.homogeneous())
        # an exactly determined affine fit (n = ndim + 1) of an ill-conditioned draw, points ~100 mm from the origin,
        # loses digits in float64: seed=2812, 3-D affine, extra=0 is off by 7e-8 in the matrix, 3.4e-6 mm in the
        # translation (conditioning, not an error of the fit)
        np.testing.assert_allclose(h[:ndim, :ndim], a, atol=1e-6)
        np.testing.assert_allclose(h[:ndim, ndim], b, atol=1e-5)
        np.testing.assert_allclose(np.asarray(t(x)), y, atol=1e-5)
        np.testing.assert_allclose(np.asarray(t.center), x.mean(0), atol=1e-9)
        assert float(fre(t, x, y)) < 1e-7


@given(
    seed=st.integers(0, 2**31 - 1),
    ndim=st.sampled_from([2, 3]),
    model=st.sampled_from(["rigid", "similarity", "affine"]),
)
def test_fit_is_invariant_to_point_order(seed, ndim, model):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x = _points(rng, 6, ndim)
        y = x + rng.normal(scale=2.0, size=x.shape)  # noisy: the fit is a genuine compromise
        w = rng.uniform(0.2, 2.0, size=6)
        perm = rng.permutation(6)
        t1 = FITS[model](x, y, weights=w)
        t2 = FITS[model](x[perm], y[perm], weights=w[perm])
        np.testing.assert_allclose(np.asarray(t1.homogeneous()), np.asarray(t2.homogeneous()), atol=1e-9)


def test_rigid_matches_scipy_align_vectors(x64):
    """Kabsch against scipy's independent implementation, weighted and noisy."""
    rng = np.random.default_rng(1)
    for ndim_pts in (3, 6, 6):
        x = _points(rng, ndim_pts, 3)
        r_true = Rotation.random(random_state=rng).as_matrix()
        y = x @ r_true.T + 10.0 + rng.normal(scale=3.0, size=x.shape)
        w = rng.uniform(0.1, 3.0, size=ndim_pts)
        t = fit_rigid(x, y, weights=w)
        xc = x - w @ x / w.sum()
        yc = y - w @ y / w.sum()
        ref, _ = Rotation.align_vectors(yc, xc, weights=w)
        np.testing.assert_allclose(np.asarray(t.matrix), ref.as_matrix(), atol=1e-9)


def test_rigid_handles_reflections(x64):
    """Mirrored correspondences: the best *proper* rotation (det +1), as scipy finds it, not the reflection."""
    rng = np.random.default_rng(2)
    for ndim in (2, 3):
        x = _points(rng, 6, ndim)
        mirror = np.eye(ndim)
        mirror[0, 0] = -1.0
        y = x @ mirror.T
        t = fit_rigid(x, y)
        m = np.asarray(t.matrix)
        assert np.linalg.det(m) == pytest.approx(1.0)
        np.testing.assert_allclose(m @ m.T, np.eye(ndim), atol=1e-12)
        # optimality over proper rotations: no small rotation does better
        base = float(fre(t, x, y))
        for _ in range(20):
            rot = t.rotation + rng.normal(scale=1e-3, size=np.shape(t.rotation))
            other = Rigid(jnp.asarray(rot), t.translation, t.center)
            assert float(fre(other, x, y)) >= base - 1e-12
        if ndim == 3:
            xc, yc = x - x.mean(0), y - y.mean(0)
            ref, _ = Rotation.align_vectors(yc, xc)
            np.testing.assert_allclose(m, ref.as_matrix(), atol=1e-9)


def test_affine_matches_homogeneous_normal_equations(x64):
    """``A_h = X' W X^T (X W X^T)^-1`` in homogeneous coordinates (numpy lstsq on sqrt-weighted rows)."""
    rng = np.random.default_rng(3)
    for ndim in (2, 3):
        x = _points(rng, 6, ndim)
        y = _points(rng, 6, ndim)
        w = rng.uniform(0.1, 2.0, size=6)
        xh = np.concatenate([x, np.ones((6, 1))], axis=1)
        sol, *_ = np.linalg.lstsq(np.sqrt(w)[:, None] * xh, np.sqrt(w)[:, None] * y, rcond=None)
        h = np.asarray(fit_affine(x, y, weights=w).homogeneous())
        np.testing.assert_allclose(h[:ndim], sol.T, atol=1e-9)
        normal = (y.T * w) @ xh @ np.linalg.inv((xh.T * w) @ xh)
        np.testing.assert_allclose(h[:ndim], normal, atol=1e-8)


@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_fits_are_stationary_points_of_the_landmark_distance(x64, model):
    """The closed form is the minimiser: the gradient of the weighted landmark term vanishes there."""
    rng = np.random.default_rng(4)
    x = _points(rng, 6, 3)
    y = x @ _random_linear(rng, 3, model)[0].T + rng.normal(scale=2.0, size=x.shape)
    w = rng.uniform(0.1, 2.0, size=6)
    t = fit_transform(x, y, model=model, weights=w)
    g = jax.grad(lambda tt: landmark_distance(tt, x, y, weights=w))(t)
    for name, leaf in vars(g).items():
        if name != "center":
            np.testing.assert_allclose(np.asarray(leaf), 0.0, atol=1e-8)


def test_similarity_scale_is_umeyama(x64):
    rng = np.random.default_rng(5)
    x = _points(rng, 6, 3)
    y = 2.5 * x + rng.normal(scale=1.0, size=x.shape)
    t = fit_similarity(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    u, s, vt = np.linalg.svd(yc.T @ xc / 6)
    d = np.ones(3)
    d[-1] = np.sign(np.linalg.det(u @ vt))
    scale = (s * d).sum() / (np.sum(xc**2) / 6)
    assert float(t.scale) == pytest.approx(scale, rel=1e-12)


def test_zero_weight_equals_leaving_the_point_out(x64):
    rng = np.random.default_rng(6)
    x = _points(rng, 6, 3)
    y = x + rng.normal(scale=2.0, size=x.shape)
    w = np.ones(6)
    w[2] = 0.0
    keep = np.arange(6) != 2
    for model, fit in FITS.items():
        a = fit(x, y, weights=w).homogeneous()
        b = fit(x[keep], y[keep]).homogeneous()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-9, err_msg=model)


def test_float32_inputs_give_float32_transforms():
    rng = np.random.default_rng(7)
    x = _points(rng, 6, 3).astype(np.float32)
    y = x + np.float32(5.0)
    for fit in FITS.values():
        t = fit(x, y)
        for leaf in jax.tree_util.tree_leaves(t):
            assert leaf.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(t(x)), y, atol=1e-3)


# -- argument checks and degenerate configurations -----------------------------------------------------------
def test_shape_errors_name_the_argument():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="fixed_points/moving_points"):
        fit_rigid(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="fixed_points"):
        fit_rigid(np.zeros((5, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="moving_points"):
        fit_rigid(x, np.zeros((5,)))
    with pytest.raises(ValueError, match="weights"):
        fit_rigid(np.random.default_rng(0).normal(size=(5, 3)), np.zeros((5, 3)), weights=np.ones(4))
    with pytest.raises(ValueError, match="model"):
        fit_transform(x, x, model="projective")


def test_too_few_points():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match=r"fixed_points: a 3-D affine fit needs at least 4"):
        fit_affine(rng.normal(size=(3, 3)), rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match=r"fixed_points: a 3-D rigid fit needs at least 3"):
        fit_rigid(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match=r"2-D affine fit needs at least 3"):
        fit_affine(rng.normal(size=(2, 2)), rng.normal(size=(2, 2)))
    fit_rigid(rng.normal(size=(2, 2)), rng.normal(size=(2, 2)))  # two distinct 2-D points suffice
    with pytest.raises(ValueError, match="weights: a rigid fit needs at least 3 points with positive weight"):
        fit_rigid(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), weights=np.array([1.0, 1.0, 0.0, 0.0]))


def test_degenerate_configurations_raise_clear_errors():
    rng = np.random.default_rng(9)
    line = np.linspace(0, 1, 5)[:, None] * np.array([10.0, 20.0, 30.0]) + np.array([100.0, -50.0, 20.0])
    plane = np.concatenate([rng.normal(size=(6, 2)) * 30, np.full((6, 1), 12.0)], axis=1)
    good = rng.normal(size=(5, 3)) * 30
    with pytest.raises(ValueError, match="fixed_points: .*collinear"):
        fit_rigid(line, good)
    with pytest.raises(ValueError, match="fixed_points: .*collinear"):
        fit_similarity(line, good)
    with pytest.raises(ValueError, match="moving_points: .*collinear"):
        fit_rigid(good, line)
    with pytest.raises(ValueError, match="fixed_points: .*coplanar"):
        fit_affine(plane, rng.normal(size=(6, 3)))
    with pytest.raises(ValueError, match="fixed_points: .*coincident"):
        fit_rigid(np.full((4, 2), 7.0), rng.normal(size=(4, 2)))
    with pytest.raises(ValueError, match="fixed_points: .*collinear"):
        fit_affine(line[:, :2], rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match="weights: expected non-negative"):
        fit_rigid(good, good, weights=np.array([1.0, -1.0, 1.0, 1.0, 1.0]))
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="moving_points: expected finite"):
        fit_rigid(good, bad)
    # coplanar 3-D points are fine for rigid and similarity fits
    fit_rigid(plane, plane + 1.0)
    fit_similarity(plane, 2.0 * plane)
    # tiny offsets from a line are judged relative to the set's size, so they are still degenerate
    with pytest.raises(ValueError, match="collinear"):
        fit_rigid(line + rng.normal(scale=1e-12, size=line.shape), good)


def test_degenerate_configurations_give_nan_under_jit_and_vmap():
    line = np.linspace(0, 1, 5)[:, None] * np.array([10.0, 20.0, 30.0])
    good = np.random.default_rng(10).normal(size=(5, 3)) * 30
    for model, fit in FITS.items():
        t = jax.jit(fit)(line, good)
        assert all(np.all(np.isnan(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(t)), model
        assert bool(jax.jit(lambda a, b, m=model: is_degenerate(a, b, model=m))(line, good))
        assert not bool(is_degenerate(good, good, model=model))
    tb = jax.jit(jax.vmap(fit_rigid))(jnp.stack([line, good]), jnp.stack([good, good]))
    assert np.all(np.isnan(np.asarray(tb.translation[0])))
    assert np.all(np.isfinite(np.asarray(tb.translation[1])))


# -- jit, vmap -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_vmap_equals_loop(model):
    """A vmapped fit equals a loop of fits. (Eager calls run the same jitted kernel, after eager validation.)"""
    rng = np.random.default_rng(11)
    xs = np.stack([_points(rng, 6, 3) for _ in range(5)]).astype(np.float32)
    ys = (xs + rng.normal(scale=2.0, size=xs.shape)).astype(np.float32)
    ws = rng.uniform(0.5, 1.5, size=(5, 6)).astype(np.float32)
    fit = FITS[model]
    batched = jax.jit(jax.vmap(lambda a, b, w: fit(a, b, weights=w)))(xs, ys, ws)
    for i in range(5):
        one = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], batched)
        eager = fit(xs[i], ys[i], weights=ws[i])
        np.testing.assert_allclose(
            np.asarray(one.homogeneous()), np.asarray(eager.homogeneous()), rtol=1e-5, atol=1e-4
        )


def test_jitted_fit_does_not_recompile():
    rng = np.random.default_rng(12)
    f = jax.jit(fit_rigid)
    f(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32))
    n = f._cache_size()
    f(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32))
    assert f._cache_size() == n


# -- direction convention against the image warp -------------------------------------------------------------
def _blobs(grid: Grid, centres: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    w = np.asarray(grid.world_coords(jnp.float64))
    d2 = np.sum((w[..., None, :] - centres) ** 2, axis=-1)
    return np.exp(-d2 / (2 * sigma**2)).sum(-1)


def test_fitted_transform_warps_moving_landmarks_onto_fixed_landmarks(x64):
    """Blobs drawn at the moving landmarks appear at the fixed landmarks after ``warp(moving, T, fixed_grid)``.

    This is the contract that makes a landmark fit usable exactly like an intensity registration result (and a
    ``.mat`` written from it usable with ``jaxreg apply`` / ``antsApplyTransforms``).
    """
    rng = np.random.default_rng(13)
    fixed_grid = Grid.from_spacing((40, 36, 32), spacing=(2.0, 2.0, 2.0), origin=(-40.0, -36.0, -32.0))
    moving_grid = Grid.from_spacing((32, 40, 28), spacing=(2.5, 2.0, 2.5), origin=(-40.0, -40.0, -35.0))
    fixed_lm = rng.uniform(-20, 20, size=(6, 3))
    true = Rigid(jnp.asarray([0.1, -0.2, 0.15]), jnp.asarray([4.0, -3.0, 2.0]), jnp.zeros(3))
    moving_lm = np.asarray(true(fixed_lm))
    t = fit_rigid(fixed_lm, moving_lm)
    np.testing.assert_allclose(np.asarray(t(fixed_lm)), moving_lm, atol=1e-9)
    moving = Image(jnp.asarray(_blobs(moving_grid, moving_lm)), moving_grid)
    expected = _blobs(fixed_grid, fixed_lm)
    warp_fn = jax.jit(lambda image, transform: warp(image, transform, fixed_grid, order=3).data)
    out = np.asarray(warp_fn(moving, t))
    assert np.max(np.abs(out - expected)) < 0.03  # cubic interpolation of 3 mm blobs on a 2-2.5 mm grid
    wrong = np.asarray(warp_fn(moving, invert(t)))
    assert np.max(np.abs(wrong - expected)) > 0.5
    # the warped moving image and the fixed blob image peak at the fixed landmarks
    idx = np.rint(np.asarray(fixed_grid.world_to_index(jnp.asarray(fixed_lm)))).astype(int)
    assert np.all(out[tuple(idx.T)] > 0.8)


# -- error measures --------------------------------------------------------------------------------------------
def test_error_measures(x64):
    t = Rigid(jnp.asarray(0.0), jnp.asarray([3.0, 4.0]), jnp.zeros(2))
    x = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    y = x + np.array([3.0, 4.0]) + np.array([[1.0, 0.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(np.asarray(registration_errors(t, x, y)), [1.0, 0.0, 2.0])
    assert float(fre(t, x, y)) == pytest.approx(np.sqrt(5.0 / 3.0))
    assert float(fre(t, x, y, weights=np.array([1.0, 0.0, 1.0]))) == pytest.approx(np.sqrt(2.5))
    np.testing.assert_allclose(np.asarray(tre(t, x[:2], y[:2])), [1.0, 0.0])
    assert num_parameters("rigid", 3) == 6 and num_parameters("similarity", 2) == 4
    assert num_parameters("affine", 3) == 12
    assert float(expected_fre(1.0, 10)) == pytest.approx(np.sqrt(0.8))
    assert float(
        fle_from_fre(expected_fre(1.3, 7, ndim=2, model="affine"), 7, ndim=2, model="affine")
    ) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="num_fiducials"):
        fle_from_fre(1.0, 2)


def test_principal_axes():
    rng = np.random.default_rng(15)
    x = rng.normal(size=(50, 3)) * np.array([30.0, 10.0, 20.0])
    pa = principal_axes(x)
    xc = x - x.mean(0)
    np.testing.assert_allclose(np.asarray(pa.centroid), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pa.variance), np.linalg.eigvalsh(xc.T @ xc / 50), rtol=1e-4)
    # f_k^2 is the mean squared distance from axis k
    for k in range(3):
        e = np.asarray(pa.axes[k])
        dist2 = np.sum(xc**2, 1) - (xc @ e) ** 2
        assert float(pa.rms_distance[k]) == pytest.approx(np.sqrt(dist2.mean()), rel=1e-4)


# -- TRE prediction against Monte Carlo --------------------------------------------------------------------------
N_MAX = 10  # configurations are padded to N_MAX fiducials with zero weight: one compiled simulation per model


def _configuration(seed: int, ndim: int):
    """A random configuration of 4-10 fiducials (anisotropic, rotated, off-origin) and 4 targets around it."""
    rng = np.random.default_rng(seed)
    n_pts = int(rng.integers(4, N_MAX + 1))
    spread = rng.uniform(20.0, 80.0, size=ndim)
    rot = Rotation.random(random_state=rng).as_matrix() if ndim == 3 else np.eye(2)
    fid = (rng.normal(size=(n_pts, ndim)) * spread) @ rot.T + rng.normal(scale=50.0, size=ndim)
    targets = fid.mean(0) + rng.normal(size=(4, ndim)) * 60.0
    return fid.astype(np.float32), targets.astype(np.float32)


@pytest.mark.parametrize(
    "ndim,model,configs", [(3, "rigid", 6), (2, "rigid", 3), (3, "similarity", 3), (3, "affine", 3)]
)
def test_predicted_tre_and_fre_agree_with_simulation(ndim, model, configs):
    """Predicted TRE within 5% of the Monte Carlo RMS TRE on random configurations; expected FRE within 3%.

    Statistics: with S = 4000 draws the relative standard error of the simulated RMS TRE is at most
    ``sqrt(2/S)/2 = 1.1%`` (all of the TRE along one direction; ~0.65% when isotropic), so 5% is more than
    4 standard errors; the test asserts that bound on the SE estimated from the draws too. The bias of the
    first-order prediction is O((FLE/f)^2) ~ 1e-3 here. The RMS FRE rests on S (ndim N - p) >= 4000 x 4 squared
    residual components: relative SE <= 1/sqrt(2 x 16000) < 0.6%, so 3% is > 5 SE.
    """
    fle = 2.0
    for c in range(configs):
        fid, targets = _configuration(1000 * ndim + 100 * len(model) + c, ndim)
        n_pts = fid.shape[0]
        padded = np.concatenate([fid, np.repeat(fid[:1], N_MAX - n_pts, axis=0)])
        w = (np.arange(N_MAX) < n_pts).astype(np.float32)
        sim = simulate_tre(
            jax.random.key(c), padded, targets, fle_rms=fle, num_samples=4000, model=model, weights=w
        )
        pred = np.asarray(predict_tre(fid, targets, fle_rms=fle, model=model))
        rms, se = np.asarray(sim.tre_rms), np.asarray(sim.tre_rms_se)
        assert np.all(se / rms < 0.05 / 4)
        np.testing.assert_allclose(
            rms / pred, 1.0, atol=0.05, err_msg=f"configuration {c}: {n_pts} fiducials"
        )
        if ndim * n_pts - num_parameters(model, ndim) >= 4:
            want = float(expected_fre(fle, n_pts, ndim=ndim, model=model))
            assert float(sim.fre_rms) == pytest.approx(want, rel=0.03)


def test_predict_tre_closed_forms():
    # a symmetric 3-D cross of 6 fiducials at distance a: f_k^2 = 2 a^2 / 3, TRE^2 at the centroid = FLE^2 / N
    a = 50.0
    fid = np.concatenate([np.eye(3) * a, -np.eye(3) * a])
    assert float(predict_tre(fid, np.zeros(3), fle_rms=1.2)) == pytest.approx(1.2 / np.sqrt(6), rel=1e-5)
    # target at distance d along x: d_k^2 = d^2 for the y and z axes -> 1 + (1/3)(2 d^2 / f^2)
    d = 80.0
    want = np.sqrt(1.0 / 6 * (1 + (2 * d**2) / (3 * (2 * a**2 / 3))))
    assert float(predict_tre(fid, np.array([d, 0, 0]), fle_rms=1.0)) == pytest.approx(want, rel=1e-5)
    # 2-D: a square of 4 fiducials at radius a, target at distance d: 1 + d^2 / (2 a^2)
    sq = np.array([[a, 0], [-a, 0], [0, a], [0, -a]])
    want2 = np.sqrt(1.0 / 4 * (1 + d**2 / (2 * a**2)))
    assert float(predict_tre(sq, np.array([0.0, d]), fle_rms=1.0)) == pytest.approx(want2, rel=1e-5)
    # shape (..., ndim) targets
    assert predict_tre(fid, np.zeros((2, 5, 3)), fle_rms=1.0).shape == (2, 5)
    with pytest.raises(ValueError, match="targets"):
        predict_tre(fid, np.zeros((4, 2)), fle_rms=1.0)


def test_tre_predicted_from_estimated_fle(x64):
    """End to end: FLE estimated from the observed FRE of many registrations is unbiased in the mean square."""
    rng = np.random.default_rng(16)
    fid = _points(rng, 6, 3)
    sim = simulate_tre(jax.random.key(3), fid, fid[:1], fle_rms=1.0, num_samples=4000)
    fle2 = np.asarray(fle_from_fre(sim.fre, 6)) ** 2
    assert fle2.mean() == pytest.approx(1.0, rel=0.03)


# -- leave-one-out and the drop-the-worst-fiducial analysis ------------------------------------------------------
def test_leave_one_out_errors_equal_a_loop(x64):
    rng = np.random.default_rng(17)
    x = _points(rng, 6, 3)
    y = x + rng.normal(scale=1.0, size=x.shape)
    loo = np.asarray(leave_one_out_errors(x, y))
    for i in range(6):
        keep = np.arange(6) != i
        t = fit_rigid(x[keep], y[keep])
        assert loo[i] == pytest.approx(float(registration_errors(t, x[i], y[i])), rel=1e-9)
    with pytest.raises(ValueError, match="at least 4"):
        leave_one_out_errors(x[:3], y[:3])


def test_drop_worst_fiducial_lowers_fre_but_raises_expected_tre():
    rng = np.random.default_rng(18)
    fid = rng.normal(size=(6, 3)).astype(np.float32) * np.float32([60, 70, 50])
    noisy = fid + rng.normal(scale=1.0 / np.sqrt(3), size=fid.shape).astype(np.float32)
    targets = np.array([[0.0, 0.0, 0.0], [30.0, -20.0, 10.0]], np.float32)
    res = drop_worst_fiducial(
        jax.random.key(0), fid, noisy, targets, moving_targets=targets, fle_rms=1.0, num_samples=2000
    )
    assert res.dropped == int(np.argmax(np.asarray(res.fiducial_errors)))
    assert float(res.fre_after) < float(res.fre_before)
    assert np.all(np.asarray(res.predicted_tre_after) > np.asarray(res.predicted_tre_before))
    assert np.all(np.asarray(res.simulated_tre_after) > np.asarray(res.simulated_tre_before))
    np.testing.assert_allclose(
        np.asarray(res.simulated_tre_before) / np.asarray(res.predicted_tre_before), 1, atol=0.06
    )
    assert res.tre_before.shape == (2,) and res.tre_after.shape == (2,)
    est = drop_worst_fiducial(jax.random.key(0), fid, noisy, targets, num_samples=2000)
    assert float(est.fle_rms) == pytest.approx(float(fle_from_fre(est.fre_before, 6)))
    assert est.tre_before is None


# -- landmark term -------------------------------------------------------------------------------------------------
def test_landmark_distance_value_and_weights():
    t = Rigid.identity(3)
    x = np.zeros((3, 3), np.float32)
    y = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0]], np.float32)
    assert float(landmark_distance(t, x, y)) == pytest.approx(5.0 / 3.0)
    assert float(landmark_distance(t, x, y, weights=np.array([1.0, 0.0, 1.0]))) == pytest.approx(0.5)
    assert float(landmark_term(x, y)(t)) == pytest.approx(5.0 / 3.0)
    with pytest.raises(ValueError, match="weights"):
        landmark_distance(t, x, y, weights=np.ones(2))
    with pytest.raises(ValueError, match="fixed_points/moving_points"):
        landmark_distance(t, x, y[:2])


def test_landmark_distance_gradients(x64):
    """``jax.grad`` through the landmark term for a linear and a deformable transform.

    Each gradient is checked against a central finite difference along a random direction (float64). (The
    B-spline FFD differentiates the same way, but compiling its cubic-interpolation gradient costs ~4 s.)
    """
    rng = np.random.default_rng(19)
    x = rng.uniform(-20, 20, size=(5, 3))
    y = x + rng.normal(scale=3.0, size=x.shape)
    grid = Grid.from_spacing((12, 12, 12), spacing=4.0, origin=(-24.0, -24.0, -24.0))
    centre = jnp.asarray([1.0, 0.0, 0.0])
    cases = {
        "rigid": (lambda p: Rigid(p[:3], p[3:], centre), jnp.asarray([0.1, 0.2, -0.1, 1.0, 2.0, 3.0])),
        "field": (lambda u: DisplacementField(u, grid), jnp.asarray(rng.normal(size=(12, 12, 12, 3)))),
    }
    for name, (make, params) in cases.items():
        f = jax.jit(lambda p, make=make: landmark_distance(make(p), x, y))
        g = np.asarray(jax.grad(f)(params))
        v = rng.normal(size=params.shape)
        h = 1e-5
        fd = (float(f(params + h * v)) - float(f(params - h * v))) / (2 * h)
        assert np.sum(g * v) == pytest.approx(fd, rel=1e-6, abs=1e-9), name
        assert float(f(params - 1e-3 * g)) < float(f(params))  # a small gradient step descends
        if name == "field":
            assert 0 < np.count_nonzero(g) <= 5 * 8 * 3  # trilinear: 8 voxels per landmark


# -- the example ---------------------------------------------------------------------------------------------------
def test_fiducials_example_runs(tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "fiducials.py"
    monkeypatch.setattr(
        sys, "argv", [str(script), "--trials", "300", "--samples", "500", "-o", str(tmp_path)]
    )
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "RMS FRE (mm)" in out and "lowered the FRE in 100.0%" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "fiducials.png").is_file()
