"""Tests of jaxreg.core.sampling: scipy golden values, invariants, gradients and JAX transformations."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy import ndimage as ndi

from jaxreg.core.sampling import map_coordinates, spline_filter

ORDERS = (0, 1, 3)
MODES = ("constant", "nearest", "reflect", "mirror", "grid-constant")
TOL = 1e-5

# Jitted once per static configuration and shape: much faster than op-by-op execution of the kernel.
sample = jax.jit(map_coordinates, static_argnames=("order", "mode", "prefilter"))


def scipy_map(image, coords, *, order, mode, cval=0.0, prefilter=True):
    """scipy.ndimage.map_coordinates in jaxreg's layout, channel by channel, in float64."""
    image = np.asarray(image, np.float64)
    cfirst = np.moveaxis(np.asarray(coords, np.float64), -1, 0)
    nd = cfirst.shape[0]
    kw = dict(order=order, mode=mode, cval=cval, prefilter=prefilter)
    if image.ndim == nd:
        return ndi.map_coordinates(image, cfirst, **kw)
    return np.stack([ndi.map_coordinates(image[..., c], cfirst, **kw) for c in range(image.shape[-1])], -1)


def edge_points(rng, shape, n_random=150):
    """Points inside and outside, exactly on integers and half-integers, and within 1e-3 of the edges."""
    cols = []
    for n in shape:
        special = np.concatenate([
            np.arange(-3, n + 3, dtype=np.float64),
            np.arange(-3, n + 3) + 0.5,
            [-1e-3, 1e-3, n - 1 - 1e-3, n - 1 + 1e-3, -0.5 - 1e-3, n - 0.5 + 1e-3, -3.0 * n, 4.0 * n + 0.3],
        ])
        col = np.concatenate([rng.uniform(-2.5, n + 1.5, n_random), special])
        cols.append(col)
    m = max(len(c) for c in cols)
    cols = [np.resize(rng.permutation(c), m) for c in cols]
    return np.stack(cols, -1).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)  # a fresh generator per test: results do not depend on test order


# --------------------------------------------------------------------------------------------------------
# Golden values against scipy.ndimage
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_scipy(order, mode, rng):
    # (shape, channel axis, prefilter): 2D and 3D, with and without channels. Axes of length 1 and 2 are in
    # test_matches_scipy_1d_far_and_batch_shape and the hypothesis test.
    cases = [((7, 9), False, True), ((6, 5), True, True), ((5, 6, 4), True, True)]
    cases.append(((5, 6, 4), False, order != 3))  # order 3: B-spline coefficients given directly
    for shape, channels, prefilter in cases:
        image = rng.standard_normal(shape + ((3,) if channels else ())).astype(np.float32)
        coords = edge_points(rng, shape)
        out = sample(image, coords, order=order, mode=mode, cval=-0.75, prefilter=prefilter)
        expected = scipy_map(image, coords, order=order, mode=mode, cval=-0.75, prefilter=prefilter)
        assert out.dtype == jnp.float32
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=TOL, atol=TOL, err_msg=f"{shape=} {prefilter=}")


