"""Transforms: closed forms, analytic fields and invariants (hypothesis), jit/vmap/grad behaviour."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

import jaxreg as jr
from jaxreg.transforms import (
    Affine,
    BSplineTransform,
    DisplacementField,
    Polynomial,
    Rigid,
    Similarity,
    Translation,
    VelocityField,
    compose,
    compose_affine,
    compose_fields,
    decompose_affine,
    euler_to_matrix,
    invert,
    jacobian,
    jacobian_determinant,
    matrix_to_euler,
    rotation_matrix,
    rotation_vector,
    to_affine,
    to_displacement,
)

GRID3 = jr.Grid.from_spacing((14, 12, 10), (1.5, 1.0, 2.0), origin=(-10.0, -6.0, -9.0))
GRID2 = jr.Grid((16, 14), np.array([[0.0, -1.2, 8.0], [0.9, 0.0, -5.0], [0.0, 0.0, 1.0]]))  # rotated, anisotropic

seeds = st.integers(0, 2**31 - 1)


def smooth_field(seed, grid, amplitude_mm, sigma=2.5):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(*grid.shape, grid.ndim))
    u = np.stack([gaussian_filter(u[..., i], sigma) for i in range(grid.ndim)], -1)
    return jnp.asarray(u / np.abs(u).max() * amplitude_mm, jnp.float32)


def interior(x, k=3):
    return x[tuple(slice(k, -k) for _ in range(x.ndim - 1))]


def random_linear(kind, seed, ndim):
    rng = np.random.default_rng(seed)
    rot = jnp.asarray(rng.uniform(-0.6, 0.6, () if ndim == 2 else (3,)), jnp.float32)
    t = jnp.asarray(rng.uniform(-5, 5, ndim), jnp.float32)
    c = jnp.asarray(rng.uniform(-10, 10, ndim), jnp.float32)
    if kind == "translation":
        return Translation(t)
    if kind == "rigid":
        return Rigid(rot, t, c)
    if kind == "similarity":
        return Similarity(rot, jnp.asarray(rng.uniform(-0.3, 0.3), jnp.float32), t, c)
    m = jnp.asarray(np.eye(ndim) + rng.uniform(-0.25, 0.25, (ndim, ndim)), jnp.float32)
    return Affine(m, t, c)


# -- rotations, Euler angles, decomposition --------------------------------------------------------------------
@given(seed=seeds)
def test_rotation_matrix_matches_scipy_and_round_trips(seed):
    rv = Rotation.random(random_state=seed).as_rotvec()
    r = rotation_matrix(jnp.asarray(rv))
    np.testing.assert_allclose(r, Rotation.from_rotvec(rv).as_matrix(), atol=2e-6)
    np.testing.assert_allclose(rotation_matrix(rotation_vector(r)), r, atol=2e-5)


def test_rotation_smooth_at_identity_and_near_pi():
    g = jax.jacfwd(rotation_matrix)(jnp.zeros(3))
    # dR/dr_k at 0 is the generator [e_k]_x
    np.testing.assert_allclose(g[:, :, 0], np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0]]), atol=1e-6)
    rv = np.array([np.pi - 1e-4, 0.0, 0.0])
    np.testing.assert_allclose(np.abs(rotation_vector(rotation_matrix(jnp.asarray(rv)))), np.abs(rv), atol=1e-3)


@pytest.mark.parametrize("order", ["xyz", "xzy", "yxz", "yzx", "zxy", "zyx"])
@given(seed=seeds)
def test_euler_matches_scipy(order, seed):
    rng = np.random.default_rng(seed)
    ang = rng.uniform(-np.pi, np.pi, 3)
    ang[1] = rng.uniform(-1.4, 1.4)
    r = euler_to_matrix(jnp.asarray(ang), order=order)
    np.testing.assert_allclose(r, Rotation.from_euler(order, ang).as_matrix(), atol=2e-6)
    np.testing.assert_allclose(matrix_to_euler(r, order=order), ang, atol=5e-5)


def test_euler_gimbal_lock_reconstructs_matrix():
    for order in ["xyz", "zyx"]:
        ang = jnp.asarray([0.3, np.pi / 2, -0.7])
        r = euler_to_matrix(ang, order=order)
        back = matrix_to_euler(r, order=order)
        np.testing.assert_allclose(euler_to_matrix(back, order=order), r, atol=1e-5)


@given(seed=seeds, ndim=st.sampled_from([2, 3]), reflect=st.booleans())
def test_affine_decomposition_round_trip(seed, ndim, reflect):
    rng = np.random.default_rng(seed)
    a = np.eye(ndim) + rng.uniform(-0.5, 0.5, (ndim, ndim))
    if reflect:
        a[:, 0] *= -1
    if abs(np.linalg.det(a)) < 0.05:
        return
    c = decompose_affine(jnp.asarray(a))
    np.testing.assert_allclose(np.linalg.det(c.rotation), 1.0, atol=1e-5)
    np.testing.assert_allclose(c.rotation.T @ c.rotation, np.eye(ndim), atol=1e-5)
    np.testing.assert_allclose(compose_affine(c)[:ndim, :ndim], a, atol=1e-5)
    assert (np.prod(np.asarray(c.scale)) < 0) == (np.linalg.det(a) < 0)


# -- linear families --------------------------------------------------------------------------------------------
@given(seed=seeds, ndim=st.sampled_from([2, 3]))
def test_rigid_preserves_distances_and_volume(seed, ndim):
    t = random_linear("rigid", seed, ndim)
    pts = jnp.asarray(np.random.default_rng(seed).uniform(-50, 50, (6, ndim)), jnp.float32)
    d0 = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    q = t(pts)
    d1 = np.linalg.norm(q[:, None] - q[None], axis=-1)
    np.testing.assert_allclose(d1, d0, atol=2e-3)
    grid = GRID3 if ndim == 3 else GRID2
    np.testing.assert_allclose(jacobian_determinant(t, grid), 1.0, atol=1e-5)


def test_center_convention_is_itk():
    c = jnp.asarray([10.0, -4.0, 2.0])
    t = Rigid(jnp.asarray([0.0, 0.0, 0.7]), jnp.asarray([1.0, 2.0, 3.0]), c)
    # the centre maps to centre + translation
    np.testing.assert_allclose(t(c), c + jnp.asarray([1.0, 2.0, 3.0]), atol=1e-5)
    # the centre's gradient is stopped
    g = jax.grad(lambda tt: jnp.sum(tt(jnp.ones((2, 3))) ** 2))(t)
    np.testing.assert_allclose(g.center, 0.0)
    assert np.any(np.asarray(g.rotation) != 0)


@pytest.mark.parametrize("kind", ["translation", "rigid", "similarity", "affine"])
@given(seed=seeds, ndim=st.sampled_from([2, 3]))
def test_linear_inverse_is_exact(kind, seed, ndim):
    t = random_linear(kind, seed, ndim)
    pts = jnp.asarray(np.random.default_rng(seed).uniform(-40, 40, (9, ndim)), jnp.float32)
    ti = invert(t)
    np.testing.assert_allclose(ti(t(pts)), pts, atol=2e-4)
    np.testing.assert_allclose(t(ti(pts)), pts, atol=2e-4)


@given(seed=seeds)
def test_linear_sample_grid_and_jacobian_exact(seed):
    t = random_linear("affine", seed, 3)
    np.testing.assert_allclose(t.sample_grid(GRID3), t(GRID3.world_coords()), atol=1e-4)
    j = jacobian(t, GRID3)
    np.testing.assert_allclose(j[2, 3, 4], t.homogeneous()[:3, :3], atol=1e-6)
    # the finite-difference Jacobian of the same map sampled as a field agrees exactly (linear map)
    f = to_displacement(t, GRID3)
    np.testing.assert_allclose(jacobian(f, GRID3), j, atol=2e-4)


@given(seed=seeds)
def test_composition_is_associative_and_matches_matrix_product(seed):
    a, b, c = (random_linear(k, seed + i, 3) for i, k in enumerate(["affine", "rigid", "similarity"]))
    pts = jnp.asarray(np.random.default_rng(seed).uniform(-30, 30, (7, 3)), jnp.float32)
    left = compose(compose(a, b), c)(pts)
    right = compose(a, compose(b, c))(pts)
    np.testing.assert_allclose(left, right, atol=1e-4)
    np.testing.assert_allclose(left, a(b(c(pts))), atol=1e-4)
    np.testing.assert_allclose(to_affine(compose(a, b, c))(pts), left, atol=2e-4)
    # a dense field in the chain keeps associativity
    f = DisplacementField(smooth_field(seed, GRID3, 2.0), GRID3)
    x = interior(GRID3.world_coords())
    np.testing.assert_allclose(compose(compose(a, f), c)(x), compose(a, compose(f, c))(x), atol=1e-4)


# -- polynomial ------------------------------------------------------------------------------------------------
def test_polynomial_linear_terms_equal_affine_and_inverse():
    p = Polynomial.identity(3, order=3, center=jnp.asarray([1.0, 2.0, 3.0]), scale=50.0)
    n_terms = p.coefficients.shape[0]
    assert n_terms == 20
    m = jnp.asarray(np.random.default_rng(0).uniform(-0.1, 0.1, (3, 3)), jnp.float32)
    coef = jnp.zeros((n_terms, 3)).at[0].set(jnp.asarray([1.0, -2.0, 0.5])).at[1:4].set(m.T * 50.0)
    p = Polynomial(coef, p.center, p.scale, 3)
    aff = Affine(jnp.eye(3) + m, jnp.asarray([1.0, -2.0, 0.5]), p.center)
    pts = jnp.asarray(np.random.default_rng(1).uniform(-40, 40, (5, 3)), jnp.float32)
    np.testing.assert_allclose(p(pts), aff(pts), atol=1e-4)
    # a quadratic term: x' = x + k x0^2 (normalised)
    coef2 = jnp.zeros_like(coef).at[4, 1].set(2.0)
    p2 = Polynomial(coef2, jnp.zeros(3), jnp.asarray(50.0), 3)
    np.testing.assert_allclose(p2(pts)[:, 1] - pts[:, 1], 2.0 * (pts[:, 0] / 50.0) ** 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(invert(p2)(p2(pts)), pts, atol=1e-3)


# -- B-spline FFD ----------------------------------------------------------------------------------------------
def test_bspline_reproduces_constant_and_linear_displacements():
    b = BSplineTransform.identity(GRID3, 6.0)
    cg = b.control_grid
    ctrl_world = cg.world_coords()
    shift = jnp.asarray([1.0, -2.0, 0.5])
    m = jnp.asarray([[0.02, 0.01, 0.0], [0.0, -0.03, 0.01], [0.01, 0.0, 0.02]])
    # cubic B-splines reproduce polynomials up to degree 1 when coefficients sample them at control points
    coef = shift + ctrl_world @ m.T
    t = BSplineTransform(coef, cg)
    x = GRID3.world_coords()
    np.testing.assert_allclose(t.sample_grid(GRID3) - x, shift + x @ m.T, atol=1e-4)
    np.testing.assert_allclose(jacobian(t, GRID3)[4, 5, 3], jnp.eye(3) + m, atol=1e-4)


@settings(max_examples=8)  # random (not derandomised) examples, bounded in time: each compiles a 3-D field
@given(seed=seeds)
def test_bspline_separable_equals_pointwise_and_inverse(seed):
    b = BSplineTransform.identity(GRID3, 8.0)
    coef = jnp.asarray(np.random.default_rng(seed).normal(0, 1.0, b.coefficients.shape), jnp.float32)
    t = BSplineTransform(coef, b.control_grid)
    x = GRID3.world_coords()
    np.testing.assert_allclose(t.sample_grid(GRID3), t(x), atol=1e-4)
    # an oblique evaluation grid takes the point-wise path and agrees too
    rot = jr.Grid(GRID2.shape, GRID2.affine)
    t2 = BSplineTransform.identity(rot, 7.0)
    t2 = BSplineTransform(jnp.ones_like(t2.coefficients), t2.control_grid)
    np.testing.assert_allclose(t2.sample_displacement(rot), 1.0, atol=1e-5)
    ti = invert(t)
    np.testing.assert_allclose(ti(t(interior(x))), interior(x), atol=2e-3)


def test_bspline_gradient_has_no_scatter():
    b = BSplineTransform.identity(GRID3, 8.0)
    f = jax.jit(jax.grad(lambda c: jnp.sum(BSplineTransform(c, b.control_grid).sample_grid(GRID3) ** 2)))
    # XLA's default CPU fusion emitters: the classic ones of tests/conftest.py expand scatters into loops
    hlo = f.lower(b.coefficients).compile(compiler_options={"xla_cpu_use_fusion_emitters": True}).as_text()
    assert not re.search(r"\bscatter\(", hlo)


# -- dense fields ----------------------------------------------------------------------------------------------
def test_displacement_field_matches_itk_semantics():
    u = smooth_field(0, GRID3, 3.0)
    f = DisplacementField(u, GRID3)
    x = GRID3.world_coords()
    np.testing.assert_allclose(f(x), x + u, atol=1e-4)  # exact at voxel centres
    far = jnp.asarray([[500.0, 500.0, 500.0]])
    np.testing.assert_allclose(f(far), far)  # zero displacement outside the field
    # between voxel centres: linear interpolation along axis 0
    mid = (x[2, 3, 4] + x[3, 3, 4]) / 2
    np.testing.assert_allclose(f(mid[None])[0], mid + (u[2, 3, 4] + u[3, 3, 4]) / 2, atol=1e-4)


@settings(max_examples=8)  # random (not derandomised) examples, bounded in time: each compiles a 3-D field
@given(seed=seeds)
def test_displacement_field_inverse(seed):
    f = DisplacementField(smooth_field(seed, GRID3, 2.0), GRID3)
    fi = invert(f)
    x = interior(GRID3.world_coords(), 3)
    # the fixed point solves f(fi(x)) = x at voxel centres exactly; fi(f(x)) carries the interpolation error of
    # fi between voxel centres (the field is steep: |J - I| up to ~0.6); over seeds 0-399 that error peaked at
    # 0.107 mm (seed 213), which the derandomised profile never drew
    np.testing.assert_allclose(f(fi(x)), x, atol=1e-3)
    np.testing.assert_allclose(fi(f(x)), x, atol=0.15)


@settings(max_examples=8)  # random (not derandomised) examples, bounded in time: each compiles a 3-D field
@given(seed=seeds, ndim=st.sampled_from([2, 3]))
def test_svf_exp_inverse_is_identity(seed, ndim):
    grid = GRID3 if ndim == 3 else GRID2
    v = VelocityField(smooth_field(seed, grid, 2.0, sigma=4.0), grid)
    x = interior(grid.world_coords(), 3)
    # the residual is the linear-interpolation error of scaling and squaring (~1% of a voxel here)
    np.testing.assert_allclose(v.inverse()(v(x)), x, atol=0.05)
    np.testing.assert_allclose(v(v.inverse()(x)), x, atol=0.05)
    # diffeomorphic: no folding for a smooth field
    assert float(jnp.min(jacobian_determinant(v, grid))) > 0


def test_svf_constant_and_linear_velocity_closed_forms():
    c = jnp.asarray([1.0, -0.5, 2.0])
    v = VelocityField(jnp.broadcast_to(c, (*GRID3.shape, 3)), GRID3)
    np.testing.assert_allclose(v.exp().displacement, jnp.broadcast_to(c, (*GRID3.shape, 3)), atol=1e-4)
    # linear velocity v(x) = A (x - x0): the flow is x0 + expm(A) (x - x0)
    a = np.array([[0.0, -0.06, 0.0], [0.06, 0.0, 0.02], [0.0, -0.02, 0.03]])
    x = GRID3.world_coords(jnp.float64) if jax.config.jax_enable_x64 else GRID3.world_coords()
    x0 = jnp.asarray(GRID3.center, x.dtype)
    vel = (x - x0) @ jnp.asarray(a.T, x.dtype)
    t = VelocityField(vel.astype(jnp.float32), GRID3, steps=8)
    expected = x0 + (x - x0) @ jnp.asarray(scipy.linalg.expm(a).T, x.dtype)
    np.testing.assert_allclose(interior(t.sample_grid(GRID3), 4), interior(expected, 4), atol=5e-3)


def test_compose_fields_matches_lazy_composite():
    u = DisplacementField(smooth_field(1, GRID3, 2.0), GRID3)
    w = DisplacementField(smooth_field(2, GRID3, 2.0), GRID3)
    x = GRID3.world_coords()
    dense = compose_fields(u, w)
    lazy = compose(u, w)
    np.testing.assert_allclose(interior(dense.sample_grid(GRID3)), interior(lazy.sample_grid(GRID3)), atol=1e-4)
    # u(x + w(x)) + w(x)
    np.testing.assert_allclose(dense.displacement, w.displacement + (u(x + w.displacement) - (x + w.displacement)), atol=1e-4)
    np.testing.assert_allclose(to_displacement(lazy, GRID3).displacement, dense.displacement, atol=1e-5)


# -- Jacobians -------------------------------------------------------------------------------------------------
def test_jacobian_of_analytic_quadratic_field_on_anisotropic_rotated_grid():
    grid = jr.Grid((20, 18), np.array([[0.0, 1.5, -3.0], [-0.8, 0.0, 4.0], [0.0, 0.0, 1.0]]))
    x = grid.world_coords(jnp.float32)
    k = 0.01
    # u = (k x0 x1, k x0^2) -> J = I + [[k x1, k x0], [2 k x0, 0]]
    u = jnp.stack([k * x[..., 0] * x[..., 1], k * x[..., 0] ** 2], -1)
    j = jacobian(DisplacementField(u, grid), grid)
    expected = jnp.eye(2) + jnp.stack(
        [jnp.stack([k * x[..., 1], k * x[..., 0]], -1), jnp.stack([2 * k * x[..., 0], 0 * x[..., 0]], -1)], -2
    )
    # central differences are exact for quadratics in the interior
    np.testing.assert_allclose(j[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-4)
    det = jacobian_determinant(DisplacementField(u, grid), grid)
    np.testing.assert_allclose(det, np.linalg.det(np.asarray(j)), atol=1e-4)


def test_folded_field_has_negative_determinant():
    x = GRID3.world_coords()
    u = jnp.zeros_like(x).at[..., 0].set(-2.0 * (x[..., 0] - x[..., 0].mean()))  # x -> -x along axis 0
    det = jacobian_determinant(DisplacementField(u, GRID3), GRID3)
    np.testing.assert_allclose(det, -1.0, atol=1e-5)


# -- JAX behaviour ---------------------------------------------------------------------------------------------
def test_jit_equals_nojit_and_no_recompilation():
    traces = []

    def f(t, x):
        traces.append(1)
        return jr.warp(jr.Image(x, GRID3), t, GRID3).data

    img = jnp.asarray(np.random.default_rng(0).normal(size=GRID3.shape), jnp.float32)
    t = random_linear("rigid", 0, 3)
    jf = jax.jit(f)
    out = jf(t, img)
    np.testing.assert_allclose(out, f(t, img), atol=1e-5)
    n = len(traces)
    jf(random_linear("rigid", 1, 3), img * 2)
    assert len(traces) == n  # new parameters, same structure: no retrace


def test_vmap_over_transforms_equals_loop():
    img = jr.Image(jnp.asarray(np.random.default_rng(0).normal(size=GRID3.shape), jnp.float32), GRID3)
    ts = [random_linear("rigid", s, 3) for s in range(4)]
    batched = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ts)
    out = jax.vmap(lambda t: jr.warp(img, t, GRID3).data)(batched)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(out[i], jr.warp(img, t, GRID3).data, atol=1e-5)
    vs = jnp.stack([smooth_field(s, GRID3, 2.0) for s in range(3)])
    out = jax.vmap(lambda v: VelocityField(v, GRID3).exp().displacement)(vs)
    for i in range(3):
        np.testing.assert_allclose(out[i], VelocityField(vs[i], GRID3).exp().displacement, atol=1e-5)


def test_gradients_through_transforms():
    pts = jnp.asarray(np.random.default_rng(0).uniform(-20, 20, (5, 3)))
    with jax.enable_x64(True):
        pts64 = jnp.asarray(pts, jnp.float64)
        rv = jnp.asarray([0.1, -0.2, 0.3], jnp.float64)
        check_grads(lambda r: Rigid(r, jnp.zeros(3, jnp.float64), jnp.zeros(3, jnp.float64))(pts64), (rv,), order=1, modes=["rev"])
        check_grads(lambda s: Similarity(rv, s, jnp.ones(3), jnp.zeros(3))(pts64), (jnp.asarray(0.1),), order=1, modes=["rev"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        t = Affine.identity(3, dtype=dtype)
        assert t(jnp.zeros((2, 3), dtype)).dtype == dtype
        f = DisplacementField.identity(GRID3, dtype)
        assert f.sample_grid(GRID3, dtype).dtype == dtype
        assert jr.warp(jr.Image(jnp.zeros(GRID3.shape, dtype), GRID3), f, GRID3).data.dtype == dtype


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="displacement"):
        DisplacementField(jnp.zeros((3, 3, 3, 3)), GRID3)
    with pytest.raises(ValueError, match="points"):
        Rigid.identity(3)(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="steps"):
        VelocityField(jnp.zeros((*GRID3.shape, 3)), GRID3, steps=-1)
    with pytest.raises(ValueError, match="transforms"):
        compose(Rigid.identity(3), Rigid.identity(2))
    with pytest.raises(ValueError, match="rotation"):
        rotation_matrix(jnp.zeros(4))
    with pytest.raises(ValueError, match="spacing"):
        BSplineTransform.identity(GRID3, 0.0)


def test_refine_bspline_is_exact():
    from jaxreg.transforms import refine_bspline

    b = BSplineTransform.identity(GRID3, 12.0)
    b = BSplineTransform(jnp.asarray(np.random.default_rng(0).normal(size=b.coefficients.shape), jnp.float32), b.control_grid)
    r = refine_bspline(b)
    np.testing.assert_allclose(r.control_grid.spacing, b.control_grid.spacing / 2)
    np.testing.assert_allclose(r.sample_displacement(GRID3), b.sample_displacement(GRID3), atol=1e-5)


# -- fields lifted between aligned grids: the separable path of on_grid ------------------------------------------
def _aligned_grid_pairs():
    a = np.diag([1.2, 0.9, 2.0, 1.0])
    a[:3, 3] = [-5.0, 3.0, 7.0]
    fine = jr.Grid((20, 18, 16), a)
    flipped = np.diag([-2.4, 0.9, 4.0, 1.0])
    flipped[:3, 3] = [30.0, 3.5, 9.0]
    pairs = []
    for f in ((2, 2, 2), (2, 1, 4), (5, 3, 8)):
        c = fine.downsample(f)
        pairs += [(c, fine), (fine, c)]
    odd = jr.Grid((20, 17, 15), a)  # downsampling an odd axis changes the spacing ratio: the general path
    pairs += [(odd.downsample(2), odd), (fine, jr.Grid((9, 20, 6), flipped))]
    return pairs


@pytest.mark.parametrize("k", range(8))
def test_on_grid_equals_scipy_and_its_gradient_is_the_transposed_interpolation(k):
    """``DisplacementField.on_grid`` between axis-aligned grids (pyramid levels, reduced-resolution lattices)
    runs as pads and strided slices; it equals scipy's linear interpolation with edge repeat at the new voxel
    centres, its VJP equals the general ``map_coordinates`` path's (and passes the adjoint test
    ``<A x, y> = <x, A^T y>``), its gradient has no scatter-add, and ``vmap`` equals a loop. Odd axes and flipped
    grids take the general path and give the same values."""
    from scipy import ndimage

    from jaxreg.core.sampling import map_coordinates
    from jaxreg.transforms import dense

    src, dst = _aligned_grid_pairs()[k]
    rng = np.random.default_rng(k)
    u = jnp.asarray(rng.normal(size=(*src.shape, 3)), jnp.float32)
    m = src.inverse_affine @ dst.affine
    idx = np.asarray(dst.index_coords(jnp.float32), np.float64) @ m[:3, :3].T + m[:3, 3]
    coords = np.moveaxis(idx, -1, 0)
    ref = np.stack([ndimage.map_coordinates(np.asarray(u[..., c], np.float64), coords, order=1, mode="nearest")
                    for c in range(3)], -1)  # fmt: skip
    out = DisplacementField(u, src).on_grid(dst).displacement
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    assert (dense._axis_plans(src, dst) is not None) == (k < 6)
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    vjp = jax.vjp(lambda x: DisplacementField(x, src).on_grid(dst).displacement, u)[1](g)[0]
    idx32 = jnp.asarray(idx, jnp.float32)
    general = jax.vjp(lambda x: map_coordinates(x, idx32, order=1, mode="nearest"), u)[1](g)[0]
    np.testing.assert_allclose(np.asarray(vjp), np.asarray(general), atol=2e-5)
    lhs = float(jnp.vdot(out, g))
    np.testing.assert_allclose(lhs, float(jnp.vdot(u, vjp)), rtol=1e-4)
    if k < 6:
        grad = jax.jit(jax.grad(lambda x: jnp.sum(DisplacementField(x, src).on_grid(dst).displacement ** 2)))
        assert "scatter" not in grad.lower(u).as_text()
    batch = jnp.stack([u, -2.0 * u])
    lifted = jax.vmap(lambda x: DisplacementField(x, src).on_grid(dst).displacement)(batch)
    np.testing.assert_allclose(np.asarray(lifted[1]), -2.0 * np.asarray(out), atol=1e-5)
