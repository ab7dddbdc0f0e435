"""Regularisers: analytic fields with known energies, spacing laws, invariants, exact B-spline bending energy,
gradients (float64 ``check_grads``), jit/vmap and mask semantics."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxreg
import jaxreg.regularizers as R
from jaxreg import Affine, BSplineTransform, DisplacementField, Grid, Translation, VelocityField, invert
from jaxreg.transforms import euler_to_matrix, jacobian_determinant, rotation_matrix


def coords(shape, spacing):
    """World coordinates (mm) of an axis-aligned grid with origin 0, ``(*shape, ndim)`` float64."""
    axes = [np.arange(s) * h for s, h in zip(shape, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def linear_field(shape, spacing, a, b=None):
    x = coords(shape, spacing)
    u = x @ np.asarray(a).T
    if b is not None:
        u = u + np.asarray(b)
    return jnp.asarray(u, jnp.float32)


CASES = [
    ((9, 11), (1.0, 1.0)),
    ((9, 11), (0.7, 2.0)),
    ((7, 8, 9), (1.0, 1.0, 1.0)),
    ((7, 8, 9), (1.5, 0.5, 2.5)),
]


# ---- analytic fields ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,spacing", CASES)
def test_linear_field_diffusion_is_frobenius_norm_and_bending_is_zero(shape, spacing):
    n = len(shape)
    rng = np.random.default_rng(n)
    a = 0.2 * rng.normal(size=(n, n))
    u = linear_field(shape, spacing, a, b=rng.normal(size=n))
    np.testing.assert_allclose(R.diffusion(u, spacing=spacing), np.sum(a**2), rtol=2e-5)
    # affine fields have no curvature, whatever the spacing: exactly 0 up to float32 cancellation
    assert abs(float(R.bending(u, spacing=spacing))) < 1e-9
    # TV of a linear field: sqrt(||A||^2 + eps) everywhere
    np.testing.assert_allclose(R.total_variation(u, spacing=spacing), np.sqrt(np.sum(a**2) + 1e-6), rtol=2e-5)


@given(
    a=st.lists(st.floats(-0.5, 0.5), min_size=9, max_size=9),
    b=st.lists(st.floats(-20.0, 20.0), min_size=3, max_size=3),
    spacing=st.sampled_from([(1.0, 1.0, 1.0), (0.5, 1.5, 3.0), (2.0, 0.7, 1.0)]),
)
def test_affine_fields_property(a, b, spacing):
    """Any affine field: zero bending, diffusion ||A||^2, log-Jacobian (log det(I + A))^2 where det > 0."""
    a = np.asarray(a).reshape(3, 3)
    u = linear_field((6, 7, 5), spacing, a, b)
    scale = 1.0 + float(np.abs(u).max())
    assert abs(float(R.bending(u, spacing=spacing))) < 1e-9 * scale**2 + 1e-7
    np.testing.assert_allclose(R.diffusion(u, spacing=spacing), np.sum(a**2), rtol=1e-3, atol=1e-6)
    d = np.linalg.det(np.eye(3) + a)
    if d > 0.05:
        np.testing.assert_allclose(R.log_jacobian(u, spacing=spacing), np.log(d) ** 2, rtol=1e-3, atol=1e-6)


def _quadratic(n):
    """A quadratic field with pure and mixed terms, its gradient and its (constant) bending energy density."""
    a, b, c, d = 0.03, -0.05, 0.02, 0.04
    if n == 2:
        f = lambda x: np.stack([a * x[..., 0] ** 2, b * x[..., 0] * x[..., 1]], -1)  # noqa: E731
        grad = lambda x: np.stack(  # noqa: E731
            [np.stack([2 * a * x[..., 0], 0 * x[..., 0]], -1), np.stack([b * x[..., 1], b * x[..., 0]], -1)],
            -2,
        )
        bend = (2 * a) ** 2 + 2 * b**2
    else:
        f = lambda x: np.stack(  # noqa: E731
            [a * x[..., 0] ** 2, b * x[..., 0] * x[..., 1], c * x[..., 2] ** 2 + d * x[..., 1] * x[..., 2]],
            -1,
        )

        def grad(x):
            o = 0 * x[..., 0]
            return np.stack(
                [
                    np.stack([2 * a * x[..., 0], o, o], -1),
                    np.stack([b * x[..., 1], b * x[..., 0], o], -1),
                    np.stack([o, d * x[..., 2], 2 * c * x[..., 2] + d * x[..., 1]], -1),
                ],
                -2,
            )

        bend = (2 * a) ** 2 + 2 * b**2 + (2 * c) ** 2 + 2 * d**2
    return f, grad, bend


@pytest.mark.parametrize("shape,spacing", CASES)
def test_quadratic_field_energies_match_analytic_densities(shape, spacing):
    n = len(shape)
    f, grad, bend = _quadratic(n)
    x = coords(shape, spacing)
    u = jnp.asarray(f(x), jnp.float32)
    # bending density is constant: every second difference of a quadratic is exact
    np.testing.assert_allclose(R.bending(u, spacing=spacing), bend, rtol=1e-4)
    # diffusion: forward differences are the exact derivative at the edge midpoints, averaged per axis
    expect = 0.0
    for ax in range(n):
        mid = x[tuple(slice(0, -1) if k == ax else slice(None) for k in range(n))].copy()
        mid[..., ax] += 0.5 * spacing[ax]
        expect += np.mean(np.sum(grad(mid)[..., :, ax] ** 2, axis=-1))
    np.testing.assert_allclose(R.diffusion(u, spacing=spacing), expect, rtol=1e-4)


@pytest.mark.parametrize("n", [2, 3])
def test_elastic_closed_forms(n):
    spacing = (0.8, 1.7, 1.2)[:n]
    shape = (6, 7, 8)[:n]
    mu, lam = 0.7, 2.3
    g, alpha = 0.05, 0.03
    shear = np.zeros((n, n))
    shear[0, 1] = shear[1, 0] = g  # rotation-free (symmetric) pure shear u = (g y, g x)
    np.testing.assert_allclose(
        R.elastic(linear_field(shape, spacing, shear), spacing=spacing, mu=mu, lam=lam),
        2 * mu * g**2,
        rtol=1e-5,
    )
    dil = alpha * np.eye(n)  # dilation: strain alpha I, div n alpha
    np.testing.assert_allclose(
        R.elastic(linear_field(shape, spacing, dil), spacing=spacing, mu=mu, lam=lam),
        mu * n * alpha**2 + 0.5 * lam * (n * alpha) ** 2,
        rtol=1e-5,
    )
    skew = np.zeros((n, n))
    skew[0, 1], skew[1, 0] = 0.1, -0.1  # an infinitesimal rotation has no linearised strain
    assert abs(float(R.elastic(linear_field(shape, spacing, skew), spacing=spacing, mu=mu, lam=lam))) < 1e-10


def test_elastic_uses_the_grid_direction():
    """Strain mixes components with derivative directions, so an oblique grid's direction must be applied."""
    rot = np.asarray(euler_to_matrix(jnp.deg2rad(jnp.array([20.0, -10.0, 35.0]))), np.float64)
    grid = Grid.from_spacing((6, 7, 8), (1.0, 1.5, 2.0), origin=(3.0, -2.0, 1.0), direction=rot)
    a = np.diag([0.03, 0.0, 0.0])  # dilation along world x only: strain energy mu a^2 + lam/2 a^2
    u = jnp.asarray(np.asarray(grid.world_coords()) @ a.T, jnp.float32)
    np.testing.assert_allclose(R.elastic(u, grid=grid, mu=1.0, lam=1.0), 1.5 * 0.03**2, rtol=1e-4)
    # whereas the rotation-invariant energies only need the spacing
    np.testing.assert_allclose(R.diffusion(u, grid=grid), 0.03**2, rtol=1e-4)
    assert abs(float(R.bending(u, grid=grid))) < 1e-9


