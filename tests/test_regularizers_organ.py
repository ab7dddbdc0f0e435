"""Organ-aware regularisers: rigidity, incompressibility, weight maps from labels, and maps in registrations.

Analytic fields with known Jacobians: rigid motions cost nothing, scalings and shears have closed forms,
quadratics have known second derivatives; gradients against finite differences in float64; label dilation
against ``scipy.ndimage.distance_transform_edt``; a tiny 2D registration keeps a rigid structure rigid.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

import jaxreg as jr
from jaxreg import terms
from jaxreg.data import phantom
from jaxreg.optimize import (
    BSpline,
    Field,
    Gradient,
    Level,
    Optimizer,
    Stage,
    field_term,
    objective,
    register,
    similarity_term,
)
from jaxreg.regularizers import (
    WeightMapped,
    bending,
    diffusion,
    incompressibility,
    label_weight_map,
    log_jacobian,
    rigidity,
    weight_mapped,
)
from jaxreg.transforms import Translation
from jaxreg.warp.pyramid import gaussian_smooth

ORTHO, PROPER, LINEAR = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)


def _coords(shape, spacing):
    """World coordinates (mm) of the voxel centres of a grid with origin 0: ``(*shape, ndim)`` float64."""
    axes = [np.arange(s) * h for s, h in zip(shape, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _linear_field(a, shape, spacing, t=None):
    """``u(x) = A x + t - x`` for ``A`` the ``(n, n)`` matrix ``a``."""
    x = _coords(shape, spacing)
    t = np.zeros(len(shape)) if t is None else np.asarray(t)
    return x @ np.asarray(a).T + t - x


def _rotation(n, rng):
    if n == 2:
        th = rng.uniform(-np.pi, np.pi)
        return np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return Rotation.random(random_state=rng).as_matrix()


CASES = [((9, 8), (1.0, 2.5)), ((6, 7, 5), (1.2, 2.0, 3.0))]


# -- rigidity: closed forms ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,spacing", CASES)
def test_rigid_motions_cost_nothing(shape, spacing):
    rng = np.random.default_rng(0)
    n = len(shape)
    for _ in range(3):
        u = _linear_field(_rotation(n, rng), shape, spacing, rng.uniform(-20, 20, n))
        u32 = jnp.asarray(u, jnp.float32)
        for linearized in (False,):
            assert float(rigidity(u32, spacing=spacing, linearized=linearized)) < 1e-6
        assert float(incompressibility(u32, spacing=spacing)) < 1e-6
        assert float(incompressibility(u32, spacing=spacing, form="log")) < 1e-6
    # a rotation is not a small strain: the linearised conditions see its second-order part
    u = _linear_field(_rotation(n, rng), shape, spacing)
    assert float(rigidity(jnp.asarray(u), spacing=spacing, linearized=True)) > 1e-3


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("s", [0.8, 1.25])
def test_uniform_scaling_closed_forms(shape, spacing, s):
    n = len(shape)
    u = jnp.asarray(_linear_field(s * np.eye(n), shape, spacing, [1.0] * n), jnp.float32)
    np.testing.assert_allclose(rigidity(u, spacing=spacing, weights=ORTHO), n * (s * s - 1) ** 2, rtol=1e-4)
    np.testing.assert_allclose(rigidity(u, spacing=spacing, weights=PROPER), (s**n - 1) ** 2, rtol=1e-4)
    assert abs(float(rigidity(u, spacing=spacing, weights=LINEAR))) < 1e-8
    total = n * (s * s - 1) ** 2 + (s**n - 1) ** 2
    np.testing.assert_allclose(rigidity(u, spacing=spacing), total, rtol=1e-4)
    np.testing.assert_allclose(rigidity(u, spacing=spacing, weights=(3.0, 0.5, 2.0)), 
                               0.5 * n * (s * s - 1) ** 2 + 2 * (s**n - 1) ** 2, rtol=1e-4)  # fmt: skip
    # linearised: ||g + g^T||^2 = n (2 (s - 1))^2, (div u)^2 = (n (s - 1))^2
    np.testing.assert_allclose(
        rigidity(u, spacing=spacing, weights=ORTHO, linearized=True), n * 4 * (s - 1) ** 2, rtol=1e-4
    )
    np.testing.assert_allclose(
        rigidity(u, spacing=spacing, weights=PROPER, linearized=True), (n * (s - 1)) ** 2, rtol=1e-4
    )
    np.testing.assert_allclose(incompressibility(u, spacing=spacing), (s**n - 1) ** 2, rtol=1e-4)
    np.testing.assert_allclose(
        incompressibility(u, spacing=spacing, form="log"), (n * np.log(s)) ** 2, rtol=1e-4
    )


@pytest.mark.parametrize("shape,spacing", CASES)
def test_shears_closed_forms(shape, spacing):
    n = len(shape)
    for a, b, g in [(0, 1, 0.3), (1, 0, -0.5), (n - 1, 0, 0.2)]:
        m = np.eye(n)
        m[a, b] = g
        u = jnp.asarray(_linear_field(m, shape, spacing), jnp.float32)
        # J^T J - I has g at (a, b) and (b, a) and g^2 at (b, b)
        np.testing.assert_allclose(rigidity(u, spacing=spacing, weights=ORTHO), 2 * g**2 + g**4, rtol=1e-4)
        assert float(rigidity(u, spacing=spacing, weights=PROPER)) < 1e-10
        assert float(incompressibility(u, spacing=spacing)) < 1e-10  # volume-preserving
        assert float(incompressibility(u, spacing=spacing, form="log")) < 1e-10
        np.testing.assert_allclose(
            rigidity(u, spacing=spacing, weights=ORTHO, linearized=True), 2 * g**2, rtol=1e-4
        )


@pytest.mark.parametrize("shape,spacing", CASES)
def test_linearity_vanishes_for_affine_maps_and_is_known_for_quadratics(shape, spacing):
    rng = np.random.default_rng(1)
    n = len(shape)
    u = jnp.asarray(_linear_field(np.eye(n) + 0.3 * rng.normal(size=(n, n)), shape, spacing, [2.0] * n))
    assert abs(float(rigidity(u, spacing=spacing, weights=LINEAR))) < 1e-8
    x = _coords(shape, spacing)
    a = 0.05
    quad = np.zeros(shape + (n,))
    quad[..., 1] = a * x[..., 0] ** 2  # d^2 u_1 / dx_0^2 = 2a
    np.testing.assert_allclose(
        rigidity(jnp.asarray(quad), spacing=spacing, weights=LINEAR), 4 * a * a, rtol=1e-6
    )
    mixed = np.zeros(shape + (n,))
    mixed[..., 0] = a * x[..., 0] * x[..., 1]  # d^2 u_0 / dx_0 dx_1 = a, counted twice (Frobenius norm)
    np.testing.assert_allclose(
        rigidity(jnp.asarray(mixed), spacing=spacing, weights=LINEAR), 2 * a * a, rtol=1e-6
    )
    # linearity is the thin-plate energy with the same map
    c = jnp.asarray(rng.uniform(size=shape))
    np.testing.assert_allclose(
        rigidity(jnp.asarray(quad + mixed), spacing=spacing, mask=c, weights=LINEAR),
        bending(jnp.asarray(quad + mixed), spacing=spacing, mask=c),
        rtol=1e-6,
    )


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for shape, spacing in [((5, 4), (1.0, 2.5)), ((4, 3, 3), (1.2, 2.0, 3.0))]:
            n = len(shape)
            u = jnp.asarray(0.3 * rng.normal(size=shape + (n,)))
            c = jnp.asarray(rng.uniform(size=shape))
            w = jnp.asarray([0.5, 1.0, 2.0])
            lin = n == 2  # the linearised terms in 2-D, the exact ones in 3-D

            def total(v, m, ww, spacing=spacing, lin=lin):
                return rigidity(v, spacing=spacing, mask=m, weights=ww, linearized=lin) + incompressibility(
                    v, spacing=spacing, mask=m
                )

            # the field, the rigidity coefficients and the term weights are all differentiable
            check_grads(total, (u, c, w), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# -- masks, weights, jit / vmap, registry --------------------------------------------------------------------------
def _rigid_left_scaled_right(shape, spacing, k):
    """A rotation on columns ``<= k`` (axis 1) and a scaling beyond, continuous at ``k``."""
    n = len(shape)
    x = _coords(shape, spacing)
    r = _rotation(n, np.random.default_rng(3))
    rigid = x @ r.T - x
    scaled = x @ (1.3 * np.eye(n)).T - x
    ref = x[:, k : k + 1] if n == 2 else x[:, k : k + 1, :]
    scaled = scaled - ((ref @ (1.3 * np.eye(n)).T - ref) - (ref @ r.T - ref))
    left = (np.arange(shape[1]) <= k).reshape((1, -1) + (1,) * (n - 2) + (1,))
    return np.where(left, rigid, scaled)


@pytest.mark.parametrize("shape,spacing", [((8, 12), (1.0, 1.5)), ((5, 10, 4), (2.0, 1.0, 1.5))])
def test_masks_restrict_the_penalty(shape, spacing):
    k = 6
    u = jnp.asarray(_rigid_left_scaled_right(shape, spacing, k), jnp.float32)
    col = np.arange(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    # every stencil with a positive weight (base <= k - 2, spanning up to two voxels) stays in the rigid part
    c = jnp.asarray(np.broadcast_to(col <= k - 2, shape).astype(np.float32))
    assert float(rigidity(u, spacing=spacing)) > 1e-2
    assert float(rigidity(u, spacing=spacing, mask=c)) < 1e-6
    assert float(rigidity(u, spacing=spacing, mask=1.0 - c)) > 1e-2
    # weighted mean: scaling the map changes nothing, a map of ones is no map
    np.testing.assert_allclose(rigidity(u, spacing=spacing, mask=1.0 - c),
                               rigidity(u, spacing=spacing, mask=0.25 * (1.0 - c)), rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(
        rigidity(u, spacing=spacing, mask=jnp.ones(shape)), rigidity(u, spacing=spacing), rtol=1e-6
    )
    assert float(rigidity(u, spacing=spacing, mask=jnp.zeros(shape))) == 0.0
    # incompressibility is voxel-located (central differences): mask off the columns next to the kink
    ci = jnp.asarray(np.broadcast_to(col <= k - 1, shape).astype(np.float32))
    assert float(incompressibility(u, spacing=spacing, mask=ci)) < 1e-8
    assert float(incompressibility(u, spacing=spacing, mask=1.0 - ci)) > 1e-2


def test_smoothness_terms_take_float_maps_as_spatial_weights():
    """Spatially varying diffusion/bending: the existing terms weight by the map (weighted mean)."""
    shape, spacing = (10, 12), (1.0, 2.0)
    rng = np.random.default_rng(4)
    u = rng.normal(size=shape + (2,))
    u[:, :6] = 0.0  # smooth (zero) where the map is 1
    u = jnp.asarray(u)
    stiff = jnp.asarray(np.broadcast_to(np.arange(12) <= 3, shape).astype(np.float64))
    assert float(diffusion(u, spacing=spacing, mask=stiff)) == 0.0
    assert float(bending(u, spacing=spacing, mask=stiff)) == 0.0
    assert float(diffusion(u, spacing=spacing)) > 0.1
    # graded weights: the value is sum(w e) / sum(w) of the per-edge energies
    w = jnp.asarray(rng.uniform(0.1, 1.0, size=shape))
    d0 = (u[1:] - u[:-1]) / spacing[0]
    d1 = (u[:, 1:] - u[:, :-1]) / spacing[1]
    w0, w1 = (w[1:] + w[:-1]) / 2, (w[:, 1:] + w[:, :-1]) / 2
    expect = sum(float(jnp.sum(ww * jnp.sum(d * d, -1)) / jnp.sum(ww)) for d, ww in ((d0, w0), (d1, w1)))
    np.testing.assert_allclose(diffusion(u, spacing=spacing, mask=w), expect, rtol=1e-6)


def test_jit_vmap_and_traced_weights():
    shape, spacing = (8, 9), (1.0, 2.0)
    rng = np.random.default_rng(5)
    us = jnp.asarray(0.2 * rng.normal(size=(3,) + shape + (2,)), jnp.float32)
    cs = jnp.asarray(rng.uniform(size=(3,) + shape), jnp.float32)
    ws = jnp.asarray(rng.uniform(size=(3, 3)), jnp.float32)
    f = jax.jit(lambda u, c, w: rigidity(u, spacing=spacing, mask=c, weights=w))
    batch = jax.vmap(f)(us, cs, ws)
    loop = [rigidity(us[i], spacing=spacing, mask=cs[i], weights=ws[i]) for i in range(3)]
    np.testing.assert_allclose(batch, loop, rtol=1e-5)
    inc = jax.vmap(lambda u, c: incompressibility(u, spacing=spacing, mask=c))(us, cs)
    np.testing.assert_allclose(
        inc, [incompressibility(us[i], spacing=spacing, mask=cs[i]) for i in range(3)], rtol=1e-5
    )
    assert rigidity(us[0], spacing=spacing).dtype == jnp.float32


def test_registered_by_name_and_grid_equals_spacing():
    shape, spacing = (7, 6, 5), (1.0, 2.0, 1.5)
    u = jnp.asarray(0.2 * np.random.default_rng(6).normal(size=shape + (3,)), jnp.float32)
    assert {"rigidity", "incompressibility"} <= set(terms.names("regularizer"))
    assert terms.regularizer("rigidity") is rigidity
    lin = terms.parse("rigidity(weights=(1.0, 0.0, 0.0))", "regularizer")
    np.testing.assert_allclose(lin(u, spacing=spacing), bending(u, spacing=spacing), rtol=1e-6)
    logf = terms.parse({"name": "incompressibility", "form": "log"}, "regularizer")
    np.testing.assert_allclose(logf(u, spacing=spacing), log_jacobian(u, spacing=spacing), rtol=1e-6)
    assert terms.regularizer("rigidity", linearized=True) == terms.parse(
        "rigidity(linearized=True)", "regularizer"
    )
    g = jr.Grid.from_spacing(shape, spacing)
    np.testing.assert_allclose(rigidity(u, grid=g), rigidity(u, spacing=spacing), rtol=1e-6)
    np.testing.assert_allclose(incompressibility(u, grid=g), incompressibility(u, spacing=spacing), rtol=1e-6)


def test_rigidity_and_incompressibility_errors():
    u = jnp.zeros((6, 6, 2))
    with pytest.raises(ValueError, match="weights"):
        rigidity(u, spacing=1.0, weights=(1.0, 1.0))
    with pytest.raises(TypeError, match="linearized"):
        rigidity(u, spacing=1.0, linearized="yes")
    with pytest.raises(ValueError, match="mask"):
        rigidity(u, spacing=1.0, mask=jnp.ones((5, 6)))
    with pytest.raises(ValueError, match="u:"):
        rigidity(jnp.zeros((2, 6, 2)), spacing=1.0)
    with pytest.raises(ValueError, match="spacing"):
        rigidity(u, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="form"):
        incompressibility(u, spacing=1.0, form="volume")
    with pytest.raises(ValueError, match="regularizer"):
        terms.regularizer("rigidity", alpha=1.0)


# -- weight maps from labels ----------------------------------------------------------------------------------------
def _labels(shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    centre = np.array(shape) // 2
    lab[tuple(slice(c - 1, c + 2) for c in centre)] = 3
    lab[(0,) * len(shape)] = 7
    lab[tuple(rng.integers(0, s) for s in shape)] = 5
    lab[tuple(s - 2 for s in shape)] = 9
    return jr.Image(jnp.asarray(lab), jr.Grid.from_spacing(shape, spacing))


@pytest.mark.parametrize("shape,spacing", [((17, 13), (1.0, 2.5)), ((11, 9, 8), (1.5, 1.0, 3.0))])
def test_dilation_matches_scipy_distance_transform(shape, spacing):
    labels = _labels(shape, spacing)
    lab = np.asarray(labels.data)
    for r in (0.0, 2.2, 4.1, 7.3):
        got = np.asarray(label_weight_map(labels, [(3, 7)], dilate_mm=r).data)
        ref = ndi.distance_transform_edt(~np.isin(lab, (3, 7)), sampling=spacing) <= r
        np.testing.assert_array_equal(got, ref.astype(np.float32))
    # groups with their own weights and radii; overlaps take the larger weight
    got = np.asarray(label_weight_map(labels, [3, (5, 9)], weights=(1.0, 0.4), dilate_mm=(0.0, 3.1)).data)
    g2 = ndi.distance_transform_edt(~np.isin(lab, (5, 9)), sampling=spacing) <= 3.1
    np.testing.assert_allclose(got, np.maximum(1.0 * (lab == 3), 0.4 * g2), rtol=1e-7)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 1


def test_weight_map_on_another_grid_through_world_coordinates():
    labels = _labels((12, 10), (2.0, 3.0))
    wmap = label_weight_map(labels, [3])
    # a finer grid over the same field of view, shifted by a voxel of the label grid
    fine = jr.Grid.from_spacing((24, 20), (1.0, 1.5), origin=(2.0, 0.0))
    near = label_weight_map(labels, [3], grid=fine, order=0)
    ref = jr.warp_labels(labels, Translation.identity(2), fine).data == 3
    np.testing.assert_array_equal(np.asarray(near.data), np.asarray(ref, np.float32))
    assert near.grid == fine
    lin = label_weight_map(labels, [3], grid=fine, order=1)
    np.testing.assert_allclose(lin.data, jr.resample(wmap, fine, order=1).data, atol=1e-6)
    assert float(lin.data.min()) >= 0 and float(lin.data.max()) <= 1
    # an oblique target grid of another shape works through world coordinates too
    a = np.array([[0.0, -1.5, 20.0], [1.5, 0.0, 0.0], [0, 0, 1]])
    rot = label_weight_map(labels, [3], grid=jr.Grid((16, 16), a), order=0)
    pts = rot.grid.world_coords()
    inside = np.asarray(rot.data) > 0
    idx = np.rint(np.asarray(labels.grid.world_to_index(pts))).astype(int)[inside]
    assert inside.any() and np.all(np.asarray(labels.data)[idx[:, 0], idx[:, 1]] == 3)


def test_label_weight_map_errors():
    labels = _labels((10, 9), (1.0, 2.0))
    with pytest.raises(TypeError, match="labels"):
        label_weight_map(np.asarray(labels.data), [3])
    with pytest.raises(ValueError, match="labels: expected integer"):
        label_weight_map(jr.Image(labels.data.astype(jnp.float32) + 0.5, labels.grid), [3])
    with pytest.raises(ValueError, match="labels"):
        label_weight_map(jr.Image(labels.data.astype(jnp.complex64), labels.grid), [3])
    with pytest.raises(ValueError, match=r"\[4\] do not occur"):
        label_weight_map(labels, [(3, 4)])
    with pytest.raises(ValueError, match="label 3 is listed in group 0 and in group 1"):
        label_weight_map(labels, [(3, 7), (5, 3)])
    with pytest.raises(ValueError, match="groups"):
        label_weight_map(labels, [])
    with pytest.raises(TypeError, match="groups"):
        label_weight_map(labels, "3")
    with pytest.raises(TypeError, match=r"groups\[1\]: expected integer"):
        label_weight_map(labels, [3, (5, 2.5)])
    with pytest.raises(ValueError, match="weights"):
        label_weight_map(labels, [3, 5], weights=(1.0, 1.5))
    with pytest.raises(ValueError, match="weights"):
        label_weight_map(labels, [3, 5], weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="empty"):
        label_weight_map(labels, [3], weights=0.0)
    with pytest.raises(ValueError, match="dilate_mm"):
        label_weight_map(labels, [3], dilate_mm=-1.0)
    with pytest.raises(TypeError, match="grid"):
        label_weight_map(labels, [3], grid=np.eye(3))
    with pytest.raises(ValueError, match="grid: expected a 2-D"):
        label_weight_map(labels, [3], grid=jr.Grid.from_spacing((4, 4, 4), 1.0))
    far = jr.Grid.from_spacing((5, 5), 1.0, origin=(500.0, 500.0))
    with pytest.raises(ValueError, match="grid: the weight map is empty"):
        label_weight_map(labels, [3], grid=far)
    with pytest.raises(ValueError, match="order"):
        label_weight_map(labels, [3], order=3)
    # a float label map holding integers is accepted (NIfTI label maps are often stored as floats)
    as_float = label_weight_map(jr.Image(labels.data.astype(jnp.float32), labels.grid), [3])
    np.testing.assert_array_equal(as_float.data, label_weight_map(labels, [3]).data)


# -- weight maps in objectives and registrations -------------------------------------------------------------------
def test_weight_mapped_places_the_map_on_each_field_grid():
    labels = _labels((16, 12), (1.0, 2.0))
    wmap = label_weight_map(labels, [3], dilate_mm=2.0)
    term = weight_mapped("rigidity", wmap)
    assert isinstance(term, WeightMapped) and term.__name__ == "rigidity[mapped]"
    u = jnp.asarray(0.3 * np.random.default_rng(7).normal(size=(16, 12, 2)), jnp.float32)
    # on the map's own lattice: spacing is enough; elsewhere the grid places the map
    np.testing.assert_allclose(term(u, spacing=(1.0, 2.0)), rigidity(u, spacing=(1.0, 2.0), mask=wmap.data))
    coarse = labels.grid.downsample(2)
    uc = u[::2, ::2]
    expect = rigidity(uc, grid=coarse, mask=jr.resample(wmap, coarse).data)
    np.testing.assert_allclose(term(uc, grid=coarse), expect, rtol=1e-6)
    np.testing.assert_allclose(term.on_grid(coarse)(uc, spacing=tuple(coarse.spacing)), expect, rtol=1e-6)
    # an objective specialises it to the grid of the field it regularises
    obj = objective(similarity_term("mse"), field_term(term, 2.0))
    field = jr.DisplacementField(uc, coarse)
    vals = obj.terms_values(field, jnp.zeros(coarse.shape), jnp.zeros(coarse.shape), None, coarse)
    np.testing.assert_allclose(vals[1], expect, rtol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        term(uc, spacing=(2.0, 4.0))
    with pytest.raises(TypeError, match="weight_map"):
        weight_mapped("rigidity", wmap.data)
    with pytest.raises(ValueError, match="fn"):
        weight_mapped("rigid", wmap)
    with pytest.raises(ValueError, match="weight_map"):
        weight_mapped("rigidity", jr.Image(jnp.zeros(labels.grid.shape), labels.grid))


def _pair():
    """A 32x32 phantom and a copy deformed by a smooth non-rigid field that also bends the label-4 blob."""
    img = phantom((32, 32), spacing=2.0)
    fixed = gaussian_smooth(img, 2.0)
    labels = phantom((32, 32), spacing=2.0, labels=True)
    x = fixed.grid.world_coords()
    bump = jnp.exp(-((x[..., 0] ** 2 + x[..., 1] ** 2) / (2 * 14.0**2)))
    disp = jnp.stack([3.0 * bump * jnp.sin(x[..., 1] / 9.0), 3.0 * bump * jnp.cos(x[..., 0] / 9.0)], -1)
    truth = jr.DisplacementField(disp, fixed.grid)
    return fixed, jr.warp(fixed, truth, fixed.grid), labels


@pytest.mark.parametrize("model", ["displacement", "velocity", "bspline"])
def test_registration_keeps_a_rigid_structure_rigid(model):
    """The one registration API with a label-derived rigidity map, for each deformable model.

    The map reaches every level through ``weight_mapped``; a velocity field is penalised with the linearised
    conditions (``exp(v)`` is rigid where ``v`` is a Killing field). The rigid part of the error is measured
    on the final displacement in both cases.
    """
    fixed, moving, labels = _pair()
    wmap = label_weight_map(labels, [4], dilate_mm=2.0)  # a 21-voxel blob, 2 mm margin
    rigid_err = []
    for with_penalty in (False, True):
        ts = [similarity_term("mse"), field_term("diffusion", 0.01)]
        if with_penalty:
            spec = "rigidity(linearized=True)" if model == "velocity" else "rigidity"
            ts.append(field_term(weight_mapped(spec, wmap), 1.0))
        method = Gradient(objective(*ts), Optimizer("adam", 0.2))
        if model == "bspline":
            stage = Stage(method, BSpline(8.0), (Level(1, 0.0, 60),))
        elif model == "velocity":
            stage = Stage(method, Field("velocity", steps=4), (Level(2, 0.0, 30), Level(1, 0.0, 30)))
        else:
            stage = Stage(method, Field("displacement"), (Level(1, 0.0, 60),))
        res = register(fixed, moving, method=(stage,))
        u = res.transform.sample_displacement(fixed.grid)
        rigid_err.append(float(rigidity(u, grid=fixed.grid, mask=wmap.data, weights=(0.0, 1.0, 1.0))))
        mse = float(jnp.mean((jr.warp(moving, res.transform, fixed.grid).data - fixed.data) ** 2))
        assert mse < 0.5 * float(jnp.mean((moving.data - fixed.data) ** 2))
    assert rigid_err[1] < 0.2 * rigid_err[0], rigid_err