def test_matches_scipy_1d_far_and_batch_shape(rng):
    """1D lines of length 1, 2 and 6, points on a quarter-voxel lattice far outside and at large offsets."""
    for n in (1, 2, 6):
        image = rng.standard_normal(n).astype(np.float32)
        x = np.concatenate([np.arange(-40 * n, 40 * n + 1) / 4.0, rng.uniform(-1e6, 1e6, 50), [1e9, -3e9]])
        coords = x.astype(np.float32).reshape(-1, 1)
        for order, mode in itertools.product(ORDERS, MODES):
            out = sample(image, coords, order=order, mode=mode, cval=0.25)
            expected = scipy_map(image, coords, order=order, mode=mode, cval=0.25)
            np.testing.assert_allclose(out, expected, rtol=TOL, atol=TOL, err_msg=f"{n=} {order=} {mode=}")
    coords = rng.uniform(-4, 14, (3, 5, 1)).astype(np.float32)
    assert sample(image, coords, order=1).shape == (3, 5)


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=3).map(tuple),
    order=st.sampled_from(ORDERS),
    mode=st.sampled_from(MODES),
    channels=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_scipy_hypothesis(data, shape, order, mode, channels, seed):
    r = np.random.default_rng(seed)
    image = r.standard_normal(shape + ((2,) if channels else ())).astype(np.float32)
    # Coordinates on a 1/4-voxel lattice hit integers and half-integers; the rest are arbitrary floats.
    quarter = st.integers(-16 * max(shape), 16 * max(shape)).map(lambda k: k / 4.0)
    anyf = st.floats(-3.0 * max(shape), 3.0 * max(shape), width=32)
    pts = data.draw(st.lists(st.tuples(*[st.one_of(quarter, anyf)] * len(shape)), min_size=1, max_size=12))
    coords = np.asarray(pts, np.float32)
    cval = data.draw(st.floats(-2, 2, width=32))
    out = sample(image, coords, order=order, mode=mode, cval=cval)
    expected = scipy_map(image, coords, order=order, mode=mode, cval=cval)
    np.testing.assert_allclose(out, expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("mode", MODES)
def test_spline_filter_matches_scipy(mode, rng):
    filt = jax.jit(spline_filter, static_argnames=("ndim", "mode"))
    for shape in [(2, 3), (4, 9, 5), (17,)]:
        image = rng.standard_normal(shape).astype(np.float32)
        expected = ndi.spline_filter(image, 3, output=np.float64, mode=mode)
        np.testing.assert_allclose(filt(image, mode=mode), expected, rtol=TOL, atol=TOL)
    # Channel-last: only the spatial axes are filtered.
    image = rng.standard_normal((6, 7, 2)).astype(np.float32)
    expected = np.stack([ndi.spline_filter(image[..., c], 3, mode=mode) for c in range(2)], -1)
    np.testing.assert_allclose(filt(image, ndim=2, mode=mode), expected, rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_identity_at_integer_grid(mode, rng):
    # Axes of at least 5 voxels: like scipy's, the "reflect" prefilter is inexact by O(0.27 ** (2n)) on
    # shorter axes, so there order 3 reproduces the samples only to ~1e-4.
    for spatial, channels in [((6, 7), ()), ((5, 6, 5), (2,))]:
        image = rng.standard_normal(spatial + channels).astype(np.float32)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij"), -1).astype(np.float32)
        for order in (0, 1):
            np.testing.assert_array_equal(sample(image, grid, order=order, mode=mode), image)
        if channels:  # order 3 once (3D with channels), it is the slowest to compile
            np.testing.assert_allclose(sample(image, grid, order=3, mode=mode), image, rtol=TOL, atol=TOL)


def test_spline_filter_recursion_path(monkeypatch, rng):
    """Long axes use the lax.scan recursion instead of the dense filter matrix; both match scipy."""
    import jaxreg.core.sampling as sampling

    image = rng.standard_normal((9, 3)).astype(np.float32)
    for mode in ("mirror", "reflect"):
        # The filter is linear, so its gradient is the transposed filter: compare both paths' VJPs too.
        f = lambda x: spline_filter(x, mode=mode)
        vjp = lambda x: jax.vjp(f, x)[1](jnp.asarray(image))[0]
        dense, dense_vjp = jax.jit(f)(image), jax.jit(vjp)(image)
        monkeypatch.setattr(sampling, "_DENSE_MAX", 4)  # axis 0 (9) by the recursion, axis 1 (3) dense
        recursive, recursive_vjp = jax.jit(f)(image), jax.jit(vjp)(image)
        monkeypatch.setattr(sampling, "_DENSE_MAX", 256)
        np.testing.assert_allclose(recursive, ndi.spline_filter(image, 3, mode=mode), rtol=TOL, atol=TOL)
        np.testing.assert_allclose(recursive, dense, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(recursive_vjp, dense_vjp, rtol=TOL, atol=TOL)


def test_prefilter_false_reads_coefficients(rng):
    """order=3, prefilter=False evaluates sum_k c[k] beta3(x - k) with the given coefficients."""
    coeffs = rng.standard_normal((6, 7)).astype(np.float32)
    x = np.array([[2.25, 3.5]], np.float32)
    b3 = lambda u: np.where(np.abs(u) < 1, 2 / 3 - u**2 + np.abs(u) ** 3 / 2,
                            np.where(np.abs(u) < 2, (2 - np.abs(u)) ** 3 / 6, 0.0))
    i, j = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    expected = np.sum(coeffs * b3(x[0, 0] - i) * b3(x[0, 1] - j))
    out = map_coordinates(coeffs, x, order=3, prefilter=False, mode="mirror")
    np.testing.assert_allclose(out[0], expected, rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------------


def off_kink_points(rng, shape, n=12):
    """Points away from integers and half-integers (the kinks of order 1 and of the boundary folds)."""
    x = rng.uniform(-1.8, np.array(shape) + 0.8, (n, len(shape)))
    frac = x - np.floor(x)
    x = np.where(np.abs(frac - 0.5) < 0.1, x + 0.2, x)
    frac = x - np.floor(x)
    return np.where((frac < 0.1) | (frac > 0.9), x + 0.3, x)


@pytest.mark.parametrize("order", (1, 3))
@pytest.mark.parametrize("mode", MODES)
def test_check_grads(order, mode, rng):
    """Reverse-mode gradients w.r.t. coordinates, image and cval against finite differences (float64)."""
    # Order 3 in 2D: its 3D programs (64 taps) are slow to compile, and the code is dimension-generic.
    shape = (5, 4, 6) if order == 1 else (6, 5)
    with jax.enable_x64(True):
        f = jax.jit(lambda im, c, cv: map_coordinates(im, c, order=order, mode=mode, cval=cv))
        image = jnp.asarray(rng.standard_normal(shape + (2,)))
        coords = jnp.asarray(off_kink_points(rng, shape))
        check_grads(f, (image, coords, 0.5), order=1, modes=["rev"])


def test_check_grads_cubic_3d(rng):
    with jax.enable_x64(True):
        image = jnp.asarray(rng.standard_normal((5, 4, 6)))
        coords = jnp.asarray(off_kink_points(rng, (5, 4, 6)))
        f = jax.jit(lambda c: map_coordinates(image, c, order=3, mode="mirror"))
        check_grads(f, (coords,), order=1, modes=["rev"])


def test_hessian_forward_over_reverse(rng):
    """jax.hessian (forward over the custom VJP) is the Jacobian of the gradient (central differences)."""
    with jax.enable_x64(True):
        image = jnp.asarray(rng.standard_normal((6, 7)))
        point = jnp.asarray([2.3, 3.6])
        f = lambda p: map_coordinates(image, p[None], order=3, mode="reflect")[0]
        hess = jax.jit(jax.hessian(f))(point)
        grad = jax.jit(jax.grad(f))
        eps = 1e-5
        fd = jnp.stack([(grad(point.at[d].add(eps)) - grad(point.at[d].add(-eps))) / (2 * eps)
                        for d in range(2)])
        np.testing.assert_allclose(hess, fd, rtol=1e-6, atol=1e-6)


def test_order0_gradients(rng):
    image = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    coords = jnp.asarray(rng.uniform(-1, 6, (10, 2)), jnp.float32)
    g = jax.jit(jax.grad(lambda c: jnp.sum(map_coordinates(image, c, order=0))))(coords)
    np.testing.assert_array_equal(g, 0)
    with jax.enable_x64(True):
        f = jax.jit(lambda im, c: map_coordinates(im, c, order=0, mode="mirror"))
        check_grads(f, (image.astype(jnp.float64), coords.astype(jnp.float64)), order=1, modes=["rev"])


@pytest.mark.parametrize("mode,jax_mode", [("grid-constant", "constant"), ("nearest", "nearest"),
                                           ("mirror", "mirror"), ("reflect", "reflect")])
def test_coordinate_gradient_matches_jax_scipy_and_finite_differences(mode, jax_mode, rng):
    image = jnp.asarray(rng.standard_normal((5, 6, 7)), jnp.float32)
    coords = jnp.asarray(off_kink_points(rng, (5, 6, 7), n=40), jnp.float32)
    w = jnp.asarray(rng.standard_normal(40), jnp.float32)

    def ours(c):
        return jnp.sum(map_coordinates(image, c, order=1, mode=mode) * w)

    def reference(c):
        return jnp.sum(jax.scipy.ndimage.map_coordinates(image, list(c.T), order=1, mode=jax_mode) * w)

    value, grad = jax.jit(jax.value_and_grad(ours))(coords)
    value_ref, grad_ref = jax.jit(jax.value_and_grad(reference))(coords)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-5)

    # Central differences in float64: each point's value depends only on its own coordinates.
    eps = 1e-3
    with jax.enable_x64(True):
        img64, c64 = image.astype(jnp.float64), coords.astype(jnp.float64)
        f = jax.jit(lambda c: map_coordinates(img64, c, order=1, mode=mode))
        fd = jnp.stack([(f(c64.at[:, d].add(eps)) - f(c64.at[:, d].add(-eps))) / (2 * eps)
                        for d in range(3)], -1)
        grad64 = jax.jit(jax.grad(lambda c: jnp.sum(f(c))))(c64)
        np.testing.assert_allclose(grad64, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order,mode", [(1, "constant"), (1, "grid-constant"), (1, "mirror"), (3, "reflect")])
def test_coordinate_gradient_has_no_scatter(order, mode, rng):
    image = jnp.asarray(rng.standard_normal((8, 9, 10)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((8, 9, 10)), jnp.float32)
    coords = jnp.asarray(rng.uniform(-1, 9, (8, 9, 10, 3)), jnp.float32)

    def loss(c, image, w):
        return jnp.sum(map_coordinates(image, c, order=order, mode=mode) * w)

    scatter_op = re.compile(r"\bscatter\(")  # the HLO instruction, not names in metadata
    # XLA's default CPU fusion emitters keep scatters as instructions; the classic emitters that tests/conftest.py
    # selects (faster compilation) expand every scatter into a loop, which would hide one from this check
    opts = {"xla_cpu_use_fusion_emitters": True}
    hlo = jax.jit(jax.grad(loss)).lower(coords, image, w).compile(compiler_options=opts).as_text()
    assert not scatter_op.search(hlo)
    if order == 1:  # the image gradient is the transposed interpolation: a scatter-add
        hlo_image = jax.jit(jax.grad(loss, argnums=1)).lower(coords, image, w).compile(compiler_options=opts).as_text()
        assert scatter_op.search(hlo_image)


# --------------------------------------------------------------------------------------------------------
# JAX transformations, dtypes, errors
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_jit_equals_eager(order, rng):
    image = jnp.asarray(rng.standard_normal((6, 5, 2)), jnp.float32)
    coords = jnp.asarray(edge_points(rng, (6, 5), 20))
    f = lambda im, c: map_coordinates(im, c, order=order, mode="reflect")
    np.testing.assert_allclose(jax.jit(f)(image, coords), f(image, coords), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f(image, coords), scipy_map(image, coords, order=order, mode="reflect"),
                               rtol=TOL, atol=TOL)


def test_vmap_equals_loop(rng):
    images = jnp.asarray(rng.standard_normal((3, 5, 6, 2)), jnp.float32)
    coords = jnp.asarray(rng.uniform(-1, 6, (3, 7, 2)), jnp.float32)
    cvals = jnp.asarray([0.0, 1.0, -2.0], jnp.float32)
    for order, mode in [(1, "constant"), (3, "mirror"), (0, "reflect")]:
        f = jax.jit(lambda im, c, cv: map_coordinates(im, c, order=order, mode=mode, cval=cv))
        batched = jax.jit(jax.vmap(f))(images, coords, cvals)
        looped = jnp.stack([f(images[i], coords[i], cvals[i]) for i in range(3)])
        np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)
    # Gradients (coordinates, image, cval) under vmap too.
    f = lambda c, im, cv: jnp.sum(map_coordinates(im, c, order=1, mode="grid-constant", cval=cv) ** 2)
    grad = jax.grad(f, argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad))(coords, images, cvals)
    looped = [jax.jit(grad)(coords[i], images[i], cvals[i]) for i in range(3)]
    for k in range(3):
        np.testing.assert_allclose(batched[k], jnp.stack([lp[k] for lp in looped]), rtol=1e-5, atol=1e-5)


def test_no_recompilation_and_determinism(rng):
    traces = 0

    @jax.jit
    def warp(image, coords):
        nonlocal traces
        traces += 1
        return map_coordinates(image, coords, order=1)

    image = jnp.asarray(rng.standard_normal((6, 7)), jnp.float32)
    coords = jnp.asarray(rng.uniform(0, 6, (10, 2)), jnp.float32)
    first = warp(image, coords)
    second = warp(image + 1.0, coords * 0.5)
    third = warp(image, coords)
    assert traces == 1
    np.testing.assert_array_equal(first, third)
    assert not np.array_equal(first, second)


def test_dtypes(rng):
    image = rng.standard_normal((5, 6)).astype(np.float32)
    coords = rng.uniform(0, 5, (4, 2))
    dtype = lambda *args, **kw: jax.eval_shape(lambda *a: map_coordinates(*a, **kw), *args).dtype
    assert dtype(image, coords.astype(np.float32)) == jnp.float32
    assert dtype(image, coords.astype(np.float16), order=3) == jnp.float32
    assert dtype(image, np.array([[1, 2]])) == jnp.float32  # integer coordinates are cast
    assert dtype((image * 10).astype(np.int32), coords.astype(np.float32)) == jnp.float32
    assert dtype(image.astype(jnp.bfloat16), coords.astype(np.float32)) == jnp.bfloat16
    c32 = jnp.asarray(coords, jnp.float32)
    grad = jax.eval_shape(jax.grad(lambda c: map_coordinates(image, c, order=3).sum()), c32)
    assert grad.dtype == jnp.float32
    assert sample(image, coords.astype(np.float32), order=3).dtype == jnp.float32
    with jax.enable_x64(True):
        out = sample(image.astype(np.float64), coords, order=3, mode="nearest")
        assert out.dtype == jnp.float64
        expected = scipy_map(image, coords, order=3, mode="nearest")
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        assert jax.eval_shape(spline_filter, image.astype(np.float64)).dtype == jnp.float64
    assert jax.eval_shape(spline_filter, image).dtype == jnp.float32


def test_errors():
    image = jnp.zeros((4, 5))
    coords = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="order"):
        map_coordinates(image, coords, order=2)
    with pytest.raises(ValueError, match="order"):
        map_coordinates(image, coords, order=True)
    with pytest.raises(ValueError, match="mode"):
        map_coordinates(image, coords, mode="wrap")
    with pytest.raises(ValueError, match="coordinates"):
        map_coordinates(jnp.zeros((4, 5, 6)), jnp.zeros((3, 1)))  # 1 coordinate, but a 2D/3D image
    with pytest.raises(ValueError, match="coordinates"):
        map_coordinates(jnp.zeros((4,)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="coordinates"):
        map_coordinates(image, jnp.float32(1.0))
    with pytest.raises(ValueError, match="image"):
        map_coordinates(jnp.zeros((0, 5)), coords)
    with pytest.raises(ValueError, match="mode"):
        spline_filter(image, mode="grid-wrap")
    with pytest.raises(ValueError, match="ndim"):
        spline_filter(image, ndim=3)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        map_coordinates(jnp.zeros((4, 5)), jnp.zeros((3, 2)), 1)  # noqa
    with pytest.raises(TypeError):
        spline_filter(jnp.zeros((4, 5)), 2)  # noqa
    assert map_coordinates.__doc__ and spline_filter.__doc__