def test_spacing_laws():
    # the same physical quadratic field sampled at h and 2h over the same extent: same bending (mm^-2)
    f, _, bend = _quadratic(3)
    fine = jnp.asarray(f(coords((13, 9, 11), (0.5, 1.0, 0.75))), jnp.float32)
    coarse = jnp.asarray(f(coords((7, 5, 6), (1.0, 2.0, 1.5))), jnp.float32)
    np.testing.assert_allclose(R.bending(fine, spacing=(0.5, 1.0, 0.75)), bend, rtol=1e-4)
    np.testing.assert_allclose(R.bending(coarse, spacing=(1.0, 2.0, 1.5)), bend, rtol=1e-4)
    # and a linear field: same diffusion/elastic at any sampling
    a = np.array([[0.1, 0.02, 0.0], [0.0, -0.05, 0.03], [0.01, 0.0, 0.04]])
    for shape, sp in (((13, 9, 11), (0.5, 1.0, 0.75)), ((7, 5, 6), (1.0, 2.0, 1.5))):
        u = linear_field(shape, sp, a)
        np.testing.assert_allclose(R.diffusion(u, spacing=sp), np.sum(a**2), rtol=1e-4)
        np.testing.assert_allclose(
            R.elastic(u, spacing=sp), np.sum((0.5 * (a + a.T)) ** 2) + 0.5 * np.trace(a) ** 2, rtol=1e-4
        )
    # the same *array* read at twice the spacing: first derivatives halve, second derivatives quarter
    u = jnp.asarray(np.random.default_rng(0).normal(size=(8, 9, 10, 3)), jnp.float32)
    np.testing.assert_allclose(R.diffusion(u, spacing=2.0), R.diffusion(u) / 4, rtol=1e-5)
    np.testing.assert_allclose(R.bending(u, spacing=2.0), R.bending(u) / 16, rtol=1e-5)
    np.testing.assert_allclose(R.elastic(u, spacing=2.0), R.elastic(u) / 4, rtol=1e-5)


def test_total_variation_matches_numpy():
    rng = np.random.default_rng(3)
    for shape, sp in (((10, 12), (0.5, 1.5)), ((6, 7, 8), (1.0, 2.0, 0.8))):
        n = len(shape)
        u = rng.normal(size=shape + (n,))
        grads = []
        for a in range(n):
            d = np.diff(u, axis=a) / sp[a]
            grads.append(d[tuple(slice(0, s - 1) for s in shape)])
        sq = sum(np.sum(g**2, axis=-1) for g in grads)
        expect = np.mean(np.sqrt(sq + 1e-3))
        np.testing.assert_allclose(
            R.total_variation(jnp.asarray(u, jnp.float32), spacing=sp, eps=1e-3), expect, rtol=1e-5
        )
        # diffusion vs NumPy too (per-axis means of squared forward differences)
        expect_d = sum(np.mean(np.sum((np.diff(u, axis=a) / sp[a]) ** 2, axis=-1)) for a in range(n))
        np.testing.assert_allclose(R.diffusion(jnp.asarray(u, jnp.float32), spacing=sp), expect_d, rtol=1e-5)


# ---- Jacobian terms ----------------------------------------------------------------------------------------
def test_folding_zero_for_smooth_fields_and_exact_for_a_reflection():
    shape, sp = (16, 18, 12), (1.0, 1.2, 2.0)
    x = coords(shape, sp)
    smooth = 0.5 * np.sin(x / 7.0)
    assert float(R.folding(jnp.asarray(smooth, jnp.float32), spacing=sp)) == 0.0
    # T(x) = (-x0, x1, x2): det J = -1 everywhere, penalty (eps + 1)^2 exactly
    reflect = np.zeros_like(x)
    reflect[..., 0] = -2 * x[..., 0]
    u = jnp.asarray(reflect, jnp.float32)
    for eps in (0.0, 0.01, 0.3):
        np.testing.assert_allclose(R.folding(u, spacing=sp, eps=eps), (1 + eps) ** 2, rtol=1e-4)
    # a local reflection: T(x) = x - 2 x0 phi(x) e0 with a bump phi = 1 near the centre folds only there
    c = x - x.reshape(-1, 3).mean(0)
    phi = np.exp(-np.sum((c / 6.0) ** 2, axis=-1))
    local = np.zeros_like(x)
    local[..., 0] = -2 * c[..., 0] * phi
    u = jnp.asarray(local, jnp.float32)
    det = R.jacobian_determinant_field(u, spacing=sp)
    assert float(det[8, 9, 6]) < 0 and float(det[0, 0, 0]) > 0
    expected = np.mean(np.maximum(0.01 - np.asarray(det), 0.0) ** 2)
    np.testing.assert_allclose(R.folding(u, spacing=sp), expected, rtol=1e-5)
    assert float(R.folding(u, spacing=sp)) > 0


def test_jacobian_determinant_field_equals_the_transforms_module_on_oblique_grids():
    rot = np.asarray(euler_to_matrix(jnp.deg2rad(jnp.array([0.0, 30.0, 10.0]))))
    grid = Grid.from_spacing(
        (9, 10, 11), (1.0, 1.5, 0.8), origin=(1.0, 2.0, 3.0), direction=np.diag([-1, 1, 1]) @ rot
    )
    u = 0.8 * jnp.sin(grid.world_coords() / 3.0)[..., ::-1]
    ref = jacobian_determinant(DisplacementField(u, grid), grid)
    np.testing.assert_allclose(R.jacobian_determinant_field(u, grid=grid), ref, rtol=1e-5, atol=1e-5)
    # the wrong frame (spacing only) differs: direction matters for det J
    assert not np.allclose(R.jacobian_determinant_field(u, spacing=tuple(grid.spacing)), ref, atol=1e-3)


@pytest.mark.parametrize("n", [2, 3])
def test_log_jacobian_zero_for_rotations_and_log_scale_for_scalings(n):
    shape, sp = (8, 9, 10)[:n], (1.0, 0.6, 1.4)[:n]
    rot = np.asarray(rotation_matrix(jnp.array(0.4) if n == 2 else jnp.array([0.3, -0.2, 0.5])), np.float64)
    u = linear_field(shape, sp, rot - np.eye(n))
    assert float(R.log_jacobian(u, spacing=sp)) < 1e-10
    assert float(R.folding(u, spacing=sp)) == 0.0
    s = 1.1
    u = linear_field(shape, sp, (s - 1) * np.eye(n))
    np.testing.assert_allclose(R.log_jacobian(u, spacing=sp), (n * np.log(s)) ** 2, rtol=1e-4)
    # folded voxels: finite value and a gradient that increases det J
    u = linear_field(shape, sp, np.diag([-2.0] + [0.0] * (n - 1)))  # det J = -1
    val, g = jax.value_and_grad(lambda v: R.log_jacobian(v, spacing=sp))(u)
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
    v = u - 1e-2 * g / jnp.max(jnp.abs(g))
    assert float(R.log_jacobian(v, spacing=sp)) < float(val)
    assert float(jnp.mean(R.jacobian_determinant_field(v, spacing=sp))) > -1.0


def test_safe_log():
    x = jnp.array([-1.0, 0.0, 1e-4, 1e-3, 0.5, 2.0])
    y = R.safe_log(x, eps=1e-3)
    np.testing.assert_allclose(y[3:], np.log([1e-3, 0.5, 2.0]), rtol=1e-6)
    assert np.all(np.diff(np.asarray(y)) > 0) and np.all(np.isfinite(np.asarray(y)))
    g = jax.vmap(jax.grad(lambda v: R.safe_log(v, eps=1e-3)))(x)
    np.testing.assert_allclose(g[:3], 1e3, rtol=1e-6)


# ---- inverse consistency -----------------------------------------------------------------------------------
def test_inverse_consistency():
    grid = Grid.centered((20, 22, 18), (1.5, 1.2, 1.0))
    aff = Affine(
        jnp.asarray(np.eye(3) + 0.05 * np.random.default_rng(1).normal(size=(3, 3)), jnp.float32),
        jnp.array([2.0, -1.0, 0.5]),
        jnp.array([1.0, 2.0, 3.0]),
    )
    assert float(R.inverse_consistency(aff, invert(aff), grid)) < 1e-8
    assert float(R.inverse_consistency(aff, aff, grid)) > 1.0
    t = jnp.array([1.0, 2.0, -2.0])
    ident = Translation(jnp.zeros(3))
    np.testing.assert_allclose(
        R.inverse_consistency(Translation(t), ident, grid), 2 * np.sum(np.asarray(t) ** 2), rtol=1e-5
    )
    # a smooth velocity field, zero near the border, and its inverse exp(-v)
    x = np.asarray(grid.world_coords())
    bump = np.exp(-np.sum((x / 7.0) ** 2, axis=-1, keepdims=True))
    v = jnp.asarray(3.0 * bump * np.sin(x[..., ::-1] / 5.0 + 0.3), jnp.float32)
    svf = VelocityField(v, grid)
    ic = float(R.inverse_consistency(svf, svf.inverse(), grid))
    mean_sq_disp = float(jnp.mean(jnp.sum(svf.exp().displacement ** 2, -1)))
    assert ic < 1e-2 * mean_sq_disp, (ic, mean_sq_disp)  # scaling-and-squaring interpolation error
    assert float(R.inverse_consistency(svf, svf, grid)) > 1.0 * mean_sq_disp
    # differentiable with respect to both transforms
    g = jax.grad(lambda a: R.inverse_consistency(a, invert(aff), grid))(aff)
    assert np.all(np.isfinite(np.asarray(g.matrix)))


# ---- B-spline bending energy -------------------------------------------------------------------------------
def _random_ffd(grid, spacing, key, dtype=jnp.float32, scale=1.0):
    t = BSplineTransform.identity(grid, spacing, dtype=dtype)
    c = scale * jax.random.normal(jax.random.key(key), t.coefficients.shape, dtype)
    return BSplineTransform(c, t.control_grid)


def _gauss_energy(t, lo, hi, order=4):
    """Mean thin-plate energy by Gauss-Legendre quadrature on every knot interval, derivatives by autodiff of
    the transform's own evaluation (map_coordinates): independent of the Gram-matrix code."""
    cg = t.control_grid
    xs, ws = np.polynomial.legendre.leggauss(order)
    nodes, weights = [], []
    for lo_d, hi_d in zip(lo, hi):
        e = np.unique(np.concatenate([[lo_d], np.arange(np.ceil(lo_d), np.floor(hi_d) + 1), [hi_d]]))
        a, b = e[:-1, None], e[1:, None]
        nodes.append((0.5 * (b - a) * xs + 0.5 * (a + b)).ravel())
        weights.append((0.5 * (b - a) * ws).ravel())
    tt = np.stack(np.meshgrid(*nodes, indexing="ij"), -1)
    w = weights[0]
    for wd in weights[1:]:
        w = np.multiply.outer(w, wd)
    pts = cg.index_to_world(jnp.asarray(tt.reshape(-1, cg.ndim)))
    hess = jax.jit(jax.vmap(jax.hessian(lambda p: t(p))))
    dens = np.sum(np.asarray(hess(pts)) ** 2, axis=(-3, -2, -1)).reshape(w.shape)
    return float(np.sum(w * dens) / np.prod(np.asarray(hi) - np.asarray(lo)))


def _beta_truncated_powers(t, m):
    """``m``-th derivative of the cubic B-spline from truncated powers,
    ``beta(t) = ((2-|t|)_+^3 - 4 (1-|t|)_+^3) / 6`` (independent of the library's piecewise code)."""
    a = np.abs(t)
    p2, p1 = np.maximum(2.0 - a, 0.0), np.maximum(1.0 - a, 0.0)
    if m == 0:
        return (p2**3 - 4 * p1**3) / 6.0
    if m == 1:
        return -np.sign(t) * (p2**2 - 4 * p1**2) / 2.0
    return p2 - 4 * p1


def _gauss_energy_pointwise(t, lo, hi, order=4):
    """Mean thin-plate energy from pointwise second derivatives ``sum_k c_k prod_d beta^(m_d)(t_d - k_d)``
    at Gauss-Legendre nodes of every knot interval (exact for these piecewise polynomials)."""
    cg = t.control_grid
    n = cg.ndim
    h = np.asarray(cg.spacing)
    c = np.asarray(t.coefficients, np.float64)
    xs, ws = np.polynomial.legendre.leggauss(order)
    nodes, weights = [], []
    for lo_d, hi_d in zip(lo, hi):
        e = np.unique(np.concatenate([[lo_d], np.arange(np.ceil(lo_d), np.floor(hi_d) + 1), [hi_d]]))
        a, b = e[:-1, None], e[1:, None]
        nodes.append((0.5 * (b - a) * xs + 0.5 * (a + b)).ravel())
        weights.append((0.5 * (b - a) * ws).ravel())
    w = weights[0]
    for wd in weights[1:]:
        w = np.multiply.outer(w, wd)
    dens = 0.0
    letters = "ijk"[:n]
    for a in range(n):
        for b in range(n):
            mats = []
            for d in range(n):
                m = int(a == d) + int(b == d)
                mats.append(_beta_truncated_powers(nodes[d][:, None] - np.arange(cg.shape[d])[None, :], m))
            spec = ",".join(f"{letters[d]}{'pqr'[d]}" for d in range(n)) + f",{'pqr'[:n]}z->{letters}z"
            deriv = np.einsum(spec, *mats, c) / (h[a] * h[b])
            dens = dens + np.sum(deriv**2, axis=-1)
    return float(np.sum(w * dens) / np.prod(np.asarray(hi) - np.asarray(lo)))


@pytest.mark.parametrize("n", [2, 3])
def test_bspline_bending_energy_is_the_exact_integral(n):
    """Against Gauss-Legendre quadrature of pointwise second derivatives (2-D and 3-D), and in 2-D also of the
    Hessian of the transform's own evaluation (autodiff through map_coordinates)."""
    with jax.enable_x64(True):
        grid = Grid.from_spacing((16, 18, 8)[:n], (1.0, 1.5, 2.0)[:n], origin=(3.0, -4.0, 1.0)[:n])
        t = _random_ffd(grid, (5.0, 9.0, 7.0)[:n], key=n, dtype=jnp.float64)
        shape = np.asarray(t.control_grid.shape, float)
        e = float(R.bspline_bending_energy(t))
        np.testing.assert_allclose(e, _gauss_energy_pointwise(t, np.ones(n), shape - 2), rtol=1e-10)
        if n == 2:
            np.testing.assert_allclose(e, _gauss_energy(t, np.ones(n), shape - 2), rtol=1e-10)
        # over the image domain (first to last voxel centre), and its integral
        m = t.control_grid.inverse_affine @ grid.affine
        lo = m[:n, n]
        hi = lo + np.diag(m[:n, :n]) * (np.asarray(grid.shape) - 1)
        e_dom = float(R.bspline_bending_energy(t, domain=grid))
        np.testing.assert_allclose(e_dom, _gauss_energy_pointwise(t, lo, hi), rtol=1e-10)
        vol = np.prod((np.asarray(grid.shape) - 1) * grid.spacing)
        np.testing.assert_allclose(
            R.bspline_bending_energy(t, domain=grid, reduction="sum"), e_dom * vol, rtol=1e-12
        )


def test_bspline_bending_energy_matches_dense_finite_differences():
    """Sample the FFD finely with ``sample_grid`` and apply :func:`bending`: agreement to 1% (2-D, 30 samples
    per control spacing) and 3% (3-D, 8 samples per control spacing); the gap is the O(1/N) border of the
    finite-difference lattices and their O(h^2) error at knots."""
    with jax.enable_x64(True):
        for n, per, tol in ((2, 30, 0.01), (3, 8, 0.03)):
            grid = Grid.from_spacing((20, 24, 16)[:n], (1.0, 1.25, 1.5)[:n])
            ctrl = (6.0, 7.5, 8.0)[:n]
            t = _random_ffd(grid, ctrl, key=10 + n, dtype=jnp.float64)
            cg = t.control_grid
            # a fine grid over control indices [1, n - 2], aligned with the control grid
            counts = [(s - 3) * per + 1 for s in cg.shape]
            fine_sp = np.asarray(ctrl) / per
            fine = Grid.from_spacing(counts, fine_sp, origin=cg.index_to_world(jnp.ones(n, jnp.float64)))
            u = t.sample_displacement(fine, jnp.float64)
            dense = float(R.bending(u, spacing=tuple(fine_sp)))
            exact = float(R.bspline_bending_energy(t))
            assert abs(dense - exact) < tol * exact, (n, dense, exact)
            np.testing.assert_allclose(R.bspline_bending_energy(t, domain=fine), exact, rtol=1e-10)


def test_bspline_bending_energy_zero_for_affine_coefficients_and_gram_properties():
    grid = Grid.from_spacing((12, 14, 10), (1.0, 1.0, 1.5))
    t = BSplineTransform.identity(grid, 4.0)
    cg = t.control_grid
    # coefficients that are an affine function of the control point positions reproduce an affine field
    a = np.array([[0.01, 0.02, 0.0], [0.0, -0.03, 0.01], [0.02, 0.0, 0.01]])
    c = jnp.asarray(np.asarray(cg.world_coords()) @ a.T + np.array([1.0, 2.0, 3.0]), jnp.float32)
    assert abs(float(R.bspline_bending_energy(BSplineTransform(c, cg)))) < 1e-9
    g = R.bspline_gram_matrix(9, 0, 1.0, 7.0)
    assert np.allclose(g, g.T) and np.all(np.abs(np.triu(g, 4)) == 0)
    np.testing.assert_allclose(g.sum(), 6.0, rtol=1e-12)  # partition of unity: int 1 dt over [1, 7]
    np.testing.assert_allclose(R.bspline_gram_matrix(9, 2, 1.0, 7.0).sum(), 0.0, atol=1e-12)


def test_bspline_bending_energy_grad_jit_vmap():
    grid = Grid.from_spacing((12, 14), (1.0, 1.0))
    ts = [_random_ffd(grid, 4.0, key=k) for k in range(3)]
    batched = jax.tree.map(lambda *x: jnp.stack(x), *ts)
    f = jax.jit(R.bspline_bending_energy)
    np.testing.assert_allclose(
        jax.vmap(f)(batched), [float(R.bspline_bending_energy(t)) for t in ts], rtol=1e-6
    )
    with jax.enable_x64(True):
        t = _random_ffd(grid, 4.0, key=5, dtype=jnp.float64)
        check_grads(
            lambda c: R.bspline_bending_energy(BSplineTransform(c, t.control_grid)),
            (t.coefficients,),
            order=2,
            modes=["rev"],
        )


# ---- gradients, jit, vmap, masks, dtypes, errors -----------------------------------------------------------
FIELD_TERMS = {
    "diffusion": lambda u, **k: R.diffusion(u, **k),
    "bending": lambda u, **k: R.bending(u, **k),
    "elastic": lambda u, **k: R.elastic(u, mu=0.5, lam=1.5, **k),
    "total_variation": lambda u, **k: R.total_variation(u, eps=1e-3, **k),
    "folding": lambda u, **k: R.folding(u, eps=0.9, **k),
    "log_jacobian": lambda u, **k: R.log_jacobian(u, **k),
}


@pytest.mark.parametrize("name", sorted(FIELD_TERMS))
def test_check_grads_float64(name):
    with jax.enable_x64(True):
        u = 0.3 * jax.random.normal(jax.random.key(0), (5, 6, 4, 3), jnp.float64)
        mask = jax.random.uniform(jax.random.key(1), (5, 6, 4), jnp.float64)
        fn = FIELD_TERMS[name]
        check_grads(lambda v: fn(v, spacing=(1.0, 0.5, 2.0), mask=mask), (u,), order=1, modes=["fwd", "rev"])
        assert fn(u).dtype == jnp.float64
    # traced hyperparameters are differentiable too
    u = 0.1 * jax.random.normal(jax.random.key(2), (6, 6, 2), jnp.float32)
    dmu, dlam = jax.grad(lambda m, la: R.elastic(u, mu=m, lam=la), argnums=(0, 1))(1.0, 1.0)
    assert float(dmu) > 0 and float(dlam) > 0


@pytest.mark.parametrize("name", sorted(FIELD_TERMS))
def test_jit_vmap_dtype(name):
    fn = FIELD_TERMS[name]
    us = 0.2 * jax.random.normal(jax.random.key(3), (4, 7, 8, 2), jnp.float32)
    loop = np.array([float(fn(u, spacing=(1.0, 2.0))) for u in us])
    batched = jax.vmap(lambda u: fn(u, spacing=(1.0, 2.0)))(us)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-7)
    jitted = jax.jit(lambda u: fn(u, spacing=(1.0, 2.0)))
    np.testing.assert_allclose(jitted(us[0]), loop[0], rtol=1e-5, atol=1e-7)
    assert jitted(us[0]).dtype == jnp.float32 and jitted(us[0]).shape == ()


def test_vmap_over_hyperparameters():
    u = 0.1 * jax.random.normal(jax.random.key(4), (6, 7, 2))
    mus = jnp.array([0.5, 1.0, 2.0])
    out = jax.vmap(lambda m: R.elastic(u, mu=m, lam=0.0))(mus)
    np.testing.assert_allclose(out, mus * R.elastic(u, mu=1.0, lam=0.0), rtol=1e-5)
    eps = jnp.array([0.0, 0.1])
    assert jax.vmap(lambda e: R.folding(u, eps=e))(eps).shape == (2,)


def test_jit_does_not_recompile():
    f = jax.jit(lambda u: R.bending(u, spacing=(1.0, 2.0)))
    u = jnp.zeros((6, 7, 2))
    f(u)
    f(u + 1.0)
    assert f._cache_size() == 1


@pytest.mark.parametrize("name", sorted(FIELD_TERMS))
def test_mask_semantics(name):
    fn = FIELD_TERMS[name]
    u = 0.2 * jax.random.normal(jax.random.key(5), (8, 9, 2))
    ones = jnp.ones((8, 9))
    np.testing.assert_allclose(fn(u, mask=ones), fn(u), rtol=1e-6)
    w = jax.random.uniform(jax.random.key(6), (8, 9))
    np.testing.assert_allclose(fn(u, mask=3.0 * w), fn(u, mask=w), rtol=1e-5)  # a weighted mean
    assert float(fn(u, mask=jnp.zeros((8, 9)))) == 0.0
    with pytest.raises(ValueError, match="mask"):
        fn(u, mask=jnp.ones((8, 8)))


def test_mask_restricts_to_the_region():
    # u is linear (A) on columns 0..7 and wild from column 8; a mask on columns 0..5 gives weight only to
    # stencils that start in 0..5, which reach at most column 7: the linear field's energies
    a = np.array([[0.1, 0.05], [-0.02, 0.03]])
    u = np.array(linear_field((10, 12), (1.0, 1.0), a))
    u[:, 8:] += np.random.default_rng(0).normal(size=(10, 4, 2))
    mask = np.zeros((10, 12))
    mask[:, :6] = 1.0
    u, mask = jnp.asarray(u), jnp.asarray(mask)
    assert abs(float(R.bending(u, mask=mask))) < 1e-9
    np.testing.assert_allclose(
        R.elastic(u, mask=mask, mu=1.0, lam=0.0), np.sum((0.5 * (a + a.T)) ** 2), rtol=1e-5
    )
    det = float(np.linalg.det(np.eye(2) + a))
    np.testing.assert_allclose(R.log_jacobian(u, mask=mask), np.log(det) ** 2, rtol=1e-4)
    # voxel-located terms: the weighted mean of the per-voxel values
    d = np.asarray(R.jacobian_determinant_field(u))
    np.testing.assert_allclose(
        R.folding(u, mask=mask, eps=2.0), np.mean(np.maximum(2.0 - d, 0)[:, :6] ** 2), rtol=1e-5
    )


def test_one_dimensional_fields():
    x = jnp.arange(10.0)[:, None]
    np.testing.assert_allclose(R.diffusion(0.1 * x), 0.01, rtol=1e-5)
    np.testing.assert_allclose(R.bending(0.1 * x**2, spacing=0.5), (0.2 / 0.25) ** 2, rtol=1e-5)


def test_errors():
    u = jnp.zeros((5, 6, 2))
    with pytest.raises(ValueError, match="ndim"):
        R.diffusion(jnp.zeros((5, 6, 3)))
    with pytest.raises(ValueError, match="either spacing or grid"):
        R.diffusion(u, spacing=1.0, grid=Grid((5, 6)))
    with pytest.raises(ValueError, match="2-D grid"):
        R.diffusion(u, grid=Grid((5, 6, 7)))
    with pytest.raises(ValueError, match="spacing"):
        R.bending(u, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="at least 3"):
        R.bending(jnp.zeros((2, 6, 2)))
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda s: R.diffusion(u, spacing=s))(jnp.ones(2))
    with pytest.raises(ValueError, match="floating"):
        R.diffusion(jnp.zeros((5, 6, 2), jnp.int32))
    with pytest.raises(TypeError, match="BSplineTransform"):
        R.bspline_bending_energy(Translation(jnp.zeros(2)))


def test_public_api_documented_and_keyword_only():
    for name in R.__all__:
        obj = getattr(R, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
        params = list(inspect.signature(obj).parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(positional) <= 4, (name, positional)
        for p in params:  # every option (a parameter with a default) is keyword-only
            if p.default is not inspect.Parameter.empty:
                assert p.kind == p.KEYWORD_ONLY, (name, p.name)
    assert jaxreg.regularizers is R
